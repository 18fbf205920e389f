"""Session guard: tests must never change the machine's own name-service files.

Guest-side DHCP clients (dhclient-script, udhcpc's default script) rewrite
/etc/resolv.conf unless they run under ``ip netns exec`` with a per-namespace
file in /etc/netns/<ns>/. A slip there breaks the machine's DNS for everything
after, so the suite checks the files at the end, restores them and fails.
"""
from __future__ import annotations

from pathlib import Path

import pytest

GUARDED = ("/etc/resolv.conf", "/etc/hosts")


@pytest.fixture(scope="session", autouse=True)
def _host_name_service_untouched():
    saved = {p: Path(p).read_bytes() for p in GUARDED if Path(p).exists()}
    yield
    changed = [p for p, data in saved.items() if Path(p).read_bytes() != data]
    for p in changed:
        Path(p).write_bytes(saved[p])
    assert not changed, f"a test modified {', '.join(changed)} of the machine (restored)"
