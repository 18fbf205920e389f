"""``passtcore-run --demo`` end to end (it builds and removes its own namespaces)."""
from __future__ import annotations

import re
import subprocess

import pytest

from passtcore.sandbox import daemon_binary
from passtcore.sandbox.demo import HTTP_PORT

pytestmark = pytest.mark.netns


def test_demo(sandbox) -> None:  # the fixture only provides the root/netns skip
    r = subprocess.run([daemon_binary(), "--demo"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "DHCP lease: address 192.0.2.2/24, router 192.0.2.1, DNS 192.0.2.1, " \
           "search example.com corp.example.org, MTU 65520" in out
    assert "ping 192.0.2.1: 3/3 replies" in out
    assert "IPv6 (SLAAC from the RA): address 2001:db8::" in out
    assert "ping -6 2001:db8::1: 3/3 replies" in out
    # TCP through the gateway mapping: the page served on the host's loopback, status 200
    http = (f"HTTP GET http://192.0.2.1:{HTTP_PORT}/index.html (host 127.0.0.1:{HTTP_PORT} "
            "via the gateway mapping): status 200, 31 bytes in ")
    assert re.search(re.escape(http) + r"[\d.]+ s: \"hello from the host's loopback\"\n", out), out
    assert out.rstrip().endswith("[demo] success")
    names = [w for w in out.split() if w.startswith("pcdemo-")]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert names and not any(n.rstrip(",") in listed for n in names)  # cleaned up
