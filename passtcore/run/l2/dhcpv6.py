"""DHCPv6 server for the one guest (passt-reference 5.4, 4.3).

Design: sans-IO. ``dhcpv6_reply(frame, info, conf, state)`` takes a parsed
guest UDP frame to port 547 and returns the ADVERTISE/REPLY frame or None;
malformed messages raise :class:`~passtcore.run.l2.common.Drop`. The only state
(:class:`Dhcpv6State`) is the server DUID-LLT, fixed at start-up, and the
last IAID seen. :class:`Dhcpv6Engine` wraps it for the daemon and records the
assigned address as the guest's (``ctx.addr_seen6``).

The one configured address is leased with infinite T1/T2 and lifetimes.
Reply options, in order: Server ID, IA_NA(IA Address), Client ID, DNS servers
(23), Domain List (24). Differences from passt 2023, on purpose: the Domain
List is encoded afresh for every reply (the 2023 static buffer corrupted the
second and later replies with >= 2 domains); INFORMATION-REQUEST replies carry
no IA_NA; a REBIND without Server ID (the normal case, RFC 8415 18.2.5) gets
its REPLY. An address that is not ours in a REQUEST gets NotOnLink in the IA
(as passt), in a CONFIRM a top-level NotOnLink (passt put it in an IA, where
RFC 8415 clients do not look), and in a RENEW/REBIND it is returned with zero
lifetimes next to ours (RFC 8415 18.3.4), so a guest that kept an old lease
moves over.
"""
from __future__ import annotations

import struct
import time
from typing import Any

from passtcore.run.l2.common import Drop, ReplyEngine, encode_domains, guest_dns, guest_search, udp_frame
from passtcore.run.l2.ndp import router_ll

SERVER_PORT, CLIENT_PORT = 547, 546
SOLICIT, ADVERTISE, REQUEST, CONFIRM, RENEW, REBIND, REPLY = 1, 2, 3, 4, 5, 6, 7
RELEASE, DECLINE, INFORMATION_REQUEST = 8, 9, 11
OPT_CLIENTID, OPT_SERVERID, OPT_IA_NA, OPT_IA_TA, OPT_IAADDR = 1, 2, 3, 4, 5
OPT_STATUS_CODE, OPT_DNS_SERVERS, OPT_DOMAIN_LIST = 13, 23, 24
STATUS_NOT_ON_LINK = 4
NOT_ON_LINK_MSG = b"Prefix not appropriate for link."
INFINITE = 0xFFFFFFFF
MAX_DUID = 128
SERVER_DUID_LEN = 14
EPOCH_2000 = 946684800  # 2000-01-01T00:00:00Z, the DUID-LLT time origin


def _opt(code: int, data: bytes) -> bytes:
    return struct.pack("!HH", code, len(data)) + data


def parse_options(data: bytes | memoryview, what: str = "dhcpv6") -> list[tuple[int, bytes]]:
    """(code, value) pairs of a DHCPv6 option area; a truncated option raises Drop."""
    out: list[tuple[int, bytes]] = []
    i, n = 0, len(data)
    while i < n:
        if i + 4 > n:
            raise Drop(f"{what}-truncated-option")
        code = (data[i] << 8) | data[i + 1]
        ln = (data[i + 2] << 8) | data[i + 3]
        if i + 4 + ln > n:
            raise Drop(f"{what}-truncated-option")
        out.append((code, bytes(data[i + 4:i + 4 + ln])))
        i += 4 + ln
    return out


class Dhcpv6State:
    """Server DUID-LLT (type 1, hardware 1, seconds since 2000 at start-up, our MAC)
    and the last IAID, reused when a client sends no IA_NA of its own."""

    def __init__(self, our_mac: bytes, now: float | None = None) -> None:
        secs = int((time.time() if now is None else now) - EPOCH_2000) & 0xFFFFFFFF
        self.server_duid = struct.pack("!HHI", 1, 1, secs) + bytes(our_mac)
        self.iaid = 0


def _ia_addresses(ia: bytes) -> list[bytes]:
    """IA Address options inside an IA_NA value (after IAID, T1, T2)."""
    if len(ia) < 12:
        raise Drop("dhcpv6-bad-ia-na")
    addrs = []
    for code, val in parse_options(ia[12:], "dhcpv6-ia"):
        if code == OPT_IAADDR:
            if len(val) < 24:
                raise Drop("dhcpv6-bad-iaaddr")
            addrs.append(val[:16])
    return addrs


