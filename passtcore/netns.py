"""Network-namespace and sysctl helpers (no privileges beyond what the caller has).

Used by the daemon's namespace mode, the test and demo sandboxes and the CNI
plugin. ``setns`` moves only the calling thread, so ``entered()`` restores the
original namespace on exit; callers that need a namespace for longer should do
the work in a dedicated thread or process.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def resolve(target: str | int) -> str:
    """A netns path from a path, a name under /run/netns, or a PID."""
    if isinstance(target, int) or str(target).isdigit():
        return f"/proc/{int(target)}/ns/net"
    target = str(target)
    if os.sep in target:
        return target
    return os.path.join("/run/netns", target)


@contextlib.contextmanager
def entered(target: str | int) -> Iterator[None]:
    """Run the body of the ``with`` in the network namespace ``target``."""
    path = resolve(target)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd)
        finally:
            os.close(fd)
        try:
            yield
        finally:
            setns(own)
    finally:
        os.close(own)


def sysctl_path(name: str) -> str:
    return "/proc/sys/" + name.replace(".", "/")


def read_sysctl(name: str) -> str:
    """The value of ``name`` (dotted form) in the current thread's namespace."""
    # /proc/sys/net/* is resolved against the opening thread's namespace.
    with open(sysctl_path(name)) as f:
        return f.read().strip()


def write_sysctl(name: str, value: str) -> None:
    with open(sysctl_path(name), "w") as f:
        f.write(value)


def is_netns(path: str) -> bool:
    """True if ``path`` names a network namespace (nsfs inode)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return False
        raise
    try:
        # NS_GET_NSTYPE ioctl: 0xb703
        import fcntl

        return fcntl.ioctl(fd, 0xB703) == CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)
