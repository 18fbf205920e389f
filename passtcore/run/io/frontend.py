"""The front-end interface: how frames enter the daemon and how they leave it.

Every front end (the QEMU stream socket and ``-F`` in ``stream.py``, the tap
of namespace mode in ``tap.py``, vhost-user later) is a :class:`Frontend`, and
the engines use nothing else (docs/ARCHITECTURE.md, "the life of a frame").

**In: a batch per read.** A front end reads what is queued and hands the
dispatcher one batch: a buffer plus ``offsets`` and ``lengths`` (int64 arrays,
``array('q')``: they have the buffer protocol, so ``passtcore.batch`` kernels
or ``numpy.frombuffer`` can take them without a copy) and a count. The views
are valid only during the call: the buffer is reused by the next read.

**Out: slots, filled in place, then committed.** An engine asks for writable
slots (``tx_slots(n)``: up to ``n`` buffers of ``SLOT_SIZE`` bytes each, owned
by the front end), writes headers and payload straight into them (TCP peeks
host data into a slot's payload area) and commits the lengths of the frames it
built (``tx_commit(lengths)``). Each frame leaves whole or not at all: the
front end counts what it could not take. This is what lets a front end hand
out memory that is already on its way to the guest (the length-prefixed
stream buffer today, guest memory with vhost-user) with no copy in between.
Slots are valid until the next ``tx_slots`` call; one reservation at a time.
``send_many(frames)`` is the copy path for frames built elsewhere (the L2
replies): they are copied into slots and committed.

``MemoryFrontend`` keeps what is committed in a list: an embeddable guest end
for tests and for driving the engines from Python.
"""
from __future__ import annotations

import logging
import mmap
from array import array
from collections.abc import Callable, Sequence
from typing import Any

from passtcore.run.counters import Counters

log = logging.getLogger("passtcore.run")

ETH_HLEN = 14
ETH_MAX = 65535
SLOT_SIZE = ETH_MAX          # one whole L2 frame (a front end's headroom, e.g. the stream's length, is apart)
TX_SLOTS = 64                # slots per reservation: a TCP burst of 64 segments
RX_BATCH = 256               # frames handed over per batch at most

# on_batch(buffer, offsets, lengths, count)
OnBatch = Callable[[memoryview, array, array, int], Any]


def new_index_arrays(n: int = RX_BATCH) -> tuple[array, array]:
    """Preallocated offsets/lengths arrays for a batch of up to ``n`` frames."""
    return array("q", bytes(8 * n)), array("q", bytes(8 * n))


def per_frame(handler: Callable[[memoryview], Any]) -> OnBatch:
    """Adapt a one-frame handler to the batch interface (tests, simple embedders)."""

    def on_batch(buf: memoryview, offsets: array, lengths: array, count: int) -> None:
        for i in range(count):
            off = offsets[i]
            handler(buf[off:off + lengths[i]])

    return on_batch


class Frontend:
    """Base of every front end: the TX slot area and the copy path.

    Subclasses provide ``start()``, ``close()``, ``connected`` and
    ``_transmit(slot_indices, lengths) -> int`` (send the committed slots, whole
    frames only, count what goes out); they call ``self.on_batch`` with what
    they read. The slot area is an anonymous mapping: its pages become
    resident only once written.
    """

    #: bytes reserved before each slot (the stream socket's 4-byte length)
    HEADROOM = 0

    def __init__(self, counters: Counters, on_batch: OnBatch | None = None,
                 nslots: int = TX_SLOTS) -> None:
        self.counters = counters
        self.on_batch: OnBatch = on_batch or (lambda *_: None)
        self.stride = self.HEADROOM + SLOT_SIZE
        self.nslots = nslots
        self.txbuf = mmap.mmap(-1, nslots * self.stride, mmap.MAP_PRIVATE)
        self.txview = memoryview(self.txbuf)
        self._slots = [self.txview[i * self.stride + self.HEADROOM:(i + 1) * self.stride]
                       for i in range(nslots)]

    # -- the engines' side -------------------------------------------------
    def tx_slots(self, n: int) -> list[memoryview]:
        """Up to ``n`` writable frame buffers of ``SLOT_SIZE`` bytes (at most ``nslots``)."""
        return self._slots[:n]

    #: the front end takes TCP segments longer than the guest's MTU (``tx_commit``'s
    #: ``gso_size``) and segments them, or has them segmented, at that size
    tso = False

    #: ``push_direct(fast, conn, woken, seg, now, lengths) -> int``: a front end
    #: whose guest memory the engines can write (vhost-user) sends TCP host data
    #: without the slots (``FastPath.push_vq``); -1: take the slot path; -2: the
    #: guest has no receive buffers, ``rx_wakeup()`` is called once it posts some
    push_direct = None
    rx_wakeup: Callable[[], Any] | None = None

    def tx_commit(self, lengths: Sequence[int], gso_size: int = 0) -> int:
        """Send the first ``len(lengths)`` slots as frames of those lengths; the
        number of frames accepted (the others are counted as drops). With ``tso``,
        ``gso_size`` is the guest's MSS for TCP frames longer than one segment."""
        if not lengths:
            return 0
        return self._transmit(lengths, gso_size)

    def send_many(self, frames: Sequence[Any]) -> int:
        """Copy path: frames built elsewhere are copied into slots and committed."""
        accepted = 0
        for start in range(0, len(frames), self.nslots):
            chunk = frames[start:start + self.nslots]
            lengths: list[int] = []
            for frame in chunk:
                n = len(frame)
                if n > SLOT_SIZE:
                    self.counters.drop("oversized-out")
                    continue
                self._slots[len(lengths)][:n] = frame
                lengths.append(n)
            accepted += self.tx_commit(lengths)
        return accepted

    def send(self, frame: Any) -> bool:
        return self.send_many([frame]) == 1

    def slot_layout(self) -> tuple[memoryview, int, int]:
        """(buffer, offset of slot 0, stride): the slots are equally spaced in one
        buffer, so a kernel can fill a burst of them in one call."""
        return self.txview, self.HEADROOM, self.stride

    def slot_frames(self, lengths: Sequence[int]) -> list[memoryview]:
        """Views of the committed frames (for the pcap writer)."""
        return [self._slots[i][:n] for i, n in enumerate(lengths)]

    # -- subclasses ----------------------------------------------------------
    def _transmit(self, lengths: Sequence[int], gso_size: int = 0) -> int:  # pragma: no cover
        raise NotImplementedError

    @property
    def connected(self) -> bool:
        return True

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


class MemoryFrontend(Frontend):
    """A front end in memory: committed frames are appended (as bytes) to ``frames``;
    ``feed(*frames)`` delivers guest frames as one batch."""

    def __init__(self, counters: Counters | None = None, on_batch: OnBatch | None = None,
                 nslots: int = TX_SLOTS) -> None:
        super().__init__(counters if counters is not None else Counters(), on_batch, nslots)
        self.frames: list[bytes] = []

    def _transmit(self, lengths: Sequence[int], gso_size: int = 0) -> int:
        for i, n in enumerate(lengths):
            self.frames.append(bytes(self._slots[i][:n]))
            self.counters.frame_out(n)
        return len(lengths)

    def feed(self, *frames: bytes) -> None:
        buf = bytearray(b"".join(frames))
        offsets, lengths = new_index_arrays(max(1, len(frames)))
        pos = 0
        for i, f in enumerate(frames):
            offsets[i], lengths[i] = pos, len(f)
            pos += len(f)
            self.counters.frame_in(len(f))
        with memoryview(buf) as view:
            self.on_batch(view, offsets, lengths, len(frames))
