"""``-T/--tcp-ns`` and ``-U/--udp-ns``: namespace loopback -> host loopback (pasta's
splice path, ``passtcore/run/io/splice.py``) and the /proc/net port scanner
(``passtcore/run/io/portscan.py``).

Real peers only: servers on the sandbox host namespace's loopback, clients in the
guest namespace connecting to their own 127.0.0.1/::1 (``splice_peers.py``). Each
relay test runs twice: ``relay`` drives ``splice.py`` alone on a daemon Loop in the
host namespace (``splice_driver.py``: the parser and privilege drop of the daemon,
no tap, no engines), ``daemon`` runs ``passtcore-run --netns ... -T/-U``. Every
process is started through the sandbox and stopped by PID, even on failure.
"""
from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from passtcore.run.counters import parse_line
from passtcore.run.io import portscan
from passtcore.sandbox import Sandbox, daemon_binary, stop_process, wait_for

HERE = Path(__file__).parent
PEERS = str(HERE / "splice_peers.py")
DRIVER = str(HERE / "splice_driver.py")
MiB = 1 << 20


# -- the /proc/net parser, on recorded text (x86-64, little-endian) ---------------------

TCP4 = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0200007F:2328 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 44492 1 000000001ad23f8c 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 44486 1 0000000031e6841d 100 0 0 10 0
   2: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 44483 1 00000000802ae72c 100 0 0 10 0
   3: 0100007F:90D2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 44487 2 00000000d9b02ff0 20 0 0 10 -1
   4: 0100007F:1F90 0100007F:90D2 01 00000000:00000000 00:00000000 00000000     0        0 44488 1 000000005a138806 20 0 0 10 -1
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:20FB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 44484 1 000000004f7a2e73 100 0 0 10 0
   1: 00000000000000000000000000000000:08AE 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 44485 1 00000000eba74a25 100 0 0 10 0
