"""TCP_REPAIR for real (root, loopback): a socket's state out of one socket and
into a new one through the helper, the peer none the wiser; and the helper's
protocol and errors (passt-repair's)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from passtcore.run.migrate import sockets, wire
from passtcore.run.migrate.repair import REPAIR_OFF, REPAIR_ON, RepairChannel, RepairError

HELPER = [sys.executable, "-m", "passtcore.run.migrate.helper"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="TCP_REPAIR needs CAP_NET_ADMIN")


@pytest.fixture
def channel() -> Iterator[RepairChannel]:
    with tempfile.TemporaryDirectory() as d:
        ch = RepairChannel(os.path.join(d, "t.socket.repair"))
        helper = subprocess.Popen([*HELPER, ch.path])
        try:
            assert ch.wait(10), "the helper did not connect"
            yield ch
        finally:
            ch.close()
            helper.wait(10)
            assert helper.returncode == 0      # the channel closed: done


def pair(rcvbuf: int = 0) -> tuple[socket.socket, socket.socket]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    a = socket.create_connection(srv.getsockname())
    b, _ = srv.accept()
    srv.close()
    if rcvbuf:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    return a, b


def move(ch: RepairChannel, a: socket.socket) -> socket.socket:
    """``a``'s connection into a new socket, as a migration does (both ends here)."""
    a.setblocking(False)
    ch.set([a], REPAIR_ON)
    sockets.freeze(a)
    ext, sndq, rcvq = sockets.dump(a)
    ext = wire.TcpTransferExt.unpack(ext.pack())      # through the wire format
    local, peer = a.getsockname(), a.getpeername()
    a.close()                                         # in repair mode: the peer sees nothing
    n = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    n.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    ch.set([n], REPAIR_ON)
    sockets.restore_in_repair(n, ext, local, peer, sndq, rcvq)
    ch.set([n], REPAIR_OFF)
    sockets.restore_after_repair(n, ext, sndq)
    n.setblocking(True)
    n.settimeout(10)
    return n


def read_n(s: socket.socket, n: int) -> bytes:
    s.settimeout(10)
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(min(1 << 20, n - len(out)))
        assert chunk, f"EOF after {len(out)} of {n} bytes"
        out += chunk
    return bytes(out)


def test_queues_both_ways_and_data_not_yet_sent(channel: RepairChannel) -> None:
    a, b = pair(rcvbuf=4096)               # b reads nothing yet: a's data stays queued
    to_b = os.urandom(3 << 20)
    to_a = os.urandom(200_000)
    a.setblocking(False)
    sent = 0
    for _ in range(1000):
        try:
            sent += a.send(to_b[sent:])
        except BlockingIOError:
            break
    b.sendall(to_a)
    time.sleep(0.1)
    n = move(channel, a)
    n.sendall(to_b[sent:])                 # the rest, after the move
    assert read_n(n, len(to_a)) == to_a    # the receive queue came along
    assert read_n(b, len(to_b)) == to_b    # sent, unsent and new: in order, nothing twice
    n.sendall(b"after")
    assert read_n(b, 5) == b"after"
    b.sendall(b"back")
    assert read_n(n, 4) == b"back"


def test_half_closed_connection(channel: RepairChannel) -> None:
    """Our FIN sent and acknowledged (FIN_WAIT2): the peer still sends to us after
    the move, and sees our EOF once."""
    a, b = pair()
    a.shutdown(socket.SHUT_WR)
    b.settimeout(5)
    assert b.recv(10) == b""
    time.sleep(0.05)
    n = move(channel, a)
    b.sendall(b"late reply")
    assert read_n(n, 10) == b"late reply"
    b.close()
    assert n.recv(10) == b""


def test_dump_refuses_a_socket_without_repair_mode() -> None:
    a, b = pair()
    with pytest.raises(OSError):
        sockets.dump(a)
    a.close()
    b.close()


def test_a_second_helper_is_turned_away(channel: RepairChannel) -> None:
    second = subprocess.Popen([*HELPER, channel.path], stderr=subprocess.PIPE)
    time.sleep(0.3)
    channel.accept()
    assert second.wait(10) == 0             # EOF at once: it exits as passt-repair does
    a, b = pair()
    channel.set([a], REPAIR_ON)             # the first one still serves
    channel.set([a], REPAIR_OFF)


def test_helper_usage_and_errors(tmp_path) -> None:
    r = subprocess.run(HELPER, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "Usage" in r.stderr
    (tmp_path / "file").write_text("")
    r = subprocess.run([*HELPER, str(tmp_path / "file")], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and "is not a socket" in r.stderr
    r = subprocess.run([*HELPER, str(tmp_path / "none")], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1 and "can't stat" in r.stderr


def test_helper_rejects_a_bad_command(tmp_path) -> None:
    """Anything but 1, 0, -1: the helper quits (1), the daemon's channel reports it."""
    ch = RepairChannel(str(tmp_path / "x.repair"))
    helper = subprocess.Popen([*HELPER, ch.path], stderr=subprocess.PIPE, text=True)
    try:
        assert ch.wait(10)
        a, b = pair()
        with pytest.raises(RepairError):
            ch.set([a], 5)
        assert not ch.connected
        assert helper.wait(10) == 1 and "unsupported command 5" in helper.stderr.read()
    finally:
        ch.close()
        helper.kill()
        helper.wait()


def test_helper_waits_in_a_directory_for_the_socket(tmp_path) -> None:
    """KubeVirt's target side: ``passt-repair DIR`` before the daemon has bound."""
    helper = subprocess.Popen([*HELPER, str(tmp_path)], stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)                     # watching, nothing there yet
        assert helper.poll() is None
        (tmp_path / "other.socket").write_text("")   # not *.repair: ignored
        ch = RepairChannel(str(tmp_path / "t.socket.repair"))
        assert ch.wait(10)
        a, b = pair()
        ch.set([a], REPAIR_ON)
        sockets.rcv_seq(a)                  # a repair-mode-only option: the helper did it
        ch.close()
        assert helper.wait(10) == 0
    finally:
        helper.kill()
        helper.wait()
