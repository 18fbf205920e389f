"""vhost-user with real peers: QEMU (>= 9; 10 from bookworm-backports here) boots a
real Linux guest (Debian's cloud kernel, busybox, ``passtcore.sandbox.guest``) whose
virtio-net device is served by ``passtcore-run --vhost-user``: guest memory in a
shared memfd, the virtqueues in the daemon, QEMU out of the data path.

The guest gets its lease by DHCP, pings the gateway, moves data both ways over
TCP (sha256 equal at both ends) and UDP, and reaches a forwarded port; a hostile
control-channel client gets error replies and counted drops, and the daemon goes
on to serve QEMU. QEMU and the daemon run in the sandbox's private host
namespace; the guest's only network is the daemon.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from typing import Any

import pytest

from passtcore.sandbox import Sandbox, stop_process, wait_for
from tests.daemon import qemu_guest
from tests.daemon.qemu_guest import NO_OFFLOADS, boot

pytestmark = [pytest.mark.netns, pytest.mark.qemu]

HTTP_PORT, FWD_PORT, UDP_PORT = 8070, 8080, 5353


@pytest.fixture(scope="module")
def guest_image() -> tuple[str, str]:
    return qemu_guest.guest_image()


@pytest.fixture(params=["offloads", "plain"])
def vm(sandbox: Sandbox, guest_image: tuple[str, str], request: pytest.FixtureRequest):
    """A daemon in vhost-user mode (-t FWD_PORT -u UDP_PORT, MTU 1500) and a booted
    guest with its DHCP lease: once with the device's checksum/TSO offloads and MRG_RXBUF
    (what QEMU offers by default), once with all of them off (plain frames)."""
    d = sandbox.start_daemon("--vhost-user", "-t", f"{FWD_PORT},{UDP_PORT}", "-u", str(UDP_PORT),
                             "-m", "1500", "--runas", "0", mode="socket")
    q, con = boot(sandbox, guest_image, d.socket_path,
                  device_opts="" if request.param == "offloads" else NO_OFFLOADS)
    sandbox.offloads = request.param == "offloads"  # type: ignore[attr-defined]
    rc, out = con.run("udhcpc -i eth0 -n -q -t 5 -T 2 -s /usr/share/udhcpc/default.script", 60)
    assert rc == 0 and "lease 192.0.2.2/24 router 192.0.2.1" in out, out + d.log()[-2000:]
    sandbox.daemon, sandbox.qemu, sandbox.console = d, q, con  # type: ignore[attr-defined]
    try:
        yield sandbox
    finally:
        con.close()
        stop_process(q)


def test_dhcp_ping_and_counters(vm: Sandbox) -> None:
    con, d = vm.console, vm.daemon
    rc, out = con.run("ip route; ping -c 3 -W 3 192.0.2.1")
    assert rc == 0 and "default via 192.0.2.1" in out and "3 packets received" in out, out
    c = d.counters()
    assert c["clients"] == 1 and c["frames_in"] >= 5 and c["frames_out"] >= 5
    assert not {k: v for k, v in c.items() if k.startswith("drop.virtq-")}
    assert "vhost-user: front end connected" in d.log()


def test_tcp_both_ways_and_udp(vm: Sandbox) -> None:
    con = vm.console
    # guest -> host: a 2 MiB file from an HTTP server on the host's loopback
    root = vm.path("www")
    os.makedirs(root, exist_ok=True)
    blob = os.urandom(2 << 20)
    with open(os.path.join(root, "blob"), "wb") as f:
        f.write(blob)
    http = vm.popen_host(sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind",
                         "127.0.0.1", "--directory", root, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: f":{HTTP_PORT} " in vm.host("ss", "-Htln").stdout, 10, "http server")
        rc, out = con.run(f"wget -q -O - http://192.0.2.1:{HTTP_PORT}/blob | sha256sum", 120)
        assert rc == 0 and hashlib.sha256(blob).hexdigest() in out, out
    finally:
        stop_process(http)
    # host -> guest: the forwarded port, a listener in the guest sending 1 MiB
    rc, out = con.run("dd if=/dev/urandom of=/tmp/f bs=1024 count=1024 2>/dev/null; "
                      f"sha256sum /tmp/f; (nc -l -p {FWD_PORT} < /tmp/f &) ; sleep 1")
    assert rc == 0, out
    want = out.split()[0]
    got = vm.host(sys.executable, "-c",
                  "import socket,hashlib,sys\n"
                  f"s=socket.create_connection(('127.0.0.1',{FWD_PORT}),timeout=30)\n"
                  "h=hashlib.sha256(); n=0\n"
                  "while True:\n d=s.recv(65536)\n if not d: break\n h.update(d); n+=len(d)\n"
                  "print(n, h.hexdigest())", timeout=120).stdout.split()
    assert got == [str(1 << 20), want]
    # UDP both ways, and DNS: the guest's resolver is the gateway, which the daemon
    # maps to the host's loopback resolver (the sandbox's resolv.conf: 127.0.0.1)
    dns = vm.popen_host(sys.executable, "-c", DNS_SERVER, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: ":53 " in vm.host("ss", "-Huln").stdout, 10, "dns server")
        rc, out = con.run("nslookup vhost.example.test 192.0.2.1", 30)
        assert rc == 0 and "198.51.100.77" in out, out
    finally:
        stop_process(dns)
    c = vm.daemon.counters()
    log = vm.daemon.log()
    if vm.offloads:
        # at MTU 1500, TCP frames of many segments both ways (GSO)
        assert "TSO/checksum offloads on" in log
        assert c.get("vhost_gso_out", 0) > 0 and c.get("vhost_gso_in", 0) > 0, c
        assert c["bytes_out"] / c["frames_out"] > 3000, c
    else:
        assert "offloads on" not in log
        assert c.get("vhost_gso_out", 0) == 0 and c.get("vhost_gso_in", 0) == 0, c
        assert c["bytes_out"] / c["frames_out"] < 1600, c
    assert not {k: v for k, v in c.items() if k.startswith("drop.virtq-")}, c



def test_ipv6_slaac_ndp_and_ping(vm: Sandbox) -> None:
    """The guest kernel's own IPv6: router solicitation answered (SLAAC address in
    the host's prefix, default route via our link-local), neighbour discovery of
    the gateway, echo to the global and the link-local address."""
    con = vm.console
    out = ""
    for _ in range(20):   # DAD and the first RA take a second or two under TCG
        rc, out = con.run("ip -6 addr show dev eth0 scope global; ip -6 route show default")
        if "2001:db8::" in out and "default via fe80::" in out:
            break
        time.sleep(0.5)
    assert re.search(r"inet6 2001:db8::[0-9a-f:]+/64 scope global", out), out
    ours = re.search(r"default via (fe80::[0-9a-f:]+)", out).group(1)
    rc, out = con.run(f"ping6 -c 2 -W 3 2001:db8::1 && ping6 -c 1 -W 3 {ours}%eth0 "
                      "&& ip -6 neigh show dev eth0")
    assert rc == 0 and out.count("packets received") == 2, out
    assert Sandbox.host_mac.lower() in out.lower(), out   # the gateway's MAC, learnt by NDP
    c = vm.daemon.counters()
    assert c.get("ndp-reply", 0) >= 2 and c.get("icmp_flows", 0) + c.get("icmpv6_flows", 0) >= 1, c



def test_dhcpv6_with_a_real_client(vm: Sandbox) -> None:
    """ISC dhclient -6 in the guest: Solicit/Advertise/Request/Reply (or rapid
    commit) gets the host's address and our resolvers."""
    con = vm.console
    rc, out = con.run("command -v dhclient")
    if rc != 0:
        pytest.skip("no dhclient in the guest image (isc-dhcp-client on the host)")
    rc, out = con.run("mkdir -p /var/lib/dhcp /var/db; for i in 1 2 3 4 5 6 7 8 9 10; do "
                      "ip -6 addr show dev eth0 scope link | grep -v tentative | grep -q fe80 && break; "
                      "sleep 0.5; done; "
                      "timeout 60 dhclient -6 -1 -v -sf /bin/true -lf /tmp/l6 -pf /tmp/p6 eth0; "
                      "cat /tmp/l6", 90)
    assert rc == 0, out
    assert re.search(r"iaaddr 2001:db8::2 ", out), out
    assert "dhcp6.name-servers 2001:db8::1" in out, out
    c = vm.daemon.counters()
    assert sum(v for k, v in c.items() if k.startswith("dhcpv6")) >= 2, c


