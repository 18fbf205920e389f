"""The command-line surface of passt (passt-reference 3.1) -> ``Options``.

A small getopt_long work-alike rather than argparse, for two reasons: the
daemon must bind its socket within ~20 ms of exec, so this module imports
nothing heavy at load time (``scan_early`` runs before anything else), and
passt's errors are one line naming the offending option, exit status 1,
which argparse does not give. Validation happens here too, so that every
configuration error surfaces before the daemon forks.

Modes: without ``--netns``/a PID the daemon is passt (QEMU stream socket or
``-F``); with them it is the namespace mode (pasta-like tap). Options of the
other mode are rejected, as passt/pasta do.
"""
from __future__ import annotations

import os
import sys

# No `typing` at run time: importing it costs milliseconds of the start-up budget.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PROG = "passtcore-run"
VERSION = "0.1.0"
LOG_SIZE_DEFAULT = 1 << 20
LOG_SIZE_MIN = 5 * 8192  # 5 * max(BUFSIZ, page size), as passt


class OptionError(Exception):
    """A bad command line: ``str()`` is the one-line message; exit status 1."""


# (long names, short letter or "", takes an argument, key, repeatable)
TABLE: tuple[tuple[tuple[str, ...], str, bool, str, bool], ...] = (
    (("debug",), "d", False, "debug", True),
    (("trace",), "", False, "trace", True),
    (("quiet",), "q", False, "quiet", True),
    (("foreground",), "f", False, "foreground", True),
    (("stderr",), "e", False, "stderr", True),
    (("log-file",), "l", True, "log_file", False),
    (("log-size",), "", True, "log_size", False),
    (("runas",), "", True, "runas", False),
    (("help",), "h", False, "help", True),
    (("version",), "", False, "version", True),
    (("pcap",), "p", True, "pcap", False),
    (("pid",), "P", True, "pid_file", False),
    (("socket", "socket-path"), "s", True, "socket", False),
    (("fd",), "F", True, "fd", False),
    (("one-off",), "1", False, "one_off", True),
    (("vhost-user",), "", False, "vhost_user", True),
    (("print-capabilities",), "", False, "print_capabilities", True),
    (("repair-path",), "", True, "repair_path", False),
    (("migrate-exit",), "", False, "migrate_exit", True),
    (("migrate-no-linger",), "", False, "migrate_no_linger", True),
    (("mtu",), "m", True, "mtu", False),
    (("address",), "a", True, "address", True),
    (("netmask",), "n", True, "netmask", False),
    (("mac-addr",), "M", True, "mac_addr", False),
    (("gateway",), "g", True, "gateway", True),
    (("interface",), "i", True, "interface", False),
    (("outbound",), "o", True, "outbound", True),
    (("outbound-if4",), "", True, "outbound_if4", False),
    (("outbound-if6",), "", True, "outbound_if6", False),
    (("ipv4-only",), "4", False, "ipv4_only", True),
    (("ipv6-only",), "6", False, "ipv6_only", True),
    (("dns",), "D", True, "dns", True),
    (("search",), "S", True, "search", True),
    (("no-dhcp-dns",), "", False, "no_dhcp_dns", True),
    (("no-dhcp-search",), "", False, "no_dhcp_search", True),
    (("dhcp-dns",), "", False, "dhcp_dns", True),
    (("dhcp-search",), "", False, "dhcp_search", True),
    (("dns-forward",), "", True, "dns_forward", True),
    (("dns-host",), "", True, "dns_host", False),
    (("no-tcp",), "", False, "no_tcp", True),
    (("no-udp",), "", False, "no_udp", True),
    (("no-icmp",), "", False, "no_icmp", True),
    (("no-dhcp",), "", False, "no_dhcp", True),
    (("no-ndp",), "", False, "no_ndp", True),
    (("no-dhcpv6",), "", False, "no_dhcpv6", True),
    (("no-ra",), "", False, "no_ra", True),
    (("no-map-gw",), "", False, "no_map_gw", True),
    (("max-flows",), "", True, "max_flows", False),
    (("tcp-ports",), "t", True, "tcp_ports", True),
    (("udp-ports",), "u", True, "udp_ports", True),
    (("tcp-ns",), "T", True, "tcp_ns", True),
    (("udp-ns",), "U", True, "udp_ns", True),
    (("ns-ifname",), "I", True, "ns_ifname", False),
    (("userns",), "", True, "userns", False),
    (("netns",), "", True, "netns", False),
    (("netns-only",), "", False, "netns_only", True),
    (("no-netns-quit",), "", False, "no_netns_quit", True),
    (("config-net",), "", False, "config_net", True),
    (("ns-mac-addr",), "", True, "ns_mac_addr", False),
    (("no-tap-offload",), "", False, "no_tap_offload", True),
    (("demo",), "", False, "demo", True),
)

