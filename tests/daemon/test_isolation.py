"""Isolation of the serving daemon (passtcore/run/process/isolate.py), read from
outside as an operator would: /proc/PID/status (capabilities, NoNewPrivs,
Seccomp), /proc/PID/root (an empty filesystem), and syscalls issued from the
daemon's own context (``PASSTCORE_ISOLATION_PROBE``): one the filter refuses
(EPERM), a file the empty root does not have, one the filter kills (execve:
SIGSYS). The daemon still serves after all of it; every other daemon test runs
with isolation on too (the default)."""
from __future__ import annotations

import os
import signal
import socket

import pytest

from passtcore.sandbox import Sandbox, wait_for

from .helpers import StreamClient, arp_request, target_of_reply

GW = bytes([192, 0, 2, 1])

pytestmark = pytest.mark.netns


def _status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def _serves(sb: Sandbox, d) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(d.socket_path)
    client = StreamClient.from_socket(s)
    client.send(arp_request(GW))
    (reply,) = client.recv_frames(1)
    assert target_of_reply(reply) == GW
    client.close()


@pytest.mark.parametrize("runas", [None, "0"], ids=["nobody", "root"])
def test_socket_mode_daemon_is_confined(sandbox: Sandbox, runas: str | None) -> None:
    args = ["--runas", runas] if runas else []
    d = sandbox.start_daemon(*args, mode="socket",
                             env=dict(os.environ, PASSTCORE_ISOLATION_PROBE="refused,files"))
    st = _status(d.pid)
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(st[cap], 16) == 0, (cap, st[cap])
    assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2", st
    assert st["Uid"].split()[0] == ("0" if runas == "0" else "65534")
    assert os.listdir(f"/proc/{d.pid}/root") == []          # the empty tmpfs
    # its own namespaces: user, mount, IPC, UTS; the network one is the host's
    for ns in ("user", "mnt", "ipc", "uts"):
        assert os.readlink(f"/proc/{d.pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    host_net = sandbox.host("readlink", "/proc/self/ns/net").stdout.strip()
    assert os.readlink(f"/proc/{d.pid}/ns/net") == host_net
    log = d.log()
    assert ("isolation: namespaces on, empty root on, capabilities on, no_new_privs on, "
            "not dumpable on, seccomp on") in log, log[-2000:]
    assert "isolation probe refused: getpriority EPERM" in log
    assert "isolation probe files: ENOENT" in log
    _serves(sandbox, d)
    assert d.alive()


def test_a_killed_syscall_ends_the_daemon_with_sigsys(sandbox: Sandbox) -> None:
    d = sandbox.start_daemon(mode="socket", env=dict(os.environ, PASSTCORE_ISOLATION_PROBE="kill"),
                             wait=False)
    wait_for(lambda: not d.alive(), 15, "the daemon to be killed")
    assert d.wait() == -signal.SIGSYS


def test_namespace_mode_keeps_the_filesystem_but_no_privileges(serve_guest) -> None:
    sb = serve_guest()
    st = _status(sb.daemon.pid)
    for cap in ("CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(st[cap], 16) == 0, (cap, st[cap])
    assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2", st
    log = sb.daemon.log()
    assert ("isolation: namespaces off: namespace mode stays in the user namespace it joined, "
            "empty root off: namespace mode watches its namespace file, capabilities on, "
            "no_new_privs on, not dumpable on, seccomp on") in log, log
    r = sb.guest("busybox", "arping", "-c", "1", "-w", "3", "-I", "eth0", sb.gw4, check=False)
    assert r.returncode == 0 and Sandbox.host_mac.upper() in r.stdout.upper(), r.stdout + r.stderr


def test_isolation_can_be_turned_off_for_debugging(sandbox: Sandbox) -> None:
    d = sandbox.start_daemon(mode="socket", env=dict(os.environ, PASSTCORE_NO_ISOLATION="1"))
    st = _status(d.pid)
    assert st["Seccomp"] == "0" and st["NoNewPrivs"] == "1"
    assert "isolation off (PASSTCORE_NO_ISOLATION=1)" in d.log()
    assert os.listdir(f"/proc/{d.pid}/root")   # the real filesystem
    _serves(sandbox, d)
