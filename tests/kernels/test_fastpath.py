"""The data-plane fast path: the Cython kernel against its pure twin, on real sockets.

Each rig is one translated connection (or UDP flow) whose host side is a real
loopback socket; guest frames are generated (seeded) sequences of in-order
data, ACKs, duplicate ACKs, out-of-order and old segments, control flags,
options, foreign MACs, truncated frames and UDP datagrams. Both backends get
the same frames in the same batches; every observable result must be equal:
where each ``run`` stopped and whether the frame went to Python, the events,
the ACK frames built (byte for byte), the bytes the host peer received, the
connection's fields and the counters.
"""
from __future__ import annotations

import importlib
import random
import socket
import struct
import time
from array import array
from types import ModuleType

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from kernel_support import PURE_ONLY
from passtcore_py import headers as ph

GMAC = bytes.fromhex("525400123456")
OMAC = bytes.fromhex("9a559a559a55")
ADDR = {4: (bytes([192, 0, 2, 2]), bytes([198, 51, 100, 7])),
        6: (bytes.fromhex("20010db8000000000000000000000002"),
            bytes.fromhex("20010db8000100000000000000000007"))}
GPORT, RPORT = 40000, 8080
M32 = 0xFFFFFFFF
HOST_DATA = 100_000          # bytes the host peer sent that the guest "has been sent"
MSS = 100                    # window cap WND_FRAMES * MSS: deterministic windows

FIELDS = ("seq_to_tap", "seq_ack_from_tap", "seq_from_tap", "wnd_from_tap", "retries",
          "dupacks", "last_wnd", "last_progress", "last_activity", "touched", "fp_pending",
          "fp_flags", "fp_batch", "ack_sent", "events", "lowat")


def backends() -> list[str]:
    return ["python"] if PURE_ONLY else ["python", "cython"]


def load(kind: str) -> tuple[ModuleType, ModuleType]:
    if kind == "python":
        return (importlib.import_module("passtcore_py.fastpath"),
                importlib.import_module("passtcore_py.flowtable"))
    try:
        return (importlib.import_module("passtcore._fastpath"),
                importlib.import_module("passtcore._flowtable"))
    except ImportError as exc:  # pragma: no cover - depends on the build
        pytest.skip(f"Cython fast path not built: {exc}")


class TcpRig:
    """One ESTABLISHED connection: host socket ``sock`` connected to ``peer``."""

    def __init__(self, kind: str, v: int = 4, sndbuf: int = 0) -> None:
        self.mod, ftmod = load(kind)
        fam = socket.AF_INET if v == 4 else socket.AF_INET6
        lo = "127.0.0.1" if v == 4 else "::1"
        self.lsock = socket.socket(fam, socket.SOCK_STREAM)
        self.lsock.bind((lo, 0))
        self.lsock.listen(1)
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        if sndbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.sock.connect(self.lsock.getsockname()[:2])
        self.peer, _ = self.lsock.accept()
        self.peer.settimeout(5)
        self.peer.sendall(b"h" * HOST_DATA)
        self.sock.setblocking(False)
        self.peer.setblocking(False)
        self.received = bytearray()
        self.v = v
        self.table = ftmod.FlowTable(64)
        self.counters: dict[str, int] = {}
        self.fp = self.mod.FastPath(self.table, self.counters)
        self.fp.guest_mac = GMAC
        self.fp.our_mac = OMAC
        c = self.c = self.mod.TcpConn()
        g, r = ADDR[v]
        c.idx = self.table.insert(6, 0, g, GPORT, r, RPORT)
        c.sock, c.fd, c.v = self.sock, self.sock.fileno(), v
        c.gaddr, c.gport, c.raddr, c.rport = g, GPORT, r, RPORT
        c.events = 0x004
        c.mss, c.ws_from_tap, c.ws_to_tap = MSS, 2, 0
        c.seq_from_tap = 1_000_000
        c.seq_ack_from_tap = (M32 - 5000)            # wraps during the test
        c.seq_to_tap = (c.seq_ack_from_tap + HOST_DATA) & M32
        c.wnd_from_tap = 65535
        self.fp.attach(c.idx, c)
        self._wait_queued(HOST_DATA)

    def _wait_queued(self, n: int) -> None:
        import fcntl
        for _ in range(200):
            q = struct.unpack("i", fcntl.ioctl(self.sock.fileno(), 0x541B, b"\0" * 4))[0]
            if q >= n:
                return
            time.sleep(0.005)
        raise AssertionError("host data did not arrive")

    def drain(self) -> None:
        for _ in range(1000):
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                return
            if not chunk:
                return
            self.received += chunk

    def state(self) -> dict:
        return {f: getattr(self.c, f) for f in FIELDS}

    def close(self) -> None:
        for s in (self.sock, self.peer, self.lsock):
            s.close()


