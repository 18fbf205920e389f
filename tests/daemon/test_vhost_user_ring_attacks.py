"""A hostile vhost-user front end and guest against a real ``passtcore-run --vhost-user``.

No QEMU: ``vhost_client.VhostClient`` plays it on the daemon's socket, with the
guest memory in its own memfd. Each test makes one kind of attack on the
memory table, the ring addresses or the descriptors (addresses outside the
regions or across a region's end, cycles, chains longer than the ring, 4 GiB
lengths, avail indices far ahead, heads out of range, bad indirect tables,
buffers of the wrong direction) and then checks three things:

- the drop counter for that attack went up by exactly what was sent, and no
  other counter of a drop did (``drop.vhost-*`` / ``drop.virtq-*``);
- a well-behaved exchange works afterwards, on the same rings where the
  attack leaves them usable: an ARP request for the gateway answered with
  the right is-at (parsed with scapy), read from the RX used ring;
- once the client has gone, the daemon holds no fd or mapping more than it
  did idle (nothing of the guest's memory or eventfds leaks).

One daemon (no ``--one-off``) serves the whole module, one client at a time,
in a private sandbox (``passtcore.sandbox``): nothing leaves the namespaces.
"""
from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Iterator

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether

import passtcore
from netns_support import require_netns
from passtcore.sandbox import Daemon, Sandbox, wait_for

from .helpers import GUEST_MAC, arp_request
from .vhost_client import (DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, GPA, MEM_SIZE,
                           NET_HDR_LEN, RX, SET_MEM_TABLE, TX, UVA, Vring, VhostClient,
                           mem_table, msg)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

GW4, GUEST4 = "192.0.2.1", "192.0.2.2"     # the sandbox's gateway and the guest's lease
MAC = "52:54:00:12:34:56"
OUR_MAC = Sandbox.host_mac                  # the daemon answers with the host's MAC, as passt
ARP_REQ = arp_request(bytes([192, 0, 2, 1]), sender=bytes([192, 0, 2, 2]), mac=GUEST_MAC)


# -- the daemon and the per-test harness ---------------------------------------------
@pytest.fixture(scope="module")
def daemon() -> Iterator[tuple[Daemon, int]]:
    """The daemon and how many fds it has open with no client."""
    require_netns()
    with Sandbox("vuatk") as sb:
        d = sb.start_daemon("--vhost-user", "--runas", "0", mode="socket")
        yield d, len(os.listdir(f"/proc/{d.pid}/fd"))


class Harness:
    """One test's view of the daemon: clients, counter deltas, the leak check."""

    def __init__(self, d: Daemon, idle_fds: int) -> None:
        self.d, self.idle_fds = d, idle_fds
        self.clients: list[VhostClient] = []
        assert d.alive(), d.log()[-2000:]
        self.before = d.counters()

    def _sessions(self) -> tuple[int, int]:
        log = self.d.log()
        return log.count("vhost-user: front end connected"), log.count("front end gone")

    def connect(self, start: bool = True, num: int = 256) -> VhostClient:
        # one front end at a time: the previous one must be gone, or this one is discarded
        wait_for(lambda: self._sessions()[0] == self._sessions()[1], 10, "the last client to go")
        c = VhostClient(self.d.socket_path)
        self.clients.append(c)
        if start:
            c.start(num)
        return c

    def disconnect(self, c: VhostClient) -> None:
        if c in self.clients:
            self.clients.remove(c)
            c.close()
        wait_for(lambda: self._sessions()[0] == self._sessions()[1], 10, "the daemon to notice")

    def delta(self) -> dict[str, int]:
        """Counters that moved since the test began (drops and client counts)."""
        now = self.d.counters()
        return {k: v - self.before.get(k, 0) for k, v in now.items()
                if v != self.before.get(k, 0) and k.startswith(("drop.", "clients"))}

    def drops(self) -> dict[str, int]:
        return {k[5:]: v for k, v in self.delta().items() if k.startswith("drop.")}

    def close(self) -> None:
        for c in list(self.clients):
            self.disconnect(c)
        assert self.d.alive(), self.d.log()[-2000:]
        pid = self.d.pid
        # nothing of the clients' left behind: fds (memfds, eventfds) and mappings
        wait_for(lambda: len(os.listdir(f"/proc/{pid}/fd")) <= self.idle_fds, 5,
                 f"the daemon's fds back to the {self.idle_fds} it has idle")
        maps = open(f"/proc/{pid}/maps").read()
        assert "vhost-client-guest" not in maps, "guest memory still mapped"


