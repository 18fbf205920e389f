"""Frames produced by a real Linux network stack: our parser and checksums must agree.

Two private network namespaces joined by a veth pair (documentation addresses
only, nothing routed anywhere else), checksum offload switched off with ethtool
so that the kernel writes complete checksums into every frame.  Real ping,
TCP (handshake with MSS/SACK/timestamps/wscale options, data, FIN) and UDP
traffic over IPv4 and IPv6, plus the ARP and NDP the kernel does by itself, is
captured with an AF_PACKET socket.  Every captured frame must verify and parse
identically with both backends, and agree with scapy's dissection.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time

import pytest
from scapy.layers.l2 import Ether

from kernel_support import check_against_scapy, native_or_none
from passtcore.netns import entered
from passtcore_py import csum as py_csum
from passtcore_py import headers as py_headers

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("ethtool"),
                       reason="needs root, iproute2 and ethtool"),
]
ETH_P_ALL = 0x0003


def sh(*args: str, timeout: int = 20) -> None:
    subprocess.run(args, check=True, timeout=timeout, capture_output=True)


@pytest.fixture(scope="module")
def veth_pair():
    sfx = secrets.token_hex(3)
    ns_a, ns_b = f"pka-{sfx}", f"pkb-{sfx}"
    va, vb = f"pka{sfx}", f"pkb{sfx}"
    try:
        sh("ip", "netns", "add", ns_a)
        sh("ip", "netns", "add", ns_b)
        sh("ip", "link", "add", va, "netns", ns_a, "type", "veth", "peer", "name", vb, "netns", ns_b)
        for ns, dev, a4, a6 in ((ns_a, va, "192.0.2.1/24", "2001:db8:7::1/64"),
                                (ns_b, vb, "192.0.2.2/24", "2001:db8:7::2/64")):
            sh("ip", "-n", ns, "addr", "add", a4, "dev", dev)
            sh("ip", "-n", ns, "addr", "add", a6, "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            # full checksums in the frames, no TSO/GSO super-frames
            sh("ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off", "gso", "off", "tso", "off")
        yield ns_a, ns_b, va, vb
    finally:
        for ns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def _sockets(ns_a: str, ns_b: str, family: int, kind: int) -> tuple[socket.socket, socket.socket]:
    """(server socket in ns_b, client socket in ns_a)."""
    with entered(ns_b):
        server = socket.socket(family, kind)
    with entered(ns_a):
        client = socket.socket(family, kind)
    return server, client


def _tcp_exchange(ns_a: str, ns_b: str, family: int, server: str, client: str) -> None:
    lsock, csock = _sockets(ns_a, ns_b, family, socket.SOCK_STREAM)
    try:
        lsock.bind((server, 0))
        lsock.listen(1)
        lsock.settimeout(5)
        csock.settimeout(5)
        csock.bind((client, 0))
        csock.connect(lsock.getsockname()[:2])
        conn, _ = lsock.accept()
        with conn:
            csock.sendall(b"hello from the guest side" * 3)
            assert conn.recv(4096)
            conn.sendall(b"x" * 1000)
            csock.recv(4096)
        csock.shutdown(socket.SHUT_WR)
    finally:
        csock.close()
        lsock.close()


def _udp(ns_a: str, ns_b: str, family: int, server: str, client: str) -> None:
    r, s = _sockets(ns_a, ns_b, family, socket.SOCK_DGRAM)
    try:
        r.bind((server, 0))
        s.bind((client, 0))
        for n in (0, 1, 17, 600):
            s.sendto(b"u" * n, r.getsockname()[:2])
    finally:
        s.close()
        r.close()


@pytest.fixture(scope="module")
def captured(veth_pair) -> list[bytes]:
    ns_a, ns_b, _va, vb = veth_pair
    with entered(ns_b):
        cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        cap.bind((vb, 0))
        cap.setblocking(False)
        for target in ("192.0.2.2", "2001:db8:7::2"):
            sh("ip", "netns", "exec", ns_a, "ping", "-c", "2", "-i", "0.2", "-W", "1", "-s", "56", target)
        _tcp_exchange(ns_a, ns_b, socket.AF_INET, "192.0.2.2", "192.0.2.1")
        _tcp_exchange(ns_a, ns_b, socket.AF_INET6, "2001:db8:7::2", "2001:db8:7::1")
        _udp(ns_a, ns_b, socket.AF_INET, "192.0.2.2", "192.0.2.1")
        _udp(ns_a, ns_b, socket.AF_INET6, "2001:db8:7::2", "2001:db8:7::1")
        frames: list[bytes] = []
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and len(frames) < 2000:
            try:
                frames.append(cap.recv(65536))
            except BlockingIOError:
                time.sleep(0.02)
        return frames
    finally:
        cap.close()


def _kinds(frames: list[bytes]) -> set[str]:
    kinds = set()
    for f in frames:
        i = py_headers.parse_frame(f)
        if i.ethertype == 0x0806:
            kinds.add("arp")
        elif i.l4_proto == 6:
            kinds.add(f"tcp{i.ip_version}")
            if i.tcp_mss > 0 and i.tcp_sack_ok and i.tcp_ts_val >= 0 and i.tcp_wscale >= 0:
                kinds.add(f"tcp{i.ip_version}-syn-options")
            if i.payload_len:
                kinds.add(f"tcp{i.ip_version}-data")
        elif i.l4_proto == 17:
            kinds.add(f"udp{i.ip_version}")
        elif i.l4_proto == 1:
            kinds.add("icmp4")
        elif i.l4_proto == 58:
            kinds.add("icmp6-echo" if i.icmp_type in (128, 129) else "icmp6-nd")
    return kinds


def test_traffic_was_captured(captured):
    want = {"arp", "tcp4", "tcp6", "tcp4-syn-options", "tcp6-syn-options", "tcp4-data", "tcp6-data",
            "udp4", "udp6", "icmp4", "icmp6-echo", "icmp6-nd"}
    assert want <= _kinds(captured), sorted(want - _kinds(captured))


@pytest.mark.parametrize("backend", ["python", "cython"])
def test_kernel_frames_verify_and_parse(captured, backend):
    if backend == "python":
        csum, headers = py_csum, py_headers
    else:
        csum, headers = native_or_none("csum"), native_or_none("headers")
        if csum is None or headers is None:
            pytest.skip("Cython kernels not built / PASSTCORE_PURE=1")
    assert captured
    for f in captured:
        assert csum.verify_frame(f), Ether(f).summary()
        info = headers.parse_frame(f)
        assert info.as_dict() == py_headers.parse_frame(f).as_dict()
        check_against_scapy(info, f)
        # refilling leaves the kernel's checksums unchanged
        again = bytearray(f)
        csum.fill_checksums(again)
        assert bytes(again) == f, Ether(f).summary()
        # a flipped payload/header bit is detected
        if info.ip_version and info.l4_proto in (6, 17, 1, 58):
            bad = bytearray(f)
            bad[info.l4_offset + info.l4_len - 1] ^= 0x01
            assert not csum.verify_frame(bad)
