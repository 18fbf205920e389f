"""The device-state channel against a running daemon, with a fake front end
(tests/daemon/vhost_client.py) in QEMU's place: SET_DEVICE_STATE_FD with a pipe,
the stream written or read by the test, CHECK_DEVICE_STATE for the result.

A corrupt or truncated stream fails the load (a non-zero result, counted), the
daemon goes on serving the front end, and no fd is left behind; a good one is
applied; the source side streams passt's format; bad requests get failures.
"""
from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator

import pytest

from passtcore.run.migrate import wire
from tests.daemon.test_vhost_user_ring_attacks import Harness, exchange_arp
from passtcore.sandbox import Daemon, Sandbox
from netns_support import require_netns

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

SET_PROTOCOL_FEATURES, SET_DEVICE_STATE_FD, CHECK_DEVICE_STATE = 16, 42, 43
PROTOCOL_F_REPLY_ACK, PROTOCOL_F_DEVICE_STATE = 1 << 3, 1 << 19
SAVE, LOAD = 0, 1


@pytest.fixture(scope="module")
def daemon() -> Iterator[tuple[Daemon, int]]:
    require_netns()
    with Sandbox("vumig") as sb:
        d = sb.start_daemon("--vhost-user", "--runas", "0", "--max-flows", "4", mode="socket")
        yield d, len(os.listdir(f"/proc/{d.pid}/fd"))


@pytest.fixture
def h(daemon: tuple[Daemon, int]) -> Iterator[Harness]:
    harness = Harness(*daemon)
    yield harness
    harness.close()


def _client(h: Harness):
    c = h.connect()
    c.set_protocol_features(PROTOCOL_F_REPLY_ACK | PROTOCOL_F_DEVICE_STATE)
    return c


def load(c, data: bytes) -> int:
    """The daemon reads ``data`` as a migration target: CHECK_DEVICE_STATE's result."""
    r, w = os.pipe()
    reply = c.request(SET_DEVICE_STATE_FD, struct.pack("<II", LOAD, 0), fds=[r])
    os.close(r)
    assert reply == 0x100, hex(reply)     # no fd of its own: ours is used
    writer = threading.Thread(target=_write_all, args=(w, data))
    writer.start()
    writer.join(20)
    return c.request(CHECK_DEVICE_STATE)


def _write_all(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BrokenPipeError:
        pass
    finally:
        os.close(fd)


def save(c) -> tuple[int, bytes]:
    r, w = os.pipe()
    reply = c.request(SET_DEVICE_STATE_FD, struct.pack("<II", SAVE, 0), fds=[w])
    os.close(w)
    assert reply == 0x100, hex(reply)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    return c.request(CHECK_DEVICE_STATE), b"".join(chunks)


ADDRS = wire.Addresses(wire.inany(bytes.fromhex("20010db8000000000000000000000002")),
                       bytes(16), bytes([192, 0, 2, 2]), bytes.fromhex("525400123456"))


def flow(**kw) -> wire.TcpTransfer:
    tap = wire.Side(bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]), 7000, 40000)
    host = wire.Side(bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]), 40000, 7000)
    t = wire.TcpTransfer((wire.PIF_TAP, wire.PIF_HOST), (tap, host), seq_to_tap=1000,
                         seq_ack_from_tap=1000, seq_from_tap=5000)
    for k, v in kw.items():
        setattr(t, k, v)
    return t


def stream(flows: list[wire.TcpTransfer], exts: list[bytes], header: bytes | None = None
           ) -> bytes:
    return ((header if header is not None else wire.header()) + ADDRS.pack()
            + wire.COUNT.pack(len(flows)) + b"".join(f.pack() for f in flows) + b"".join(exts))


