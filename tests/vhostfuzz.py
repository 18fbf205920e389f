"""Hostile vhost-user inputs built from a stream of choices, and the properties they
must keep; shared by tests/kernels/test_vhost_fuzz.py (hypothesis makes the
choices, a few hundred cases) and benches/fuzz_vhost.py (atheris or a seeded
random loop, millions).

Three targets:

- ``session``: a sequence of control messages (known requests with payloads
  shaped like theirs, plus unknown requests, bad sizes and random bytes; fake fd
  numbers) into the sans-IO ``vhost_user.Session``. Only ``VhostError`` with a
  known reason may come out, replies are u64s, and every fd is accounted for
  exactly: after each message the fds the session keeps (regions, kick/call)
  are those it had plus the message's, minus what it returned to be closed, with
  nothing closed twice or closed while kept.
- ``stream``: the same messages serialised (lying flags and sizes, garbage,
  cut anywhere) through the real front end's framing (``VhostUserFrontend``
  reading a socketpair whose far end is closed): no exception, every message
  consumed or the connection dropped, replies well formed.
- ``rings``: guest memory of 1-3 regions (adjacent, apart, overlapping, near the
  top of the address space) holding a split ring and descriptors of every
  shape (valid chains, addresses at and past region ends, 4 GiB lengths,
  cycles, nested and misaligned indirect tables, wrong directions, heads and
  avail indices out of range), then ``pop_tx`` / ``push_rx`` / ``need_call``
  calls with the guest changing memory in between, on each virtqueue backend.
  The native backend's regions sit between PROT_NONE guard pages (an access
  outside faults) with canary bytes between a region's end and the page end
  (a write there is caught); the results of the backends (return values,
  frames, error counts, indices, every byte of memory) must be equal.

``ByteChoices`` decodes choices from bytes (atheris inputs, reproducer files);
``RandomChoices`` draws them from a seeded PRNG and records the bytes that
replay them through ``ByteChoices``.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import random
import socket
import struct
from types import ModuleType
from typing import Any

PAGE = mmap.PAGESIZE
U64 = (1 << 64) - 1


# -- where the choices come from ----------------------------------------------------------
class Choices:
    """``int(lo, hi)`` (inclusive), ``bytes(n)`` (exactly n), and helpers on them."""

    def int(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def bytes(self, n: int) -> bytes:
        raise NotImplementedError

    def pick(self, seq: Any) -> Any:
        return seq[self.int(0, len(seq) - 1)]

    def chance(self, k: int) -> bool:
        """True with probability 1/k (the first choice of a byte-driven input: False)."""
        return self.int(0, k - 1) == k - 1

    def blob(self, n: int) -> bytes:
        """``n`` pseudo-random bytes from one choice (cheap for large ``n``)."""
        return random.Random(self.int(0, 0xFFFFFFFF)).randbytes(n)


def _width(span: int) -> int:
    return (span.bit_length() + 7) // 8


class ByteChoices(Choices):
    """Choices read from ``data``; once it runs out, every choice is ``lo`` / zeros."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def int(self, lo: int, hi: int) -> int:
        span = hi - lo
        if span <= 0:
            return lo
        n = _width(span)
        raw = self.data[self.pos:self.pos + n]
        self.pos += n
        return lo + int.from_bytes(raw, "little") % (span + 1)

    def bytes(self, n: int) -> bytes:
        raw = self.data[self.pos:self.pos + n]
        self.pos += n
        return raw + bytes(n - len(raw))


