"""The four ways of connecting the guest namespace that the benchmark compares.

Each ``Translator.start(env, mtu)`` returns a ``Link``: the translator process
(if any, for its RSS), the guest interface, the address the guest dials to
reach the host ns's servers, and the address those servers bind to.

- ``passtcore``: our daemon in namespace mode, ``passtcore-run --netns``.  The
  gateway address 192.0.2.1 maps to the host ns's 127.0.0.1 (passt's
  "gateway = host" rule), so servers bind 127.0.0.1.  If the daemon does not
  configure the guest interface itself, the benchmark gives it the address
  and route DHCP would hand out (192.0.2.2/24 via 192.0.2.1).
- ``pasta``: Debian's pasta, the same mapping; ``--runas 0`` because we are
  root (otherwise it switches to nobody and cannot open the netns), ``-f`` so
  the PID we hold is pasta's, no ``--debug`` (it crashes with it), all
  automatic port forwarding off so traffic takes the tap path, not splice.
- ``slirp4netns``: guest 10.0.2.100/24, 10.0.2.2 maps to host loopback
  (its default; we do not pass ``--disable-host-loopback``).
- ``veth``: a plain veth pair, the no-translation upper bound.
- ``pasta-upstream`` (with ``--pasta-upstream EXE``): a pasta binary you built
  from upstream, run exactly as Debian's; nothing of it is kept here.
- ``passtcore-stream``, ``passt`` (and ``passt-upstream`` with
  ``--passt-upstream EXE``): the daemon on its QEMU stream socket (``-s``), as
  libvirt runs it for a VM; the guest namespace's end is a tap that a QEMU
  without a machine (``-M none``) joins to the stream netdev through its hub.
  That relay is QEMU's own code; its CPU is not counted as the translator's.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field

from netenv import GW_ADDR4, HOST_ADDR4, PREFIX4, VETH_HOST4, Env, EnvError, sh

START_TIMEOUT = 20.0  # a Python daemon on a loaded 2-core box starts slowly


class TranslatorFailed(RuntimeError):
    """The translator could not be started or configured (message = reason)."""


@dataclass
class Link:
    name: str
    guest_if: str
    target: str            # address the guest connects to
    server_bind: str       # address the host-ns servers listen on
    proc: subprocess.Popen | None = None
    pid: int | None = None
    host_if: str | None = None   # veth baseline: host end, MTU set on both
    log_path: str | None = None
    notes: list[str] = field(default_factory=list)

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def log_highlights(self, limit: int = 3) -> list[str]:
        """The translator's own log lines that explain a failure."""
        if not self.log_path:
            return []
        try:
            with open(self.log_path, errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return []
        keys = ("fail", "error", "traceback", "exception")
        hits = [ln.strip() for ln in lines if any(k in ln.lower() for k in keys)]
        return hits[:limit]

    def final_counters(self) -> dict[str, int]:
        """passtcore-run's counters, from the line it logs when it exits (else {})."""
        if not self.log_path:
            return {}
        try:
            from passtcore.run.counters import parse_line
            with open(self.log_path, errors="replace") as f:
                lines = [ln for ln in f.read().splitlines() if "counters:" in ln]
        except Exception:  # noqa: BLE001 - diagnostics only
            return {}
        return (parse_line(lines[-1]) or {}) if lines else {}

    def exit_reason(self) -> str:
        rc = self.proc.returncode if self.proc is not None else None
        return f"translator exited rc={rc}{_log_tail(self.log_path)}"


def _log_tail(path: str | None, lines: int = 2) -> str:
    if not path:
        return ""
    try:
        with open(path, errors="replace") as f:
            tail = [ln.strip() for ln in f.read().splitlines() if ln.strip()][-lines:]
    except OSError:
        return ""
    return (": " + " | ".join(tail)) if tail else ""


def read_mem_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB, and VmRSS split in RssAnon/RssFile/RssShmem
    (a vhost-user daemon's RssShmem is the guest memory it touched); empty if the
    process is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(rest.split()[0])
    except OSError:
        pass
    return out


class Translator:
    name = ""

    def start(self, env: Env, mtu: int, logdir: str) -> Link:
        raise NotImplementedError

    def set_mtu(self, env: Env, link: Link, mtu: int) -> None:
        env.set_mtu(env.guest, link.guest_if, mtu)
        if link.host_if:
            env.set_mtu(env.host, link.host_if, mtu)

    # shared helpers
    def _spawn(self, env: Env, argv: list[str], logdir: str) -> tuple[subprocess.Popen, str]:
        log_path = os.path.join(logdir, f"{self.name}-{env.suffix}.log")
        log = open(log_path, "wb")
        try:
            proc = env.spawn(env.host, argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        return proc, log_path

    def _wait_guest_if(self, env: Env, proc: subprocess.Popen, log_path: str) -> str:
        try:
            env.wait_for(lambda: bool(env.guest_links()), START_TIMEOUT, "guest interface", proc)
        except EnvError as exc:
            raise TranslatorFailed(f"{exc}{_log_tail(log_path)}") from exc
        return env.guest_links()[0]

    def _wait_configured(self, env: Env, ifname: str, proc: subprocess.Popen, log_path: str) -> None:
        try:
            env.wait_for(lambda: env.guest_has_ipv4(ifname) and env.guest_has_default4(),
                         START_TIMEOUT, "IPv4 address and default route in the guest", proc)
        except EnvError as exc:
            raise TranslatorFailed(f"{exc}{_log_tail(log_path)}") from exc


class Veth(Translator):
    name = "veth"

    def start(self, env: Env, mtu: int, logdir: str) -> Link:
        guest_if = env.add_veth_baseline()
        link = Link(self.name, guest_if, VETH_HOST4, VETH_HOST4, host_if=env.veth_host_ifname())
        self.set_mtu(env, link, mtu)
        return link


class Pasta(Translator):
    name = "pasta"

    def __init__(self, name: str = "pasta", exe: str = "pasta") -> None:
        self.name = name
        self.exe = exe

    def start(self, env: Env, mtu: int, logdir: str) -> Link:
        argv = [self.exe, "-f", "-q", "--runas", "0", "--config-net",
                "-t", "none", "-u", "none", "-T", "none", "-U", "none",
                "-m", str(mtu), "--netns", f"/run/netns/{env.guest}"]
        proc, log_path = self._spawn(env, argv, logdir)
        guest_if = self._wait_guest_if(env, proc, log_path)
        self._wait_configured(env, guest_if, proc, log_path)
        link = Link(self.name, guest_if, GW_ADDR4, "127.0.0.1", proc=proc, pid=proc.pid, log_path=log_path)
        self.set_mtu(env, link, mtu)
        return link


class Slirp4netns(Translator):
    name = "slirp4netns"  # accepts --mtu up to 65521

    def start(self, env: Env, mtu: int, logdir: str) -> Link:
        argv = ["slirp4netns", "--configure", f"--mtu={mtu}", "--netns-type=path",
                f"/run/netns/{env.guest}", "tap0"]
        proc, log_path = self._spawn(env, argv, logdir)
        guest_if = self._wait_guest_if(env, proc, log_path)
        self._wait_configured(env, guest_if, proc, log_path)
        # 10.0.2.2 is slirp's host alias: it connects to the host ns's 127.0.0.1.
        link = Link(self.name, guest_if, "10.0.2.2", "127.0.0.1", proc=proc, pid=proc.pid, log_path=log_path)
        self.set_mtu(env, link, mtu)
        return link


def passtcore_run_path() -> str:
    try:
        from passtcore.sandbox import daemon_binary
        return daemon_binary()
    except Exception:  # noqa: BLE001 - fall back to the venv's console script
        cand = os.path.join(os.path.dirname(sys.executable), "passtcore-run")
        return cand if os.path.exists(cand) else "passtcore-run"


class PasstcoreRun(Translator):
    """passtcore-run from this venv, or ``exe`` (another build, e.g. a baseline checkout)."""

    name = "passtcore"

    def __init__(self, name: str = "passtcore", exe: str | None = None) -> None:
        self.name = name
        self.exe = exe

    def _help(self, exe: str) -> str:
        try:
            res = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TranslatorFailed(f"passtcore-run --help: {exc}") from exc
        text = res.stdout + res.stderr
        if "--netns" not in text:
            last = text.strip().splitlines()[-1:] or [""]
            raise TranslatorFailed(f"passtcore-run has no --netns (namespace mode): {last[0][:160]}")
        return text

    def start(self, env: Env, mtu: int, logdir: str) -> Link:
        exe = self.exe or passtcore_run_path()
        help_text = self._help(exe)
        pidfile = os.path.join(logdir, f"passtcore-{env.suffix}.pid")
        argv = [exe, "--netns", f"/run/netns/{env.guest}", "-f", "-m", str(mtu),
                "-t", "none", "-u", "none", "-P", pidfile]
        if "--ns-ifname" in help_text:
            argv += ["--ns-ifname", "eth0"]  # as passtcore.sandbox names it
        if "--config-net" in help_text:
            argv.append("--config-net")
        # No --runas: like passt, the daemon drops to nobody; the sandbox sets
        # ping_group_range for that, as KubeVirt does in a pod.
        proc, log_path = self._spawn(env, argv, logdir)
        guest_if = self._wait_guest_if(env, proc, log_path)
        link = Link(self.name, guest_if, GW_ADDR4, "127.0.0.1", proc=proc, pid=proc.pid, log_path=log_path)
        shown = " ".join(argv[1:]).replace(env.guest, "<guest>").replace(pidfile, "<pidfile>")
        link.notes.append("argv: " + shown.replace(f"-m {mtu}", "-m <MTU>"))
        configured = False
        if "--config-net" in help_text:
            try:
                self._wait_configured(env, guest_if, proc, log_path)
                configured = True
            except TranslatorFailed:
                if proc.poll() is not None:
                    raise
                link.notes.append("--config-net did not configure the guest")
        if not configured:
            # What the daemon's DHCP would hand out: the host's address, its gateway.
            sh(["ip", "-n", env.guest, "-4", "addr", "flush", "dev", guest_if])
            sh(["ip", "-n", env.guest, "addr", "add", f"{HOST_ADDR4}/{PREFIX4}", "dev", guest_if])
            sh(["ip", "-n", env.guest, "link", "set", guest_if, "up"])
            sh(["ip", "-n", env.guest, "route", "replace", "default", "via", GW_ADDR4])
            link.notes.append("guest configured statically (192.0.2.2/24 via 192.0.2.1)")
        # The daemon may fork despite -f; trust its pid file when it writes one.
        try:
            with open(pidfile) as f:
                link.pid = int(f.read().strip())
        except (OSError, ValueError):
            pass
        if proc.poll() is not None:
            raise TranslatorFailed(link.exit_reason())
        self.set_mtu(env, link, mtu)
        return link


class StreamSocket(Translator):
    """A daemon serving the QEMU stream socket, the guest's tap on the far side of
    a QEMU hub (see the module docstring)."""

    def __init__(self, name: str, exe: str | None, passtcore: bool = False) -> None:
        self.name = name
        self.exe = exe
        self.passtcore = passtcore

    def start(self, env: Env, mtu: int, logdir: str) -> Link:
        exe = self.exe or (passtcore_run_path() if self.passtcore else "passt")
        sock = os.path.join(logdir, f"{self.name}-{env.suffix}.sock")
        if os.path.exists(sock):
            os.unlink(sock)
        argv = [exe, "-f", "-q", "--runas", "0", "-s", sock, "-t", "none", "-u", "none",
                "-m", str(mtu)]
        proc, log_path = self._spawn(env, argv, logdir)
        try:
            env.wait_for(lambda: os.path.exists(sock), START_TIMEOUT, "the stream socket", proc)
        except EnvError as exc:
            raise TranslatorFailed(f"{exc}{_log_tail(log_path)}") from exc
        qemu_log = open(os.path.join(logdir, f"{self.name}-{env.suffix}-qemu.log"), "wb")
        try:
            qemu = env.spawn(env.guest, [
                "qemu-system-x86_64", "-M", "none", "-nodefaults", "-display", "none",
                "-netdev", f"stream,id=s0,server=off,addr.type=unix,addr.path={sock}",
                "-netdev", "tap,id=t0,ifname=eth0,script=no,downscript=no",
                "-netdev", "hubport,id=p0,hubid=0,netdev=s0",
                "-netdev", "hubport,id=p1,hubid=0,netdev=t0"],
                stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=subprocess.STDOUT)
        finally:
            qemu_log.close()
        guest_if = self._wait_guest_if(env, qemu, log_path)
        sh(["ip", "-n", env.guest, "addr", "add", f"{HOST_ADDR4}/{PREFIX4}", "dev", guest_if])
        sh(["ip", "-n", env.guest, "link", "set", guest_if, "mtu", str(mtu), "up"])
        sh(["ip", "-n", env.guest, "route", "replace", "default", "via", GW_ADDR4])
        link = Link(self.name, guest_if, GW_ADDR4, "127.0.0.1", proc=proc, pid=proc.pid,
                    log_path=log_path)
        link.notes.append("guest: a tap joined to the stream socket by QEMU's hub "
                          "(qemu -M none); QEMU's CPU not counted")
        return link


ALL: dict[str, Translator] = {t.name: t for t in (
    PasstcoreRun(), StreamSocket("passtcore-stream", None, passtcore=True),
    StreamSocket("passt", None), Pasta(), Slirp4netns(), Veth())}
