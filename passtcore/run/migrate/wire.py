"""The device-state stream, passt's own format (version 2), sans-IO.

We speak upstream passt's encoding (migrate.c, flow.c, tcp.c of passt
2025-02 and later) byte for byte, so that a guest can move between passt and
passtcore in either direction. Everything is big-endian but the flows' ports:

    header         magic 0xB1BB1D1B0BB1D1B0 (u64), version (u32), compat (u32)
    addresses      guest IPv6, IPv6 link-local (16 + 16), IPv4 (4), MAC (6)
    count          u32: established TCP flows
    count x flow   ``TcpTransfer`` (112 bytes): per side pif and (our, endpoint)
                   address and port (ports little-endian, see SIDE); the
                   guest-side TCP state
    count x ext    ``TcpTransferExt`` (52 bytes), then the send and receive
                   queue bytes it announces; ``tcpi_state`` 0 means "skip this
                   flow" (the source could not dump it: the target resets it)

Addresses are IPv6 or IPv4-mapped (``::ffff:a.b.c.d``). A flow's "pif" says
which side is which: 1 the host (sockets), 2 the guest (tap). The event bits
are passt's (``ESTABLISHED`` 4, then the FIN bits one position lower than
ours: ``to_passt_events``/``from_passt_events``).
"""
from __future__ import annotations

import dataclasses
import struct

MAGIC = 0xB1BB1D1B0BB1D1B0
VERSION = 2
HEADER = struct.Struct("!QII")
ADDRESSES = struct.Struct("!16s16s4s6s")
COUNT = struct.Struct("!I")
# struct tcp_tap_transfer, in three parts: passt copies its struct flowside in
# whole (memcpy), and keeps ports in host order there, so on the little-endian
# machines passt and KubeVirt run on (x86-64, arm64) the ports are little-endian
# while every other field is in network order
PIFS = struct.Struct("!BB")
SIDE = struct.Struct("<16s16sHH")        # struct flowside: oaddr, eaddr, oport, eport
TCP_STATE = struct.Struct("!BBBBIIBBHHIIIII")
EXT = struct.Struct("!IIIIIIIIIIIIBBBB")
TRANSFER_SIZE = PIFS.size + 2 * SIDE.size + TCP_STATE.size
assert TRANSFER_SIZE == 112 and EXT.size == 52

PIF_HOST, PIF_TAP = 1, 2
QUEUE_MAX = 64 << 20          # passt's TCP_MIGRATE_{SND,RCV}_QUEUE_MAX
V4MAPPED = bytes(10) + b"\xff\xff"

# passt's event bits (tcp_conn.h) against ours (passtcore_py/fastpath.py)
_EVENT_MAP = ((0x004, 0x004),   # ESTABLISHED
              (0x010, 0x008),   # SOCK_FIN_RCVD
              (0x020, 0x010),   # SOCK_FIN_SENT
              (0x040, 0x020),   # TAP_FIN_RCVD
              (0x080, 0x040),   # TAP_FIN_SENT
              (0x100, 0x080))   # TAP_FIN_ACKED


class StateError(Exception):
    """A stream that cannot be applied: ``str()`` says why (one line)."""


def to_passt_events(ours: int) -> int:
    return sum(theirs for mine, theirs in _EVENT_MAP if ours & mine)


def from_passt_events(theirs: int) -> int:
    return sum(mine for mine, t in _EVENT_MAP if theirs & t)


def inany(addr: bytes) -> bytes:
    """4 or 16 bytes -> passt's 16-byte form."""
    return V4MAPPED + addr if len(addr) == 4 else bytes(addr)


def uninany(addr: bytes) -> bytes:
    return addr[12:] if addr[:12] == V4MAPPED else addr


@dataclasses.dataclass
class Side:
    """One side of a flow as passt sees it: our address and port, the endpoint's."""
    oaddr: bytes
    eaddr: bytes
    oport: int
    eport: int


