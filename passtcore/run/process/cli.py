"""passtcore-run's entry point: early bind, options, set-up, daemonise, serve.

libvirt starts QEMU ~20 ms after the daemon and QEMU 7.2 connects once, so
the UNIX socket is bound and listening *first*, using only the C ``_socket``
module and a pre-scan of argv, before argument validation, netlink (pyroute2)
or the packet kernels (numpy) are imported. Everything that can fail is then
done before forking (passt-reference 2.4): options (exit 1, one line naming
the option), host configuration, log/pcap/pid files, the tap, the engines
(which bind forwarded ports). The parent writes the child's PID and exits 0;
the child calls setsid(), points fds 0-2 at /dev/null and runs the loop.
"""
from __future__ import annotations

import os
import sys

import _socket

from passtcore.run.process import options as _options

_ECONNREFUSED, _ENOENT, _EACCES = 111, 2, 13


def _probe_in_use(path: str) -> bool:
    """True if something listens on ``path``. /proc/net/unix is read first, so that a
    running ``--one-off`` daemon is not killed by our probe (passt-reference 2.2);
    a non-blocking connect() covers listeners in other network namespaces."""
    try:
        with open("/proc/net/unix", "rb") as f:
            listing = f.read()
    except OSError:
        listing = b""
    want = {os.fsencode(path), os.fsencode(os.path.abspath(path))}
    for line in listing.splitlines()[1:]:
        parts = line.split()
        # Num RefCount Protocol Flags Type St Inode Path; Flags 00010000 = __SO_ACCEPTCON
        if len(parts) >= 8 and parts[3] == b"00010000" and parts[7] in want:
            return True
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        probe.connect(path)
    except OSError as exc:
        return exc.errno not in (_ENOENT, _ECONNREFUSED, _EACCES)
    finally:
        probe.close()
    return True


def early_bind(path: str | None) -> tuple[_socket.socket, str]:
    """Bind and listen on ``path`` (or the first free /tmp/passt_N.socket)."""
    candidates = [path] if path else [f"/tmp/passt_{i}.socket" for i in range(1, 100)]
    for cand in candidates:
        if len(os.fsencode(cand)) >= 108:
            _options.fail(f"-s/--socket: path too long: {cand}")
        if _probe_in_use(cand):
            if path:
                _options.fail(f"Socket path {cand} already in use")
            continue
        try:
            os.unlink(cand)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if path:
                _options.fail(f"Couldn't remove stale socket {cand}: {exc.strerror}")
            continue
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.bind(cand)
            sock.listen(0)
        except OSError as exc:
            sock.close()
            if path:
                _options.fail(f"Couldn't bind UNIX socket {cand}: {exc.strerror}")
            continue
        return sock, cand
    _options.fail("No free /tmp/passt_N.socket (N = 1..99)")
    raise SystemExit(1)  # not reached


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    action, path = _options.scan_early(argv)
    early: tuple[_socket.socket, str] | None = None
    if action == "bind":
        early = early_bind(path)
    try:
        opts = _options.parse(argv)
    except _options.OptionError as exc:
        _abort_early(early)
        _options.fail(str(exc))
        return 1
    if opts.help:
        sys.stdout.write(_options.USAGE)
        return 0
    if opts.print_capabilities:
        # what libvirt asks a vhost-user back end (vhost-user.rst, "Back-end JSON")
        sys.stdout.write('{\n  "type": "net"\n}\n')
        return 0
    if opts.version:
        sys.stdout.write(f"{_options.PROG} {_options.VERSION} (passt-compatible)\n")
        return 0
    if opts.demo:
        from passtcore.sandbox import demo

        return demo.main(opts)
    from passtcore.run.process import daemon

    try:
        return daemon.run(opts, early)
    except daemon.FatalError as exc:
        _abort_early(early)
        _options.fail(str(exc))
        return 1


def _abort_early(early: tuple[_socket.socket, str] | None) -> None:
    if early is not None:
        sock, path = early
        sock.close()
        try:
            os.unlink(path)
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
