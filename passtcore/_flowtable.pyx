# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Flow table: 5-tuple (+ protocol, side) -> flow index, Cython kernel.

The algorithm, the key layout and every observable result (hash values,
indices handed out, statistics) are those of the pure twin
``passtcore_py.flowtable``, whose docstring explains the design: SipHash-2-4
over a canonical 38-byte key with a random per-process key, linear probing
over a power-of-two bucket array at most 70 % full, backward-shift deletion
(no tombstones), flow indices from a free stack, per-flow last-seen stamps.
The exception class and the batch-array coercion are shared with the twin.

Here the table lives in C arrays carved out of one anonymous ``mmap``
(unmapped in ``__dealloc__``).  Zero means "empty" everywhere, so a new table
needs no initialising writes and its pages become resident only as flows use
them (the daemon's 131072-flow tables cost next to nothing while idle):

* buckets: ``{uint32 tag, int32 ref}`` (8 bytes), ``ref`` = flow index + 1,
  0 = empty; ``tag`` is the low 32 bits of the key's hash, so the home bucket
  of an entry is ``tag & mask`` (needed when shifting back) and most
  non-matching entries are rejected without touching their key;
* per flow: the 38-byte key padded to five 64-bit words (compared word by
  word), the hash tag, the last-seen time and an in-use flag;
* the stack of freed indices, taken first; then the never-used indices in
  ascending order (``_fresh`` is the next one).  That is the twin's order: its
  free stack starts as all indices, 0 on top, and freed ones go on top.

Hashing, probing, removal, expiry and the batch loops are ``nogil`` C
functions with no Python object per key.  The methods call them with the GIL
held: the table is shared mutable state, and a Python thread must never see
it half-updated; releasing the GIL would buy nothing on the daemon's single
event-loop thread.  Batch lookups hash a chunk of rows first and prefetch
their buckets and keys, so the memory misses of a large table overlap.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from posix.mman cimport MAP_ANONYMOUS, MAP_FAILED, MAP_PRIVATE, PROT_READ, PROT_WRITE, mmap, munmap

import operator

from passtcore._kern cimport numpy_module

from passtcore_py.flowtable import (
    MAX_CAPACITY,
    PROCESS_KEY,
    FlowTableFull,
    bucket_count,
    coerce_batch,
    flow_key_bytes,
    normalise_addr,
)

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


cdef enum:
    CHUNK = 16          # batch rows hashed and prefetched together


cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define PASSTCORE_PREFETCH(p) __builtin_prefetch(p)
    #else
    #define PASSTCORE_PREFETCH(p) ((void)0)
    #endif
    """
    void PASSTCORE_PREFETCH(const void* p) noexcept nogil


cdef int put_addr(uint8_t* dst, object addr) except -1:
    """Copy a 4- or 16-byte address to 16 bytes at dst (IPv4 -> ::ffff:a.b.c.d)."""
    cdef const char* p
    cdef Py_ssize_t n
    if not PyBytes_CheckExact(addr):
        addr = memoryview(addr).tobytes()   # bytes-like only; ints are rejected
    p = PyBytes_AS_STRING(addr)
    n = PyBytes_GET_SIZE(addr)
    if n == 16:
        memcpy(dst, p, 16)
    elif n == 4:
        memset(dst, 0, 10)
        dst[10] = 0xff
        dst[11] = 0xff
        memcpy(dst + 12, p, 4)
    else:
        raise ValueError(f"address must be 4 or 16 bytes, got {n}")
    return 0


cdef int encode(FlowKey* k, int proto, int side, object saddr, int sport,
                object daddr, int dport) except -1:
    if <unsigned int>proto > 255:
        raise ValueError(f"proto must be in 0..255, got {proto}")
    if <unsigned int>side > 255:
        raise ValueError(f"side must be in 0..255, got {side}")
    if <unsigned int>sport > 65535:
        raise ValueError(f"sport must be in 0..65535, got {sport}")
    if <unsigned int>dport > 65535:
        raise ValueError(f"dport must be in 0..65535, got {dport}")
    key_fill(k, <uint8_t>proto, <uint8_t>side, <uint16_t>sport, <uint16_t>dport)
    put_addr(<uint8_t*>k + 6, saddr)
    put_addr(<uint8_t*>k + 22, daddr)
    return 0


cdef void split_key(bytes key, uint64_t* k0, uint64_t* k1) except *:
    if len(key) != 16:
        raise ValueError(f"SipHash key must be 16 bytes, got {len(key)}")
    k0[0] = int.from_bytes(key[:8], "little")
    k1[0] = int.from_bytes(key[8:], "little")


def siphash24(key, data) -> int:
    """Standard SipHash-2-4 of ``data`` under the 16-byte ``key``, as a 64-bit int."""
    cdef uint64_t k0, k1
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError("SipHash key must be bytes")
    split_key(bytes(key), &k0, &k1)
    cdef bytes b = data if PyBytes_CheckExact(data) else memoryview(data).tobytes()
    return siphash24_raw(k0, k1, <const uint8_t*>PyBytes_AS_STRING(b), <size_t>PyBytes_GET_SIZE(b))


cdef tuple key_rows(KeyRows* rows, protos, sides, saddrs, sports, daddrs, dports):
    """Coerce batch arrays (shared rules, see coerce_batch) and point rows at them.

    Returns the arrays: the caller keeps them alive while rows is used.
    """
    arrays = coerce_batch(protos, sides, saddrs, sports, daddrs, dports)
    cdef const uint8_t[::1] p = arrays[0]
    cdef const uint8_t[::1] s = arrays[1]
    cdef const uint8_t[:, ::1] sa = arrays[2]
    cdef const uint16_t[::1] sp = arrays[3]
    cdef const uint8_t[:, ::1] da = arrays[4]
    cdef const uint16_t[::1] dp = arrays[5]
    rows.n = p.shape[0]
    if rows.n == 0:
        return arrays
    rows.protos = &p[0]
    rows.sides = &s[0]
    rows.saddrs = &sa[0, 0]
    rows.sports = &sp[0]
    rows.daddrs = &da[0, 0]
    rows.dports = &dp[0]
    return arrays


cdef inline void row_key(const KeyRows* rows, Py_ssize_t r, FlowKey* k) noexcept nogil:
    key_fill(k, rows.protos[r], rows.sides[r], rows.sports[r], rows.dports[r])
    memcpy(<uint8_t*>k + 6, rows.saddrs + 16 * r, 16)
    memcpy(<uint8_t*>k + 22, rows.daddrs + 16 * r, 16)


cdef int64_t* i64_data(object arr) except NULL:
    """Data pointer of a contiguous writable int64 array (a dummy for empty ones)."""
    cdef int64_t[::1] v = arr
    if v.shape[0] == 0:
        return <int64_t*>&EMPTY_OUT
    return &v[0]


cdef int64_t EMPTY_OUT = 0


cdef object out_array(object out, Py_ssize_t n):
    np = numpy_module()
    if out is None:
        return np.empty(n, dtype=np.int64)
    if (not isinstance(out, np.ndarray) or out.dtype != np.int64 or out.shape != (n,)
            or not out.flags.c_contiguous or not out.flags.writeable):
        raise ValueError(f"out must be a writable contiguous int64 array of shape ({n},)")
    return out


cdef inline size_t align64(size_t n) noexcept nogil:
    return (n + 63) & ~(<size_t>63)


cdef class FlowTable:
    """Fixed-capacity flow table: key -> flow index in ``0..capacity-1``."""

    def __cinit__(self, capacity, key=None):
        cdef size_t o_keys, o_tag, o_seen, o_used, o_free
        cdef uint8_t* base
        nb = bucket_count(capacity)           # validates capacity
        self._capacity = capacity = operator.index(capacity)
        self._nbuckets = nb
        self._mask = self._nbuckets - 1
        if key is not None and not isinstance(key, (bytes, bytearray, memoryview)):
            raise TypeError("SipHash key must be bytes")
        self._key = PROCESS_KEY if key is None else bytes(key)
        split_key(self._key, &self._k0, &self._k1)
        cdef size_t cap = <size_t>self._capacity
        o_keys = align64(self._nbuckets * sizeof(Bucket))
        o_tag = o_keys + align64(cap * sizeof(FlowKey))
        o_seen = o_tag + align64(cap * sizeof(uint32_t))
        o_used = o_seen + align64(cap * sizeof(double))
        o_free = o_used + align64(cap)
        self._mem_len = o_free + align64(cap * sizeof(int32_t))
        # Anonymous pages read as zero and are backed only once written.
        self._mem = mmap(NULL, self._mem_len, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if self._mem == MAP_FAILED:
            self._mem = NULL
            raise MemoryError(f"cannot allocate a flow table of {capacity} flows")
        base = <uint8_t*>self._mem
        self._b = <Bucket*>base
        self._keys = <FlowKey*>(base + o_keys)
        self._tag = <uint32_t*>(base + o_tag)
        self._seen = <double*>(base + o_seen)
        self._used = base + o_used
        self._free = <int32_t*>(base + o_free)
        self._nfree = self._fresh = self._n = 0   # all zero: an empty table

    def __dealloc__(self):
        if self._mem != NULL:
            munmap(self._mem, self._mem_len)

    cdef void _reset(self) noexcept nogil:
        # Only indices below _fresh were ever used (their stamps and flags may be set).
        memset(self._b, 0, self._nbuckets * sizeof(Bucket))
        memset(self._used, 0, <size_t>self._fresh)
        memset(self._seen, 0, <size_t>self._fresh * sizeof(double))
        self._nfree = self._fresh = self._n = 0

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

    # -- nogil core (the probe itself is inline in _flowtable.pxd) -------
    cdef int32_t _insert(self, const FlowKey* k, double now) noexcept nogil:
        """Flow index; -1 if the key is present, -2 if the table is full."""
        cdef size_t b
        cdef uint64_t probes
        cdef uint32_t tag = self._hash(k)
        cdef int32_t i = self._find(k, tag, &b, &probes)
        if i >= 0:
            return -1
        if self._nfree:
            self._nfree -= 1
            i = self._free[self._nfree]
        elif self._fresh < self._capacity:
            i = <int32_t>self._fresh
            self._fresh += 1
        else:
            return -2
        self._b[b].tag = tag
        self._b[b].ref = i + 1
        self._keys[i] = k[0]
        self._tag[i] = tag
        self._seen[i] = now
        self._used[i] = 1
        self._n += 1
        self._inserts += 1
        return i

    cdef void _unlink(self, int32_t i) noexcept nogil:
        """Remove flow i (in use): backward-shift the rest of its cluster, free i."""
        cdef size_t mask = self._mask
        cdef size_t b = self._tag[i] & mask
        cdef size_t j, home
        while self._b[b].ref != i + 1:
            b = (b + 1) & mask
        j = b
        while True:
            j = (j + 1) & mask
            if self._b[j].ref == 0:
                break
            home = self._b[j].tag & mask
            # move it back if the hole lies between its home bucket and j
            if ((j - home) & mask) >= ((j - b) & mask):
                self._b[b] = self._b[j]
                b = j
        self._b[b].ref = 0
        self._b[b].tag = 0
        self._used[i] = 0
        self._free[self._nfree] = i
        self._nfree += 1
        self._n -= 1
        self._removes += 1

    cdef int32_t _check_index(self, i) except -1:
        cdef Py_ssize_t n = i
        if n < 0 or n >= self._capacity:
            raise IndexError(f"flow index {n} out of range 0..{self._capacity - 1}")
        if not self._used[n]:
            raise KeyError(f"flow index {n} is not in use")
        return <int32_t>n

    # -- single-key API ---------------------------------------------------
    def insert(self, int proto, int side, saddr, int sport, daddr, int dport, double now=0.0) -> int:
        """Add a flow, return its index. ``KeyError`` if present, :class:`FlowTableFull` if full."""
        cdef FlowKey k
        encode(&k, proto, side, saddr, sport, daddr, dport)
        cdef int32_t i = self._insert(&k, now)
        if i == -1:
            raise KeyError(f"flow already in the table at index {self._find_quiet(&k)}")
        if i == -2:
            raise FlowTableFull(f"flow table full ({self._capacity} flows)")
        return i

    cdef int32_t _find_quiet(self, const FlowKey* k) noexcept nogil:
        cdef size_t b
        cdef uint64_t probes
        return self._find(k, self._hash(k), &b, &probes)

    def lookup(self, int proto, int side, saddr, int sport, daddr, int dport) -> int:
        """Index of the flow, or -1."""
        cdef FlowKey k
        encode(&k, proto, side, saddr, sport, daddr, dport)
        return self._lookup(&k)

    def remove(self, int proto, int side, saddr, int sport, daddr, int dport) -> int:
        """Remove the flow; return its (now free) index, or -1 if absent."""
        cdef FlowKey k
        encode(&k, proto, side, saddr, sport, daddr, dport)
        cdef int32_t i = self._find_quiet(&k)
        if i >= 0:
            self._unlink(i)
        return i

    def remove_index(self, i) -> None:
        """Remove flow ``i``: ``IndexError`` out of range, ``KeyError`` if not in use."""
        self._unlink(self._check_index(i))

    def __contains__(self, key) -> bool:
        if not isinstance(key, tuple) or len(key) != 6:
            raise TypeError("key must be a (proto, side, saddr, sport, daddr, dport) tuple")
        return self.lookup(*key) >= 0

    def in_use(self, i) -> bool:
        cdef Py_ssize_t n = i
        return 0 <= n < self._capacity and self._used[n] != 0

    def key_of(self, i) -> tuple:
        """``(proto, side, saddr16, sport, daddr16, dport)`` of flow ``i``."""
        cdef int32_t n = self._check_index(i)
        cdef const uint8_t* p = <const uint8_t*>&self._keys[n]
        return (p[0], p[1], PyBytes_FromStringAndSize(<const char*>p + 6, 16),
                (p[2] << 8) | p[3], PyBytes_FromStringAndSize(<const char*>p + 22, 16),
                (p[4] << 8) | p[5])

    def touch(self, i, double now) -> None:
        self._seen[self._check_index(i)] = now

    def last_seen(self, i) -> float:
        return self._seen[self._check_index(i)]

    def hash_of(self, int proto, int side, saddr, int sport, daddr, int dport) -> int:
        """64-bit SipHash-2-4 of the key under this table's key."""
        cdef FlowKey k
        encode(&k, proto, side, saddr, sport, daddr, dport)
        return siphash24_raw(self._k0, self._k1, <const uint8_t*>&k, KEY_LEN)

    def bucket_of(self, int proto, int side, saddr, int sport, daddr, int dport) -> int:
        """Home bucket of the key (0..buckets-1)."""
        cdef FlowKey k
        encode(&k, proto, side, saddr, sport, daddr, dport)
        return self._hash(&k) & self._mask

    def indices(self):
        """Indices in use, ascending, as int64."""
        np = numpy_module()
        out = np.empty(self._n, dtype=np.int64)
        self._indices(i64_data(out))
        return out

    def expire(self, double now, double timeout):
        """Remove flows idle for at least ``timeout`` (``now - last_seen >= timeout``).

        Returns their indices, ascending, as int64.
        """
        cdef Py_ssize_t n0 = self._n
        np = numpy_module()
        out = np.empty(n0, dtype=np.int64)
        cdef Py_ssize_t c = self._expire(now, timeout, i64_data(out), n0)
        return out if c == n0 else out[:c].copy()

    def expire_into(self, double now, double timeout, out) -> int:
        """Like :meth:`expire`, into a caller's writable int64 buffer (``array('q')``,
        numpy): removes at most ``len(out)`` flows, lowest indices first, and returns
        how many. Needs no numpy (the daemon's expiry path)."""
        cdef int64_t[::1] v = out
        if v.shape[0] == 0:
            return 0
        return self._expire(now, timeout, &v[0], v.shape[0])

    def clear(self) -> None:
        """Remove every flow (counters are kept; indices restart at 0)."""
        self._removes += self._n
        self._reset()

    # -- batch API --------------------------------------------------------
    def lookup_batch(self, protos, sides, saddrs, sports, daddrs, dports, out=None):
        """Look up N keys given as arrays (addresses as (N, 16) uint8 rows); int64 indices, -1 = absent."""
        cdef KeyRows rows
        keep = key_rows(&rows, protos, sides, saddrs, sports, daddrs, dports)
        res = out_array(out, rows.n)
        self._lookup_rows(&rows, i64_data(res))
        return res

    def insert_batch(self, protos, sides, saddrs, sports, daddrs, dports, double now=0.0):
        """Insert N keys in order; int64 indices, -1 for a key already present (left unchanged).

        :class:`FlowTableFull` when the table fills up: the rows before stay inserted.
        """
        cdef KeyRows rows
        keep = key_rows(&rows, protos, sides, saddrs, sports, daddrs, dports)
        np = numpy_module()
        res = np.empty(rows.n, dtype=np.int64)
        cdef Py_ssize_t failed = self._insert_rows(&rows, now, i64_data(res))
        if failed >= 0:
            raise FlowTableFull(
                f"flow table full ({self._capacity} flows) at batch row {failed}; rows before it were inserted")
        return res

    # -- nogil loops behind the methods above ------------------------------
    # They run with the GIL held (no Python object is touched inside): the
    # table is shared mutable state, and keeping the GIL means another Python
    # thread can never observe or modify it half-updated.  Being nogil C
    # functions, they are also callable from nogil code.

    cdef void _indices(self, int64_t* o) noexcept nogil:
        cdef Py_ssize_t i, c = 0
        for i in range(self._fresh):
            if self._used[i]:
                o[c] = i
                c += 1

    cdef Py_ssize_t _expire(self, double now, double timeout, int64_t* o,
                            Py_ssize_t limit) noexcept nogil:
        cdef Py_ssize_t i, c = 0
        for i in range(self._fresh):
            if c == limit:
                break
            if self._used[i] and now - self._seen[i] >= timeout:
                o[c] = i
                c += 1
        for i in range(c):
            self._unlink(<int32_t>o[i])
        self._expired += c
        return c

    cdef void _lookup_rows(self, const KeyRows* rows, int64_t* o) noexcept nogil:
        # Rows go in chunks: hash them all and prefetch their home buckets,
        # prefetch the keys those buckets point to, then probe.  On tables
        # larger than the caches this overlaps the memory misses of a chunk.
        cdef FlowKey ks[CHUNK]
        cdef uint32_t tags[CHUNK]
        cdef Py_ssize_t c = 0, r, m
        cdef int32_t r_
        while c < rows.n:
            m = CHUNK if rows.n - c > CHUNK else rows.n - c
            for r in range(m):
                row_key(rows, c + r, &ks[r])
                tags[r] = self._hash(&ks[r])
                PASSTCORE_PREFETCH(&self._b[tags[r] & self._mask])
            for r in range(m):
                r_ = self._b[tags[r] & self._mask].ref
                if r_:
                    PASSTCORE_PREFETCH(&self._keys[r_ - 1])
            for r in range(m):
                o[c + r] = self._lookup_tagged(&ks[r], tags[r])
            c += m

    cdef Py_ssize_t _insert_rows(self, const KeyRows* rows, double now, int64_t* o) noexcept nogil:
        """Row at which the table was found full, or -1."""
        cdef FlowKey k
        cdef Py_ssize_t r
        cdef int32_t i
        for r in range(rows.n):
            row_key(rows, r, &k)
            i = self._insert(&k, now)
            if i == -2:
                return r
            o[r] = i
        return -1

    cdef size_t _max_displacement(self) noexcept nogil:
        cdef size_t b, d, dmax = 0
        for b in range(self._nbuckets):
            if self._b[b].ref:
                d = (b - (self._b[b].tag & self._mask)) & self._mask
                if d > dmax:
                    dmax = d
        return dmax

    # -- introspection ----------------------------------------------------
    def stats(self) -> dict:
        """Counters: entries, capacity, buckets, inserts, removes, expired, lookups, hits, misses,
        probe_total / probe_max (buckets examined per lookup), max_displacement (current
        distance of the farthest entry from its home bucket), load_factor."""
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
            "max_displacement": self._max_displacement(),
            "load_factor": self._n / <double>self._nbuckets,
        }

    def check_invariants(self) -> None:
        """Raise ``AssertionError`` if the table is inconsistent (for tests)."""
        cdef size_t b, c, mask = self._mask
        cdef int32_t i
        cdef Py_ssize_t count = 0, f
        seen = bytearray(self._capacity)
        for b in range(self._nbuckets):
            i = self._b[b].ref - 1
            if i < 0:
                continue
            if i >= self._capacity or not self._used[i] or seen[i]:
                raise AssertionError(f"bucket {b}: bad flow index {i}")
            seen[i] = 1
            count += 1
            if self._hash(&self._keys[i]) != self._tag[i] or self._tag[i] != self._b[b].tag:
                raise AssertionError(f"flow {i}: stale hash")
            c = self._tag[i] & mask
            while c != b:
                if self._b[c].ref == 0:
                    raise AssertionError(f"flow {i}: empty bucket {c} on its probe path")
                c = (c + 1) & mask
        if count != self._n or self._n + self._nfree + (self._capacity - self._fresh) != self._capacity:
            raise AssertionError("entry count / free list mismatch")
        for f in range(self._nfree):
            i = self._free[f]
            if i < 0 or i >= self._fresh or seen[i] or self._used[i]:
                raise AssertionError("free list overlaps entries")
            seen[i] = 1
        for f in range(self._fresh, self._capacity):
            if self._used[f]:
                raise AssertionError(f"never-used index {f} marked in use")
