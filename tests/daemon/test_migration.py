"""Live migration with real peers: two QEMU 10 processes, each with a vhost-user
NIC served by its own ``passtcore-run --vhost-user``, a real Linux guest moved
from one to the other over QMP while TCP connections are in flight.

As upstream passt's own migration test runs it: both daemons, both QEMUs and the
host peers in one private network namespace, the target QEMU waiting with
``-incoming`` on loopback. In one namespace the source must close the sockets it
hands over (``--migrate-no-linger``: the target re-creates the same 4-tuples),
and the target gets its own forwarded port (the source still holds 8080; the
migrated inbound connection keeps its port through repair mode).

With ``passtcore-repair`` on both sides, three connections survive: guest->host
and host->guest streams of 100 MiB (paced, so that the migration happens in the
middle; sha256 equal at both ends) and an idle inbound interactive one; pcaps of
both daemons show no RST. Without it, the migration still succeeds, the guest
keeps its address, its old connections are reset at once and new ones work. A
target that refuses the state fails the migration, and the source takes its
connections back. With upstream builds given (``PASSTCORE_UPSTREAM_PASST``,
``PASSTCORE_UPSTREAM_PASST_REPAIR``), passt's format is checked both ways.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from typing import Any

import pytest

from passtcore.sandbox import Sandbox, parse_line, stop_process, wait_for
from passtcore.sandbox.qmp import Qmp
from tests.daemon import qemu_guest
from tests.daemon.qemu_guest import boot, start_qemu

pytestmark = [pytest.mark.netns, pytest.mark.qemu]

# upstream builds to compare with (not part of the repository; skipped without them):
# passt (2025-02 or later) in a daemon's place, passt-repair as the source's helper
UPSTREAM = os.environ.get("PASSTCORE_UPSTREAM_PASST")
UPSTREAM_REPAIR = os.environ.get("PASSTCORE_UPSTREAM_PASST_REPAIR")
# the device features upstream passt offers (not our offloads, EVENT_IDX, INDIRECT_DESC)
PASST_FEATURES = ",".join(f"{f}=off" for f in ("csum", "guest_tso4", "guest_tso6", "host_tso4",
                                               "host_tso6", "guest_ecn", "host_ecn",
                                               "guest_ufo", "host_ufo", "event_idx",
                                               "indirect_desc"))
BULK = 100 << 20
RATE = 24 << 20          # bytes/s each way: the streams take ~4 s, the migration ~1 s
SRC_FWD, TGT_FWD = 8080, 8081
INCOMING = 4444


@pytest.fixture(scope="module")
def guest_image() -> tuple[str, str]:
    return qemu_guest.guest_image()


# The host's ends: a paced sender (7101, to the guest), a paced receiver (7102,
# from the guest), and an interactive client of the forwarded port driven by
# commands on stdin ("connect PORT", "send TEXT", "recv", "status").
PEER = r"""
import hashlib, json, os, socket, sys, threading, time
BULK, RATE = int(sys.argv[1]), int(sys.argv[2])
state = {"sent": 0, "received": 0, "send_stall": 0.0, "recv_stall": 0.0}

