"""Flow table: 5-tuple (+ protocol, side) -> flow index, pure-Python twin.

Same API, same hash values, same indices and same statistics as the Cython
kernel ``passtcore._flowtable``; this module is the fallback when the extension
is not built and the oracle of the differential tests.  It also holds the two
pieces both backends share: the :class:`FlowTableFull` exception (one class,
so ``except passtcore.flowtable.FlowTableFull`` works with either backend) and
the coercion of batch arrays.

Design
------
*Keys.*  A flow is ``(proto, side, saddr, sport, daddr, dport)``.  Addresses
are 4 or 16 bytes; IPv4 is stored as the IPv4-mapped ``::ffff:a.b.c.d`` so one
table serves both families.  The canonical key is 38 bytes::

    proto | side | sport (BE16) | dport (BE16) | saddr (16) | daddr (16)

*Hash.*  Standard SipHash-2-4 (Aumasson & Bernstein) of those 38 bytes, keyed
with 16 random bytes drawn once per process from ``os.urandom`` (an explicit
key can be given for tests and differential runs).  A guest or a remote host
choosing ports and addresses therefore cannot aim many flows at one bucket
(hash flooding).

*Buckets.*  Open addressing with linear probing over a power-of-two bucket
array of at least ``capacity / 0.7`` slots (passt's 70 % load), so a probe
always reaches an empty bucket.  A bucket holds a flow index (-1 = empty);
the kernel also keeps the low 32 bits of the key's hash in it (home bucket
for the shifts, cheap filter before comparing keys).

*Deletion: backward shift*, as in passt's flow table, not tombstones.  After
emptying a bucket, the entries that follow it in the same cluster are moved
back into the hole whenever the hole lies between their home bucket and their
current bucket.  No trace of the removed key is left: lookups still stop at
the first empty bucket and stay correct,
probe lengths do not degrade with churn (a long-lived daemon adds and removes
flows all the time, and tombstones would need periodic rehashing, a latency
spike on the packet path), and there is no tombstone state to get wrong.
The cost, moving a few entries on removal, is bounded by the cluster length,
which the 70 % load keeps short.

*Flow indices.*  The table hands out indices ``0..capacity-1`` from a free
stack (first ``0, 1, 2, ...``; a freed index is reused first), so the daemon can
keep per-flow state in parallel arrays indexed by them.  Each index carries
its key and a last-seen timestamp; :meth:`FlowTable.expire` removes the flows
idle for at least ``timeout``.  Capacity is fixed at creation:
:class:`FlowTableFull` when no index is left.  Inserting a key that is
already present raises ``KeyError`` and changes nothing.

*This twin* keeps, next to the buckets, a dict from the keys present to
their indices: hits, removals and duplicate checks then skip the pure-Python
SipHash (tens of microseconds), while the bucket walk still runs so the probe
statistics equal the kernel's.  Only misses and inserts hash.
"""
from __future__ import annotations

import operator
import os
from typing import TYPE_CHECKING, Any

# numpy is imported inside the functions that use it, not here: the daemon
# loads every kernel module but never calls an array API, and numpy would
# cost it ~15 MB resident (tests/daemon/test_idle_memory.py).
if TYPE_CHECKING:  # pragma: no cover - annotations only
    import numpy as np

__all__ = [
    "FlowTable",
    "FlowTableFull",
    "siphash24",
    "flow_key_bytes",
    "normalise_addr",
    "coerce_batch",
    "bucket_count",
    "PROCESS_KEY",
    "MAX_CAPACITY",
]

#: Per-process SipHash key, used by every table created without an explicit key.
PROCESS_KEY: bytes = os.urandom(16)

#: Largest capacity accepted (indices and buckets are 32-bit in the kernel).
MAX_CAPACITY = 1 << 28

KEY_LEN = 38
_M64 = 0xFFFFFFFFFFFFFFFF
_M32 = 0xFFFFFFFF
_V4MAPPED = b"\x00" * 10 + b"\xff\xff"


