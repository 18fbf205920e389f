"""The option surface (passt-reference 3.1): bad options exit 1 with one line
naming the option, before any fork or network access; good ones parse."""
from __future__ import annotations

import os
import subprocess

import pytest

from passtcore.run.process import options
from passtcore.sandbox import daemon_binary

BAD = [
    (["--bogus"], "--bogus"),
    (["-Z"], "'Z'"),
    (["--mtu", "5"], "-mtu"),
    (["-m", "70000"], "-m"),
    (["--mtu=abc"], "--mtu"),
    (["--mtu"], "--mtu"),
    (["-a", "127.0.0.1"], "-a"),
    (["--address", "224.0.0.1"], "--address"),
    (["--address", "255.255.255.255"], "--address"),
    (["--address", "::ffff:1.2.3.4"], "--address"),
    (["--address", "not-an-ip"], "--address"),
    (["-a", "192.0.2.9", "-a", "192.0.2.10"], "-a"),
    (["--netmask", "255.0.255.0"], "--netmask"),
    (["--netmask", "33"], "--netmask"),
    (["--mac-addr", "02:00:00:00:00"], "--mac-addr"),
    (["-g", "bad"], "-g"),
    (["-i", "averyveryverylongname"], "-i"),
    (["-t", "20-30,25"], "-t/--tcp-ports"),
    (["-u", "22-80:32"], "-u/--udp-ports"),
    (["--tcp-ports", "70000"], "-t/--tcp-ports"),
    (["-t", "auto"], "-t/--tcp-ports"),
    (["-t", "22", "-t", "all"], "-t/--tcp-ports"),
    (["--log-size", "10"], "--log-size"),
    (["--runas", "no-such-user-xyz"], "--runas"),
    (["-F", "1"], "-F"),
    (["-F", "5"], "-F/--fd"),
    (["-d", "-q"], "-q"),
    (["--trace", "-q"], "--trace"),
    (["-e", "-l", "/tmp/x"], "-l/--log-file"),
    (["-4", "-6"], "-6"),
    (["--pcap", "a", "--pcap", "b"], "--pcap"),
    (["--config-net"], "--config-net"),
    (["-T", "22"], "-T"),
    (["--ns-ifname", "tap0"], "--ns-ifname"),
    (["--netns", "pc-no-such-netns-xyz"], "--netns"),
    (["-D", "nope"], "-D"),
    (["--dns-forward", "x"], "--dns-forward"),
    (["--foreground=1"], "--foreground"),
    (["extra"], "extra"),
]