def listen(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(1); s.settimeout(120); return s

def sender(ls):
    c, _ = ls.accept(); c.settimeout(60); h = hashlib.sha256(); t0 = time.monotonic()
    try:
        while state["sent"] < BULK:
            b = os.urandom(min(BULK - state["sent"], 128 << 10))
            t = time.monotonic(); c.sendall(b)
            state["send_stall"] = max(state["send_stall"], time.monotonic() - t)
            h.update(b); state["sent"] += len(b)
            ahead = state["sent"] / RATE - (time.monotonic() - t0)
            if ahead > 0: time.sleep(ahead)
        c.close(); state["send_sha"] = h.hexdigest()
    except OSError as e:
        state["send_error"] = str(e)

def receiver(ls):
    c, _ = ls.accept(); c.settimeout(60); h = hashlib.sha256(); t0 = last = time.monotonic()
    try:
        while True:
            b = c.recv(128 << 10)
            now = time.monotonic()
            if not b: break
            if state["received"]:   # from the first byte on (the guest's dd takes a while)
                state["recv_stall"] = max(state["recv_stall"], now - last)
            last = now
            h.update(b); state["received"] += len(b)
            ahead = state["received"] / RATE - (now - t0)
            if ahead > 0: time.sleep(ahead); last = time.monotonic()
        state["recv_sha"] = h.hexdigest()
    except OSError as e:
        state["recv_error"] = str(e)

for port, fn in ((7101, sender), (7102, receiver)):
    threading.Thread(target=fn, args=(listen(port),), daemon=True).start()
print("listening", flush=True)
inter = None
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    try:
        if cmd == "connect":
            inter = socket.create_connection(("127.0.0.1", int(arg)), timeout=30)
            inter = inter.makefile("rwb"); out = "ok"
        elif cmd == "send":
            inter.write(arg.encode() + b"\n"); inter.flush(); out = "ok"
        elif cmd == "recv":
            out = inter.readline().decode().strip() or "EOF"
        else:
            out = json.dumps(state)
    except OSError as e:
        out = "error " + (e.strerror or type(e).__name__)
    print(out, flush=True)
"""


class Peer:
    def __init__(self, sb: Sandbox) -> None:
        self.proc = sb.popen_host(sys.executable, "-c", PEER, str(BULK), str(RATE),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "listening"

    def ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def status(self) -> dict[str, Any]:
        return json.loads(self.ask("status"))


class UpstreamPasst:
    """An upstream passt build (``PASSTCORE_UPSTREAM_PASST``) in a daemon's place."""

    def __init__(self, sb: Sandbox, exe: str, sock: str, name: str, args: tuple[str, ...]):
        self.socket_path, self.log_path = sock, sb.path(f"{name}-upstream.log")
        self.proc = sb.popen_host(exe, "-f", "-s", sock, "-l", self.log_path,
                                  "-p", sb.path(f"{name}.pcap"), *args)
        wait_for(lambda: os.path.exists(sock) and os.path.exists(self.log_path), 20,
                 "upstream passt's socket")

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def alive(self) -> bool:
        return self.proc.poll() is None


def _start_daemon(sb: Sandbox, upstream: str | None, name: str, sock: str | None,
                  args: tuple[str, ...]) -> Any:
    if upstream:
        return UpstreamPasst(sb, upstream, sock or sb.path(f"{name}.socket"), name, args)
    return sb.start_daemon(*args, mode="socket", socket_path=sock,
                           pcap_path=sb.path(f"{name}.pcap"))


def _start_pair(sb: Sandbox, image: tuple[str, str], repair: bool,
                src_args: tuple[str, ...] = ("--migrate-exit", "--migrate-no-linger"),
                tgt_args: tuple[str, ...] = (), upstream_src: str | None = None,
                upstream_tgt: str | None = None, device_opts: str = ""):
    """Source daemon + booted guest with its lease, target daemon + QEMU waiting
    (``upstream_*``: an upstream passt binary on that side)."""
    os.makedirs(sb.path("target"), exist_ok=True)
    common = ("--vhost-user", "-m", "1500", "--runas", "0")
    src = _start_daemon(sb, upstream_src, "src", None, (*common, "-t", str(SRC_FWD), *src_args))
    tgt = _start_daemon(sb, upstream_tgt, "tgt", sb.path("target/t.socket"),
                        (*common, "-t", str(TGT_FWD), *tgt_args))
    helpers = []
    if repair:
        # as KubeVirt runs passt-repair: the socket on the source, a directory on the
        # target; there, the virt-launcher image's passt-repair wrapper
        wrapper = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "virt-launcher",
                               "passt-repair")
        # PASSTCORE_UPSTREAM_PASST_REPAIR: upstream's passt-repair on the source instead
        ours = [sys.executable, "-m", "passtcore.run.migrate.helper"]
        helpers = [sb.popen_host(*([UPSTREAM_REPAIR] if UPSTREAM_REPAIR else ours),
                                 f"{src.socket_path}.repair",
                                 stderr=open(sb.path("repair-src.log"), "w")),
                   sb.popen_host(wrapper, sb.path("target"),
                                 env={**os.environ, "PASSTCORE_PYTHON": sys.executable},
                                 stderr=open(sb.path("repair-tgt.log"), "w"))]
        # ours: "TCP_REPAIR helper connected"; upstream passt: "Accepted TCP_REPAIR helper"
        wait_for(lambda: all(re.search("TCP_REPAIR helper connected|Accepted TCP_REPAIR helper",
                                       d.log()) for d in (src, tgt)), 20, "the repair helpers")
    q1, con = boot(sb, image, src.socket_path, device_opts=device_opts,
                   extra=("-qmp", f"unix:{sb.path('qmp-src')},server=on,wait=off"))
    rc, out = con.run("udhcpc -i eth0 -n -q -t 5 -T 2 -s /usr/share/udhcpc/default.script", 60)
    assert rc == 0 and "lease 192.0.2.2/24" in out, out + src.log()[-2000:]
    q2 = start_qemu(sb, image, tgt.socket_path, "t", device_opts=device_opts, extra=(
        "-qmp", f"unix:{sb.path('qmp-tgt')},server=on,wait=off",
        "-incoming", f"tcp:127.0.0.1:{INCOMING}"))
    wait_for(lambda: f":{INCOMING} " in sb.host("ss", "-Htln").stdout, 30, "the target QEMU")
    return src, tgt, q1, q2, con, helpers


