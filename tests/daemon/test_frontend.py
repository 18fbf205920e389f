"""The stream and tap front ends in-process, over real socketpairs: reassembly at
every split (including inside the length header), skipping of bad lengths,
batches per read, whole-frame-only writes from the TX slots under back-pressure."""
from __future__ import annotations

import os
import random
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passtcore.run.counters import Counters
from passtcore.run.io.frontend import per_frame
from passtcore.run.io.loop import Loop
from passtcore.run.io.stream import BACKLOG_MAX, RBUF_SIZE, StreamFrontend

from .helpers import StreamClient, pack


def frames_of(n: int, seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    return [bytes([i & 0xFF]) * 6 + rnd.randbytes(rnd.randint(8, 1600)) for i in range(n)]


class Harness:
    def __init__(self) -> None:
        self.loop = Loop()
        self.counters = Counters()
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.got: list[bytes] = []
        self.gone = 0
        self.fe = StreamFrontend(self.loop, self.counters,
                                 per_frame(lambda f: self.got.append(bytes(f))), sock=self.ours,
                                 on_exit=self._gone)
        self.fe.start()
        self.conn = self.fe.conn

    def _gone(self) -> None:
        self.gone += 1

    def pump(self, until: int, rounds: int = 200) -> None:
        for _ in range(rounds):
            if len(self.got) >= until:
                return
            self.loop.run_once(0.05)

    def close(self) -> None:
        self.conn.close()
        self.theirs.close()
        self.loop.close()


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


def test_every_split_offset(h: Harness) -> None:
    frames = frames_of(3)
    stream = b"".join(pack(f) for f in frames)
    for cut in range(1, len(stream)):
        h.got.clear()
        h.theirs.sendall(stream[:cut])
        h.loop.run_once(0)
        h.theirs.sendall(stream[cut:])
        h.pump(3)
        assert h.got == frames, f"split at {cut}"
    assert h.counters["frames_in"] == 3 * (len(stream) - 1)
    assert not h.counters.drops()


def test_byte_by_byte(h: Harness) -> None:
    frames = frames_of(5, seed=2)
    for b in b"".join(pack(f) for f in frames):
        h.theirs.send(bytes([b]))
        h.loop.run_once(0)
    h.pump(5)
    assert h.got == frames


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 3000), min_size=1, max_size=40), st.integers(0, 2**32 - 1))
def test_random_chunking(chunks: list[int], seed: int) -> None:
    h = Harness()
    try:
        frames = frames_of(40, seed)
        stream = b"".join(pack(f) for f in frames)
        pos = 0
        i = 0
        while pos < len(stream):
            n = chunks[i % len(chunks)]
            h.theirs.sendall(stream[pos:pos + n])
            pos += n
            i += 1
            h.loop.run_once(0)
        h.pump(40)
        assert h.got == frames
    finally:
        h.close()


def test_bad_lengths_are_skipped_and_counted(h: Harness) -> None:
    good = frames_of(2)
    runt = b"\x01" * 10
    huge = b"\x02" * 70000  # > 65535: skipped without buffering, stream stays in sync
    h.theirs.sendall(pack(good[0]) + pack(runt) + pack(huge) + b"\0\0\0\0" + pack(good[1]))
    h.pump(2)
    assert h.got == good
    assert h.counters.drops() == {"runt-frame": 2, "oversized-frame": 1}


def test_eof_reports_gone(h: Harness) -> None:
    h.theirs.close()
    for _ in range(10):
        h.loop.run_once(0.05)
    assert h.gone == 1 and h.conn.closed
    assert not h.counters.drops()


def test_eof_mid_frame_is_counted(h: Harness) -> None:
    frame = frames_of(1)[0]
    h.theirs.sendall(pack(frame) + pack(frame)[:-3])
    h.theirs.close()
    for _ in range(10):
        h.loop.run_once(0.05)
    assert h.got == [frame] and h.gone == 1
    assert h.counters.drops() == {"truncated-at-eof": 1}


def test_writes_are_never_torn_under_backpressure(h: Harness) -> None:
    h.theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    h.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    frames = [bytes([i & 0xFF]) * (1000 + i) for i in range(3000)]
    accepted = 0
    for i in range(0, len(frames), 100):
        accepted += h.fe.send_many(frames[i:i + 100])
    assert h.conn.backlog > 0  # the peer is not reading: frames wait, whole
    assert accepted < len(frames) or h.conn.backlog <= BACKLOG_MAX
    client = StreamClient.from_socket(h.theirs)
    got: list[bytes] = []
    h.theirs.setblocking(False)
    for _ in range(100000):
        if len(got) >= accepted:
            break
        h.loop.run_once(0)
        try:
            client.buf += h.theirs.recv(1 << 20)
        except BlockingIOError:
            continue
        while len(client.buf) >= 4:
            n = int.from_bytes(client.buf[:4], "big")
            assert 14 <= n <= 65535
            if len(client.buf) < 4 + n:
                break
            got.append(bytes(client.buf[4:4 + n]))
            del client.buf[:4 + n]
    assert got == frames[:accepted]  # in order, none torn; drops only at the tail
    dropped = h.counters.drops().get("tx-backlog-full", 0)
    assert accepted + dropped == len(frames)
    assert h.counters["frames_out"] == accepted


