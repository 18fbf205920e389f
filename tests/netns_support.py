"""Whether this machine can run the namespace tests (root, iproute2, ip netns add).

One importable module (not a conftest, whose module name is ambiguous across
directories), checked once per session.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

_NETNS_OK: bool | None = None


def netns_available() -> tuple[bool, str]:
    """Root, ``ip`` and a working ``ip netns add`` (checked once per session)."""
    global _NETNS_OK
    if os.geteuid() != 0:
        return False, "needs root (network namespaces)"
    if not shutil.which("ip"):
        return False, "needs iproute2"
    if _NETNS_OK is None:
        probe = f"pc-probe-{os.getpid()}"
        r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, timeout=20)
        _NETNS_OK = r.returncode == 0
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=20)
    return (_NETNS_OK, "" if _NETNS_OK else "network namespaces unavailable")


def require_netns() -> None:
    ok, why = netns_available()
    if not ok:
        pytest.skip(why)
