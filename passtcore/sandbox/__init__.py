"""``passtcore.sandbox``: a private network world to test a guest against passtcore-run.

A public, documented module (it is what ``passtcore-run --demo`` runs, and what
this project's tests and benchmarks use); nothing in the daemon's serving path
imports it. Needs root (it creates network namespaces). Typical use::

    from passtcore.sandbox import Sandbox

    with Sandbox("mytest") as sb:
        daemon = sb.start_daemon("--dhcp-dns")          # namespace mode: a tap in sb.guest_ns
        sb.guest("udhcpc", "-i", "eth0", "-n", "-q")     # a real guest network stack
        sb.guest("ping", "-c", "1", sb.gw4)
        print(daemon.counters())                          # the daemon's counters (SIGUSR1)

``start_daemon(..., mode="socket")`` serves a QEMU stream socket instead
(``daemon.socket_path``). Run commands with ``host()``/``guest()``/``upstream()``
(or ``popen_*``), files go in ``path(name)``.

Three network namespaces with a random suffix (parallel runs never collide):

- ``upstream`` plays the host's router: ``up0`` with 192.0.2.1/24 and
  2001:db8::1/64, the peer of the host's ``eth0``;
- ``host`` is the private "host" the daemon runs in: ``eth0`` with
  192.0.2.2/24 and 2001:db8::2/64 (no DAD), default routes via 192.0.2.1 and
  2001:db8::1, ``lo`` up, and ``/etc/netns/<host>/resolv.conf`` (bind-mounted
  by ``ip netns exec``) with loopback resolvers ``127.0.0.1`` and ``::1`` and
  a search line. Per passt-reference 4.5, loopback resolvers are advertised
  as the gateway address (reachable through the gateway mapping), so the
  guest is told DNS = ``gw4`` / ``gw6`` (attributes ``dns4``/``dns6``): in
  socket mode always, in namespace mode with ``--dhcp-dns`` (as pasta);
- ``guest``: empty, ``lo`` up; the daemon creates its tap there. It has its
  own (empty) ``/etc/netns/<guest>/resolv.conf`` too (``guest_resolv_conf``):
  udhcpc's default script and dhclient write ``/etc/resolv.conf``, and that
  must be the sandbox's copy, never the machine's.

Sysctls in ``host``: ``net.ipv4.ping_group_range = 0 2147483647`` (the daemon
drops to ``nobody`` when started as root, like passt, and needs ping sockets)
and ``net.ipv4.ip_unprivileged_port_start = 0`` (forwarded low ports), as the
KubeVirt CNI plugin sets them in a pod. No traffic can leave: the upstream
namespace has no other link.

Everything is removed in ``close()``/``__exit__`` even on failure: daemons and
processes by PID (SIGTERM, then SIGKILL), namespaces and /etc/netns dirs by name.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from passtcore.run.counters import parse_line

IP = shutil.which("ip") or "/usr/sbin/ip"


def daemon_binary() -> str:
    """The console script in the running venv, so the real entry point is exercised."""
    exe = Path(sys.executable).parent / "passtcore-run"
    if exe.exists():
        return str(exe)
    found = shutil.which("passtcore-run")
    if not found:
        raise FileNotFoundError("passtcore-run console script not found")
    return found


def wait_for(pred: Any, timeout: float, what: str, interval: float = 0.01) -> Any:
    """Poll ``pred()`` until it returns something true (returned), at most ``timeout``
    seconds (then ``TimeoutError`` naming ``what``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[Any] | None, pid: int | None = None,
                 timeout: float = 5.0) -> int | None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; by PID only. The exit status when
    ``proc`` is given."""
    target = proc.pid if proc is not None else pid
    if target is None:
        return None
    try:
        os.kill(target, signal.SIGTERM)
    except ProcessLookupError:
        pass
    if proc is not None:
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(target):
            return None
        time.sleep(0.02)
    try:
        os.kill(target, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class Daemon:
    """A running passtcore-run. ``pid`` is the serving process (the child when it forked)."""

    def __init__(self, sandbox: Sandbox, proc: subprocess.Popen[Any] | None, pid: int,
                 log_path: str, socket_path: str | None, pcap_path: str | None,
                 args: list[str]) -> None:
        self.sandbox = sandbox
        self.proc = proc
        self.pid = pid
        self.log_path = log_path
        self.socket_path = socket_path
        self.pcap_path = pcap_path
        self.args = args
        self.returncode: int | None = None
        self.stderr_path = ""  # foreground daemons: their stdout/stderr file

    def alive(self) -> bool:
        if self.proc is not None and self.proc.pid == self.pid:
            return self.proc.poll() is None
        return _alive(self.pid)

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait(self, timeout: float = 10.0) -> int | None:
        """Wait for exit (the daemon must end by itself, e.g. --one-off)."""
        if self.proc is not None and self.proc.pid == self.pid:
            self.returncode = self.proc.wait(timeout)
            return self.returncode
        wait_for(lambda: not _alive(self.pid), timeout, f"daemon {self.pid} to exit")
        return None

    def stop(self, timeout: float = 5.0) -> int | None:
        if self.proc is not None and self.proc.pid == self.pid:
            if self.proc.poll() is None:
                self.returncode = stop_process(self.proc, timeout=timeout)
            else:
                self.returncode = self.proc.returncode
        else:
            if self.proc is not None and self.proc.poll() is None:
                stop_process(self.proc, timeout=timeout)
            stop_process(None, self.pid, timeout)
        if self in self.sandbox.daemons:
            self.sandbox.daemons.remove(self)
        return self.returncode

    def counters(self, timeout: float = 5.0) -> dict[str, int]:
        """SIGUSR1, then the newest ``counters:`` line of the log file."""
        before = self.log().count("counters:")
        os.kill(self.pid, signal.SIGUSR1)
        found: list[dict[str, int]] = []

        def fresh() -> bool:
            text = self.log()
            if text.count("counters:") <= before:
                return False
            line = [ln for ln in text.splitlines() if "counters:" in ln][-1]
            found.append(parse_line(line) or {})
            return True

        wait_for(fresh, timeout, "the counters line in the log")
        return found[-1]

    def drops(self, timeout: float = 5.0) -> dict[str, int]:
        return {k[5:]: v for k, v in self.counters(timeout).items() if k.startswith("drop.")}


class Sandbox:
    """upstream <-> host (daemon) + guest namespaces; a context manager."""

    host_addr4 = "192.0.2.2"
    gw4 = "192.0.2.1"
    prefix4 = 24
    host_addr6 = "2001:db8::2"
    gw6 = "2001:db8::1"
    prefix6 = 64
    host_mac = "02:00:5e:00:53:02"
    search = ["example.com", "corp.example.org"]
    resolv_nameservers = ["127.0.0.1", "::1"]
    ifname = "eth0"

    def __init__(self, prefix: str = "pc") -> None:
        self.suffix = secrets.token_hex(4)
        self.upstream_ns = f"{prefix}-up-{self.suffix}"
        self.host_ns = f"{prefix}-host-{self.suffix}"
        self.guest_ns = f"{prefix}-guest-{self.suffix}"
        self.tmpdir = tempfile.mkdtemp(prefix=f"passtcore-{self.suffix}-")
        os.chmod(self.tmpdir, 0o755)
        self.daemons: list[Daemon] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self._created: list[str] = []
        self._etc_dirs: list[Path] = []
        self.host_resolv_conf = f"/etc/netns/{self.host_ns}/resolv.conf"
        # What DHCP clients in the guest write as /etc/resolv.conf lands here.
        self.guest_resolv_conf = f"/etc/netns/{self.guest_ns}/resolv.conf"
        # What the guest must be told (loopback resolvers -> the gateway).
        self.dns4 = [self.gw4]
        self.dns6 = [self.gw6]
        self.dns = self.dns4 + self.dns6

    # -- construction ------------------------------------------------------
    def _ip(self, *args: str) -> None:
        subprocess.run([IP, *args], check=True, capture_output=True, timeout=20)

    def __enter__(self) -> Sandbox:
        try:
            self.setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def setup(self) -> None:
        for ns in (self.upstream_ns, self.host_ns, self.guest_ns):
            self._ip("netns", "add", ns)
            self._created.append(ns)
        # Every namespace gets its own resolv.conf (bind-mounted by `ip netns exec`):
        # the host's is the daemon's input; the guest's receives what DHCP clients
        # write (udhcpc's default script writes /etc/resolv.conf: never the real one).
        for ns in (self.upstream_ns, self.host_ns, self.guest_ns):
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            self._etc_dirs.append(etc)
            (etc / "resolv.conf").write_text("")
        lines = [f"nameserver {a}" for a in self.resolv_nameservers]
        lines.append("search " + " ".join(self.search))
        Path(self.host_resolv_conf).write_text("\n".join(lines) + "\n")
        for ns in (self.upstream_ns, self.host_ns):
            # No DAD: addresses (link-local included) are usable at once.
            self.sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")
            self.sysctl(ns, "net.ipv6.conf.all.accept_dad", "0")
        self.sysctl(self.host_ns, "net.ipv4.ping_group_range", "0 2147483647")
        self.sysctl(self.host_ns, "net.ipv4.ip_unprivileged_port_start", "0")
        self.sysctl(self.guest_ns, "net.ipv4.ping_group_range", "0 2147483647")
        h, u = self.host_ns, self.upstream_ns
        self._ip("-n", h, "link", "add", "eth0", "address", self.host_mac, "type", "veth",
                 "peer", "name", "up0", "netns", u)
        for ns in (u, h, self.guest_ns):
            self._ip("-n", ns, "link", "set", "lo", "up")
        self._ip("-n", u, "addr", "add", f"{self.gw4}/{self.prefix4}", "dev", "up0")
        self._ip("-n", u, "addr", "add", f"{self.gw6}/{self.prefix6}", "dev", "up0", "nodad")
        self._ip("-n", u, "link", "set", "up0", "up")
        self._ip("-n", h, "addr", "add", f"{self.host_addr4}/{self.prefix4}", "dev", "eth0")
        self._ip("-n", h, "addr", "add", f"{self.host_addr6}/{self.prefix6}", "dev", "eth0",
                 "nodad")
        self._ip("-n", h, "link", "set", "eth0", "up")
        self._ip("-n", h, "route", "add", "default", "via", self.gw4)
        self._ip("-n", h, "-6", "route", "add", "default", "via", self.gw6)

    def sysctl(self, ns: str, name: str, value: str) -> None:
        subprocess.run([IP, "netns", "exec", ns, "sh", "-c",
                        f"echo '{value}' > /proc/sys/{name.replace('.', '/')}"],
                       check=True, capture_output=True, timeout=20)

    # -- running things ----------------------------------------------------
    def _run(self, ns: str, cmd: tuple[Any, ...], check: bool, timeout: float,
             **kw: Any) -> subprocess.CompletedProcess[str]:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run([IP, "netns", "exec", ns, *map(str, cmd)], check=check,
                              timeout=timeout, **kw)

    def host(self, *cmd: Any, check: bool = True, timeout: float = 30, **kw: Any
             ) -> subprocess.CompletedProcess[str]:
        return self._run(self.host_ns, cmd, check, timeout, **kw)

    def guest(self, *cmd: Any, check: bool = True, timeout: float = 30, **kw: Any
              ) -> subprocess.CompletedProcess[str]:
        return self._run(self.guest_ns, cmd, check, timeout, **kw)

    def upstream(self, *cmd: Any, check: bool = True, timeout: float = 30, **kw: Any
                 ) -> subprocess.CompletedProcess[str]:
        return self._run(self.upstream_ns, cmd, check, timeout, **kw)

    def _popen(self, ns: str, cmd: tuple[Any, ...], **kw: Any) -> subprocess.Popen[Any]:
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen([IP, "netns", "exec", ns, *map(str, cmd)], **kw)
        self.procs.append(proc)
        return proc

    def popen_host(self, *cmd: Any, **kw: Any) -> subprocess.Popen[Any]:
        return self._popen(self.host_ns, cmd, **kw)

    def popen_guest(self, *cmd: Any, **kw: Any) -> subprocess.Popen[Any]:
        return self._popen(self.guest_ns, cmd, **kw)

    def popen_upstream(self, *cmd: Any, **kw: Any) -> subprocess.Popen[Any]:
        return self._popen(self.upstream_ns, cmd, **kw)

    def path(self, name: str) -> str:
        return os.path.join(self.tmpdir, name)

    def start_daemon(self, *args: str, mode: str = "netns", foreground: bool = True,
                     log_path: str | None = None, socket_path: str | None = None,
                     pcap_path: str | None = None, wait: bool = True,
                     timeout: float = 20.0, env: dict[str, str] | None = None) -> Daemon:
        """Run passtcore-run in the host namespace.

        ``mode="netns"`` serves the guest namespace (tap ``eth0``); ``mode="socket"``
        listens on ``socket_path`` (default: in the sandbox's temp dir). A log file
        is always used (``counters()`` reads it). With ``foreground=False`` the
        daemon forks and ``pid`` comes from its ``--pid`` file.
        """
        n = len(self.daemons)
        log_path = log_path or self.path(f"daemon{n}.log")
        argv = [daemon_binary()]
        if "-l" not in args and "--log-file" not in args:
            argv += ["--log-file", log_path]
        if mode == "netns":
            argv += ["--netns", self.guest_ns]
            if "--ns-ifname" not in args and "-I" not in args:
                argv += ["--ns-ifname", "eth0"]
        elif mode == "socket":
            # socket_path="" leaves the choice to the daemon (/tmp/passt_N.socket).
            if "-s" not in args and "--socket" not in args and socket_path != "":
                socket_path = socket_path or self.path(f"daemon{n}.socket")
                argv += ["--socket", socket_path]
        else:
            raise ValueError(f"unknown mode {mode!r}")
        if pcap_path:
            argv += ["--pcap", pcap_path]
        pid_file = None
        if foreground:
            argv.append("-f")
        elif "-P" not in args and "--pid" not in args:
            pid_file = self.path(f"daemon{n}.pid")
            argv += ["--pid", pid_file]
        argv += list(args)
        # A file, not a pipe, for a foreground daemon's stdio: nobody reads a pipe
        # while the test runs, and a full pipe would block the daemon.
        stderr_path = self.path(f"daemon{n}.stderr")
        with open(stderr_path, "wb") as errf:
            proc = subprocess.Popen([IP, "netns", "exec", self.host_ns, *argv],
                                    stdin=subprocess.DEVNULL,
                                    stdout=errf if foreground else subprocess.PIPE,
                                    stderr=errf if foreground else subprocess.PIPE, env=env)
        pid = proc.pid
        if not foreground:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                stop_process(proc)
                raise
            if proc.returncode != 0:
                raise RuntimeError(f"passtcore-run exited {proc.returncode}: {err.decode()}")
            if pid_file:
                pid = int(Path(pid_file).read_text())
        d = Daemon(self, proc, pid, log_path, socket_path, pcap_path, argv)
        d.stderr_path = stderr_path if foreground else ""
        self.daemons.append(d)
        if wait:
            try:
                if mode == "netns":
                    wait_for(lambda: self._tap_ready() or not d.alive(), timeout,
                              "the daemon's tap in the guest namespace", 0.02)
                else:
                    wait_for(lambda: not socket_path or os.path.exists(socket_path)
                              or not d.alive(), timeout, "the daemon's socket", 0.01)
                # The tap exists slightly before the loop runs: wait for the log line too.
                wait_for(lambda: "ready: serving" in d.log() or not d.alive(), timeout,
                          "the daemon to start", 0.02)
            except TimeoutError:
                d.stop()
                raise
            if not d.alive():
                d.stop()
                err = Path(stderr_path).read_text(errors="replace")
                raise RuntimeError(f"passtcore-run died at start: {err}\n{d.log()}")
        return d

    def _tap_ready(self) -> bool:
        r = subprocess.run([IP, "-n", self.guest_ns, "link", "show", "eth0"],
                           capture_output=True, timeout=10)
        return r.returncode == 0 and b"state" in r.stdout and b",UP" in r.stdout

    # -- teardown ----------------------------------------------------------
    def close(self) -> None:
        for d in list(self.daemons):
            try:
                d.stop()
            except Exception:
                pass
        for p in self.procs:
            if p.poll() is None:
                try:
                    stop_process(p, timeout=3)
                except Exception:
                    pass
        self.procs.clear()
        for ns in reversed(self._created):
            # Anything still running in a namespace (started by us) keeps it alive:
            # kill those PIDs, found via /proc, never by name.
            self._kill_ns_pids(ns)
            subprocess.run([IP, "netns", "del", ns], capture_output=True, timeout=20)
        self._created.clear()
        for etc in self._etc_dirs:
            shutil.rmtree(etc, ignore_errors=True)
        self._etc_dirs.clear()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def _kill_ns_pids(self, ns: str) -> None:
        r = subprocess.run([IP, "netns", "pids", ns], capture_output=True, text=True,
                           timeout=10)
        for tok in r.stdout.split():
            if tok.isdigit() and int(tok) != os.getpid():
                stop_process(None, int(tok), timeout=3)
