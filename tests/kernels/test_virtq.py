"""Split virtqueues: the Cython kernel against its twin, and both against the
virtio 1.x layout written out by hand (a guest driver's side, ``Driver``).

The driver lays the rings and buffers out in a region the way a Linux guest's
virtio_ring does (descriptor table, available ring with ``used_event``, used
ring with ``avail_event``), with a guest-physical base unlike the front end's
virtual one, so that a mix-up of the two address spaces fails. Hostile
chains (addresses outside the region, lengths that run past it, cycles,
nested or chained indirect tables, wrong directions, heads out of range, an
avail index far ahead) are dropped and counted, never followed.
"""
from __future__ import annotations

import importlib
import random
import struct
from array import array
from types import ModuleType

import pytest

from kernel_support import PURE_ONLY

GPA, UVA, SIZE = 0x4000_0000, 0x7F00_0000_0000, 1 << 20
DESC, AVAIL, USED = 0x1000, 0x9000, 0xA000      # offsets in the region
DATA = 0x20000


def backends() -> list[str]:
    return ["python"] if PURE_ONLY else ["python", "cython"]


def load(kind: str) -> ModuleType:
    if kind == "python":
        return importlib.import_module("passtcore_py.virtq")
    try:
        return importlib.import_module("passtcore._virtq")
    except ImportError as exc:  # pragma: no cover
        pytest.skip(f"Cython virtqueue kernel not built: {exc}")


