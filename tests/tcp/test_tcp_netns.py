"""End-to-end TCP through passtcore-run: a real Linux guest (a namespace served
by the daemon's tap) and real host peers in the daemon's private namespace."""
from __future__ import annotations

import os
import sys

import pytest

from .world import World, wait_port

pytestmark = [pytest.mark.netns, pytest.mark.timeout(600)]

MiB = 1 << 20
FWD_ARGS = ("-t", "8081", "-t", "9000-9009:19000-19009,~9005", "-u", "5353:15353",
            "--dns-forward", "198.51.100.53", "--dns-forward", "2001:db8:53::53")
DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs")


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")


@pytest.fixture(scope="module")
def world():
    _need_root()
    w = World(*FWD_ARGS)
    yield w
    w.close()


def _http_server(world: World, addr: str, port: int):
    p = world.sb.popen_host(sys.executable, "-m", "http.server", "--bind", addr, str(port),
                            "--directory", os.path.abspath(DOCS))
    wait_port(world, "host", port)
    return p


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_http_get(world, v6):
    port = 8006 if v6 else 8004
    srv = _http_server(world, "::1" if v6 else "127.0.0.1", port)
    try:
        host = f"[{world.gw6}]" if v6 else world.gw4
        r = world.sb.guest("curl", "-sS", "-m", "10", f"http://{host}:{port}/ARCHITECTURE.md")
        with open(os.path.join(DOCS, "ARCHITECTURE.md")) as f:
            assert r.stdout == f.read()
    finally:
        srv.kill()
        srv.wait()


def test_connect_to_closed_port_fails_fast(world):
    out = world.run("guest", "connect-time", world.gw4, "1")
    kind, seconds = out.split()
    assert kind == "ConnectionRefusedError" and float(seconds) < 1.0
    out = world.run("guest", "connect-time", world.gw6, "1")
    kind, seconds = out.split()
    assert kind == "ConnectionRefusedError" and float(seconds) < 1.0


def test_half_close_guest_first(world):
    srv = world.server("host", "halfclose-server", "127.0.0.1", "7101")
    assert world.run("guest", "halfclose-client", world.gw4, "7101", str(3 * MiB)) == "match"
    srv.wait(10)


def test_half_close_host_first(world):
    srv = world.server("host", "shut-server", "127.0.0.1", "7102")
    out = world.run("guest", "shut-client", world.gw4, "7102", str(2 * MiB))
    early, n, digest = out.split()
    assert early == "early"
    assert world.result(srv) == f"{n} {digest}"


def test_rst_host_to_guest(world):
    srv = world.server("host", "rst-server", "127.0.0.1", "7103")
    assert world.run("guest", "rst-client", world.gw4, "7103") == "reset"
    srv.wait(10)


def test_rst_guest_to_host(world):
    srv = world.server("host", "wait-reset-server", "127.0.0.1", "7104")
    assert world.run("guest", "reset-client", world.gw4, "7104") == "aborted"
    assert world.result(srv, 15) == "reset"


def _peer_line(world: World, host: str, port: int) -> list[str]:
    out = world.run("host", "line-client", host, str(port))
    return [x.removeprefix("::ffff:") for x in out.split()]


def test_inbound_forwarded_port_sees_gateway(world):
    srv = world.server("guest", "peer-server", "::", "8081")
    try:
        peer, _port, local = _peer_line(world, "127.0.0.1", 8081)
        assert peer == world.gw4 and local == world.guest_addr4
        peer, _port, _ = _peer_line(world, world.sb.host_addr4, 8081)  # host's own address
        assert peer == world.gw4
        peer, _port, local = _peer_line(world, "::1", 8081)
        # IPv6: the gateway is global here, so passt's link-local stands in (4.6)
        assert peer.split("%")[0] == world.our_ll
    finally:
        srv.kill()
        srv.wait()


def test_inbound_remapped_range_and_exclusion(world):
    srv = world.server("guest", "peer-server", "::", "19003")
    try:
        peer, _, _ = _peer_line(world, "127.0.0.1", 9003)
        assert peer == world.gw4
        # the excluded port and a port outside the range are not bound on the host
        for port in (9005, 9010):
            kind, _ = world.run("host", "connect-time", "127.0.0.1", str(port)).split()
            assert kind == "ConnectionRefusedError"
        ss = world.sb.host("ss", "-ltn").stdout
        assert ":9004 " in ss and ":9005 " not in ss
    finally:
        srv.kill()
        srv.wait()


