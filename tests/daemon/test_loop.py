"""The event loop and counters, in-process."""
from __future__ import annotations

import os
import signal
import time

from passtcore.run.counters import Counters, parse_line
from passtcore.run.io.loop import Loop


def test_readers_writers_and_timers() -> None:
    loop = Loop()
    r, w = os.pipe()
    seen: list[str] = []
    try:
        loop.add_reader(r, lambda: seen.append(os.read(r, 10).decode()))
        loop.add_writer(w, lambda: (os.write(w, b"x"), loop.remove_writer(w)))
        loop.call_later(0.05, lambda: seen.append("later"))
        ticks: list[float] = []
        h = loop.call_every(0.02, lambda: ticks.append(loop.now()))
        cancelled = loop.call_later(0.01, lambda: seen.append("never"))
        cancelled.cancel()
        loop.call_later(0.12, loop.stop)
        t0 = time.monotonic()
        assert loop.run() == 0
        assert 0.1 < time.monotonic() - t0 < 2
        assert seen[0] == "x" and "later" in seen and "never" not in seen
        assert 3 <= len(ticks) <= 8
        h.cancel()
    finally:
        loop.close()
        os.close(r)
        os.close(w)


def test_failing_callback_does_not_stop_the_loop() -> None:
    loop = Loop()
    errors: list[BaseException] = []
    loop.on_error = lambda exc, cb: errors.append(exc)
    loop.call_later(0.0, lambda: 1 / 0)
    loop.call_later(0.02, loop.stop)
    loop.run()
    loop.close()
    assert isinstance(errors[0], ZeroDivisionError)


def test_signals_wake_the_loop() -> None:
    loop = Loop()
    got: list[int] = []
    loop.add_signal_handler(signal.SIGUSR2, lambda s: (got.append(s), loop.stop(7)))
    loop.call_later(0.05, lambda: os.kill(os.getpid(), signal.SIGUSR2))
    loop.call_later(5, loop.stop)  # bound
    t0 = time.monotonic()
    assert loop.run() == 7
    assert got == [signal.SIGUSR2] and time.monotonic() - t0 < 2
    loop.close()
    signal.signal(signal.SIGUSR2, signal.SIG_DFL)


def test_counters_format_roundtrip() -> None:
    c = Counters()
    c.frame_in(60)
    c.frame_out(42)
    c.drop("runt-frame")
    c.drop("runt-frame")
    c.inc("clients")
    line = "1.0000: info:    " + c.format()
    assert parse_line(line) == c.snapshot()
    assert c.drops() == {"runt-frame": 2}
    assert c.format().startswith("counters: frames_in=1 bytes_in=60 frames_out=1 bytes_out=42")


def test_fd_number_reused_without_remove() -> None:
    loop = Loop()
    r, w = os.pipe()
    loop.add_reader(r, lambda: None)
    os.close(r)
    os.close(w)  # closed behind the loop's back: the kernel dropped it from epoll
    r2, w2 = os.pipe()
    assert r2 == r  # the number is reused
    got: list[bytes] = []
    loop.add_writer(r2, lambda: None)  # stale mask for this number: must not raise
    loop.remove_writer(r2)
    loop.add_reader(r2, lambda: got.append(os.read(r2, 10)))
    os.write(w2, b"hi")
    loop.run_once(1)
    assert got == [b"hi"]
    loop.close()
    os.close(r2)
    os.close(w2)


def test_sporadic_errors_never_unregister_a_healthy_descriptor() -> None:
    """Only consecutive failures count: a connection that fails now and then (or a
    new one that reuses the number) keeps being served after MAX_ERRORS in all."""
    from passtcore.run.io.loop import MAX_ERRORS

    loop = Loop()
    loop.on_error = lambda exc, cb: None
    r, w = os.pipe()
    calls = {"n": 0}

    def flaky() -> None:  # fails 9 times in 10
        calls["n"] += 1
        os.read(r, 1)
        if calls["n"] % 10:
            raise OSError("sporadic")

    try:
        loop.add_reader(r, flaky)
        for _ in range(MAX_ERRORS + 200):
            os.write(w, b"x")
            loop.run_once(0)
        assert r in loop._readers and calls["n"] == MAX_ERRORS + 200
        # a failing streak still unregisters (it would spin) ...
        loop.add_reader(r, lambda: 1 / 0)
        os.write(w, b"x")
        for _ in range(MAX_ERRORS):
            loop.run_once(0)
        assert r not in loop._readers
        # ... and the next registration of that number starts clean
        loop.add_reader(r, flaky)
        os.write(w, b"x")
        loop.run_once(0)
        assert r in loop._readers
    finally:
        loop.close()
        os.close(r)
        os.close(w)