class RandomChoices(Choices):
    """Choices from ``random.Random(seed)``; ``recorded()`` replays them (ByteChoices)."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.out: list[bytes] = []

    def int(self, lo: int, hi: int) -> int:
        span = hi - lo
        if span <= 0:
            return lo
        n = _width(span)
        v = self.rnd.getrandbits(8 * n) % (span + 1)
        self.out.append(v.to_bytes(n, "little"))
        return lo + v

    def bytes(self, n: int) -> bytes:
        b = self.rnd.randbytes(n)
        self.out.append(b)
        return b

    def recorded(self) -> bytes:
        return b"".join(self.out)


# -- control messages ------------------------------------------------------------------------
KNOWN = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 42, 43)
U64_REQUESTS = (2, 6, 12, 13, 14, 16, 19, 42, 43)
STATE_REQUESTS = (8, 10, 11, 18)
REASONS = {"vhost-bad-size", "vhost-bad-ring", "vhost-bad-features", "vhost-bad-fds",
           "vhost-bad-region", "vhost-bad-state-request", "vhost-unknown-request",
           "vhost-bad-message"}
INTERESTING = (0, 1, 2, 3, 0xFF, 0x100, 0x101, 0x1FF, 0xFFFF, 0x10000, 0xFFFFFFFF,
               1 << 32, 1 << 47, 1 << 48, (1 << 48) + 1, 1 << 63, U64)


def _u64(ch: Choices) -> int:
    r = ch.int(0, 3)
    if r == 0:
        return ch.pick(INTERESTING)
    if r == 1:
        return ch.int(0, U64)
    if r == 2:   # a feature set: what the daemon offers, give or take a bit
        from passtcore.run.io.vhost_user import FEATURES
        return FEATURES & ch.int(0, U64) | (1 << ch.int(0, 63) if ch.chance(4) else 0)
    return ch.int(0, 2) | (0x100 if ch.chance(2) else 0) | (ch.int(0, 255) << 9 if ch.chance(4)
                                                              else 0)


def _ring_index(ch: Choices) -> int:
    return ch.pick((0, 1, 0, 1, 2, 255, 0xFFFFFFFF))


def _region(ch: Choices) -> bytes:
    gpa = ch.pick((0, PAGE, 0x4000_0000, U64 - PAGE + 1, ch.int(0, U64)))
    size = ch.pick((0, PAGE, 1 << 16, 1 << 20, 1 << 48, (1 << 48) + 1, ch.int(0, U64)))
    uva = ch.pick((0x7F00_0000_0000, U64 - PAGE + 1, ch.int(0, U64)))
    off = ch.pick((0, PAGE, 1 << 16, 1 << 48, ch.int(0, U64)))
    return struct.pack("<QQQQ", gpa, size, uva, off)


def message(ch: Choices) -> tuple[int, int, bytes, int]:
    """(request, flags, payload, number of fds to send with it)."""
    r = ch.int(0, 15)
    request = ch.pick(KNOWN) if r < 13 else ch.int(0, 64) if r < 15 else ch.int(0, 0xFFFFFFFF)
    flags = 0x1 | (0x8 if ch.chance(2) else 0)
    nfds = ch.pick((0, 0, 0, 1, 1, 2))
    shape = ch.int(0, 7)
    if shape == 0:                                       # any bytes
        payload = ch.blob(ch.pick((0, 1, 7, 8, 9, 40, 264, ch.int(0, 300))))
    elif request in U64_REQUESTS:
        payload = struct.pack("<Q", _u64(ch))
        if request in (12, 13):
            nfds = 0 if payload[1] & 1 else ch.pick((1, 1, 1, 0, 2))
    elif request in STATE_REQUESTS:
        num = ch.pick((0, 1, 2, 3, 64, 256, 1024, 32768, 65536, ch.int(0, 0xFFFFFFFF)))
        payload = struct.pack("<II", _ring_index(ch), num)
    elif request == 9:
        addrs = [ch.pick((0, 0x7F00_0000_0000, 0x7F00_0000_1000, U64 - 15, ch.int(0, U64)))
                 for _ in range(4)]
        payload = struct.pack("<IIQQQQ", _ring_index(ch), ch.int(0, 3), *addrs)
    elif request == 5:
        n = ch.pick((0, 1, 1, 2, 3, 8, 9, ch.int(0, 0xFFFFFFFF)))
        k = min(n, 9) + ch.pick((0, 0, 0, -1, 1))
        payload = struct.pack("<II", n, ch.int(0, 1)) + b"".join(_region(ch) for _ in range(k))
        nfds = max(0, min(n, 9) + ch.pick((0, 0, 0, -1, 1)))
    else:
        payload = ch.blob(ch.pick((0, 0, 8, ch.int(0, 64))))
    return request, flags, payload, nfds


def messages(ch: Choices, most: int = 24) -> list[tuple[int, int, bytes, int]]:
    """A session: requests of every kind in any order, most with payloads shaped like
    theirs (a memory table, a vring address...), the others with any bytes."""
    return [message(ch) for _ in range(ch.int(1, most))]


def _kept_fds(s: Any) -> list[int]:
    """Every fd the session holds: memory regions, ring eventfds, the dirty log and
    its eventfd, a device state transfer not yet run."""
    return ([r[4] for r in s.regions]
            + [fd for ring in s.rings for fd in (ring.kick, ring.call) if fd >= 0]
            + ([s.log[2]] if s.log else []) + ([s.log_call] if s.log_call >= 0 else [])
            + ([s.state_request[1]] if s.state_request else []))


def check_session(msgs: list[tuple[int, int, bytes, int]]) -> dict[str, int]:
    """Run ``msgs`` through a fresh Session with fake fd numbers; the properties of
    the module docstring. Returns the errors by reason."""
    from passtcore.run.io import vhost_user as vu

    s = vu.Session()
    kept: set[int] = set()
    next_fd = 1000
    errors: dict[str, int] = {}
    for request, _flags, payload, nfds in msgs:
        fds = list(range(next_fd, next_fd + nfds))
        next_fd += nfds
        try:
            reply, close = s.handle(request, payload, list(fds))
        except vu.VhostError as exc:
            assert exc.reason in REASONS, exc.reason
            errors[exc.reason] = errors.get(exc.reason, 0) + 1
            reply, close = None, fds          # the front end closes them all
        assert reply is None or (isinstance(reply, bytes) and len(reply) == 8), reply
        if request in (vu.GET_FEATURES, vu.GET_PROTOCOL_FEATURES, vu.GET_QUEUE_NUM):
            assert reply is not None
        now = _kept_fds(s)
        assert len(now) == len(set(now)), f"an fd kept twice: {now}"
        assert len(close) == len(set(close)), f"an fd closed twice: {close}"
        pool = kept | set(fds)
        assert set(close) <= pool, f"closes fds it never had: {set(close) - pool}"
        assert set(now) == pool - set(close), (
            f"fds lost (neither kept nor closed): {pool - set(close) - set(now)}; "
            f"kept and closed: {set(now) & set(close)}")
        kept = set(now)
        assert not s.features & ~vu.FEATURES and not s.protocol_features & ~vu.PROTOCOL_FEATURES
        assert 0 < len(s.regions) <= 8 or not s.regions
        assert all(r[1] > 0 for r in s.regions)
        for ring in s.rings:
            assert ring.num == 0 or (ring.num & (ring.num - 1) == 0 and ring.num <= 32768)
            assert 0 <= ring.base <= 0xFFFF
    return errors


def stream(ch: Choices) -> bytes:
    """Serialised messages with lying headers and garbage, cut anywhere."""
    out = bytearray()
    for request, flags, payload, _nfds in messages(ch, 16):
        r = ch.int(0, 15)
        if r == 0:
            flags = ch.int(0, 0xFFFFFFFF)
        size = len(payload)
        if r == 1:
            size = ch.pick((0, 1, 4096, 4097, 0xFFFFFFFF, ch.int(0, 5000)))
        out += struct.pack("<III", request, flags, size) + payload
        if r == 2:
            out += ch.blob(ch.int(1, 64))
    if ch.chance(3):
        del out[ch.int(0, len(out)):]
    return bytes(out)


class StreamHarness:
    """A real ``VhostUserFrontend`` reading from a socketpair (the far end closed after
    the input): its framing, ``_apply`` and the Session behind it."""

    def __init__(self) -> None:
        from passtcore.run.counters import Counters
        from passtcore.run.io.loop import Loop
        from passtcore.run.io.vhost_user import VhostUserFrontend

        self.loop = Loop()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.Counters = Counters
        self.fe = VhostUserFrontend(self.loop, Counters(), on_batch=lambda *a: None,
                                    listener=self.listener)

    def run(self, data: bytes) -> dict[str, int]:
        from passtcore.run.io.vhost_user import Session

        fe = self.fe
        fe.counters = self.Counters()
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            a.setblocking(False)
            fe.conn, fe.session = a, Session()
            b.sendall(data)
            b.shutdown(socket.SHUT_WR)
            for _ in range(len(data) // 12 + 2):
                if fe.conn is None:
                    break
                fe._on_message()
            assert fe.conn is None, "the front end did not see the end of its input"
            assert fe.mem is None and not fe.maps and not fe._watched
            b.setblocking(False)
            replies = bytearray()
            try:
                while chunk := b.recv(1 << 16):
                    replies += chunk
            except (BlockingIOError, ConnectionResetError):   # reset: input left unread
                pass
            pos = 0
            while pos < len(replies):   # every reply whole: a header with REPLY, then a u64
                request, flags, size = struct.unpack_from("<III", replies, pos)
                assert flags == 0x5 and size == 8 and pos + 12 + size <= len(replies), \
                    (request, flags, size)
                pos += 12 + size
            drops = fe.counters.drops()
            assert set(drops) <= REASONS, drops
            return drops
        finally:
            if fe.conn is not None:
                fe.close()
            a.close()
            b.close()

    def close(self) -> None:
        self.fe.close()
        self.listener.close()
        self.loop.close()


# -- rings ------------------------------------------------------------------------------------
GPA_BASES = (0, PAGE, 0x4000_0000, (1 << 64) - 4 * PAGE, (1 << 64) - PAGE)
UVA_BASES = (0x7F00_0000_0000, 0x1000, (1 << 64) - 4 * PAGE)
FLAGS = (0, 1, 2, 3, 4, 5, 6, 7, 0xFFFF)
CANARY = 0xA5
MAX_PAGES = 4


class Case:
    """One ring scenario: regions (gpa, size, uva, slack), their initial bytes, the
    queue's parameters and the operations."""

    def __init__(self) -> None:
        self.regions: list[tuple[int, int, int, int]] = []
        self.images: list[bytearray] = []
        self.queue: tuple[int, int, int, int, bool, int] = (0, 0, 0, 0, False, 0)
        self.ops: list[tuple[Any, ...]] = []