def tcp_frame(v: int, seq: int, ack: int, flags: int = 0x10, window: int = 4000,
              payload: bytes = b"", options: bytes = b"", mac: bytes = GMAC) -> bytes:
    g, r = ADDR[v]
    hl = ph.header_len(v, 6, len(options))
    buf = bytearray(hl + len(payload))
    buf[hl:] = payload
    n = ph.build_tcp(buf, 0, OMAC, mac, g, r, GPORT, RPORT, seq & M32, ack & M32, flags, window,
                     len(payload), options)
    return bytes(buf[:n])


def generate(seed: int, v: int, n: int = 300) -> list[bytes]:
    """A plausible guest: mostly in-order data and advancing ACKs, with every kind of
    frame the fast path must leave to Python mixed in."""
    rnd = random.Random(seed)
    seq = 1_000_000
    base = M32 - 5000
    acked = 0
    frames = []
    for _ in range(n):
        r = rnd.random()
        window = rnd.choice((4000, 4000, 4000, 8000, 100, 0))
        if r < 0.45:                      # in-order data
            plen = rnd.randint(1, 1400)
            acked = min(HOST_DATA, acked + rnd.choice((0, 0, 500, 3000)))
            frames.append(tcp_frame(v, seq, base + acked, 0x18 if rnd.random() < .5 else 0x10,
                                    window, rnd.randbytes(plen)))
            seq += plen
        elif r < 0.65:                    # pure ACK, advancing or not
            acked = min(HOST_DATA, acked + rnd.choice((0, 1, 1448, 20000)))
            frames.append(tcp_frame(v, seq, base + acked, 0x10, window))
        elif r < 0.70:                    # out of order
            frames.append(tcp_frame(v, seq + rnd.randint(1, 5000), base + acked, 0x10, window,
                                    b"o" * rnd.randint(1, 500)))
        elif r < 0.74:                    # old data (retransmission)
            frames.append(tcp_frame(v, seq - rnd.randint(1, 3000), base + acked, 0x10, window,
                                    b"r" * rnd.randint(1, 500)))
        elif r < 0.78:                    # control flags
            frames.append(tcp_frame(v, seq, base + acked, rnd.choice((0x11, 0x12, 0x14, 0x02,
                                                                       0x30, 0x00)), window))
        elif r < 0.82:                    # SACK option
            opt = b"\x01\x01\x05\x0a" + struct.pack("!II", (base + acked + 10) & M32, (base + acked + 20) & M32)
            frames.append(tcp_frame(v, seq, base + acked, 0x10, window, options=opt))
        elif r < 0.85:                    # another MAC
            frames.append(tcp_frame(v, seq, base + acked, 0x10, window, mac=bytes(6)))
        elif r < 0.88:                    # truncated
            f = tcp_frame(v, seq, base + acked, 0x10, window, b"t" * 50)
            frames.append(f[:rnd.randint(0, len(f) - 1)])
        elif r < 0.91:                    # ACK beyond what was sent
            frames.append(tcp_frame(v, seq, base + HOST_DATA + 99, 0x10, window))
        elif r < 0.94:                    # other flow (ports)
            f = bytearray(tcp_frame(v, seq, base + acked, 0x10, window, b"x"))
            l4 = 34 if v == 4 else 54
            f[l4:l4 + 2] = struct.pack("!H", GPORT + 1)
            frames.append(bytes(f))
        else:                             # data acknowledging everything
            acked = HOST_DATA
            frames.append(tcp_frame(v, seq, base + acked, 0x10, window, b"e" * 10))
            seq += 10
    return frames


