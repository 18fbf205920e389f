"""The virtio-net header (virtio 1.x, 5.1.6), for the front ends that carry it:
the tap with ``IFF_VNET_HDR`` (10 bytes) and vhost-user (12: ``num_buffers``
follows, filled in by the virtqueue kernel).

``gso_header(frame, n, gso_size)`` is the header of a frame built in place: a
plain one (all zero), or, for a TCP frame longer than one ``gso_size``
segment, ``NEEDS_CSUM`` and ``GSO_TCPV4/6`` with that size. The TCP checksum
field of such a frame is rewritten to the pseudo-header sum, which the receiver
completes per segment: no pass over the 64 KiB payload here.
"""
from __future__ import annotations

import struct
from typing import Any

import passtcore

VNET_HDR = struct.Struct("=BBHHHH")      # flags, gso_type, hdr_len, gso_size, csum_start/offset
VNET_HDR_LEN = VNET_HDR.size             # 10
F_NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_TCPV6 = 0, 1, 4
PLAIN = bytes(VNET_HDR_LEN)
ETH_HLEN = 14


def gso_header(frame: Any, n: int, gso_size: int) -> bytes:
    """The 10-byte header for the ``n``-byte frame in ``frame`` (writable)."""
    if not gso_size or n <= ETH_HLEN + 40 + gso_size:   # one segment at most
        return PLAIN
    et = (frame[12] << 8) | frame[13]
    csum = passtcore.csum
    if et == 0x0800 and frame[23] == 6:
        l4 = ETH_HLEN + (frame[14] & 0x0F) * 4
        pseudo = csum.pseudo_sum_v4(bytes(frame[26:30]), bytes(frame[30:34]), 6, n - l4)
        gso = GSO_TCPV4
    elif et == 0x86DD and frame[20] == 6:
        l4 = ETH_HLEN + 40
        pseudo = csum.pseudo_sum_v6(bytes(frame[22:38]), bytes(frame[38:54]), 6, n - l4)
        gso = GSO_TCPV6
    else:
        return PLAIN
    hl = l4 + (frame[l4 + 12] >> 4) * 4
    if n - hl <= gso_size:
        return PLAIN
    frame[l4 + 16:l4 + 18] = pseudo.to_bytes(2, "big")   # the receiver completes it
    return VNET_HDR.pack(F_NEEDS_CSUM, gso, hl, gso_size, l4, 16)
