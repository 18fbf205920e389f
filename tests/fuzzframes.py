"""Structure-aware hostile guest frames, shared by tests/daemon/test_fuzz_frames.py
(a short run) and benches/fuzz_frames.py (millions).

Each frame starts as a well-formed one of the kinds a guest sends (TCP SYN,
ACK, data, FIN, RST with random options; UDP to random and to service ports;
ICMP/ICMPv6 echo; ARP; NDP RS/NS; DHCP/DHCPv6 shapes), built with the packet
kernels, and is then mutated: random bytes of the headers flipped, lengths
and offsets lied about, options garbled, the frame cut short or padded, or
replaced by random bytes. Destinations stay the sandbox's own addresses (the
gateway, which the daemon maps to the host's loopback, and the guest's own
subnet), so a mutated frame can never make the daemon talk to anyone else:
addresses are set after the mutation and the IP checksum is fixed up.
"""
from __future__ import annotations

import random
import struct

import passtcore

GUEST_MAC = bytes.fromhex("525400123456")
OUR_MAC = bytes.fromhex("9a559a559a55")
GUEST4, GW4 = bytes([192, 0, 2, 2]), bytes([192, 0, 2, 1])
GUEST6 = bytes.fromhex("20010db8000000000000000000000002")
GW6 = bytes.fromhex("20010db8000000000000000000000001")
LL6 = bytes.fromhex("fe800000000000000000000000000002")
TCP_FLAGS = (0x02, 0x10, 0x18, 0x11, 0x04, 0x14, 0x12, 0x01, 0x3F, 0x00, 0x29)
SERVICE_PORTS = (53, 67, 68, 546, 547, 80, 443)


def _tcp_options(rnd: random.Random) -> bytes:
    kinds = [b"\x02\x04" + struct.pack("!H", rnd.randrange(65536)),   # MSS
             b"\x01\x03\x03" + bytes([rnd.randrange(256)]),            # NOP, WS
             b"\x01\x01\x04\x02",                                      # SACK-permitted
             b"\x01\x01\x05\x0a" + rnd.randbytes(8),                   # SACK block
             b"\x01\x01\x08\x0a" + rnd.randbytes(8),                   # timestamps
             bytes([rnd.randrange(256), rnd.randrange(256)]) + rnd.randbytes(2)]
    opts = b"".join(rnd.choice(kinds) for _ in range(rnd.randrange(4)))
    return opts[:40] + bytes(-len(opts[:40]) % 4)


def well_formed(rnd: random.Random, buf: bytearray) -> bytes:
    """One valid frame of a random kind (destinations: the sandbox's own)."""
    h = passtcore.headers
    v6 = rnd.random() < 0.4
    src, dst = (GUEST6, GW6) if v6 else (GUEST4, GW4)
    kind = rnd.randrange(6)
    payload = rnd.randbytes(rnd.choice((0, 0, 1, 100, 1400)))
    if kind <= 1:                                        # TCP
        opts = _tcp_options(rnd)
        hl = h.header_len(6 if v6 else 4, 6, len(opts))
        buf[hl:hl + len(payload)] = payload
        n = h.build_tcp(buf, 0, OUR_MAC, GUEST_MAC, src, dst, rnd.randrange(1024, 65536),
                        rnd.choice((80, 8080, rnd.randrange(1, 65536))), rnd.getrandbits(32),
                        rnd.getrandbits(32), rnd.choice(TCP_FLAGS), rnd.randrange(65536),
                        len(payload), opts)
    elif kind == 2:                                      # UDP
        hl = h.header_len(6 if v6 else 4, 17)
        buf[hl:hl + len(payload)] = payload
        dport = rnd.choice(SERVICE_PORTS + (rnd.randrange(1, 65536),))
        n = h.build_udp(buf, 0, OUR_MAC, GUEST_MAC, src, dst, rnd.choice((68, 546, 5353,
                        rnd.randrange(1, 65536))), dport, len(payload))
    elif kind == 3:                                      # ICMP echo (and other types)
        hl = h.header_len(6 if v6 else 4, 58 if v6 else 1)
        buf[hl:hl + len(payload)] = payload
        typ = rnd.choice((128, 133, 135, 134, 136, 1) if v6 else (8, 0, 3, 13))
        n = h.build_icmp(buf, 0, OUR_MAC, GUEST_MAC, LL6 if v6 and typ in (133, 135) else src,
                         dst, typ, rnd.choice((0, 0, 1)), rnd.randrange(65536),
                         rnd.randrange(65536), len(payload))
    elif kind == 4:                                      # ARP
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, rnd.choice((1, 2, 3)), GUEST_MAC,
                          GUEST4, bytes(6), rnd.choice((GW4, GUEST4, bytes([192, 0, 2, 77]))))
        frame = b"\xff" * 6 + GUEST_MAC + b"\x08\x06" + arp
        n = len(frame)
        buf[:n] = frame
    else:                                                # random bytes after a valid Ethernet header
        frame = GUEST_MAC[::-1] + GUEST_MAC + rnd.choice((b"\x08\x00", b"\x86\xdd", b"\x08\x06",
                                                         b"\x81\x00")) + rnd.randbytes(rnd.randrange(80))
        n = len(frame)
        buf[:n] = frame
    return bytes(buf[:n])


