"""A scripted guest for the acceptance tests: plays QEMU on the daemon's stream socket.

Frames go out as scapy packets; what comes back is parsed with scapy and
matched by a predicate, so frames of other flows sharing the module's daemon
(late retransmissions, a previous test's FIN) are skipped, never mistaken for
the answer. Host-side peers are plain sockets opened inside the sandbox's host
namespace.
"""
from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

from netns_support import require_netns  # noqa: F401 (re-export)
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from daemon.helpers import StreamClient
from passtcore.netns import entered
from passtcore.sandbox import Daemon, Sandbox

GUEST_MAC = "52:54:00:12:34:56"
GUEST_LL = "fe80::5054:ff:fe12:3456"
OUR_MAC = Sandbox.host_mac  # the daemon copies the host interface's MAC
GW4, GW6 = Sandbox.gw4, Sandbox.gw6
FWD_TCP = 18080  # forwarded by the module daemon (-t)
ADDR4, ADDR6 = Sandbox.host_addr4, Sandbox.host_addr6  # the guest is given the host's


class Guest:
    """The test's side of the stream socket."""

    def __init__(self, sb: Sandbox, daemon: Daemon, client: StreamClient) -> None:
        self.sb, self.daemon, self.client = sb, daemon, client
        self.skipped: list[bytes] = []

    def send(self, pkt: Packet | bytes) -> None:
        self.client.send(bytes(pkt))

    def send_raw(self, data: bytes) -> None:
        self.client.send_raw(data)

    def expect(self, pred: Callable[[Ether], bool], timeout: float = 5.0) -> tuple[bytes, Ether]:
        """The first frame (raw bytes, parsed) satisfying ``pred``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching frame; skipped {len(self.skipped)}: "
                                   + "; ".join(Ether(f).summary() for f in self.skipped[-5:]))
            try:
                (raw,) = self.client.recv_frames(1, timeout=left)
            except TimeoutError:
                continue
            pkt = Ether(raw)
            if pred(pkt):
                return raw, pkt
            self.skipped.append(raw)

    def silent(self, pred: Callable[[Ether], bool], seconds: float = 0.5) -> None:
        """Assert that no frame satisfying ``pred`` arrives within ``seconds``."""
        try:
            raw, pkt = self.expect(pred, seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected reply: {pkt.summary()} {raw.hex()}")


def host_socket(sb: Sandbox, family: int, kind: int) -> socket.socket:
    """A socket living in the sandbox's host namespace (where the daemon runs)."""
    with entered(sb.host_ns):
        return socket.socket(family, kind)


def l4_checksum_ok(raw: bytes) -> bool:
    import passtcore
    return bool(passtcore.csum.verify_frame(raw))


def is_tcp(pkt: Ether, sport: int | None = None, dport: int | None = None) -> bool:
    return (TCP in pkt and (sport is None or pkt[TCP].sport == sport)
            and (dport is None or pkt[TCP].dport == dport))


def is_udp(pkt: Ether, sport: int | None = None, dport: int | None = None) -> bool:
    return (UDP in pkt and (sport is None or pkt[UDP].sport == sport)
            and (dport is None or pkt[UDP].dport == dport))


# -- frame builders shared by the acceptance modules -------------------------
def who_has(target: str, sender: str = "192.0.2.2") -> Ether:
    return (Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=1, hwsrc=GUEST_MAC, psrc=sender, hwdst="00:00:00:00:00:00", pdst=target))


def raw_icmp6_type(p: Ether) -> int:
    ip = p[IPv6]
    return bytes(ip.payload)[0] if ip.nh == 58 and len(bytes(ip.payload)) else -1


def dhcp6(msg: object, dst: str = "ff02::1:2") -> Ether:
    return (Ether(src=GUEST_MAC, dst="33:33:00:01:00:02")
            / IPv6(src=GUEST_LL, dst=dst) / UDP(sport=546, dport=547) / msg)


def options6(payload: bytes) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i < len(payload):
        code, ln = struct.unpack_from("!HH", payload, i)
        out.append((code, payload[i + 4:i + 4 + ln]))
        i += 4 + ln
    assert i == len(payload)
    return out


def tcp_frame(sport: int, dport: int, flags: str, seq: int, ack: int = 0, data: bytes = b"",
         window: int = 65535, options: list | None = None, dst: str = GW4) -> Ether:
    return (Ether(src=GUEST_MAC, dst=OUR_MAC) / IP(src=ADDR4, dst=dst)
            / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=window,
                  options=options or []) / data)


class Conn:
    """One guest-initiated connection to gw:port with a host listener on 127.0.0.1:port."""

    def __init__(self, world: Guest, port: int, gport: int, sack: bool = False,
                 isn: int = 1000) -> None:
        self.world, self.port, self.gport = world, port, gport
        self.lsock = host_socket(world.sb, socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", port))
        self.lsock.listen(1)
        self.lsock.settimeout(5)
        world.send(tcp_frame(gport, port, "S", isn, window=64240,
                        options=[("MSS", 1460), ("WScale", 7)]
                        + ([("SAckOK", b"")] if sack else [])))
        self.synack_raw, self.synack = world.expect(lambda p: is_tcp(p, port, gport))
        self.seq, self.our = isn + 1, self.synack[TCP].seq + 1
        self.conn: socket.socket | None = None

    def establish(self) -> socket.socket:
        self.send("A")
        self.conn, peer = self.lsock.accept()
        self.conn.settimeout(5)
        assert peer[0] == "127.0.0.1", "gateway -> loopback mapping (4.6)"
        return self.conn

    def send(self, flags: str, data: bytes = b"") -> None:
        self.world.send(tcp_frame(self.gport, self.port, flags, self.seq, self.our, data))

    def expect(self, pred: Callable[[Ether], bool], timeout: float = 5.0) -> Ether:
        return self.world.expect(lambda p: is_tcp(p, self.port, self.gport) and pred(p),
                                 timeout)[1]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.lsock.close()


