"""``passtcore-repair``: the privileged TCP_REPAIR helper (upstream's passt-repair).

    passtcore-repair PATH

PATH is the daemon's repair socket (``<socket>.repair``), or a directory in
which the daemon will create one (KubeVirt runs the helper that way on the
migration target): the helper then waits for a ``*.repair`` socket to appear.
It needs CAP_NET_ADMIN in the daemon's network namespace and nothing else: it
receives batches of sockets with one command byte (1: TCP_REPAIR on, 0: off,
-1: off without a window probe), applies it to each, closes its copies and
echoes the byte. It exits 0 when the daemon closes the channel, 1 on any
failure, 2 on bad usage: the same protocol, arguments and exit codes as
passt-repair, so virt-handler can run either.
"""
from __future__ import annotations

import ctypes
import errno
import os
import select
import socket
import stat
import struct
import sys
import time

from passtcore.run.migrate.repair import REPAIR_OFF, REPAIR_OFF_NO_WP, REPAIR_ON, SCM_MAX_FD
from passtcore.run.migrate.sockets import TCP_REPAIR

SUFFIX = ".repair"
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38
IN_CREATE, IN_CLOEXEC = 0x100, 0o2000000


def _fail(message: str, code: int = 1) -> int:
    print(f"passtcore-repair: {message}", file=sys.stderr)
    return code


def _find_socket(directory: str) -> str:
    """The first ``*.repair`` socket in ``directory``, waiting for one (inotify)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(IN_CLOEXEC)
    if fd < 0 or libc.inotify_add_watch(fd, directory.encode(), IN_CREATE) < 0:
        raise OSError(ctypes.get_errno(), "inotify")
    try:
        while True:
            # after the watch is set, so that a socket created in between is not missed
            for name in sorted(os.listdir(directory)):
                path = os.path.join(directory, name)
                if name.endswith(SUFFIX) and stat.S_ISSOCK(os.lstat(path).st_mode):
                    return path
            select.select([fd], [], [])
            os.read(fd, 4096)
    finally:
        os.close(fd)


def serve(sock: socket.socket) -> int:
    while True:   # until the daemon closes the channel
        try:
            data, fds, flags, _ = socket.recv_fds(sock, 1, SCM_MAX_FD)
        except ConnectionResetError:
            return 0
        if not data:
            return 0
        if flags & socket.MSG_CTRUNC or not fds:
            for fd in fds:
                os.close(fd)
            return _fail("no or bad ancillary data from the daemon")
        cmd = struct.unpack("b", data)[0]
        if cmd not in (REPAIR_ON, REPAIR_OFF, REPAIR_OFF_NO_WP):
            for fd in fds:
                os.close(fd)
            return _fail(f"unsupported command {cmd}")
        for fd in fds:
            try:
                s = socket.socket(fileno=fd)
                s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, cmd)
                s.close()
            except OSError as exc:
                for rest in fds:
                    try:
                        os.close(rest)
                    except OSError:
                        pass
                return _fail(f"setting TCP_REPAIR to {cmd} on socket {fd}: {exc.strerror}")
        sock.sendall(data)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("Usage: passtcore-repair PATH\n\n"
              "PATH: the daemon's repair socket (<socket>.repair), or a directory\n"
              "to wait for one in. Needs CAP_NET_ADMIN.", file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    path = args[0]
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return _fail(f"can't stat {path}: {exc.strerror}")
    directory = stat.S_ISDIR(mode)
    if directory:
        try:
            path = _find_socket(path)
        except OSError as exc:
            return _fail(f"can't watch {args[0]}: {exc.strerror or exc}")
    elif not stat.S_ISSOCK(mode):
        return _fail(f"{path} is not a socket", 2)
    if len(path.encode()) >= 108:
        return _fail("invalid socket path", 2)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    for _ in range(600):   # the daemon may not listen yet (directory mode): a minute at most
        try:
            sock.connect(path)
            break
        except OSError as exc:
            if not (directory and exc.errno == errno.ECONNREFUSED):
                return _fail(f"can't connect to {path}: {exc.strerror}")
            time.sleep(0.1)
    else:
        return _fail(f"{path} refused connections for a minute")
    try:
        return serve(sock)
    except OSError as exc:
        return _fail(f"channel: {exc.strerror or exc}")


if __name__ == "__main__":
    sys.exit(main())
