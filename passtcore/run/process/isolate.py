"""Isolation after set-up: what passt's isolate_* do (passt-reference 9.4), for a
Python daemon.

Called once everything the daemon will ever open is open (front end, forwarded
ports, log, pcap and pid files), every module it will ever import is imported
(``preload``) and the identity is ``--runas``'s. In order, each step logged and
none fatal (a kernel or container that refuses one leaves the others on; the
log says which and why):

1. **Namespaces** (passt modes: stream socket, ``--fd``, vhost-user): a new
   user namespace (unprivileged where the kernel allows it, mapping only our own
   uid/gid), then new mount, IPC and UTS namespaces. Not the network namespace:
   the daemon's work is its sockets there. Not a PID namespace: it only applies
   to children and the daemon has none by now (passt unshares it before its
   fork; ours has happened). Namespace mode (pasta-like) stays in the user
   namespace it joined (``--userns``, as pasta) and keeps the filesystem: it
   quits when the namespace file goes away, which it watches by path.
2. **An empty root** (passt modes): ``/`` made recursively unbindable, an empty
   read-only tmpfs (2 inodes, 0 blocks, nodev/noexec/nosuid) mounted on a
   directory, ``pivot_root(".", ".")`` into it and the old root detached: the
   daemon sees no files at all.
3. **No capabilities** in any set: the bounding set cleared cap by cap (in
   ``prepare()``, before ``--runas``, while CAP_SETPCAP is still ours; again
   inside the new user namespace), the ambient set cleared,
   effective/permitted/inheritable zeroed (``capset``).
4. ``PR_SET_NO_NEW_PRIVS`` and not dumpable.
5. **seccomp** (libseccomp through ``pyseccomp``): the allow-list ``ALLOWED``
   (what the serving daemon was seen to call: CPython's own needs, memory,
   time, epoll, sockets, the virtqueues' eventfds and mappings); the syscalls
   an attacker wants first (``KILLED``: exec, ptrace, namespaces, mounts,
   modules, bpf, keyrings, ...) kill the process; anything else fails with
   EPERM, so that a rare path of the interpreter we did not see raises an
   ``OSError`` in Python (logged and counted) instead of taking every guest
   connection down with it. Namespace mode also may open and read links
   (``ALLOWED_WITH_FILES``: it keeps the filesystem and reads /proc).

``status()`` says what was done, for the log and the tests.
"""
from __future__ import annotations

import ctypes
import errno
import importlib
import logging
import os
import pkgutil
from typing import Any

log = logging.getLogger("passtcore.run")

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER = 0x20000, 0x4000000, 0x8000000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_UNBINDABLE = 1, 2, 4, 8, 0x4000, 0x20000
MNT_DETACH = 2
SYS_PIVOT_ROOT = 155          # x86-64
SYS_CAPSET = 126
PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 4, 24, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522

# What the serving daemon calls (strace -f over the daemon, QEMU and namespace
# suites, then reviewed): keep it sorted; a name the running kernel's libseccomp
# does not know is skipped.
ALLOWED = (
    "accept", "accept4", "bind", "brk", "clock_gettime", "clock_nanosleep", "close",
    "connect", "dup", "dup2", "dup3", "epoll_create1", "epoll_ctl", "epoll_pwait",
    "epoll_wait", "eventfd2", "exit", "exit_group", "fallocate", "fcntl", "fstat",
    "fsync", "ftruncate", "futex", "getcwd", "getdents64", "getegid", "geteuid",
    "getgid", "getpeername", "getpid", "getppid", "getrandom", "getrlimit",
    "getsockname", "getsockopt", "gettid", "gettimeofday", "getuid", "ioctl", "listen",
    "lseek", "madvise", "mmap", "mprotect", "mremap", "munmap", "nanosleep",
    "newfstatat", "pipe", "pipe2", "poll", "ppoll", "prctl", "pread64", "prlimit64",
    "pselect6", "pwrite64", "read", "readv", "recvfrom", "recvmmsg", "recvmsg",
    "restart_syscall", "rseq", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn",
    "sched_getaffinity", "sched_yield", "select", "sendmmsg", "sendmsg", "sendto",
    "set_robust_list", "setsockopt", "shutdown", "sigaltstack", "socket", "splice",
    "statx", "sysinfo", "tgkill", "timerfd_create", "timerfd_gettime",
    "timerfd_settime", "uname", "write", "writev",
)
# Namespace mode keeps the filesystem, and reads /proc there: its own sockets
# (/proc/self/fd, so that -t/-u auto never forwards them back) and the ports
# bound in either namespace (/proc/net, for auto).
ALLOWED_WITH_FILES = ("openat", "readlink", "readlinkat")
# Killed at once: what an attacker who took the daemon's Python would try first.
KILLED = (
    "bpf", "chroot", "delete_module", "execve", "execveat", "finit_module",
    "fork", "init_module", "kexec_load", "keyctl", "add_key", "request_key", "mount",
    "move_mount", "open_tree", "fsopen", "fsmount", "pivot_root", "process_vm_readv",
    "process_vm_writev", "ptrace", "setns", "umount2", "unshare", "userfaultfd", "vfork",
    "perf_event_open", "personality", "setuid", "setgid", "setresuid", "setresgid",
    "setgroups", "capset",
)