_LONG = {name: row for row in TABLE for name in row[0]}
_SHORT = {row[1]: row for row in TABLE if row[1]}
PASST_ONLY = {"socket", "fd", "one_off", "no_dhcp_dns", "no_dhcp_search", "vhost_user",
              "repair_path", "migrate_exit", "migrate_no_linger"}
VHOST_USER_ONLY = {"repair_path": "--repair-path", "migrate_exit": "--migrate-exit",
                   "migrate_no_linger": "--migrate-no-linger"}
PASTA_ONLY = {"tcp_ns", "udp_ns", "ns_ifname", "userns", "netns_only", "no_netns_quit",
              "config_net", "ns_mac_addr", "dhcp_dns", "dhcp_search", "no_tap_offload"}


def _display(row: tuple[Any, ...]) -> str:
    return "--" + row[0][0]


def _lookup_long(name: str) -> tuple[Any, ...]:
    row = _LONG.get(name)
    if row is not None:
        return row
    # getopt_long accepts unambiguous prefixes.
    hits = {r for n, r in _LONG.items() if n.startswith(name)} if name else set()
    if len(hits) == 1:
        return hits.pop()
    if hits:
        raise OptionError(f"option '--{name}' is ambiguous")
    raise OptionError(f"unrecognized option '--{name}'")


def tokenize(argv: list[str]) -> tuple[list[tuple[tuple[Any, ...], str | None, str]], list[str]]:
    """getopt_long: ``[(row, value, as written)]`` and the positional arguments."""
    out: list[tuple[tuple[Any, ...], str | None, str]] = []
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positional.extend(argv[i:])
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            row = _lookup_long(name)
            if row[2]:
                if not eq:
                    if i >= len(argv):
                        raise OptionError(f"option '{_display(row)}' requires an argument")
                    value = argv[i]
                    i += 1
                out.append((row, value, _display(row)))
            else:
                if eq:
                    raise OptionError(f"option '{_display(row)}' doesn't allow an argument")
                out.append((row, None, _display(row)))
        elif arg.startswith("-") and arg != "-":
            j = 1
            while j < len(arg):
                letter = arg[j]
                row = _SHORT.get(letter)
                if row is None:
                    raise OptionError(f"invalid option -- '{letter}'")
                j += 1
                if row[2]:
                    if j < len(arg):
                        value = arg[j:]
                    elif i < len(argv):
                        value = argv[i]
                        i += 1
                    else:
                        raise OptionError(f"option requires an argument -- '{letter}'")
                    out.append((row, value, f"-{letter}"))
                    break
                out.append((row, None, f"-{letter}"))
        else:
            positional.append(arg)
    return out, positional


def scan_early(argv: list[str]) -> tuple[str, str | None]:
    """Cheap pre-scan for the early bind: ``(action, socket path)``.

    ``action`` is ``"bind"`` (passt socket mode: bind now), ``"none"`` (namespace
    mode, ``-F``, ``--demo``, help/version) or ``"error"`` (let the full parser
    report it). Only the table is consulted: no validation, no imports.
    """
    try:
        tokens, positional = tokenize(argv)
    except OptionError:
        return "error", None
    socket_path = None
    for row, value, _ in tokens:
        key = row[3]
        if key in ("help", "version", "fd", "netns", "demo", "print_capabilities"):
            return "none", None
        if key == "socket":
            socket_path = value
    if positional:
        return "none", None
    return "bind", socket_path


