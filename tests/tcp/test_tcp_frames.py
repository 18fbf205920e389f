"""Frame-level tests of the TCP engine: scapy guest, real host sockets on loopback.

The guest talks to the gateway address, which the engine maps to the host's
loopback (passt-reference 4.6), so nothing leaves the machine and no namespace
is needed. Every emitted frame's checksums are checked with scapy.
"""
from __future__ import annotations

import socket
import struct
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from passtcore.run.tcp.engine import TcpEngine

from .harness import GUEST4, GUEST6, GW4, GW6, Harness, checksums_ok, guest_port, make_conf

SYN, ACK, FIN, RST = 0x02, 0x10, 0x01, 0x04


class Guest:
    """A scripted guest TCP endpoint."""

    def __init__(self, h: Harness, dport: int, v6: bool = False, sport: int | None = None) -> None:
        self.h = h
        self.v6 = v6
        self.sport = sport or guest_port()
        self.dport = dport
        self.seq = 1000
        self.ack = 0
        self.wnd = 65535

    def l3(self) -> object:
        return IPv6(src=GUEST6, dst=GW6) if self.v6 else IP(src=GUEST4, dst=GW4)

    def send(self, flags: str, payload: bytes = b"", seq: int | None = None, ack: int | None = None,
             options: list | None = None, window: int | None = None) -> None:
        seg = TCP(sport=self.sport, dport=self.dport, flags=flags,
                  seq=self.seq if seq is None else seq, ack=self.ack if ack is None else ack,
                  window=self.wnd if window is None else window, options=options or [])
        self.h.inject(self.l3() / seg / payload)

    def mine(self, p: object) -> bool:
        t = p[TCP] if TCP in p else None
        return t is not None and t.dport == self.sport and t.sport == self.dport

    def connect(self) -> object:
        self.send("S", options=[("MSS", 65480), ("WScale", 7)])
        got = self.h.wait_for(lambda p: self.mine(p) and p[TCP].flags & SYN)
        synack = [p for p in got if self.mine(p)][-1]
        assert synack[TCP].flags == "SA"
        self.seq += 1
        self.ack = synack[TCP].seq + 1
        self.send("A")
        return synack

    def segs(self, frames: list) -> list:
        return [p[TCP] for p in frames if self.mine(p)]


@pytest.fixture
def h():
    harness = Harness(TcpEngine)
    yield harness
    harness.close()


@pytest.fixture
def server():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    s.settimeout(2)
    yield s
    s.close()


def accept(server: socket.socket, h: Harness) -> socket.socket:
    end = time.monotonic() + 2
    server.setblocking(False)
    while time.monotonic() < end:
        try:
            c, _ = server.accept()
            c.settimeout(2)
            return c
        except BlockingIOError:
            h.pump(0.01)
    raise AssertionError("no connection reached the host server")


def test_syn_ack_options_and_established(h, server):
    g = Guest(h, server.getsockname()[1])
    synack = g.connect()
    opts = dict(synack[TCP].options)
    assert opts["MSS"] == 61440           # MTU 65520 - 40, rounded down to 4 KiB
    assert opts["WScale"] == 8
    assert synack[TCP].window == 65535    # unscaled, as passt (reference 6.2)
    assert synack[IP].src == GW4 and synack[IP].dst == GUEST4
    assert checksums_ok(synack)
    conn = accept(server, h)
    assert conn.getpeername()[0] == "127.0.0.1"
    conn.close()


def test_refused_connect_is_rst_ack_at_once(h):
    port = guest_port()
    with socket.socket() as probe:  # make sure nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    g = Guest(h, port)
    t0 = time.monotonic()
    g.send("S", options=[("MSS", 1460)])
    got = h.wait_for(lambda p: g.mine(p))
    rst = g.segs(got)[0]
    assert rst.flags & RST and rst.flags & ACK
    assert rst.ack == g.seq + 1
    assert time.monotonic() - t0 < 1
    assert h.engine.stats()["connections"] == 0