_done: dict[str, str] = {}


STEPS = ("namespaces", "empty root", "capabilities", "no_new_privs", "not dumpable", "seccomp")


def status() -> dict[str, str]:
    """Step -> "on" or why not, in the order they are taken."""
    return {k: _done[k] for k in STEPS if k in _done}


def preload() -> None:
    """Import now what the daemon may import later: after pivot_root nothing can be."""
    import passtcore.run

    for mod in ("linecache", "traceback", "encodings.idna", "encodings.ascii",
                "encodings.latin_1", "ipaddress", "select", "passtcore.portspec",
                "passtcore.netns"):
        try:
            importlib.import_module(mod)
        except ImportError:
            pass
    import passtcore

    for kernel in ("csum", "headers", "batch", "flowtable", "fastpath", "virtq"):
        getattr(passtcore, kernel)   # the backend's kernels (lazy attributes)
    for info in pkgutil.walk_packages(passtcore.run.__path__, "passtcore.run."):
        if info.name.endswith((".cli", ".helper", "__main__")):
            continue
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # an optional dependency missing: not ours to load
            log.debug("isolation: preload %s: %s", info.name, exc)


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _namespaces(libc: Any) -> None:
    uid, gid = os.geteuid(), os.getegid()
    _check(libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
    # our own ids only: nothing else exists in there
    for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"),
                       ("/proc/self/gid_map", f"{gid} {gid} 1")):
        try:
            _write(path, text)
        except OSError:
            pass
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS), "unshare(mount, IPC, UTS)")


def _empty_root(libc: Any) -> None:
    mount = libc.mount
    mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                      ctypes.c_char_p]
    _check(mount(b"", b"/", None, MS_UNBINDABLE | MS_REC, None), "mount(/, unbindable)")
    target = b"/tmp" if os.path.isdir("/tmp") else b"/"
    _check(mount(b"", target, b"tmpfs", MS_RDONLY | MS_NODEV | MS_NOEXEC | MS_NOSUID,
                 b"nr_inodes=2,nr_blocks=0"), "mount(tmpfs)")
    os.chdir(target)
    _check(libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "umount2(old root)")
    os.chdir("/")


def _drop_bounding(libc: Any, last_cap: int) -> str:
    """Clear the capability bounding set: "" when done, else why not."""
    for cap in range(last_cap + 1):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
            return f"the bounding set stays: {os.strerror(ctypes.get_errno())}"
    return ""


def _no_caps(libc: Any, last_cap: int) -> None:
    if _drop_bounding(libc, last_cap) and _prepared.get("bounding"):
        raise OSError(errno.EPERM, _prepared["bounding"])
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    _check(libc.syscall(SYS_CAPSET, header, data), "capset")


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63


