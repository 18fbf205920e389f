"""End-to-end framing through the real daemon (socket mode, in a private host
namespace): ARP requests split at every byte offset and in bursts of hundreds
get exactly one correct reply each, in order; bad input never crashes the
daemon, is counted, and never desynchronises the stream."""
from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from passtcore.sandbox import Daemon, Sandbox

from .helpers import StreamClient, arp_request, frame_target, pack, target_of_reply

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    from netns_support import require_netns

    require_netns()
    with Sandbox() as sb:
        yield sb.start_daemon(mode="socket")


@pytest.fixture
def client(daemon: Daemon) -> Iterator[StreamClient]:
    assert daemon.socket_path
    c = StreamClient(daemon.socket_path)
    yield c
    c.close()
    time.sleep(0.05)  # let the daemon see the close before the next client


def check_replies(replies: list[bytes], first: int, count: int) -> None:
    assert [target_of_reply(r) for r in replies] == [frame_target(first + i)
                                                     for i in range(count)]
    assert all(len(r) == 42 and r[12:14] == b"\x08\x06" for r in replies)


def test_split_at_every_offset(client: StreamClient, daemon: Daemon) -> None:
    frames = [arp_request(frame_target(i)) for i in range(3)]
    stream = b"".join(pack(f) for f in frames)
    before = daemon.counters()
    for cut in range(1, len(stream)):
        client.send_raw(stream[:cut])
        time.sleep(0.002)  # make the daemon read the first part on its own
        client.send_raw(stream[cut:])
        check_replies(client.recv_frames(3), 0, 3)
    after = daemon.counters()
    n = 3 * (len(stream) - 1)
    assert after["frames_in"] - before["frames_in"] == n
    assert after["frames_out"] - before["frames_out"] == n
    assert after.get("drop.runt-frame", 0) == before.get("drop.runt-frame", 0)
    assert client.quiet_for(0.2) == b""  # no duplicates


def test_bursts_of_hundreds(client: StreamClient) -> None:
    base = 1000
    for burst in (100, 500, 900):
        frames = [arp_request(frame_target(base + i)) for i in range(burst)]
        client.send_raw(b"".join(pack(f) for f in frames))
        check_replies(client.recv_frames(burst, timeout=60), base, burst)
        base += burst
    assert client.quiet_for(0.2) == b""


def test_burst_split_in_odd_chunks(client: StreamClient) -> None:
    frames = [arp_request(frame_target(5000 + i)) for i in range(300)]
    stream = b"".join(pack(f) for f in frames)
    for i in range(0, len(stream), 997):
        client.send_raw(stream[i:i + 997])
    check_replies(client.recv_frames(300, timeout=60), 5000, 300)


def test_bad_lengths_keep_sync(client: StreamClient, daemon: Daemon) -> None:
    before = daemon.drops()
    bad = (pack(b"\x01" * 5)                 # < 14 bytes
           + (0).to_bytes(4, "big")           # zero length
           + pack(b"\x02" * 70000)            # > 65535: skipped, not buffered
           + pack(arp_request(frame_target(7))[:20])  # a truncated ARP
           )
    client.send_raw(bad + pack(arp_request(frame_target(8))))
    check_replies(client.recv_frames(1), 8, 1)
    after = daemon.drops()
    assert after.get("runt-frame", 0) - before.get("runt-frame", 0) == 2
    assert after.get("oversized-frame", 0) - before.get("oversized-frame", 0) == 1
    assert sum(after.values()) - sum(before.values()) == 4  # + the truncated ARP
    assert daemon.alive()


def test_wrong_ip_lengths_and_padding(client: StreamClient, daemon: Daemon) -> None:
    # IPv4 header claiming 200 bytes in a 60-byte frame; IHL < 5; IPv6 short payload.
    eth = b"\x02" * 6 + b"\x52\x54\x00\x12\x34\x56"
    v4_long = eth + b"\x08\x00" + bytes([0x45, 0, 0, 200]) + bytes(40)
    v4_ihl = eth + b"\x08\x00" + bytes([0x42, 0, 0, 46]) + bytes(42)
    v6_short = eth + b"\x86\xdd" + bytes([0x60, 0, 0, 0, 0x10, 0, 17, 64]) + bytes(32)
    before = daemon.counters()
    for f in (v4_long, v4_ihl, v6_short):
        client.send(f)
    # A padded ARP (60 bytes, as many NICs send) is still answered.
    client.send(arp_request(frame_target(9)) + bytes(18))
    check_replies(client.recv_frames(1), 9, 1)
    after = daemon.counters()
    new_drops = {k: after[k] - before.get(k, 0) for k in after
                 if k.startswith("drop.") and after[k] != before.get(k, 0)}
    assert sum(new_drops.values()) == 3, new_drops


@pytest.fixture(scope="module")
def shared_client(daemon: Daemon) -> Iterator[StreamClient]:
    """One connection for all hypothesis examples (a new client per example could race
    the daemon's processing of the previous close and be discarded as a second client)."""
    time.sleep(0.1)
    assert daemon.socket_path
    c = StreamClient(daemon.socket_path)
    yield c
    c.close()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(min_size=0, max_size=1600), min_size=1, max_size=20))
def test_random_frames_never_crash(daemon: Daemon, shared_client: StreamClient,
                                   frames: list[bytes]) -> None:
    c = shared_client
    before = daemon.counters()
    c.send_raw(b"".join(pack(f) for f in frames))
    c.send(arp_request(frame_target(11)))  # the stream is still in sync
    replies = c.recv_frames(1, timeout=10)
    # Random frames may be ARP requests too: wait for the reply to ours.
    while target_of_reply(replies[-1]) != frame_target(11):
        replies = c.recv_frames(1, timeout=10)
    after = daemon.counters()
    assert daemon.alive()
    runts = sum(1 for f in frames if len(f) < 14)
    assert after["frames_in"] - before["frames_in"] == len(frames) - runts + 1
    assert after.get("drop.runt-frame", 0) - before.get("drop.runt-frame", 0) == runts