def drive(rig: TcpRig, frames: list[bytes], seed: int) -> list:
    """Feed ``frames`` in random batches; what a dispatcher would see, recorded."""
    rnd = random.Random(seed * 7 + 1)
    rec: list = []
    fp = rig.fp
    now = 1000.0
    pos = 0
    tx = bytearray(64 * 128)
    out = array("q", bytes(8 * 64))
    while pos < len(frames):
        chunk = frames[pos:pos + rnd.randint(1, 40)]
        pos += len(chunk)
        buf = bytearray(b"".join(chunk))
        offsets = array("q", bytes(8 * len(chunk)))
        lengths = array("q", bytes(8 * len(chunk)))
        o = 0
        for k, f in enumerate(chunk):
            offsets[k], lengths[k] = o, len(f)
            o += len(f)
        now += rnd.choice((0.001, 0.5, 1.5))
        i = 0
        for _ in range(2 * len(chunk) + 1):
            if i >= len(chunk):
                break
            i = fp.run(buf, offsets, lengths, i, len(chunk), now)
            rec.append(("run", i, fp.slow, [(k, d) for k, _c, d in fp.events]))
            fp.events = []
            if fp.slow:
                i += 1
        for _ in range(100):
            n = fp.finish(tx, 0, 128, 4, out)   # 4 slots: exercises the repeat
            rec.append(("acks", [bytes(tx[j * 128:j * 128 + out[j]]) for j in range(n)],
                        [(k, d) for k, _c, d in fp.events]))
            fp.events = []
            if n < 4:
                break
        if rnd.random() < 0.5:
            n = fp.flush_deferred(tx, 0, 128, 64, out)
            rec.append(("deferred", [bytes(tx[j * 128:j * 128 + out[j]]) for j in range(n)],
                        fp.deferred))
        rig.drain()
        rec.append(("state", rig.state(), len(rig.received)))
    return rec


@pytest.mark.parametrize("v", [4, 6])
@pytest.mark.parametrize("seed", range(12))
def test_tcp_differential(seed: int, v: int) -> None:
    frames = generate(seed, v)
    results = {}
    for kind in backends():
        rig = TcpRig(kind, v)
        # odd seeds: the engine reads the socket (ACKs move SO_RCVLOWAT, no PUSH)
        rig.c.reading = rig.c.peekoff = bool(seed % 2)
        try:
            rec = drive(rig, frames, seed)
            rig.drain()
            results[kind] = (rec, bytes(rig.received), dict(rig.counters),
                             rig.table.last_seen(rig.c.idx))
        finally:
            rig.close()
    if len(results) == 2:
        py, cy = results["python"], results["cython"]
        for a, b in zip(py[0], cy[0]):
            assert a == b
        assert len(py[0]) == len(cy[0])
        assert py[1:] == cy[1:]
    rec, received, counters, _seen = results[backends()[-1]]
    # the fast path did real work and the socket got the in-order bytes
    assert counters.get("fastpath_tcp", 0) > 50
    assert len(received) > 10_000
    assert any(e[0] == "acks" and e[1] for e in rec)


def in_order_stream(v: int, n: int, plen: int, seq: int = 1_000_000) -> list[bytes]:
    return [tcp_frame(v, seq + i * plen, (M32 - 5000) & M32, 0x18, 4000,
                      bytes([i % 256]) * plen) for i in range(n)]


@pytest.mark.parametrize("kind", backends())
@pytest.mark.parametrize("v", [4, 6])
def test_in_order_data_reaches_the_socket_and_one_ack_per_batch(kind: str, v: int) -> None:
    rig = TcpRig(kind, v)
    try:
        frames = in_order_stream(v, 30, 1000)
        rec = drive_one_batch(rig, frames)
        assert rec["index"] == 30 and not rec["slow"]
        rig.drain()
        assert bytes(rig.received) == b"".join(f[-1000:] for f in frames)
        assert rig.c.seq_from_tap == 1_000_000 + 30_000
        assert len(rec["acks"]) == 1
        ack = Ether(rec["acks"][0])
        ipl = ack[IP] if v == 4 else ack[IPv6]
        tcp = ack[TCP]
        assert tcp.flags == "A" and tcp.ack == 1_000_000 + 30_000 and tcp.window == 128 * MSS
        assert (tcp.sport, tcp.dport) == (RPORT, GPORT)
        # checksums as the wire needs them (scapy recomputes them)
        raw = rec["acks"][0]
        again = Ether(raw)
        if v == 4:
            del again[IP].chksum
        del again[TCP].chksum
        assert bytes(again.__class__(bytes(again))) == raw
        assert ipl.src == socket.inet_ntop(socket.AF_INET if v == 4 else socket.AF_INET6,
                                           ADDR[v][1])
        assert rig.counters["fastpath_tcp"] == 30
    finally:
        rig.close()