def _in_region(case: Case, space: int, addr: int, n: int) -> tuple[int, int] | None:
    """(region, offset) holding [addr, addr + n) in guest-physical (0) or virtual (2) space."""
    for k, r in enumerate(case.regions):
        off = addr - r[space]
        if 0 <= off and off + n <= r[1]:
            return k, off
    return None


def _poke(case: Case, space: int, addr: int, data: bytes) -> None:
    at = _in_region(case, space, addr, len(data))
    if at is not None:
        case.images[at[0]][at[1]:at[1] + len(data)] = data


def _addr(ch: Choices, case: Case, n: int = 64) -> int:
    """A guest-physical address: mostly inside a region, often at its edges."""
    r = case.regions[ch.int(0, len(case.regions) - 1)]
    gpa, size = r[0], r[1]
    k = ch.int(0, 9)
    if k < 5:
        return (gpa + ch.int(0, max(0, size - n))) & U64
    return ch.pick((gpa + size - n // 2, gpa + size, gpa - 1, gpa + size - 1, U64 - 7,
                    ch.int(0, U64), gpa + size - 16)) & U64


def _addr_in(ch: Choices, case: Case, n: int = 2048) -> int:
    """A guest-physical address with ``n`` bytes after it inside a region, where it can."""
    gpa, size = case.regions[ch.int(0, len(case.regions) - 1)][:2]
    return (gpa + ch.int(0, max(0, size - n))) & U64


