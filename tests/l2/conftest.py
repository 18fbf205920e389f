"""Shared pieces of the L2 service tests: the reference configuration of
passt-reference 4.3 (so replies can be compared byte for byte with what passt
sent), a real Context/Loop whose front end collects the frames sent to the
guest, and scapy-based checks (checksums, domain-name decoding)."""
from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from scapy.layers.dns import dns_get_str
from scapy.layers.l2 import Ether

import passtcore
from passtcore.run.process.config import NetConfig

from engine_support import EngineHarness

OUR_MAC = "02:11:22:33:44:55"
GUEST_MAC = "52:54:00:12:34:56"
GUEST_LL = "fe80::5054:ff:fe12:3456"


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def reference_conf(**changes: Any) -> NetConfig:
    """The setup of passt-reference 4.3 (template veth0 02:11:22:33:44:55,
    192.0.2.10/24 via 192.0.2.1, 2001:db8::10/64 via fe80::1, resolvers
    192.0.2.53 and 2001:db8::53, search example.com corp.example.org)."""
    base = dict(
        our_mac=mac(OUR_MAC), addr4=ip("192.0.2.10"), prefix4=24, gw4=ip("192.0.2.1"),
        addr6=ip("2001:db8::10"), prefix6=64, gw6=ip("fe80::1"),
        addr6_ll=ip("fe80::211:22ff:fe33:4455"), gw6_ll=ip("fe80::1"), mtu=65520,
        dns4=[ip("192.0.2.53")], dns6=[ip("2001:db8::53")],
        search=["example.com", "corp.example.org"],
    )
    base.update(changes)
    return NetConfig(**base)


class Harness(EngineHarness):
    """Runs guest frames through an engine the way the dispatcher does."""

    def send(self, frame: bytes) -> list[bytes]:
        """Replies the guest gets for ``frame``."""
        before = len(self.sink.frames)
        self.feed(frame)
        return self.sink.frames[before:]


@pytest.fixture
def conf() -> NetConfig:
    return reference_conf()


@pytest.fixture
def harness(conf: NetConfig):
    made: list[Harness] = []

    def make(engine_cls: type, c: NetConfig | None = None) -> Harness:
        h = Harness(engine_cls, c or conf)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def assert_checksums(frame: bytes) -> Ether:
    """Parse with scapy and check that every checksum is what scapy computes."""
    pkt = Ether(frame)
    rebuilt = pkt.copy()
    for layer in rebuilt.layers():
        lay = rebuilt.getlayer(layer)
        for name in ("chksum", "cksum"):
            if lay is not None and name in lay.fields:
                del lay.fields[name]
    assert bytes(rebuilt) == frame, "a checksum differs from scapy's"
    assert passtcore.csum.verify_frame(frame)
    return pkt


def decode_names(data: bytes) -> list[str]:
    """RFC 1035 names concatenated in ``data`` (compression pointers relative to it)."""
    names, rest = [], data
    while rest:
        name, rest = dns_get_str(rest, full=data)
        names.append(name.decode().rstrip("."))
    return names
