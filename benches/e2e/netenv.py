"""Private network namespaces for the end-to-end benchmark.

Every translator under test gets its own fresh world, so no state (TIME_WAIT
sockets, neighbour entries, a crashed daemon) leaks from one row into the next:

    upstream ns  ---veth---  "host" ns  ===translator===  guest ns
    192.0.2.1/24             192.0.2.2/24                 (tap made by the translator,
    2001:db8::1/64           2001:db8::2/64                or a veth for the baseline)
                             default route via 192.0.2.1
                             /etc/netns/<host>/resolv.conf -> nameserver 127.0.0.1

Only documentation addresses are used, the host ns has no path to the real
network (its default route ends in the upstream ns, which routes nowhere), and
the servers listen on the host ns's loopback or its own addresses.  Commands
run in a namespace through ``ip netns exec``, which also bind-mounts the
per-namespace resolv.conf, so a translator copying "the host's DNS" copies
127.0.0.1.

The topology itself comes from ``passtcore.sandbox.Sandbox`` (shared with
the test-suite and the demo); ``Env`` adds what only the benchmark needs: the
plain-veth baseline, sysctls for the connection-rate loop, and processes it
owns by PID (to read their RSS, and with output to files, never to pipes a
busy translator could fill).  If ``passtcore.run`` cannot be imported at all
(it is being written by others at the same time), ``Env`` builds the same
topology itself, so the pasta, slirp4netns and veth rows keep working
(``PASSTCORE_E2E_OWN_NETNS=1`` forces that path).
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

HOST_ADDR4 = "192.0.2.2"
GW_ADDR4 = "192.0.2.1"
PREFIX4 = 24
HOST_ADDR6 = "2001:db8::2"
GW_ADDR6 = "2001:db8::1"
PREFIX6 = 64
# The plain-veth baseline: a second link between host ns and guest ns.
VETH_HOST4 = "198.51.100.1"
VETH_GUEST4 = "198.51.100.2"

# Sysctls set in the host and guest namespaces so that the connection-rate
# loop is limited by the translator, not by ephemeral ports in TIME_WAIT.
_BENCH_SYSCTLS = {
    "net.ipv4.ip_local_port_range": "1024 65000",
    "net.ipv4.tcp_tw_reuse": "1",
}


class EnvError(RuntimeError):
    """Setting up or using a namespace failed (message says which command)."""


def sh(argv: Sequence[str], timeout: float = 20.0, check: bool = True) -> subprocess.CompletedProcess:
    """Run a short command, capturing output; raise EnvError with stderr on failure."""
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise EnvError(f"timed out after {timeout:.0f}s: {' '.join(argv)}") from exc
    if check and res.returncode != 0:
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise EnvError(f"{' '.join(argv)}: rc={res.returncode}: {msg[-1] if msg else ''}")
    return res


def stop_process(proc: subprocess.Popen, grace: float = 3.0) -> int | None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        except ProcessLookupError:
            pass
    return proc.returncode


def _sandbox_class():
    if os.environ.get("PASSTCORE_E2E_OWN_NETNS") == "1":  # exercise the fallback
        return None
    try:
        from passtcore.sandbox import Sandbox
    except Exception:  # noqa: BLE001 - any breakage there must not stop the other rows
        return None
    return Sandbox


@dataclass
class Env:
    """One benchmark world; use as a context manager (cleanup even on Ctrl-C)."""

    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    upstream: str = ""
    host: str = ""
    guest: str = ""
    _procs: list[subprocess.Popen] = field(default_factory=list)
    _created: list[str] = field(default_factory=list)
    _etc_dir: str | None = None
    sandbox: object | None = None
    topology: str = ""

    def __post_init__(self) -> None:
        cls = _sandbox_class()
        if cls is not None:
            self.sandbox = cls(prefix="pcb")
            self.suffix = self.sandbox.suffix
            self.upstream = self.sandbox.upstream_ns
            self.host = self.sandbox.host_ns
            self.guest = self.sandbox.guest_ns
            self.topology = "passtcore.sandbox.Sandbox"
        else:
            self.upstream = self.upstream or f"pcbu-{self.suffix}"
            self.host = self.host or f"pcbh-{self.suffix}"
            self.guest = self.guest or f"pcbg-{self.suffix}"
            self.topology = "benches/e2e/netenv.py fallback"

    # -- commands in namespaces -------------------------------------------------
    @staticmethod
    def in_ns(ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def run(self, ns: str, argv: Sequence[str], timeout: float = 20.0, check: bool = True) -> subprocess.CompletedProcess:
        return sh(self.in_ns(ns, argv), timeout=timeout, check=check)

    def spawn(self, ns: str, argv: Sequence[str], **kw) -> subprocess.Popen:
        """Start a long-running process in ``ns``; it is stopped by ``close()``.

        ``ip netns exec`` execs the command, so the Popen PID is the command's PID.
        """
        proc = subprocess.Popen(self.in_ns(ns, argv), **kw)
        self._procs.append(proc)
        return proc

    # -- topology ------------------------------------------------------------------
    def setup(self) -> Env:
        if self.sandbox is not None:
            self.sandbox.setup()
        else:
            self._setup_fallback()
        for ns in (self.host, self.guest):
            for key, value in _BENCH_SYSCTLS.items():
                self.run(ns, ["sysctl", "-q", "-w", f"{key}={value}"])
        return self

    def _setup_fallback(self) -> None:
        for ns in (self.upstream, self.host, self.guest):
            sh(["ip", "netns", "add", ns])
            self._created.append(ns)
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        self._etc_dir = f"/etc/netns/{self.host}"
        os.makedirs(self._etc_dir, exist_ok=True)
        with open(os.path.join(self._etc_dir, "resolv.conf"), "w") as f:
            f.write("nameserver 127.0.0.1\n")
        up_if = f"up{self.suffix}"
        sh(["ip", "link", "add", up_if, "netns", self.upstream, "type", "veth",
            "peer", "name", "eth0", "netns", self.host])
        u, h = self.upstream, self.host
        sh(["ip", "-n", u, "addr", "add", f"{GW_ADDR4}/{PREFIX4}", "dev", up_if])
        sh(["ip", "-n", u, "addr", "add", f"{GW_ADDR6}/{PREFIX6}", "dev", up_if, "nodad"])
        sh(["ip", "-n", u, "link", "set", up_if, "up"])
        sh(["ip", "-n", h, "addr", "add", f"{HOST_ADDR4}/{PREFIX4}", "dev", "eth0"])
        sh(["ip", "-n", h, "addr", "add", f"{HOST_ADDR6}/{PREFIX6}", "dev", "eth0", "nodad"])
        sh(["ip", "-n", h, "link", "set", "eth0", "up"])
        sh(["ip", "-n", h, "route", "add", "default", "via", GW_ADDR4])
        sh(["ip", "-n", h, "-6", "route", "add", "default", "via", GW_ADDR6])

    def add_veth_baseline(self) -> str:
        """A veth straight from the host ns into the guest ns; returns the guest ifname."""
        host_if = f"vb{self.suffix}"
        sh(["ip", "link", "add", host_if, "netns", self.host, "type", "veth",
            "peer", "name", "eth0", "netns", self.guest])
        sh(["ip", "-n", self.host, "addr", "add", f"{VETH_HOST4}/24", "dev", host_if])
        sh(["ip", "-n", self.host, "link", "set", host_if, "up"])
        sh(["ip", "-n", self.guest, "addr", "add", f"{VETH_GUEST4}/24", "dev", "eth0"])
        sh(["ip", "-n", self.guest, "link", "set", "eth0", "up"])
        return "eth0"

    def veth_host_ifname(self) -> str:
        return f"vb{self.suffix}"

    def set_mtu(self, ns: str, ifname: str, mtu: int) -> None:
        sh(["ip", "-n", ns, "link", "set", "dev", ifname, "mtu", str(mtu)])

    def guest_links(self) -> list[str]:
        """Names of the guest's non-loopback links."""
        out = sh(["ip", "-n", self.guest, "-o", "link", "show"]).stdout
        names = []
        for line in out.splitlines():
            name = line.split(":", 2)[1].strip().split("@")[0]
            if name != "lo":
                names.append(name)
        return names

    def guest_has_ipv4(self, ifname: str) -> bool:
        out = sh(["ip", "-n", self.guest, "-4", "-o", "addr", "show", "dev", ifname], check=False).stdout
        return " inet " in out

    def guest_has_default4(self) -> bool:
        out = sh(["ip", "-n", self.guest, "-4", "route", "show", "default"], check=False).stdout
        return out.strip().startswith("default")

    def wait_for(self, pred, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
        """Poll ``pred`` every 50 ms, failing early if ``proc`` exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            if proc is not None and proc.poll() is not None:
                raise EnvError(f"exited with rc={proc.returncode} before {what}")
            time.sleep(0.05)
        raise EnvError(f"no {what} after {timeout:.0f}s")

    # -- cleanup -------------------------------------------------------------------
    def close(self) -> None:
        for proc in reversed(self._procs):
            try:
                stop_process(proc)
            except Exception:  # keep cleaning up the rest
                pass
        self._procs.clear()
        if self.sandbox is not None:
            # Also kills by PID whatever still runs in its namespaces, then
            # removes them and the /etc/netns dir.
            self.sandbox.close()
            return
        for ns in reversed(self._created):
            sh(["ip", "netns", "del", ns], check=False)
        self._created.clear()
        if self._etc_dir:
            shutil.rmtree(self._etc_dir, ignore_errors=True)
            self._etc_dir = None

    def __enter__(self) -> Env:
        try:
            return self.setup()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()


def make_env() -> Env:
    """The one factory run.py uses (swap point for passtcore.sandbox)."""
    return Env()
