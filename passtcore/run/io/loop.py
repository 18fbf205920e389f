"""The daemon's event loop: one epoll set, timers, signals; the only place that blocks.

passt is single-threaded and epoll-driven; so is passtcore-run. Every file
descriptor (front end, listening socket, host sockets of the engines) has at
most one read and one write callback; callbacks take no arguments and must not
block. Timers live in a heap and bound the epoll timeout. Signals are delivered
through ``signal.set_wakeup_fd`` so that a SIGTERM interrupts ``epoll_wait``
at once instead of after the next timeout (PEP 475 would retry the wait).
"""
from __future__ import annotations

import heapq
import itertools
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Any

Callback = Callable[[], Any]

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_ERR = select.EPOLLERR | select.EPOLLHUP | select.EPOLLRDHUP
MAX_ERRORS = 1000  # consecutive failures of one descriptor's callbacks


class TimerHandle:
    __slots__ = ("when", "callback", "interval", "cancelled")

    def __init__(self, when: float, callback: Callback, interval: float | None) -> None:
        self.when = when
        self.callback = callback
        self.interval = interval
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """epoll reactor: ``add_reader/add_writer``, ``call_later/call_every``, ``run()``."""

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._readers: dict[int, Callback] = {}
        self._writers: dict[int, Callback] = {}
        self._masks: dict[int, int] = {}
        self._timers: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._running = False
        self._signal_handlers: dict[int, Callable[[int], Any]] = {}
        self._wake_r = self._wake_w = -1
        self.exit_code = 0
        # Called as on_error(exc, callback) when a callback raises; the loop goes on.
        self.on_error: Callable[[BaseException, Callback], Any] | None = None
        self._errors: dict[int, int] = {}
        self.skew = 0.0

    # -- file descriptors -------------------------------------------------
    def _update(self, fd: int) -> None:
        mask = (_IN if fd in self._readers else 0) | (_OUT if fd in self._writers else 0)
        old = self._masks.get(fd, 0)
        if mask == old:
            return
        if not mask:
            del self._masks[fd]
            try:
                self._ep.unregister(fd)
            except (OSError, ValueError):
                pass  # already closed: the kernel dropped it from the set
        else:
            self._masks[fd] = mask
            # A number closed without remove_*() and reused is gone from the epoll
            # set (ENOENT on modify); a stale registration gives EEXIST: fix up both.
            try:
                if old:
                    self._ep.modify(fd, mask)
                else:
                    self._ep.register(fd, mask)
            except FileNotFoundError:
                self._ep.register(fd, mask)
            except FileExistsError:
                self._ep.modify(fd, mask)

    def add_reader(self, fd: int, callback: Callback) -> None:
        self._readers[fd] = callback
        self._errors.pop(fd, None)  # a new registration starts with a clean record
        self._update(fd)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._update(fd)

    def add_writer(self, fd: int, callback: Callback) -> None:
        self._writers[fd] = callback
        self._errors.pop(fd, None)
        self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._update(fd)

    # -- timers -------------------------------------------------------------
    def now(self) -> float:
        """Monotonic seconds (plus ``skew``: tests move the loop's clock forward)."""
        return time.monotonic() + self.skew

    def call_later(self, seconds: float, callback: Callback) -> TimerHandle:
        handle = TimerHandle(self.now() + seconds, callback, None)
        heapq.heappush(self._timers, (handle.when, next(self._seq), handle))
        return handle

    def call_every(self, seconds: float, callback: Callback) -> TimerHandle:
        if seconds <= 0:
            raise ValueError("call_every needs a positive interval")
        handle = TimerHandle(self.now() + seconds, callback, seconds)
        heapq.heappush(self._timers, (handle.when, next(self._seq), handle))
        return handle

    def _run_timers(self) -> None:
        now = self.now()
        while self._timers and self._timers[0][0] <= now:
            _, _, handle = heapq.heappop(self._timers)
            if handle.cancelled:
                continue
            if handle.interval is not None:
                # Re-arm from the due time, but never schedule into the past.
                handle.when = max(handle.when + handle.interval, now)
                heapq.heappush(self._timers, (handle.when, next(self._seq), handle))
            self._call(handle.callback)

    # -- signals ------------------------------------------------------------
    def add_signal_handler(self, signum: int, callback: Callable[[int], Any]) -> None:
        """Run ``callback(signum)`` from the loop (not from the signal context)."""
        if self._wake_r < 0:
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
            self.add_reader(self._wake_r, self._drain_signals)
        self._signal_handlers[signum] = callback
        signal.signal(signum, lambda *_: None)  # the wakeup fd carries the number

    def _drain_signals(self) -> None:
        try:
            data = os.read(self._wake_r, 512)
        except BlockingIOError:
            return
        for signum in data:
            handler = self._signal_handlers.get(signum)
            if handler is not None:
                handler(signum)

    # -- running --------------------------------------------------------------
    def stop(self, exit_code: int | None = None) -> None:
        if exit_code is not None:
            self.exit_code = exit_code
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    def run_once(self, timeout: float | None = None) -> None:
        if self._timers:
            due = max(0.0, self._timers[0][0] - self.now())
            timeout = due if timeout is None else min(timeout, due)
        events = self._ep.poll(-1 if timeout is None else timeout, 64)
        for fd, mask in events:
            if mask & (_IN | _ERR):
                cb = self._readers.get(fd)
                if cb is not None:
                    self._call(cb, fd)
                elif mask & _ERR and fd not in self._writers:
                    self._update(fd)
            if mask & (_OUT | _ERR) and fd in self._writers:
                cb = self._writers.get(fd)
                if cb is not None:
                    self._call(cb, fd)
        self._run_timers()

    def _call(self, cb: Callback, fd: int = -1) -> None:
        """Run a callback: the one catch-all around it (a bug in an engine must not take
        the daemon down). A descriptor whose callbacks fail MAX_ERRORS times in a row
        would spin (level-triggered): it is unregistered. Any success clears the count."""
        try:
            cb()
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            if self.on_error is not None:
                self.on_error(exc, cb)
            if fd >= 0:
                n = self._errors[fd] = self._errors.get(fd, 0) + 1
                if n >= MAX_ERRORS:
                    del self._errors[fd]
                    self._readers.pop(fd, None)
                    self._writers.pop(fd, None)
                    self._update(fd)
        else:
            if fd >= 0 and self._errors:
                self._errors.pop(fd, None)

    def run(self) -> int:
        self._running = True
        while self._running:
            self.run_once()
        return self.exit_code

    def close(self) -> None:
        if self._wake_r >= 0:
            signal.set_wakeup_fd(-1)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
        self._ep.close()