def test_second_client_is_discarded(tmp_path) -> None:
    loop = Loop()
    counters = Counters()
    path = str(tmp_path / "s")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(0)
    exits = []
    fe = StreamFrontend(loop, counters, listener=lsock, one_off=True,
                        on_exit=lambda: exits.append(1))
    fe.start()
    try:
        a = StreamClient(path)
        loop.run_once(0.2)
        b = StreamClient(path)
        loop.run_once(0.2)
        loop.run_once(0.05)
        assert b.sock.recv(10) == b""  # accepted and closed
        assert fe.connected and counters["clients"] == 1 and counters["clients_discarded"] == 1
        a.close()
        for _ in range(5):
            loop.run_once(0.05)
        assert exits == [1]
        b.close()
    finally:
        fe.close()
        loop.close()


def test_tap_frontend_roundtrip_over_a_pipe_like_socketpair() -> None:
    """TapFrontend only needs an fd with datagram semantics: a SOCK_SEQPACKET pair."""
    from passtcore.run.io.tap import TapFrontend

    loop = Loop()
    counters = Counters()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    got: list[bytes] = []
    fe = TapFrontend(os.dup(a.fileno()), loop, counters, per_frame(lambda f: got.append(bytes(f))))
    a.close()
    fe.start()
    try:
        frames = frames_of(50)
        for f in frames:
            b.send(f)
        b.send(b"short")
        for _ in range(10):
            loop.run_once(0.02)
        assert got == frames
        assert counters.drops() == {"runt-frame": 1}
        assert fe.send(frames[0]) and b.recv(70000) == frames[0]
    finally:
        fe.close()
        b.close()
        loop.close()


def test_a_failing_or_retaining_handler_does_not_stall_the_stream() -> None:
    """The per-frame error boundary is the dispatcher's; the front end only promises
    that a handler raising out of a batch (the loop catches it) or keeping a view
    costs that batch at most: the stream stays in sync, nothing is delivered twice."""
    import numpy as np

    loop = Loop()
    counters = Counters()
    errors: list[BaseException] = []
    loop.on_error = lambda exc, cb: errors.append(exc)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    batches: list[list[bytes]] = []
    kept: list = []

    def on_batch(buf, offsets, lengths, count) -> None:
        frames = [bytes(buf[offsets[i]:offsets[i] + lengths[i]]) for i in range(count)]
        batches.append(frames)
        kept.append(np.frombuffer(buf[offsets[0]:offsets[0] + lengths[0]], dtype=np.uint8))
        if frames[0][0] == 1:
            raise ValueError("engine bug")

    fe = StreamFrontend(loop, counters, on_batch, sock=ours)
    fe.start()
    first = [bytes([1]) * 60, bytes([2]) * 60]
    then = [bytes([3]) * 60, bytes([4]) * 70]
    try:
        theirs.sendall(b"".join(pack(f) for f in first))
        for _ in range(20):
            if batches:
                break
            loop.run_once(0.05)
        assert batches == [first] and len(errors) == 1
        theirs.sendall(b"".join(pack(f) for f in then))
        for _ in range(20):
            if len(batches) > 1:
                break
            loop.run_once(0.05)
        assert batches == [first, then]  # in sync, nothing twice
        assert fe.connected
    finally:
        fe.close()
        theirs.close()
        loop.close()


def test_one_wakeup_drains_more_than_one_buffer() -> None:
    """The read loop goes on while reads fill the buffer (it used to stop after one:
    its short-read test ran after the buffer had been reset)."""
    loop = Loop()
    counters = Counters()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for s in (ours, theirs):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    got: list[int] = []
    fe = StreamFrontend(loop, counters, per_frame(lambda f: got.append(len(f))), sock=ours)
    fe.start()
    frame = bytes(65532)  # 64 KiB with its length: a read ends on a frame boundary
    n = (3 * RBUF_SIZE) // (len(frame) + 4) + 1   # up to three buffers
    try:
        theirs.setblocking(False)
        sent = 0
        for _ in range(n):
            try:
                theirs.sendall(pack(frame))
            except BlockingIOError:
                break
            sent += 1
        assert sent * (len(frame) + 4) > RBUF_SIZE + 65536, "the socket took too little"
        fe.conn._readable()  # one wake-up
        assert len(got) == sent
    finally:
        fe.close()
        theirs.close()
        loop.close()