def _length(ch: Choices, room: int = 2048) -> int:
    return ch.pick((0, 1, 11, 12, 13, 26, 54, 60, room, ch.int(0, room), 0xFFFFFFFF, 4 * PAGE,
                    ch.int(0, 0xFFFFFFFF)))


def ring_case(ch: Choices) -> Case:
    """A scenario; how hostile it is (from all but valid to anything goes) is its first
    choice, so that valid frames and every kind of malformed chain both get through."""
    c = Case()
    level = ch.int(0, 3)

    def evil(k: int = 1) -> bool:     # a hostile variant, more likely at higher levels
        return ch.int(0, 15) < 2 * level * k

    gpa = ch.pick(GPA_BASES) if evil() else 0x4000_0000
    uva = ch.pick(UVA_BASES) if evil() else 0x7F00_0000_0000
    for k in range(ch.int(1, 3)):
        pages = ch.int(1, MAX_PAGES)
        slack = ch.pick((1, 7, 64)) if ch.chance(3) else 0
        size = pages * PAGE - slack
        if k:
            prev = c.regions[-1]
            how = ch.int(0, 3) if evil() else ch.int(0, 1)
            if how == 0:                       # adjacent in both spaces
                gpa, uva = prev[0] + prev[1], prev[2] + prev[1]
            elif how == 1:                     # apart
                gpa, uva = prev[0] + prev[1] + ch.int(1, 1 << 20), prev[2] + (1 << 24)
            elif how == 2:                     # overlapping
                gpa, uva = prev[0] + ch.int(0, prev[1]), prev[2] + ch.int(0, prev[1])
            else:
                gpa, uva = ch.int(0, U64), ch.int(0, U64)
        c.regions.append((gpa, size, uva, slack))
        c.images.append(bytearray(ch.blob(size) if evil() else bytes(size)))
    num = ch.pick((0, 3, 65536, 1 << 15)) if evil(0.25) else ch.pick((1, 2, 4, 8, 16, 64, 256))
    # the rings: one after the other in a region, or anywhere in it, or anywhere at all
    g, size, u, _ = c.regions[ch.int(0, len(c.regions) - 1)]
    need = 16 * num + 6 + 2 * num + 6 + 8 * num
    if evil(0.25):
        desc, avail, used = (ch.int(0, U64) for _ in range(3))
    elif evil(0.5) or need > size:
        desc, avail, used = ((u + ch.int(0, size)) & ~1 for _ in range(3))
    else:
        base = u + (ch.int(0, size - need) & ~15)
        desc, avail, used = base, base + 16 * num, base + 16 * num + 6 + 2 * num
    event_idx = ch.chance(2)
    last_avail = ch.pick((0, 0xFFFF, 0xFFF0, ch.int(0, 0xFFFF))) if ch.chance(2) else 0
    c.queue = (num, desc, avail, used, event_idx, last_avail)
    if not num or num & (num - 1) or num > 32768:
        return c
    direction = ch.int(0, 2)                    # 0: TX-shaped chains, 1: RX, 2: either
    heads = []
    for _ in range(ch.int(0, min(num, 12))):   # chains (their descriptors may repeat: cycles)
        ids = [ch.int(0, num - 1) for _ in range(ch.int(1, 4))]
        head = ids[0]
        heads.append(head)
        write = ch.chance(2) if direction == 2 else direction == 1
        for j, i in enumerate(ids):
            last = j == len(ids) - 1
            flags = (2 if write else 0) | (0 if last else 1)
            nxt = 0 if last else ids[j + 1]
            addr = _addr(ch, c) if evil() else _addr_in(ch, c)
            ln = ch.pick((100, 54, 60, 1514, 2048, 42, 14, 0))
            if evil(0.5):
                flags = ch.pick(FLAGS)
            if evil(0.5):
                ln = _length(ch)
            if evil(0.5):
                nxt = ch.pick((0, head, num - 1, num, 0xFFFF))
            if ch.chance(6):                    # an indirect table
                m = ch.int(0, 5) if not evil(0.5) else ch.pick((num, num + 1, 0))
                ln = ch.pick((16 * m + 8, 0, _length(ch))) if evil() else 16 * m
                flags = 4 | (ch.pick((1, 2, 4)) if evil(0.5) else 0)
                if m > 8:                       # a long table: one piece of 1 byte each
                    base = _addr_in(ch, c)
                    for e in range(m):
                        _poke(c, 0, addr + 16 * e, struct.pack(
                            "<QIHH", (base + e) & U64, 1, (2 if write else 0) | (e < m - 1),
                            e + 1 if e < m - 1 else 0))
                    m = 0
                for e in range(m):
                    ef = (2 if write else 0) | (1 if e < m - 1 else 0)
                    if evil(0.5):
                        ef = ch.pick(FLAGS)
                    en = e + 1 if e < m - 1 else 0
                    if evil(0.5):
                        en = ch.pick((e, 0, m, 0xFFFF))
                    _poke(c, 0, addr + 16 * e, struct.pack(
                        "<QIHH", _addr(ch, c) if evil() else _addr_in(ch, c),
                        _length(ch) if evil() else ch.pick((0, 14, 54, 100, 1514)), ef, en))
            _poke(c, 2, desc + 16 * i, struct.pack("<QIHH", addr, ln, flags, nxt))
            if last:
                break
    for _ in range(ch.int(0, 3) if evil() else 0):   # descriptors anything at all
        _poke(c, 2, desc + 16 * ch.int(0, num - 1), ch.bytes(16))
    # the avail ring: the chains' heads, out-of-range heads, an index near or far ahead
    for slot in range(min(num, len(heads) + (ch.int(0, 2) if evil() else 0))):
        head = heads[slot] if slot < len(heads) and not evil(0.5) else \
            ch.pick((num, 0xFFFF, ch.int(0, 0xFFFF), 0))
        _poke(c, 2, avail + 4 + 2 * ((last_avail + slot) % num), struct.pack("<H", head))
    ahead = ch.pick((0, num, num + 1, ch.int(0, 0xFFFF))) if evil(0.5) else len(heads)
    _poke(c, 2, avail, struct.pack("<HH", ch.pick((0, 1, 0xFFFF)) if evil() else 0,
                                   (last_avail + ahead) & 0xFFFF))
    _poke(c, 2, avail + 4 + 2 * num, struct.pack("<H", ch.int(0, 0xFFFF)))   # used_event
    _poke(c, 2, used, struct.pack("<HH", ch.int(0, 1), ch.int(0, 0xFFFF) if evil() else 0))
    for _ in range(ch.int(1, 4)):
        # mostly what the chains are for: pops for TX-shaped ones, pushes for RX ones
        k = ch.int(0, 5)
        k = (0, 2, k)[direction] if k < 3 else k
        if k <= 1:
            c.ops.append(("pop", ch.pick((1 << 18, 70000, 9000, 1514, 64, 0)), 70 - ch.int(0, 70),
                          ch.pick((0, 10, ch.int(0, 80))) if evil() else 12))
        elif k <= 3:
            n = 6 - ch.int(0, 6)
            lens = [ch.pick((60, 1514, 42, 61, 3000, 9000, 59, 14, 13, 1, 0)) for _ in range(n)]
            offs = []
            pos = 0
            for ln in lens:
                offs.append(ch.pick((-1, 1 << 20, pos + 1)) if evil(0.25) else pos)
                pos += ln
            hlen = ch.pick((10, 0, 64)) if evil() else 12
            hdr = ch.bytes(hlen) if ch.chance(2) else bytes(hlen)
            hdrs = ch.bytes(hlen * n) if ch.chance(3) else None
            mergeable = not ch.chance(3)
            c.ops.append(("push", ch.blob(pos), offs, lens, mergeable, hdr, hdrs))
        elif k == 4:                                # the guest writes while we work
            r = ch.int(0, len(c.regions) - 1)
            data = ch.bytes(ch.pick((2, 4, 16)))
            c.ops.append(("poke", r, ch.int(0, max(0, c.regions[r][1] - len(data))), data))
        else:
            c.ops.append(("call",))
    return c


