"""Flow table lookups per second: Cython (single and batch) vs the pure twin vs a dict.

One benchmark group per table size, ``flow-lookup-1k`` / ``-100k`` / ``-1m``
(tables holding that many flows).  In every round each variant looks up the
same ``LOOKUPS`` keys (random flows of the table, 1 in 8 absent), so mean times
compare directly; ``extra_info["frames"]`` = keys per round, so the summary's
frames/s column reads as lookups/s.

* ``cython``         ``FlowTable.lookup(p, s, saddr, sport, daddr, dport)`` in a Python loop
* ``cython_batch``   one ``FlowTable.lookup_batch`` over numpy arrays
* ``python``         the pure twin's ``lookup`` (1k and 100k only: it hashes in Python)
* ``python_batch``   the pure twin's ``lookup_batch`` (1k only)
* ``stdlib``         ``dict.get((p, s, saddr, sport, daddr, dport), -1)`` in the same loop:
                     the baseline, keyed by tuples of the same Python objects

Groups ``flow-churn-<size>``: insert then remove up to ``LOOKUPS`` new flows
(single calls) in a table already holding the size's flows, against a dict
plus a free list of indices (what the table replaces).

Addresses are 16-byte ``bytes`` (IPv6 or IPv4-mapped), as the table stores them.
The 1M tables need about 70 MB (Cython) and 300 MB (dict of tuples).

Run: ``.venv/bin/python -m pytest benches/bench_flowtable.py``
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from passtcore_py import flowtable as twin

LOOKUPS = 4096
SIZES = {"1k": 1_000, "100k": 100_000, "1m": 1_000_000}
KEY = bytes(range(16))


def _native() -> ModuleType:
    try:
        return importlib.import_module("passtcore._flowtable")
    except ImportError as exc:
        pytest.skip(f"passtcore._flowtable not built: {exc}")


class Fixture:
    """Flows of one size, the query keys in both shapes, and the tables built lazily."""

    def __init__(self, n: int) -> None:
        rng = np.random.default_rng(n)
        self.n = n
        self.protos = rng.choice(np.array([6, 17], dtype=np.uint8), n)
        self.sides = rng.integers(0, 2, n, dtype=np.uint8)
        self.saddrs = rng.integers(0, 256, (n, 16), dtype=np.uint8)
        self.saddrs[: n // 2, :12] = np.frombuffer(b"\x00" * 10 + b"\xff\xff", np.uint8)  # half IPv4
        self.daddrs = rng.integers(0, 256, (n, 16), dtype=np.uint8)
        self.sports = rng.integers(1024, 65536, n, dtype=np.uint16)
        self.dports = rng.integers(1, 1024, n, dtype=np.uint16)
        # queries: random flows of the table, every 8th one altered to miss
        q = rng.integers(0, n, LOOKUPS)
        self.q = [a[q].copy() for a in (self.protos, self.sides, self.saddrs, self.sports, self.daddrs, self.dports)]
        self.q[3][::8] = 0  # source port 0 is never in the table
        self.qtuples = [
            (int(self.q[0][r]), int(self.q[1][r]), self.q[2][r].tobytes(), int(self.q[3][r]),
             self.q[4][r].tobytes(), int(self.q[5][r]))
            for r in range(LOOKUPS)
        ]
        self._tables: dict[str, Any] = {}

    def arrays(self) -> tuple:
        return self.protos, self.sides, self.saddrs, self.sports, self.daddrs, self.dports

    def table(self, kind: str) -> Any:
        if kind not in self._tables:
            if kind == "dict":
                sa, da = self.saddrs, self.daddrs
                self._tables[kind] = {
                    (int(p), int(s), sa[i].tobytes(), int(sp), da[i].tobytes(), int(dp)): i
                    for i, (p, s, sp, dp) in enumerate(
                        zip(self.protos.tolist(), self.sides.tolist(), self.sports.tolist(), self.dports.tolist())
                    )
                }
            else:
                mod = twin if kind == "python" else _native()
                t = mod.FlowTable(self.n, key=KEY)
                res = t.insert_batch(*self.arrays())
                assert (res >= 0).all(), "random keys collided"
                self._tables[kind] = t
        return self._tables[kind]

    def expected(self) -> list[int]:
        d = self.table("dict")
        return [d.get(k, -1) for k in self.qtuples]


_FIXTURES: dict[str, Fixture] = {}


@pytest.fixture(params=list(SIZES), scope="module")
def flows(request: pytest.FixtureRequest) -> Any:
    # one size alive at a time keeps the 1M run's memory bounded
    _FIXTURES.clear()
    _FIXTURES[request.param] = Fixture(SIZES[request.param])
    yield request.param, _FIXTURES[request.param]
    _FIXTURES.clear()


def _setup(benchmark: Any, label: str) -> None:
    benchmark.group = f"flow-lookup-{label}"
    benchmark.extra_info["frames"] = LOOKUPS
    benchmark.extra_info["lookups"] = LOOKUPS


def _per_key(lookup: Callable[..., int], keys: list[tuple]) -> Callable[[], list[int]]:
    """One ``lookup`` call per key, as the daemon does per frame."""
    def run() -> list[int]:
        return [lookup(p, s, sa, sp, da, dp) for p, s, sa, sp, da, dp in keys]
    return run


def test_flow_lookup_cython(benchmark: Any, flows: Any) -> None:
    label, f = flows
    run = _per_key(f.table("cython").lookup, f.qtuples)
    _setup(benchmark, label)
    assert benchmark(run) == f.expected()


def test_flow_lookup_cython_batch(benchmark: Any, flows: Any) -> None:
    label, f = flows
    t = f.table("cython")
    out = np.empty(LOOKUPS, dtype=np.int64)
    q = f.q

    def run() -> np.ndarray:
        return t.lookup_batch(q[0], q[1], q[2], q[3], q[4], q[5], out=out)

    _setup(benchmark, label)
    assert benchmark(run).tolist() == f.expected()


def test_flow_lookup_stdlib(benchmark: Any, flows: Any) -> None:
    label, f = flows
    get = f.table("dict").get
    keys = f.qtuples

    def run() -> list[int]:
        return [get((p, s, sa, sp, da, dp), -1) for p, s, sa, sp, da, dp in keys]

    _setup(benchmark, label)
    assert benchmark(run) == f.expected()


def test_flow_lookup_python(benchmark: Any, flows: Any) -> None:
    label, f = flows
    if f.n > 100_000:
        pytest.skip("pure twin measured at 1k and 100k only (1M inserts in Python take minutes)")
    run = _per_key(f.table("python").lookup, f.qtuples)
    _setup(benchmark, label)
    assert benchmark.pedantic(run, rounds=3, iterations=1) == f.expected()


def test_flow_lookup_python_batch(benchmark: Any, flows: Any) -> None:
    label, f = flows
    if f.n > 1_000:
        pytest.skip("pure twin batch measured at 1k only")
    t = f.table("python")
    q = f.q
    _setup(benchmark, label)
    res = benchmark.pedantic(lambda: t.lookup_batch(*q), rounds=3, iterations=1)
    assert res.tolist() == f.expected()


# -- churn: insert then remove LOOKUPS new flows, table already holding the size's flows ----


def _churn_keys(f: Fixture) -> list[tuple]:
    # source port 0 is never in the table: these flows are all new
    return list(dict.fromkeys((p, s, sa, 0, da, dp) for p, s, sa, sp, da, dp in f.qtuples))


def test_flow_churn_cython(benchmark: Any, flows: Any) -> None:
    label, f = flows
    new = _churn_keys(f)
    t = _native().FlowTable(f.n + len(new), key=KEY)
    t.insert_batch(*f.arrays())
    insert, remove = t.insert, t.remove

    def run() -> None:
        for k in new:
            insert(*k)
        for k in new:
            remove(*k)

    benchmark.group = f"flow-churn-{label}"
    benchmark.extra_info["frames"] = 2 * len(new)
    benchmark(run)
    assert len(t) == f.n and t.stats()["inserts"] == f.n + len(new) * (t.stats()["removes"] // len(new))


def test_flow_churn_stdlib(benchmark: Any, flows: Any) -> None:
    """The dict equivalent: a dict of tuples plus a free list of indices."""
    label, f = flows
    new = _churn_keys(f)
    d = f.table("dict")
    free = list(range(f.n + len(new) - 1, f.n - 1, -1))

    def run() -> None:
        for k in new:
            if k in d:
                raise KeyError(k)
            d[k] = free.pop()
        for k in new:
            free.append(d.pop(k))

    benchmark.group = f"flow-churn-{label}"
    benchmark.extra_info["frames"] = 2 * len(new)
    benchmark(run)
    assert len(d) == f.n
