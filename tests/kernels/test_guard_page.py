"""No out-of-range reads: frames end exactly at a PROT_NONE guard page.

Every truncation of every test frame (and random byte flips) is copied so that
its last byte is the last byte of a readable page, followed by an inaccessible
page.  The Cython kernels then parse / verify / fill / classify it through a view
that ends at the page boundary.  A read or write one byte past the window would
fault, so the work runs in a subprocess and a crash (SIGSEGV) fails the test.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kernel_support import native_or_none

pytestmark = pytest.mark.skipif(native_or_none("batch") is None, reason="Cython kernels not built")

SCRIPT = r"""
import ctypes, mmap, random, sys
sys.path.insert(0, HERE)
import numpy as np
from kernel_support import SCAPY_FRAMES, REAL, frame_bytes
import passtcore._csum as c, passtcore._headers as h, passtcore._batch as b
from passtcore_py.headers import ParseError

PAGE = mmap.PAGESIZE
m = mmap.mmap(-1, 2 * PAGE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
base = ctypes.addressof(ctypes.c_char.from_buffer(m))
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
assert libc.mprotect(ctypes.c_void_p(base + PAGE), PAGE, 0) == 0, ctypes.get_errno()
page = memoryview(m)[:PAGE]          # views end at the guard page

frames = [frame_bytes(n) for n in sorted(SCAPY_FRAMES)] + list(REAL.values())
rnd = random.Random(1)
for f in list(frames):
    for _ in range(40):
        g = bytearray(f)
        g[rnd.randrange(len(g))] = rnd.randrange(256)
        frames.append(bytes(g))
n = 0
for f in frames:
    for cut in range(len(f) + 1):
        data = f[:cut]
        off = PAGE - cut
        page[off:] = data
        for fn in (h.parse_frame, c.verify_frame, c.fill_checksums):
            try:
                fn(page, off)
            except ParseError:
                pass
        for fn in (h.parse_ethernet, h.parse_ipv4, h.parse_ipv6, h.parse_arp, h.parse_tcp,
                   h.parse_udp, h.parse_icmp):
            for o in (off, off + 14, off + 18, off + 34, off + 54):
                if o <= PAGE:
                    try:
                        fn(page, o)
                    except ParseError:
                        pass
        for l3 in (off + 14, off + 18):
            for fn, args in ((h.set_addresses, (l3, b"\1\2\3\4")), (h.set_addresses, (l3, bytes(16))),
                             (h.set_ttl, (l3, 9)), (h.set_ports, (l3, l3 + 20, 1, 2)),
                             (h.set_tcp, (l3 + 20, 1, 2, 3, 4))):
                if l3 < PAGE:
                    try:
                        fn(page, *args)
                    except ParseError:
                        pass
        offs = np.array([off], np.int64)
        lens = np.array([cut], np.int64)
        b.classify(page, offs, lens)
        b.verify_checksums(page, offs, lens, np.zeros(1, bool))
        b.fill_checksums(page, offs, lens)
        b.rewrite_addresses(page, offs, lens, src=b"\1\2\3\4")
        b.rewrite_addresses(page, offs, lens, dst=bytes(16))
        b.set_tcp_ack_window(page, offs, lens, ack=5, window=6)
        n += 1
print("checked", n)
"""


def test_no_access_past_the_window():
    here = str(Path(__file__).parent)
    r = subprocess.run([sys.executable, "-c", f"HERE = {here!r}\n" + SCRIPT],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"rc={r.returncode} (negative = killed by a signal)\n{r.stderr[-3000:]}"
    assert int(r.stdout.split()[-1]) > 10000