def test_data_both_ways_acks_and_retransmission(h, server):
    g = Guest(h, server.getsockname()[1])
    g.connect()
    conn = accept(server, h)
    # guest -> host
    g.send("PA", b"hello host")
    got = h.wait_for(lambda p: g.mine(p) and p[TCP].ack == g.seq + 10)
    assert conn.recv(100) == b"hello host"
    g.seq += 10
    assert all(checksums_ok(p) for p in got)
    # host -> guest
    conn.sendall(b"x" * 5000 + b"y" * 5000)
    got = h.wait_for(lambda p: g.mine(p) and len(p[TCP].payload) > 0)
    data = [s for s in g.segs(got) if len(s.payload)]
    first_seq = data[0].seq
    assert first_seq == g.ack
    h.pump(0.05)
    data += [s for s in g.segs(h.new()) if len(s.payload)]
    blob = b"".join(bytes(s.payload) for s in data)
    assert blob == b"x" * 5000 + b"y" * 5000
    assert not any(s.flags & 0x08 for s in data)  # no PSH, like passt
    # no ACK from the guest: the 2 s timer rewinds and re-sends from the same seq
    h.advance(3)
    again = [s for s in g.segs(h.new()) if len(s.payload)]
    assert again and again[0].seq == first_seq
    assert b"".join(bytes(s.payload) for s in again) == blob
    # ACK half of it: the socket keeps only the unacknowledged rest
    g.ack = first_seq + 5000
    g.send("A")
    h.advance(3)
    again = [s for s in g.segs(h.new()) if len(s.payload)]
    assert again[0].seq == first_seq + 5000
    assert b"".join(bytes(s.payload) for s in again) == b"y" * 5000
    g.ack = first_seq + 10000
    g.send("A")
    h.advance(3)
    assert not [s for s in g.segs(h.new()) if len(s.payload)]
    conn.close()


def test_guest_window_is_respected(h, server):
    g = Guest(h, server.getsockname()[1])
    g.send("S", options=[("MSS", 1000), ("WScale", 0)])
    got = h.wait_for(lambda p: g.mine(p))
    synack = g.segs(got)[0]
    g.seq += 1
    g.ack = synack.seq + 1
    g.send("A", window=3000)
    conn = accept(server, h)
    conn.sendall(b"z" * 10000)
    h.pump(0.1)
    data = [s for s in g.segs(h.new()) if len(s.payload)]
    assert sum(len(s.payload) for s in data) == 3000
    assert max(len(s.payload) for s in data) <= 1000  # guest MSS
    g.ack += 3000
    g.send("A", window=3000)
    h.pump(0.1)
    data = [s for s in g.segs(h.new()) if len(s.payload)]
    assert sum(len(s.payload) for s in data) == 3000
    assert data[0].seq == g.ack
    conn.close()


def test_fast_retransmit_on_duplicate_acks(h, server):
    g = Guest(h, server.getsockname()[1])
    g.connect()
    conn = accept(server, h)
    conn.sendall(b"a" * 3000)
    got = h.wait_for(lambda p: g.mine(p) and len(p[TCP].payload) > 0)
    first = [s for s in g.segs(got) if len(s.payload)][0].seq
    for _ in range(3):
        g.send("A")  # ack == the first byte: duplicate ACKs
    again = [s for s in g.segs(h.new()) if len(s.payload)]
    assert again and again[0].seq == first
    conn.close()


def test_keepalive_probe_is_acked(h, server):
    g = Guest(h, server.getsockname()[1])
    g.connect()
    conn = accept(server, h)
    h.new()
    g.send("A", seq=g.seq - 1)  # keep-alive: snd.nxt - 1, no data
    got = g.segs(h.new())
    assert got and got[0].flags == "A" and got[0].ack == g.seq
    g.send("A", b"\0", seq=g.seq - 1)  # with the 1 garbage byte
    got = g.segs(h.new())
    assert got and got[0].ack == g.seq
    conn.setblocking(False)
    with pytest.raises(BlockingIOError):
        conn.recv(10)  # the probe byte never reaches the host
    conn.close()


def test_out_of_order_segment_gets_duplicate_ack(h, server):
    g = Guest(h, server.getsockname()[1])
    g.connect()
    conn = accept(server, h)
    h.new()
    g.send("PA", b"later", seq=g.seq + 100)
    got = g.segs(h.new())
    assert got and got[0].ack == g.seq
    conn.setblocking(False)
    with pytest.raises(BlockingIOError):
        conn.recv(10)
    assert h.ctx.counters.values.get("tcp_out_of_order") == 1
    conn.close()