class Arena:
    """Guarded memory for the native backend: each region's bytes end where a
    PROT_NONE page begins (after its canary slack) and begin right after one."""

    def __init__(self) -> None:
        self._maps: dict[tuple[int, int], tuple[mmap.mmap, memoryview]] = {}
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)

    def region(self, k: int, pages: int) -> memoryview:
        got = self._maps.get((k, pages))
        if got is None:
            m = mmap.mmap(-1, (pages + 2) * PAGE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            base = ctypes.addressof(ctypes.c_char.from_buffer(m))
            for at in (base, base + (pages + 1) * PAGE):
                if self._libc.mprotect(ctypes.c_void_p(at), PAGE, 0) != 0:
                    raise OSError(ctypes.get_errno(), "mprotect")
            got = self._maps[(k, pages)] = (m, memoryview(m)[PAGE:(pages + 1) * PAGE])
        return got[1]


def run_rings(mod: ModuleType, case: Case, arena: Arena | None = None) -> list[Any]:
    """The case on one backend: what happened, step by step, and the memory after."""
    bufs = []
    for k, (_g, size, _u, slack) in enumerate(case.regions):
        pages = (size + slack) // PAGE
        buf = arena.region(k, pages) if arena is not None else memoryview(bytearray(pages * PAGE))
        buf[:size] = case.images[k]
        buf[size:] = bytes([CANARY]) * slack
        bufs.append(buf)
    trace: list[Any] = []
    mem = mod.GuestMemory()
    for (gpa, size, uva, _), buf in zip(case.regions, bufs):
        try:
            mem.add(gpa, size, uva, buf)
            trace.append("added")
        except mod.VirtqError:
            trace.append("refused")
    num, desc, avail, used, event_idx, last_avail = case.queue
    try:
        q = mod.Virtqueue(mem, num, desc, avail, used, event_idx=event_idx,
                          last_avail=last_avail)
    except mod.VirtqError:
        q = None
        trace.append("no queue")
    from array import array
    for op in case.ops if q is not None else ():
        if op[0] == "pop":
            _, size, most, hdr_len = op
            out = bytearray(size)
            offs, lens = array("q", bytes(8 * 64)), array("q", bytes(8 * 64))
            n = q.pop_tx(out, offs, lens, most, hdr_len)
            assert 0 <= n <= min(most, 64)
            frames = []
            for i in range(n):
                assert 0 <= offs[i] and 14 <= lens[i] <= 65550 and offs[i] + lens[i] <= size
                frames.append(bytes(out[offs[i]:offs[i] + lens[i]]))
            trace.append(("pop", n, frames))
        elif op[0] == "push":
            _, blob, offs, lens, mergeable, hdr, hdrs = op
            n = q.push_rx(blob, array("q", offs), array("q", lens), len(lens), mergeable,
                          hdr=hdr, hdrs=hdrs)
            assert 0 <= n <= len(lens)
            trace.append(("push", n))
        elif op[0] == "poke":
            _, r, off, data = op
            bufs[r][off:off + len(data)] = data
            trace.append("poke")
        else:
            trace.append(("call", bool(q.need_call()), q.pending()))
        trace.append((dict(q.errors), q.last_avail, q.used_idx, bool(q.broken)))
    del q
    mem.clear()
    for (_g, size, _u, slack), buf in zip(case.regions, bufs):
        assert bytes(buf[size:]) == bytes([CANARY]) * slack, "a write past a region's end"
        trace.append(bytes(buf[:size]))
    return trace


def backends() -> dict[str, ModuleType]:
    """The virtqueue backends to compare: the twin always, the kernel when built and
    PASSTCORE_PURE is not set."""
    import importlib

    mods = {"python": importlib.import_module("passtcore_py.virtq")}
    if os.environ.get("PASSTCORE_PURE", "") in ("", "0"):
        try:
            mods["cython"] = importlib.import_module("passtcore._virtq")
        except ImportError:
            pass
    return mods


def check_rings(case: Case, mods: dict[str, ModuleType], arena: Arena) -> list[Any]:
    """Every backend on the case; their traces must be equal. The first trace."""
    traces = {name: run_rings(mod, case, arena if name == "cython" else None)
              for name, mod in mods.items()}
    first = next(iter(traces.values()))
    for name, t in traces.items():
        if t != first:
            diff = next(i for i, (x, y) in enumerate(zip(first, t)) if x != y) \
                if len(t) == len(first) else "length"
            raise AssertionError(f"backends differ at step {diff}: {list(traces)}: "
                                 f"{_short(first, diff)} != {_short(t, diff)}")
    return first


def _short(trace: list[Any], i: Any) -> str:
    if not isinstance(i, int):
        return f"{len(trace)} steps"
    s = repr(trace[i])
    return s if len(s) < 300 else s[:300] + "..."


# -- the front end with real fds ------------------------------------------------------------------
FD_KINDS = ("memfd", "memfd", "eventfd", "eventfd", "pipe", "devnull")
MEMFD_SIZE = 1 << 16


def fd_messages(ch: Choices) -> list[tuple[int, int, bytes, list[str]]]:
    """Messages with the kinds of real fd to send along; half the memory tables fit
    the memfds sent with them (so that mappings are made, and queues built on them)."""
    out: list[tuple[int, int, bytes, list[str]]] = []
    if ch.chance(2):      # first what QEMU sends, so that rings run over mapped memory
        num = ch.pick((8, 16))
        out.append((2, 1, struct.pack("<Q", (1 << 32) | (1 << 30) | (1 << 15)), []))
        out.append((5, 1, struct.pack("<IIQQQQ", 1, 0, 0x4000_0000, MEMFD_SIZE,
                                      0x7F00_0000_0000, 0), ["memfd"]))
        for i in (0, 1):
            base = 0x7F00_0000_0000 + i * 0x4000
            out += [(8, 1, struct.pack("<II", i, num), []),
                    (9, 1, struct.pack("<IIQQQQ", i, 0, base, base + 0x2000, base + 0x1000, 0),
                     []),
                    (12, 1, struct.pack("<Q", i), ["eventfd"]),
                    (13, 1, struct.pack("<Q", i), ["eventfd"]),
                    (18, 1, struct.pack("<II", i, 1), [])]
    for request, flags, payload, nfds in messages(ch, 12):
        if request == 5 and ch.chance(2):
            n = ch.int(1, 3)
            regions = b"".join(struct.pack(
                "<QQQQ", 0x4000_0000 + (k << 20), ch.pick((PAGE, 4 * PAGE, MEMFD_SIZE,
                                                           MEMFD_SIZE + 1)),
                0x7F00_0000_0000 + (k << 20), ch.pick((0, 0, PAGE, MEMFD_SIZE)))
                for k in range(n))
            payload, nfds = struct.pack("<II", n, 0) + regions, n
        if request == 9 and ch.chance(2):      # rings where a table above can put them
            payload = struct.pack("<IIQQQQ", ch.int(0, 1), 0, 0x7F00_0000_0000,
                                  0x7F00_0000_2000, 0x7F00_0000_1000, 0)
        kinds = [ch.pick(FD_KINDS) for _ in range(nfds)]
        out.append((request, flags, payload, kinds))
    return out


def _open(kind: str) -> int:
    if kind == "memfd":
        fd = os.memfd_create("vhostfuzz", os.MFD_CLOEXEC)
        os.ftruncate(fd, MEMFD_SIZE)
        return fd
    if kind == "eventfd":
        return os.eventfd(0, os.EFD_CLOEXEC)
    if kind == "pipe":
        r, w = os.pipe()
        os.close(r)
        return w
    return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)