class Options:
    """Validated options. Attribute names follow the long option names."""

    def __init__(self) -> None:
        self.debug = self.trace = self.quiet = self.foreground = self.stderr = False
        self.log_file: str | None = None
        self.log_size = LOG_SIZE_DEFAULT
        self.runas: tuple[int, int] | None = None
        self.help = self.version = False
        self.pcap: str | None = None
        self.pid_file: str | None = None
        self.socket: str | None = None
        self.fd: int | None = None
        self.one_off = False
        self.vhost_user = False
        self.print_capabilities = False
        self.repair_path: str | None = None   # None: <socket>.repair with --vhost-user
        self.migrate_exit = self.migrate_no_linger = False
        self.mtu: int | None = None           # None: default 65520; 0: do not advertise
        self.addr4: bytes | None = None
        self.prefix4: int | None = None
        self.addr6: bytes | None = None
        self.netmask: int | None = None
        self.mac_addr: bytes | None = None
        self.gw4: bytes | None = None
        self.gw6: bytes | None = None
        self.interface: str | None = None
        self.outbound4: bytes | None = None
        self.outbound6: bytes | None = None
        self.outbound_if4: str | None = None
        self.outbound_if6: str | None = None
        self.ipv4_only = self.ipv6_only = False
        self.dns: list[bytes] | None = None   # None: from resolv.conf; []: "-D none"
        self.search: list[str] | None = None
        # Not sent in DHCP/NDP/DHCPv6? passt: --no-dhcp-dns/--no-dhcp-search; pasta
        # (namespace mode): True unless --dhcp-dns/--dhcp-search (parse() sets them).
        self.no_dhcp_dns = self.no_dhcp_search = False
        self.dns_forward4: bytes | None = None
        self.dns_forward6: bytes | None = None
        self.dns_host: bytes | None = None
        self.no_tcp = self.no_udp = self.no_icmp = False
        self.no_dhcp = self.no_ndp = self.no_dhcpv6 = self.no_ra = False
        self.no_map_gw = False
        self.max_flows: int | None = None     # None: conf.DEFAULT_MAX_FLOWS
        self.tcp_ports: list[Any] = []        # list[portspec.PortSpec]
        self.udp_ports: list[Any] = []
        self.tcp_ns: list[Any] = []
        self.udp_ns: list[Any] = []
        self.ns_ifname: str | None = None
        # The user namespace to join before the netns (None: none): --userns PATH, else
        # a PID target's /proc/PID/ns/user unless --netns-only (pasta's rule).
        self.userns: str | None = None
        self.netns: str | None = None        # a path (names resolved to /run/netns/NAME)
        self.netns_only = self.no_netns_quit = self.config_net = False
        self.no_tap_offload = False
        self.ns_mac_addr: bytes | None = None
        self.demo = False
        self.argv: list[str] = []

    @property
    def namespace_mode(self) -> bool:
        return self.netns is not None

    @property
    def mode(self) -> str:
        return "pasta" if self.namespace_mode else "passt"

    def __repr__(self) -> str:  # for debug logs
        return f"Options({vars(self)!r})"


def _ip(value: str, opt: str) -> bytes:
    import ipaddress

    try:
        return ipaddress.ip_address(value).packed
    except ValueError:
        raise OptionError(f"{opt}: invalid address '{value}'") from None