def test_half_close_both_directions(h, server):
    g = Guest(h, server.getsockname()[1])
    g.connect()
    conn = accept(server, h)
    # guest closes its side; host still sends
    g.send("FA", b"bye")
    got = h.wait_for(lambda p: g.mine(p) and p[TCP].ack == g.seq + 4)
    assert conn.recv(10) == b"bye"
    assert conn.recv(10) == b""  # EOF on the host
    g.seq += 4
    conn.sendall(b"still here")
    got = h.wait_for(lambda p: g.mine(p) and len(p[TCP].payload) > 0)
    seg = [s for s in g.segs(got) if len(s.payload)][0]
    assert bytes(seg.payload) == b"still here"
    g.ack = seg.seq + 10
    g.send("A")
    # host closes: FIN|ACK to the guest after everything is acknowledged
    conn.shutdown(socket.SHUT_WR)
    got = h.wait_for(lambda p: g.mine(p) and p[TCP].flags & FIN)
    fin = [s for s in g.segs(got) if s.flags & FIN][0]
    assert fin.flags & ACK and fin.seq == g.ack
    g.ack += 1
    g.send("A")
    assert h.engine.stats()["connections"] == 0
    conn.close()


def test_host_half_close_then_guest_sends(h, server):
    g = Guest(h, server.getsockname()[1])
    g.connect()
    conn = accept(server, h)
    conn.shutdown(socket.SHUT_WR)
    got = h.wait_for(lambda p: g.mine(p) and p[TCP].flags & FIN)
    fin = [s for s in g.segs(got) if s.flags & FIN][0]
    g.ack = fin.seq + 1
    g.send("PA", b"after your FIN")
    h.wait_for(lambda p: g.mine(p) and p[TCP].ack == g.seq + 14)
    assert conn.recv(100) == b"after your FIN"
    g.seq += 14
    g.send("FA")
    h.pump(0.05)
    assert conn.recv(10) == b""
    assert h.engine.stats()["connections"] == 0
    conn.close()


def test_guest_rst_resets_host(h, server):
    g = Guest(h, server.getsockname()[1])
    g.connect()
    conn = accept(server, h)
    g.send("R")
    h.pump(0.05)
    with pytest.raises(ConnectionResetError):
        conn.recv(10)
    assert h.engine.stats()["connections"] == 0
    conn.close()


def test_host_rst_resets_guest(h, server):
    g = Guest(h, server.getsockname()[1])
    g.connect()
    conn = accept(server, h)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    got = h.wait_for(lambda p: g.mine(p) and p[TCP].flags & RST)
    assert any(s.flags & RST for s in g.segs(got))
    assert h.engine.stats()["connections"] == 0


def test_duplicate_syn_during_connect_is_ignored(h):
    # A listener whose accept queue is full drops SYNs: connect() stays pending.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    port = full.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            fillers.append(c)
        time.sleep(0.05)
        g = Guest(h, port)
        g.send("S", options=[("MSS", 1460)])
        h.pump(0.05)
        first = g.segs(h.new())
        if first:
            pytest.skip("the kernel completed the handshake despite the full queue")
        g.send("S", options=[("MSS", 1460)])  # the guest's retransmitted SYN
        h.pump(0.05)
        assert not g.segs(h.new())
        assert h.engine.stats()["connections"] == 1
        # handshake timeout (10 s) ends it: the guest's connect() fails
        h.advance(11)
        assert h.engine.stats()["connections"] == 0
        rst = g.segs(h.new())
        assert rst and rst[0].flags & RST and rst[0].ack == g.seq + 1
    finally:
        for c in fillers:
            c.close()
        full.close()


def test_flow_limit_refuses_cleanly(server):
    h = Harness(TcpEngine, make_conf(max_flows=2))
    try:
        port = server.getsockname()[1]
        a, b = Guest(h, port), Guest(h, port)
        a.connect()
        b.connect()
        c = Guest(h, port)
        c.send("S", options=[("MSS", 1460)])
        got = c.segs(h.new())
        assert got and got[0].flags & RST
        assert h.ctx.counters.values["tcp_flows_refused"] == 1
    finally:
        h.close()


