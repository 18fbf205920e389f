"""Start-up contract and lifecycle (passt-reference 2.2-2.4, 9.3), with the real
console script in a private host namespace: libvirt-style daemonising, the pid
file, the socket listening when the parent exits, stdio closed, --one-off,
"already in use", -F, signals and counters."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from passtcore.sandbox import Sandbox, daemon_binary

from .helpers import StreamClient, arp_request, target_of_reply, wait_gone

pytestmark = pytest.mark.netns

GW = bytes([192, 0, 2, 1])


def _arp_roundtrip(path: str) -> StreamClient:
    c = StreamClient(path)
    c.send(arp_request(GW))
    (reply,) = c.recv_frames(1)
    assert len(reply) == 42 and target_of_reply(reply) == GW
    return c


def libvirt_start(sb: Sandbox, *extra: str) -> tuple[subprocess.CompletedProcess[str], str, str, str]:
    sock, pid, log = sb.path("vm-net0.socket"), sb.path("vm-net0-passt.pid"), sb.path("passt.log")
    # capture_output: run() returns only once the daemon closed stdout/stderr (EOF),
    # which is what libvirt 11.x waits for.
    r = sb.host(daemon_binary(), "--one-off", "--socket", sock, "--pid", pid,
                "--interface", "eth0", "--log-file", log, "--tcp-ports", "8080", "--udp-ports", "8081",
                *extra, check=False, timeout=20)
    return r, sock, pid, log


def test_libvirt_style_start_one_off(sandbox: Sandbox) -> None:
    r, sock, pidfile, log = libvirt_start(sandbox)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    # The socket listens the moment the parent has exited.
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    assert Path(sock).exists()
    text = Path(pidfile).read_text()
    assert text.endswith("\n")
    pid = int(text)
    assert pid > 0 and Path(f"/proc/{pid}").exists()
    assert "passtcore-run" in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    # The child detached: its own session, stdio on /dev/null.
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(stat[3]) == pid  # session id
    null = os.stat("/dev/null")
    for fd in (0, 1, 2):
        # the device, not the path: the daemon's root is an empty tmpfs by now
        st = os.stat(f"/proc/{pid}/fd/{fd}")
        assert (st.st_rdev, st.st_mode) == (null.st_rdev, null.st_mode), fd
    # Only root's start-up ran as root: the daemon serves as nobody (passt's default).
    status = Path(f"/proc/{pid}/status").read_text()
    uid_line = next(ln for ln in status.splitlines() if ln.startswith("Uid:"))
    assert uid_line.split()[1] == "65534"
    probe.connect(sock)  # the first client (like QEMU)
    client = StreamClient.from_socket(probe)
    client.send(arp_request(GW))
    (reply,) = client.recv_frames(1)
    assert target_of_reply(reply) == GW
    client.close()
    assert wait_gone(pid), "--one-off daemon did not exit when the client went"
    logtext = Path(log).read_text()
    assert logtext.startswith("passt 0.1.0: ")
    assert f"({pid})" in logtext.splitlines()[0]
    assert "accepted connection from PID" in logtext
    assert "Client closed connection, exiting" in logtext
    assert "counters: frames_in=1 " in logtext
    assert Path(sock).exists()  # like passt, the socket file is left behind
    # ... and a stale file does not stop the next start on the same path.
    r, sock2, pidfile2, _ = libvirt_start(sandbox)
    assert r.returncode == 0 and sock2 == sock, r.stderr
    pid2 = int(Path(pidfile2).read_text())
    _arp_roundtrip(sock).close()
    assert wait_gone(pid2)


def test_second_start_is_refused_and_first_survives(sandbox: Sandbox) -> None:
    r, sock, pidfile, _ = libvirt_start(sandbox)
    assert r.returncode == 0, r.stderr
    pid = int(Path(pidfile).read_text())
    r2 = sandbox.host(daemon_binary(), "--one-off", "--socket", sock, "-f", check=False,
                      timeout=20)
    assert r2.returncode == 1
    assert r2.stderr.strip() == f"passtcore-run: Socket path {sock} already in use"
    time.sleep(0.2)
    assert not wait_gone(pid, 0.3), "the probe of the second start killed the first daemon"
    c = _arp_roundtrip(sock)  # and it still serves
    c.close()
    assert wait_gone(pid)


def test_reconnect_without_one_off_and_sigterm(sandbox: Sandbox) -> None:
    d = sandbox.start_daemon(mode="socket")
    assert d.socket_path
    for _ in range(3):
        c = _arp_roundtrip(d.socket_path)
        c.close()
        time.sleep(0.1)
        assert d.alive()
    counters = d.counters()
    assert counters["clients"] == 3 and counters["frames_in"] == 3
    assert counters["frames_out"] == 3 and counters["bytes_out"] == 3 * 42
    assert d.stop() == 0
    assert "counters: frames_in=3 " in d.log().splitlines()[-1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGQUIT])
def test_signals_exit_0(sandbox: Sandbox, sig: int) -> None:
    d = sandbox.start_daemon(mode="socket")
    os.kill(d.pid, sig)
    assert d.wait(10) == 0


def test_fd_mode(sandbox: Sandbox) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fd = theirs.fileno()
    log = sandbox.path("fd.log")
    proc = sandbox.popen_host(daemon_binary(), "-F", str(fd), "-f", "--log-file", log,
                              pass_fds=(fd,))
    theirs.close()
    try:
        c = StreamClient.from_socket(ours)
        c.send(arp_request(GW))
        (reply,) = c.recv_frames(1, timeout=20)
        assert target_of_reply(reply) == GW
        c.close()
        assert proc.wait(10) == 0  # -F implies one-off
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_default_socket_path(sandbox: Sandbox) -> None:
    d = sandbox.start_daemon(mode="socket", socket_path="")
    deadline = time.monotonic() + 20
    path = None
    while time.monotonic() < deadline and path is None:
        for line in d.log().splitlines():
            if "UNIX domain socket bound at " in line:
                path = line.split("bound at ", 1)[1].strip()
        time.sleep(0.02)
    try:
        assert path is not None and path.startswith("/tmp/passt_") and path.endswith(".socket")
        while "ready: serving" not in d.log() and time.monotonic() < deadline:
            time.sleep(0.02)
        _arp_roundtrip(path).close()
    finally:
        d.stop()
        if path:
            Path(path).unlink(missing_ok=True)


def test_unusable_socket_paths_exit_1(tmp_path) -> None:
    missing = tmp_path / "no-such-dir" / "s.socket"
    r = subprocess.run([daemon_binary(), "-s", str(missing)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1
    assert r.stderr.strip() == (f"passtcore-run: Couldn't bind UNIX socket {missing}: "
                                "No such file or directory")
    long = "/tmp/" + "x" * 120
    r = subprocess.run([daemon_binary(), "-s", long], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "path too long" in r.stderr


def test_second_client_is_discarded(sandbox: Sandbox) -> None:
    d = sandbox.start_daemon(mode="socket", foreground=True)
    assert d.socket_path
    first = _arp_roundtrip(d.socket_path)
    second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    second.connect(d.socket_path)
    second.settimeout(5)
    assert second.recv(100) == b""  # accepted, then closed
    second.close()
    assert f"discarding connection from PID {os.getpid()}" in d.log()
    first.send(arp_request(GW))  # the first client is unaffected
    assert target_of_reply(first.recv_frames(1)[0]) == GW
    first.close()
    assert d.counters()["clients_discarded"] == 1
