"""The flow registry: one table for TCP, UDP and ICMP; limits, deadlines, expiry."""
from __future__ import annotations

from passtcore.run.counters import Counters
from passtcore.run.flows import ANY, FlowRegistry

G4, R4 = bytes([192, 0, 2, 2]), bytes([198, 51, 100, 7])
G6 = bytes.fromhex("20010db8000000000000000000000002")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Owner:
    def __init__(self) -> None:
        self.expired: list[object] = []

    def flow_expired(self, flow: object) -> None:
        self.expired.append(flow)


def registry(capacity: int = 8) -> tuple[FlowRegistry, Clock, Counters]:
    clock, counters = Clock(), Counters()
    return FlowRegistry(capacity, counters, clock), clock, counters


def test_one_limit_for_every_protocol() -> None:
    reg, _, counters = registry(3)
    tcp, udp, icmp = Owner(), Owner(), Owner()
    assert reg.add(tcp, 6, G4, 40000, R4, 80, "t", 10) >= 0
    assert reg.add(udp, 17, ANY[4], 5353, ANY[4], 0, "u", 180) >= 0
    assert reg.add(icmp, 58, ANY[6], 7, ANY[6], 0, "i", 60) >= 0
    assert reg.add(tcp, 6, G6, 40001, G6, 443, "t2", 10) == -1  # full, whatever the protocol
    assert counters["tcp_flows"] == 1 and counters["udp_flows"] == 1
    assert counters["icmp_flows"] == 1 and counters["tcp_flows_refused"] == 1
    assert reg.stats() == {"flows": 3, "tcp": 1, "udp": 1, "icmp": 1}


def test_lookup_and_duplicates() -> None:
    reg, _, counters = registry()
    o = Owner()
    i = reg.add(o, 6, G4, 40000, R4, 80, "flow", 10)
    assert reg.lookup(6, G4, 40000, R4, 80) == "flow"
    assert reg.lookup(6, G4, 40000, R4, 81) is None
    assert reg.lookup(17, G4, 40000, R4, 80) is None   # the protocol is in the key
    assert reg.add(o, 6, G4, 40000, R4, 80, "again", 10) == -1
    assert counters["tcp_flows_refused"] == 1
    reg.remove(i, "someone else")                      # not that flow: kept
    assert reg.lookup(6, G4, 40000, R4, 80) == "flow"
    reg.remove(i, "flow")
    reg.remove(i, "flow")                              # idempotent
    assert reg.lookup(6, G4, 40000, R4, 80) is None and len(reg) == 0


def test_each_flow_expires_at_its_own_deadline() -> None:
    reg, clock, counters = registry()
    o = Owner()
    a = reg.add(o, 6, G4, 1, R4, 80, "syn", 10)
    reg.add(o, 17, ANY[4], 2, ANY[4], 0, "udp", 180)
    reg.add(o, 17, ANY[4], 3, ANY[4], 0, "forwarded", None)
    clock.t += 9
    assert reg.expire() == 0
    reg.touch(a, 7200)                                 # established now: idle timeout
    clock.t += 100
    assert reg.expire() == 0 and o.expired == []
    clock.t += 80                                      # 189 s: the UDP flow is due
    assert reg.expire() == 1 and o.expired == ["udp"]
    clock.t += 7200
    assert reg.expire() == 1 and o.expired == ["udp", "syn"]
    clock.t += 10 ** 6
    assert reg.expire() == 0 and reg.objects() == ["forwarded"]
    assert counters["flows_expired"] == 2


def test_an_owner_removing_its_expired_flow_is_harmless() -> None:
    reg, clock, _ = registry()

    class Closing(Owner):
        def flow_expired(self, flow) -> None:
            super().flow_expired(flow)
            reg.remove(flow[0], flow)  # what the engines do in their close path

    o = Closing()
    idx = reg.add(o, 1, ANY[4], 9, ANY[4], 0, None, 60)
    reg.flows[idx] = (o, (idx,))
    clock.t += 61
    assert reg.expire() == 1 and len(reg) == 0
    assert reg.add(o, 1, ANY[4], 9, ANY[4], 0, "new", 60) == idx  # the index is free again