def _migrate(sb: Sandbox) -> dict[str, Any]:
    qmp = Qmp(sb.path("qmp-src"))
    try:
        return qmp.migrate(f"tcp:127.0.0.1:{INCOMING}")
    finally:
        qmp.close()


def _stop(procs: list[subprocess.Popen[Any]], consoles: list[Any]) -> None:
    """What a migration test started, even after a failure: the guest consoles,
    then the processes (peers, helpers, QEMUs, upstream daemons)."""
    for con in consoles:
        if con is not None:
            con.close()
    for p in procs:
        stop_process(p)


def _final_counters(d: Any) -> dict[str, int]:
    """The counters an exited daemon logged on its way out."""
    lines = [ln for ln in d.log().splitlines() if "counters:" in ln]
    assert lines, d.log()[-2000:]
    return parse_line(lines[-1]) or {}


def _target_console(sb: Sandbox, q2: subprocess.Popen[Any], tgt: Any) -> Any:
    from passtcore.sandbox.guest import Console

    try:
        return Console(sb.path("console-t"), timeout=10)
    except OSError:
        with open(sb.path("qemu-t.log"), errors="replace") as f:
            raise AssertionError(f"target QEMU (exit {q2.poll()}): {f.read()[-2000:]}\n"
                                 f"target daemon: {tgt.log()[-3000:]}") from None


