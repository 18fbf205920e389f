"""Shared fixtures: private namespaces and a daemon serving a real guest stack.

- ``sandbox``: a fresh ``passtcore.sandbox.Sandbox`` (upstream, host, guest
  namespaces; see its docstring for the addresses). Removed after the test.
- ``served_guest``: a sandbox whose guest namespace is served by
  ``passtcore-run --netns <guest> --ns-ifname eth0 -f`` running in the host
  namespace; the guest's ``eth0`` is a tap, up, with nothing configured: the
  test runs udhcpc/dhclient itself. ``served_guest.daemon`` is the handle
  (``pid``, ``stop()``, ``counters()``, ``log_path``, ``log()``). What a DHCP
  client's script writes to /etc/resolv.conf in the guest lands in
  ``served_guest.guest_resolv_conf`` (bind-mounted), never the machine's file.
- ``qemu_guest``: the same shape, but the daemon runs in socket mode in the
  host namespace and a real QEMU (``-netdev tap`` + ``-netdev stream`` joined by
  ``-netdev hubport``) relays between the guest's tap ``eth0`` and the socket.
  ``qemu_guest.qemu`` is the QEMU process.
- ``serve_guest`` / ``serve_qemu_guest``: factories taking extra daemon
  arguments, for tests that need options (``serve_guest("--no-dhcp")``).
- Marker ``daemon_args("--opt", ...)`` on a test adds arguments to the daemon
  of ``served_guest``/``qemu_guest``.

Tests using these fixtures are marked ``netns`` (and ``qemu``) automatically;
they are skipped when not root or when network namespaces are unavailable.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from passtcore.sandbox import Daemon, Sandbox, daemon_binary  # noqa: F401 (re-export)

from netns_support import netns_available, require_netns  # noqa: F401 (re-export)

NETNS_FIXTURES = {"sandbox", "served_guest", "qemu_guest", "serve_guest", "serve_qemu_guest"}
QEMU_FIXTURES = {"qemu_guest", "serve_qemu_guest"}
QEMU = shutil.which("qemu-system-x86_64")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "daemon_args(*args): extra passtcore-run arguments for served_guest/qemu_guest")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & NETNS_FIXTURES:
            item.add_marker(pytest.mark.netns)
        if names & QEMU_FIXTURES:
            item.add_marker(pytest.mark.qemu)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    require_netns()
    with Sandbox() as sb:
        yield sb


def _marker_args(request: pytest.FixtureRequest) -> list[str]:
    marker = request.node.get_closest_marker("daemon_args")
    return [str(a) for a in marker.args] if marker else []


@pytest.fixture
def serve_guest(sandbox: Sandbox) -> Callable[..., Sandbox]:
    """``serve_guest(*args)`` -> the sandbox, with ``.daemon`` serving the guest netns."""

    def start(*args: str, **kw: Any) -> Sandbox:
        sandbox.daemon = sandbox.start_daemon(*args, mode="netns", **kw)  # type: ignore[attr-defined]
        return sandbox

    return start


@pytest.fixture
def served_guest(serve_guest: Callable[..., Sandbox], request: pytest.FixtureRequest) -> Sandbox:
    return serve_guest(*_marker_args(request))


def start_qemu(sb: Sandbox, socket_path: str, timeout: float = 20.0) -> subprocess.Popen[Any]:
    """QEMU in the guest netns relaying tap ``eth0`` <-> the daemon's stream socket."""
    exists = subprocess.run(["ip", "-n", sb.guest_ns, "link", "show", "eth0"],
                            capture_output=True, timeout=20).returncode == 0
    if not exists:  # a persistent tap: it outlives a QEMU, the next one reuses it
        subprocess.run(["ip", "-n", sb.guest_ns, "tuntap", "add", "dev", "eth0", "mode", "tap"],
                       check=True, capture_output=True, timeout=20)
    subprocess.run(["ip", "-n", sb.guest_ns, "link", "set", "eth0", "up"],
                   check=True, capture_output=True, timeout=20)
    qemu_log = sb.path("qemu.log")
    with open(qemu_log, "wb") as out:
        proc = sb.popen_guest(
            QEMU, "-M", "none", "-nodefaults", "-display", "none",
            "-netdev", "tap,id=t0,ifname=eth0,script=no,downscript=no",
            "-netdev", f"stream,id=s0,server=off,addr.type=unix,addr.path={socket_path}",
            "-netdev", "hubport,id=p0,hubid=0,netdev=t0",
            "-netdev", "hubport,id=p1,hubid=0,netdev=s0",
            stdout=out, stderr=subprocess.STDOUT)
    return proc


@pytest.fixture
def serve_qemu_guest(sandbox: Sandbox) -> Callable[..., Sandbox]:
    """``serve_qemu_guest(*args)`` -> the sandbox with ``.daemon`` (socket mode) and
    ``.qemu``, once QEMU is connected to the daemon."""
    if QEMU is None:
        pytest.skip("needs qemu-system-x86_64")

    def start(*args: str, timeout: float = 20.0) -> Sandbox:
        d = sandbox.start_daemon(*args, mode="socket")
        sandbox.daemon = d  # type: ignore[attr-defined]
        assert d.socket_path is not None
        q = start_qemu(sandbox, d.socket_path)
        sandbox.qemu = q  # type: ignore[attr-defined]
        deadline = time.monotonic() + timeout
        while "accepted connection from PID" not in d.log():
            if q.poll() is not None:
                raise RuntimeError("QEMU exited: "
                                   + open(sandbox.path("qemu.log"), errors="replace").read())
            if time.monotonic() > deadline:
                raise TimeoutError("QEMU did not connect to the daemon")
            time.sleep(0.02)
        return sandbox

    return start


@pytest.fixture
def qemu_guest(serve_qemu_guest: Callable[..., Sandbox], request: pytest.FixtureRequest
               ) -> Sandbox:
    return serve_qemu_guest(*_marker_args(request))