def _bulk(world: World, v6: bool, direction: str, size: int, port: int) -> float:
    addr = "::1" if v6 else "127.0.0.1"
    gw = world.gw6 if v6 else world.gw4
    srv = None
    try:
        if direction == "guest-to-host":
            srv = world.server("host", "recv-server", addr, str(port))
            sent = world.run("guest", "send-client", gw, str(port), str(size), "11", timeout=300)
            got = world.result(srv, 300)
        else:
            srv = world.server("host", "send-server", addr, str(port), str(size), "12")
            got = world.run("guest", "recv-client", gw, str(port), timeout=300)
            sent = world.result(srv, 300)
    except Exception as exc:  # say what the daemon saw
        counters = {k: v for k, v in world.daemon.counters().items() if v}
        raise AssertionError(f"transfer failed: {exc!r}\ncounters: {counters}\n"
                             f"log: {world.log()[-1500:]}") from exc
    finally:
        if srv is not None and srv.poll() is None:
            srv.kill()
            srv.wait()
    n_sent, h_sent, _ = sent.split()
    n_got, h_got, secs = got.split()
    assert (n_got, h_got) == (n_sent, h_sent)
    gbps = size * 8 / float(secs) / 1e9
    print(f"\nbulk {'v6' if v6 else 'v4'} {direction}: {size / MiB:.0f} MiB in {secs}s = {gbps:.2f} Gbit/s")
    return gbps


@pytest.mark.slow
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("direction", ["guest-to-host", "host-to-guest"])
def test_bulk_100mib_sha256(world, v6, direction):
    _bulk(world, v6, direction, 100 * MiB, 7200 + (10 if v6 else 0) + (1 if direction[0] == "h" else 0))


NETEM = ("loss", "1%", "reorder", "5%", "duplicate", "1%", "delay", "1ms")


@pytest.fixture(scope="module")
def impaired_world():
    """Without sch_netem in the kernel: the same impairments in user space (impair.py)."""
    _need_root()
    w = World(*FWD_ARGS, impair=(1, 5, 1, 1, "--both"))  # both directions: harsher
    yield w
    w.close()


@pytest.mark.slow
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("direction", ["guest-to-host", "host-to-guest"])
def test_bulk_100mib_with_netem(world, request, v6, direction):
    r = world.sb.guest("tc", "qdisc", "add", "dev", "eth0", "root", "netem", *NETEM, check=False)
    w = world if r.returncode == 0 else request.getfixturevalue("impaired_world")
    port = 7300 + (10 if v6 else 0) + (1 if direction[0] == "h" else 0)
    try:
        _bulk(w, v6, direction, 100 * MiB, port)
    finally:
        if r.returncode == 0:
            world.sb.guest("tc", "qdisc", "del", "dev", "eth0", "root", check=False)


@pytest.mark.slow
def test_1000_concurrent_echo_connections(world):
    srv = world.server("host", "echo-server", "127.0.0.1", "7400")
    try:
        out = world.run("guest", "echo-clients", world.gw4, "7400", "1000", str(64 * 1024),
                        timeout=300)
        assert out.split()[:4] == ["ok", "1000", "of", "1000"], out
    finally:
        srv.kill()
        srv.wait()


def test_guest_readdressing_keeps_working():
    _need_root()
    w = World("-t", "8081")
    try:
        g = w.sb.guest
        g("ip", "addr", "flush", "dev", "eth0", "scope", "global")
        g("ip", "addr", "add", "192.0.2.77/24", "dev", "eth0")
        g("ip", "route", "replace", "default", "via", w.gw4)
        srv = _http_server(w, "127.0.0.1", 8004)
        try:
            r = g("curl", "-sS", "-m", "10", f"http://{w.gw4}:8004/ARCHITECTURE.md")
            assert "passtcore architecture" in r.stdout
        finally:
            srv.kill()
            srv.wait()
        peer_srv = w.server("guest", "peer-server", "::", "8081")
        try:
            # inbound frames now go to the address the guest uses (4.7)
            peer, _, local = _peer_line(w, "127.0.0.1", 8081)
            assert peer == w.gw4 and local == "192.0.2.77"
        finally:
            peer_srv.kill()
            peer_srv.wait()
    finally:
        w.close()


def test_no_map_gw_reaches_the_real_gateway():
    _need_root()
    w = World("--no-map-gw")
    try:
        # the sandbox's upstream namespace owns the gateway address: the real router
        up = w.server("upstream", "peer-server", w.gw4, "8010")
        lo = w.server("host", "peer-server", "127.0.0.1", "8010")
        try:
            peer, _, local = w.run("guest", "line-client", w.gw4, "8010").split()
            assert local == w.gw4 and peer == w.sb.host_addr4  # the host's address: SNAT
        finally:
            for p in (up, lo):
                p.kill()
                p.wait()
    finally:
        w.close()
