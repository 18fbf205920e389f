"""ICMP/ICMPv6 echo through unprivileged "ping" sockets (passt-reference 5.5).

Design: the guest's echo requests are sent with ``sendto`` on a
``socket(AF_INET[6], SOCK_DGRAM, IPPROTO_ICMP[V6])`` owned by this engine, one
per (family, guest echo identifier). The socket is bound to port =
identifier, so the kernel keeps the guest's identifier on the wire; if the
bind fails, the kernel picks one and replies get the guest's identifier
written back. The kernel fills in identifier and checksum on the way out;
replies read from the socket (ICMP header + data, no IP header) become frames
to the guest from the real remote address to the address the guest pinged
from, with the checksum recomputed by ``passtcore.headers.build_icmp``.

Each socket is a flow of the daemon's flow registry (key: protocol, echo
identifier), which bounds them with every other flow (``--max-flows``) and
closes those without guest activity for 60 s (all of them, unlike passt 2023
which only scanned ids 0-63). The dispatcher routes only echo requests here;
everything else is dropped and counted there. If ping sockets are not permitted (the process's group
is outside ``net.ipv4.ping_group_range``), a warning is logged once and the
requests are dropped.
"""
from __future__ import annotations

from passtcore.run.icmp.engine import IcmpEngine

__all__ = ["IcmpEngine"]