class Driver:
    """The guest's side of one queue in one region."""

    def __init__(self, num: int = 256) -> None:
        self.mem = bytearray(SIZE)
        self.num = num
        self.free = list(range(num))
        self.avail_idx = 0
        self.data = DATA

    def desc(self, i: int, addr: int, length: int, flags: int, nxt: int,
             table: int = DESC) -> None:
        struct.pack_into("<QIHH", self.mem, table + 16 * i, addr, length, flags, nxt)

    def buf(self, payload: bytes) -> int:
        """Copy payload into the data area; its guest-physical address."""
        off = self.data
        self.mem[off:off + len(payload)] = payload
        self.data += (len(payload) + 15) // 16 * 16 + 16
        return GPA + off

    def space(self, n: int) -> int:
        off = self.data
        self.data += (n + 15) // 16 * 16 + 16
        return GPA + off

    def make_avail(self, head: int) -> None:
        struct.pack_into("<H", self.mem, AVAIL + 4 + 2 * (self.avail_idx % self.num), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        struct.pack_into("<H", self.mem, AVAIL + 2, self.avail_idx)

    def chain(self, pieces: list[tuple[int, int]], write: bool) -> int:
        """A direct chain of (address, length) buffers; its head."""
        ids = [self.free.pop(0) for _ in pieces]
        for k, (addr, length) in enumerate(pieces):
            last = k == len(pieces) - 1
            self.desc(ids[k], addr, length, (2 if write else 0) | (0 if last else 1),
                      0 if last else ids[k + 1])
        return ids[0]

    def indirect(self, pieces: list[tuple[int, int]], write: bool) -> int:
        table = self.space(16 * len(pieces)) - GPA
        for k, (addr, length) in enumerate(pieces):
            last = k == len(pieces) - 1
            self.desc(k, addr, length, (2 if write else 0) | (0 if last else 1),
                      0 if last else k + 1, table=table)
        head = self.free.pop(0)
        self.desc(head, GPA + table, 16 * len(pieces), 4, 0)
        return head

    def used(self) -> list[tuple[int, int]]:
        idx = struct.unpack_from("<H", self.mem, USED + 2)[0]
        return [struct.unpack_from("<II", self.mem, USED + 4 + 8 * (k % self.num))
                for k in range(idx)]


def queue(mod: ModuleType, drv: Driver, **kw):
    mem = mod.GuestMemory()
    mem.add(GPA, SIZE, UVA, drv.mem)
    return mod.Virtqueue(mem, drv.num, UVA + DESC, UVA + AVAIL, UVA + USED, **kw)


def split(rnd: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, rnd.randint(0, 4))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


def tx_scenario(seed: int) -> tuple[Driver, list[bytes]]:
    """Frames (with a 12-byte header) as chains of every shape, and hostile chains."""
    rnd = random.Random(seed)
    drv = Driver(num=rnd.choice((64, 256)))
    sent = []
    for k in range(rnd.randint(10, 50)):
        if len(drv.free) < 8:
            break
        r = rnd.random()
        frame = bytes(12) + struct.pack("!I", k) + rnd.randbytes(rnd.randint(10, 3000))
        if r < 0.5:
            head = drv.chain([(drv.buf(p), len(p)) for p in split(rnd, frame)], write=False)
            sent.append(frame[12:])
        elif r < 0.65:
            head = drv.indirect([(drv.buf(p), len(p)) for p in split(rnd, frame)], write=False)
            sent.append(frame[12:])
        elif r < 0.7:      # outside the region
            head = drv.chain([(GPA + SIZE - 8, 100)], write=False)
        elif r < 0.74:     # address wraps
            head = drv.chain([((1 << 64) - 16, 64)], write=False)
        elif r < 0.78:     # a cycle
            a, b = drv.free.pop(0), drv.free.pop(0)
            drv.desc(a, drv.buf(frame), len(frame), 1, b)
            drv.desc(b, drv.buf(frame), len(frame), 1, a)
            head = a
        elif r < 0.82:     # a writable buffer in a TX chain
            head = drv.chain([(drv.buf(frame), len(frame))], write=True)
        elif r < 0.86:     # indirect inside indirect
            inner = drv.space(16) - GPA
            drv.desc(0, drv.buf(frame), len(frame), 0, 0, table=inner)
            outer = drv.space(16) - GPA
            drv.desc(0, GPA + inner, 16, 4, 0, table=outer)
            head = drv.free.pop(0)
            drv.desc(head, GPA + outer, 16, 4, 0)
        elif r < 0.9:      # too short to be a frame
            head = drv.chain([(drv.buf(bytes(20)), 20)], write=False)
        elif r < 0.94:     # next out of range
            head = drv.free.pop(0)
            drv.desc(head, drv.buf(frame), len(frame), 1, drv.num + 5)
        else:              # a head out of range
            drv.make_avail(drv.num + 3)
            continue
        drv.make_avail(head)
    return drv, sent


@pytest.mark.parametrize("seed", range(20))
def test_tx_differential(seed: int) -> None:
    results = {}
    for kind in backends():
        drv, sent = tx_scenario(seed)
        q = queue(load(kind), drv)
        out = bytearray(1 << 18)
        offs, lens = array("q", bytes(8 * 64)), array("q", bytes(8 * 64))
        got = []
        for _ in range(10):
            n = q.pop_tx(out, offs, lens, random.Random(seed).randint(1, 64))
            got += [bytes(out[offs[i]:offs[i] + lens[i]]) for i in range(n)]
            if not n:
                break
        results[kind] = (got, drv.used(), dict(q.errors), q.last_avail, q.used_idx, bytes(drv.mem))
        assert got == sent
        # every chain given back exactly once, used length 0 on the TX queue
        heads = [h for h, _ in drv.used()]
        assert len(heads) == len(set(heads)) and all(n == 0 for _, n in drv.used())
    if len(results) == 2:
        assert results["python"] == results["cython"]


def rx_scenario(seed: int, mergeable: bool) -> tuple[Driver, int]:
    rnd = random.Random(seed)
    drv = Driver(num=128)
    posted = 0
    for _ in range(rnd.randint(5, 60)):
        if len(drv.free) < 6:
            break
        size = rnd.choice((64, 100, 1526, 2048, 4096))
        r = rnd.random()
        if r < 0.6:
            pieces = [(drv.space(size), size)]
            if rnd.random() < 0.3:
                pieces.append((drv.space(size), size))
            head = drv.chain(pieces, write=True)
        elif r < 0.8:
            head = drv.indirect([(drv.space(size), size)], write=True)
        elif r < 0.85:
            head = drv.chain([(drv.space(size), size)], write=False)   # wrong direction
        elif r < 0.9:
            head = drv.chain([(GPA - 100, 200)], write=True)            # below the region
        else:
            head = drv.chain([(drv.space(8), 8)], write=True)           # smaller than a header
        drv.make_avail(head)
        posted += 1
    return drv, posted


@pytest.mark.parametrize("mergeable", [True, False])
@pytest.mark.parametrize("seed", range(12))
def test_rx_differential(seed: int, mergeable: bool) -> None:
    rnd = random.Random(seed + 1000)
    frames = [struct.pack("!I", k) + rnd.randbytes(rnd.choice((10, 56, 60, 200, 1514, 3000)))
              for k in range(40)]
    blob = b"".join(frames)
    offs = array("q", [0] * len(frames))
    lens = array("q", [len(f) for f in frames])
    pos = 0
    for k, f in enumerate(frames):
        offs[k] = pos
        pos += len(f)
    results = {}
    for kind in backends():
        drv, _posted = rx_scenario(seed, mergeable)
        q = queue(load(kind), drv)
        hdr = bytes([1, 0]) + bytes(10)
        delivered = q.push_rx(blob, offs, lens, len(frames), mergeable=mergeable, hdr=hdr)
        results[kind] = (delivered, drv.used(), dict(q.errors), q.last_avail, bytes(drv.mem))
        assert delivered <= len(frames)
        # what the guest got adds up: for each frame a 12-byte header and the frame,
        # padded to 60 bytes, over its buffers (dropped frames: used length 0)
        assert sum(n for _, n in drv.used()) <= sum(12 + max(len(f), 60)
                                                    for f in frames[:delivered])
    if len(results) == 2:
        assert results["python"] == results["cython"]


@pytest.mark.parametrize("kind", backends())
def test_rx_frame_lands_with_header_and_padding(kind: str) -> None:
    drv = Driver(num=8)
    a = drv.space(2048)
    drv.make_avail(drv.chain([(a, 2048)], write=True))
    q = queue(load(kind), drv)
    frame = b"\x01" * 42
    assert q.push_rx(frame, array("q", [0]), array("q", [42]), 1) == 1
    assert drv.used() == [(0, 12 + 60)]
    got = bytes(drv.mem[a - GPA:a - GPA + 72])
    assert got[:12] == bytes(10) + b"\x01\x00" and got[12:54] == frame and got[54:] == bytes(18)
    # no buffer left: the next frame waits, nothing is counted
    assert q.push_rx(frame, array("q", [0]), array("q", [42]), 1) == 0 and q.errors == {}


@pytest.mark.parametrize("kind", backends())
def test_mergeable_frame_spans_buffers(kind: str) -> None:
    drv = Driver(num=8)
    bufs = [drv.space(1000) for _ in range(3)]
    for b in bufs:
        drv.make_avail(drv.chain([(b, 1000)], write=True))
    q = queue(load(kind), drv)
    frame = bytes(range(256)) * 10   # 2560 bytes: three buffers with the header
    assert q.push_rx(frame, array("q", [0]), array("q", [len(frame)]), 1) == 1
    assert [n for _, n in drv.used()] == [1000, 1000, 572]
    land = b"".join(bytes(drv.mem[b - GPA:b - GPA + 1000]) for b in bufs)
    assert land[10:12] == b"\x03\x00" and land[12:12 + len(frame)] == frame


@pytest.mark.parametrize("kind", backends())
def test_avail_overrun_breaks_the_queue(kind: str) -> None:
    drv = Driver(num=8)
    struct.pack_into("<H", drv.mem, AVAIL + 2, 200)   # 200 available in an 8-entry ring
    q = queue(load(kind), drv)
    out = bytearray(4096)
    assert q.pop_tx(out, array("q", [0] * 8), array("q", [0] * 8), 8) == 0
    assert q.broken and q.errors == {"avail-overrun": 1}


@pytest.mark.parametrize("kind", backends())
def test_notification_suppression(kind: str) -> None:
    drv = Driver(num=8)
    drv.make_avail(drv.chain([(drv.buf(bytes(12 + 60)), 72)], write=False))
    q = queue(load(kind), drv)
    out = bytearray(4096)
    assert q.need_call() is False            # nothing used yet
    assert q.pop_tx(out, array("q", [0]), array("q", [0]), 1) == 1
    assert q.need_call() is True and q.need_call() is False
    struct.pack_into("<H", drv.mem, AVAIL, 1)   # VRING_AVAIL_F_NO_INTERRUPT
    drv.make_avail(drv.chain([(drv.buf(bytes(12 + 60)), 72)], write=False))
    assert q.pop_tx(out, array("q", [0]), array("q", [0]), 1) == 1
    assert q.need_call() is False


@pytest.mark.parametrize("kind", backends())
def test_event_idx(kind: str) -> None:
    drv = Driver(num=8)
    q = queue(load(kind), drv, event_idx=True)
    out = bytearray(4096)
    for k in range(3):
        drv.make_avail(drv.chain([(drv.buf(bytes(12 + 60)), 72)], write=False))
    struct.pack_into("<H", drv.mem, AVAIL + 4 + 2 * 8, 1)   # used_event: wake me after entry 1
    assert q.pop_tx(out, array("q", [0] * 8), array("q", [0] * 8), 1) == 1
    assert q.need_call() is False                            # used_idx 1: not past 1 yet
    assert q.pop_tx(out, array("q", [0] * 8), array("q", [0] * 8), 8) == 2
    assert q.need_call() is True
    assert struct.unpack_from("<H", drv.mem, USED + 4 + 8 * 8)[0] == 3   # avail_event


@pytest.mark.parametrize("kind", backends())
def test_rings_and_regions_are_checked(kind: str) -> None:
    mod = load(kind)
    mem = mod.GuestMemory()
    with pytest.raises(mod.VirtqError):
        mem.add(GPA, SIZE, UVA, bytes(SIZE))               # read-only
    with pytest.raises(mod.VirtqError):
        mem.add(GPA, SIZE + 1, UVA, bytearray(SIZE))       # larger than its mapping
    mem.add(GPA, SIZE, UVA, bytearray(SIZE))
    with pytest.raises(mod.VirtqError):
        mod.Virtqueue(mem, 100, UVA + DESC, UVA + AVAIL, UVA + USED)   # not a power of 2
    with pytest.raises(mod.VirtqError):
        mod.Virtqueue(mem, 256, UVA + SIZE - 16, UVA + AVAIL, UVA + USED)  # table outside
    with pytest.raises(mod.VirtqError):
        mod.Virtqueue(mem, 256, GPA + DESC, GPA + AVAIL, GPA + USED)   # guest-physical: wrong
    assert mem.gpa(GPA + SIZE - 4, 4) is not None and mem.gpa(GPA + SIZE - 4, 5) is None
    assert mem.uva(UVA - 1, 2) is None


def test_same_api() -> None:
    if PURE_ONLY:
        pytest.skip("PASSTCORE_PURE=1")
    assert sorted(load("cython").__all__) == sorted(load("python").__all__)


@pytest.mark.parametrize("mergeable", [True, False])
@pytest.mark.parametrize("seed", range(16))
def test_rx_reservation_differential(seed: int, mergeable: bool) -> None:
    """rx_reserve / rx_buffers / rx_finish (the zero-copy receive path) agree in
    both backends, on buffers of every shape and hostile ones."""
    results = {}
    for kind in backends():
        rnd = random.Random(seed + 5000)
        drv, _posted = rx_scenario(seed, mergeable)
        q = queue(load(kind), drv)
        log = []
        for _round in range(3):
            cap = rnd.choice((80, 1526, 3000, 9000))
            n = q.rx_reserve(rnd.randint(1, 8), cap, rnd.choice((12, 100)), mergeable)
            views = [q.rx_buffers(k) for k in range(n)]
            caps = [q.rx_capacity(k) for k in range(n)]
            assert all(sum(len(v) for v in vs) >= c for vs, c in zip(views, caps))
            assert all(c <= cap for c in caps)
            if mergeable:   # only the last frame may be short (the buffers ran out)
                assert all(c == cap for c in caps[:-1])
            for k, vs in enumerate(views):   # the caller writes into guest memory
                for j, v in enumerate(vs):
                    v[:] = bytes([(k * 16 + j) & 0xFF]) * len(v)
            used = rnd.randint(0, n)
            lens = array("q", [c - 12 for c in caps[:used]])
            if used:
                lens[-1] = rnd.randint(0, caps[used - 1] - 12)
            log.append(caps)
            assert q.rx_finish(used, lens) == used
            log.append((n, used, q.last_avail, dict(q.errors)))
        results[kind] = (log, drv.used(), bytes(drv.mem))
    if len(results) == 2:
        assert results["python"] == results["cython"]


@pytest.mark.parametrize("kind", backends())
def test_rx_reservation_gives_back_what_it_did_not_use(kind: str) -> None:
    drv = Driver(num=8)
    bufs = [drv.space(1000) for _ in range(6)]
    for b in bufs:
        drv.make_avail(drv.chain([(b, 1000)], write=True))
    q = queue(load(kind), drv)
    # two frames of up to 2000 bytes: two buffers each, four taken
    assert q.rx_reserve(2, 2000, 100, True) == 2
    assert [len(v) for v in q.rx_buffers(1)] == [1000, 1000]
    with pytest.raises(Exception):
        q.rx_reserve(1, 100, 12, True)      # one reservation at a time
    first = q.rx_buffers(0)
    first[0][12:12 + 42] = b"\x05" * 42
    q.rx_finish(1, array("q", [42]))        # a 42-byte frame: one buffer, padded to 60
    assert drv.used() == [(0, 72)]
    got = bytes(drv.mem[bufs[0] - GPA:bufs[0] - GPA + 72])
    assert got[10:12] == b"\x01\x00" and got[12:54] == b"\x05" * 42 and got[54:72] == bytes(18)
    # buffers 1..5 went back: the copy path takes the next one
    assert q.last_avail == 1 and q.pending() == 5
    assert q.push_rx(b"\x07" * 100, array("q", [0]), array("q", [100]), 1) == 1
    assert drv.used()[-1] == (1, 112)
    # without MRG_RXBUF a frame is one chain, as large as the guest made it
    assert q.rx_reserve(2, 5000, 12, False) == 2 and q.rx_capacity(1) == 1000
    q.rx_finish(0, array("q"))
    assert q.last_avail == 2
    # the buffers run out mid-frame: a shorter last frame
    assert q.rx_reserve(3, 2500, 12, True) == 2        # four buffers of 1000 left
    assert [q.rx_capacity(k) for k in range(2)] == [2500, 1000]
    # a buffer that cannot hold the headers ends the reservation (the copy path judges it)
    q.rx_finish(0, array("q"))
    assert q.rx_reserve(1, 1500, 1200, True) == 0 and q.last_avail == 2