def drive_one_batch(rig: TcpRig, frames: list[bytes], now: float = 5.0) -> dict:
    buf = bytearray(b"".join(frames))
    offsets = array("q", bytes(8 * len(frames)))
    lengths = array("q", bytes(8 * len(frames)))
    o = 0
    for k, f in enumerate(frames):
        offsets[k], lengths[k] = o, len(f)
        o += len(f)
    i = rig.fp.run(buf, offsets, lengths, 0, len(frames), now)
    slow = rig.fp.slow
    events = list(rig.fp.events)
    rig.fp.events = []
    tx = bytearray(64 * 128)
    out = array("q", bytes(8 * 64))
    n = rig.fp.finish(tx, 0, 128, 64, out)
    events += rig.fp.events
    rig.fp.events = []
    return {"index": i, "slow": slow, "events": events,
            "acks": [bytes(tx[j * 128:j * 128 + out[j]]) for j in range(n)]}


@pytest.mark.parametrize("kind", backends())
def test_ack_consumes_host_data_and_asks_for_a_push(kind: str) -> None:
    rig = TcpRig(kind)
    try:
        base = rig.c.seq_ack_from_tap
        rec = drive_one_batch(rig, [tcp_frame(4, 1_000_000, base + 3000)])
        assert rec["index"] == 1 and not rec["acks"]
        assert rig.c.seq_ack_from_tap == (base + 3000) & M32
        assert [e[0] for e in rec["events"]] == [rig.mod.EV_PUSH]
        # 3000 bytes left the receive queue
        rig._wait_queued(HOST_DATA - 3000)
        import fcntl
        q = struct.unpack("i", fcntl.ioctl(rig.sock.fileno(), 0x541B, b"\0" * 4))[0]
        assert q == HOST_DATA - 3000
        # a duplicate ACK is Python's (fast retransmit accounting)
        rec = drive_one_batch(rig, [tcp_frame(4, 1_000_000, base + 3000)])
        assert rec["index"] == 0 and rec["slow"]
    finally:
        rig.close()


@pytest.mark.parametrize("kind", backends())
def test_a_full_socket_hands_the_tail_back(kind: str) -> None:
    rig = TcpRig(kind, sndbuf=4096)
    try:
        frames = in_order_stream(4, 200, 1400)   # 280 KB: far more than the socket takes
        rec = drive_one_batch(rig, frames)
        holds = [e for e in rec["events"] if e[0] == rig.mod.EV_HOLD]
        assert len(holds) == 1
        tail = holds[0][2]
        written = (rig.c.seq_from_tap - 1_000_000) & M32
        # the call stopped after the frame whose write came up short (not a slow frame)
        taken = rec["index"]
        assert not rec["slow"] and 0 < taken < 200
        assert written + len(tail) == taken * 1400
        assert written > 0
        payload = b"".join(f[-1400:] for f in frames)[:taken * 1400]
        assert tail == payload[written:]
        rig.drain()
        for _ in range(100):
            if len(rig.received) >= written:
                break
            time.sleep(0.01)
            rig.drain()
        assert bytes(rig.received) == payload[:written]
    finally:
        rig.close()


@pytest.mark.parametrize("kind", backends())
def test_a_reset_socket_is_an_event(kind: str) -> None:
    rig = TcpRig(kind)
    try:
        rig.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rig.peer.close()
        time.sleep(0.05)
        rec = drive_one_batch(rig, in_order_stream(4, 3, 100))
        kinds = [e[0] for e in rec["events"]]
        assert rig.mod.EV_RESET in kinds
    finally:
        rig.sock.close()
        rig.lsock.close()


@pytest.mark.parametrize("kind", backends())
def test_ineligible_connections_go_to_python(kind: str) -> None:
    rig = TcpRig(kind)
    try:
        frame = in_order_stream(4, 1, 100)
        for field, value in (("events", 0x004 | 0x010), ("held", [(0, b"x", False)]),
                             ("pend_bytes", 5), ("writing", True), ("recover", 7),
                             ("fin_seq", 9), ("sock", None)):
            old = getattr(rig.c, field)
            setattr(rig.c, field, value)
            rec = drive_one_batch(rig, frame)
            assert rec["index"] == 0 and rec["slow"], field
            setattr(rig.c, field, old)
        rig.fp.detach(rig.c.idx)
        assert drive_one_batch(rig, frame)["slow"]
        rig.fp.attach(rig.c.idx, rig.c)
        assert not drive_one_batch(rig, frame)["slow"]
    finally:
        rig.close()