"""
UDP4 = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 3148: 0100007F:A651 0100007F:14E9 01 00000000:00000000 00:00000000 00000000     0        0 44490 2 00000000be888acb 0
15076: 0100007F:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 44489 2 00000000f491d7bb 0
"""
UDP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 9776: 0000000000000000FFFF00000100007F:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 44491 2 000000007f8eba74 0
"""
little_endian = pytest.mark.skipif(sys.byteorder != "little", reason="recorded on x86-64")


def ip(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


@little_endian
def test_parse_tcp4() -> None:
    recs = portscan.parse(TCP4)
    assert [(r.addr, r.port, r.state, r.inode) for r in recs] == [
        (ip("127.0.0.2"), 9000, 0x0A, 44492), (ip("0.0.0.0"), 22, 0x0A, 44486),
        (ip("127.0.0.1"), 8080, 0x0A, 44483), (ip("127.0.0.1"), 37074, 0x01, 44487),
        (ip("127.0.0.1"), 8080, 0x01, 44488)]


@little_endian
def test_parse_tcp6_udp_and_mapped() -> None:
    assert [(r.addr, r.port, r.state) for r in portscan.parse(TCP6.encode())] == [
        (ip("::1"), 8443, 0x0A), (ip("::"), 2222, 0x0A)]
    assert [(r.addr, r.port, r.state) for r in portscan.parse(UDP4)] == [
        (ip("127.0.0.1"), 42577, 0x01), (ip("127.0.0.1"), 5353, 0x07)]
    (mapped,) = portscan.parse(UDP6)
    assert mapped.addr == ip("::ffff:127.0.0.1") and mapped.port == 53
    assert portscan.loopback_or_any(mapped.addr)


def test_parse_skips_garbage() -> None:
    assert portscan.parse("") == []
    assert portscan.parse("  sl  local_address\n   0: XYZ:1F90 0 0A\n   1: 0100007F:zz 0 0A a b c d e 1\n"
                          "garbage line\n") == []


def test_loopback_or_any() -> None:
    yes = ["0.0.0.0", "127.0.0.1", "::", "::1", "::ffff:127.0.0.1", "::ffff:0.0.0.0"]
    no = ["127.0.0.2", "192.0.2.2", "2001:db8::2", "fe80::1", "::ffff:192.0.2.2"]
    assert all(portscan.loopback_or_any(ip(a)) for a in yes)
    assert not any(portscan.loopback_or_any(ip(a)) for a in no)


@little_endian
def test_scanner_filters_state_address_and_own_sockets(tmp_path) -> None:
    """PortScanner on recorded files, then on this process's own namespace: its own
    sockets are left out unless exclude_own=False."""
    files = {}
    for name, text in (("tcp", TCP4), ("tcp6", TCP6), ("udp", UDP4), ("udp6", UDP6)):
        (tmp_path / name).write_text(text)
        files[name] = os.open(tmp_path / name, os.O_RDONLY)
    with portscan.PortScanner(files["tcp"], files["tcp6"], files["udp"], files["udp6"],
                              accept=portscan.loopback_or_any, exclude_own=False) as sc:
        assert sc.bound("tcp") == {22, 8080, 8443, 2222}   # 127.0.0.2:9000 and ESTABLISHED out
        assert sc.bound("udp") == {5353, 53}                 # the connected one out
        assert sc.bound("udp") == {5353, 53}                 # re-read from offset 0
    with pytest.raises(ValueError):
        portscan.PortScanner().bound("sctp")

    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    try:
        port, uport = lst.getsockname()[1], udp.getsockname()[1]
        with portscan.PortScanner.open(None, exclude_own=False) as sc:
            assert port in sc.bound("tcp") and uport in sc.bound("udp")
        with portscan.PortScanner.open(None) as sc:
            assert port not in sc.bound("tcp") and uport not in sc.bound("udp")
        assert os.fstat(lst.fileno()).st_ino in portscan.own_socket_inodes()
    finally:
        lst.close()
        udp.close()


def test_read_all_is_consistent_across_chunks() -> None:
    """Many records: sequential preads from where the last ended give whole lines."""
    socks = []
    try:
        for _ in range(200):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen()
            socks.append(s)
        fd = os.open("/proc/thread-self/net/tcp", os.O_RDONLY)
        try:
            for _ in range(2):
                recs = portscan.parse(portscan.read_all(fd, 4096))
                ports = {r.port for r in recs if r.state == portscan.TCP_LISTEN}
                assert {s.getsockname()[1] for s in socks} <= ports
        finally:
            os.close(fd)
    finally:
        for s in socks:
            s.close()


def test_scanner_opened_in_a_netns(sandbox: Sandbox) -> None:
    """Files opened from a thread inside the guest netns keep showing that netns."""
    path = f"/run/netns/{sandbox.guest_ns}"
    with portscan.PortScanner.open(path) as sc:
        before = sc.bound("tcp")
        srv = sandbox.popen_guest(sys.executable, PEERS, "hold", "127.0.0.1", "7001",
                                  stdout=subprocess.PIPE)
        try:
            assert srv.stdout.readline().strip() == b"ready"
            assert 7001 in sc.bound("tcp") and 7001 not in before
            assert 7001 not in portscan.PortScanner.open(None).bound("tcp")  # not ours
        finally:
            srv.kill()
            srv.wait(10)
        wait_for(lambda: 7001 not in sc.bound("tcp"), 5, "the listener to go")


# -- real peers through the relay ---------------------------------------------------------

class Relay:
    """Either the daemon or the splice driver, serving the sandbox's guest namespace."""

    def __init__(self, sb: Sandbox, kind: str, args: list[str], env: dict[str, str]) -> None:
        self.sb = sb
        self.kind = kind
        if kind == "daemon":
            self.daemon = sb.start_daemon(*args, env={**os.environ, **env} if env else None)
            self.pid = self.daemon.pid
            return
        self.out = Path(sb.path(f"driver-{time.monotonic_ns()}.out"))
        with open(self.out, "wb") as f:
            self.proc = sb.popen_host(sys.executable, DRIVER, "--netns", sb.guest_ns, *args,
                                      stdout=f, stderr=subprocess.STDOUT,
                                      env={**os.environ, **env})
        self.pid = self.proc.pid
        wait_for(lambda: "ready" in self.text() or self.proc.poll() is not None, 20,
                 "the splice driver")
        assert self.proc.poll() is None, self.text()

    def text(self) -> str:
        return self.out.read_text(errors="replace") if self.kind == "relay" else self.daemon.log()

    def counters(self) -> dict[str, int]:
        if self.kind == "daemon":
            return self.daemon.counters()
        before = self.text().count("counters:")
        os.kill(self.pid, signal.SIGUSR1)
        wait_for(lambda: self.text().count("counters:") > before, 5, "counters")
        line = [ln for ln in self.text().splitlines() if "counters:" in ln][-1]
        return parse_line(line) or {}

    def alive(self) -> bool:
        return self.daemon.alive() if self.kind == "daemon" else self.proc.poll() is None

    def stop(self) -> None:
        if self.kind == "daemon":
            self.daemon.stop()
        elif self.proc.poll() is None:
            stop_process(self.proc, timeout=10)