def _rst_count(sb: Sandbox, pcap: str) -> int:
    # no TCP analysis or reassembly: a capture of 200 MiB is read in seconds
    out = subprocess.run(["tshark", "-n", "-r", sb.path(pcap),
                          "-o", "tcp.analyze_sequence_numbers:FALSE",
                          "-o", "tcp.desegment_tcp_streams:FALSE",
                          "-Y", "tcp.flags.reset == 1", "-T", "fields", "-e", "frame.number"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return len(out.stdout.split())


def _guest_streams(con: Any) -> None:
    """Start both bulk streams and the interactive listener in the guest."""
    cmds = ("rm -f /tmp/p /tmp/in /tmp/h1 /tmp/h2 /tmp/out; mkfifo /tmp/p /tmp/in",
            "(sleep 600 > /tmp/in &); (nc -l -p 8080 < /tmp/in > /tmp/out &)",
            "(nc 192.0.2.1 7101 | sha256sum > /tmp/h2 &)",
            "(sha256sum < /tmp/p > /tmp/h1 &)",
            f"(dd if=/dev/urandom bs=65536 count={BULK >> 16} 2>/dev/null | tee /tmp/p "
            "| nc 192.0.2.1 7102 > /dev/null &)")
    for cmd in cmds:
        rc, out = con.run(cmd)
        assert rc == 0, out
    # the host connects to the forwarded port next: the guest's nc must listen by then
    # (a loaded machine starts it late, and the guest would reset that connection)
    wait_for(lambda: _guest_listens(con, SRC_FWD), 20, f"the guest's listener on {SRC_FWD}",
             interval=0.1)


def _guest_listens(con: Any, port: int) -> bool:
    """``port`` in LISTEN (state 0A) in the guest's /proc/net/tcp or tcp6."""
    rc, out = con.run("cat /proc/net/tcp /proc/net/tcp6")
    return any(f[1].endswith(f":{port:04X}") and f[3] == "0A"
               for f in (line.split() for line in out.splitlines()) if len(f) > 3)


def _all_three_go_on(peer: Peer, con: Any, n: int) -> dict[str, Any]:
    """After a move (or a failed one): the idle connection answers both ways, both
    streams run to their end, and the guest's sums equal the host's."""
    assert peer.ask(f"send ping{n}") == "ok"
    wait_for(lambda: f"ping{n}" in con.run("cat /tmp/out")[1], 20, f"ping{n} in the guest")
    con.run(f"echo pong{n} > /tmp/in")
    assert peer.ask("recv") == f"pong{n}"
    wait_for(lambda: "recv_sha" in peer.status() and "send_sha" in peer.status(), 120,
             "both streams to end", interval=0.5)
    st = peer.status()
    assert st["sent"] == BULK and st["received"] == BULK, st
    wait_for(lambda: con.run("cat /tmp/h1 /tmp/h2")[1].count(" -") == 2, 30, "guest sums")
    sums = con.run("cat /tmp/h1 /tmp/h2")[1]
    assert st["recv_sha"] in sums, f"guest->host corrupted: {sums} {st}"
    assert st["send_sha"] in sums, f"host->guest corrupted: {sums} {st}"
    return st


def test_tcp_connections_survive_a_live_migration(sandbox: Sandbox, guest_image) -> None:
    sb = sandbox
    src, tgt, q1, q2, con, helpers = _start_pair(sb, guest_image, repair=True)
    peer = Peer(sb)
    con2 = None
    try:
        _guest_streams(con)
        assert peer.ask(f"connect {SRC_FWD}") == "ok"
        assert peer.ask("send ping1") == "ok"
        wait_for(lambda: con.run("cat /tmp/out")[1].strip() == "ping1", 20, "ping1 in the guest")
        con.run("echo pong1 > /tmp/in")
        assert peer.ask("recv") == "pong1"
        # the migration in the middle of both streams
        wait_for(lambda: min(peer.status()["sent"], peer.status()["received"]) > 8 << 20,
                 60, "both streams under way", interval=0.2)
        info = _migrate(sb)
        assert info.get("status") == "completed", (info, src.log()[-6000:], tgt.log()[-3000:])
        at = peer.status()
        assert at["sent"] < BULK and at["received"] < BULK, "streams over before migrating"
        wait_for(lambda: not src.alive(), 15, "the source to exit (--migrate-exit)")
        stop_process(q1)
        con2 = _target_console(sb, q2, tgt)
        st = _all_three_go_on(peer, con2, 2)
        rc, out = con2.run("ip -4 addr show dev eth0")
        assert "192.0.2.2/24" in out, out
        c_src, c_tgt = _final_counters(src), tgt.counters()
        assert c_src.get("migrate_tcp_moved") == 3 and c_tgt.get("migrate_tcp_restored") == 3, \
            (c_src, c_tgt, tgt.log()[-3000:])
        assert not c_tgt.get("migrate_tcp_reset"), c_tgt
        assert _rst_count(sb, "src.pcap") == 0 and _rst_count(sb, "tgt.pcap") == 0
        print(f"\nmigration: downtime {info.get('downtime')} ms, total {info.get('total-time')} "
              f"ms; longest stall: host->guest {st['send_stall']:.3f} s, guest->host "
              f"{st['recv_stall']:.3f} s")
    finally:
        _stop([peer.proc, *helpers, q1, q2], [con, con2])


def test_without_the_repair_helper_connections_are_reset(sandbox: Sandbox,
                                                         guest_image) -> None:
    sb = sandbox
    src, tgt, q1, q2, con, _ = _start_pair(sb, guest_image, repair=False)
    peer = Peer(sb)
    con2 = None
    try:
        _guest_streams(con)
        assert peer.ask(f"connect {SRC_FWD}") == "ok"
        wait_for(lambda: min(peer.status()["sent"], peer.status()["received"]) > 4 << 20,
                 60, "both streams under way", interval=0.2)
        t0 = time.monotonic()
        info = _migrate(sb)
        assert info.get("status") == "completed", (info, src.log()[-6000:], tgt.log()[-3000:])
        assert "no TCP_REPAIR helper connected" in src.log()
        wait_for(lambda: not src.alive(), 15, "the source to exit (--migrate-exit)")
        stop_process(q1)
        con2 = _target_console(sb, q2, tgt)
        # the guest's ends are reset at once: both nc processes are gone
        wait_for(lambda: con2.run("pidof nc")[0] != 0, 20, "the guest's connections reset")
        elapsed = time.monotonic() - t0
        # the host's ends, too (the source closed them with a reset on its way out)
        wait_for(lambda: "send_error" in peer.status() or "recv_error" in peer.status()
                 or "recv_sha" in peer.status(), 20, "the host's ends to end")
        last = peer.ask("recv")
        assert last == "EOF" or last.startswith("error"), last
        c_tgt = tgt.counters()
        assert c_tgt.get("migrate_tcp_reset") == 3 and not c_tgt.get("migrate_tcp_restored"), \
            c_tgt
        rc, out = con2.run("ip -4 addr show dev eth0")
        assert "192.0.2.2/24" in out, out
        # and a new connection works through the target
        srv = sb.popen_host(sys.executable, "-c", "import socket\ns=socket.socket()\n"
                            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                            "s.bind(('127.0.0.1',7103)); s.listen(1); s.settimeout(60)\n"
                            "c,_=s.accept(); c.sendall(b'after-migration\\n'); c.close()")
        try:
            wait_for(lambda: ":7103 " in sb.host("ss", "-Htln").stdout, 10, "a new server")
            rc, out = con2.run("nc 192.0.2.1 7103", 30)
            assert "after-migration" in out, out
        finally:
            stop_process(srv)
        print(f"\nwithout repair: migration {info.get('total-time')} ms, guest's connections "
              f"reset within {elapsed:.1f} s")
    finally:
        _stop([peer.proc, q1, q2], [con, con2])


def test_a_failed_migration_leaves_everything_on_the_source(sandbox: Sandbox,
                                                             guest_image) -> None:
    """The target refuses the state (its flow table holds one flow, the source sends
    three): QEMU fails the migration and resumes the guest on the source, whose
    daemon takes its connections back out of repair mode. Both streams and the
    interactive connection go on there, every byte intact."""
    sb = sandbox
    src, tgt, q1, q2, con, helpers = _start_pair(sb, guest_image, repair=True, src_args=(),
                                                 tgt_args=("--max-flows", "1"))
    peer = Peer(sb)
    try:
        _guest_streams(con)
        assert peer.ask(f"connect {SRC_FWD}") == "ok"
        wait_for(lambda: min(peer.status()["sent"], peer.status()["received"]) > 8 << 20,
                 60, "both streams under way", interval=0.2)
        info = _migrate(sb)
        assert info.get("status") == "failed", info
        assert "more than the flow table holds" in tgt.log()
        wait_for(lambda: "taking back 3 TCP connections" in src.log(), 20, "the rollback")
        _all_three_go_on(peer, con, 3)
        c = src.counters()
        assert c.get("migrate_rollbacks") == 1 and c.get("tcp_rst_to_guest", 0) == 0, c
        assert _rst_count(sb, "src.pcap") == 0
    finally:
        _stop([peer.proc, *helpers, q1, q2], [con])


@pytest.mark.skipif(not UPSTREAM, reason="PASSTCORE_UPSTREAM_PASST=path/to/passt (an upstream "
                    "build with migration, 2025-02 or later) compares the formats")
@pytest.mark.parametrize("direction", ["passtcore-to-passt", "passt-to-passtcore"])
def test_migration_with_upstream_passt(sandbox: Sandbox, guest_image, direction: str) -> None:
    """passt's own format, both ways: the three connections survive a migration
    from passtcore to upstream passt and from upstream passt to passtcore."""
    sb = sandbox
    to_passt = direction == "passtcore-to-passt"
    # QEMU migrates the guest's virtio features, and the target back end must offer
    # them all: passt has none of our checksum/TSO offloads, EVENT_IDX or indirect
    # descriptors, so towards passt the device runs without them (passt -> passtcore:
    # we offer all of passt's)
    src, tgt, q1, q2, con, helpers = _start_pair(
        sb, guest_image, repair=True, upstream_src=None if to_passt else UPSTREAM,
        upstream_tgt=UPSTREAM if to_passt else None,
        device_opts=PASST_FEATURES if to_passt else "")
    peer = Peer(sb)
    con2 = None
    try:
        _guest_streams(con)
        assert peer.ask(f"connect {SRC_FWD}") == "ok"
        wait_for(lambda: min(peer.status()["sent"], peer.status()["received"]) > 8 << 20,
                 60, "both streams under way", interval=0.2)
        info = _migrate(sb)
        assert info.get("status") == "completed", (info, src.log()[-3000:], tgt.log()[-3000:])
        wait_for(lambda: not src.alive(), 15, "the source to exit (--migrate-exit)")
        stop_process(q1)
        con2 = _target_console(sb, q2, tgt)
        st = _all_three_go_on(peer, con2, 2)
        assert _rst_count(sb, "src.pcap") == 0 and _rst_count(sb, "tgt.pcap") == 0
        print(f"\n{direction}: downtime {info.get('downtime')} ms; longest stall: host->guest "
              f"{st['send_stall']:.3f} s, guest->host {st['recv_stall']:.3f} s")
    finally:
        _stop([peer.proc, *helpers, q1, q2,
               *(d.proc for d in (src, tgt) if isinstance(d, UpstreamPasst))], [con, con2])
