"""Network-namespace and sysctl helpers (no privileges beyond what the caller has).

Used by the daemon's namespace mode, the test and demo sandboxes and the CNI
plugin. ``setns`` moves only the calling thread, so ``entered()`` restores the
original namespace on exit; callers that need a namespace for longer should do
the work in a dedicated thread or process. ``join_userns`` is the exception: a
user namespace can only be joined by a single-threaded process, as a whole.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
NS_GET_NSTYPE = 0xB703
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
    """Run the body of the ``with`` in the network namespace ``target``.

    Going back can be impossible: after ``join_userns`` the process holds no
    capability over the original namespace (pasta does its namespace work in
    short-lived clones for that reason). In a thread other than the main one
    that failure (EPERM) is not raised: such threads enter, work and end, and the
    thread is left in ``target``. In the main thread it is always raised."""
    import threading

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
            try:
                setns(own)
            except PermissionError:
                if threading.current_thread() is threading.main_thread():
                    raise
    finally:
        os.close(own)


def call_in(target: str | int, fn: Callable[[], T], timeout: float = 30.0,
            what: str = "namespace set-up") -> T:
    """``fn()`` run in a short-lived thread that has entered network namespace
    ``target``: setns moves only the calling thread, so the caller stays where it
    is, while sockets, devices and /proc/thread-self/net files opened by ``fn``
    belong to ``target`` for good. ``fn``'s exception is re-raised here;
    ``TimeoutError`` if it does not finish in ``timeout`` seconds."""
    import threading

    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            with entered(target):
                result.append(fn())
        except BaseException as exc:  # re-raised in the caller
            error.append(exc)

    t = threading.Thread(target=body, name="netns")
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"{what} in {resolve(target)} timed out")
    if error:
        raise error[0]
    return result[0]


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


def ns_type(path: str) -> int | None:
    """The CLONE_NEW* type of the namespace file ``path`` (NS_GET_NSTYPE), None if
    it is missing or not a namespace."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise
    try:
        import fcntl

        return fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        return None
    finally:
        os.close(fd)


def is_netns(path: str) -> bool:
    """True if ``path`` names a network namespace (nsfs inode)."""
    return ns_type(path) == CLONE_NEWNET


def is_userns(path: str) -> bool:
    """True if ``path`` names a user namespace (nsfs inode)."""
    return ns_type(path) == CLONE_NEWUSER


def same_ns(a: str, b: str) -> bool:
    """True if the namespace files ``a`` and ``b`` are the same namespace."""
    sa, sb = os.stat(a), os.stat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def join_userns(path: str) -> bool:
    """Move the whole (single-threaded) process into the user namespace ``path``.

    False if the process is in it already (setns would fail with EINVAL), True
    once joined. OSError otherwise; the kernel refuses (EINVAL) a process with
    more than one thread, so this is checked first with a clearer message."""
    if same_ns(path, "/proc/self/ns/user"):
        return False
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        raise OSError(errno.EINVAL, f"the process has {threads} threads; a user namespace "
                      "can only be joined by a single-threaded process")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd, CLONE_NEWUSER)
    finally:
        os.close(fd)
    return True