SKIP = wire.TcpTransferExt().pack()       # tcpi_state 0: "reset this one"
GOOD = stream([], [])
BAD = {
    "empty": b"",
    "bad magic": struct.pack("!QII", 0x1122334455667788, 2, 2) + GOOD[16:],
    "version too new": struct.pack("!QII", wire.MAGIC, 3, 3) + GOOD[16:],
    "version zero": struct.pack("!QII", wire.MAGIC, 0, 0) + GOOD[16:],
    "half a header": GOOD[:9],
    "half the addresses": GOOD[:16 + 20],
    "no flow count": GOOD[:16 + 42],
    "more flows than the table holds": stream([flow()] * 5, [SKIP] * 5),
    "a flow cut short": stream([flow()], [SKIP])[:-52 - 50],
    "an ext record cut short": stream([flow()], [SKIP])[:-10],
    "queues promised, not sent": stream(
        [flow()], [wire.TcpTransferExt(tcpi_state=1, sndq=1000, rcvq=10).pack() + b"x" * 500]),
    "not-sent beyond the send queue": stream(
        [flow()], [wire.TcpTransferExt(tcpi_state=1, sndq=10, notsent=11).pack() + bytes(10)]),
    "a queue beyond 64 MiB": stream(
        [flow()], [wire.TcpTransferExt(tcpi_state=1, rcvq=(64 << 20) + 1).pack()]),
    "a flow between two hosts": stream([flow(pif=(wire.PIF_HOST, wire.PIF_HOST))], [SKIP]),
    "window scale 15": stream([flow(ws_from_tap=15)], [SKIP]),
    "data after the end": GOOD + b"\0",
}


@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_stream_fails_cleanly_and_the_daemon_goes_on(h: Harness, kind: str) -> None:
    c = _client(h)
    result = load(c, BAD[kind])
    assert result != 0, kind
    exchange_arp(c)                        # still serving the same front end
    assert h.delta().get("drop.migrate-load-failed") == 1, h.delta()
    assert "migration: bad device state" in h.d.log()


def test_a_good_stream_is_applied(h: Harness) -> None:
    c = _client(h)
    assert load(c, GOOD) == 0
    exchange_arp(c)
    assert "device state received: 62 bytes, 0 TCP connections" in h.d.log()


def test_a_flow_the_source_could_not_dump_is_reset_to_the_guest(h: Harness) -> None:
    """tcpi_state 0 (no repair helper at the source): the guest gets RST|ACK at once."""
    c = _client(h)
    c.post_rx(8)
    assert load(c, stream([flow()], [SKIP])) == 0
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    for frame in c.recv_frames(1):
        p = Ether(frame)
        if TCP in p:
            assert p[TCP].flags & 0x04 and p[IP].dst == "192.0.2.2" and p[TCP].dport == 40000
            assert p[TCP].sport == 7000 and p[TCP].seq == 1000 and p[TCP].ack == 5000
            break
    else:
        raise AssertionError("no RST to the guest")


def test_the_source_streams_passt_format(h: Harness) -> None:
    c = _client(h)
    exchange_arp(c)                        # the guest's MAC and address are learnt
    result, data = save(c)
    assert result == 0
    assert wire.check_header(data[:16]) == 2
    addrs = wire.Addresses.unpack(data[16:58])
    assert addrs.mac == bytes.fromhex("525400123456") and addrs.addr4 == bytes([192, 0, 2, 2])
    assert data[58:] == wire.COUNT.pack(0)
    exchange_arp(c)                        # no --migrate-exit: it goes on


@pytest.mark.parametrize("payload,fds,reason", [
    (struct.pack("<II", 2, 0), 1, "vhost-bad-state-request"),     # no such direction
    (struct.pack("<II", LOAD, 1), 1, "vhost-bad-state-request"),  # only the stopped phase
    (struct.pack("<II", LOAD, 0), 0, "vhost-bad-fds"),            # no pipe
    (b"\0" * 4, 1, "vhost-bad-size"),
])
def test_bad_device_state_requests(h: Harness, payload: bytes, fds: int, reason: str) -> None:
    c = _client(h)
    pipes = [os.pipe() for _ in range(fds)]
    try:
        assert c.request(SET_DEVICE_STATE_FD, payload, fds=[p[0] for p in pipes]) != 0
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
    assert h.drops().get(reason) == 1, h.drops()
    exchange_arp(c)