def build_filter(keep_filesystem: bool = False) -> Any:
    """The seccomp filter (not loaded): None without pyseccomp/libseccomp."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError, RuntimeError) as exc:
        raise OSError(errno.ENOSYS, f"pyseccomp/libseccomp: {exc}") from None
    # PASSTCORE_SECCOMP_LOG=1 (development): log what is not allowed instead of
    # refusing it (the kernel's audit log: "type=1326 ... syscall=N"), to extend ALLOWED
    audit = os.environ.get("PASSTCORE_SECCOMP_LOG") == "1"
    refuse = seccomp.LOG if audit else seccomp.ERRNO(errno.EPERM)
    kill = seccomp.LOG if audit else seccomp.KILL_PROCESS
    flt = seccomp.SyscallFilter(defaction=refuse)
    for name in ALLOWED + (ALLOWED_WITH_FILES if keep_filesystem else ()):
        try:
            flt.add_rule(seccomp.ALLOW, name)
        except (ValueError, RuntimeError, OSError):
            pass
    for name in KILLED:
        try:
            flt.add_rule(kill, name)
        except (ValueError, RuntimeError, OSError):
            pass
    # clone3: ENOSYS, so that glibc's pthread_create falls back to clone(), whose
    # flags a filter can see (clone3 passes them in memory)
    try:
        flt.add_rule(seccomp.LOG if audit else seccomp.ERRNO(errno.ENOSYS), "clone3")
    except (ValueError, RuntimeError, OSError):
        pass
    # clone() for threads only (the interpreter never forks once serving): a new
    # process would be a way out
    try:
        flt.add_rule(seccomp.ALLOW, "clone",
                     seccomp.Arg(0, seccomp.MASKED_EQ, 0x10000, 0x10000))  # CLONE_THREAD
        flt.add_rule(kill, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, 0x10000, 0))
    except (ValueError, RuntimeError, OSError):
        pass
    return flt


_prepared: dict[str, Any] = {}


def prepare(keep_filesystem: bool = False) -> None:
    """Before ``--runas``: what needs the filesystem as the original user (the
    interpreter may live where nobody else can read: modules, libseccomp, the
    kernel's capability count)."""
    _prepared["last_cap"] = _last_cap()
    # the bounding set while we may still change it (CAP_SETPCAP, before --runas
    # drops it): it limits only what an exec could gain, and nothing is exec'd
    _prepared["bounding"] = _drop_bounding(_libc(), _prepared["last_cap"])
    preload()
    try:
        _prepared["filter"] = build_filter(keep_filesystem)
    except OSError as exc:
        _prepared["filter"], _prepared["why"] = None, str(exc.strerror or exc)


def isolate(keep_filesystem: bool) -> dict[str, str]:
    """Steps 1-5 of the module docstring (``prepare()`` first); what was done."""
    if not _prepared:
        prepare(keep_filesystem)
    libc = _libc()
    flt = _prepared["filter"]
    steps: list[tuple[str, Any]] = []
    if keep_filesystem:
        _done["namespaces"] = "off: namespace mode stays in the user namespace it joined"
        _done["empty root"] = "off: namespace mode watches its namespace file"
    else:
        steps += [("namespaces", lambda: _namespaces(libc)),
                  ("empty root", lambda: _empty_root(libc))]
    steps += [("capabilities", lambda: _no_caps(libc, _prepared["last_cap"])),
              ("no_new_privs", lambda: _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
                                              "PR_SET_NO_NEW_PRIVS")),
              ("not dumpable", lambda: _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0),
                                              "PR_SET_DUMPABLE"))]
    for name, step in steps:
        if name == "empty root" and _done.get("namespaces") != "on":
            _done[name] = "off: no private mount namespace"
            continue
        try:
            step()
            _done[name] = "on"
        except OSError as exc:
            _done[name] = f"off: {exc.strerror or exc}"
    if flt is None:
        _done["seccomp"] = f"off: {_prepared.get('why')}"
    else:
        try:
            flt.load()
            _done["seccomp"] = "on"
        except (OSError, RuntimeError, ValueError) as exc:
            _done["seccomp"] = f"off: {exc}"
    return status()


def probe(kind: str) -> str:
    """``PASSTCORE_ISOLATION_PROBE`` (tests): issue, from the isolated daemon, a
    syscall the filter refuses (``refused``: getpriority, EPERM expected), a file
    the empty root does not have (``files``), or one it kills (``kill``: execve)."""
    if kind == "kill":
        os.execv("/bin/true", ["true"])
    if kind == "files":
        try:
            os.stat("/etc/passwd")
            return "files: /etc/passwd visible"
        except OSError as exc:
            return f"files: {errno.errorcode.get(exc.errno, exc.errno)}"
    try:
        os.getpriority(os.PRIO_PROCESS, 0)
        return "refused: getpriority allowed"
    except OSError as exc:
        return f"refused: getpriority {errno.errorcode.get(exc.errno, exc.errno)}"
