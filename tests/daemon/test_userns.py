"""``--userns PATH`` / ``--netns-only`` / a PID target (pasta's user namespace rules).

The target is a real ``unshare --user --map-root-user --net sleep`` started by the
test inside the sandbox's host namespace: a user namespace whose root maps to 0
and a fresh network namespace it owns. The daemon runs in the sandbox host
namespace and serves a tap in the target's netns; the checks read the
namespaces of the daemon's process and look at the tap with nsenter. Every
process is started through the sandbox and stopped by PID, even on failure.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from passtcore.sandbox import Sandbox, daemon_binary, stop_process, wait_for

HERE = Path(__file__).parent
PEERS = str(HERE / "splice_peers.py")


def ns_id(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


@pytest.fixture
def target(sandbox: Sandbox) -> int:
    """PID of a process in its own user namespace (root -> 0) and network namespace."""
    p = sandbox.popen_host("unshare", "--user", "--map-root-user", "--net", "sleep", "120")
    wait_for(lambda: ns_id(p.pid, "user") != ns_id("self", "user"), 10, "unshare")
    return p.pid


class Started:
    def __init__(self, sb: Sandbox, args: list[str]) -> None:
        self.log = sb.path(f"userns-{time.monotonic_ns()}.log")
        self.err = sb.path(f"userns-{time.monotonic_ns()}.stderr")
        with open(self.err, "wb") as f:
            self.proc = sb.popen_host(daemon_binary(), "-f", "--log-file", self.log,
                                      "--ns-ifname", "eth0", *args, stdout=f, stderr=f)
        self.pid = self.proc.pid

    def text(self) -> str:
        try:
            return Path(self.log).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self) -> None:
        wait_for(lambda: "ready: serving" in self.text() or self.proc.poll() is not None, 30,
                 "the daemon")
        assert self.proc.poll() is None, Path(self.err).read_text() + self.text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_process(self.proc, timeout=10)


@pytest.fixture
def daemon(sandbox: Sandbox) -> Any:
    started: list[Started] = []

    def start(*args: str) -> Started:
        d = Started(sandbox, list(args))
        started.append(d)
        d.wait_ready()
        return d

    yield start
    for d in started:
        d.stop()


def tap(pid: int) -> dict[str, Any]:
    r = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-j", "-d", "addr", "show",
                        "eth0"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)[0]


# -- netns.join_userns on its own ---------------------------------------------------------

JOIN = """
import os, sys, threading, time
from passtcore import netns
if sys.argv[2] == "thread":
    threading.Thread(target=time.sleep, args=(2,), daemon=True).start()
try:
    joined = netns.join_userns(sys.argv[1])
except OSError as exc:
    print("error", exc); sys.exit(0)
print(joined, os.readlink("/proc/self/ns/user"), os.geteuid())
print(netns.join_userns(sys.argv[1]))
"""


def test_join_userns(sandbox: Sandbox, target: int) -> None:
    r = subprocess.run([sys.executable, "-c", JOIN, f"/proc/{target}/ns/user", "-"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    assert first == f"True {ns_id(target, 'user')} 0"  # root maps to root in there
    assert second == "False"                          # already in it: a no-op
    r = subprocess.run([sys.executable, "-c", JOIN, f"/proc/{target}/ns/user", "thread"],
                       capture_output=True, text=True, timeout=30)
    assert r.stdout.startswith("error") and "single-threaded" in r.stdout, r.stdout + r.stderr


# -- the daemon ------------------------------------------------------------------------------

def test_pid_target_joins_its_user_namespace(sandbox: Sandbox, target: int, daemon: Any) -> None:
    d = daemon(str(target), "--config-net", "-T", "8000")
    assert ns_id(d.pid, "user") == ns_id(target, "user")
    # The daemon itself stays in the (sandbox) host network namespace.
    assert os.stat(f"/proc/{d.pid}/ns/net").st_ino == \
        os.stat(f"/run/netns/{sandbox.host_ns}").st_ino
    assert "Joined user namespace" in d.text()
    assert "Changing to" not in d.text()  # root of that namespace: no switch to nobody
    info = tap(target)
    assert info["linkinfo"]["info_kind"] == "tun" and "UP" in info["flags"]
    assert (sandbox.host_addr4, 24) in {(a["local"], a["prefixlen"]) for a in info["addr_info"]}
    # Real peers through it: the gateway answers ping over the tap, and the target's
    # loopback reaches a server on the host's loopback (-T).
    r = subprocess.run(["nsenter", "-t", str(target), "-n", "ping", "-c", "1", "-W", "3",
                        sandbox.gw4], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stdout + r.stderr
    srv = sandbox.popen_host(sys.executable, PEERS, "reply-after-eof-server", "127.0.0.1",
                             "8000", stdout=subprocess.PIPE)
    assert srv.stdout.readline().strip() == b"ready"
    r = subprocess.run(["nsenter", "-t", str(target), "-n", sys.executable, PEERS,
                        "shut-first-client", "127.0.0.1", "8000"],
                       capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == "reply got 100000", r.stdout + r.stderr


def test_explicit_userns_is_joined(sandbox: Sandbox, target: int, daemon: Any) -> None:
    d = daemon("--netns", f"/proc/{target}/ns/net", "--userns", f"/proc/{target}/ns/user",
               "-T", "auto")
    assert ns_id(d.pid, "user") == ns_id(target, "user")
    assert "UP" in tap(target)["flags"]
    # -T auto from inside the joined namespace: a host listener shows up in the target.
    srv = sandbox.popen_host(sys.executable, PEERS, "hold", "::1", "8801",
                             stdout=subprocess.PIPE)
    assert srv.stdout.readline().strip() == b"ready"

    def listening() -> bool:
        r = subprocess.run(["nsenter", "-t", str(target), "-n", "ss", "-H", "-ltn"],
                           capture_output=True, text=True, timeout=20)
        return "[::1]:8801" in r.stdout

    wait_for(listening, 3, "::1:8801 in the target namespace")


def test_netns_alone_joins_no_user_namespace(sandbox: Sandbox, target: int,
                                             daemon: Any) -> None:
    d = daemon("--netns", f"/proc/{target}/ns/net")
    assert ns_id(d.pid, "user") == ns_id("self", "user")
    assert "UP" in tap(target)["flags"]


def test_netns_only_with_a_pid(sandbox: Sandbox, target: int, daemon: Any) -> None:
    d = daemon(str(target), "--netns-only", "--config-net")
    assert ns_id(d.pid, "user") == ns_id("self", "user")
    assert "Joined user namespace" not in d.text()
    assert "Changing to 65534" in d.text()  # root in the initial namespace: nobody, as passt
    info = tap(target)
    assert "UP" in info["flags"]
    assert (sandbox.host_addr4, 24) in {(a["local"], a["prefixlen"]) for a in info["addr_info"]}


def test_runas_unmapped_in_the_joined_namespace_fails_cleanly(sandbox: Sandbox,
                                                              target: int) -> None:
    """--runas nobody inside a user namespace that only maps root: one-line error,
    exit 1, before forking."""
    r = sandbox.host(daemon_binary(), str(target), "--runas", "65534:65534", "-f",
                     "--log-file", sandbox.path("runas.log"), check=False, timeout=30)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("passtcore-run: --runas"), r.stderr