def _iperf3_json(proc: subprocess.Popen[Any]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=60)
    return json.loads(out)


def test_udp_both_ways_and_inbound_with_iperf3(vm: Sandbox) -> None:
    """UDP through the daemon's UDP flows: guest->host datagrams, host->guest on
    the same flow (-R), and host->guest through the forwarded UDP port; loss is
    measured by iperf3's sequence numbers at the receiver."""
    con = vm.console
    iperf3 = shutil.which("iperf3")
    rc, _ = con.run("command -v iperf3")
    if rc != 0 or not iperf3:
        pytest.skip("no iperf3 in the guest image (iperf3 on the host)")
    # guest -> host, to the gateway (the host's loopback)
    srv = vm.popen_host(iperf3, "-s", "-1", "-J", "-B", "127.0.0.1", "-p", "5301",
                        stdout=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: ":5301 " in vm.host("ss", "-Htln").stdout, 10, "iperf3 server")
        rc, out = con.run("iperf3 -u -c 192.0.2.1 -p 5301 -b 20M -l 1200 -t 2", 60)
        assert rc == 0, out
        s = _iperf3_json(srv)["end"]["sum"]
        assert s["packets"] > 1000 and s["lost_percent"] < 5, s
    finally:
        stop_process(srv)
    # host -> guest on the guest's flow (-R: the server sends)
    srv = vm.popen_host(iperf3, "-s", "-1", "-B", "127.0.0.1", "-p", "5302",
                        stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: ":5302 " in vm.host("ss", "-Htln").stdout, 10, "iperf3 server")
        rc, out = con.run("iperf3 -u -R -c 192.0.2.1 -p 5302 -b 20M -l 1200 -t 2", 60)
        m = re.search(r"(\d+)/(\d+) \(([\d.e+-]+)%\)\s+receiver", out)
        assert rc == 0 and m and int(m.group(2)) > 1000 and float(m.group(3)) < 5, out
    finally:
        stop_process(srv)
    # host -> guest through the forwarded port (-t and -u UDP_PORT)
    rc, out = con.run(f"iperf3 -s -1 -D -p {UDP_PORT}; sleep 0.5")
    assert rc == 0, out
    cli = vm.popen_host(iperf3, "-u", "-c", "127.0.0.1", "-p", str(UDP_PORT), "-b", "20M",
                        "-l", "1200", "-t", "2", "-J", stdout=subprocess.PIPE, text=True)
    s = _iperf3_json(cli)["end"]["sum"]
    assert s["packets"] > 1000 and s["lost_percent"] < 5, s
    c = vm.daemon.counters()
    # a flow per guest-side port for the two outbound runs (the inbound one rides
    # the forwarded port's own socket)
    assert c.get("udp_flows", 0) >= 2, c

