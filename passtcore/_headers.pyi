"""Type stubs of the Cython header kernel (twin: passtcore_py.headers)."""
from typing import Any

from passtcore_py.headers import REASONS as REASONS
from passtcore_py.headers import ParseError as ParseError
from passtcore_py.headers import reason_code as reason_code

ETH_P_IP: int
ETH_P_IPV6: int
ETH_P_ARP: int

class FrameInfo:
    eth_dst: bytes
    eth_src: bytes
    ethertype: int
    vlan: int
    l3_offset: int
    ip_version: int
    src: bytes
    dst: bytes
    ttl: int
    l3_len: int
    is_fragment: bool
    l4_proto: int
    l4_offset: int
    l4_len: int
    sport: int
    dport: int
    payload_offset: int
    payload_len: int
    tcp_seq: int
    tcp_ack: int
    tcp_flags: int
    tcp_window: int
    tcp_mss: int
    tcp_wscale: int
    tcp_sack_ok: bool
    tcp_ts_val: int
    tcp_ts_ecr: int
    icmp_type: int
    icmp_code: int
    icmp_id: int
    icmp_seq: int
    arp_op: int
    arp_sha: bytes
    arp_spa: bytes
    arp_tha: bytes
    arp_tpa: bytes
    def __init__(self) -> None: ...
    def as_dict(self) -> dict[str, Any]: ...

def parse_frame(buf: Any, offset: int = 0, length: int = -1) -> FrameInfo: ...
def parse_ethernet(buf: Any, offset: int = 0, length: int = -1, info: FrameInfo | None = None) -> FrameInfo: ...
def parse_arp(buf: Any, offset: int = 0, length: int = -1, info: FrameInfo | None = None) -> FrameInfo: ...
def parse_ipv4(buf: Any, offset: int = 0, length: int = -1, info: FrameInfo | None = None) -> FrameInfo: ...
def parse_ipv6(buf: Any, offset: int = 0, length: int = -1, info: FrameInfo | None = None) -> FrameInfo: ...
def parse_tcp(buf: Any, offset: int, length: int = -1, info: FrameInfo | None = None) -> FrameInfo: ...
def parse_udp(buf: Any, offset: int, length: int = -1, info: FrameInfo | None = None) -> FrameInfo: ...
def parse_icmp(
    buf: Any, offset: int, length: int = -1, info: FrameInfo | None = None, ip_version: int = 4
) -> FrameInfo: ...
def parse_tcp_options(buf: Any, offset: int, length: int) -> tuple[int, int, bool, int, int]: ...
def set_macs(buf: Any, off: int, dst: bytes | None = None, src: bytes | None = None) -> None: ...
def set_addresses(buf: Any, l3off: int, src: bytes | None = None, dst: bytes | None = None) -> None: ...
def set_ports(buf: Any, l3off: int, l4off: int, sport: int | None = None, dport: int | None = None) -> None: ...
def set_ttl(buf: Any, l3off: int, ttl: int) -> None: ...
def set_tcp(
    buf: Any, l4off: int, seq: int | None = None, ack: int | None = None,
    window: int | None = None, flags: int | None = None,
) -> None: ...
def header_len(ip_version: int, l4_proto: int, options_len: int = 0) -> int: ...
def build_tcp(
    buf: Any, offset: int, eth_dst: bytes, eth_src: bytes, src: bytes, dst: bytes, sport: int,
    dport: int, seq: int, ack: int, flags: int, window: int, payload_len: int, options: bytes = b"",
) -> int: ...
def build_tcp_burst(
    buf: Any, offset: int, stride: int, payload_lens: Any, eth_dst: bytes, eth_src: bytes,
    src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int, window: int,
    out: Any,
) -> int: ...
def build_udp(
    buf: Any, offset: int, eth_dst: bytes, eth_src: bytes, src: bytes, dst: bytes, sport: int,
    dport: int, payload_len: int, l4_csum: bool = True,
) -> int: ...
def build_icmp(
    buf: Any, offset: int, eth_dst: bytes, eth_src: bytes, src: bytes, dst: bytes, type: int,
    code: int, ident: int, seq: int, payload_len: int,
) -> int: ...
