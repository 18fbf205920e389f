"""Run functions in a forked child and get their results back.

pyroute2 costs ~24 MiB of resident memory and ~150 ms of import once loaded,
and the daemon needs netlink only at start-up (host addressing defaults, tap
configuration). Doing that work in a child keeps the long-lived daemon small
(pyroute2 never maps into it; the idle RSS is measured by benches/startup.py).
The child is single-threaded, so it may also ``setns()`` the whole process
into the target namespace. Results and errors come back pickled over a pipe;
an exception in the child is re-raised in the parent with its type preserved
when it pickles (else as RuntimeError).

``start(preload)`` forks one helper for the whole set-up, which imports
``preload`` (pyroute2) at once while the parent goes on with its own
imports; every ``run_in_child`` then goes to it (one pyroute2 import instead of
one per call), until ``stop()``. Without a session each call forks afresh.
"""
from __future__ import annotations

import importlib
import os
import pickle
import select
import struct
from collections.abc import Callable, Iterable
from typing import Any

_LEN = struct.Struct("!I")


def _send(fd: int, obj: Any) -> None:
    try:
        payload = pickle.dumps(obj)
    except Exception:  # an unpicklable result or exception: say what it was
        status, value = obj
        payload = pickle.dumps(("err", RuntimeError(f"{type(value).__name__}: {value}")))
    view = memoryview(_LEN.pack(len(payload)) + payload)
    while view:
        view = view[os.write(fd, view):]


def _recv_exact(fd: int, n: int, timeout: float, pid: int) -> bytes | None:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks = []
    while n:
        if not poller.poll(timeout * 1000):
            os.kill(pid, 9)
            raise TimeoutError("netlink helper did not answer")
        data = os.read(fd, n)
        if not data:
            return None
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


def _recv(fd: int, timeout: float, pid: int) -> Any:
    head = _recv_exact(fd, _LEN.size, timeout, pid)
    body = _recv_exact(fd, _LEN.unpack(head)[0], timeout, pid) if head else None
    if body is None:
        raise RuntimeError("netlink helper died without an answer")
    status, value = pickle.loads(body)
    if status == "err":
        raise value
    return value


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[str, Any]:
    try:
        return ("ok", fn(*args))
    except BaseException as exc:
        return ("err", exc)


class Session:
    """One forked helper serving calls in order (see the module docstring)."""

    def __init__(self, preload: Iterable[str] = ()) -> None:
        req_r, self.req_w = os.pipe2(os.O_CLOEXEC)
        self.rep_r, rep_w = os.pipe2(os.O_CLOEXEC)
        self.pid = os.fork()
        if self.pid == 0:  # child: never returns
            code = 0
            try:
                os.close(self.req_w)
                os.close(self.rep_r)
                for name in preload:
                    try:
                        importlib.import_module(name)
                    except ImportError:
                        pass  # the call that needs it says so
                while True:
                    head = _recv_exact(req_r, _LEN.size, 1e6, os.getpid())
                    if head is None:
                        break  # the parent is done with us
                    fn, args = pickle.loads(_recv_exact(req_r, _LEN.unpack(head)[0], 1e6,
                                                        os.getpid()) or b"")
                    _send(rep_w, _call(fn, args))
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(req_r)
        os.close(rep_w)

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 30.0) -> Any:
        _send(self.req_w, (fn, args))
        return _recv(self.rep_r, timeout, self.pid)

    def close(self) -> None:
        if self.pid:
            os.close(self.req_w)
            os.close(self.rep_r)
            os.waitpid(self.pid, 0)
            self.pid = 0


_session: Session | None = None


def start(preload: Iterable[str] = ("pyroute2",)) -> None:
    """Fork the set-up helper now (it imports ``preload`` while we go on)."""
    global _session
    if _session is None:
        _session = Session(preload)


def stop() -> None:
    """End the set-up helper (idempotent)."""
    global _session
    if _session is not None:
        _session.close()
        _session = None


def run_in_child(fn: Callable[..., Any], *args: Any, timeout: float = 30.0) -> Any:
    """``fn(*args)`` in the set-up helper, or in a child forked for this call."""
    if _session is not None:
        return _session.call(fn, *args, timeout=timeout)
    once = Session()
    try:
        return once.call(fn, *args, timeout=timeout)
    finally:
        once.close()
