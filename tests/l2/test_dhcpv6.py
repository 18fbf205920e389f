"""DHCPv6 server against passt-reference 5.4 / 4.3, plus the 2023 bugs fixed."""
from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp6 import (DHCP6_Advertise, DHCP6_Confirm, DHCP6_InfoRequest, DHCP6_Rebind,
                                DHCP6_Release, DHCP6_Renew, DHCP6_Reply, DHCP6_Request,
                                DHCP6_Solicit, DHCP6OptClientId, DHCP6OptDNSDomains,
                                DHCP6OptDNSServers, DHCP6OptIA_NA, DHCP6OptIAAddress,
                                DHCP6OptServerId, DHCP6OptStatusCode, DUID_LL)
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

import passtcore
from passtcore.run.l2.common import Drop
from passtcore.run.l2.dhcpv6 import Dhcpv6Engine, Dhcpv6State, dhcpv6_reply

from .conftest import GUEST_LL, GUEST_MAC, OUR_MAC, assert_checksums, ip, mac

TRID = 0xABCDEF
IAID = 0x11223344
CLIENT = DHCP6OptClientId(duid=DUID_LL(lladdr=GUEST_MAC))


def v6(msg, dst: str = "ff02::1:2", src: str = GUEST_LL) -> bytes:
    return bytes(Ether(src=GUEST_MAC, dst="33:33:00:01:00:02") / IPv6(src=src, dst=dst) /
                 UDP(sport=546, dport=547) / msg)


def ia(addr: str | None = None):
    opts = DHCP6OptIAAddress(addr=addr, preflft=0, validlft=0) if addr else None
    return DHCP6OptIA_NA(iaid=IAID, T1=0, T2=0, ianaopts=[opts] if opts else [])


def server_id(h) -> DHCP6OptServerId:
    return DHCP6OptServerId(b"\x00\x02\x00\x0e" + h.engine.state.server_duid)


def check_lease(pkt, kind, ia_expected: bool = True) -> None:
    """Every field passt-reference 5.4 specifies, in order."""
    assert (pkt[Ether].src, pkt[Ether].dst) == (OUR_MAC, GUEST_MAC)
    assert (pkt[IPv6].src, pkt[IPv6].dst) == ("fe80::1", GUEST_LL)
    assert (pkt[UDP].sport, pkt[UDP].dport) == (547, 546)
    msg = pkt[kind]
    assert msg.trid == TRID
    raw = bytes(msg.payload)
    order = []
    i = 0
    while i < len(raw):
        code, ln = struct.unpack_from("!HH", raw, i)
        order.append(code)
        i += 4 + ln
    assert order == ([2, 3, 1, 23, 24] if ia_expected else [2, 1, 23, 24])
    sid = pkt[DHCP6OptServerId]
    assert sid.optlen == 14
    assert (sid.duid.type, sid.duid.hwtype, sid.duid.lladdr) == (1, 1, OUR_MAC)
    if ia_expected:
        na = pkt[DHCP6OptIA_NA]
        assert (na.iaid, na.T1, na.T2, na.optlen) == (IAID, 0xFFFFFFFF, 0xFFFFFFFF, 40)
        a = pkt[DHCP6OptIAAddress]
        assert (a.addr, a.preflft, a.validlft, a.optlen) == ("2001:db8::10", 0xFFFFFFFF,
                                                              0xFFFFFFFF, 24)
    else:
        assert DHCP6OptIA_NA not in pkt
    assert bytes(pkt[DHCP6OptClientId].duid) == bytes(CLIENT.duid)
    assert pkt[DHCP6OptDNSServers].dnsservers == ["2001:db8::53"]
    assert pkt[DHCP6OptDNSDomains].dnsdomains == ["example.com.", "corp.example.org."]


def test_solicit_advertise(harness):
    h = harness(Dhcpv6Engine)
    (reply,) = h.send(v6(DHCP6_Solicit(trid=TRID) / CLIENT / ia()))
    check_lease(assert_checksums(reply), DHCP6_Advertise)
    assert h.ctx.addr_seen6 == bytes.fromhex("20010db8000000000000000000000010")


@pytest.mark.parametrize("kind,with_sid", [
    (DHCP6_Request, True), (DHCP6_Renew, True), (DHCP6_Rebind, False), (DHCP6_Rebind, True),
    (DHCP6_Confirm, False),
])
def test_reply_to_each_type(harness, kind, with_sid):
    h = harness(Dhcpv6Engine)
    msg = kind(trid=TRID) / CLIENT
    if with_sid:
        msg = msg / server_id(h)
    (reply,) = h.send(v6(msg / ia("2001:db8::10")))
    check_lease(assert_checksums(reply), DHCP6_Reply)