@pytest.fixture(params=["relay", "daemon"])
def relay(request: pytest.FixtureRequest, sandbox: Sandbox) -> Any:
    started: list[Relay] = []

    def start(*args: str, **env: str) -> Relay:
        r = Relay(sandbox, request.param, list(args), env)
        started.append(r)
        return r

    start.kind = request.param  # type: ignore[attr-defined]
    yield start
    for r in started:
        r.stop()


def host_peer(sb: Sandbox, *args: Any) -> subprocess.Popen[Any]:
    """A peer in the host namespace; servers are waited for ('ready')."""
    p = sb.popen_host(sys.executable, PEERS, *map(str, args), stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE)
    if "server" in args[0] or args[0] in ("udp-echo", "hold"):
        line = p.stdout.readline()
        assert line.strip() == b"ready", line + p.stderr.read()
    return p


def guest_peer(sb: Sandbox, *args: Any, timeout: float = 60) -> str:
    r = sb.guest(sys.executable, PEERS, *args, check=False, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip()


def result(p: subprocess.Popen[Any], timeout: float = 30) -> str:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, out.decode() + err.decode()
    return out.decode().strip().splitlines()[-1]


def ns_sockets(sb: Sandbox) -> set[tuple[str, str, int]]:
    """(tcp|udp, local address, port) of what is listening/bound in the guest."""
    r = sb.guest("ss", "-H", "-l", "-n", "-t", "-u")
    out = set()
    for line in r.stdout.splitlines():
        parts = line.split()
        addr, _, port = parts[4].rpartition(":")
        out.add((parts[0], addr.strip("[]"), int(port)))
    return out


def digest(size: int, seed: int) -> str:
    sys.path.insert(0, str(HERE))
    try:
        import splice_peers
    finally:
        sys.path.pop(0)
    return hashlib.sha256(splice_peers.stream(size, seed)).hexdigest()


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1"])
def test_tcp_bulk_both_ways(relay: Any, sandbox: Sandbox, addr: str) -> None:
    """10 MiB each way at the same time, each side half-closing after its last byte."""
    r = relay("-T", "8000")
    srv = host_peer(sandbox, "bulk-server", addr, 8000, 10 * MiB, 1)
    try:
        got = guest_peer(sandbox, "bulk-client", addr, 8000, 10 * MiB, 2)
        assert got == f"recv {10 * MiB} {digest(10 * MiB, 1)}"
        assert result(srv) == f"recv {10 * MiB} {digest(10 * MiB, 2)}"
    finally:
        srv.kill()
    c = wait_for(lambda: (lambda c: c if c.get("splice.tcp.closed") else None)(r.counters()),
                 5, "the connection to be counted closed")
    assert c["splice.tcp.conns"] == 1
    assert c["splice.tcp.bytes_to_host"] == c["splice.tcp.bytes_to_ns"] == 10 * MiB


def test_half_close_client_first(relay: Any, sandbox: Sandbox) -> None:
    relay("-T", "8000")
    srv = host_peer(sandbox, "reply-after-eof-server", "127.0.0.1", 8000)
    try:
        assert guest_peer(sandbox, "shut-first-client", "127.0.0.1", 8000) == "reply got 100000"
        assert result(srv) == "served 100000"
    finally:
        srv.kill()


def test_half_close_server_first(relay: Any, sandbox: Sandbox) -> None:
    relay("-T", "8000")
    srv = host_peer(sandbox, "greet-shut-server", "::1", 8000)
    try:
        assert guest_peer(sandbox, "after-eof-client", "::1", 8000) == "greeting hello rest 0"
        assert result(srv) == "got after-eof"
    finally:
        srv.kill()


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1"])
def test_refused_on_the_host_resets_the_client(relay: Any, sandbox: Sandbox, addr: str) -> None:
    r = relay("-T", "8000")
    out = guest_peer(sandbox, "ping-client", addr, 8000)
    how, nbytes, elapsed = out.split()
    assert how in ("reset", "eof") and nbytes == "0", out
    assert float(elapsed) < 2.0
    assert r.counters().get("splice.tcp.refused", 0) >= 1


def test_host_reset_propagates(relay: Any, sandbox: Sandbox) -> None:
    r = relay("-T", "8000")
    srv = host_peer(sandbox, "rst-server", "127.0.0.1", 8000)
    try:
        out = guest_peer(sandbox, "ping-client", "127.0.0.1", 8000)
        assert out.startswith("reset 0"), out
        assert result(srv) == "reset sent"
    finally:
        srv.kill()
    assert r.counters().get("splice.tcp.reset", 0) == 1


def test_client_reset_propagates(relay: Any, sandbox: Sandbox) -> None:
    relay("-T", "8000")
    srv = host_peer(sandbox, "outcome-server", "127.0.0.1", 8000)
    try:
        assert guest_peer(sandbox, "abort-client", "127.0.0.1", 8000) == "aborted"
        assert result(srv) == "reset 1000"
    finally:
        srv.kill()


def test_back_pressure_bounds_what_the_relay_takes(relay: Any, sandbox: Sandbox) -> None:
    """A host server that does not read: the client is soon blocked (the relay stops
    reading it) instead of the relay buffering without bound; then all arrives."""
    relay("-T", "8000")
    srv = host_peer(sandbox, "stall-server", "127.0.0.1", 8000, 3)
    try:
        out = guest_peer(sandbox, "flood-client", "127.0.0.1", 8000, 2)
        accepted = [ln for ln in out.splitlines() if ln.startswith("accepted")][0]
        total_line = out.splitlines()[-1]
        sent = int(accepted.split()[1])
        assert sent < 96 * MiB, out   # kernel buffers of four sockets + HIGH_WATER
        _, total, sha = total_line.split()
        assert result(srv) == f"recv {total} {sha}"
    finally:
        srv.kill()


def test_many_concurrent_connections(relay: Any, sandbox: Sandbox) -> None:
    relay("-T", "8000")
    srv = host_peer(sandbox, "echo-server", "127.0.0.1", 8000)
    try:
        assert guest_peer(sandbox, "many-clients", "127.0.0.1", 8000, 200) == "ok 200"
    finally:
        srv.kill()
        srv.wait(10)


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1"])
def test_udp_echo(relay: Any, sandbox: Sandbox, addr: str) -> None:
    r = relay("-U", "5353")
    srv = host_peer(sandbox, "udp-echo", addr, 5353)
    try:
        out = guest_peer(sandbox, "udp-client", addr, 5353)
        # reply <peer the host saw> <its port>|ping from <ns loopback> 5353 me <port>
        _, seen_addr, rest = out.split(" ", 2)
        seen_port, tail = rest.split("|", 1)
        assert seen_addr == addr
        assert tail.startswith(f"ping from {addr} 5353 me ")
        assert int(seen_port) == int(tail.split()[-1])  # the source port was kept
    finally:
        srv.kill()
        srv.wait(10)
    c = r.counters()
    assert c["splice.udp.flows"] == 1
    assert c["splice.udp.to_host"] == c["splice.udp.to_ns"] == 1


def test_udp_flow_expires(relay: Any, sandbox: Sandbox) -> None:
    if relay.kind == "daemon":
        pytest.skip("the daemon's UDP timeout is passt's 180 s")
    r = relay("-U", "5353", SPLICE_UDP_TIMEOUT="1")
    srv = host_peer(sandbox, "udp-echo", "127.0.0.1", 5353)
    try:
        assert "ping from" in guest_peer(sandbox, "udp-client", "127.0.0.1", 5353)
        wait_for(lambda: r.counters().get("splice.udp.expired", 0) == 1, 5, "expiry")
        assert "ping from" in guest_peer(sandbox, "udp-client", "127.0.0.1", 5353)
        assert r.counters()["splice.udp.flows"] == 2
    finally:
        srv.kill()
        srv.wait(10)


def test_remapped_ports(relay: Any, sandbox: Sandbox) -> None:
    relay("-T", "9000:8000", "-U", "9053:8053")
    assert ns_sockets(sandbox) == {("tcp", "127.0.0.1", 9000), ("tcp", "::1", 9000),
                                   ("udp", "127.0.0.1", 9053), ("udp", "::1", 9053)}
    srv = host_peer(sandbox, "reply-after-eof-server", "127.0.0.1", 8000)
    usrv = host_peer(sandbox, "udp-echo", "::1", 8053)
    try:
        assert guest_peer(sandbox, "shut-first-client", "127.0.0.1", 9000) == "reply got 100000"
        assert " from ::1 9053 me " in guest_peer(sandbox, "udp-client", "::1", 9053)
    finally:
        srv.kill()
        usrv.kill()
        usrv.wait(10)


def test_only_the_spec_ports_are_bound(relay: Any, sandbox: Sandbox) -> None:
    relay("-T", "8000,8100-8101", "-U", "5353", "-4")
    assert ns_sockets(sandbox) == {("tcp", "127.0.0.1", 8000), ("tcp", "127.0.0.1", 8100),
                                   ("tcp", "127.0.0.1", 8101), ("udp", "127.0.0.1", 5353)}


def test_nothing_bound_without_a_spec(relay: Any, sandbox: Sandbox) -> None:
    host_peer(sandbox, "hold", "127.0.0.1", 8000)
    r = relay("-T", "none")
    time.sleep(1.5)  # a scan interval: nothing appears either
    assert ns_sockets(sandbox) == set()
    assert r.alive()


def test_auto_follows_the_host(relay: Any, sandbox: Sandbox) -> None:
    """-T auto / -U auto: listeners started after the relay appear in the namespace
    within ~2 s and go when they close; non-loopback binds and the relay's own
    sockets are not forwarded; -U auto also covers the TCP ports (as pasta)."""
    env = {"SPLICE_OWN_LISTEN": "8300"} if relay.kind == "relay" else {}
    r = relay("-T", "auto", "-U", "auto", **env)
    time.sleep(1.2)
    assert ns_sockets(sandbox) == set()  # not even the relay's own 8300
    tcp = host_peer(sandbox, "hold", "127.0.0.1", 8201)
    udp = host_peer(sandbox, "hold", "::", 8202, "udp")
    other = host_peer(sandbox, "hold", sandbox.host_addr4, 8203)
    try:
        want = {("tcp", "127.0.0.1", 8201), ("tcp", "::1", 8201),
                ("udp", "127.0.0.1", 8201), ("udp", "::1", 8201),
                ("udp", "127.0.0.1", 8202), ("udp", "::1", 8202)}
        t0 = time.monotonic()
        wait_for(lambda: ns_sockets(sandbox) == want, 3, f"{want} in the namespace")
        assert time.monotonic() - t0 < 2.5
    finally:
        tcp.kill()
        tcp.wait(10)
    wait_for(lambda: ns_sockets(sandbox) == {("udp", "127.0.0.1", 8202), ("udp", "::1", 8202)},
             3, "8201 to go")
    srv = host_peer(sandbox, "reply-after-eof-server", "::1", 8204)
    try:
        wait_for(lambda: ("tcp", "::1", 8204) in ns_sockets(sandbox), 3, "8204")
        assert guest_peer(sandbox, "shut-first-client", "::1", 8204) == "reply got 100000"
    finally:
        srv.kill()
        udp.kill()
        other.kill()
    assert r.counters()["splice.tcp.conns"] == 1


def test_auto_port_busy_in_the_namespace_is_skipped(relay: Any, sandbox: Sandbox) -> None:
    """A port the namespace already uses (here 127.0.0.1:8401, by a guest process) is
    skipped for that family only, never fatal; the other ports are forwarded."""
    guest = sandbox.popen_guest(sys.executable, PEERS, "hold", "127.0.0.1", 8401,
                                stdout=subprocess.PIPE)
    assert guest.stdout.readline().strip() == b"ready"
    r = relay("-T", "auto")
    host_peer(sandbox, "hold", "::", 8401)
    host_peer(sandbox, "hold", "127.0.0.1", 8402)
    want = {("tcp", "127.0.0.1", 8401), ("tcp", "::1", 8401),
            ("tcp", "127.0.0.1", 8402), ("tcp", "::1", 8402)}
    wait_for(lambda: ns_sockets(sandbox) == want, 3, f"{want} in the namespace")
    assert r.alive()


# -- daemon only ------------------------------------------------------------------------------

def helper_pids(sb: Sandbox, daemon_pid: int) -> list[int]:
    r = subprocess.run(["ip", "netns", "pids", sb.guest_ns], capture_output=True, text=True,
                       timeout=10)
    out = []
    for tok in r.stdout.split():
        try:
            status = Path(f"/proc/{tok}/status").read_text()
        except OSError:
            continue
        if f"PPid:\t{daemon_pid}\n" in status:
            out.append(int(tok))
    return out


def test_daemon_auto_helper_is_unprivileged_and_exits(sandbox: Sandbox) -> None:
    d = sandbox.start_daemon("-T", "auto")
    (pid,) = wait_for(lambda: helper_pids(sandbox, d.pid), 5, "the namespace helper")
    status = dict(ln.split(":\t", 1) for ln in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":\t" in ln)
    assert status["Uid"].split()[0] == "65534"          # the daemon's identity (nobody)
    assert int(status["CapEff"], 16) == 1 << 10         # CAP_NET_BIND_SERVICE only
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{sandbox.guest_ns}").st_ino
    # A low port bound on the host is forwarded although the helper runs as nobody.
    host_peer(sandbox, "hold", "127.0.0.1", 80)
    wait_for(lambda: ("tcp", "127.0.0.1", 80) in ns_sockets(sandbox), 3, "port 80")
    d.stop()
    wait_for(lambda: not Path(f"/proc/{pid}").exists()
             or "State:\tZ" in Path(f"/proc/{pid}/status").read_text(), 5, "the helper to exit")


def test_daemon_static_only_has_no_helper(sandbox: Sandbox) -> None:
    d = sandbox.start_daemon("-T", "8000", "-U", "53")
    assert ("udp", "127.0.0.1", 53) in ns_sockets(sandbox)   # low port: bound before the drop
    assert helper_pids(sandbox, d.pid) == []


def test_daemon_fails_when_no_port_can_be_bound(sandbox: Sandbox) -> None:
    guest = [sandbox.popen_guest(sys.executable, PEERS, "hold", a, 8500, stdout=subprocess.PIPE)
             for a in ("127.0.0.1", "::1")]
    for g in guest:
        assert g.stdout.readline().strip() == b"ready"
    r = sandbox.host(daemon_binary(), "--netns", sandbox.guest_ns, "-f", "-T", "8500",
                     "--log-file", sandbox.path("fail.log"), check=False, timeout=30)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == ["passtcore-run: Failed to bind any port for -T/--tcp-ns"], r.stderr


def test_daemon_forwarded_t_port_is_not_looped_back(sandbox: Sandbox) -> None:
    """The daemon's own -t listener on the host is never forwarded by -T auto
    (needs the TCP engine to bind -t)."""
    sandbox.start_daemon("-t", "8600", "-T", "auto")
    wait_for(lambda: "8600" in sandbox.host("ss", "-H", "-ltn").stdout, 5, "the -t listener")
    time.sleep(2.2)
    assert not any(p == 8600 for _, _, p in ns_sockets(sandbox))


def test_daemon_no_tcp_disables_tcp_splice(sandbox: Sandbox) -> None:
    sandbox.start_daemon("-T", "8000", "-U", "8000", "--no-tcp")
    assert {k for k, _, _ in ns_sockets(sandbox)} == {"udp"}


def test_ns_sockets_helper_parses_ss(sandbox: Sandbox) -> None:
    g = sandbox.popen_guest(sys.executable, PEERS, "hold", "::1", 8700, stdout=subprocess.PIPE)
    assert g.stdout.readline().strip() == b"ready"
    u = sandbox.popen_guest(sys.executable, PEERS, "hold", "127.0.0.1", 8701, "udp",
                            stdout=subprocess.PIPE)
    assert u.stdout.readline().strip() == b"ready"
    assert ns_sockets(sandbox) == {("tcp", "::1", 8700), ("udp", "127.0.0.1", 8701)}


def test_daemon_auto_both_directions_never_loop(sandbox: Sandbox) -> None:
    """-t auto (namespace -> host listeners, the engines) and -T auto (host -> namespace
    loopback listeners, the splice) together: each leaves the other's sockets alone."""
    g = sandbox.popen_guest(sys.executable, PEERS, "hold", "0.0.0.0", 8900,
                            stdout=subprocess.PIPE)
    assert g.stdout.readline().strip() == b"ready"
    host_peer(sandbox, "hold", "127.0.0.1", 8901)
    sandbox.start_daemon("-t", "auto", "-T", "auto")

    def host_ports() -> set[int]:
        out = sandbox.host("ss", "-H", "-ltn").stdout
        return {int(line.split()[3].rpartition(":")[2]) for line in out.splitlines()}

    wait_for(lambda: 8900 in host_ports()
             and ("tcp", "127.0.0.1", 8901) in ns_sockets(sandbox), 4, "both forwards")
    time.sleep(2.2)  # two more scans in each direction
    assert ns_sockets(sandbox) == {("tcp", "0.0.0.0", 8900), ("tcp", "127.0.0.1", 8901),
                                   ("tcp", "::1", 8901)}
    assert host_ports() == {8900, 8901}