def _guest_addr(value: str, opt: str) -> tuple[bytes, int | None]:
    import ipaddress

    text, slash, plen = value.partition("/")
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise OptionError(f"{opt}: invalid address '{value}'") from None
    bad = addr.is_unspecified or addr.is_loopback or addr.is_multicast
    if addr.version == 4:
        bad = bad or addr == ipaddress.IPv4Address("255.255.255.255")
    else:
        bad = bad or addr.ipv4_mapped is not None or (
            addr.packed[:12] == bytes(12) and not addr.is_unspecified)
    if bad:
        raise OptionError(f"{opt}: invalid address '{value}'")
    prefix = None
    if slash:
        limit = 32 if addr.version == 4 else 128
        if not plen.isdigit() or int(plen) > limit:
            raise OptionError(f"{opt}: invalid prefix length in '{value}'")
        prefix = int(plen)
    return addr.packed, prefix


def _mac(value: str, opt: str) -> bytes:
    parts = value.split(":")
    try:
        if len(parts) != 6 or any(len(p) not in (1, 2) for p in parts):
            raise ValueError
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise OptionError(f"{opt}: invalid MAC address '{value}'") from None


def _ifname(value: str, opt: str) -> str:
    if not value or len(value) >= 16 or "/" in value or value.strip() != value:
        raise OptionError(f"{opt}: invalid interface name '{value}'")
    return value