def test_information_request_has_no_ia(harness):
    h = harness(Dhcpv6Engine)
    (reply,) = h.send(v6(DHCP6_InfoRequest(trid=TRID) / CLIENT))
    check_lease(assert_checksums(reply), DHCP6_Reply, ia_expected=False)


def test_domain_list_right_on_every_reply(harness, conf):
    """passt 2023 corrupted the list from the second reply on with >= 2 domains."""
    names = ["example.com", "corp.example.org", "lab.example.net"]
    h = harness(Dhcpv6Engine, dataclasses.replace(conf, search=names))
    msgs = [DHCP6_Solicit(trid=TRID) / CLIENT / ia(),
            DHCP6_Request(trid=TRID) / CLIENT / server_id(h) / ia("2001:db8::10"),
            DHCP6_Renew(trid=TRID) / CLIENT / server_id(h) / ia("2001:db8::10"),
            DHCP6_InfoRequest(trid=TRID) / CLIENT, DHCP6_Solicit(trid=TRID) / CLIENT / ia()]
    for msg in msgs:
        (reply,) = h.send(v6(msg))
        assert assert_checksums(reply)[DHCP6OptDNSDomains].dnsdomains == [n + "." for n in names]


def test_request_for_other_server_ignored(harness):
    h = harness(Dhcpv6Engine)
    other = DHCP6OptServerId(duid=DUID_LL(lladdr="02:00:00:00:00:99"))  # 10 bytes: invalid
    assert h.send(v6(DHCP6_Request(trid=TRID) / CLIENT / other / ia())) == []
    assert h.counters.drops() == {"dhcpv6-bad-server-id": 1}
    sid = bytes(h.engine.state.server_duid)
    other14 = DHCP6OptServerId(b"\x00\x02\x00\x0e" + sid[:-1] + bytes((sid[-1] ^ 1,)))
    assert h.send(v6(DHCP6_Renew(trid=TRID) / CLIENT / other14 / ia())) == []
    assert h.counters["dhcpv6-ignored"] == 1


def test_not_on_link(harness):
    h = harness(Dhcpv6Engine)
    (reply,) = h.send(v6(DHCP6_Request(trid=TRID) / CLIENT / server_id(h) / ia("2001:db8::99")))
    pkt = assert_checksums(reply)
    na = pkt[DHCP6OptIA_NA]
    assert na.iaid == IAID
    st_ = pkt[DHCP6OptStatusCode]
    assert (st_.statuscode, st_.statusmsg) == (4, b"Prefix not appropriate for link.")
    assert DHCP6OptIAAddress not in pkt and DHCP6OptClientId in pkt


def test_confirm_not_on_link_top_level(harness):
    h = harness(Dhcpv6Engine)
    (reply,) = h.send(v6(DHCP6_Confirm(trid=TRID) / CLIENT / ia("2001:db8::99")))
    pkt = assert_checksums(reply)
    assert DHCP6OptIA_NA not in pkt
    assert pkt[DHCP6_Reply].payload.payload.optcode == 13  # right after the Server ID
    assert pkt[DHCP6OptStatusCode].statuscode == 4


@pytest.mark.parametrize("kind", [DHCP6_Renew, DHCP6_Rebind])
def test_renew_old_address_withdrawn(harness, kind):
    h = harness(Dhcpv6Engine)
    msg = kind(trid=TRID) / CLIENT
    if kind is DHCP6_Renew:
        msg = msg / server_id(h)
    (reply,) = h.send(v6(msg / ia("2001:db8:ffff::5")))
    pkt = assert_checksums(reply)
    na = pkt[DHCP6OptIA_NA]
    assert (na.iaid, na.T1, na.T2) == (IAID, 0xFFFFFFFF, 0xFFFFFFFF)
    addrs = [(o.addr, o.preflft, o.validlft) for o in na.ianaopts]
    assert addrs == [("2001:db8::10", 0xFFFFFFFF, 0xFFFFFFFF), ("2001:db8:ffff::5", 0, 0)]
    assert DHCP6OptStatusCode not in pkt


def test_iaid_reused_when_client_sends_none(harness):
    h = harness(Dhcpv6Engine)
    h.send(v6(DHCP6_Solicit(trid=TRID) / CLIENT / ia()))
    (reply,) = h.send(v6(DHCP6_Solicit(trid=TRID) / CLIENT))
    assert assert_checksums(reply)[DHCP6OptIA_NA].iaid == IAID