class UdpRig:
    def __init__(self, kind: str, v: int = 4, forwarded: bool = False) -> None:
        self.mod, ftmod = load(kind)
        fam = socket.AF_INET if v == 4 else socket.AF_INET6
        lo = "127.0.0.1" if v == 4 else "::1"
        self.rx = socket.socket(fam, socket.SOCK_DGRAM)
        self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.rx.bind((lo, 0))
        self.rx.setblocking(False)
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        self.sock.bind((lo, 0))
        self.table = ftmod.FlowTable(64)
        self.counters: dict[str, int] = {}
        self.fp = self.mod.FastPath(self.table, self.counters)
        self.fp.guest_mac = GMAC
        self.v = v
        f = self.f = self.mod.UdpFlow(self.sock, v, GPORT, forwarded)
        if forwarded:
            self.fp.set_forwarded(v, GPORT, f)
        else:
            any_ = bytes(4 if v == 4 else 16)
            f.idx = self.table.insert(17, 0, any_, GPORT, any_, 0)
            self.fp.attach(f.idx, f)
        f.gaddr = ADDR[v][0]
        self.dport = self.rx.getsockname()[1]
        f.set_fast_target(ADDR[v][1], self.dport, socket.inet_pton(fam, lo))

    def frame(self, payload: bytes, dport: int | None = None, dst: bytes | None = None) -> bytes:
        g, r = ADDR[self.v]
        hl = ph.header_len(self.v, 17)
        buf = bytearray(hl + len(payload))
        buf[hl:] = payload
        n = ph.build_udp(buf, 0, OMAC, GMAC, g, dst or r, GPORT,
                         self.dport if dport is None else dport, len(payload))
        return bytes(buf[:n])

    def received(self) -> list[bytes]:
        got = []
        for _ in range(10_000):
            try:
                got.append(self.rx.recv(70000))
            except BlockingIOError:
                break
        return got

    def close(self) -> None:
        self.rx.close()
        self.sock.close()


@pytest.mark.parametrize("forwarded", [False, True])
@pytest.mark.parametrize("v", [4, 6])
def test_udp_differential(v: int, forwarded: bool) -> None:
    results = {}
    for kind in backends():
        rig = UdpRig(kind, v, forwarded)
        try:
            rnd2 = random.Random(v * 3 + forwarded)
            built = []
            for k in range(300):
                r = rnd2.random()
                if r < 0.8:
                    built.append(rig.frame(struct.pack("!I", k) + b"u" * rnd2.randint(0, 1400)))
                elif r < 0.9:
                    built.append(rig.frame(b"other", dport=rig.dport + 1))   # no cached target
                else:
                    built.append(rig.frame(b"dhcp", dport=67 if v == 4 else 547))
            rec = []
            got = []
            for start in range(0, 300, 37):
                chunk = built[start:start + 37]
                rec.append(drive_udp(rig, chunk))
                got += rig.received()   # loopback delivers at once; drained per batch
            results[kind] = (rec, got, dict(rig.counters))
        finally:
            rig.close()
    if len(results) == 2:
        assert results["python"] == results["cython"]
    rec, got, counters = results[backends()[-1]]
    assert counters["fastpath_udp"] == counters["udp_to_host"] == len(got) > 150
    # in order, each datagram whole
    seqs = [struct.unpack("!I", g[:4])[0] for g in got]
    assert seqs == sorted(seqs)


def drive_udp(rig: UdpRig, chunk: list[bytes]) -> list:
    buf = bytearray(b"".join(chunk))
    offsets = array("q", bytes(8 * len(chunk)))
    lengths = array("q", bytes(8 * len(chunk)))
    o = 0
    for k, f in enumerate(chunk):
        offsets[k], lengths[k] = o, len(f)
        o += len(f)
    rec = []
    i = 0
    for _ in range(2 * len(chunk) + 1):
        if i >= len(chunk):
            break
        i = rig.fp.run(buf, offsets, lengths, i, len(chunk), 7.0)
        rec.append((i, rig.fp.slow))
        if rig.fp.slow:
            i += 1
    return rec