def _netmask(value: str, opt: str) -> int:
    if value.isdigit():
        n = int(value)
        if n > 32:
            raise OptionError(f"{opt}: invalid netmask '{value}'")
        return n
    raw = _ip(value, opt)
    if len(raw) != 4:
        raise OptionError(f"{opt}: invalid netmask '{value}'")
    bits = int.from_bytes(raw, "big")
    n = bin(bits).count("1")
    if bits != ((0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF):
        raise OptionError(f"{opt}: invalid netmask '{value}' (not contiguous)")
    return n


def _int(value: str, opt: str, low: int, high: int, what: str) -> int:
    try:
        n = int(value, 0)
    except ValueError:
        raise OptionError(f"{opt}: invalid {what} '{value}'") from None
    if not low <= n <= high:
        raise OptionError(f"{opt}: {what} {n} out of range ({low}..{high})")
    return n


def _runas(value: str, opt: str) -> tuple[int, int]:
    import grp
    import pwd

    user, _, group = value.partition(":")
    try:
        if user.isdigit():
            uid = int(user)
            try:
                gid = pwd.getpwuid(uid).pw_gid
            except KeyError:
                gid = uid
        else:
            pw = pwd.getpwnam(user)
            uid, gid = pw.pw_uid, pw.pw_gid
        if group:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise OptionError(f"{opt}: invalid user or group '{value}'") from None
    return uid, gid


def parse(argv: list[str]) -> Options:
    """Parse and validate ``argv`` (without the program name) or raise ``OptionError``."""
    from passtcore import portspec

    tokens, positional = tokenize(argv)
    o = Options()
    o.argv = list(argv)
    seen: dict[str, str] = {}
    keys = {row[3] for row, _, _ in tokens}
    if positional:
        if len(positional) == 1 and positional[0].isdigit() and "netns" not in keys:
            o.netns = f"/proc/{positional[0]}/ns/net"
        else:
            raise OptionError(f"unexpected argument '{positional[0]}' (commands are not supported;"
                              " give a PID or --netns)")
    if "netns" in keys:
        value = next(v for r, v, _ in tokens if r[3] == "netns")
        o.netns = value if os.sep in value else os.path.join("/run/netns", value)
    mode = o.mode
    dns_forward: list[tuple[str, str]] = []
    addresses: list[tuple[str, str]] = []
    gateways: list[tuple[str, str]] = []
    outbounds: list[tuple[str, str]] = []
    dns: list[tuple[str, str]] = []
    ports: dict[str, list[str]] = {"tcp_ports": [], "udp_ports": [], "tcp_ns": [], "udp_ns": []}
    for row, value, written in tokens:
        key, repeatable = row[3], row[4]
        if key in seen and not repeatable:
            raise OptionError(f"multiple {written} options given")
        seen[key] = written
        if mode == "passt" and key in PASTA_ONLY:
            raise OptionError(f"{written} is for namespace (pasta) mode only: add --netns")
        if mode == "pasta" and key in PASST_ONLY:
            raise OptionError(f"{written} is for socket (passt) mode only, not with --netns")
        assert value is not None or not row[2]
        if not row[2]:
            if key in ("debug", "trace", "quiet", "foreground", "stderr", "help", "version",
                       "one_off", "ipv4_only", "ipv6_only", "no_dhcp_dns", "no_dhcp_search",
                       "no_tcp", "no_udp", "no_icmp", "no_dhcp", "no_ndp", "no_dhcpv6",
                       "no_ra", "no_map_gw", "netns_only", "no_netns_quit", "config_net",
                       "no_tap_offload", "demo", "vhost_user", "print_capabilities",
                       "migrate_exit", "migrate_no_linger"):
                setattr(o, key, True)
            elif key == "dhcp_dns":
                o.no_dhcp_dns = False
            elif key == "dhcp_search":
                o.no_dhcp_search = False
            continue
        v: str = value  # type: ignore[assignment]
        if key in ("log_file", "pcap", "pid_file", "socket", "userns", "repair_path"):
            if not v:
                raise OptionError(f"{written}: empty path")
            setattr(o, key, v)
        elif key == "log_size":
            o.log_size = _int(v, written, LOG_SIZE_MIN, 1 << 40, "log size")
        elif key == "runas":
            o.runas = _runas(v, written)
        elif key == "fd":
            o.fd = _int(v, written, 3, 1 << 20, "file descriptor")
        elif key == "mtu":
            n = _int(v, written, 0, 65535, "MTU")
            if 0 < n < 68:
                raise OptionError(f"{written}: MTU {n} out of range (68..65535, or 0)")
            o.mtu = n
        elif key == "address":
            addresses.append((v, written))
        elif key == "netmask":
            o.netmask = _netmask(v, written)
        elif key == "mac_addr":
            o.mac_addr = _mac(v, written)
        elif key == "ns_mac_addr":
            o.ns_mac_addr = _mac(v, written)
        elif key == "gateway":
            gateways.append((v, written))
        elif key == "outbound":
            outbounds.append((v, written))
        elif key in ("interface", "outbound_if4", "outbound_if6", "ns_ifname"):
            setattr(o, key, _ifname(v, written))
        elif key == "dns":
            dns.append((v, written))
        elif key == "search":
            if v == "none":
                o.search = []
            else:
                names = v.replace("\t", " ").split()
                if not names or any(len(n) > 253 for n in names):
                    raise OptionError(f"{written}: invalid search list '{v}'")
                o.search = (o.search or []) + names
        elif key == "dns_forward":
            dns_forward.append((v, written))
        elif key == "dns_host":
            o.dns_host = _ip(v, written)
        elif key == "max_flows":
            o.max_flows = _int(v, written, 1, 1 << 24, "flow count")
        elif key in ports:
            ports[key].append(v)
        elif key == "netns":
            pass  # handled above
        else:  # pragma: no cover - the table and this function must agree
            raise OptionError(f"{written}: not handled")

    if o.debug and o.quiet:
        raise OptionError("-d/--debug and -q/--quiet are mutually exclusive")
    if o.trace and o.quiet:
        raise OptionError("--trace and -q/--quiet are mutually exclusive")
    o.debug = o.debug or o.trace
    if o.stderr and o.log_file:
        raise OptionError("-e/--stderr and -l/--log-file are mutually exclusive")
    if o.ipv4_only and o.ipv6_only:
        raise OptionError("-4/--ipv4-only and -6/--ipv6-only are mutually exclusive")
    if o.fd is not None and o.socket is not None:
        raise OptionError("-F/--fd and -s/--socket are mutually exclusive")
    if o.fd is not None and o.vhost_user:
        raise OptionError("-F/--fd and --vhost-user are mutually exclusive")
    if o.fd is not None:
        o.one_off = True
    for key, written in VHOST_USER_ONLY.items():
        if getattr(o, key) and not o.vhost_user:
            raise OptionError(f"{written} is for vhost-user mode only: add --vhost-user")
    if o.repair_path is not None and len(o.repair_path.encode()) >= 108:
        raise OptionError(f"--repair-path: '{o.repair_path}' is too long for a UNIX socket")
    for v, written in addresses:
        raw, prefix = _guest_addr(v, written)
        attr = "addr4" if len(raw) == 4 else "addr6"
        if getattr(o, attr) is not None:
            raise OptionError(f"multiple {written} options given for IPv{4 if attr == 'addr4' else 6}")
        setattr(o, attr, raw)
        if prefix is not None and attr == "addr4":
            o.prefix4 = prefix
    if o.netmask is not None:
        o.prefix4 = o.netmask
    for v, written in gateways:
        raw = _ip(v, written)
        attr = "gw4" if len(raw) == 4 else "gw6"
        if getattr(o, attr) is not None:
            raise OptionError(f"multiple {written} options given for the same family")
        setattr(o, attr, raw)
    for v, written in outbounds:
        raw = _ip(v, written)
        attr = "outbound4" if len(raw) == 4 else "outbound6"
        if getattr(o, attr) is not None:
            raise OptionError(f"multiple {written} options given for the same family")
        setattr(o, attr, raw)
    for v, written in dns:
        if v == "none":
            o.dns = []
            continue
        if o.dns is None:
            o.dns = []
        o.dns.append(_ip(v, written))
    for v, written in dns_forward:
        raw = _ip(v, written)
        attr = "dns_forward4" if len(raw) == 4 else "dns_forward6"
        if getattr(o, attr) is not None:
            raise OptionError(f"multiple {written} options given for the same family")
        setattr(o, attr, raw)
    flag = {"tcp_ports": "-t/--tcp-ports", "udp_ports": "-u/--udp-ports",
            "tcp_ns": "-T/--tcp-ns", "udp_ns": "-U/--udp-ns"}
    for key, texts in ports.items():
        try:
            specs = portspec.parse_specs(texts, "tcp" if key.startswith("tcp") else "udp", mode)
        except portspec.PortSpecError as exc:
            raise OptionError(f"{flag[key]}: {exc}") from None
        if key in ("tcp_ns", "udp_ns") and any(s.address or s.ifname for s in specs):
            raise OptionError(f"{flag[key]}: an address or interface prefix is not allowed")
        setattr(o, key, specs)
    if mode == "pasta":
        # pasta's defaults: resolvers and search domains are not sent unless asked for.
        o.no_dhcp_dns = "dhcp_dns" not in keys
        o.no_dhcp_search = "dhcp_search" not in keys
    if o.netns_only and o.userns is not None:
        raise OptionError("Both --userns and --netns-only given")
    if o.userns is None and positional and not o.netns_only and "netns" not in keys:
        o.userns = f"/proc/{positional[0]}/ns/user"
    if o.config_net:
        o.no_ra = True  # pasta: --config-net implies --no-ra
    if o.netns is not None and not o.demo:
        from passtcore import netns as _netns

        if not os.path.exists(o.netns) or not _netns.is_netns(o.netns):
            raise OptionError(f"--netns: '{o.netns}' is not a network namespace")
        if o.userns is not None:
            try:
                ok = _netns.is_userns(o.userns)
            except OSError as exc:
                raise OptionError(f"--userns: '{o.userns}': {exc.strerror}") from None
            if not ok:
                raise OptionError(f"--userns: '{o.userns}' is not a user namespace")
    return o


USAGE = f"""Usage: {PROG} [OPTION]...
       {PROG} --netns PATH|NAME [OPTION]...   (namespace mode, like pasta)
       {PROG} --demo

A passt-compatible user-mode network daemon: QEMU stream socket (default),
an inherited socket (-F), or a tap device in a network namespace (--netns).

  -d, --debug            debug messages        --trace          per-packet messages
  -q, --quiet            errors only           -f, --foreground do not daemonise
  -e, --stderr           log to stderr too     -l, --log-file PATH   log to PATH only
  --log-size BYTES       log file cap (default 1 MiB)
  --runas UID[:GID]|LOGIN[:GROUP]  identity after setup (root: default nobody)
  -p, --pcap FILE        capture guest-facing frames
  -P, --pid FILE         write the daemon's PID to FILE
  -h, --help             this text             --version        version
  -s, --socket PATH      UNIX socket path (default: first free /tmp/passt_N.socket)
  -F, --fd FD            use an inherited connected stream socket (implies -1)
  -1, --one-off          exit when the client disconnects
  --vhost-user           serve QEMU's vhost-user-net device on the socket (KubeVirt v1.6+)
  --print-capabilities   print the vhost-user back-end capabilities (JSON) and exit
  --repair-path PATH     socket for the TCP_REPAIR helper, passtcore-repair or
                         passt-repair (vhost-user; default: <socket>.repair;
                         none: no helper, connections do not survive a migration)
  --migrate-exit         the migration source exits once its state is sent
                         (default: it keeps running, in case the guest comes back)
  --migrate-no-linger    the source closes the sockets of migrated connections at
                         once (default: kept, silent, until it exits; needed when
                         source and target share a network namespace)
  -m, --mtu MTU          MTU for DHCP/RA (68..65535, 0 = none; default 65520)
  -a, --address ADDR     guest address (IPv4 and/or IPv6)
  -n, --netmask MASK     IPv4 netmask or prefix length
  -M, --mac-addr ADDR    our MAC address          -g, --gateway ADDR   gateway/router
  -i, --interface NAME   template interface       -o, --outbound ADDR  source for sockets
  --outbound-if4 NAME, --outbound-if6 NAME     bind outbound sockets to NAME
  -4, --ipv4-only        -6, --ipv6-only
  -D, --dns ADDR|none    DNS servers           -S, --search LIST|none  search list
  --no-dhcp-dns, --no-dhcp-search  socket mode: do not send resolvers / search list
  --dhcp-dns, --dhcp-search        namespace mode: send them (default there: not sent)
  --dns-forward ADDR, --dns-host ADDR
  --no-tcp --no-udp --no-icmp --no-dhcp --no-ndp --no-dhcpv6 --no-ra --no-map-gw
  --max-flows N          TCP, UDP and ICMP flows in all (default 131072)
  -t, --tcp-ports SPEC   -u, --udp-ports SPEC  host->guest forwarding:
                         none | all | [ADDR][%IF]/LIST | LIST,  LIST: [~]A[-B][:C[-D]],...
                         | auto (namespace mode: the ports bound in it, re-scanned each second)
namespace mode:
  --netns PATH|NAME | PID  target namespace    -I, --ns-ifname NAME  tap name
  --config-net           configure the tap     --ns-mac-addr ADDR    tap MAC
  --userns PATH          join this user namespace first (default with a PID: the
                         PID's user namespace; with --netns: none)
  --netns-only           do not join a user namespace
  --no-tap-offload       plain frames on the tap (no checksum/TSO offloads)
  --no-netns-quit        keep running when the namespace goes away
  -T, --tcp-ns SPEC      namespace -> host TCP over loopback: connections to the
                         namespace's 127.0.0.1/::1 go to the host's loopback (same
                         family). SPEC: none | auto | LIST as for -t (A:B = namespace
                         port A -> host port B); auto: the ports bound on the host's
                         loopback/wildcard, re-scanned every second
  -U, --udp-ns SPEC      the same for UDP (auto also covers the host's TCP ports)
  --demo                 build a sandbox, serve a guest namespace, show DHCP/ping/HTTP
"""


def fail(message: str) -> None:
    """Print ``PROG: message`` (one line) and exit 1."""
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.exit(1)