def test_segment_without_flow_is_reset_and_counted(h):
    """RFC 9293 3.10.7.1: a segment of no connection gets RST (seq = its ACK), so a
    guest whose connection is gone (e.g. not carried by a migration) learns it at
    once; a stray RST gets nothing."""
    g = Guest(h, 9)
    g.send("A", b"stray")
    rst = h.new()
    assert len(rst) == 1 and rst[0][TCP].flags == "RA", rst
    assert rst[0][TCP].seq == g.ack and rst[0][TCP].ack == g.seq + len(b"stray")
    g.send("R")
    assert not h.new()
    assert h.ctx.counters.values.get("drop.tcp-no-flow") == 2


def test_ipv6_gateway_maps_to_loopback(h):
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.bind(("::1", 0))
    srv.listen(4)
    try:
        g = Guest(h, srv.getsockname()[1], v6=True)
        synack = g.connect()
        assert synack[IPv6].src == GW6 and synack[IPv6].dst == GUEST6
        assert dict(synack[TCP].options)["MSS"] == 61440  # 65520 - 60 -> 4 KiB multiple
        assert checksums_ok(synack)
        conn = accept(srv, h)
        g.send("PA", b"v6 data")
        h.wait_for(lambda p: g.mine(p) and p[TCP].ack == g.seq + 7)
        assert conn.recv(10) == b"v6 data"
        conn.close()
    finally:
        srv.close()


def test_inbound_forwarded_port(server):
    from passtcore.portspec import parse_spec

    host_port = server.getsockname()[1]
    server.close()  # free the port for the forwarder
    conf = make_conf(tcp_ports=[parse_spec(f"127.0.0.1/{host_port}:8080")])
    h = Harness(TcpEngine, conf)
    client = socket.socket()
    try:
        client.setblocking(False)
        client.connect_ex(("127.0.0.1", host_port))
        got = h.wait_for(lambda p: TCP in p and p[TCP].flags & SYN)
        syn = [p for p in got if TCP in p][0]
        assert syn[IP].src == GW4 and syn[IP].dst == GUEST4   # loopback -> gateway (4.6)
        assert syn[TCP].dport == 8080
        assert syn[TCP].sport == client.getsockname()[1]        # source port preserved
        assert syn[TCP].flags == "S" and checksums_ok(syn)
        g = Guest(h, syn[TCP].sport, sport=8080)
        g.ack = syn[TCP].seq + 1
        g.send("SA", options=[("MSS", 1460), ("WScale", 7)])
        g.seq += 1
        got = h.wait_for(lambda p: g.mine(p))
        assert g.segs(got)[0].flags == "A"
        g.send("PA", b"reply from guest")
        h.pump(0.05)
        client.setblocking(True)
        client.settimeout(2)
        assert client.recv(100) == b"reply from guest"
    finally:
        client.close()
        h.close()


def test_inbound_guest_rst_gives_client_eof():
    port = guest_port()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    h = Harness(TcpEngine, make_conf(tcp_ports=[f"127.0.0.1/{port}"]))
    client = socket.socket()
    try:
        client.settimeout(2)
        client.connect(("127.0.0.1", port))  # the kernel completes the handshake
        got = h.wait_for(lambda p: TCP in p and p[TCP].flags & SYN)
        syn = [p for p in got if TCP in p][0]
        g = Guest(h, syn[TCP].sport, sport=port)
        g.send("RA", seq=0, ack=syn[TCP].seq + 1)
        h.pump(0.05)
        assert client.recv(10) == b""
    finally:
        client.close()
        h.close()


def test_out_of_order_data_is_held_until_the_gap_fills(h, server):
    g = Guest(h, server.getsockname()[1])
    g.connect()
    conn = accept(server, h)
    h.new()
    g.send("PA", b"world", seq=g.seq + 6)      # arrives before "hello "
    got = g.segs(h.new())
    assert got[0].ack == g.seq                 # not acknowledged: a duplicate ACK
    g.send("PA", b"hello ")
    got = g.segs(h.wait_for(lambda p: g.mine(p) and p[TCP].ack == g.seq + 11))
    assert got[-1].ack == g.seq + 11           # both now written, in order
    conn.settimeout(2)
    data = b""
    while len(data) < 11:
        data += conn.recv(100)
    assert data == b"hello world"
    conn.close()


