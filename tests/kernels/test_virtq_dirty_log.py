"""Dirty-page logging (VHOST_F_LOG_ALL, the front end's live migration): every
write a queue makes into guest memory is marked in the log, a bit per 4 KiB
guest-physical page, in both backends alike, and nothing else is.

The queue lives in ``test_virtq.Driver``'s region (rings, indirect tables and
some buffers); a second region above 4 GiB, added first, holds buffers too,
some chains spanning both, so a log made by offset within a region, by region
index or by the front end's virtual address fails. Both regions start out
filled with noise, so that a write shows as changed bytes. The used ring
starts at entry 508 of 512: its entries wrap, entry 511 straddles a page
boundary, and ``avail_event`` is on the next page.
"""
from __future__ import annotations

import mmap
import random
import struct
from array import array
from types import ModuleType

import pytest

from test_virtq import AVAIL, DATA, DESC, GPA, SIZE, USED, UVA, Driver, backends, load

GPB, UVB, SIZEB = 0x1_0000_0000, 0x7E00_0000_0000, 1 << 19
PAGE = 4096
NUM, START = 512, 508
LOG_LEN = (GPB + SIZEB) // PAGE // 8     # covers both regions
HDR = bytes([1, 0]) + bytes(10)


def pages(gpa: int, length: int) -> set[int]:
    return set(range(gpa // PAGE, (gpa + length - 1) // PAGE + 1)) if length else set()


class Guest:
    """Two regions and a queue over them; the guest's side is ``drv``."""

    def __init__(self, mod: ModuleType, seed: int, event_idx: bool = False,
                 log: object = "full") -> None:
        rnd = random.Random(seed)
        self.drv = Driver(NUM)
        self.drv.mem[DATA:] = rnd.randbytes(SIZE - DATA)
        self.high = bytearray(rnd.randbytes(SIZEB))
        self.hpos = 0x800
        # the ring starts late, as if 508 entries had gone by
        self.drv.avail_idx = START
        struct.pack_into("<H", self.drv.mem, AVAIL + 2, START)
        struct.pack_into("<H", self.drv.mem, USED + 2, START)
        self.mem = mod.GuestMemory()
        self.mem.add(GPB, SIZEB, UVB, self.high)
        self.mem.add(GPA, SIZE, UVA, self.drv.mem)
        self.log = bytearray(LOG_LEN) if log == "full" else log
        if self.log is not None:
            self.mem.set_log(self.log)
        self.event_idx = event_idx
        self.q = mod.Virtqueue(self.mem, NUM, UVA + DESC, UVA + AVAIL, UVA + USED,
                               event_idx=event_idx, last_avail=START)

    # -- guest memory ------------------------------------------------------------
    def high_space(self, rnd: random.Random, n: int) -> int:
        off = self.hpos + rnd.randint(0, 3000)
        self.hpos = off + n
        assert self.hpos <= SIZEB
        return GPB + off

    def space(self, rnd: random.Random, n: int) -> int:
        """Room for n bytes in either region."""
        return self.drv.space(n) if rnd.random() < 0.5 else self.high_space(rnd, n)

    def put(self, gpa: int, data: bytes) -> None:
        if gpa >= GPB:
            self.high[gpa - GPB:gpa - GPB + len(data)] = data
        else:
            self.drv.mem[gpa - GPA:gpa - GPA + len(data)] = data

    def snapshot(self) -> tuple[bytes, bytes]:
        return bytes(self.drv.mem), bytes(self.high)

    def used_idx(self) -> int:
        return struct.unpack_from("<H", self.drv.mem, USED + 2)[0]

    def used_entry(self, k: int) -> tuple[int, int]:
        return struct.unpack_from("<II", self.drv.mem, USED + 4 + 8 * (k % NUM))

    def chain_pieces(self, head: int) -> list[tuple[int, int]]:
        """The (gpa, length) buffers of a well-formed chain."""
        table, i, out = DESC, head, []
        while True:
            addr, length, flags, nxt = struct.unpack_from("<QIHH", self.drv.mem, table + 16 * i)
            if flags & 4:
                table, i = addr - GPA, 0
                continue
            if length:
                out.append((addr, length))
            if not flags & 1:
                return out
            i = nxt

    # -- what was written, what changed, what was logged -----------------------------
    def written(self, used0: int) -> set[int]:
        """The pages the queue wrote since used index ``used0``: the used index
        (and avail_event), the new used entries, and in each entry's chain the
        bytes its length covers."""
        base = GPA + USED
        out = pages(base + 2, 2)
        if self.event_idx:
            out |= pages(base + 4 + 8 * NUM, 2)
        for k in range(used0, used0 + ((self.used_idx() - used0) & 0xFFFF)):
            out |= pages(base + 4 + 8 * (k % NUM), 8)
            head, n = self.used_entry(k)
            for gpa, length in self.chain_pieces(head) if n else []:
                out |= pages(gpa, min(n, length))
                n -= min(n, length)
                if not n:
                    break
        return out

    def changed(self, before: tuple[bytes, bytes]) -> set[int]:
        out = set()
        for (base, old), new in zip(((GPA, before[0]), (GPB, before[1])), self.snapshot()):
            for off in range(0, len(new), PAGE):
                if old[off:off + PAGE] != new[off:off + PAGE]:
                    out.add((base + off) // PAGE)
        return out

    def logged(self) -> set[int]:
        return {8 * b + bit for b, v in enumerate(bytes(self.log)) if v
                for bit in range(8) if v >> bit & 1}

    def check(self, op) -> None:
        """Run op; no write escapes the log, and the log holds only writes."""
        self.log[:] = bytes(len(self.log))     # the front end harvested it
        before, used0 = self.snapshot(), self.used_idx()
        op()
        logged = self.logged()
        assert self.changed(before) <= logged
        assert logged == self.written(used0)


# -- the three ways a queue writes ---------------------------------------------------------
def tx(g: Guest, rnd: random.Random) -> None:
    for k in range(rnd.randint(3, 12)):
        frame = HDR + struct.pack("!I", k) + rnd.randbytes(rnd.randint(10, 3000))
        pieces = []
        for a, b in ((0, len(frame) // 2), (len(frame) // 2, len(frame))):
            gpa = g.space(rnd, b - a)
            g.put(gpa, frame[a:b])
            pieces.append((gpa, b - a))
        if rnd.random() < 0.2:
            pieces = [(pieces[0][0], 4)]       # too short to be a frame: used, length 0
        g.drv.make_avail(g.drv.chain(pieces, write=rnd.random() < 0.1))  # or wrong direction
    out = bytearray(1 << 16)
    offs, lens = array("q", [0] * 64), array("q", [0] * 64)
    g.check(lambda: g.q.pop_tx(out, offs, lens, 64))


def post_rx(g: Guest, rnd: random.Random, n: int, hostile: bool) -> None:
    for _ in range(n):
        size = rnd.choice((64, 100, 1526, 2048, 4096, 5000))
        r = rnd.random()
        if r < 0.5:
            head = g.drv.chain([(g.space(rnd, size), size)], write=True)
        elif r < 0.75:    # a chain across both regions
            head = g.drv.chain([(g.drv.space(size), size), (g.high_space(rnd, 3000), 3000)],
                               write=True)
        elif r < 0.9 or not hostile:
            head = g.drv.indirect([(g.high_space(rnd, size), size),
                                   (g.drv.space(700), 700)], write=True)
        elif r < 0.95:
            head = g.drv.chain([(g.space(rnd, size), size)], write=False)
        else:
            head = g.drv.chain([(g.space(rnd, 8), 8)], write=True)
        g.drv.make_avail(head)


def rx(g: Guest, rnd: random.Random, mergeable: bool) -> None:
    post_rx(g, rnd, rnd.randint(4, 20), hostile=True)
    frames = [struct.pack("!I", k) + rnd.randbytes(rnd.choice((10, 56, 60, 200, 1514, 3000, 9000)))
              for k in range(rnd.randint(1, 16))]
    offs = array("q", [sum(len(f) for f in frames[:k]) for k in range(len(frames))])
    lens = array("q", [len(f) for f in frames])
    g.check(lambda: g.q.push_rx(b"".join(frames), offs, lens, len(frames),
                                mergeable=mergeable, hdr=HDR))


def reserve(g: Guest, rnd: random.Random, mergeable: bool) -> None:
    post_rx(g, rnd, rnd.randint(4, 20), hostile=False)

    def op() -> None:
        n = g.q.rx_reserve(rnd.randint(1, 8), rnd.choice((80, 1526, 3000, 9000)),
                           rnd.choice((12, 100)), mergeable)
        caps = [g.q.rx_capacity(k) for k in range(n)]
        used = rnd.randint(min(n, 1), n)
        lens = array("q", [c - 12 for c in caps[:used]])
        if used:
            lens[-1] = rnd.choice((0, 20, rnd.randint(0, caps[used - 1] - 12)))
        for k in range(used):    # the caller writes exactly the header and the frame
            data = HDR + rnd.randbytes(lens[k])
            for v in g.q.rx_buffers(k):
                piece = data[:len(v)]
                v[:len(piece)] = piece
                data = data[len(piece):]
        g.q.rx_finish(used, lens)

    g.check(op)
    g.check(op)


def scenario(g: Guest, seed: int, which: str) -> None:
    rnd = random.Random(seed)
    steps = {"tx": [tx], "rx": [lambda g, r: rx(g, r, False)],
             "rx-mergeable": [lambda g, r: rx(g, r, True)],
             "reserve": [lambda g, r: reserve(g, r, False)],
             "reserve-mergeable": [lambda g, r: reserve(g, r, True)]}
    steps["all"] = [s for k in ("tx", "rx-mergeable", "reserve-mergeable", "rx", "reserve", "tx")
                    for s in steps[k]]
    for step in steps[which]:
        step(g, rnd)


OPS = ["tx", "rx", "rx-mergeable", "reserve", "reserve-mergeable"]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("which", OPS)
@pytest.mark.parametrize("kind", backends())
def test_no_write_escapes_the_log(kind: str, which: str, seed: int) -> None:
    g = Guest(load(kind), seed, event_idx=bool(seed & 1))
    scenario(g, seed, which)
    assert g.used_idx() != START     # something was used


@pytest.mark.parametrize("zero_copy", [False, True])
@pytest.mark.parametrize("kind", backends())
def test_a_page_touched_by_one_byte_is_marked(kind: str, zero_copy: bool) -> None:
    """Buffers that start on the last byte of a page and end on the first byte of
    another, in both regions (and a chain across them)."""
    g = Guest(load(kind), 7)
    rnd = random.Random(7)
    n = 1 + PAGE + 1                         # header and frame: three pages, two by one byte
    low = GPA + 0x40000 - 1
    high = GPB + 0x40000 - 1
    # the third takes its last byte at the start of a page of the other region
    for pieces in ([(low, n)], [(high, n)], [(low + 0x10000, n - 1), (high + 0x10001, 2)]):
        g.drv.make_avail(g.drv.chain(pieces, write=True))
    frame = rnd.randbytes(n - 12)
    if zero_copy:
        def op() -> None:
            assert g.q.rx_reserve(3, n, 12, False) == 3
            for k in range(3):
                data = HDR + frame
                for v in g.q.rx_buffers(k):
                    piece, data = data[:len(v)], data[len(v):]
                    v[:len(piece)] = piece
            g.q.rx_finish(3, array("q", [len(frame)] * 3))
    else:
        def op() -> None:
            assert g.q.push_rx(frame * 3, array("q", [0, len(frame), 2 * len(frame)]),
                               array("q", [len(frame)] * 3), 3, mergeable=False, hdr=HDR) == 3
    g.check(op)
    for gpa in (low, high):
        assert pages(gpa, n) == {gpa // PAGE, gpa // PAGE + 1, gpa // PAGE + 2} <= g.logged()
    assert (high + 0x10001) // PAGE in g.logged()
    assert (high + 0x10001) // PAGE - 1 not in g.logged()


@pytest.mark.parametrize("seed", range(8))
def test_logs_agree(seed: int) -> None:
    """The same operations give byte-identical logs (and memory) in both backends."""
    results = {}
    for kind in backends():
        g = Guest(load(kind), seed, event_idx=bool(seed & 1))
        logs = []
        check = g.check

        def keep(op, g=g, check=check) -> None:
            check(op)
            logs.append(bytes(g.log))
        g.check = keep
        scenario(g, seed, "all")
        results[kind] = (logs, g.snapshot(), dict(g.q.errors))
    if len(results) == 2:
        assert results["python"] == results["cython"]


@pytest.mark.parametrize("kind", backends())
def test_a_log_too_small_marks_what_it_covers(kind: str) -> None:
    mod = load(kind)
    full = Guest(mod, 3)
    full.check = lambda op: op()        # never harvested: the log of everything
    scenario(full, 3, "all")
    small = bytearray((GPA + SIZE) // PAGE // 8)    # the low region only
    g = Guest(mod, 3, log=small)
    g.check = lambda op: op()
    scenario(g, 3, "all")
    assert g.snapshot() == full.snapshot()
    # what the low region took, and not a byte more
    assert small == full.log[:len(small)] and any(small) and any(full.log[len(small):])
    for tiny in (bytearray(0), bytearray(1)):
        g = Guest(mod, 3, log=tiny)
        g.check = lambda op: op()
        scenario(g, 3, "all")
        assert g.mem.logging and tiny == bytes(len(tiny))


@pytest.mark.parametrize("kind", backends())
def test_logging_off_leaves_the_log_alone(kind: str) -> None:
    g = Guest(load(kind), 5)
    g.mem.set_log(None)
    assert not g.mem.logging
    g.check = lambda op: op()
    scenario(g, 5, "all")
    assert g.used_idx() != START and g.log == bytes(LOG_LEN)
    g.mem.log_write(GPA, 1 << 20)
    assert g.log == bytes(LOG_LEN)


@pytest.mark.parametrize("kind", backends())
def test_log_write_marks_pages(kind: str) -> None:
    mem = load(kind).GuestMemory()
    assert not mem.logging
    mem.log_write(0, 1 << 20)             # not logging: nothing to mark, no error
    log = bytearray(8)
    mem.set_log(log)
    assert mem.logging
    mem.log_write(0x2000, 0)              # nothing written
    assert log == bytes(8)
    mem.log_write(0x2FFF, 1)              # one byte: page 2
    mem.log_write(0x9FFF, 2)              # two bytes over a boundary: pages 9 and 10
    assert log == bytes([0x04, 0x06]) + bytes(6)
    log[:] = bytes(8)
    mem.log_write(0x3000, 0x20000)        # pages 3..34: whole bytes in the middle
    assert log == bytes([0xF8, 0xFF, 0xFF, 0xFF, 0x07, 0, 0, 0])
    mem.log_write(0x3000, 0x20000)        # an OR: marking again changes nothing
    assert log == bytes([0xF8, 0xFF, 0xFF, 0xFF, 0x07, 0, 0, 0])


@pytest.mark.parametrize("kind", backends())
def test_log_write_bounds(kind: str) -> None:
    mod = load(kind)
    mem = mod.GuestMemory()
    big = bytearray(8)
    mem.set_log(memoryview(big)[2:4])     # 16 pages in the middle of a larger buffer
    mem.log_write(0xF000, 1 << 30)        # page 15, the rest past the end of the log
    assert big == bytes([0, 0, 0, 0x80, 0, 0, 0, 0])
    for gpa, length in ((0x10000, 5), (1 << 40, 1 << 40), (1 << 63, 1 << 63),
                        ((1 << 64) - 0x1000, 0x3000),    # would wrap onto pages 0 and 1
                        ((1 << 64) - 1, 1 << 64), (1 << 64, 1), (1 << 70, 1 << 70)):
        mem.log_write(gpa, length)
    assert big == bytes([0, 0, 0, 0x80, 0, 0, 0, 0])
    mem.log_write(0, 1 << 64)             # the whole address space: the whole log, no more
    assert big == bytes([0, 0, 0xFF, 0xFF, 0, 0, 0, 0])
    mem.log_write(0, (1 << 64) + 12345)   # cut at 2**64
    assert big == bytes([0, 0, 0xFF, 0xFF, 0, 0, 0, 0])
    for gpa, length in ((-1, 1), (0, -1)):
        with pytest.raises(ValueError):
            mem.log_write(gpa, length)
    for tiny in (bytearray(0), bytearray(1)):
        mem.set_log(tiny)
        mem.log_write(0, 1 << 64)
        assert tiny == b"\xff" * len(tiny)


@pytest.mark.parametrize("kind", backends())
def test_set_log(kind: str) -> None:
    mod = load(kind)
    mem = mod.GuestMemory()
    a, b = bytearray(2), bytearray(2)
    mem.set_log(a)
    with pytest.raises(mod.VirtqError):
        mem.set_log(bytes(2))             # read-only: refused, the log in place stays
    assert mem.logging
    mem.log_write(0, 1)
    mem.set_log(b)                        # replaced: marks go to the new one
    mem.log_write(0x1000, 1)
    assert (a, b) == (b"\x01\x00", b"\x02\x00")
    mem.set_log(None)                     # stopped
    assert not mem.logging
    mem.log_write(0, 1 << 20)
    assert (a, b) == (b"\x01\x00", b"\x02\x00")
    mem.set_log(a)
    mem.clear()                           # the memory table goes, and its log with it
    assert not mem.logging
    mem.log_write(0x1000, 1)
    assert a == b"\x01\x00"


@pytest.mark.parametrize("kind", backends())
def test_log_in_an_mmap_is_released(kind: str) -> None:
    """The log is an mmap of the front end's fd: it is held while logging and let
    go when replaced, stopped or dropped (the mapping can then be closed)."""
    mod = load(kind)
    for stop in ("none", "replace", "clear", "drop"):
        m = mmap.mmap(-1, 4096)
        mem = mod.GuestMemory()
        mem.set_log(m)
        mem.log_write(5 * PAGE, 1)
        assert m[0] == 0x20
        with pytest.raises(BufferError):
            m.close()                     # held while logging
        if stop == "none":
            mem.set_log(None)
        elif stop == "replace":
            mem.set_log(bytearray(1))
        elif stop == "clear":
            mem.clear()
        else:
            del mem
        m.close()
