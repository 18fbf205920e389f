"""Property tests of vhost-user's two parsers of hostile input (tests/vhostfuzz.py
has the generators and the properties; benches/fuzz_vhost.py runs millions):

- the control channel: message sequences into the sans-IO ``Session`` (only
  ``VhostError`` comes out, every fd kept or returned exactly once), byte
  streams through the real front end's framing (no exception, the end of the
  input always seen), real fds through its ``_apply`` (nothing left open);
- the descriptor walker: random regions, rings and descriptor chains into
  ``Virtqueue.pop_tx`` / ``push_rx`` on the Cython kernel and its pure twin,
  which must agree on everything (frames, counts, indices, every byte of guest
  memory) while the kernel's regions sit between PROT_NONE guard pages.

Hypothesis makes the choices (``HypoChoices``), so failures shrink. A few
hundred examples per property; PASSTCORE_PURE=1 runs the twin alone.
"""
from __future__ import annotations

import struct
from array import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vhostfuzz as vf
from kernel_support import PURE_ONLY

pytestmark = pytest.mark.timeout(120)

FAST = settings(max_examples=250, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class HypoChoices(vf.Choices):
    """The generators' choices drawn by hypothesis (so that a failure shrinks)."""

    _ints: dict[tuple[int, int], st.SearchStrategy[int]] = {}

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def int(self, lo: int, hi: int) -> int:
        if hi <= lo:
            return lo
        strategy = self._ints.get((lo, hi))
        if strategy is None:
            strategy = self._ints[(lo, hi)] = st.integers(lo, hi)
        return self.data.draw(strategy)

    def bytes(self, n: int) -> bytes:
        return self.data.draw(st.binary(min_size=n, max_size=n))


@pytest.fixture(scope="module", autouse=True)
def _quiet() -> None:
    vf.quiet()


@pytest.fixture(scope="module")
def stream_harness():
    h = vf.StreamHarness()
    yield h
    h.close()


@pytest.fixture(scope="module")
def mods():
    found = vf.backends()
    assert ("cython" in found) != PURE_ONLY, found   # the kernel is built unless PURE
    return found


@pytest.fixture(scope="module")
def arena() -> vf.Arena:
    return vf.Arena()


# -- the control channel --------------------------------------------------------------------
@settings(FAST, max_examples=200)
@given(st.data())
def test_session_messages(data: st.DataObject) -> None:
    vf.check_session(vf.messages(HypoChoices(data)))


@settings(FAST, max_examples=200)
@given(st.binary(max_size=600))
def test_any_bytes_through_the_framing(stream_harness, raw: bytes) -> None:
    stream_harness.run(raw)


@settings(FAST, max_examples=200)
@given(st.data())
def test_message_streams_through_the_framing(stream_harness, data: st.DataObject) -> None:
    stream_harness.run(vf.stream(HypoChoices(data)))


@pytest.fixture(scope="module")
def fd_harness():
    h = vf.FdHarness()
    yield h
    h.close()


@settings(FAST, max_examples=150)
@given(st.data())
def test_real_fds_through_the_front_end(fd_harness, data: st.DataObject) -> None:
    fd_harness.run(vf.fd_messages(HypoChoices(data)))


def test_the_properties_can_fail(stream_harness) -> None:
    """The checks catch what they are for: a session that keeps a returned fd, a
    framing that stops reading before the end."""
    from passtcore.run.io import vhost_user as vu

    real = vu.Session.handle

    def leaky(self, request, payload, fds):
        reply, close = real(self, request, payload, fds)
        return reply, close + [1000]                   # closes an fd it still keeps
    vu.Session.handle = leaky
    try:
        msgs = [(5, 1, struct.pack("<IIQQQQ", 1, 0, 0, 4096, 0, 0), 1), (3, 1, b"", 0)]
        with pytest.raises(AssertionError, match="kept and closed|never had"):
            vf.check_session(msgs)
    finally:
        vu.Session.handle = real
    with pytest.raises(AssertionError, match="did not see the end"):
        fe = stream_harness.fe
        on_message = fe._on_message
        fe._on_message = lambda: None
        try:
            stream_harness.run(vu.HDR.pack(1, 1, 0) * 3)
        finally:
            fe._on_message = on_message


# -- the descriptor walker --------------------------------------------------------------------
@FAST
@given(st.data())
def test_rings_both_backends_agree_within_bounds(mods, arena, data: st.DataObject) -> None:
    vf.check_rings(vf.ring_case(HypoChoices(data)), mods, arena)


def test_rings_seeded(mods, arena) -> None:
    """The same from a seeded PRNG, more cases for the time (no shrinking)."""
    import random

    for seed in range(500):
        vf.check_rings(vf.ring_case(vf.RandomChoices(random.Random(seed))), mods, arena)


@pytest.mark.parametrize("mergeable", [True, False])
def test_rx_buffer_over_the_next_descriptor(mods, arena, mergeable: bool) -> None:
    """A receive buffer that overlaps the descriptor of the next buffer of the same
    frame: the copy into the first rewrites the second's descriptor. The kernel
    walks each chain again before copying into it (so that what it writes stays in
    bounds whatever the guest changed); the twin does the same, and both agree."""
    c = vf.Case()
    g, u = 0x4000_0000, 0x7F00_0000_0000
    c.regions = [(g, vf.PAGE, u, 0)]
    img = bytearray(vf.PAGE)
    num, desc, avail, used = 4, 0x000, 0x100, 0x200
    # buffer 0: 64 bytes starting at descriptor 1 (16 of them are descriptor 1)
    struct.pack_into("<QIHH", img, desc, g + desc + 16, 64, 2, 0)
    struct.pack_into("<QIHH", img, desc + 16, g + 0x800, 512, 2, 0)
    struct.pack_into("<HHHH", img, avail, 0, 2, 0, 1)
    c.images = [img]
    c.queue = (num, u + desc, u + avail, u + used, False, 0)
    frame = bytes(range(1, 201))
    c.ops = [("push", frame, [0], [len(frame)], mergeable, bytes(12), None)]
    trace = vf.check_rings(c, mods, arena)
    if mergeable:
        assert trace[-3] == ("push", 1) and trace[-2][0] == {}
    else:
        assert trace[-2][0] == {"rx-buffer-too-small": 1}


def test_guard_pages_fault(arena) -> None:
    """The arena's guard pages are there: a read one byte past a region faults (in a
    child process, so that the fault is observed, not suffered)."""
    import ctypes
    import os
    import signal

    view = arena.region(0, 1)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(view)) + vf.PAGE
    pid = os.fork()
    if pid == 0:   # pragma: no cover - the child
        import faulthandler

        faulthandler.disable()
        signal.signal(signal.SIGSEGV, signal.SIG_DFL)
        ctypes.c_char.from_address(addr).value
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGSEGV, signal.SIGBUS)


def test_pop_tx_frames_land_whole(mods, arena) -> None:
    """A sanity check of the harness on a valid case: a chain of 3 pieces popped."""
    c = vf.Case()
    g, u = 0x4000_0000, 0x7F00_0000_0000
    c.regions = [(g, 2 * vf.PAGE, u, 0)]
    img = bytearray(2 * vf.PAGE)
    frame = bytes(12) + bytes(range(60))
    img[0x1000:0x1000 + len(frame)] = frame
    for i, (off, n) in enumerate(((0x1000, 10), (0x100A, 30), (0x1028, len(frame) - 40))):
        struct.pack_into("<QIHH", img, 16 * i, g + off, n, 1 if i < 2 else 0, i + 1)
    struct.pack_into("<HHH", img, 0x100, 0, 1, 0)
    c.images = [img]
    c.queue = (4, u, u + 0x100, u + 0x200, False, 0)
    c.ops = [("pop", 4096, 8, 12)]
    trace = vf.check_rings(c, mods, arena)
    assert trace[1] == ("pop", 1, [bytes(range(60))])
    assert array("I", trace[-1][0x204:0x20C]).tolist() == [0, 0]
