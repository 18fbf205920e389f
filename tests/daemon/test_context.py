"""Addresses the daemon learns from guest traffic (passt-reference 4.7)."""
from __future__ import annotations

import ipaddress
from types import SimpleNamespace

from passtcore.run import nat
from passtcore.run.process.config import NetConfig
from passtcore.run.context import Context
from passtcore.run.io.loop import Loop

OURS_LL = ipaddress.ip_address("fe80::5eff:fe00:5302").packed
GUEST_LL = ipaddress.ip_address("fe80::1234").packed
GUEST = ipaddress.ip_address("2001:db8::2").packed


def _ctx() -> Context:
    conf = NetConfig(our_mac=b"\x02" * 6, addr6=GUEST, prefix6=64, addr6_ll=OURS_LL, gw6_ll=OURS_LL)
    return Context(conf, Loop())


def test_link_local_destination_is_never_our_own_address():
    ctx = _ctx()
    # Before the guest used its link-local address: its global one, not ours.
    assert nat.guest_addr(ctx, 6, link_local=True) == GUEST
    src, dst = nat.inbound_source(ctx, ipaddress.ip_address("::1").packed)
    assert src == OURS_LL and dst == GUEST


def test_guest_link_local_learned_from_traffic():
    ctx = _ctx()
    ctx.learn(SimpleNamespace(ip_version=6, src=GUEST_LL))
    assert nat.guest_addr(ctx, 6, link_local=True) == GUEST_LL
    assert nat.guest_addr(ctx, 6) == GUEST
    new = ipaddress.ip_address("2001:db8::99").packed
    ctx.learn(SimpleNamespace(ip_version=6, src=new))  # re-addressed guest (live migration)
    assert nat.guest_addr(ctx, 6) == new
