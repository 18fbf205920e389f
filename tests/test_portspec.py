"""passt's -t/-u grammar (passt-reference 3.2): parse_spec, expansion, errors."""
from __future__ import annotations

import pytest

from passtcore.portspec import (EPHEMERAL_MIN, PortForward, PortRange, PortSpec, PortSpecError,
                                parse_spec, parse_specs, port_map)


@pytest.mark.parametrize("text, expected", [
    ("22", {22: 22}),
    ("2222:22", {2222: 22}),
    ("22,25", {22: 22, 25: 25}),
    ("22-24:32-34", {22: 32, 23: 33, 24: 34}),
    ("5-25,~10-20", {**{p: p for p in range(5, 10)}, **{p: p for p in range(21, 26)}}),
    ("~10-20,5-25", {**{p: p for p in range(5, 10)}, **{p: p for p in range(21, 26)}}),
    ("65535", {65535: 65535}),
    ("65535:1", {65535: 1}),
])
def test_forward_maps(text: str, expected: dict[int, int]) -> None:
    assert parse_spec(text).expand() == expected


def test_remap_range_example() -> None:
    m = parse_spec("22-80:32-90").expand()
    assert len(m) == 59 and all(g == h + 10 for h, g in m.items())


def test_all_is_every_non_ephemeral_port_but_zero() -> None:
    m = parse_spec("all").expand()
    assert set(m) == set(range(1, EPHEMERAL_MIN)) and all(h == g for h, g in m.items())


def test_exclusion_only_lists() -> None:
    m = parse_spec("~20000-20010").expand()
    assert 19999 in m and 20011 in m and 20000 not in m and 20010 not in m
    assert 49151 in m and 49152 not in m and 0 not in m
    assert len(m) == EPHEMERAL_MIN - 1 - 11


def test_kubevirt_istio_exclusions_with_device() -> None:
    spec = parse_spec("%eth0/~15000,~15001,~15004,~15006,~15008,~15009,~15020,~15021,~15053,~15090")
    assert spec.ifname == "eth0" and spec.address is None
    m = spec.expand()
    assert 15000 not in m and 15090 not in m and 15002 in m and 22 in m


@pytest.mark.parametrize("text, addr, ifname, mode", [
    ("%eth0/all", None, "eth0", "all"),
    ("192.0.2.1/all", "192.0.2.1", None, "all"),
    ("192.0.2.1/22", "192.0.2.1", None, "ports"),
    ("192.0.2.1%eth0/22", "192.0.2.1", "eth0", "ports"),
    ("%eth0/22", None, "eth0", "ports"),
    ("2001:db8::1/22", "2001:db8::1", None, "ports"),
    ("127.0.0.1%lo/8080-8082:18080-18082", "127.0.0.1", "lo", "ports"),
])
def test_prefixes(text: str, addr: str | None, ifname: str | None, mode: str) -> None:
    spec = parse_spec(text)
    assert (spec.address, spec.ifname, spec.mode) == (addr, ifname, mode)


def test_loopback_remap_example() -> None:
    assert parse_spec("127.0.0.1%lo/8080-8082:18080-18082").expand() == {
        8080: 18080, 8081: 18081, 8082: 18082}


def test_keywords_and_modes() -> None:
    assert parse_spec("none").expand() == {}
    assert parse_spec("auto", mode="pasta").mode == "auto"
    with pytest.raises(PortSpecError, match="only allowed for pasta"):
        parse_spec("auto")
    with pytest.raises(PortSpecError, match="only allowed for passt"):
        parse_spec("all", mode="pasta")


@pytest.mark.parametrize("text, message", [
    ("20-30,25", "Overlapping port specifier"),
    ("~5,~5", "Overlapping port specifier"),
    ("22-80:32", "Invalid port specifier"),
    ("22:32-33", "Invalid port specifier"),
    ("65536", "Invalid port specifier"),
    ("70000", "Invalid port specifier"),
    ("30-20", "Invalid port specifier"),
    ("", "Invalid port specifier"),
    ("abc", "Invalid port specifier"),
    ("22,", "Invalid port specifier"),
    ("-5", "Invalid port specifier"),
    ("1-", "Invalid port specifier"),
    ("~", "Invalid port specifier"),
    ("+22", "Invalid port specifier"),
    ("192.0.2.1/", "Invalid port specifier"),
    ("300.1.1.1/22", "Invalid address"),
    ("%/22", "Invalid interface name"),
    ("%averyveryverylongname/22", "Invalid interface name"),
])
def test_errors(text: str, message: str) -> None:
    with pytest.raises(PortSpecError) as exc:
        parse_spec(text)
    assert exc.value.message.startswith(message)
    assert text in str(exc.value)


def test_cross_option_rules() -> None:
    assert port_map(parse_specs(["22", "80:8080"])) == {22: 22, 80: 8080}
    with pytest.raises(PortSpecError, match="conflicts with previous mode"):
        parse_specs(["22", "all"])
    with pytest.raises(PortSpecError, match="Specific ports cannot"):
        parse_specs(["none", "22"])
    with pytest.raises(PortSpecError, match="Overlapping"):
        parse_specs(["20-30", "25"])


def test_libvirt_rendering_roundtrip() -> None:
    fw = PortForward("tcp", "127.0.0.1", "lo", [PortRange(8080, 8082, 18080), PortRange(22),
                                                PortRange(15000, exclude=True)])
    text = fw.to_spec()
    assert text == "127.0.0.1%lo/8080-8082:18080-18082,22,~15000"
    spec = parse_spec(text)
    assert isinstance(spec, PortSpec)
    assert spec.to_forward().to_spec() == text
    assert PortForward("udp", dev="eth0").to_spec() == "%eth0/all"
    assert parse_spec(PortForward("udp", dev="eth0").to_spec()).mode == "all"
