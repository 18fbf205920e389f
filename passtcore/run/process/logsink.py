"""Log destinations and formats of passt (passt-reference 9.2), on top of ``logging``.

Engines just use ``logging.getLogger("passtcore.run...")``; this module
installs one handler on the ``passtcore`` logger that writes where passt
would: the log file only with ``-l`` (header line, ``sec.4digits: prefix msg``,
cut by ~30 % at ``--log-size``), stderr before daemonising / with ``-e`` /
in the foreground, syslog (``/dev/log``, LOG_DAEMON) otherwise.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time

TRACE = 5
logging.addLevelName(TRACE, "TRACE")
_PREFIX = {logging.ERROR: "ERROR:   ", logging.WARNING: "WARNING: ", logging.INFO: "info:    "}
_SYSLOG_PRI = {logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6}
PAGE = 4096


class PasstHandler(logging.Handler):
    def __init__(self, log_file: str | None, log_size: int, version: str) -> None:
        super().__init__(logging.NOTSET)
        self.t0 = time.monotonic()
        self.log_size = log_size
        self.version = version
        self.fd = -1
        self.written = 0
        self.to_stderr = True        # until daemonised
        self.stderr_stamp = False
        self.syslog: socket.socket | None = None
        self.use_syslog = False
        if log_file:
            # O_RDWR: truncation reads the file back, after privileges are dropped.
            self.fd = os.open(log_file, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                              0o600)
            self._header()

    def _header(self, note: str = "") -> None:
        head = f"passt {self.version}: {os.path.realpath(sys.argv[0])} ({os.getpid()}){note}\n"
        os.pwrite(self.fd, head.encode(), 0)
        self.written = len(head)

    def rewrite_header(self) -> None:
        """After forking: the header names the daemon's PID."""
        if self.fd >= 0:
            data = self._read_all()
            first = data.find(b"\n") + 1
            head = f"passt {self.version}: {os.path.realpath(sys.argv[0])} ({os.getpid()})\n"
            body = data[first:]
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, head.encode() + body, 0)
            self.written = len(head) + len(body)

    def _read_all(self) -> bytes:
        return os.pread(self.fd, os.fstat(self.fd).st_size, 0)

    def _cut(self) -> None:
        """Drop the oldest ~30 % (rounded up to a page) and mark the header."""
        data = self._read_all()
        first = data.find(b"\n") + 1
        cut = -(-int(self.log_size * 0.3) // PAGE) * PAGE
        body = data[first:]
        body = body[min(cut, len(body)):]
        nl = body.find(b"\n")
        body = body[nl + 1:] if nl >= 0 else b""
        head = (f"passt {self.version}: {os.path.realpath(sys.argv[0])} ({os.getpid()})"
                f" - log truncated at {time.strftime('%c')}\n").encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, head + body, 0)
        self.written = len(head) + len(body)

    def daemonised(self, stderr: bool, foreground: bool) -> None:
        self.to_stderr = stderr or foreground
        self.stderr_stamp = foreground
        if self.fd < 0 and not self.to_stderr:
            self.use_syslog = True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.exc_info and record.levelno >= logging.WARNING:
                msg += ": " + repr(record.exc_info[1])
            level = record.levelno
            prefix = _PREFIX.get(level, " " * 9) if level < logging.ERROR else "ERROR:   "
            if self.fd >= 0:
                el = time.monotonic() - self.t0
                line = f"{int(el)}.{int((el % 1) * 10000):04d}: {prefix}{msg}\n".encode()
                if self.written + len(line) > self.log_size:
                    self._cut()
                os.pwrite(self.fd, line, self.written)
                self.written += len(line)
                return
            if self.to_stderr:
                if self.stderr_stamp and level < logging.INFO:
                    el = time.monotonic() - self.t0
                    text = f"{int(el)}.{int((el % 1) * 10000):04d}: {msg}\n"
                else:
                    text = msg + "\n"
                try:
                    os.write(2, text.encode())
                except OSError:
                    pass
            if self.use_syslog:
                self._syslog(level, msg)
        except Exception:  # logging must never take the daemon down
            pass

    def _syslog(self, level: int, msg: str) -> None:
        if self.syslog is None:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                s.connect("/dev/log")
                self.syslog = s
            except OSError:
                return
        pri = 3 * 8 + _SYSLOG_PRI.get(level, 7)  # LOG_DAEMON
        try:
            self.syslog.send(f"<{pri}> passt: {msg}".encode())
        except OSError:
            pass


def setup(opts: object, version: str) -> PasstHandler:
    handler = PasstHandler(getattr(opts, "log_file", None),
                           getattr(opts, "log_size", 1 << 20), version)
    logger = logging.getLogger("passtcore")
    logger.handlers[:] = [handler]
    logger.propagate = False
    if getattr(opts, "quiet", False):
        logger.setLevel(logging.ERROR)
    elif getattr(opts, "trace", False):
        logger.setLevel(TRACE)
    elif getattr(opts, "debug", False):
        logger.setLevel(logging.DEBUG)
    else:
        logger.setLevel(logging.INFO)
    return handler