@pytest.mark.parametrize("kind", backends())
def test_udp_refreshes_the_flow_deadline(kind: str) -> None:
    rig = UdpRig(kind)
    try:
        drive_udp(rig, [rig.frame(b"a")])
        assert rig.table.last_seen(rig.f.idx) == 7.0 - ((1 << 20) - 180.0)
        rig.f.clear_fast_target()
        assert drive_udp(rig, [rig.frame(b"a")]) == [(0, True)]
    finally:
        rig.close()


def test_constants_are_the_twins() -> None:
    if PURE_ONLY:
        pytest.skip("PASSTCORE_PURE=1")
    cy, _ = load("cython")
    py, _ = load("python")
    for name in ("EV_PUSH", "EV_HOLD", "EV_RESET", "EV_ACK"):
        assert getattr(cy, name) == getattr(py, name)
    assert sorted(cy.__all__) == sorted(py.__all__)
    for cls in ("TcpConn", "UdpFlow"):
        a, b = getattr(cy, cls), getattr(py, cls)
        pub = {n for n in dir(b) if not n.startswith("_")}
        assert pub <= set(dir(a)), pub - set(dir(a))


@pytest.mark.parametrize("kind", backends())
def test_a_request_shorter_than_an_mss_is_acknowledged_late(kind: str) -> None:
    rig = TcpRig(kind)
    try:
        rig.c.mss = 1460
        rec = drive_one_batch(rig, in_order_stream(4, 1, 64))
        assert rec["index"] == 1 and rec["acks"] == [] and rig.fp.deferred == 1
        tx = bytearray(64 * 128)
        out = array("q", bytes(8 * 64))
        assert rig.fp.flush_deferred(tx, 0, 128, 64, out) == 1
        assert Ether(bytes(tx[:out[0]]))[TCP].ack == 1_000_064
        assert rig.c.ack_sent == 1_000_064 and rig.fp.deferred == 0
        # a reply carried it: nothing left to send
        drive_one_batch(rig, in_order_stream(4, 1, 64, seq=1_000_064))
        rig.c.ack_sent = rig.c.seq_from_tap
        assert rig.fp.flush_deferred(tx, 0, 128, 64, out) == 0
        # a whole MSS is acknowledged at once
        rec = drive_one_batch(rig, in_order_stream(4, 2, 1460, seq=1_000_128))
        assert len(rec["acks"]) == 1 and rig.fp.deferred == 0
    finally:
        rig.close()


@pytest.mark.parametrize("kind", backends())
def test_an_ack_moves_the_low_water_mark_of_a_reading_connection(kind: str) -> None:
    rig = TcpRig(kind)
    try:
        rig.c.reading = rig.c.peekoff = True
        base = rig.c.seq_ack_from_tap
        rec = drive_one_batch(rig, [tcp_frame(4, 1_000_000, base + 1000)])
        assert rec["events"] == []          # no PUSH: the reader wakes for new data
        assert rig.c.lowat == HOST_DATA - 1000 + 1
        assert rig.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == HOST_DATA - 999
    finally:
        rig.close()