@pytest.fixture
def h(daemon: tuple[Daemon, int]) -> Iterator[Harness]:
    harness = Harness(*daemon)
    yield harness
    harness.close()


# -- well-behaved exchanges -------------------------------------------------------------
def arp_reply_ok(frame: bytes) -> bool:
    p = Ether(frame)
    if ARP not in p or p[ARP].op != 2:
        return False
    a = p[ARP]
    assert (a.psrc, a.pdst, a.hwdst) == (GW4, GUEST4, MAC), p.show(dump=True)
    assert p.dst == MAC and a.hwsrc == p.src == OUR_MAC, p.show(dump=True)
    return True


def exchange_arp(c: VhostClient, rx_buffers: int = 4) -> None:
    """RX buffers, an ARP who-has for the gateway on TX, its is-at from the RX used ring."""
    c.post_rx(rx_buffers)
    c.send_frame(ARP_REQ)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if any(arp_reply_ok(f) for f in c.recv_frames(1, max(0.0, deadline - time.monotonic()))):
            return
    raise AssertionError("no ARP reply for the gateway")


def exchange_dhcp(c: VhostClient) -> None:
    c.post_rx(4)
    discover = (Ether(src=MAC, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
                / UDP(sport=68, dport=67)
                / BOOTP(chaddr=bytes.fromhex(MAC.replace(":", "")) + bytes(10), xid=0x1234567)
                / DHCP(options=[("message-type", "discover"), "end"]))
    c.send_frame(bytes(discover))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for f in c.recv_frames(1, max(0.0, deadline - time.monotonic())):
            p = Ether(f)
            if BOOTP in p:
                assert p[BOOTP].xid == 0x1234567 and p[BOOTP].yiaddr == GUEST4
                opts = dict(o for o in p[DHCP].options if isinstance(o, tuple))
                assert opts["message-type"] == 2 and opts["router"] == GW4, opts   # an offer
                return
    raise AssertionError("no DHCP offer")


def test_well_behaved_front_end(h: Harness) -> None:
    """The client itself: handshake, ARP and DHCP answered, nothing dropped; a second
    connection after the first (the daemon outlives its front ends)."""
    c = h.connect()
    exchange_arp(c)
    exchange_dhcp(c)
    h.disconnect(c)
    exchange_arp(h.connect())
    assert h.delta() == {"clients": 2}
    # the daemon runs the virtqueue backend this suite runs (PASSTCORE_PURE=1: the twin)
    maps = open(f"/proc/{h.d.pid}/maps").read()
    assert ("passtcore/_virtq." in maps) == (passtcore.backend == "cython")


# -- the memory table ------------------------------------------------------------------
def _pipe_fd() -> int:
    r, w = os.pipe()
    os.close(w)
    return r


BAD_TABLES: dict[str, tuple[Callable[[VhostClient], tuple[list, list]], str]] = {
    # name: (regions and fds for the client, the drop reason)
    "zero-size": (lambda c: ([(GPA, 0, UVA, 0)], [c.memfd]), "vhost-bad-region"),
    "mmap-offset-past-fd-end": (lambda c: ([(GPA, 4096, UVA, MEM_SIZE)], [c.memfd]),
                                "vhost-bad-region"),
    "size-past-fd-end": (lambda c: ([(GPA, 2 * MEM_SIZE, UVA, 0)], [c.memfd]),
                         "vhost-bad-region"),
    "offset-2^47": (lambda c: ([(GPA, 4096, UVA, 1 << 47)], [c.memfd]), "vhost-bad-region"),
    "size-2^60": (lambda c: ([(GPA, 1 << 60, UVA, 0)], [c.memfd]), "vhost-bad-region"),
    "gpa-wraps": (lambda c: ([((1 << 64) - 4096, MEM_SIZE, UVA, 0)], [c.memfd]),
                  "vhost-bad-region"),
    "uva-wraps": (lambda c: ([(GPA, MEM_SIZE, (1 << 64) - 4096, 0)], [c.memfd]),
                  "vhost-bad-region"),
    "fd-not-mappable": (lambda c: ([(GPA, 4096, UVA, 0)], [_pipe_fd()]), "vhost-bad-region"),
    "fewer-fds-than-regions": (lambda c: ([(GPA, 4096, UVA, 0), (GPA + 4096, 4096, UVA + 4096,
                                                                 4096)], [c.memfd]),
                               "vhost-bad-fds"),
    "nine-regions": (lambda c: ([(GPA + k * 4096, 4096, UVA + k * 4096, k * 4096)
                                 for k in range(9)], [c.memfd] * 8), "vhost-bad-size"),
}


@pytest.mark.parametrize("kind", sorted(BAD_TABLES))
def test_bad_memory_table_refused_then_a_good_one_works(h: Harness, kind: str) -> None:
    build, reason = BAD_TABLES[kind]
    c = h.connect(start=False)
    c.handshake(mem=False)
    regions, fds = build(c)
    status = c.request(SET_MEM_TABLE, mem_table(regions), fds)
    for fd in fds:
        if fd != c.memfd:
            os.close(fd)
    assert status != 0
    assert h.drops() == {reason: 1}
    assert c.set_mem_table() == 0
    c.setup_ring(RX)
    c.setup_ring(TX)
    exchange_arp(c)
    assert h.drops() == {reason: 1}


def test_nine_fds_end_the_connection(h: Harness) -> None:
    """More fds than regions can have (9 > 8): the control message is truncated
    (MSG_CTRUNC): the connection ends, the fds that arrived are closed."""
    c = h.connect(start=False)
    c.handshake(mem=False)
    regions = [(GPA + k * 4096, 4096, UVA + k * 4096, k * 4096) for k in range(9)]
    c.send(SET_MEM_TABLE, mem_table(regions), [c.memfd] * 9, need_reply=True)
    with pytest.raises(EOFError):
        c.recv()
    h.disconnect(c)
    assert h.drops() == {"vhost-bad-message": 1}
    exchange_arp(h.connect())


@pytest.mark.parametrize("same_bytes", [True, False], ids=["consistent", "aliased"])
def test_overlapping_regions_are_served_within_bounds(h: Harness, same_bytes: bool) -> None:
    """Two regions overlapping in both address spaces (1 MiB each way). The spec does
    not forbid it (a flat view never has it): the daemon accepts the table, takes each
    address through the first region holding the whole access, and never leaves a
    mapping. ``aliased``: the second region shows other bytes of the memfd at the
    same addresses (a lie); rings and buffers in the overlap are read through the
    first, so the exchange works, nothing is dropped."""
    c = h.connect(start=False)
    c.handshake(mem=False)
    half = MEM_SIZE // 2
    second = (GPA + half // 2, half, UVA + half // 2, half // 2 if same_bytes else half)
    assert c.set_mem_table([(GPA, half, UVA, 0), second]) == 0
    c.brk = half // 2          # the rings and every buffer in the overlap
    c.setup_ring(RX)
    c.setup_ring(TX)
    exchange_arp(c)
    exchange_dhcp(c)
    assert c.brk < half
    assert h.drops() == {}


def test_descriptor_across_a_region_end(h: Harness) -> None:
    """Two regions adjacent in both address spaces (the second maps the memfd from
    an mmap_offset): a buffer in the second is read right (a frame there is answered),
    one that starts in the first and ends in the second is refused, not followed."""
    c = h.connect(start=False)
    c.handshake(mem=False)
    half = MEM_SIZE // 2
    assert c.set_mem_table([(GPA, half, UVA, 0), (GPA + half, half, UVA + half, half)]) == 0
    c.setup_ring(RX)
    c.setup_ring(TX)
    tx = c.rings[TX]
    head = tx.alloc_desc()
    tx.set_desc(head, GPA + half - 20, NET_HDR_LEN + len(ARP_REQ))   # 20 bytes in the first
    c.mem[half - 20:half - 20 + NET_HDR_LEN + len(ARP_REQ)] = bytes(NET_HDR_LEN) + ARP_REQ
    tx.make_avail(head)
    tx.kick()
    assert tx.wait_used(1) == [(head, 0)]
    assert h.drops() == {"virtq-bad-address": 1}
    c.brk = half + 4096          # buffers in the second region: through its mmap_offset
    exchange_arp(c)
    assert h.drops() == {"virtq-bad-address": 1}


# -- ring addresses ---------------------------------------------------------------------
def _bad_addrs(ring: Vring, kind: str) -> tuple[int, int, int]:
    desc, used, avail = ring.addrs()
    if kind == "desc-past-end":
        desc = UVA + MEM_SIZE - 16                   # 16 * num bytes from there: past the end
    elif kind == "used-straddles-end":
        used = UVA + MEM_SIZE - 100
    elif kind == "avail-guest-physical":
        avail = GPA + ring.avail                     # a guest-physical address, not a UVA
    elif kind == "desc-wraps":
        desc = (1 << 64) - 16
    return desc, used, avail


@pytest.mark.parametrize("kind", ["desc-past-end", "used-straddles-end", "avail-guest-physical",
                                  "desc-wraps"])
@pytest.mark.parametrize("index", [RX, TX], ids=["rx", "tx"])
def test_ring_outside_memory(h: Harness, index: int, kind: str) -> None:
    """A ring whose table or rings are not inside one region is refused when it would
    start (vhost-bad-ring, the ring stays stopped); set up again right, it works."""
    c = h.connect(start=False)
    c.handshake()
    rings = {i: Vring(c, i, 256) for i in (RX, TX)}
    c.rings.update(rings)
    for i, ring in rings.items():
        c.start_ring(ring, addrs=_bad_addrs(ring, kind) if i == index else None)
    c.post_rx(4)
    c.send_frame(ARP_REQ)
    if index == TX:
        wait_for(lambda: h.drops(), 5, "a drop")
        assert h.drops() == {"vhost-bad-ring": 1}
        assert rings[TX].used_idx() == 0
    else:                   # the reply found no ring to go to
        wait_for(lambda: len(h.drops()) == 2, 5, "two drops")
        assert h.drops() == {"vhost-bad-ring": 1, "vhost-rx-not-ready": 1}
        assert rings[TX].wait_used(1) == [(0, 0)]   # the request itself was taken
    assert rings[RX].used_idx() == 0
    c.start_ring(rings[index])
    exchange_arp(c)
    assert h.drops().get("vhost-bad-ring") == 1


# -- hostile transmit chains -------------------------------------------------------------
FRAME = bytes(NET_HDR_LEN) + ARP_REQ


def _direct(c: VhostClient, t: Vring, pieces: list[tuple[int, int, int]]) -> int:
    """A chain of (addr, length, extra flags) descriptors; its head."""
    ids = [t.alloc_desc() for _ in pieces]
    for k, (addr, length, flags) in enumerate(pieces):
        last = k == len(pieces) - 1
        t.set_desc(ids[k], addr, length, flags | (0 if last else DESC_F_NEXT),
                   0 if last else ids[k + 1])
    return ids[0]


def _indirect(c: VhostClient, t: Vring, entries: list[tuple[int, int, int, int]],
              length: int | None = None, flags: int = 0) -> int:
    """An indirect table of (addr, length, flags, next) entries; the ring's descriptor to it."""
    table = c.alloc(16 * max(1, len(entries)))
    for k, e in enumerate(entries):
        t.set_desc(k, *e, table=table)
    head = t.alloc_desc()
    t.set_desc(head, GPA + table, 16 * len(entries) if length is None else length,
               DESC_F_INDIRECT | flags)
    return head


def _chained(c: VhostClient, data: bytes, n: int) -> list[tuple[int, int, int, int]]:
    """``data`` cut into ``n`` chained indirect entries (the last ones may be empty)."""
    step = -(-len(data) // n)
    return [(c.buf(data[k * step:(k + 1) * step] or b"\0"), len(data[k * step:(k + 1) * step]),
             DESC_F_NEXT if k < n - 1 else 0, k + 1 if k < n - 1 else 0) for k in range(n)]


def _cycle(c: VhostClient, t: Vring, length: int) -> int:
    """a -> b -> a (``length`` 2) or a -> b -> b (1): readable frames all along."""
    a, b = t.alloc_desc(), t.alloc_desc()
    t.set_desc(a, c.buf(FRAME), len(FRAME), DESC_F_NEXT, b)
    t.set_desc(b, c.buf(FRAME), len(FRAME), DESC_F_NEXT, a if length == 2 else b)
    return a


def _nested(c: VhostClient, t: Vring) -> int:
    inner = c.alloc(16)
    t.set_desc(0, c.buf(FRAME), len(FRAME), table=inner)
    return _indirect(c, t, [(GPA + inner, 16, DESC_F_INDIRECT, 0)])


def _single(t: Vring, addr: int, length: int, flags: int = 0, nxt: int = 0) -> int:
    head = t.alloc_desc()
    t.set_desc(head, addr, length, flags, nxt)
    return head


END = GPA + MEM_SIZE          # the first guest-physical address past the memory
TX_ATTACKS: dict[str, tuple[Callable[[VhostClient, Vring], int], str]] = {
    # name: (builds the chain, returns its head; the drop reason)
    "addr-past-end": (lambda c, t: _single(t, END, 64), "virtq-bad-address"),
    "addr-below-memory": (lambda c, t: _single(t, GPA - 64, 128), "virtq-bad-address"),
    "runs-past-end": (lambda c, t: _single(t, END - 32, 64), "virtq-bad-address"),
    "addr-wraps": (lambda c, t: _single(t, (1 << 64) - 16, 64), "virtq-bad-address"),
    "length-4GiB": (lambda c, t: _single(t, c.buf(FRAME), 0xFFFFFFFF), "virtq-bad-address"),
    "second-piece-outside": (lambda c, t: _direct(c, t, [(c.buf(FRAME), len(FRAME), 0),
                                                         (END + 4096, 64, 0)]),
                             "virtq-bad-address"),
    "self-loop": (lambda c, t: _cycle(c, t, 1), "virtq-desc-loop"),
    "two-cycle": (lambda c, t: _cycle(c, t, 2), "virtq-desc-loop"),
    "next-out-of-range": (lambda c, t: _single(t, c.buf(FRAME), len(FRAME), DESC_F_NEXT, t.num),
                          "virtq-bad-next"),
    "write-only": (lambda c, t: _single(t, c.buf(FRAME), len(FRAME), DESC_F_WRITE),
                   "virtq-wrong-direction"),
    "read-then-write": (lambda c, t: _direct(c, t, [(c.buf(FRAME[:20]), 20, 0),
                                                    (c.buf(FRAME[20:]), len(FRAME) - 20,
                                                     DESC_F_WRITE)]), "virtq-wrong-direction"),
    "too-short": (lambda c, t: _single(t, c.buf(bytes(NET_HDR_LEN + 13)), NET_HDR_LEN + 13),
                  "virtq-bad-frame-length"),
    "too-long": (lambda c, t: _single(t, c.buf(bytes(NET_HDR_LEN + 65536 + 15)),
                                      NET_HDR_LEN + 65536 + 15), "virtq-bad-frame-length"),
    "indirect-in-indirect": (lambda c, t: _nested(c, t), "virtq-bad-indirect"),
    "indirect-size-24": (lambda c, t: _indirect(c, t, _chained(c, FRAME, 2), length=24),
                         "virtq-bad-indirect"),
    "indirect-size-0": (lambda c, t: _indirect(c, t, [], length=0), "virtq-bad-indirect"),
    "indirect-with-next": (lambda c, t: _indirect(c, t, _chained(c, FRAME, 2), flags=DESC_F_NEXT),
                           "virtq-bad-indirect"),
    "indirect-table-outside": (lambda c, t: _single(t, END, 64, DESC_F_INDIRECT),
                               "virtq-bad-address"),
    "indirect-table-runs-past-end": (lambda c, t: _single(t, END - 32, 64, DESC_F_INDIRECT),
                                     "virtq-bad-address"),
    "indirect-entry-outside": (lambda c, t: _indirect(c, t, [(END, 64, 0, 0)]),
                               "virtq-bad-address"),
    "indirect-cycle": (lambda c, t: _indirect(c, t, [(c.buf(FRAME), len(FRAME), DESC_F_NEXT, 1),
                                                     (c.buf(FRAME), len(FRAME), DESC_F_NEXT, 0)]),
                       "virtq-desc-loop"),
    "indirect-next-out-of-table": (lambda c, t: _indirect(c, t, [(c.buf(FRAME), len(FRAME),
                                                                  DESC_F_NEXT, 1)]),
                                   "virtq-bad-next"),
    "indirect-longer-than-ring": (lambda c, t: _indirect(c, t, _chained(c, FRAME, t.num + 1)),
                                  "virtq-desc-loop"),
}


@pytest.mark.parametrize("kind", sorted(TX_ATTACKS))
def test_hostile_tx_chain_then_the_queue_goes_on(h: Harness, kind: str) -> None:
    """The malformed chain is given back used with length 0 and counted; a valid
    request made available right after it, in the same kick, is answered."""
    build, reason = TX_ATTACKS[kind]
    c = h.connect(num=64)
    c.post_rx(4)
    t = c.rings[TX]
    bad = build(c, t)
    t.make_avail(bad)
    good = c.send_frame(ARP_REQ)          # kicks
    assert t.wait_used(2) == [(bad, 0), (good, 0)]
    assert any(arp_reply_ok(f) for f in c.recv_frames(1))
    assert h.drops() == {reason: 1}
    exchange_arp(c)
    assert h.drops() == {reason: 1}


def test_chains_as_long_as_the_ring_are_taken(h: Harness) -> None:
    """The bound is the ring size, not less: a direct chain of all ``num`` descriptors
    and an indirect table of ``num`` entries are valid frames (empty pieces included)."""
    c = h.connect(num=16)
    c.post_rx(4)
    t = c.rings[TX]
    step = -(-len(FRAME) // t.num)
    head = _direct(c, t, [(c.buf(FRAME[k * step:(k + 1) * step] or b"\0"),
                           len(FRAME[k * step:(k + 1) * step]), 0) for k in range(t.num)])
    t.make_avail(head)
    t.kick()
    assert t.wait_used(1) == [(head, 0)]
    assert any(arp_reply_ok(f) for f in c.recv_frames(1))
    head = _indirect(c, t, _chained(c, FRAME, t.num))
    t.make_avail(head)
    t.kick()
    assert t.wait_used(1) == [(head, 0)]
    assert any(arp_reply_ok(f) for f in c.recv_frames(1))
    assert h.drops() == {}


@pytest.mark.parametrize("head", [64, 65, 0x8000, 0xFFFF])
def test_head_out_of_range(h: Harness, head: int) -> None:
    """A head past the table is skipped (it has no used entry to give back)."""
    c = h.connect(num=64)
    c.post_rx(4)
    t = c.rings[TX]
    t.make_avail(head)
    good = c.send_frame(ARP_REQ)
    assert t.wait_used(1) == [(good, 0)]
    assert any(arp_reply_ok(f) for f in c.recv_frames(1))
    assert t.wait_used(0, 0.2) == []
    assert h.drops() == {"virtq-bad-head": 1}
    assert c.get_vring_base(TX) == 2       # both entries were taken from the avail ring


@pytest.mark.parametrize("ahead", [65, 1000, 0x8000, 0xFFFF])
@pytest.mark.parametrize("index", [RX, TX], ids=["rx", "tx"])
def test_avail_index_too_far_ahead_stops_the_queue(h: Harness, index: int, ahead: int) -> None:
    """An avail index more than ``num`` ahead of us: the queue is broken (counted once)
    and takes nothing more from that ring, even valid buffers made available after;
    the device reset by the front end (GET_VRING_BASE, a zeroed ring, started again)
    works again."""
    c = h.connect(num=64)
    ring, tx = c.rings[index], c.rings[TX]
    if index == TX:
        ring.set_avail_idx(ahead)
        ring.kick()
        wait_for(lambda: h.drops(), 5, "a drop")
        assert h.drops() == {"virtq-avail-overrun": 1}
        c.post_rx(4)
        c.send_frame(ARP_REQ)           # a sane index again, a valid chain: ignored
        time.sleep(0.3)
        assert tx.used_idx() == 0 and c.rings[RX].used_idx() == 0
    else:
        c.post_rx(4)
        ring.set_avail_idx(ahead)
        c.send_frame(ARP_REQ)
        assert tx.wait_used(1) == [(0, 0)]
        wait_for(lambda: len(h.drops()) == 2, 5, "two drops")
        assert h.drops() == {"virtq-avail-overrun": 1, "vhost-rx-no-buffer": 1}
        assert ring.used_idx() == 0
    assert h.d.alive()
    c.get_vring_base(index)                       # stop it
    ring.reset()
    c.start_ring(ring)
    exchange_arp(c)
    assert h.drops()["virtq-avail-overrun"] == 1


# -- hostile receive buffers ---------------------------------------------------------------
W = DESC_F_WRITE
RX_ATTACKS: dict[str, tuple[Callable[[VhostClient, Vring], int], str]] = {
    "read-only": (lambda c, r: _single(r, GPA + c.alloc(2048), 2048), "virtq-wrong-direction"),
    "write-then-read": (lambda c, r: _direct(c, r, [(GPA + c.alloc(64), 64, W),
                                                    (GPA + c.alloc(2048), 2048, 0)]),
                        "virtq-wrong-direction"),
    "runs-past-end": (lambda c, r: _single(r, END - 1024, 2048, W), "virtq-bad-address"),
    "length-4GiB": (lambda c, r: _single(r, GPA + c.alloc(2048), 0xFFFFFFFF, W),
                    "virtq-bad-address"),
    "smaller-than-header": (lambda c, r: _single(r, GPA + c.alloc(8), 8, W),
                            "virtq-rx-buffer-too-small"),
    "self-loop": (lambda c, r: _single(r, GPA + c.alloc(16), 16, W | DESC_F_NEXT, r.next_desc),
                  "virtq-desc-loop"),
    "indirect-in-indirect": (lambda c, r: _nested(c, r), "virtq-bad-indirect"),
}


@pytest.mark.parametrize("kind", sorted(RX_ATTACKS))
def test_hostile_rx_buffer_drops_one_frame(h: Harness, kind: str) -> None:
    """The first receive buffer is malformed: the frame that would have gone in it is
    dropped and counted, the buffer given back used with length 0; the next frame
    lands in the next buffer."""
    build, reason = RX_ATTACKS[kind]
    c = h.connect(num=64)
    rx = c.rings[RX]
    bad = build(c, rx)
    rx.make_avail(bad)
    c.post_rx(4)
    c.send_frame(ARP_REQ)
    assert rx.wait_used(1) == [(bad, 0)]
    assert h.drops() == {reason: 1}
    exchange_arp(c, rx_buffers=0)
    assert h.drops() == {reason: 1}
    assert h.delta().get("clients") == 1


def test_rx_head_out_of_range(h: Harness) -> None:
    c = h.connect(num=64)
    rx = c.rings[RX]
    rx.make_avail(64)
    c.post_rx(4)
    c.send_frame(ARP_REQ)
    wait_for(lambda: h.drops(), 5, "a drop")
    assert h.drops() == {"virtq-bad-head": 1}
    assert rx.wait_used(0, 0.2) == []
    exchange_arp(c, rx_buffers=0)
    assert c.get_vring_base(RX) == 2


# -- a memory table sent again while the rings run --------------------------------------------
def test_memory_table_resent_while_running_keeps_ring_positions(h: Harness) -> None:
    """QEMU sends SET_MEM_TABLE again on memory hotplug, and SET_VRING_ADDR when it
    turns dirty logging on, with the rings running: the queues are rebuilt over the
    new mappings from where they were, not from the base they started at (a rewind
    takes the guest's old requests again, and fills receive buffers it already has)."""
    c = h.connect(num=64)
    tx = c.rings[TX]
    for _ in range(3):
        exchange_arp(c)
    assert len(tx.wait_used(3)) == 3
    assert c.set_mem_table() == 0
    exchange_arp(c)
    time.sleep(0.2)                       # room for the old requests to come back, if they do
    assert tx.wait_used(1) == [(3, 0)]
    for ring in c.rings.values():           # SET_VRING_ADDR again (QEMU: dirty logging)
        assert c.set_vring_addr(ring.index, *ring.addrs()) == 0
    exchange_arp(c)
    time.sleep(0.2)
    assert tx.wait_used(1) == [(4, 0)]
    assert c.get_vring_base(TX) == 5 and c.get_vring_base(RX) == 5
    assert h.drops() == {}


def test_control_garbage_on_a_running_connection(h: Harness) -> None:
    """Control-channel garbage on a running connection: refused and counted; the
    rings, already running, are not disturbed."""
    c = h.connect()
    exchange_arp(c)
    assert c.request(99) != 0
    assert c.request(8, b"\0" * 3) != 0                     # SET_VRING_NUM, short
    assert c.request(8, struct.pack("<II", 0, 3)) != 0      # not a power of two
    assert c.request(12, struct.pack("<Q", TX)) != 0        # SET_VRING_KICK without its fd
    exchange_arp(c)
    assert h.drops() == {"vhost-unknown-request": 1, "vhost-bad-size": 1, "vhost-bad-ring": 1,
                         "vhost-bad-fds": 1}
    c.sock.sendall(msg(1, flags=0x2))                      # protocol version 2: ends it
    with pytest.raises(EOFError):
        c.recv()
    h.disconnect(c)
    assert h.drops()["vhost-bad-message"] == 1
    exchange_arp(h.connect())


# -- eventfds that are not eventfds ---------------------------------------------------------
def test_kick_fd_that_cannot_be_polled(h: Harness) -> None:
    """A kick fd epoll refuses (a regular file: the memfd itself) is refused with a
    failure reply and counted, not left half-watched; a real eventfd then works."""
    c = h.connect()
    exchange_arp(c)
    assert c.set_vring_kick(TX, c.memfd) != 0
    assert h.drops() == {"vhost-bad-fds": 1}
    assert c.set_vring_kick(TX, c.rings[TX].kick_fd) == 0
    exchange_arp(c)
    assert h.drops() == {"vhost-bad-fds": 1}


def test_call_fd_that_would_block(h: Harness) -> None:
    """A call fd that blocks (a full pipe in blocking mode) must not freeze the daemon:
    the interrupt is lost, the frames are not; the fd's flags (shared with the front
    end) are not changed."""
    import fcntl

    c = h.connect()
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, 1031, 4096)               # F_SETPIPE_SZ: one page
        os.set_blocking(w, False)
        try:
            while True:
                os.write(w, bytes(4096))
        except BlockingIOError:
            pass
        os.set_blocking(w, True)
        assert c.set_vring_call(TX, w) == 0
        assert c.set_vring_call(RX, w) == 0
        for _ in range(3):
            exchange_arp(c)
        assert h.drops() == {}
        assert os.get_blocking(w)                # the daemon left the front end's fd as it was
    finally:
        os.close(r)
        os.close(w)