def dhcpv6_reply(frame: bytes | bytearray | memoryview, info: Any, conf: Any,
                 state: Dhcpv6State) -> bytes | None:
    """The ADVERTISE/REPLY for a guest DHCPv6 message, None when not answered."""
    if info.ip_version != 6 or info.l4_proto != 17 or info.dport != SERVER_PORT:
        raise Drop("dhcpv6-not-dhcpv6")
    if bytes(info.dst)[0] != 0xFF:
        raise Drop("dhcpv6-unicast")
    addr6 = getattr(conf, "addr6", None)
    if not addr6:
        raise Drop("dhcpv6-no-ipv6")
    addr6 = bytes(addr6)
    mv = memoryview(frame)
    msg = mv[info.payload_offset:info.payload_offset + info.payload_len]
    if len(msg) < 4:
        raise Drop("dhcpv6-short")
    mtype = msg[0]
    xid = bytes(msg[1:4])
    opts = parse_options(msg[4:])
    first: dict[int, bytes] = {}
    for code, val in opts:
        first.setdefault(code, val)

    client_id = first.get(OPT_CLIENTID)
    if client_id is None or not 1 <= len(client_id) <= MAX_DUID:
        raise Drop("dhcpv6-bad-client-id")
    server_id = first.get(OPT_SERVERID)
    if server_id is not None and len(server_id) != SERVER_DUID_LEN:
        raise Drop("dhcpv6-bad-server-id")
    ours = server_id == state.server_duid

    if mtype == SOLICIT:
        if server_id is not None:
            raise Drop("dhcpv6-solicit-server-id")
    elif mtype in (REQUEST, RENEW):
        if not ours:
            return None  # addressed to another server
    elif mtype == CONFIRM:
        if server_id is not None:
            raise Drop("dhcpv6-confirm-server-id")
    elif mtype == REBIND:
        if server_id is not None and not ours:
            return None
    elif mtype == INFORMATION_REQUEST:
        if server_id is not None and not ours:
            return None
        if OPT_IA_NA in first or OPT_IA_TA in first:
            raise Drop("dhcpv6-inforeq-with-ia")
    else:
        return None  # RELEASE, DECLINE, relay messages...

    out = bytearray(((ADVERTISE if mtype == SOLICIT else REPLY),)) + xid
    out += _opt(OPT_SERVERID, state.server_duid)
    client_ia = first.get(OPT_IA_NA)
    foreign: list[bytes] = []
    if client_ia is not None:
        requested = _ia_addresses(client_ia)  # validates the IA_NA first
        state.iaid = struct.unpack_from("!I", client_ia)[0]
        if mtype != SOLICIT:  # a Solicit's addresses are mere hints
            foreign = [a for a in requested if a != addr6]
    if foreign and mtype in (REQUEST, CONFIRM):
        # An address from elsewhere (e.g. before a migration): NotOnLink makes the
        # client start over with a Solicit. Confirm carries it at the top level.
        status = _opt(OPT_STATUS_CODE, struct.pack("!H", STATUS_NOT_ON_LINK) + NOT_ON_LINK_MSG)
        out += _opt(OPT_IA_NA, client_ia[:12] + status) if mtype == REQUEST else status
        out += _opt(OPT_CLIENTID, client_id)
        return _frame(info, conf, bytes(out))
    if mtype != INFORMATION_REQUEST:
        ia_body = struct.pack("!III", state.iaid, INFINITE, INFINITE)
        ia_body += _opt(OPT_IAADDR, addr6 + struct.pack("!II", INFINITE, INFINITE))
        for old in foreign:  # Renew/Rebind: withdraw the old address, give ours (RFC 8415 18.3.4)
            ia_body += _opt(OPT_IAADDR, old + struct.pack("!II", 0, 0))
        out += _opt(OPT_IA_NA, ia_body)
    out += _opt(OPT_CLIENTID, client_id)
    dns = guest_dns(conf, 6)
    if dns:
        out += _opt(OPT_DNS_SERVERS, b"".join(dns))
    names = encode_domains(guest_search(conf))
    if names:
        out += _opt(OPT_DOMAIN_LIST, names)
    return _frame(info, conf, bytes(out))


def _frame(info: Any, conf: Any, payload: bytes) -> bytes:
    """Reply from our link-local (or the link-local gateway) to the client, 547 -> 546."""
    return udp_frame(bytes(info.eth_src), bytes(conf.our_mac), router_ll(conf, "dhcpv6"),
                     bytes(info.src), SERVER_PORT, CLIENT_PORT, payload)


class Dhcpv6Engine(ReplyEngine):
    """Daemon wrapper: guest UDP to port 547 -> ADVERTISE/REPLY to the guest."""

    name = "dhcpv6"

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.state = Dhcpv6State(bytes(ctx.conf.our_mac))

    def reply(self, frame: memoryview, info: Any) -> bytes | None:
        out = dhcpv6_reply(frame, info, self.ctx.conf, self.state)
        if out is not None and self.ctx.conf.addr6:
            # From now on the guest is addressed at its leased address (reference 5.4).
            self.ctx.addr_seen6 = bytes(self.ctx.conf.addr6)
        return out