# 100 MiB each way, sha256 at both ends: host->guest over IPv4, guest->host over IPv6
BULK = 100 << 20
SEND_SERVER = r"""
import hashlib, os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1); s.settimeout(120)
print("listening", flush=True)
c, _ = s.accept()
h = hashlib.sha256(); left = int(sys.argv[2])
while left:
    b = os.urandom(min(left, 1 << 20)); c.sendall(b); h.update(b); left -= len(b)
c.close()
print(h.hexdigest(), flush=True)
"""
RECV_SERVER = r"""
import hashlib, socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::1", int(sys.argv[1]))); s.listen(1); s.settimeout(120)
print("listening", flush=True)
c, _ = s.accept(); c.settimeout(120)
h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""


@pytest.mark.slow
def test_100mib_each_way_sha256(vm: Sandbox) -> None:
    con = vm.console
    srv = vm.popen_host(sys.executable, "-c", SEND_SERVER, "7101", str(BULK),
                        stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "listening"
        rc, out = con.run("nc 192.0.2.1 7101 | sha256sum", 300)
        want = srv.stdout.readline().strip()
        assert rc == 0 and want and want in out, (out, want)
    finally:
        stop_process(srv)
    srv = vm.popen_host(sys.executable, "-c", RECV_SERVER, "7102", stdout=subprocess.PIPE,
                        text=True)
    try:
        assert srv.stdout.readline().strip() == "listening"
        rc, out = con.run("rm -f /tmp/p /tmp/h; mkfifo /tmp/p; sha256sum < /tmp/p > /tmp/h & "
                          f"dd if=/dev/urandom bs=65536 count={BULK >> 16} 2>/dev/null "
                          "| tee /tmp/p | nc 2001:db8::1 7102; wait; cat /tmp/h", 300)
        got = srv.stdout.readline().split()
        assert rc == 0 and got[0] == str(BULK) and got[1] in out, (out, got)
    finally:
        stop_process(srv)
    c = vm.daemon.counters()
    assert not {k: v for k, v in c.items() if k.startswith("drop.virtq-")}, c
    # host->guest TCP went straight from the socket into guest memory
    assert c.get("vhost_rx_direct", 0) > 1000, str(c)

# A DNS server that answers every A query with 198.51.100.77 (RFC 1035 4.1).
DNS_SERVER = r"""
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
for _ in range(20):
    q, peer = s.recvfrom(512)
    tid, flags, qd = struct.unpack("!HHH", q[:6])
    end = 12
    while q[end]:
        end += q[end] + 1
    question = q[12:end + 5]
    qtype = struct.unpack("!H", q[end + 1:end + 3])[0]
    an = 1 if qtype == 1 else 0
    reply = struct.pack("!HHHHHH", tid, 0x8180, 1, an, 0, 0) + question
    if an:
        reply += struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton("198.51.100.77")
    s.sendto(reply, peer)
