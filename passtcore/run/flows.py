"""The flow registry: one flow table for TCP, UDP and ICMP, like passt's.

Every flow of every transport is one entry of one ``passtcore.flowtable``
table, keyed by ``(protocol, side, guest address, guest port or echo id,
remote address, remote port)`` (addresses in the table's 16-byte form), and
one object of the engine that owns it. This is the one place that

- **limits** flows (``--max-flows`` in all): ``add`` refuses at the limit and
  counts ``<name>_flows_refused``; a duplicate key is refused too;
- **counts** them (``<name>_flows`` opened, ``flows_expired``);
- **expires** them: each flow has a deadline, set by ``touch(idx, timeout)``
  (the engine chooses the timeout for the flow's state: a TCP handshake 10 s,
  an idle connection 7200 s, a UDP port 180 s, an echo id 60 s; ``None``
  never expires). The table stores ``now - (REFERENCE - timeout)`` as the
  flow's last-seen time, so one ``FlowTable.expire_into(now, REFERENCE)`` call, once a
  second, finds every flow past its deadline whatever its timeout; the owner
  is then told through its ``flow_expired(flow)``.

Engines keep their per-flow state in their own objects; the registry maps a
flow index to that object, so a lookup is one hash probe in the kernel plus one
dictionary access. The data-plane fast path (``passtcore.fastpath``) gets the
same index -> object map (``fast``: kept by ``add``/``remove``/``expire``), so
that it finds a frame's flow from C without asking Python.
"""
from __future__ import annotations

import logging
import os
from array import array
from typing import Any, Protocol

import passtcore

log = logging.getLogger("passtcore.run")

DEFAULT_MAX_FLOWS = 131072     # passt's FLOW_MAX
REFERENCE = 1 << 20            # s: longer than any flow timeout
NEVER = float("inf")
EXPIRE_BATCH = 4096            # flows taken out of the table per kernel call

V4MAPPED = bytes(10) + b"\xff\xff"
ANY = {4: bytes(4), 6: bytes(16)}

_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}


def fastpath_enabled() -> bool:
    """The data-plane fast path is on unless ``PASSTCORE_NO_FASTPATH=1`` (a
    benchmark's baseline: every frame through the Python engines)."""
    return os.environ.get("PASSTCORE_NO_FASTPATH", "") in ("", "0")


def to16(addr: bytes) -> bytes:
    """IPv4 as ``::ffff:a.b.c.d``, IPv6 unchanged (the flow-table key form)."""
    return V4MAPPED + addr if len(addr) == 4 else addr


class FlowOwner(Protocol):
    def flow_expired(self, flow: Any) -> None: ...


class FlowRegistry:
    """All flows of the daemon (see the module docstring)."""

    def __init__(self, capacity: int, counters: Any, clock: Any) -> None:
        self.capacity = capacity
        self.table = passtcore.flowtable.FlowTable(capacity)
        self.counters = counters
        self.clock = clock                      # () -> monotonic seconds
        self.flows: dict[int, tuple[FlowOwner, Any]] = {}
        self._expired = array("q", bytes(8 * min(EXPIRE_BATCH, capacity)))
        values = getattr(counters, "values", None)
        self.fast = passtcore.fastpath.FastPath(self.table, values if isinstance(values, dict)
                                                else None)

    def __len__(self) -> int:
        return len(self.flows)

    def add(self, owner: FlowOwner, proto: int, guest: bytes, gport: int, remote: bytes,
            rport: int, flow: Any, timeout: float | None, side: int = 0) -> int:
        """Register ``flow``; its index, or -1 if refused (at the limit, or a duplicate)."""
        name = _NAMES.get(proto, str(proto))
        try:
            idx = self.table.insert(proto, side, guest, gport, remote, rport)
        except (passtcore.flowtable.FlowTableFull, KeyError):
            self.counters.inc(f"{name}_flows_refused")
            return -1
        self.flows[idx] = (owner, flow)
        self.fast.attach(idx, flow)
        self.touch(idx, timeout)
        self.counters.inc(f"{name}_flows")
        return idx

    def lookup(self, proto: int, guest: bytes, gport: int, remote: bytes, rport: int,
               side: int = 0) -> Any:
        """The flow object for that key, or None."""
        # 4-byte addresses as they are: the kernel maps them to ::ffff:a.b.c.d itself
        idx = self.table.lookup(proto, side, guest, gport, remote, rport)
        if idx < 0:
            return None
        entry = self.flows.get(idx)
        return entry[1] if entry is not None else None

    def touch(self, idx: int, timeout: float | None) -> None:
        """The flow at ``idx`` expires ``timeout`` seconds from now (None: never)."""
        if timeout is None:
            self.table.touch(idx, NEVER)
        else:
            self.table.touch(idx, self.clock() - (REFERENCE - timeout))

    def remove(self, idx: int, flow: Any = None) -> None:
        """Forget the flow at ``idx`` (if it is ``flow``, when given); idempotent."""
        entry = self.flows.get(idx)
        if entry is None or (flow is not None and entry[1] is not flow):
            return
        del self.flows[idx]
        self.fast.detach(idx)
        self.table.remove_index(idx)

    def expire(self, now: float | None = None) -> int:
        """Remove every flow past its deadline and tell its owner; how many."""
        now = self.clock() if now is None else now
        out = self._expired
        total = 0
        for _ in range(self.capacity // len(out) + 1):  # bounded: every flow at most once
            n = self.table.expire_into(now, REFERENCE, out)
            for i in range(n):
                self.fast.detach(out[i])
                entry = self.flows.pop(out[i], None)
                if entry is not None:
                    entry[0].flow_expired(entry[1])
            total += n
            if n < len(out):
                break
        if total:
            self.counters.inc("flows_expired", total)
        return total

    def objects(self, owner: FlowOwner | None = None) -> list[Any]:
        """The flow objects (of one owner), e.g. to close them all."""
        return [f for o, f in self.flows.values() if owner is None or o is owner]

    def stats(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for idx in self.flows:
            name = _NAMES.get(self.table.key_of(idx)[0], "other")
            counts[name] = counts.get(name, 0) + 1
        return {"flows": len(self.flows), **counts}
