"""ARP responder against passt-reference 5.1, requests built and replies parsed by scapy."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.l2 import ARP, Ether

import passtcore
from passtcore.run.l2.arp import ArpEngine, arp_reply
from passtcore.run.l2.common import Drop

from .conftest import GUEST_MAC, OUR_MAC, reference_conf


def who_has(pdst: str, psrc: str = "192.0.2.10", op: int = 1, hwsrc: str = GUEST_MAC) -> bytes:
    return bytes(Ether(src=hwsrc, dst="ff:ff:ff:ff:ff:ff") /
                 ARP(op=op, hwsrc=hwsrc, psrc=psrc, pdst=pdst))


def test_reply_bytes_match_passt(harness):
    h = harness(ArpEngine)
    (reply,) = h.send(who_has("192.0.2.1"))
    assert len(reply) == 42  # not padded to 60
    assert reply[:14] == bytes.fromhex("525400123456" "021122334455" "0806")
    assert reply[14:] == bytes.fromhex(
        "0001 0800 06 04 0002 021122334455 c0000201 525400123456 c000020a".replace(" ", ""))
    a = Ether(reply)[ARP]
    assert (a.op, a.hwsrc, a.psrc, a.hwdst, a.pdst) == (2, OUR_MAC, "192.0.2.1", GUEST_MAC,
                                                         "192.0.2.10")
    assert h.counters["arp-reply"] == 1


def test_any_address_is_answered(harness):
    h = harness(ArpEngine)
    for target in ("203.0.113.7", "198.51.100.1", "192.0.2.200", "203.0.113.201"):
        (reply,) = h.send(who_has(target))
        assert Ether(reply)[ARP].psrc == target


def test_own_address_and_gratuitous_are_silent(harness):
    h = harness(ArpEngine)
    assert h.send(who_has("192.0.2.10", psrc="0.0.0.0")) == []  # DAD probe for itself
    assert h.send(who_has("192.0.2.10")) == []
    assert h.send(who_has("192.0.2.77", psrc="192.0.2.77")) == []  # announcement
    assert h.counters["arp-ignored"] == 3


def test_probe_for_other_address_answered(harness):
    h = harness(ArpEngine)
    (reply,) = h.send(who_has("192.0.2.1", psrc="0.0.0.0"))
    a = Ether(reply)[ARP]
    assert a.pdst == "0.0.0.0" and a.psrc == "192.0.2.1"


def test_padded_request(harness):
    h = harness(ArpEngine)
    frame = who_has("192.0.2.1") + b"\xaa" * 18  # QEMU pads to 60
    assert len(frame) == 60
    (reply,) = h.send(frame)
    assert len(reply) == 42 and Ether(reply)[ARP].pdst == "192.0.2.10"


def test_arp_reply_from_guest_dropped(harness):
    h = harness(ArpEngine)
    assert h.send(who_has("192.0.2.1", op=2)) == []
    assert h.counters.drops() == {"arp-not-request": 1}


@settings(max_examples=300, deadline=None)
@given(body=st.binary(min_size=28, max_size=60))
def test_garbage_never_raises(body):
    """Any 28+ byte ARP body: a 42-byte reply, silence, or a counted Drop."""
    conf = reference_conf()
    frame = bytes.fromhex("ffffffffffff525400123456" "0806") + body
    try:
        info = passtcore.headers.parse_frame(frame)
    except passtcore.headers.ParseError:
        return
    try:
        reply = arp_reply(memoryview(frame), info, conf)
    except Drop:
        return
    if reply is not None:
        assert len(reply) == 42 and reply[20:22] == b"\x00\x02"
