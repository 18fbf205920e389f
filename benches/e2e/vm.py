"""The VM rows of the end-to-end benchmark: a QEMU guest behind each daemon.

A real Linux guest (``passtcore.sandbox.guest``: Debian's cloud kernel, a
busybox initramfs) gets its network only from the daemon under test:

- ``vm-passtcore``: ``passtcore-run --vhost-user`` (QEMU's virtio-net device
  served by the daemon, guest memory shared), with the device's defaults:
  checksum/TSO offloads and MRG_RXBUF on;
- ``vm-passtcore-plain``: the same with the device's csum/TSO/ECN/UFO and
  mrg_rxbuf off (``NO_OFFLOADS``, as ``tests/daemon/test_vhost_user.py``). At
  guest MTU 1500 only: without GSO, mergeable buffers or VIRTIO_NET_F_MTU
  (which the daemon does not offer, so QEMU's ``host_mtu`` cannot reach the
  guest) Linux posts 1.5 KiB receive buffers, and no frame beyond MTU 1500 can
  reach the guest; its MTU 65520 cells show ``n/a``;
- ``vm-passtcore-stream``: ``passtcore-run`` on its QEMU stream socket
  (``-netdev stream``; QEMU's own virtio-net back end, no offloads);
- ``vm-passt``: Debian's ``passt`` on the stream socket (``--runas 0``), the
  reference of every ratio;
- ``vm-passt-upstream`` (with ``--passt-upstream EXE``): that build with
  ``--vhost-user`` if its ``--help`` lists it, else on the stream socket.

QEMU (TCG: ``accel=kvm`` hangs on the reference machine; ``PASSTCORE_KVM=1``
to use it) and the daemon run in the bench's private host namespace; the
guest has no other netdev. The guest image is the default one plus iperf3 (the
host's binary with the libraries ``ldd`` lists) and ``guestprobe`` (a small C
request/response client, ``guestprobe.py``), cached under
``.cache/guest/``. Under TCG the emulated guest CPU is the limit, so each cell
is short and every row boots once: the daemon is started with ``-m 65520``
(the MTU its DHCP hands out), the MTU 65520 cells run, then the guest sets its
own MTU to 1500 (TCP's MSS follows it; the daemon is not restarted).

Every guest command runs under busybox ``timeout -s KILL`` and the serial
console read under a longer deadline; a console that stops answering marks
the row's remaining cells failed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field

import guestprobe
import measure
from measure import ECHO_PORT, IPERF_PORT, MeasureFailed
from netenv import GW_ADDR4, Env, EnvError
from translators import Link, Translator, TranslatorFailed, _log_tail, passtcore_run_path

GUEST_IPERF = "/usr/bin/iperf3"
GUEST_PROBE = "/usr/bin/guestprobe"
MAC = "52:54:00:12:34:56"
MEM_MIB = 512
BOOT_TIMEOUT = 180.0     # a TCG boot on a loaded 2-core box: 20-60 s
RR_SIZE = 64
NO_OFFLOADS = ",".join(f"{f}=off" for f in ("csum", "guest_csum", "guest_tso4", "guest_tso6",
                                             "host_tso4", "host_tso6", "guest_ecn", "host_ecn",
                                             "guest_ufo", "host_ufo", "mrg_rxbuf"))


def qemu() -> str | None:
    return shutil.which("qemu-system-x86_64")


def qemu_version() -> str:
    exe = qemu()
    if not exe:
        return "unavailable"
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return (out.strip().splitlines() or ["unavailable"])[0]


def qemu_major() -> int:
    m = re.search(r"version (\d+)", qemu_version())
    return int(m.group(1)) if m else 0


def kernel_version(path: str) -> str:
    """The version string of a bzImage (setup header field ``kernel_version``)."""
    try:
        with open(path, "rb") as f:
            data = f.read(0x10000)
        off = struct.unpack_from("<H", data, 0x20E)[0] + 0x200
        return data[off:data.index(b"\0", off)].decode(errors="replace").split()[0]
    except (OSError, ValueError, struct.error, IndexError):
        return "unknown"


def _progress(msg: str) -> None:
    print(f"  vm: {msg}", file=sys.stderr, flush=True)


_IMAGE: tuple[str, str] | None = None


def bench_image() -> tuple[str, str]:
    """(kernel, initramfs) of the guest with iperf3 and guestprobe; built once, on demand."""
    global _IMAGE
    if _IMAGE is None:
        try:
            from passtcore.sandbox import guest
        except Exception as exc:  # noqa: BLE001 - the other rows go on
            raise TranslatorFailed(f"passtcore.sandbox.guest: {type(exc).__name__}: {exc}") from exc
        iperf = shutil.which("iperf3")
        if not iperf:
            raise TranslatorFailed("no iperf3 on the host to copy into the guest")
        try:
            probe = guestprobe.build(str(guest.cache_dir() / "bench"), log=_progress)
        except (guestprobe.BuildFailed, OSError, subprocess.SubprocessError) as exc:
            raise TranslatorFailed(f"guest probe: {exc}") from exc
        try:
            _IMAGE = guest.image(log=_progress, extra={GUEST_IPERF: iperf, GUEST_PROBE: probe})
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
            raise TranslatorFailed(f"guest image: {exc}") from exc
    return _IMAGE


@dataclass
class VMLink(Link):
    qemu: subprocess.Popen | None = None
    console: object | None = None
    qemu_log: str | None = None
    dead: str | None = None          # set once the guest console stops answering
    boot_seconds: float = 0.0
    guest_mtu: int = 0
    extra: dict = field(default_factory=dict)

    def alive(self) -> bool:
        return (self.dead is None and (self.proc is None or self.proc.poll() is None)
                and (self.qemu is None or self.qemu.poll() is None))

    def exit_reason(self) -> str:
        if self.proc is not None and self.proc.poll() is not None:
            return f"daemon exited rc={self.proc.returncode}{_log_tail(self.log_path)}"
        if self.qemu is not None and self.qemu.poll() is not None:
            return f"QEMU exited rc={self.qemu.returncode}{_log_tail(self.qemu_log)}"
        return self.dead or "?"

    def close(self) -> None:
        if self.console is not None:
            try:
                self.console.close()
            except OSError:
                pass
            self.console = None


class VM(Translator):
    """A daemon serving a QEMU guest; ``vhost`` (vhost-user) or the stream socket."""

    def __init__(self, name: str, exe: str | None = None, passtcore: bool = True,
                 vhost: bool = True, device_opts: str = "",
                 skip_mtus: dict[int, str] | None = None) -> None:
        self.name = name
        self.exe = exe
        self.passtcore = passtcore
        self.vhost = vhost
        self.device_opts = device_opts
        self.skip_mtus = skip_mtus or {}   # MTU -> why its cells cannot run

    def describe(self) -> str:
        what = "passtcore-run" if self.passtcore else (self.exe or "passt")
        mode = "--vhost-user" if self.vhost else "-s (stream)"
        return f"{what} {mode}" + (f", device {self.device_opts}" if self.device_opts else "")

    def start(self, env: Env, mtu: int, logdir: str) -> VMLink:
        if not qemu():
            raise TranslatorFailed("no qemu-system-x86_64 (scripts/install-system-deps.sh)")
        if self.vhost and qemu_major() < 9:
            raise TranslatorFailed("vhost-user under TCG needs QEMU >= 9 (scripts/install-"
                                   "system-deps.sh installs 10 from bookworm-backports)")
        kernel, initrd = bench_image()
        exe = self.exe or (passtcore_run_path() if self.passtcore else "passt")
        sock = os.path.join(logdir, f"{self.name}-{env.suffix}.sock")
        con_path = os.path.join(logdir, f"{self.name}-{env.suffix}.con")
        for p in (sock, con_path):
            if os.path.exists(p):
                os.unlink(p)
        argv = [exe] + (["--vhost-user"] if self.vhost else []) + [
            "-f", "--runas", "0", "-s", sock, "-t", "none", "-u", "none", "-m", str(mtu)]
        log_path = None
        if self.passtcore:
            # a log file (not -q): the counters line at exit, the offloads line
            log_path = os.path.join(logdir, f"{self.name}-{env.suffix}.daemon.log")
            argv += ["-l", log_path]
        else:
            argv.append("-q")
        proc, out_path = self._spawn(env, argv, logdir)
        log_path = log_path or out_path
        try:
            env.wait_for(lambda: os.path.exists(sock), 20.0, "the daemon's socket", proc)
        except EnvError as exc:
            raise TranslatorFailed(f"{exc}{_log_tail(out_path)}{_log_tail(log_path)}") from exc
        from passtcore.sandbox.guest import qemu_argv

        accel = "kvm" if os.environ.get("PASSTCORE_KVM") == "1" else "tcg"
        qemu_cmd = qemu_argv((kernel, initrd), con_path,
                             vhost_socket=sock if self.vhost else None,
                             stream_socket=None if self.vhost else sock, mac=MAC,
                             device_opts=self.device_opts, mem_mib=MEM_MIB,
                             append="mitigations=off")
        qemu_log = os.path.join(logdir, f"{self.name}-{env.suffix}-qemu.log")
        with open(qemu_log, "wb") as qlog:
            q = env.spawn(env.host, qemu_cmd, stdin=subprocess.DEVNULL, stdout=qlog,
                          stderr=subprocess.STDOUT)
        link = VMLink(self.name, "eth0", GW_ADDR4, "127.0.0.1", proc=proc, pid=proc.pid,
                      log_path=log_path, qemu=q, qemu_log=qemu_log)
        link.extra["guest_kernel"] = kernel_version(kernel)
        shown = " ".join(argv[1:]).replace(sock, "<sock>")
        if self.passtcore:
            shown = shown.replace(log_path, "<log>")
        link.notes.append(f"daemon: {os.path.basename(exe)} {shown}")
        link.notes.append(f"guest: QEMU {accel.upper()} 1 vCPU {MEM_MIB} MiB, "
                          + ("vhost-user" if self.vhost else "-netdev stream")
                          + (f", virtio-net {self.device_opts}" if self.device_opts
                             else ", virtio-net defaults"))
        try:
            self._boot(link, con_path, mtu)
        except BaseException:
            link.close()
            raise
        return link

    def _boot(self, link: VMLink, con_path: str, mtu: int) -> None:
        from passtcore.sandbox.guest import Console

        t0 = time.monotonic()
        try:
            link.console = Console(con_path, timeout=30)
            link.console.wait_ready(BOOT_TIMEOUT)
        except (OSError, TimeoutError, EOFError) as exc:
            raise TranslatorFailed(f"guest boot: {type(exc).__name__}: {str(exc)[-200:]}"
                                   f"{_log_tail(link.qemu_log)}") from exc
        link.boot_seconds = round(time.monotonic() - t0, 1)
        _progress(f"{self.name}: guest booted in {link.boot_seconds} s")
        try:
            rc, out = link.console.run("udhcpc -i eth0 -n -q -t 5 -T 2 -s "
                                       "/usr/share/udhcpc/default.script", 90)
        except (OSError, TimeoutError, EOFError) as exc:
            raise TranslatorFailed(f"guest DHCP: {exc}") from exc
        if rc != 0 or "lease 192.0.2.2/" not in out:
            raise TranslatorFailed(f"guest DHCP: rc={rc}: {out.strip()[-200:]}"
                                   f"{_log_tail(link.log_path)}")
        link.extra["lease"] = out.strip().splitlines()[-1]
        # the connection loop is limited by the daemon, not by ports in TIME_WAIT
        guest_run(link, "echo '1024 65000' > /proc/sys/net/ipv4/ip_local_port_range; "
                        "echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse", 20, what="sysctls")
        set_guest_mtu(link, mtu)


def guest_run(link: VMLink, cmd: str, timeout: float, what: str = "") -> str:
    """Run ``cmd`` on the guest console; MeasureFailed if it fails or the console is gone."""
    if link.dead:
        raise MeasureFailed(link.dead)
    if not link.alive():
        raise MeasureFailed(link.exit_reason())
    try:
        rc, out = link.console.run(cmd, timeout)
    except (OSError, TimeoutError, EOFError) as exc:
        link.dead = f"guest console stopped answering ({type(exc).__name__})"
        raise MeasureFailed(f"{link.dead}: {str(exc)[-160:]}") from exc
    if rc != 0:
        raise MeasureFailed(f"guest {what or cmd.split()[0]}: rc={rc}: {out.strip()[-200:]}")
    return out


def set_guest_mtu(link: VMLink, mtu: int) -> None:
    out = guest_run(link, f"ip link set eth0 mtu {mtu} && cat /sys/class/net/eth0/mtu", 20,
                    what="ip link set mtu")
    if out.strip().splitlines()[-1:] != [str(mtu)]:
        raise MeasureFailed(f"guest MTU is {out.strip()!r}, not {mtu}")
    link.guest_mtu = mtu


def _json_in(text: str) -> dict:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise MeasureFailed(f"no JSON in the guest's output: {text.strip()[-200:]!r}")
    try:
        return json.loads(text[start:end + 1])
    except json.JSONDecodeError as exc:
        raise MeasureFailed(f"bad JSON from the guest ({exc}): {text.strip()[-200:]!r}") from exc


def iperf(link: VMLink, seconds: int, reverse: bool) -> dict:
    """iperf3 -c in the guest (MTU as set), the server in the host ns; the daemon's and
    QEMU's CPU over the run."""
    cmd = (f"timeout -s KILL {seconds + 25} {GUEST_IPERF} -c {link.target} -p {IPERF_PORT} "
           f"-t {seconds} -J -P 1 --get-server-output --connect-timeout 3000"
           + (" -R --rcv-timeout 10000" if reverse else "")
           + " > /tmp/iperf.json 2> /tmp/iperf.err; echo iperf3 rc=$?")
    cpu0, q0 = measure.cpu_seconds(link.pid), measure.cpu_seconds(link.qemu.pid)
    w0 = time.monotonic()
    guest_run(link, cmd, seconds + 45)
    wall = time.monotonic() - w0
    cpu1, q1 = measure.cpu_seconds(link.pid), measure.cpu_seconds(link.qemu.pid)
    text = guest_run(link, "cat /tmp/iperf.json /tmp/iperf.err", 30)
    out = measure.parse_iperf(_json_in(text), reverse)
    out["guest_mtu"] = link.guest_mtu
    if cpu0 is not None and cpu1 is not None and out["bytes"]:
        out["translator_cpu_seconds"] = round(cpu1 - cpu0, 3)
        out["cpu_s_per_gib"] = round((cpu1 - cpu0) / (out["bytes"] / (1 << 30)), 4)
    if q0 is not None and q1 is not None:
        out["qemu_cpu_seconds"] = round(q1 - q0, 3)
        out["wall_seconds"] = round(wall, 2)
    return out