def test_sack_blocks_describe_held_data(h, server):
    g = Guest(h, server.getsockname()[1])
    g.send("S", options=[("MSS", 1460), ("SAckOK", b""), ("WScale", 7)])
    got = h.wait_for(lambda p: g.mine(p))
    synack = g.segs(got)[0]
    assert "SAckOK" in dict(synack.options)       # offered back: the guest offered it
    g.seq += 1
    g.ack = synack.seq + 1
    g.send("A")
    conn = accept(server, h)
    h.new()
    g.send("PA", b"C" * 100, seq=g.seq + 200)
    g.send("PA", b"B" * 100, seq=g.seq + 100)     # adjacent blocks merge
    dup = g.segs(h.new())[-1]
    assert dup.ack == g.seq
    assert dict(dup.options)["SAck"] == (g.seq + 100, g.seq + 300)
    g.send("PA", b"A" * 100)
    got = g.segs(h.wait_for(lambda p: g.mine(p) and p[TCP].ack == g.seq + 300))
    assert "SAck" not in dict(got[-1].options)
    conn.settimeout(2)
    data = b""
    while len(data) < 300:
        data += conn.recv(1000)
    assert data == b"A" * 100 + b"B" * 100 + b"C" * 100
    conn.close()


def test_fin_out_of_order_is_applied_after_the_gap(h, server):
    g = Guest(h, server.getsockname()[1])
    g.connect()
    conn = accept(server, h)
    g.send("FA", b"tail", seq=g.seq + 4)   # FIN with data, before the first bytes
    g.send("PA", b"head")
    h.wait_for(lambda p: g.mine(p) and p[TCP].ack == g.seq + 9)  # 8 bytes + FIN
    conn.settimeout(2)
    data = b""
    while (chunk := conn.recv(100)):
        data += chunk
    assert data == b"headtail"             # then EOF
    conn.close()


def test_full_host_socket_shrinks_window_and_loses_nothing(h, server):
    """The host reader stalls: the guest is ACKed only for what the socket took and
    sees the window close; once the reader drains, everything arrives, in order."""
    g = Guest(h, server.getsockname()[1])
    g.send("S", options=[("MSS", 65000), ("WScale", 7)])
    synack = g.segs(h.wait_for(lambda p: g.mine(p)))[0]
    g.seq += 1
    g.ack = synack.seq + 1
    g.send("A")
    conn = accept(server, h)
    conn.setblocking(False)
    blob = bytes(range(256)) * (64 * 1024)            # 16 MiB: more than the buffers
    base = acked = sent = g.seq
    wnd = 65535 << 8
    end = base + len(blob)
    received = bytearray()
    reading = False
    min_wnd = wnd
    deadline = time.monotonic() + 60
    while acked != end and time.monotonic() < deadline:
        while sent < min(acked + wnd, end):          # a guest honouring our window
            n = min(60000, end - sent, acked + wnd - sent)
            g.send("A", blob[sent - base:sent - base + n], seq=sent)
            sent += n
        h.pump(0.002)
        progress = False
        for seg in g.segs(h.new()):
            if seg.ack - acked > 0:
                acked, progress = seg.ack, True
            if seg.ack == acked:
                wnd = seg.window << 8
        min_wnd = min(min_wnd, wnd)
        if not progress and sent != acked:
            sent = acked                              # what was not taken is re-sent
        if not reading and (min_wnd < 65536 or sent == end):
            reading = True                            # the host reader wakes up
        while reading:
            try:
                chunk = conn.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            received += chunk
    assert acked == end
    assert min_wnd < 65536, "the window never closed while the host reader stalled"
    conn.setblocking(True)
    conn.settimeout(5)
    while len(received) < len(blob):
        received += conn.recv(1 << 20)
    assert bytes(received) == blob
    conn.close()


def test_syn_to_guest_is_retransmitted():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    h = Harness(TcpEngine, make_conf(tcp_ports=[f"127.0.0.1/{port}"]))
    client = socket.socket()
    try:
        client.settimeout(2)
        client.connect(("127.0.0.1", port))
        first = [p for p in h.wait_for(lambda p: TCP in p and p[TCP].flags & SYN) if TCP in p]
        h.pump(0.4)  # the first retransmission timeout is 0.25 s
        again = [p for p in h.new() if TCP in p and p[TCP].flags & SYN]
        assert again and again[0][TCP].seq == first[0][TCP].seq
    finally:
        client.close()
        h.close()