@dataclasses.dataclass
class TcpTransfer:
    """A TCP flow's table entry (passt's struct tcp_tap_transfer)."""
    pif: tuple[int, int]
    side: tuple[Side, Side]
    retries: int = 0
    ws_from_tap: int = 0
    ws_to_tap: int = 0
    events: int = 0x004          # passt's bits
    tap_mss: int = 536
    sndbuf: int = 0
    flags: int = 0
    seq_dup_ack_approx: int = 0
    wnd_from_tap: int = 0        # unscaled, as the guest sent it
    wnd_to_tap: int = 0          # unscaled, as we sent it
    seq_to_tap: int = 0
    seq_ack_from_tap: int = 0
    seq_from_tap: int = 0
    seq_ack_to_tap: int = 0
    seq_init_from_tap: int = 0

    def tap(self) -> Side:
        return self.side[self.pif.index(PIF_TAP)]

    def host(self) -> Side:
        return self.side[self.pif.index(PIF_HOST)]

    def pack(self) -> bytes:
        a, b = self.side
        # passt keeps the MSS in 14 bits of 4-byte units (MSS_SET/MSS_GET)
        mss = (self.tap_mss >> 2) << 2
        return (PIFS.pack(*self.pif)
                + b"".join(SIDE.pack(inany(x.oaddr), inany(x.eaddr), x.oport, x.eport)
                           for x in (a, b))
                + TCP_STATE.pack(self.retries, self.ws_from_tap, self.ws_to_tap, self.events,
                                 mss, self.sndbuf, self.flags, self.seq_dup_ack_approx & 0xFF,
                                 self.wnd_from_tap & 0xFFFF, self.wnd_to_tap & 0xFFFF,
                                 self.seq_to_tap, self.seq_ack_from_tap, self.seq_from_tap,
                                 self.seq_ack_to_tap, self.seq_init_from_tap))

    @classmethod
    def unpack(cls, data: bytes) -> TcpTransfer:
        if len(data) != TRANSFER_SIZE:
            raise StateError(f"a TCP flow of {len(data)} bytes")
        pif = PIFS.unpack_from(data)
        if sorted(pif) != [PIF_HOST, PIF_TAP]:
            raise StateError(f"a TCP flow between interfaces {pif[0]} and {pif[1]}")
        sides = tuple(Side(*SIDE.unpack_from(data, PIFS.size + k * SIDE.size)) for k in (0, 1))
        for x in sides:
            if (x.oaddr[:12] == V4MAPPED) != (x.eaddr[:12] == V4MAPPED):
                raise StateError("a TCP flow side with both IPv4 and IPv6 addresses")
        f = TCP_STATE.unpack_from(data, PIFS.size + 2 * SIDE.size)
        if f[1] > 14 or f[2] > 14:
            raise StateError(f"window scale {max(f[1], f[2])}")
        return cls(pif, sides, *f)


@dataclasses.dataclass
class TcpTransferExt:
    """A host socket's repair state (passt's struct tcp_tap_transfer_ext)."""
    seq_snd: int = 0
    seq_rcv: int = 0
    sndq: int = 0
    notsent: int = 0
    rcvq: int = 0
    mss: int = 0
    timestamp: int = 0
    snd_wl1: int = 0
    snd_wnd: int = 0
    max_window: int = 0
    rcv_wnd: int = 0
    rcv_wup: int = 0
    snd_ws: int = 0
    rcv_ws: int = 0
    tcpi_state: int = 0          # 0: the source could not dump it, skip (reset)
    tcpi_options: int = 0

    def pack(self) -> bytes:
        return EXT.pack(*(v & 0xFFFFFFFF if i < 12 else v & 0xFF
                          for i, v in enumerate(dataclasses.astuple(self))))

    @classmethod
    def unpack(cls, data: bytes) -> TcpTransferExt:
        t = cls(*EXT.unpack(data))
        if t.tcpi_state and (t.sndq > QUEUE_MAX or t.rcvq > QUEUE_MAX or t.notsent > t.sndq):
            raise StateError(f"bad queues: send {t.sndq}, not sent {t.notsent}, "
                             f"receive {t.rcvq}")
        return t


def header() -> bytes:
    return HEADER.pack(MAGIC, VERSION, VERSION)


def check_header(data: bytes) -> int:
    """The version we read the stream as, or StateError."""
    magic, version, compat = HEADER.unpack(data)
    if magic != MAGIC or not version or not compat:
        raise StateError(f"not a passt device state (magic {magic:#018x})")
    if not compat <= VERSION <= version:
        raise StateError(f"unsupported device state version {version} (compatible down "
                         f"to {compat}; we read {VERSION})")
    return VERSION


@dataclasses.dataclass
class Addresses:
    """What the source learned from the guest's traffic."""
    addr6: bytes = bytes(16)
    addr6_ll: bytes = bytes(16)
    addr4: bytes = bytes(4)
    mac: bytes = bytes(6)

    def pack(self) -> bytes:
        return ADDRESSES.pack(self.addr6, self.addr6_ll, self.addr4, self.mac)

    @classmethod
    def unpack(cls, data: bytes) -> Addresses:
        return cls(*ADDRESSES.unpack(data))