def rr(link: VMLink, seconds: float, rounds: int) -> dict:
    out = guest_run(link, f"timeout -s KILL {int(seconds) + 15} {GUEST_PROBE} rr {link.target} "
                          f"{ECHO_PORT} {RR_SIZE} {seconds} {rounds}", seconds + 40, what="guestprobe rr")
    doc = _json_in(out)
    if "error" in doc:
        raise MeasureFailed(doc["error"])
    return doc


def crr(link: VMLink, seconds: float) -> dict:
    out = guest_run(link, f"timeout -s KILL {int(seconds) + 15} {GUEST_PROBE} crr {link.target} "
                          f"{ECHO_PORT} {RR_SIZE} {seconds}", seconds + 40, what="guestprobe crr")
    doc = _json_in(out)
    if "error" in doc:
        raise MeasureFailed(doc["error"])
    if not doc.get("connections"):
        raise MeasureFailed(f"no connection succeeded: {doc.get('last_error')}")
    return doc


def upstream_has_vhost_user(exe: str) -> bool:
    try:
        r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--vhost-user" in (r.stdout + r.stderr)


VMS: dict[str, VM] = {t.name: t for t in (
    VM("vm-passtcore"),
    VM("vm-passtcore-plain", device_opts=NO_OFFLOADS,
       skip_mtus={65520: "n/a: no GSO, mergeable buffers or F_MTU: 1.5 KiB receive buffers"}),
    VM("vm-passtcore-stream", vhost=False),
    VM("vm-passt", passtcore=False, vhost=False))}


def upstream(exe: str) -> VM:
    return VM("vm-passt-upstream", exe=exe, passtcore=False, vhost=upstream_has_vhost_user(exe))
