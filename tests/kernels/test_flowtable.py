"""Flow table kernel: SipHash vectors, table semantics, collisions, expiry, batches,
and differential runs of the Cython kernel against the pure twin (hypothesis
stateful testing with a dict model).

Every behaviour test runs on each available backend (``ft`` fixture); the
differential tests need the Cython extension and are skipped without it or
under ``PASSTCORE_PURE=1`` (then only the twin is exercised, as
``passtcore.flowtable``).
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from types import ModuleType

import numpy as np
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import passtcore
from passtcore_py import flowtable as twin

PURE_ONLY = os.environ.get("PASSTCORE_PURE", "") not in ("", "0")


def _native() -> ModuleType | None:
    if PURE_ONLY:
        return None
    try:
        return importlib.import_module("passtcore._flowtable")
    except ImportError:
        return None


NATIVE = _native()
NO_NATIVE = "PASSTCORE_PURE=1: Cython kernels not tested" if PURE_ONLY else "passtcore._flowtable not built"
needs_native = pytest.mark.skipif(NATIVE is None, reason=NO_NATIVE)


@pytest.fixture(params=["python", "cython"])
def ft(request: pytest.FixtureRequest) -> ModuleType:
    if request.param == "python":
        return twin
    if NATIVE is None:
        pytest.skip(NO_NATIVE)
    return NATIVE


KEY = bytes(range(16))
V4A = bytes([192, 0, 2, 1])
V4B = bytes([198, 51, 100, 7])
V6A = bytes.fromhex("20010db8000000000000000000000001")
V6B = bytes.fromhex("20010db8000000000000000000000002")
MAPPED = b"\x00" * 10 + b"\xff\xff"

# SipHash-2-4 reference vectors (paper, Appendix / reference test.c vectors_sip64):
# key 00 01 .. 0f, message 00 01 .. (n-1), for n = 0..63.
SIPHASH_VECTORS = [
    0x726FDB47DD0E0E31, 0x74F839C593DC67FD, 0x0D6C8009D9A94F5A, 0x85676696D7FB7E2D,
    0xCF2794E0277187B7, 0x18765564CD99A68D, 0xCBC9466E58FEE3CE, 0xAB0200F58B01D137,
    0x93F5F5799A932462, 0x9E0082DF0BA9E4B0, 0x7A5DBBC594DDB9F3, 0xF4B32F46226BADA7,
    0x751E8FBC860EE5FB, 0x14EA5627C0843D90, 0xF723CA908E7AF2EE, 0xA129CA6149BE45E5,
    0x3F2ACC7F57C29BDB, 0x699AE9F52CBE4794, 0x4BC1B3F0968DD39C, 0xBB6DC91DA77961BD,
    0xBED65CF21AA2EE98, 0xD0F2CBB02E3B67C7, 0x93536795E3A33E88, 0xA80C038CCD5CCEC8,
    0xB8AD50C6F649AF94, 0xBCE192DE8A85B8EA, 0x17D835B85BBB15F3, 0x2F2E6163076BCFAD,
    0xDE4DAAACA71DC9A5, 0xA6A2506687956571, 0xAD87A3535C49EF28, 0x32D892FAD841C342,
    0x7127512F72F27CCE, 0xA7F32346F95978E3, 0x12E0B01ABB051238, 0x15E034D40FA197AE,
    0x314DFFBE0815A3B4, 0x027990F029623981, 0xCADCD4E59EF40C4D, 0x9ABFD8766A33735C,
    0x0E3EA96B5304A7D0, 0xAD0C42D6FC585992, 0x187306C89BC215A9, 0xD4A60ABCF3792B95,
    0xF935451DE4F21DF2, 0xA9538F0419755787, 0xDB9ACDDFF56CA510, 0xD06C98CD5C0975EB,
    0xE612A3CB9ECBA951, 0xC766E62CFCADAF96, 0xEE64435A9752FE72, 0xA192D576B245165A,
    0x0A8787BF8ECB74B2, 0x81B3E73D20B49B6F, 0x7FA8220BA3B2ECEA, 0x245731C13CA42499,
    0xB78DBFAF3A8D83BD, 0xEA1AD565322A1A0B, 0x60E61C23A3795013, 0x6606D7E446282B93,
    0x6CA4ECB15C5F91E1, 0x9F626DA15C9625F3, 0xE51B38608EF25F57, 0x958A324CEB064572,
]


def flow(sport: int, dport: int = 80, proto: int = 6, side: int = 0, saddr: bytes = V4A, daddr: bytes = V4B):
    return (proto, side, saddr, sport, daddr, dport)


def colliding(t, count: int, bucket: int | None = None, start: int = 1) -> list[tuple]:
    """``count`` keys with the same home bucket in table ``t`` (found by trying source ports)."""
    found: dict[int, list[tuple]] = {}
    for sport in range(start, 65536):
        k = flow(sport)
        b = t.bucket_of(*k)
        if bucket is not None and b != bucket:
            continue
        found.setdefault(b, []).append(k)
        if len(found[b]) == count:
            return found[b]
    raise AssertionError("not enough colliding keys")  # pragma: no cover


# -- SipHash --------------------------------------------------------------


def test_siphash_reference_vectors(ft: ModuleType) -> None:
    assert len(SIPHASH_VECTORS) == 64
    msg = bytes(range(64))
    for n, want in enumerate(SIPHASH_VECTORS):
        assert ft.siphash24(KEY, msg[:n]) == want, n


def test_siphash_rejects_bad_key(ft: ModuleType) -> None:
    with pytest.raises(ValueError):
        ft.siphash24(b"short", b"")
    with pytest.raises(TypeError):
        ft.siphash24(12, b"")


def test_table_hash_is_siphash_of_canonical_key(ft: ModuleType) -> None:
    t = ft.FlowTable(16, key=KEY)
    for k in (flow(1234), flow(5, 53, 17, 1, V6A, V6B), flow(0, 65535, 58, 255, V4A, V6B)):
        kb = ft.flow_key_bytes(*k)
        assert len(kb) == 38
        assert t.hash_of(*k) == ft.siphash24(KEY, kb) == twin.siphash24(KEY, kb)
        assert t.bucket_of(*k) == t.hash_of(*k) & (t.buckets - 1)
    assert ft.flow_key_bytes(6, 1, V4A, 0x1234, V6B, 0xABCD) == (
        bytes([6, 1, 0x12, 0x34, 0xAB, 0xCD]) + MAPPED + V4A + V6B
    )


@needs_native
def test_siphash_native_matches_twin_on_random_inputs() -> None:
    rng = np.random.default_rng(7)
    for n in range(0, 100):
        key = rng.bytes(16)
        data = rng.bytes(n)
        assert NATIVE.siphash24(key, data) == twin.siphash24(key, data)


# -- keys and construction -----------------------------------------------------


def test_process_key_is_random_and_shared(ft: ModuleType) -> None:
    a, b = ft.FlowTable(8), ft.FlowTable(8)
    assert a.key == b.key == ft.PROCESS_KEY
    assert len(a.key) == 16
    assert ft.FlowTable(8, key=KEY).key == KEY
    code = "from passtcore_py import flowtable; print(flowtable.PROCESS_KEY.hex())"
    keys = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
        for _ in range(2)
    }
    assert len(keys) == 2  # os.urandom per process


def test_bad_construction(ft: ModuleType) -> None:
    with pytest.raises(ValueError):
        ft.FlowTable(0)
    with pytest.raises(ValueError):
        ft.FlowTable(ft.MAX_CAPACITY + 1)
    with pytest.raises(TypeError):
        ft.FlowTable(1.5)
    with pytest.raises(ValueError):
        ft.FlowTable(8, key=b"0123")
    with pytest.raises(TypeError):
        ft.FlowTable(8, key=16)  # bytes(16) would be an all-zero key
    assert ft.FlowTable(8, key=bytearray(KEY)).key == KEY
    assert ft.FlowTable(np.int64(8)).capacity == 8


def test_buckets_power_of_two_and_load(ft: ModuleType) -> None:
    for cap in (1, 2, 7, 8, 100, 1000, 131071):
        nb = ft.FlowTable(cap).buckets
        assert nb & (nb - 1) == 0
        assert cap / nb <= 0.7 and nb > cap


def test_ipv4_normalised_to_mapped(ft: ModuleType) -> None:
    t = ft.FlowTable(8, key=KEY)
    i = t.insert(*flow(1000))
    assert t.lookup(17, 0, MAPPED + V4A, 1000, MAPPED + V4B, 80) == -1
    assert t.lookup(6, 0, MAPPED + V4A, 1000, MAPPED + V4B, 80) == i
    assert t.lookup(6, 0, bytearray(V4A), 1000, memoryview(V4B), 80) == i
    assert t.lookup(6, 0, np.frombuffer(MAPPED + V4A, np.uint8), 1000, V4B, 80) == i
    assert t.key_of(i) == (6, 0, MAPPED + V4A, 1000, MAPPED + V4B, 80)
    assert (6, 0, MAPPED + V4A, 1000, V4B, 80) in t


def test_every_key_field_matters(ft: ModuleType) -> None:
    t = ft.FlowTable(16, key=KEY)
    base = (6, 0, V6A, 1000, V6B, 80)
    i = t.insert(*base)
    variants = [(17, 0, V6A, 1000, V6B, 80), (6, 1, V6A, 1000, V6B, 80), (6, 0, V6B, 1000, V6B, 80),
                (6, 0, V6A, 1001, V6B, 80), (6, 0, V6A, 1000, V6A, 80), (6, 0, V6A, 1000, V6B, 81),
                (6, 0, V6B, 80, V6A, 1000)]
    for v in variants:
        assert t.lookup(*v) == -1
        assert t.insert(*v) != i
    assert len(t) == 1 + len(variants)


@pytest.mark.parametrize(
    "args, exc",
    [
        ((6, 0, b"\x01\x02\x03", 1, V4B, 2), ValueError),
        ((6, 0, V4A, 1, b"\x00" * 17, 2), ValueError),
        ((6, 0, V4A, -1, V4B, 2), ValueError),
        ((6, 0, V4A, 65536, V4B, 2), ValueError),
        ((6, 0, V4A, 1, V4B, 70000), ValueError),
        ((256, 0, V4A, 1, V4B, 2), ValueError),
        ((6, -1, V4A, 1, V4B, 2), ValueError),
        ((6, 0, 4, 1, V4B, 2), TypeError),
        ((6, 0, "192.0.2.1", 1, V4B, 2), TypeError),
        ((6, 0, V4A, "1", V4B, 2), TypeError),
    ],
)
def test_bad_keys_rejected_without_change(ft: ModuleType, args: tuple, exc: type) -> None:
    t = ft.FlowTable(8, key=KEY)
    t.insert(*flow(1))
    before = t.stats()
    for op in (t.insert, t.lookup, t.remove):
        with pytest.raises(exc):
            op(*args)
    assert t.stats() == before


# -- insert / lookup / remove ------------------------------------------------------


def test_indices_handed_out_in_order_and_reused_lifo(ft: ModuleType) -> None:
    t = ft.FlowTable(10, key=KEY)
    idx = [t.insert(*flow(p)) for p in range(1, 6)]
    assert idx == [0, 1, 2, 3, 4]
    assert t.remove(*flow(2)) == 1
    assert t.remove(*flow(4)) == 3
    assert t.remove(*flow(4)) == -1
    assert t.insert(*flow(100)) == 3
    assert t.insert(*flow(101)) == 1
    assert t.insert(*flow(102)) == 5
    assert sorted(t.indices().tolist()) == t.indices().tolist() == [0, 1, 2, 3, 4, 5]
    for p, i in ((1, 0), (3, 2), (5, 4), (100, 3), (101, 1), (102, 5)):
        assert t.lookup(*flow(p)) == i
        assert t.key_of(i)[3] == p
    assert t.lookup(*flow(2)) == -1
    t.check_invariants()


def test_duplicate_insert_is_keyerror_and_changes_nothing(ft: ModuleType) -> None:
    t = ft.FlowTable(4, key=KEY)
    i = t.insert(*flow(7), now=5.0)
    before = t.stats()
    with pytest.raises(KeyError):
        t.insert(*flow(7), now=9.0)
    assert t.stats() == before
    assert t.last_seen(i) == 5.0
    assert len(t) == 1


def test_full_table(ft: ModuleType) -> None:
    cap = 5
    t = ft.FlowTable(cap, key=KEY)
    for p in range(cap):
        assert t.insert(*flow(p)) == p
    with pytest.raises(ft.FlowTableFull):
        t.insert(*flow(999))
    assert issubclass(ft.FlowTableFull, RuntimeError)
    assert ft.FlowTableFull is twin.FlowTableFull  # one class for both backends
    with pytest.raises(KeyError):  # duplicate beats full
        t.insert(*flow(3))
    assert len(t) == cap and t.lookup(*flow(999)) == -1
    t.remove_index(2)
    assert t.insert(*flow(999)) == 2
    assert t.lookup(*flow(999)) == 2
    with pytest.raises(ft.FlowTableFull):
        t.insert(*flow(1000))
    t.check_invariants()


def test_capacity_one(ft: ModuleType) -> None:
    t = ft.FlowTable(1, key=KEY)
    assert t.insert(*flow(1)) == 0
    with pytest.raises(ft.FlowTableFull):
        t.insert(*flow(2))
    assert t.remove(*flow(1)) == 0
    assert t.insert(*flow(2)) == 0
    assert t.lookup(*flow(1)) == -1


def test_remove_index_and_index_errors(ft: ModuleType) -> None:
    t = ft.FlowTable(4, key=KEY)
    i = t.insert(*flow(1))
    for bad in (-1, 4, 100):
        for op in (t.remove_index, t.key_of, t.last_seen):
            with pytest.raises(IndexError):
                op(bad)
        with pytest.raises(IndexError):
            t.touch(bad, 1.0)
        assert not t.in_use(bad)
    for op in (t.remove_index, t.key_of, t.last_seen):
        with pytest.raises(KeyError):
            op(i + 1)  # never used
        with pytest.raises(TypeError):
            op(0.5)
    assert t.in_use(i)
    t.remove_index(np.int64(i))
    assert not t.in_use(i)
    with pytest.raises(KeyError):
        t.remove_index(i)
    assert len(t) == 0 and t.lookup(*flow(1)) == -1


def test_contains_requires_tuple(ft: ModuleType) -> None:
    t = ft.FlowTable(4, key=KEY)
    t.insert(*flow(1))
    assert flow(1) in t and flow(2) not in t
    with pytest.raises(TypeError):
        (6, 0) in t  # noqa: B015


def test_clear(ft: ModuleType) -> None:
    t = ft.FlowTable(4, key=KEY)
    for p in range(4):
        t.insert(*flow(p))
    t.clear()
    assert len(t) == 0 and t.lookup(*flow(1)) == -1
    assert t.insert(*flow(3)) == 0
    assert t.stats()["removes"] == 4
    t.check_invariants()


# -- probe chains and deletion ---------------------------------------------------


def test_deletion_in_middle_of_cluster_keeps_chain(ft: ModuleType) -> None:
    t = ft.FlowTable(12, key=KEY)  # 32 buckets
    keys = colliding(t, 6)
    home = t.bucket_of(*keys[0])
    for k in keys:
        t.insert(*k)
    assert t.stats()["max_displacement"] == 5
    # a key whose home is inside the cluster, displaced past it
    neighbour = next(flow(p, 443) for p in range(1, 65536) if t.bucket_of(*flow(p, 443)) == (home + 2) % t.buckets)
    t.insert(*neighbour)
    assert t.stats()["max_displacement"] == 5
    t.check_invariants()
    removed: set[tuple] = set()
    for victim in (keys[2], keys[0], keys[4]):
        assert t.remove(*victim) >= 0
        removed.add(victim)
        t.check_invariants()
        for k in keys + [neighbour]:
            assert (t.lookup(*k) >= 0) == (k not in removed), k
    # backward shift: the cluster closed up, nothing left far from home
    assert t.stats()["max_displacement"] <= 3
    for k in (keys[2], keys[0], keys[4]):
        t.insert(*k)
    for k in keys + [neighbour]:
        assert t.lookup(*k) >= 0
    t.check_invariants()


def test_cluster_wrapping_around_bucket_array(ft: ModuleType) -> None:
    t = ft.FlowTable(10, key=KEY)  # 16 buckets
    last = t.buckets - 1
    keys = colliding(t, 4, bucket=last)
    for k in keys:
        t.insert(*k)
    t.check_invariants()
    # the cluster now occupies buckets last, 0, 1, 2: a key homed at 0 goes after it
    zero = next(flow(p, 22) for p in range(1, 65536) if t.bucket_of(*flow(p, 22)) == 0)
    t.insert(*zero)
    t.remove(*keys[0])
    t.check_invariants()
    for k in keys[1:] + [zero]:
        assert t.lookup(*k) >= 0
    assert t.lookup(*keys[0]) == -1
    assert t.stats()["max_displacement"] <= 3


def test_probe_statistics(ft: ModuleType) -> None:
    t = ft.FlowTable(12, key=KEY)
    keys = colliding(t, 4)
    for k in keys:
        t.insert(*k)
    for n, k in enumerate(keys, 1):
        t.lookup(*k)
    s = t.stats()
    assert s["lookups"] == 4 and s["hits"] == 4 and s["misses"] == 0
    assert s["probe_total"] == 1 + 2 + 3 + 4 and s["probe_max"] == 4
    assert s["inserts"] == 4 and s["entries"] == 4 and s["capacity"] == 12
    t.lookup(*flow(60000, 1))
    s = t.stats()
    assert s["misses"] == 1 and s["lookups"] == 5


def test_colliding_keys_for_one_key_spread_under_another(ft: ModuleType) -> None:
    """Keys an attacker aimed at one bucket under key A are spread under a random key."""
    a = ft.FlowTable(1000, key=KEY)
    keys = colliding(a, 8)
    b = ft.FlowTable(1000, key=os.urandom(16))
    assert len({b.bucket_of(*k) for k in keys}) > 1
    for k in keys:
        b.insert(*k)
    assert b.stats()["max_displacement"] < 7


# -- timestamps and expiry ---------------------------------------------------------


def test_touch_and_expire(ft: ModuleType) -> None:
    t = ft.FlowTable(8, key=KEY)
    for p in range(6):
        t.insert(*flow(p), now=float(p))
    t.touch(0, 10.0)
    assert t.last_seen(0) == 10.0 and t.last_seen(3) == 3.0
    gone = t.expire(now=12.0, timeout=10.0)  # idle >= 10 s: flows seen at <= 2.0
    assert gone.dtype == np.int64 and gone.tolist() == [1, 2]
    assert len(t) == 4 and t.stats()["expired"] == 2 and t.stats()["removes"] == 2
    assert t.lookup(*flow(1)) == -1 and t.lookup(*flow(0)) == 0
    assert t.expire(12.0, 10.0).tolist() == []
    assert t.expire(100.0, 0.0).tolist() == [0, 3, 4, 5]
    assert len(t) == 0 and t.indices().tolist() == []
    t.check_invariants()
    assert t.insert(*flow(9), now=1.0) == 5  # LIFO: the last freed index


def test_expire_into_a_caller_buffer(ft: ModuleType) -> None:
    """expire_into: the daemon's numpy-free expiry, bounded by the buffer's length."""
    from array import array

    t = ft.FlowTable(16, key=KEY)
    for p in range(8):
        t.insert(*flow(p), now=float(p))
    out = array("q", bytes(8 * 3))
    assert t.expire_into(10.0, 5.0, out) == 3 and out.tolist() == [0, 1, 2]  # 6 were due
    assert len(t) == 5 and t.lookup(*flow(2)) == -1 and t.lookup(*flow(3)) == 3
    assert t.expire_into(10.0, 5.0, out) == 3 and out.tolist() == [3, 4, 5]
    assert t.expire_into(10.0, 5.0, out) == 0
    big = np.zeros(16, dtype=np.int64)
    assert t.expire_into(100.0, 0.0, big) == 2 and big[:2].tolist() == [6, 7]
    assert t.expire_into(100.0, 0.0, array("q")) == 0
    assert t.stats()["expired"] == 8
    t.check_invariants()


def test_expire_with_collisions_keeps_survivors_reachable(ft: ModuleType) -> None:
    t = ft.FlowTable(12, key=KEY)
    keys = colliding(t, 7)
    for n, k in enumerate(keys):
        t.insert(*k, now=float(n % 2))
    gone = t.expire(1.0, 1.0)
    assert gone.tolist() == [0, 2, 4, 6]
    for n, k in enumerate(keys):
        assert (t.lookup(*k) >= 0) == (n % 2 == 1)
    t.check_invariants()


# -- batches ---------------------------------------------------------------------


def random_keys(rng: np.random.Generator, n: int, v4: bool = False):
    protos = rng.choice(np.array([6, 17, 1, 58], dtype=np.uint8), n)
    sides = rng.integers(0, 2, n, dtype=np.uint8)
    width = 4 if v4 else 16
    saddrs = rng.integers(0, 256, (n, width), dtype=np.uint8)
    daddrs = rng.integers(0, 256, (n, width), dtype=np.uint8)
    sports = rng.integers(0, 65536, n, dtype=np.uint16)
    dports = rng.integers(0, 65536, n, dtype=np.uint16)
    return protos, sides, saddrs, sports, daddrs, dports


def row(keys, r: int) -> tuple:
    p, s, sa, sp, da, dp = keys
    return (int(p[r]), int(s[r]), sa[r].tobytes(), int(sp[r]), da[r].tobytes(), int(dp[r]))


@pytest.mark.parametrize("v4", [False, True])
def test_lookup_batch_matches_single(ft: ModuleType, v4: bool) -> None:
    rng = np.random.default_rng(1)
    t = ft.FlowTable(300, key=KEY)
    keys = random_keys(rng, 400, v4)
    for r in range(0, 400, 2):
        t.insert(*row(keys, r))
    res = t.lookup_batch(*keys)
    assert res.dtype == np.int64 and res.shape == (400,)
    assert res.tolist() == [t.lookup(*row(keys, r)) for r in range(400)]
    assert (res[1::2] == -1).all() and (res[0::2] == np.arange(200)).all()
    out = np.full(400, 7, dtype=np.int64)
    assert t.lookup_batch(*keys, out=out) is out and (out == res).all()
    assert t.stats()["lookups"] == 1200


def test_lookup_batch_accepts_other_int_dtypes(ft: ModuleType) -> None:
    t = ft.FlowTable(8, key=KEY)
    i = t.insert(17, 1, V6A, 5353, V6B, 53)
    res = t.lookup_batch([17, 17], [1, 0], [list(V6A), list(V6A)], [5353, 5353], np.array([list(V6B)] * 2), [53, 53])
    assert res.tolist() == [i, -1]
    empty = t.lookup_batch(np.zeros(0, np.uint8), np.zeros(0, np.uint8), np.zeros((0, 16), np.uint8),
                           np.zeros(0, np.uint16), np.zeros((0, 16), np.uint8), np.zeros(0, np.uint16))
    assert empty.shape == (0,)


@pytest.mark.parametrize(
    "change, exc",
    [
        ({"sports": np.array([70000, 1])}, ValueError),
        ({"protos": np.array([6, 300])}, ValueError),
        ({"sides": np.array([-1, 0])}, ValueError),
        ({"saddrs": np.zeros((2, 8), np.uint8)}, ValueError),
        ({"daddrs": np.zeros((3, 16), np.uint8)}, ValueError),
        ({"dports": np.array([1, 2, 3])}, ValueError),
        ({"dports": np.array([1.0, 2.0])}, TypeError),
        ({"protos": np.zeros((2, 1), np.uint8)}, ValueError),
    ],
)
def test_batch_bad_arrays(ft: ModuleType, change: dict, exc: type) -> None:
    t = ft.FlowTable(8, key=KEY)
    args = {"protos": np.array([6, 6], np.uint8), "sides": np.zeros(2, np.uint8),
            "saddrs": np.zeros((2, 16), np.uint8), "sports": np.array([1, 2], np.uint16),
            "daddrs": np.zeros((2, 16), np.uint8), "dports": np.array([1, 2], np.uint16)}
    args.update(change)
    for op in (t.lookup_batch, t.insert_batch):
        with pytest.raises(exc):
            op(**args)
    assert len(t) == 0 and t.stats()["lookups"] == 0
    with pytest.raises(ValueError):
        t.lookup_batch(np.array([6, 6], np.uint8), np.zeros(2, np.uint8), np.zeros((2, 16), np.uint8),
                       np.array([1, 2], np.uint16), np.zeros((2, 16), np.uint8), np.array([1, 2], np.uint16),
                       out=np.zeros(3, np.int64))


def test_insert_batch(ft: ModuleType) -> None:
    rng = np.random.default_rng(2)
    t = ft.FlowTable(50, key=KEY)
    keys = random_keys(rng, 30)
    dup = tuple(np.concatenate([a[:30], a[:5]]) for a in keys)
    res = t.insert_batch(*dup, now=3.0)
    assert res.tolist() == list(range(30)) + [-1] * 5
    assert t.last_seen(29) == 3.0
    assert t.lookup_batch(*keys).tolist() == list(range(30))
    more = random_keys(rng, 30)
    with pytest.raises(ft.FlowTableFull, match="row 20"):
        t.insert_batch(*more)
    assert len(t) == 50
    assert t.lookup_batch(*more).tolist() == list(range(30, 50)) + [-1] * 10
    t.check_invariants()


# -- backend selection ---------------------------------------------------------------


def _all_native() -> bool:
    """Whether passtcore._backend can pick Cython: every kernel extension loads, no PURE."""
    if PURE_ONLY:
        return False
    try:
        for name in passtcore.KERNELS:
            importlib.import_module(f"passtcore._{name}")
    except ImportError:
        return False
    return True


def test_backend_module() -> None:
    """passtcore.flowtable is the Cython kernel when all extensions load, else the twin."""
    mod = passtcore.flowtable
    if _all_native():
        assert passtcore.backend == "cython" and mod is NATIVE
    else:
        assert passtcore.backend == "python" and mod is twin
    t = mod.FlowTable(4)
    assert t.insert(*flow(1)) == 0 and t.lookup(*flow(1)) == 0


# -- differential: Cython vs twin ----------------------------------------------------


@needs_native
def test_same_public_api() -> None:
    def public(obj: object) -> set[str]:
        return {n for n in dir(obj) if not n.startswith("_")}

    assert public(NATIVE.FlowTable) == public(twin.FlowTable)
    assert set(NATIVE.__all__) == set(twin.__all__)
    for name in ("FlowTableFull", "coerce_batch", "flow_key_bytes", "normalise_addr", "bucket_count", "PROCESS_KEY"):
        assert getattr(NATIVE, name) is getattr(twin, name)


@needs_native
def test_differential_random_operations() -> None:
    rng = np.random.default_rng(3)
    a, b = NATIVE.FlowTable(200, key=KEY), twin.FlowTable(200, key=KEY)
    pool = [row(random_keys(rng, 1, v4=bool(n % 2)), 0) for n in range(300)]
    now = 0.0
    for step in range(3000):
        op = rng.integers(0, 6)
        k = pool[rng.integers(0, len(pool))]
        if op <= 1:
            ra = rb = None
            try:
                ra = a.insert(*k, now=now)
            except (KeyError, NATIVE.FlowTableFull) as e:
                ra = type(e)
            try:
                rb = b.insert(*k, now=now)
            except (KeyError, twin.FlowTableFull) as e:
                rb = type(e)
            assert ra == rb
        elif op == 2:
            assert a.lookup(*k) == b.lookup(*k)
        elif op == 3:
            assert a.remove(*k) == b.remove(*k)
        elif op == 4:
            now += float(rng.integers(0, 3))
            i = a.lookup(*k)
            assert b.lookup(*k) == i
            if i >= 0:
                a.touch(i, now)
                b.touch(i, now)
        elif step % 50 == 0:
            assert a.expire(now, 20.0).tolist() == b.expire(now, 20.0).tolist()
    assert a.stats() == b.stats()
    assert a.indices().tolist() == b.indices().tolist()
    for i in a.indices().tolist():
        assert a.key_of(i) == b.key_of(i) and a.last_seen(i) == b.last_seen(i)
    a.check_invariants()
    b.check_invariants()


@needs_native
def test_native_full_at_70_percent_load_with_churn() -> None:
    """A 131072-bucket table filled to capacity (load 0.7), half removed and refilled, vs a dict."""
    cap = 91749
    t = NATIVE.FlowTable(cap)
    assert t.buckets == 131072
    rng = np.random.default_rng(4)
    keys = random_keys(rng, cap)
    idx = t.insert_batch(*keys, now=1.0)
    assert (idx == np.arange(cap)).all()
    model = {row(keys, r): r for r in range(cap)}
    assert len(model) == cap
    with pytest.raises(NATIVE.FlowTableFull):
        t.insert(*flow(1, 2, saddr=V6A))
    gone = rng.choice(cap, cap // 2, replace=False)
    for i in gone.tolist():
        t.remove_index(i)
    fresh = random_keys(rng, cap // 2)
    new_idx = t.insert_batch(*fresh, now=2.0)
    assert sorted(new_idx.tolist()) == sorted(gone.tolist())
    for r in gone.tolist():
        del model[row(keys, r)]
    for r, i in enumerate(new_idx.tolist()):
        model[row(fresh, r)] = i
    assert t.lookup_batch(*keys).tolist() == [model.get(row(keys, r), -1) for r in range(cap)]
    before = t.stats()
    assert t.lookup_batch(*fresh).tolist() == new_idx.tolist()
    s = t.stats()
    assert s["entries"] == cap and s["load_factor"] == pytest.approx(0.7, abs=1e-3)
    # Linear probing (Knuth): finding a key costs what inserting it did, (1 + 1/(1-a)^2) / 2
    # at load a; averaged over a = 0.35..0.7 (when these keys went in) that is 3.06 buckets.
    # A weak hash (clustered keys) would be far above.
    mean = (s["probe_total"] - before["probe_total"]) / (s["lookups"] - before["lookups"])
    assert 2.5 < mean < 3.6
    t.check_invariants()
    assert t.expire(2.0, 0.5).tolist() == sorted(set(range(cap)) - set(new_idx.tolist()))
    assert len(t) == cap // 2
    t.check_invariants()


ADDRS = [V4A, V4B, V6A, MAPPED + V4B]
key_strategy = st.tuples(
    st.sampled_from([6, 17]), st.integers(0, 1), st.sampled_from(ADDRS), st.integers(1, 4),
    st.sampled_from(ADDRS), st.sampled_from([80, 443]),
)


class FlowTableMachine(RuleBasedStateMachine):
    """Twin (and Cython, when built) against a dict model, on a small, crowded table."""

    CAPACITY = 10

    @initialize(key=st.binary(min_size=16, max_size=16))
    def setup(self, key: bytes) -> None:
        self.tables = [twin.FlowTable(self.CAPACITY, key=key)]
        if NATIVE is not None:
            self.tables.append(NATIVE.FlowTable(self.CAPACITY, key=key))
        self.model: dict[tuple, int] = {}
        self.seen: dict[int, float] = {}
        self.now = 0.0

    @staticmethod
    def norm(k: tuple) -> tuple:
        return (k[0], k[1], twin.normalise_addr(k[2]), k[3], twin.normalise_addr(k[4]), k[5])

    def all_same(self, f):
        results = []
        for t in self.tables:
            try:
                results.append(("ok", f(t)))
            except (KeyError, twin.FlowTableFull) as e:
                results.append(("raise", type(e)))
        assert all(r == results[0] for r in results), results
        return results[0]

    @rule(k=key_strategy)
    def insert(self, k: tuple) -> None:
        kind, val = self.all_same(lambda t: t.insert(*k, now=self.now))
        nk = self.norm(k)
        if nk in self.model:
            assert (kind, val) == ("raise", KeyError)
        elif len(self.model) == self.CAPACITY:
            assert (kind, val) == ("raise", twin.FlowTableFull)
            event("insert into a full table")
        else:
            assert kind == "ok" and 0 <= val < self.CAPACITY and val not in self.model.values()
            self.model[nk] = val
            self.seen[val] = self.now

    @rule(k=key_strategy)
    def lookup(self, k: tuple) -> None:
        _, val = self.all_same(lambda t: t.lookup(*k))
        assert val == self.model.get(self.norm(k), -1)

    @rule(k=key_strategy)
    def remove(self, k: tuple) -> None:
        _, val = self.all_same(lambda t: t.remove(*k))
        assert val == self.model.pop(self.norm(k), -1)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove_index(self, data: st.DataObject) -> None:
        k = data.draw(st.sampled_from(sorted(self.model)))
        i = self.model.pop(k)
        self.all_same(lambda t: t.remove_index(i))

    @precondition(lambda self: self.model)
    @rule(data=st.data(), dt=st.integers(0, 3))
    def touch(self, data: st.DataObject, dt: int) -> None:
        self.now += dt
        i = data.draw(st.sampled_from(sorted(self.model.values())))
        self.all_same(lambda t: t.touch(i, self.now))
        self.seen[i] = self.now

    @rule(dt=st.integers(0, 5), timeout=st.integers(0, 6))
    def expire(self, dt: int, timeout: int) -> None:
        self.now += dt
        _, gone = self.all_same(lambda t: t.expire(self.now, float(timeout)).tolist())
        want = sorted(i for i in self.model.values() if self.now - self.seen[i] >= timeout)
        assert gone == want
        self.model = {k: i for k, i in self.model.items() if i not in gone}

    @staticmethod
    def arrays(ks: list) -> list:
        cols = [np.array([k[c] for k in ks], dtype=np.int64) for c in (0, 1, 3, 5)]
        addr = [np.array([list(twin.normalise_addr(k[c])) for k in ks], dtype=np.uint8).reshape(len(ks), 16)
                for c in (2, 4)]
        return [cols[0], cols[1], addr[0], cols[2], addr[1], cols[3]]

    @rule(ks=st.lists(key_strategy, min_size=0, max_size=6))
    def lookup_batch(self, ks: list) -> None:
        a = self.arrays(ks)
        _, val = self.all_same(lambda t: t.lookup_batch(*a).tolist())
        assert val == [self.model.get(self.norm(k), -1) for k in ks]

    @rule(ks=st.lists(key_strategy, min_size=0, max_size=5))
    def insert_batch(self, ks: list) -> None:
        a = self.arrays(ks)
        kind, val = self.all_same(lambda t: t.insert_batch(*a, now=self.now).tolist())
        for r, k in enumerate(ks):
            nk = self.norm(k)
            if nk in self.model:
                assert kind == "raise" or val[r] == -1
                continue
            if len(self.model) == self.CAPACITY:
                assert (kind, val) == ("raise", twin.FlowTableFull)
                event("insert_batch into a full table")
                return
            _, i = self.all_same(lambda t: t.lookup(*k))  # indices of rows before a FlowTableFull
            assert kind == "raise" or val[r] == i
            assert 0 <= i < self.CAPACITY and i not in self.model.values()
            self.model[nk] = i
            self.seen[i] = self.now
        assert kind == "ok"

    @invariant()
    def consistent(self) -> None:
        if not hasattr(self, "tables"):
            return
        stats = [t.stats() for t in self.tables]
        assert all(s == stats[0] for s in stats)
        if stats[0]["max_displacement"] >= 2:
            event("cluster of 3 or more")
        assert stats[0]["entries"] == len(self.model)
        for t in self.tables:
            assert len(t) == len(self.model)
            for k, i in self.model.items():
                assert t.key_of(i) == k and t.last_seen(i) == self.seen[i]
            t.check_invariants()


FlowTableMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestFlowTableStateful = FlowTableMachine.TestCase