def quiet() -> None:
    """The daemon's log lines about refused messages off (a fuzzer makes millions)."""
    import logging

    logging.getLogger("passtcore.run").setLevel(logging.CRITICAL)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class FdHarness:
    """Messages with real fds through a real front end's ``_apply`` (mapping memory,
    watching kick fds), then both rings driven once; nothing raises, and once the
    front end is closed, not one fd of them is left open. The front end is reused
    (closed between inputs, as between two QEMUs)."""

    def __init__(self) -> None:
        from passtcore.run.counters import Counters
        from passtcore.run.io.loop import Loop
        from passtcore.run.io.vhost_user import VhostUserFrontend

        self.Counters = Counters
        self.loop = Loop()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.fe = VhostUserFrontend(self.loop, Counters(), on_batch=lambda *a: None,
                                    listener=self.listener)

    def run(self, msgs: list[tuple[int, int, bytes, list[str]]]) -> dict[str, int]:
        fe = self.fe
        fe.counters = self.Counters()
        before = open_fds()
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        b.setblocking(False)
        try:
            a.setblocking(False)
            fe.conn = a
            for request, flags, payload, kinds in msgs:
                fe._apply(request, flags, payload, [_open(k) for k in kinds])
                if fe.conn is None:
                    break
                try:
                    while b.recv(1 << 16):
                        pass
                except BlockingIOError:
                    pass
            if fe.conn is not None:
                fe._tx()
                fe._transmit([60])
            drops = fe.counters.drops()
            assert all(k in REASONS or k.startswith("virtq-") or k.startswith("vhost-rx-")
                       for k in drops), drops
        finally:
            fe.close()
            b.close()
        after = open_fds()
        assert after == before, f"{after - before} fds left open"
        return drops

    def close(self) -> None:
        self.fe.close()
        self.listener.close()
        self.loop.close()


def check_frontend_fds(msgs: list[tuple[int, int, bytes, list[str]]]) -> dict[str, int]:
    """``FdHarness.run`` on a front end of its own."""
    h = FdHarness()
    try:
        return h.run(msgs)
    finally:
        h.close()
