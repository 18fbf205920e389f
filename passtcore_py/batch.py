"""Batch kernels: checksum / classify / rewrite many frames of one shared buffer in one call.

Pure-Python twin of ``passtcore._batch`` (same names, same results).

Design
------
Frames live in one buffer (bytearray, numpy uint8 array, mmap, memoryview),
described by two numpy ``int64`` arrays ``offsets`` and ``lengths`` (explicit
lengths: unlike the single-frame kernels, -1 does not mean "to the end").  Each
operation runs over all N frames and reports per-frame results in numpy
arrays rather than raising: a frame that is out of bounds or does not parse
gets a non-zero ``status`` (``status = headers.reason_code(reason)``, i.e.
``REASONS[status - 1]`` is the ParseError reason) and is left untouched by the
rewriting operations, which return how many frames they skipped.

IPv4 addresses in ``classify`` output are IPv4-mapped (``::ffff:a.b.c.d``), the
flow table's key form.  This twin loops in Python over the single-frame kernels
of ``passtcore_py.headers`` / ``passtcore_py.csum``; the Cython kernel runs the
same loop without the GIL and without a Python object per frame.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

# numpy is imported inside the functions that use it, not here: the daemon
# loads every kernel module but never calls an array API, and numpy would
# cost it ~15 MB resident (tests/daemon/test_idle_memory.py).
if TYPE_CHECKING:  # pragma: no cover - annotations only
    import numpy as np

from passtcore_py import csum as _csum
from passtcore_py import headers as _h

__all__ = [
    "Classified",
    "STATUS_OK",
    "verify_checksums",
    "classify",
    "fill_checksums",
    "rewrite_addresses",
    "set_tcp_ack_window",
    "build_tcp_segments",
    "status_reason",
]

STATUS_OK = 0
_V4MAPPED = b"\0" * 10 + b"\xff\xff"


def status_reason(status: int) -> str:
    """The ParseError reason for a non-zero ``status`` ("ok" for 0)."""
    return "ok" if status == 0 else _h.REASONS[status - 1]


class Classified:
    """Per-frame results of :func:`classify`, one numpy array per field (length N)."""

    __slots__ = (
        "status", "ethertype", "ip_version", "proto", "is_fragment", "src", "dst",
        "sport", "dport", "l3_offset", "l4_offset", "l4_len", "payload_offset",
        "payload_len", "tcp_flags", "tcp_seq", "tcp_ack", "tcp_window",
    )

    def __init__(self, n: int) -> None:
        import numpy as np  # on first use (see the imports above)
        self.status = np.zeros(n, np.int16)
        self.ethertype = np.zeros(n, np.int32)
        self.ip_version = np.zeros(n, np.uint8)
        self.proto = np.full(n, -1, np.int16)
        self.is_fragment = np.zeros(n, np.bool_)
        self.src = np.zeros((n, 16), np.uint8)
        self.dst = np.zeros((n, 16), np.uint8)
        self.sport = np.zeros(n, np.int32)
        self.dport = np.zeros(n, np.int32)
        self.l3_offset = np.full(n, -1, np.int64)
        self.l4_offset = np.full(n, -1, np.int64)
        self.l4_len = np.zeros(n, np.int64)
        self.payload_offset = np.full(n, -1, np.int64)
        self.payload_len = np.zeros(n, np.int64)
        self.tcp_flags = np.zeros(n, np.uint8)
        self.tcp_seq = np.zeros(n, np.uint32)
        self.tcp_ack = np.zeros(n, np.uint32)
        self.tcp_window = np.zeros(n, np.uint16)

    def __len__(self) -> int:
        return len(self.status)

    def as_dict(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.__slots__}


def _frames(offsets: Any, lengths: Any) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np  # on first use (see the imports above)
    offs = np.ascontiguousarray(offsets, dtype=np.int64)
    lens = np.ascontiguousarray(lengths, dtype=np.int64)
    if offs.ndim != 1 or offs.shape != lens.shape:
        raise ValueError("offsets and lengths must be 1-D arrays of the same length")
    return offs, lens


def _parse(buf: Any, off: int, ln: int) -> _h.FrameInfo | int:
    if ln < 0:  # no "-1 = to the end" in batches: every frame has an explicit length
        return _h.reason_code("bad-bounds")
    try:
        return _h.parse_frame(buf, int(off), int(ln))
    except _h.ParseError as e:
        return _h.reason_code(e.reason)


def verify_checksums(buf: Any, offsets: Any, lengths: Any, out_ok: np.ndarray) -> int:
    """out_ok[i] = frame i's IPv4 header and L4 checksums are right; returns the number bad.

    A frame that is out of bounds or does not parse is bad.
    """
    offs, lens = _frames(offsets, lengths)
    if out_ok.shape != offs.shape:
        raise ValueError("out_ok must have one entry per frame")
    bad = 0
    for i in range(len(offs)):
        ok = lens[i] >= 0 and bool(_csum.verify_frame(buf, int(offs[i]), int(lens[i])))
        out_ok[i] = ok
        bad += not ok
    return bad


def classify(buf: Any, offsets: Any, lengths: Any) -> Classified:
    """Parse every frame: protocol, 5-tuple, offsets, TCP header fields, status."""
    import numpy as np  # on first use (see the imports above)
    offs, lens = _frames(offsets, lengths)
    out = Classified(len(offs))
    for i in range(len(offs)):
        info = _parse(buf, offs[i], lens[i])
        if isinstance(info, int):
            out.status[i] = info
            continue
        out.ethertype[i] = info.ethertype
        out.ip_version[i] = info.ip_version
        out.l3_offset[i] = info.l3_offset
        if not info.ip_version:
            continue
        out.proto[i] = info.l4_proto
        out.is_fragment[i] = info.is_fragment
        if info.ip_version == 4:
            out.src[i] = np.frombuffer(_V4MAPPED + info.src, np.uint8)
            out.dst[i] = np.frombuffer(_V4MAPPED + info.dst, np.uint8)
        else:
            out.src[i] = np.frombuffer(info.src, np.uint8)
            out.dst[i] = np.frombuffer(info.dst, np.uint8)
        out.sport[i] = info.sport
        out.dport[i] = info.dport
        out.l4_offset[i] = info.l4_offset
        out.l4_len[i] = info.l4_len
        out.payload_offset[i] = info.payload_offset
        out.payload_len[i] = info.payload_len
        out.tcp_flags[i] = info.tcp_flags
        out.tcp_seq[i] = info.tcp_seq
        out.tcp_ack[i] = info.tcp_ack
        out.tcp_window[i] = info.tcp_window
    return out


def fill_checksums(buf: Any, offsets: Any, lengths: Any) -> int:
    """Fill IPv4 header and L4 checksums of every frame; returns the number skipped (unparsable)."""
    offs, lens = _frames(offsets, lengths)
    skipped = 0
    for i in range(len(offs)):
        if lens[i] < 0:
            skipped += 1
            continue
        try:
            _csum.fill_checksums(buf, int(offs[i]), int(lens[i]))
        except _h.ParseError:
            skipped += 1
    return skipped


def _per_frame_addr(a: Any, n: int) -> np.ndarray | None:
    """None, or an (n, w) uint8 array (w = 4 or 16) from bytes or an array."""
    import numpy as np  # on first use (see the imports above)
    if a is None:
        return None
    if isinstance(a, (bytes, bytearray, memoryview)):
        arr = np.frombuffer(bytes(a), np.uint8)
        if arr.size not in (4, 16):
            raise ValueError("address must be 4 or 16 bytes")
        return np.ascontiguousarray(np.broadcast_to(arr, (n, arr.size)))
    arr = np.ascontiguousarray(a, dtype=np.uint8)
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] not in (4, 16):
        raise ValueError("per-frame addresses must be an (N, 4) or (N, 16) uint8 array")
    return arr


def _rewrite_each(buf: Any, offs: np.ndarray, lens: np.ndarray, fits: Any, rewrite: Any) -> int:
    """Call ``rewrite(mv, i, info)`` on every IP frame that parses and ``fits(info)``;
    ``mv`` is a writable view of ``buf`` (TypeError for read-only buffers).
    Returns the number of frames skipped."""
    mv = _h._wview(buf)
    skipped = 0
    for i in range(len(offs)):
        info = _parse(mv, offs[i], lens[i])
        if isinstance(info, int) or not info.ip_version or not fits(info):
            skipped += 1
            continue
        rewrite(mv, i, info)
    return skipped


def rewrite_addresses(buf: Any, offsets: Any, lengths: Any, src: Any = None, dst: Any = None) -> int:
    """Set source / destination addresses of every frame, checksums updated incrementally.

    ``src`` / ``dst``: ``None`` (keep), bytes (the same address for all frames)
    or an (N, 4) / (N, 16) uint8 array.  A frame whose IP version does not
    match the address width, or that does not parse, is left untouched and
    counted; returns that count.
    """
    offs, lens = _frames(offsets, lengths)
    n = len(offs)
    s = _per_frame_addr(src, n)
    d = _per_frame_addr(dst, n)

    def fits(info: _h.FrameInfo) -> bool:
        w = 4 if info.ip_version == 4 else 16
        return (s is None or s.shape[1] == w) and (d is None or d.shape[1] == w)

    def rewrite(mv: memoryview, i: int, info: _h.FrameInfo) -> None:
        # work on the frame window so the L4 checksum never looks past the frame
        end = int(offs[i] + lens[i])
        _h.set_addresses(mv[:end], info.l3_offset, None if s is None else s[i].tobytes(),
                         None if d is None else d[i].tobytes())

    return _rewrite_each(buf, offs, lens, fits, rewrite)


def _per_frame_int(v: Any, n: int) -> np.ndarray | None:
    import numpy as np  # on first use (see the imports above)
    if v is None:
        return None
    return np.ascontiguousarray(np.broadcast_to(np.asarray(v, dtype=np.int64), (n,)))


def set_tcp_ack_window(buf: Any, offsets: Any, lengths: Any, ack: Any = None, window: Any = None) -> int:
    """Set the TCP ack number and/or window of every TCP frame, checksum updated incrementally.

    ``ack`` / ``window``: ``None`` (keep), an int for all frames, or a per-frame
    array (a negative entry keeps that frame's value).  Frames that are not
    TCP (or do not parse, or are fragments) are left untouched and counted;
    returns that count.
    """
    offs, lens = _frames(offsets, lengths)
    n = len(offs)
    acks = _per_frame_int(ack, n)
    wins = _per_frame_int(window, n)

    def fits(info: _h.FrameInfo) -> bool:
        return info.l4_proto == 6 and not info.is_fragment

    def rewrite(mv: memoryview, i: int, info: _h.FrameInfo) -> None:
        a = None if acks is None or acks[i] < 0 else int(acks[i]) & 0xFFFFFFFF
        w = None if wins is None or wins[i] < 0 else int(wins[i]) & 0xFFFF
        _h.set_tcp(mv, info.l4_offset, ack=a, window=w)

    return _rewrite_each(buf, offs, lens, fits, rewrite)


def build_tcp_segments(buf: Any, offsets: Any, payload_lens: Any, eth_dst: bytes, eth_src: bytes,
                       src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int,
                       flags: int, window: int, options: bytes = b"") -> np.ndarray:
    """Build N consecutive TCP segments of one flow in one call; returns the frame lengths.

    Frame i starts at ``offsets[i]``; its payload (``payload_lens[i]`` bytes) is
    already in place at ``offsets[i] + header_len(...)``.  Segment i carries
    sequence number ``seq + sum(payload_lens[:i])`` (mod 2**32); everything
    else (addresses, ports, ack, flags, window, options) is shared.  All frames
    are bounds-checked before anything is written (ValueError).
    """
    import numpy as np  # on first use (see the imports above)
    offs = np.ascontiguousarray(offsets, dtype=np.int64)
    plens = np.ascontiguousarray(payload_lens, dtype=np.int64)
    if offs.ndim != 1 or offs.shape != plens.shape:
        raise ValueError("offsets and payload_lens must be 1-D arrays of the same length")
    src, dst = bytes(src), bytes(dst)
    hl = _h.header_len(4 if len(src) == 4 else 6, 6, len(bytes(options)))
    size = memoryview(buf).nbytes
    if len(offs) and (offs.min() < 0 or plens.min() < 0 or int((offs + plens).max()) + hl > size):
        raise ValueError("a segment does not fit in the buffer")
    out = np.empty(len(offs), np.int64)
    for i in range(len(offs)):
        out[i] = _h.build_tcp(buf, int(offs[i]), eth_dst, eth_src, src, dst, sport, dport,
                              seq & 0xFFFFFFFF, ack, flags, window, int(plens[i]), options)
        seq += int(plens[i])
    return out