@pytest.mark.parametrize("args, named", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_option_exits_1_naming_it(args: list[str], named: str, tmp_path) -> None:
    sock = str(tmp_path / "s.socket")
    r = subprocess.run([daemon_binary(), "-s", sock, *args], capture_output=True, text=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert named in lines[0]
    assert lines[0].startswith("passtcore-run: ")
    assert r.stdout == ""
    assert not os.path.exists(sock)  # the early-bound socket is removed again


def test_help_and_version_exit_0() -> None:
    r = subprocess.run([daemon_binary(), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "--tcp-ports" in r.stdout and "--netns" in r.stdout
    r = subprocess.run([daemon_binary(), "--version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("passtcore-run 0.1.0")


def test_libvirt_command_lines_parse() -> None:
    o = options.parse(["--one-off", "--socket", "/run/x.socket", "--pid", "/run/x.pid",
                       "--mtu", "1500", "--interface", "eth0", "--log-file", "/tmp/l",
                       "--address", "192.0.2.10", "--netmask", "24",
                       "--address", "2001:db8::10",
                       "--tcp-ports", "%eth0/all", "--udp-ports", "%eth0/all"])
    assert o.one_off and o.socket == "/run/x.socket" and o.pid_file == "/run/x.pid"
    assert o.mtu == 1500 and o.interface == "eth0" and o.prefix4 == 24
    assert o.addr4 == bytes([192, 0, 2, 10]) and o.addr6 is not None
    assert o.tcp_ports[0].mode == "all" and o.tcp_ports[0].ifname == "eth0"
    o = options.parse(["--one-off", "--socket", "/s", "--mac-addr", "52:54:00:12:34:56",
                       "--tcp-ports", "127.0.0.1%lo/8080-8082:18080-18082",
                       "--tcp-ports", "22", "--udp-ports", "8081"])
    assert o.mac_addr == bytes.fromhex("525400123456")
    assert [s.text for s in o.tcp_ports] == ["127.0.0.1%lo/8080-8082:18080-18082", "22"]
    o = options.parse(["--tcp-ports", "%eth0/~15000,~15001", "--udp-ports", "%eth0/all"])
    assert 15000 not in o.tcp_ports[0].expand() and 22 in o.tcp_ports[0].expand()


def test_short_bundles_and_attached_values() -> None:
    o = options.parse(["-1fq", "-s/tmp/a.socket", "-m0", "-t22"])
    assert o.one_off and o.foreground and o.quiet and o.socket == "/tmp/a.socket"
    assert o.mtu == 0 and o.tcp_ports[0].expand() == {22: 22}
    o = options.parse(["--one", "--fore"])  # unambiguous prefixes, as getopt_long
    assert o.one_off and o.foreground
    with pytest.raises(options.OptionError, match="ambiguous"):
        options.parse(["--no-d"])


def test_scan_early() -> None:
    assert options.scan_early(["-s", "/x", "-f"]) == ("bind", "/x")
    assert options.scan_early(["--socket=/y"]) == ("bind", "/y")
    assert options.scan_early(["-l", "-s"]) == ("bind", None)  # "-s" is -l's value
    assert options.scan_early(["-f"]) == ("bind", None)
    assert options.scan_early(["--netns", "x"])[0] == "none"
    assert options.scan_early(["-F", "4"])[0] == "none"
    assert options.scan_early(["--help"])[0] == "none"
    assert options.scan_early(["--bogus"])[0] == "error"


def test_fd_implies_one_off_and_dns_none() -> None:
    o = options.parse(["-F", "7", "-D", "none", "-S", "none"])
    assert o.one_off and o.fd == 7 and o.dns == [] and o.search == []
    o = options.parse(["-D", "192.0.2.53", "-D", "2001:db8::53", "-S", "a.example b.example"])
    assert len(o.dns) == 2 and o.search == ["a.example", "b.example"]


def test_start_up_path_imports_nothing_heavy() -> None:
    """Before the early bind only cli/options (and the package) are imported:
    no numpy, netlink, argparse, logging, kernels, conf. (ipaddress is left out of
    the list: the venv's site-packages .pth processing imports it already.)"""
    import sys

    code = ("import sys; import passtcore.run.process.cli as c; "
            "c._options.scan_early(['-s', '/x']); "
            "print(' '.join(m for m in ('numpy', 'pyroute2', 'argparse', "
            "'logging', 'passtcore.headers', 'passtcore._backend', 'passtcore.run.process.config') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def test_max_flows_option() -> None:
    from passtcore.run.process import config as conf
    from passtcore.run.process import options

    assert options.parse(["--max-flows", "64"]).max_flows == 64
    assert options.parse([]).max_flows is None
    assert conf.DEFAULT_MAX_FLOWS == 131072
    for bad in ("0", "-1", "x", str(1 << 25)):
        with pytest.raises(options.OptionError, match="--max-flows"):
            options.parse(["--max-flows", bad])


# -- namespace (pasta) mode ----------------------------------------------------------------

OWN_NETNS = "/proc/self/ns/net"  # a network namespace that always exists


def test_dhcp_dns_defaults_passt_and_pasta() -> None:
    """passt sends resolvers and search domains unless --no-dhcp-dns/--no-dhcp-search;
    pasta does not unless --dhcp-dns/--dhcp-search (passt-reference 3.1, 4.5)."""
    o = options.parse([])
    assert (o.no_dhcp_dns, o.no_dhcp_search) == (False, False)
    o = options.parse(["--no-dhcp-dns"])
    assert (o.no_dhcp_dns, o.no_dhcp_search) == (True, False)
    o = options.parse(["--no-dhcp-search"])
    assert (o.no_dhcp_dns, o.no_dhcp_search) == (False, True)
    o = options.parse(["--netns", OWN_NETNS])
    assert (o.no_dhcp_dns, o.no_dhcp_search) == (True, True)
    o = options.parse(["--netns", OWN_NETNS, "--dhcp-dns"])
    assert (o.no_dhcp_dns, o.no_dhcp_search) == (False, True)
    o = options.parse(["--netns", OWN_NETNS, "--dhcp-search"])
    assert (o.no_dhcp_dns, o.no_dhcp_search) == (True, False)
    o = options.parse(["--netns", OWN_NETNS, "--dhcp-dns", "--dhcp-search", "-D", "192.0.2.53"])
    assert (o.no_dhcp_dns, o.no_dhcp_search) == (False, False)
    o = options.parse([str(os.getpid()), "--dhcp-dns"])  # a PID target is pasta mode too
    assert (o.no_dhcp_dns, o.no_dhcp_search) == (False, True)
    with pytest.raises(options.OptionError, match="--dhcp-dns"):
        options.parse(["--dhcp-dns"])
    with pytest.raises(options.OptionError, match="--no-dhcp-search"):
        options.parse(["--netns", OWN_NETNS, "--no-dhcp-search"])


def test_dhcp_dns_defaults_reach_the_config() -> None:
    """What the L2 services read: NetConfig.no_dhcp_dns/no_dhcp_search."""
    from passtcore.run.l2.common import guest_dns, guest_search
    from passtcore.run.process import config as conf

    host = ({"mac": b"\x02" * 6, "addr": bytes([192, 0, 2, 2]), "prefix": 24,
             "gw": bytes([192, 0, 2, 1]), "ifname": "eth0"}, {})
    for argv, sent in (([], True), (["--netns", OWN_NETNS], False),
                       (["--netns", OWN_NETNS, "--dhcp-dns", "--dhcp-search"], True)):
        c = conf.build(options.parse(argv + ["-D", "192.0.2.53", "-S", "example.com"]),
                       resolv_path="/nonexistent", host=host)
        assert (guest_dns(c, 4) == [bytes([192, 0, 2, 53])]) is sent, argv
        assert (guest_search(c) == ["example.com"]) is sent, argv


def test_tcp_udp_ns_specs() -> None:
    o = options.parse(["--netns", OWN_NETNS, "-T", "9000:8000", "-T", "8100-8101",
                       "-U", "auto"])
    assert [s.expand() for s in o.tcp_ns] == [{9000: 8000}, {8100: 8100, 8101: 8101}]
    assert o.udp_ns[0].mode == "auto"
    with pytest.raises(options.OptionError, match="-T/--tcp-ns"):
        options.parse(["--netns", OWN_NETNS, "-T", "127.0.0.1/22"])
    with pytest.raises(options.OptionError, match="-U/--udp-ns"):
        options.parse(["--netns", OWN_NETNS, "-U", "all"])
    with pytest.raises(options.OptionError, match="-T/--tcp-ns"):
        options.parse(["--netns", OWN_NETNS, "-T", "auto", "-T", "22"])


def test_userns_resolution() -> None:
    """--userns PATH; a PID target joins the PID's user namespace unless --netns-only;
    --netns alone joins none (pasta's rule)."""
    pid = str(os.getpid())
    assert options.parse(["--netns", OWN_NETNS]).userns is None
    o = options.parse(["--netns", OWN_NETNS, "--userns", "/proc/self/ns/user"])
    assert o.userns == "/proc/self/ns/user"
    o = options.parse([pid])
    assert o.netns == f"/proc/{pid}/ns/net" and o.userns == f"/proc/{pid}/ns/user"
    o = options.parse([pid, "--netns-only"])
    assert o.userns is None and o.netns_only
    o = options.parse([pid, "--userns", "/proc/thread-self/ns/user"])
    assert o.userns == "/proc/thread-self/ns/user"
    with pytest.raises(options.OptionError, match="--userns and --netns-only"):
        options.parse(["--netns", OWN_NETNS, "--userns", "/proc/self/ns/user", "--netns-only"])
    with pytest.raises(options.OptionError, match="--userns"):
        options.parse(["--netns", OWN_NETNS, "--userns", OWN_NETNS])  # not a user ns
    with pytest.raises(options.OptionError, match="--userns"):
        options.parse(["--netns", OWN_NETNS, "--userns", "/nonexistent/userns"])


PASTA_BAD = [
    (["--userns", "/nonexistent/userns"], "--userns"),
    (["--userns", "/proc/self/ns/net"], "--userns"),
    (["--userns", "/proc/self/ns/user", "--netns-only"], "--netns-only"),
    (["--no-dhcp-dns"], "--no-dhcp-dns"),
    (["-T", "all"], "-T/--tcp-ns"),
    (["-U", "1-2:3"], "-U/--udp-ns"),
]


@pytest.mark.parametrize("args, named", PASTA_BAD, ids=[" ".join(a) for a, _ in PASTA_BAD])
def test_bad_namespace_option_exits_1_naming_it(args: list[str], named: str) -> None:
    r = subprocess.run([daemon_binary(), "--netns", OWN_NETNS, "-f", *args],
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and lines[0].startswith("passtcore-run: ")
    assert r.stdout == ""


def test_help_documents_namespace_options() -> None:
    text = options.USAGE
    for opt in ("--tcp-ns", "--udp-ns", "--userns", "--netns-only", "--dhcp-dns",
                "--dhcp-search", "auto"):
        assert opt in text, opt


def test_no_tap_offload_is_for_namespace_mode() -> None:
    assert options.parse(["--netns", OWN_NETNS, "--no-tap-offload"]).no_tap_offload
    assert not options.parse(["--netns", OWN_NETNS]).no_tap_offload
    with pytest.raises(options.OptionError, match="--no-tap-offload"):
        options.parse(["--no-tap-offload"])
    assert "--no-tap-offload" in options.USAGE