"""


def vhost_msg(request: int, payload: bytes = b"", flags: int = 0x1) -> bytes:
    return struct.pack("<III", request, flags, len(payload)) + payload


def read_reply(s: socket.socket) -> tuple[int, int, bytes]:
    head = b""
    while len(head) < 12:
        chunk = s.recv(12 - len(head))
        assert chunk, "the daemon closed the connection"
        head += chunk
    req, flags, size = struct.unpack("<III", head)
    body = b""
    while len(body) < size:
        body += s.recv(size - len(body))
    return req, flags, body


def test_hostile_control_channel_then_qemu(sandbox: Sandbox, guest_image) -> None:
    """Unknown requests, bad sizes, bad rings, fds where none belong: each answered
    with a failure (REPLY_ACK) and counted; a message the protocol cannot have ends
    that connection only; then a real QEMU is served as usual."""
    d = sandbox.start_daemon("--vhost-user", "--runas", "0", mode="socket")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(d.socket_path)
    s.sendall(vhost_msg(1))                                   # GET_FEATURES
    req, flags, body = read_reply(s)
    features = struct.unpack("<Q", body)[0]
    assert req == 1 and flags & 0x4 and features & (1 << 32) and features & (1 << 15)
    s.sendall(vhost_msg(15))                                  # GET_PROTOCOL_FEATURES
    proto = struct.unpack("<Q", read_reply(s)[2])[0]
    assert proto & (1 << 3)                                   # REPLY_ACK
    s.sendall(vhost_msg(16, struct.pack("<Q", 1 << 3)))       # SET_PROTOCOL_FEATURES
    need = 0x1 | 0x8
    for bad in (vhost_msg(99, b"", need),                          # unknown request
                vhost_msg(8, b"\0" * 3, need),                     # SET_VRING_NUM, short
                vhost_msg(8, struct.pack("<II", 7, 256), need),    # a ring that does not exist
                vhost_msg(8, struct.pack("<II", 0, 100), need),    # not a power of two
                vhost_msg(2, struct.pack("<Q", 1 << 60), need),    # features never offered
                vhost_msg(5, struct.pack("<II", 9, 0), need),      # 9 regions
                vhost_msg(42, struct.pack("<II", 2, 0), need)):    # device state: no such direction
        s.sendall(bad)
        _, _, body = read_reply(s)
        assert struct.unpack("<Q", body)[0] != 0
    r, w = os.pipe()   # an fd with a message that takes none: closed, failure
    socket.send_fds(s, [vhost_msg(3, b"", need)], [r])
    assert struct.unpack("<Q", read_reply(s)[2])[0] == 0      # SET_OWNER itself is fine
    os.close(r)
    os.close(w)
    s.sendall(struct.pack("<III", 1, 0x1, 1 << 20))           # a 1 MiB payload: cut off
    s.settimeout(5)
    assert s.recv(16) == b""
    s.close()
    drops = d.drops()
    for reason in ("vhost-unknown-request", "vhost-bad-size", "vhost-bad-ring",
                   "vhost-bad-features", "vhost-bad-fds", "vhost-bad-message"):
        assert drops.get(reason, 0) >= 1, (reason, drops)
    assert d.alive()
    q, con = boot(sandbox, guest_image, d.socket_path)
    try:
        rc, out = con.run("udhcpc -i eth0 -n -q -t 5 -T 2 -s /usr/share/udhcpc/default.script"
                          " && ping -c 1 -W 3 192.0.2.1", 60)
        assert rc == 0, out + d.log()[-1500:]
    finally:
        con.close()
        stop_process(q)


def test_one_off_exits_when_qemu_goes(sandbox: Sandbox, guest_image) -> None:
    d = sandbox.start_daemon("--vhost-user", "--one-off", "--runas", "0", mode="socket")
    q, con = boot(sandbox, guest_image, d.socket_path)
    con.close()
    stop_process(q)
    wait_for(lambda: not d.alive(), 15, "the daemon to exit after QEMU")
    assert d.wait() == 0
    assert "front end gone" in d.log()


def test_print_capabilities() -> None:
    from passtcore.sandbox import daemon_binary

    r = subprocess.run([daemon_binary(), "--print-capabilities"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and r.stdout.replace(" ", "").replace("\n", "") == '{"type":"net"}'


def test_qemu_killed_and_restarted_gets_a_link_again(sandbox: Sandbox, guest_image) -> None:
    """Without --one-off the daemon outlives its front end: QEMU killed mid-flight
    (no GET_VRING_BASE, no goodbye), a new QEMU gets a working link; the old
    guest memory is unmapped, its fds closed."""
    d = sandbox.start_daemon("--vhost-user", "--runas", "0", mode="socket")
    for round_ in range(2):
        q, con = boot(sandbox, guest_image, d.socket_path)
        try:
            rc, out = con.run("udhcpc -i eth0 -n -q -t 5 -T 2 -s /usr/share/udhcpc/default.script"
                              " && ping -c 1 -W 3 192.0.2.1", 60)
            assert rc == 0, (round_, out, d.log()[-1500:])
        finally:
            con.close()
            q.kill()      # SIGKILL: QEMU says nothing to the daemon
            q.wait(10)
        wait_for(lambda: d.log().count("front end gone") > round_, 15, "the daemon to notice")
        assert d.alive()
    c = d.counters()
    assert c["clients"] == 2
    fds = os.listdir(f"/proc/{d.pid}/fd")
    maps = open(f"/proc/{d.pid}/maps").read()
    assert "memfd" not in maps, "guest memory still mapped after the front end left"
    assert len(fds) < 30, fds