@pytest.mark.parametrize("frame,reason", [
    (v6(DHCP6_Solicit(trid=1) / CLIENT / ia(), dst="fe80::1"), "dhcpv6-unicast"),
    (v6(DHCP6_Solicit(trid=1) / ia()), "dhcpv6-bad-client-id"),
    (v6(DHCP6_Solicit(trid=1) / DHCP6OptClientId(optlen=200, duid=b"x" * 200)),
     "dhcpv6-bad-client-id"),
    (v6(DHCP6_Solicit(trid=1) / CLIENT / DHCP6OptServerId(duid=b"y" * 14)),
     "dhcpv6-solicit-server-id"),
    (v6(DHCP6_Confirm(trid=1) / CLIENT / DHCP6OptServerId(duid=b"y" * 14)),
     "dhcpv6-confirm-server-id"),
    (v6(DHCP6_InfoRequest(trid=1) / CLIENT / ia()), "dhcpv6-inforeq-with-ia"),
    (v6(bytes(DHCP6_Solicit(trid=1) / CLIENT) + b"\x00\x03\x00\x30abc"), "dhcpv6-truncated-option"),
    (v6(b"\x01\x00"), "dhcpv6-short"),
    (v6(bytes(DHCP6_Solicit(trid=1) / CLIENT) + b"\x00\x03\x00\x02ab"), "dhcpv6-bad-ia-na"),
    (v6(bytes(DHCP6_Solicit(trid=1) / CLIENT) + b"\x00\x03\x00\x10" + bytes(12) +
        b"\x00\x05\x00\x00"), "dhcpv6-bad-iaaddr"),
])
def test_malformed_dropped_and_counted(harness, frame, reason):
    h = harness(Dhcpv6Engine)
    assert h.send(frame) == []
    assert h.counters.drops() == {reason: 1}


@pytest.mark.parametrize("kind", [DHCP6_Solicit, DHCP6_InfoRequest])
def test_no_link_local_counted_as_dhcpv6(harness, conf, kind):
    """No link-local to answer from (global gateway, no addr6_ll): a DHCPv6 drop, not NDP's."""
    h = harness(Dhcpv6Engine, dataclasses.replace(conf, gw6=ip("2001:db8::1"), gw6_ll=None,
                                                   addr6_ll=None))
    msg = kind(trid=TRID) / CLIENT
    assert h.send(v6(msg / ia() if kind is DHCP6_Solicit else msg)) == []
    assert h.counters.drops() == {"dhcpv6-no-link-local": 1}
    assert h.counters["dhcpv6-reply"] == 0


def test_release_decline_silent(harness):
    h = harness(Dhcpv6Engine)
    assert h.send(v6(DHCP6_Release(trid=1) / CLIENT / server_id(h) / ia())) == []
    assert h.counters["dhcpv6-ignored"] == 1


def test_padded_frame(harness):
    frame = v6(DHCP6_Solicit(trid=TRID) / CLIENT / ia())
    h = harness(Dhcpv6Engine)
    (r1,) = h.send(frame)
    (r2,) = h.send(frame + b"\x01\x02\x03" * 10)
    assert r1 == r2


def test_server_duid_llt():
    st_ = Dhcpv6State(mac(OUR_MAC), now=946684800 + 1000)
    assert st_.server_duid == bytes.fromhex("00010001000003e8021122334455")


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mtype=st.integers(0, 15), body=st.binary(max_size=120))
def test_garbage_never_raises(conf, mtype, body):
    state = Dhcpv6State(conf.our_mac)
    for payload in (bytes((mtype, 1, 2, 3)) + body,
                    bytes((mtype, 1, 2, 3)) + bytes(CLIENT) + body):
        frame = v6(payload)
        info = passtcore.headers.parse_frame(frame)
        try:
            reply = dhcpv6_reply(memoryview(frame), info, conf, state)
        except Drop:
            continue
        if reply is not None:
            assert_checksums(reply)


_option = st.tuples(st.sampled_from([1, 2, 3, 4, 5, 6, 8, 13, 23, 24, 0xFFFF]),
                    st.binary(max_size=48))


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mtype=st.sampled_from([1, 3, 4, 5, 6, 8, 11]), opts=st.lists(_option, max_size=6),
       with_client=st.booleans())
def test_structured_garbage_never_raises(conf, mtype, opts, with_client):
    """Well-framed options with arbitrary contents (short IA_NA, odd IAADDR...)."""
    state = Dhcpv6State(conf.our_mac)
    body = bytes(CLIENT) if with_client else b""
    body += b"".join(struct.pack("!HH", c, len(v)) + v for c, v in opts)
    frame = v6(bytes((mtype, 1, 2, 3)) + body)
    info = passtcore.headers.parse_frame(frame)
    try:
        reply = dhcpv6_reply(memoryview(frame), info, conf, state)
    except Drop:
        return
    if reply is not None:
        assert_checksums(reply)