def test_guest_sack_blocks_drive_selective_retransmission(h, server):
    g = Guest(h, server.getsockname()[1])
    g.send("S", options=[("MSS", 1000), ("SAckOK", b""), ("WScale", 7)])
    synack = g.segs(h.wait_for(lambda p: g.mine(p)))[0]
    g.seq += 1
    g.ack = synack.seq + 1
    g.send("A")
    conn = accept(server, h)
    blob = bytes(range(200)) * 50                      # 10 segments of 1000 bytes
    conn.sendall(blob)
    got = h.wait_for(lambda p: g.mine(p) and len(p[TCP].payload) > 0 and
                     p[TCP].seq + len(p[TCP].payload) == g.ack + len(blob))
    base = g.ack
    assert sum(len(s.payload) for s in g.segs(got) if len(s.payload)) == len(blob)
    # the guest lost segments 2 and 5-6 (0-based): three duplicate ACKs with SACK blocks
    blocks = [("SAck", (base + 3000, base + 5000, base + 7000, base + 10000))]
    g.ack = base + 2000
    g.send("A")                                        # progress up to the first hole
    h.new()
    for _ in range(3):
        g.send("A", options=blocks)
    again = [s for s in g.segs(h.new()) if len(s.payload)]
    resent = sorted((s.seq - base, len(s.payload)) for s in again)
    assert resent == [(2000, 1000), (5000, 1000), (6000, 1000)]
    for s in again:
        off = s.seq - base
        assert bytes(s.payload) == blob[off:off + len(s.payload)]
    g.ack = base + len(blob)
    g.send("A")
    h.advance(3)                                       # all acknowledged: nothing re-sent
    assert not [s for s in g.segs(h.new()) if len(s.payload)]
    assert not h.engine.inflight
    conn.close()


def test_zero_window_is_probed_not_reset(h, server):
    g = Guest(h, server.getsockname()[1])
    g.send("S", options=[("MSS", 1000), ("WScale", 0)])
    synack = g.segs(h.wait_for(lambda p: g.mine(p)))[0]
    g.seq += 1
    g.ack = synack.seq + 1
    g.send("A", window=2000)
    conn = accept(server, h)
    conn.sendall(b"q" * 6000)
    h.pump(0.1)
    data = [s for s in g.segs(h.new()) if len(s.payload)]
    assert sum(len(s.payload) for s in data) == 2000
    g.ack += 2000
    g.send("A", window=0)                              # the guest's buffer is full
    h.pump(0.05)
    assert not [s for s in g.segs(h.new()) if len(s.payload)]
    for _ in range(15):                                # 30 s of ticks
        h.advance(2)
    probes = g.segs(h.new())
    assert probes and all(not s.flags & RST for s in probes)
    assert probes[0].seq == g.ack - 1                  # a window probe
    g.send("A", window=4000)                           # the window opens again
    h.pump(0.1)
    data = [s for s in g.segs(h.new()) if len(s.payload)]
    assert data[0].seq == g.ack and sum(len(s.payload) for s in data) == 4000
    conn.close()


def test_lost_final_ack_repeats_syn_ack_and_data_follows(h, server):
    """The guest's ACK of our SYN-ACK is lost and the guest only receives: the
    SYN-ACK is repeated, the guest's (duplicate) ACK completes the handshake and
    the host's data reaches it, instead of a handshake timeout and an RST."""
    g = Guest(h, server.getsockname()[1])
    g.send("S", options=[("MSS", 65480), ("WScale", 7)])
    got = h.wait_for(lambda p: g.mine(p) and p[TCP].flags & SYN)
    first = g.segs(got)[-1]
    conn = accept(server, h)
    conn.sendall(b"hello from the host")
    h.pump(0.4)  # the first retransmission timeout is 0.25 s; no ACK sent
    again = [t for t in g.segs(h.new()) if t.flags & SYN]
    assert again and again[0].flags == "SA" and again[0].seq == first.seq
    assert h.engine.ctx.counters.get("tcp_syn_ack_retransmits", 0) >= 1
    g.seq += 1
    g.ack = first.seq + 1
    g.send("A")
    got = h.wait_for(lambda p: g.mine(p) and len(p[TCP].payload) > 0)
    data = b"".join(bytes(t.payload) for t in g.segs(got))
    assert data == b"hello from the host"
    conn.close()
