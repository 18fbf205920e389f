"""--pcap: a classic pcap (v2.4, snaplen 65535, Ethernet) of every guest-facing frame,
both directions, read back by tshark."""
from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from passtcore.run.io.pcap import GLOBAL_HEADER, read_pcap
from passtcore.sandbox import Sandbox

pytestmark = pytest.mark.netns


def tshark(path: str, *args: str) -> str:
    if not shutil.which("tshark"):
        pytest.skip("needs tshark")
    r = subprocess.run(["tshark", "-n", "-r", path, *args], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_global_header_bytes() -> None:
    assert GLOBAL_HEADER == bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000")


def test_arp_both_directions(sandbox: Sandbox) -> None:
    sb = sandbox
    path = sb.path("arp.pcap")
    d = sb.start_daemon(pcap_path=path)
    r = sb.guest("busybox", "arping", "-c", "2", "-w", "5", "-I", "eth0", sb.gw4, check=False)
    assert r.returncode == 0, r.stdout
    assert d.stop() == 0
    from passtcore.run.counters import parse_line

    counters = parse_line(d.log().splitlines()[-1])  # the final count, written at exit
    assert counters
    frames = read_pcap(path)
    assert len(frames) == counters["frames_in"] + counters["frames_out"]
    out = tshark(path, "-Y", "arp")
    assert out.count("Who has 192.0.2.1?") == 2
    assert out.count("192.0.2.1 is at 02:00:5e:00:53:02") == 2
    with open(path, "rb") as f:
        head = f.read(40)
    caplen, origlen = struct.unpack_from("<II", head, 24 + 8)
    assert caplen == origlen == len(frames[0])


def test_dhcp_exchange_in_pcap(sandbox: Sandbox) -> None:
    path = sandbox.path("dhcp.pcap")
    d = sandbox.start_daemon(pcap_path=path)
    r = sandbox.guest("udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-T", "2",
                      check=False, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr + d.log()[-1500:]
    d.stop()
    out = tshark(path, "-Y", "dhcp", "-T", "fields", "-e", "dhcp.option.dhcp")
    types = [int(x) for x in out.split()]
    assert types[:4] == [1, 2, 3, 5]  # DISCOVER, OFFER, REQUEST, ACK
    summary = tshark(path, "-Y", "dhcp")
    assert "DHCP Offer" in summary and "DHCP ACK" in summary