class FlowTableFull(RuntimeError):
    """No free flow index is left: the table holds ``capacity`` flows."""


def bucket_count(capacity: int) -> int:
    """Buckets for ``capacity`` flows: a power of two, load at most 70 %."""
    if isinstance(capacity, bool):
        raise TypeError("capacity must be an int")
    capacity = operator.index(capacity)  # TypeError for floats, strings
    if not 1 <= capacity <= MAX_CAPACITY:
        raise ValueError(f"capacity must be in 1..{MAX_CAPACITY}, got {capacity}")
    need = (capacity * 10 + 6) // 7 + 1  # > capacity / 0.7: always an empty bucket
    n = 2
    while n < need:
        n <<= 1
    return n


def _rounds(v0: int, v1: int, v2: int, v3: int, n: int) -> tuple[int, int, int, int]:
    for _ in range(n):
        v0 = (v0 + v1) & _M64
        v1 = ((v1 << 13) | (v1 >> 51)) & _M64
        v1 ^= v0
        v0 = ((v0 << 32) | (v0 >> 32)) & _M64
        v2 = (v2 + v3) & _M64
        v3 = ((v3 << 16) | (v3 >> 48)) & _M64
        v3 ^= v2
        v0 = (v0 + v3) & _M64
        v3 = ((v3 << 21) | (v3 >> 43)) & _M64
        v3 ^= v0
        v2 = (v2 + v1) & _M64
        v1 = ((v1 << 17) | (v1 >> 47)) & _M64
        v1 ^= v2
        v2 = ((v2 << 32) | (v2 >> 32)) & _M64
    return v0, v1, v2, v3


def _siphash(k0: int, k1: int, data: bytes) -> int:
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    n = len(data)
    end = n - (n % 8)
    for off in range(0, end, 8):
        m = int.from_bytes(data[off : off + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, 2)
        v0 ^= m
    # last block: the remaining bytes, length in the top byte
    m = int.from_bytes(data[end:], "little") | ((n & 0xFF) << 56)
    v3 ^= m
    v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, 2)
    v0 ^= m
    v2 ^= 0xFF
    v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, 4)
    return v0 ^ v1 ^ v2 ^ v3


def _split_key(key: bytes) -> tuple[int, int]:
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError("SipHash key must be bytes")
    key = bytes(key)
    if len(key) != 16:
        raise ValueError(f"SipHash key must be 16 bytes, got {len(key)}")
    return int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")


def siphash24(key: bytes, data: bytes) -> int:
    """Standard SipHash-2-4 of ``data`` under the 16-byte ``key``, as a 64-bit int."""
    k0, k1 = _split_key(key)
    return _siphash(k0, k1, bytes(data))


def normalise_addr(addr: bytes) -> bytes:
    """4-byte IPv4 -> 16-byte ``::ffff:a.b.c.d``; 16-byte addresses unchanged."""
    if type(addr) is not bytes:
        addr = memoryview(addr).tobytes()  # bytes-like only: bytes(4) would be 4 zeros
    if len(addr) == 16:
        return addr
    if len(addr) == 4:
        return _V4MAPPED + addr
    raise ValueError(f"address must be 4 or 16 bytes, got {len(addr)}")


def flow_key_bytes(proto: int, side: int, saddr: bytes, sport: int, daddr: bytes, dport: int) -> bytes:
    """The canonical 38-byte key that is hashed and compared."""
    if not 0 <= proto <= 255:
        raise ValueError(f"proto must be in 0..255, got {proto}")
    if not 0 <= side <= 255:
        raise ValueError(f"side must be in 0..255, got {side}")
    if not 0 <= sport <= 65535:
        raise ValueError(f"sport must be in 0..65535, got {sport}")
    if not 0 <= dport <= 65535:
        raise ValueError(f"dport must be in 0..65535, got {dport}")
    return (
        bytes((proto, side, sport >> 8, sport & 0xFF, dport >> 8, dport & 0xFF))
        + normalise_addr(saddr)
        + normalise_addr(daddr)
    )