@pytest.mark.parametrize("v", [4, 6])
@pytest.mark.parametrize("seed", range(6))
def test_push_differential(seed: int, v: int) -> None:
    """Host -> guest bursts: the same host data, windows and slot counts on both
    backends give the same frames, flags and connection state; the payloads are the
    host's bytes in order."""
    results = {}
    for kind in backends():
        rnd = random.Random(seed)
        rig = TcpRig(kind, v)
        c = rig.c
        c.peekoff = c.reading = True
        c.seq_to_tap = c.seq_ack_from_tap          # nothing sent to the guest yet
        c.mss = rnd.choice((536, 1460, 8960))
        tx = bytearray(16 * 10000)
        out = array("q", bytes(8 * 16))
        rec = []
        sent = bytearray()
        try:
            for step in range(40):
                c.wnd_from_tap = rnd.choice((0, 500, 20000, 1 << 20))
                if rnd.random() < 0.3:   # the guest acknowledges some of it
                    out_now = (c.seq_to_tap - c.seq_ack_from_tap) & M32
                    k = rnd.randint(0, out_now)
                    if k:
                        acked = drive_one_batch(rig, [tcp_frame(v, c.seq_from_tap,
                                                                c.seq_ack_from_tap + k)])
                        rec.append(("ack", acked["index"], acked["slow"]))
                seg = min(c.mss, 10000 - 74)
                n = rig.fp.push(c, rnd.random() < 0.5, tx, 0, 10000, rnd.randint(1, 16), seg,
                                float(step), out)
                frames = [bytes(tx[j * 10000:j * 10000 + out[j]]) for j in range(max(n, 0))]
                rec.append((n, rig.fp.push_flags, frames, rig.state()))
                for f in frames:
                    sent += Ether(f)[TCP].load if len(Ether(f)[TCP].payload) else b""
            results[kind] = (rec, bytes(sent))
        finally:
            rig.close()
    if len(results) == 2:
        assert results["python"][0] == results["cython"][0]
    rec, sent = results[backends()[-1]]
    assert sent == b"h" * len(sent) and len(sent) > 1000
    assert any(r[0] > 1 for r in rec if isinstance(r[0], int))


@pytest.mark.parametrize("headroom", [0, 10])
def test_frame_io_differential(headroom: int) -> None:
    """read_frames/write_frames on a descriptor that keeps frame boundaries (a
    datagram socketpair stands in for the tap): the same frames, counts and runts
    on both backends, and what is written is what the peer reads."""
    rnd = random.Random(headroom)
    frames = [bytes([headroom + 1 if k % 3 == 0 else 0]) + bytes(headroom - 1 if headroom else 0)
              + rnd.randbytes(rnd.choice((5, 14, 60, 1500, 9000))) for k in range(40)]
    results = {}
    for kind in backends():
        mod, _ = load(kind)
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        a.setblocking(False)
        try:
            for f in frames:
                b.send(f)
            buf = bytearray(16 * 10000)
            offs, lens = array("q", bytes(8 * 16)), array("q", bytes(8 * 16))
            res = mod.IoResult()
            got = []
            for _ in range(10):
                n = mod.read_frames(a.fileno(), buf, 10000, headroom, 16, offs, lens, res)
                got.append((n, res.runts, res.gso, res.nbytes, res.drained, res.error,
                            [bytes(buf[offs[i]:offs[i] + lens[i]]) for i in range(n)]))
                if res.drained:
                    break
            # write back what was read in the last full batch
            out = bytearray(4 * 10000)
            wl = array("q", [0] * 4)
            for k in range(4):
                payload = bytes([k]) * (100 + k)
                out[k * 10000 + 16:k * 10000 + 16 + len(payload)] = payload
                wl[k] = len(payload)
            sent = mod.write_frames(a.fileno(), out, 16, 10000, wl, 4, headroom, res)
            echoed = [b.recv(20000) for _ in range(sent)]
            results[kind] = (got, sent, res.failed, echoed)
        finally:
            a.close()
            b.close()
    if len(results) == 2:
        assert results["python"] == results["cython"]
    got, sent, failed, echoed = results[backends()[-1]]
    flat = [f for batch in got for f in batch[-1]]
    assert flat == [f[headroom:] for f in frames if len(f) - headroom >= 14]
    assert sum(batch[1] for batch in got) == sum(1 for f in frames if len(f) - headroom < 14)
    assert sent == 4 and failed == 0
    assert [e[headroom:] for e in echoed] == [bytes([k]) * (100 + k) for k in range(4)]


def _guest_frames(drv, seen: int, hdr_len: int = 12) -> tuple[list[bytes], int]:
    """The frames the guest finds in its used ring since entry ``seen`` (a
    mergeable frame spans num_buffers entries, in order): (virtio header + frame)."""
    from test_virtq import GPA
    used = drv.used()
    frames = []
    k = seen
    while k < len(used):
        head, n = used[k]
        addr = drv.rx_addr[head]
        first = bytes(drv.mem[addr - GPA:addr - GPA + n])
        nbuf = struct.unpack_from("<H", first, 10)[0] if drv.mergeable else 1
        blob = first
        for j in range(1, nbuf):
            h2, n2 = used[k + j]
            a2 = drv.rx_addr[h2]
            blob += bytes(drv.mem[a2 - GPA:a2 - GPA + n2])
        frames.append(blob)
        k += max(nbuf, 1)
    return frames, k