def mutate(rnd: random.Random, frame: bytes) -> bytes:
    f = bytearray(frame)
    how = rnd.randrange(5)
    if how == 0:                       # flip header bytes (not the MACs/addresses, fixed below)
        for _ in range(rnd.randrange(1, 4)):
            i = rnd.randrange(14, min(len(f), 94)) if len(f) > 14 else 0
            f[i] = rnd.randrange(256)
    elif how == 1:                     # cut short
        del f[rnd.randrange(14, len(f) + 1) if len(f) > 14 else 0:]
    elif how == 2:                     # pad (Ethernet padding, or lies about lengths)
        f += rnd.randbytes(rnd.randrange(1, 64))
    elif how == 3 and len(f) > 20:     # lie about an IP length field
        if f[12:14] == b"\x08\x00":
            f[16:18] = struct.pack("!H", rnd.randrange(65536))
        elif f[12:14] == b"\x86\xdd" and len(f) > 20:
            f[18:20] = struct.pack("!H", rnd.randrange(65536))
    # else: unchanged (valid frames in between keep the engines' state machines busy)
    _pin_destination(f)
    return bytes(f)


def _pin_destination(f: bytearray) -> None:
    """Whatever the mutation did, the IP destination is the sandbox's gateway (or,
    IPv6, stays in 2001:db8::/32 or link-local), and the IPv4 header checksum is right."""
    if len(f) >= 34 and f[12:14] == b"\x08\x00":
        f[30:34] = GW4
        ihl = (f[14] & 0x0F) * 4
        if 20 <= ihl and 14 + ihl <= len(f):
            f[24:26] = b"\0\0"
            f[24:26] = struct.pack("!H", passtcore.csum.inet_checksum(bytes(f[14:14 + ihl])))
    elif len(f) >= 54 and f[12:14] == b"\x86\xdd":
        if f[38:40] != b"\xff\x02":      # keep multicast (NDP/DHCPv6) as it is
            f[38:54] = GW6


def frames(seed: int, count: int):
    """``count`` hostile frames, deterministic for ``seed``."""
    rnd = random.Random(seed)
    buf = bytearray(2048)
    for _ in range(count):
        if rnd.random() < 0.05:
            yield rnd.randbytes(rnd.randrange(0, 200))  # plain garbage
        else:
            yield mutate(rnd, well_formed(rnd, buf))


#: counters that mean a bug, whatever the input: every hostile frame must be
#: dropped under a reason, or served
BUG_COUNTERS = ("engine-error-", "parse-crash", "handler-error", "loop-callback-error")


def bugs(counters: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counters.items() if v and any(b in k for b in BUG_COUNTERS)}