def _decode_key(k: bytes) -> tuple[int, int, bytes, int, bytes, int]:
    return (k[0], k[1], k[6:22], (k[2] << 8) | k[3], k[22:38], (k[4] << 8) | k[5])


def _coerce_small(a: Any, n: int | None, dtype: type, hi: int, name: str) -> np.ndarray:
    import numpy as np  # on first use (see the imports above)
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} rows, expected {n}")
    if arr.dtype != dtype:
        if arr.dtype.kind not in "iub":
            raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
        # range check before narrowing: wrapping would silently alias keys
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > hi):
            raise ValueError(f"{name} values must be in 0..{hi}")
        arr = arr.astype(dtype)
    return np.ascontiguousarray(arr)


def _coerce_addrs(a: Any, n: int, name: str) -> np.ndarray:
    import numpy as np  # on first use (see the imports above)
    arr = np.asarray(a)
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] not in (4, 16):
        raise ValueError(f"{name} must have shape ({n}, 16) or ({n}, 4), got {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype.kind not in "iub":
            raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
            raise ValueError(f"{name} values must be in 0..255")
        arr = arr.astype(np.uint8)
    if arr.shape[1] == 4:
        out = np.zeros((n, 16), dtype=np.uint8)
        out[:, 10:12] = 0xFF
        out[:, 12:] = arr
        return out
    return np.ascontiguousarray(arr)


def coerce_batch(
    protos: Any, sides: Any, saddrs: Any, sports: Any, daddrs: Any, dports: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check and convert batch key arrays to contiguous uint8/uint8/(N,16)/uint16/(N,16)/uint16.

    ``(N, 4)`` address arrays are IPv4 and become ``::ffff:a.b.c.d`` rows.
    Arrays already in the right dtype are used without a copy.
    """
    import numpy as np  # on first use (see the imports above)
    p = _coerce_small(protos, None, np.uint8, 255, "protos")
    n = p.shape[0]
    s = _coerce_small(sides, n, np.uint8, 255, "sides")
    sp = _coerce_small(sports, n, np.uint16, 65535, "sports")
    dp = _coerce_small(dports, n, np.uint16, 65535, "dports")
    return p, s, _coerce_addrs(saddrs, n, "saddrs"), sp, _coerce_addrs(daddrs, n, "daddrs"), dp


class FlowTable:
    """Fixed-capacity flow table: key -> flow index in ``0..capacity-1``."""

    def __init__(self, capacity: int, key: bytes | None = None) -> None:
        self._nbuckets = bucket_count(capacity)
        self._mask = self._nbuckets - 1
        capacity = self._capacity = operator.index(capacity)
        self._k0, self._k1 = _split_key(PROCESS_KEY if key is None else key)
        self._key = PROCESS_KEY if key is None else bytes(key)
        self._bidx: list[int] = [-1] * self._nbuckets
        self._keys: list[bytes | None] = [None] * capacity
        self._hash: list[int] = [0] * capacity  # low 32 bits of each flow's hash
        self._seen: list[float] = [0.0] * capacity
        self._free: list[int] = list(range(capacity - 1, -1, -1))  # pop() -> 0, 1, ...
        # Shortcut, not the table: key -> index of the flows present, so hits and
        # removals skip the (slow, pure-Python) SipHash; probe counts stay exact.
        self._index: dict[bytes, int] = {}
        self._n = 0
        self._inserts = self._removes = self._expired = 0
        self._lookups = self._hits = self._probe_total = self._probe_max = 0

    # -- properties -------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def buckets(self) -> int:
        return self._nbuckets

    @property
    def key(self) -> bytes:
        """The 16-byte SipHash key of this table."""
        return self._key

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"<FlowTable {self._n}/{self._capacity} flows, {self._nbuckets} buckets>"

    # -- internals --------------------------------------------------------
    def _find(self, k: bytes, h: int) -> tuple[int, int, int]:
        """(bucket, flow index or -1, probes) for key ``k`` with hash ``h``."""
        mask = self._mask
        b = h & mask
        bidx = self._bidx
        keys = self._keys
        probes = 1
        while True:
            i = bidx[b]
            if i < 0:
                return b, -1, probes
            if keys[i] == k:
                return b, i, probes
            b = (b + 1) & mask
            probes += 1

    def _lookup_key(self, k: bytes) -> int:
        i = self._index.get(k, -1)
        if i >= 0:  # the probe the kernel does: home bucket to the entry's bucket
            mask = self._mask
            b = self._hash[i] & mask
            probes = 1
            while self._bidx[b] != i:
                b = (b + 1) & mask
                probes += 1
        else:
            _, i, probes = self._find(k, _siphash(self._k0, self._k1, k) & _M32)
        self._lookups += 1
        self._probe_total += probes
        if probes > self._probe_max:
            self._probe_max = probes
        if i >= 0:
            self._hits += 1
        return i

    def _insert_key(self, k: bytes, now: float) -> int:
        if k in self._index:
            raise KeyError(f"flow already in the table at index {self._index[k]}")
        h = _siphash(self._k0, self._k1, k) & _M32
        b, i, _ = self._find(k, h)
        if not self._free:
            raise FlowTableFull(f"flow table full ({self._capacity} flows)")
        i = self._free.pop()
        self._bidx[b] = i
        self._keys[i] = k
        self._index[k] = i
        self._hash[i] = h
        self._seen[i] = float(now)
        self._n += 1
        self._inserts += 1
        return i

    def _unlink(self, i: int) -> None:
        """Remove flow ``i`` (in use): backward-shift its bucket's cluster, free ``i``."""
        mask = self._mask
        bidx = self._bidx
        b = self._hash[i] & mask
        while bidx[b] != i:
            b = (b + 1) & mask
        j = b
        while True:
            j = (j + 1) & mask
            e = bidx[j]
            if e < 0:
                break
            home = self._hash[e] & mask
            # move e back if the hole lies between its home bucket and j
            if ((j - home) & mask) >= ((j - b) & mask):
                bidx[b] = e
                b = j
        bidx[b] = -1
        del self._index[self._keys[i]]  # type: ignore[index]
        self._keys[i] = None
        self._free.append(i)
        self._n -= 1
        self._removes += 1

    def _check_index(self, i: int) -> int:
        i = operator.index(i)
        if not 0 <= i < self._capacity:
            raise IndexError(f"flow index {i} out of range 0..{self._capacity - 1}")
        if self._keys[i] is None:
            raise KeyError(f"flow index {i} is not in use")
        return i

    # -- single-key API ---------------------------------------------------
    def insert(
        self, proto: int, side: int, saddr: bytes, sport: int, daddr: bytes, dport: int, now: float = 0.0
    ) -> int:
        """Add a flow, return its index. ``KeyError`` if present, :class:`FlowTableFull` if full."""
        return self._insert_key(flow_key_bytes(proto, side, saddr, sport, daddr, dport), now)

    def lookup(self, proto: int, side: int, saddr: bytes, sport: int, daddr: bytes, dport: int) -> int:
        """Index of the flow, or -1."""
        return self._lookup_key(flow_key_bytes(proto, side, saddr, sport, daddr, dport))

    def remove(self, proto: int, side: int, saddr: bytes, sport: int, daddr: bytes, dport: int) -> int:
        """Remove the flow; return its (now free) index, or -1 if absent."""
        i = self._index.get(flow_key_bytes(proto, side, saddr, sport, daddr, dport), -1)
        if i >= 0:
            self._unlink(i)
        return i

    def remove_index(self, i: int) -> None:
        """Remove flow ``i``: ``IndexError`` out of range, ``KeyError`` if not in use."""
        self._unlink(self._check_index(i))

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, tuple) or len(key) != 6:
            raise TypeError("key must be a (proto, side, saddr, sport, daddr, dport) tuple")
        return self.lookup(*key) >= 0

    def in_use(self, i: int) -> bool:
        i = operator.index(i)
        return 0 <= i < self._capacity and self._keys[i] is not None

    def key_of(self, i: int) -> tuple[int, int, bytes, int, bytes, int]:
        """``(proto, side, saddr16, sport, daddr16, dport)`` of flow ``i``."""
        k = self._keys[self._check_index(i)]
        assert k is not None
        return _decode_key(k)

    def touch(self, i: int, now: float) -> None:
        self._seen[self._check_index(i)] = float(now)

    def last_seen(self, i: int) -> float:
        return self._seen[self._check_index(i)]

    def hash_of(self, proto: int, side: int, saddr: bytes, sport: int, daddr: bytes, dport: int) -> int:
        """64-bit SipHash-2-4 of the key under this table's key."""
        return _siphash(self._k0, self._k1, flow_key_bytes(proto, side, saddr, sport, daddr, dport))

    def bucket_of(self, proto: int, side: int, saddr: bytes, sport: int, daddr: bytes, dport: int) -> int:
        """Home bucket of the key (0..buckets-1)."""
        return self.hash_of(proto, side, saddr, sport, daddr, dport) & self._mask

    def indices(self) -> np.ndarray:
        """Indices in use, ascending, as int64."""
        import numpy as np  # on first use (see the imports above)
        return np.array([i for i, k in enumerate(self._keys) if k is not None], dtype=np.int64)

    def expire(self, now: float, timeout: float) -> np.ndarray:
        """Remove flows idle for at least ``timeout`` (``now - last_seen >= timeout``).

        Returns their indices, ascending, as int64.
        """
        import numpy as np  # on first use (see the imports above)
        now = float(now)
        timeout = float(timeout)
        gone = [i for i, k in enumerate(self._keys) if k is not None and now - self._seen[i] >= timeout]
        for i in gone:
            self._unlink(i)
        self._expired += len(gone)
        return np.array(gone, dtype=np.int64)

    def expire_into(self, now: float, timeout: float, out: Any) -> int:
        """Like :meth:`expire`, into a caller's writable int64 buffer (``array('q')``,
        numpy): removes at most ``len(out)`` flows, lowest indices first, and returns
        how many. Needs no numpy (the daemon's expiry path)."""
        now = float(now)
        timeout = float(timeout)
        view = memoryview(out).cast("B").cast("q")
        gone = []
        for i, k in enumerate(self._keys):
            if len(gone) == len(view):
                break
            if k is not None and now - self._seen[i] >= timeout:
                gone.append(i)
        for c, i in enumerate(gone):
            self._unlink(i)
            view[c] = i
        self._expired += len(gone)
        return len(gone)

    def clear(self) -> None:
        """Remove every flow (counters are kept; indices restart at 0)."""
        self._removes += self._n
        self._bidx = [-1] * self._nbuckets
        self._keys = [None] * self._capacity
        self._index = {}
        self._free = list(range(self._capacity - 1, -1, -1))
        self._n = 0

    # -- batch API --------------------------------------------------------
    def lookup_batch(
        self, protos: Any, sides: Any, saddrs: Any, sports: Any, daddrs: Any, dports: Any, out: Any = None
    ) -> np.ndarray:
        """Look up N keys given as arrays (addresses as (N, 16) uint8 rows); int64 indices, -1 = absent."""
        p, s, sa, sp, da, dp = coerce_batch(protos, sides, saddrs, sports, daddrs, dports)
        res = _out_array(out, p.shape[0])
        for r in range(p.shape[0]):
            k = (
                bytes((int(p[r]), int(s[r]), int(sp[r]) >> 8, int(sp[r]) & 0xFF, int(dp[r]) >> 8, int(dp[r]) & 0xFF))
                + sa[r].tobytes()
                + da[r].tobytes()
            )
            res[r] = self._lookup_key(k)
        return res

    def insert_batch(
        self, protos: Any, sides: Any, saddrs: Any, sports: Any, daddrs: Any, dports: Any, now: float = 0.0
    ) -> np.ndarray:
        """Insert N keys in order; int64 indices, -1 for a key already present (left unchanged).

        :class:`FlowTableFull` when the table fills up: the rows before stay inserted.
        """
        import numpy as np  # on first use (see the imports above)
        p, s, sa, sp, da, dp = coerce_batch(protos, sides, saddrs, sports, daddrs, dports)
        res = np.empty(p.shape[0], dtype=np.int64)
        for r in range(p.shape[0]):
            k = (
                bytes((int(p[r]), int(s[r]), int(sp[r]) >> 8, int(sp[r]) & 0xFF, int(dp[r]) >> 8, int(dp[r]) & 0xFF))
                + sa[r].tobytes()
                + da[r].tobytes()
            )
            try:
                res[r] = self._insert_key(k, now)
            except KeyError:
                res[r] = -1
            except FlowTableFull:
                raise FlowTableFull(
                    f"flow table full ({self._capacity} flows) at batch row {r}; rows before it were inserted"
                ) from None
        return res

    # -- introspection ----------------------------------------------------
    def _displacements(self) -> list[int]:
        mask = self._mask
        return [(b - (self._hash[i] & mask)) & mask for b, i in enumerate(self._bidx) if i >= 0]

    def stats(self) -> dict[str, Any]:
        """Counters: entries, capacity, buckets, inserts, removes, expired, lookups, hits, misses,
        probe_total / probe_max (buckets examined per lookup), max_displacement (current
        distance of the farthest entry from its home bucket), load_factor."""
        disp = self._displacements()
        return {
            "entries": self._n,
            "capacity": self._capacity,
            "buckets": self._nbuckets,
            "inserts": self._inserts,
            "removes": self._removes,
            "expired": self._expired,
            "lookups": self._lookups,
            "hits": self._hits,
            "misses": self._lookups - self._hits,
            "probe_total": self._probe_total,
            "probe_max": self._probe_max,
            "max_displacement": max(disp) if disp else 0,
            "load_factor": self._n / self._nbuckets,
        }

    def check_invariants(self) -> None:
        """Raise ``AssertionError`` if the table is inconsistent (for tests)."""
        mask = self._mask
        seen = set()
        for b, i in enumerate(self._bidx):
            if i < 0:
                continue
            if not 0 <= i < self._capacity or self._keys[i] is None or i in seen:
                raise AssertionError(f"bucket {b}: bad flow index {i}")
            seen.add(i)
            k = self._keys[i]
            if self._index.get(k) != i:  # type: ignore[arg-type]
                raise AssertionError(f"flow {i}: missing from the key index")
            h = _siphash(self._k0, self._k1, k) & _M32
            if h != self._hash[i]:
                raise AssertionError(f"flow {i}: stale hash")
            c = h & mask
            while c != b:  # every bucket from home to b must be occupied
                if self._bidx[c] < 0:
                    raise AssertionError(f"flow {i}: empty bucket {c} on its probe path")
                c = (c + 1) & mask
        if len(seen) != self._n or len(self._index) != self._n or self._n + len(self._free) != self._capacity:
            raise AssertionError("entry count / free list mismatch")
        if set(self._free) & seen or len(set(self._free)) != len(self._free):
            raise AssertionError("free list overlaps entries")


def _out_array(out: Any, n: int) -> np.ndarray:
    import numpy as np  # on first use (see the imports above)
    if out is None:
        return np.empty(n, dtype=np.int64)
    if not isinstance(out, np.ndarray) or out.dtype != np.int64 or out.shape != (n,):
        raise ValueError(f"out must be an int64 array of shape ({n},)")
    return out