@pytest.mark.parametrize("gso", [0, 1])
@pytest.mark.parametrize("mergeable", [True, False])
@pytest.mark.parametrize("v", [4, 6])
@pytest.mark.parametrize("seed", range(3))
def test_push_vq_differential(seed: int, v: int, mergeable: bool, gso: int) -> None:
    """Host -> guest straight into the guest's receive buffers (vhost-user, no copy):
    both backends leave the same bytes in guest memory, the same used ring and the
    same connection state; the guest finds the host's bytes in order, checksums
    right (or, for a multi-segment frame with ``gso``, NEEDS_CSUM, GSO_TCPV4/6 at
    the MSS and the pseudo-header sum)."""
    from test_virtq import GPA, Driver, load as vq_load, queue as vq_queue
    results = {}
    pattern = bytes(random.Random(seed).randbytes(600_000))
    for kind in backends():
        rnd = random.Random(seed)
        rig = TcpRig(kind, v)
        c = rig.c
        try:
            while rig.sock.recv(1 << 20, socket.MSG_DONTWAIT):   # the rig's own data
                pass
        except BlockingIOError:
            pass
        rig.sock.setsockopt(socket.SOL_SOCKET, 42, 0)             # SO_PEEK_OFF
        rig.peer.setblocking(True)
        rig.peer.sendall(pattern)
        rig._wait_queued(len(pattern))
        c.peekoff = c.reading = True
        c.seq_to_tap = c.seq_ack_from_tap
        c.mss = rnd.choice((1460, 8960))
        drv = Driver(num=256)
        drv.mergeable, drv.rx_addr = mergeable, {}
        size = 2048 if mergeable else 9 * 1024
        for _ in range(200 if mergeable else 60):
            if drv.data + size + 64 > len(drv.mem):
                break
            a = drv.space(size)
            head = drv.chain([(a, size)], write=True)
            drv.rx_addr[head] = a
            drv.make_avail(head)
        q = vq_queue(importlib.import_module("passtcore_py.virtq" if kind == "python"
                                             else "passtcore._virtq"), drv)
        out = array("q", bytes(8 * 64))
        rec, got, seen, kinds = [], bytearray(), 0, set()
        try:
            for step in range(12):
                c.wnd_from_tap = rnd.choice((3000, 20000, 1 << 20))
                seg = (8 * c.mss if gso else c.mss) if mergeable else min(c.mss, size - 12 - 74)
                seg = min(seg, 16000)
                n = rig.fp.push_vq(c, False, q, mergeable, c.mss if gso else 0, 12, seg,
                                   float(step), out)
                frames, seen = _guest_frames(drv, seen)
                rec.append((n, rig.fp.push_flags, rig.state(), list(out[:max(n, 0)]),
                            dict(q.errors), q.last_avail))
                assert n < 0 or len(frames) == n
                for f in frames:
                    vh, frame = f[:12], f[12:]
                    p = Ether(frame)
                    t = p[TCP]
                    payload = bytes(t.payload)
                    if vh[0] & 1:   # NEEDS_CSUM: a GSO frame, checksum left to the guest
                        assert gso and len(payload) > c.mss
                        flags, gtype, hlen, gsize, cstart, coff = struct.unpack_from("<BBHHHH", vh)
                        assert (gtype, hlen, gsize, cstart, coff) == (
                            1 if v == 4 else 4, 54 if v == 4 else 74, c.mss,
                            34 if v == 4 else 54, 16)
                        kinds.add("gso")
                    else:
                        assert vh[:10] == bytes(10)
                        kinds.add("plain")
                        chk = t.chksum
                        del t.chksum
                        assert Ether(bytes(p))[TCP].chksum == chk
                    assert len(payload) <= seg
                    got += payload
                # the guest acknowledges everything: buffers are not re-posted
                c.seq_ack_from_tap = c.seq_to_tap
            results[kind] = (rec, bytes(drv.mem), drv.used())
        finally:
            rig.close()
        assert bytes(got) == pattern[:len(got)] and len(got) > 10_000, (len(got), kind)
        assert ("plain" in kinds or gso) and ("gso" in kinds) == bool(gso and mergeable), kinds
        assert max(r[0] for r in rec) > 1      # bursts of several frames per call
    if len(results) == 2:
        assert results["python"] == results["cython"]
