"""The sidecar's domain mutation (passtcore.kubevirt.domain), called directly.

kubevirt-binding.md 1.4-1.8 rule by rule, plus the in-place editing promise of
section 5.3. Results are checked with an independent parser (ElementTree) and
compared as canonical trees (C14N 2.0, whitespace-only text stripped); the
byte-preservation tests check that nothing outside the edited spans moved.
"""
from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passtcore.kubevirt import domain
from passtcore.kubevirt.domain import HookError
from passtcore.portspec import PortForward, PortRange

DATA = Path(__file__).parent / "data"
ISTIO = [15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090]
SMALL_DOMAIN = b"""<domain type="kvm">
\t<name>default_vmi</name>
\t<memory unit="b">134217728</memory>
\t<devices>
\t\t<interface type="ethernet">
\t\t\t<alias name="ua-other"></alias>
\t\t</interface>
\t\t<disk device="disk" type="file"></disk>
\t</devices>
</domain>"""


def canon(data: bytes | str) -> str:
    """Canonical form of a document: equal trees give equal strings."""
    text = data.decode() if isinstance(data, bytes) else data
    return ET.canonicalize(text, strip_text=True, rewrite_prefixes=True)


def make_vmi(iface: dict[str, Any] | None = None, *, net_name: str = "default", dev: str = "eth0",
             annotations: dict[str, str] | None = None, transitional: bool | None = None) -> dict[str, Any]:
    iface = {"name": net_name, "binding": {"name": "passt"}, **(iface or {})}
    devices: dict[str, Any] = {"interfaces": [iface]}
    if transitional is not None:
        devices["useVirtioTransitional"] = transitional
    vmi: dict[str, Any] = {
        "metadata": {"name": "vmi", "namespace": "default"},
        "spec": {"domain": {"devices": devices}, "networks": [{"name": net_name, "pod": {}}]},
        "status": {"interfaces": [{"name": net_name, "podInterfaceName": dev}]},
    }
    if annotations is not None:
        vmi["metadata"]["annotations"] = annotations
    return vmi


def run(vmi: dict[str, Any] | bytes, xml: bytes = SMALL_DOMAIN, **kw: Any) -> bytes:
    data = vmi if isinstance(vmi, bytes) else json.dumps(vmi).encode()
    return domain.on_define_domain(data, xml, **kw)


def error(vmi: dict[str, Any] | bytes, xml: bytes = SMALL_DOMAIN, **kw: Any) -> str:
    with pytest.raises(HookError) as info:
        run(vmi, xml, **kw)
    return str(info.value)


def passt_iface(out: bytes, alias: str = "ua-default") -> ET.Element:
    found = [i for i in ET.fromstring(out).find("devices").findall("interface")
             if i.find("alias") is not None and i.find("alias").get("name") == alias]
    assert len(found) == 1
    return found[0]


def forwards(out: bytes) -> list[tuple[str, list[tuple[int, bool]]]]:
    return [(pf.get("proto"), [(int(r.get("start")), r.get("exclude") == "yes") for r in pf])
            for pf in passt_iface(out).findall("portForward")]


# --- the whole hook on virt-launcher-shaped input


def test_launcher_domain_matches_expected_document():
    out = domain.on_define_domain((DATA / "vmi-passt.json").read_bytes(),
                                  (DATA / "domain-launcher.xml").read_bytes())
    assert canon(out) == canon((DATA / "domain-launcher.expected.xml").read_bytes())


def test_generated_interface_exact_children_and_attribute_order():
    out = run(make_vmi({"macAddress": "02:00:00:00:00:01", "pciAddress": "0000:01:02.3",
                        "acpiIndex": 3, "ports": [{"port": 80}, {"port": 53, "protocol": "udp"}]}))
    iface = passt_iface(out)
    assert iface.attrib == {"type": "vhostuser"}
    assert [c.tag for c in iface] == ["address", "source", "model", "mac", "alias", "acpi", "backend",
                                      "portForward", "portForward"]
    assert list(iface.find("address").attrib.items()) == [
        ("type", "pci"), ("domain", "0x0000"), ("bus", "0x01"), ("slot", "0x02"), ("function", "0x3")]
    assert iface.find("source").attrib == {"dev": "eth0"}
    assert iface.find("model").attrib == {"type": "virtio-non-transitional"}
    assert iface.find("mac").attrib == {"address": "02:00:00:00:00:01"}
    assert iface.find("acpi").attrib == {"index": "3"}
    assert list(iface.find("backend").attrib.items()) == [("type", "passt"),
                                                          ("logFile", "/var/run/kubevirt/passt.log")]
    assert forwards(out) == [("tcp", [(80, False)]), ("udp", [(53, False)])]
    assert all(not r.attrib.keys() - {"start"} for r in iface.iter("range"))


def test_rich_document_everything_else_survives_byte_for_byte():
    src = (DATA / "domain-rich.xml").read_bytes()
    out = run(make_vmi(), src)
    head, tail = src.split(b'\t\t<interface type="user">', 1)
    tail = tail.split(b"</interface>", 1)[1]
    assert out.startswith(head) and out.endswith(tail)
    for keep in (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>", b"<!-- trailing comment -->",
                 b"<![CDATA[raw <text> & more]]>", b"R&amp;D &lt;lab&gt; VM",
                 b"<?passtcore keep-this-processing-instruction?>", b"<qemu:arg value=\"-device\"/>",
                 b"<!-- the pod network interface, from an earlier hook run -->",
                 b'<vendorDevice xmlns:v="urn:example:vendor" v:flag="on">',
                 b"<unknownChild attr=\"x\">text</unknownChild>", b"<page size=\"2\" unit=\"M\"/>"):
        assert keep in out
    tree = ET.fromstring(out)
    qemu = "{http://libvirt.org/schemas/domain/qemu/1.0}"
    assert [a.get("value") for a in tree.find(f"{qemu}commandline").findall(f"{qemu}arg")] == [
        "-device", "virtio-rng-pci,id=rng1"]


# --- placement (1.5 step 2)


def test_existing_interface_replaced_entirely_in_place():
    out = run(make_vmi(), (DATA / "domain-rich.xml").read_bytes())
    ifaces = ET.fromstring(out).find("devices").findall("interface")
    assert [i.find("alias").get("name") for i in ifaces] == ["ua-default", "ua-secondary"]
    new = ifaces[0]
    assert new.get("type") == "vhostuser" and new.find("source").get("dev") == "eth0"
    for dropped in ("target", "driver", "boot", "rom"):
        assert new.find(dropped) is None
    assert ifaces[1].find("unknownChild").text == "text"


def test_bare_alias_matches_too():
    xml = SMALL_DOMAIN.replace(b"ua-other", b"default")
    out = run(make_vmi(), xml)
    ifaces = ET.fromstring(out).find("devices").findall("interface")
    assert len(ifaces) == 1 and ifaces[0].find("alias").get("name") == "ua-default"


def test_first_matching_alias_replaced_only():
    xml = SMALL_DOMAIN.replace(b"ua-other", b"ua-default").replace(
        b"\t\t<disk", b'\t\t<interface type="bridge"><alias name="ua-default"/></interface>\n\t\t<disk')
    ifaces = ET.fromstring(run(make_vmi(), xml)).find("devices").findall("interface")
    assert [i.get("type") for i in ifaces] == ["vhostuser", "bridge"]


def test_non_matching_interface_untouched_new_one_appended_after_it():
    out = run(make_vmi(), SMALL_DOMAIN)
    children = [c.tag for c in ET.fromstring(out).find("devices")]
    assert children == ["interface", "interface", "disk"]
    ifaces = ET.fromstring(out).find("devices").findall("interface")
    assert ifaces[0].get("type") == "ethernet" and ifaces[1].get("type") == "vhostuser"
    assert b'\t\t<interface type="ethernet">\n\t\t\t<alias name="ua-other"></alias>\n\t\t</interface>' in out


def test_appended_to_devices_without_interfaces():
    xml = b'<domain type="kvm">\n\t<devices>\n\t\t<disk device="disk"></disk>\n\t</devices>\n</domain>'
    out = run(make_vmi(), xml, flavour="stream")
    assert [c.tag for c in ET.fromstring(out).find("devices")] == ["disk", "interface"]
    assert b'\t\t<disk device="disk"></disk>\n\t\t<interface type="user">\n\t\t\t<source' in out


@pytest.mark.parametrize("xml", [
    b'<domain type="kvm"><name>x</name></domain>',
    b'<domain type="kvm"/>',
    b'<domain type="kvm"><devices/></domain>',
    b'<domain type="kvm">\n\t<devices/>\n</domain>',
    b'<domain type="kvm">\n\t<devices></devices>\n</domain>',
    b'<domain type="kvm">\n  <devices>\n  </devices>\n</domain>',
])
def test_devices_missing_empty_or_self_closed(xml):
    out = run(make_vmi(), xml)
    tree = ET.fromstring(out)
    assert len(tree.findall("devices")) == 1
    assert passt_iface(out).get("type") == "vhostuser"
    assert tree.find("memoryBacking/access").get("mode") == "shared"
    assert run(make_vmi(), out) == out


def test_indentation_follows_the_document():
    xml = b'<domain type="kvm">\n  <memory>1</memory>\n  <devices>\n    <disk/>\n  </devices>\n</domain>'
    out = run(make_vmi(), xml)
    assert b"\n  <memoryBacking>\n    <source type=\"memfd\"/>" in out
    assert b"\n    <disk/>\n    <interface type=\"vhostuser\">\n      <source dev=\"eth0\"/>" in out
    compact = b'<domain type="kvm"><memory>1</memory><devices><disk/></devices></domain>'
    assert b"\n" not in run(make_vmi(), compact)


def test_crlf_document_stays_crlf():
    xml = SMALL_DOMAIN.replace(b"\n", b"\r\n")
    out = run(make_vmi(), xml)
    assert b"\n" not in out.replace(b"\r\n", b"")
    assert canon(out) == canon(run(make_vmi(), SMALL_DOMAIN))


@pytest.mark.parametrize("name", ["domain-launcher.xml", "domain-rich.xml"])
@pytest.mark.parametrize("flavour", ["vhostuser", "stream"])
def test_idempotent(name, flavour):
    vmi = make_vmi({"ports": [{"port": 8080}]})
    once = run(vmi, (DATA / name).read_bytes(), flavour=flavour)
    assert run(vmi, once, flavour=flavour) == once


def test_input_not_modified():
    src = bytearray(SMALL_DOMAIN)
    domain.on_define_domain(json.dumps(make_vmi()).encode(), bytes(src))
    assert bytes(src) == SMALL_DOMAIN


# --- interface content (1.6)


@pytest.mark.parametrize("model, transitional, expected", [
    (None, None, "virtio-non-transitional"),
    ("", True, "virtio-transitional"),
    ("virtio", True, "virtio-transitional"),
    ("virtio", False, "virtio-non-transitional"),
    ("e1000", True, "e1000"),
    ("e1000e", None, "e1000e"),
    ("igb", None, "igb"),
    ("rtl8139", None, "rtl8139"),
    ("Virtio", None, "Virtio"),
])
def test_model(model, transitional, expected):
    iface = {} if model is None else {"model": model}
    out = run(make_vmi(iface, transitional=transitional))
    assert passt_iface(out).find("model").get("type") == expected


@pytest.mark.parametrize("mac", ["02:00:00:AB:cd:EF", "02-00-00-00-00-01", "weird\"<&>mac"])
def test_mac_copied_verbatim_and_escaped(mac):
    assert passt_iface(run(make_vmi({"macAddress": mac}))).find("mac").get("address") == mac


def test_no_mac_no_acpi_no_address_when_unset():
    iface = passt_iface(run(make_vmi({"acpiIndex": 0, "macAddress": "", "pciAddress": ""})))
    assert [c.tag for c in iface] == ["source", "model", "alias", "backend", "portForward", "portForward"]
    assert passt_iface(run(make_vmi({"acpiIndex": -1}))).find("acpi") is None


@pytest.mark.parametrize("pci, attrs", [
    ("0000:0A:1f.7", ("0x0000", "0x0A", "0x1f", "0x7")),
    ("ffff:ff:1F.0", ("0xffff", "0xff", "0x1F", "0x0")),
    ("0000:00:00.0", ("0x0000", "0x00", "0x00", "0x0")),
])
def test_pci_address_rendering(pci, attrs):
    address = passt_iface(run(make_vmi({"pciAddress": pci}))).find("address")
    assert address.attrib == {"type": "pci", **dict(zip(("domain", "bus", "slot", "function"), attrs))}


@pytest.mark.parametrize("pci", ["0000:81:01.10", "0000:81:01.8", "0000:81:01", "000:81:01.1",
                                 "00000:81:01.1", "0000:81:01.1\n", " 0000:81:01.1", "0000:g1:01.1",
                                 "0000:81:01:1", "\uff10000:81:01.1", "0000:81:01.\u0661", "pci"])
def test_pci_address_invalid(pci):
    assert error(make_vmi({"pciAddress": pci})) == (
        f"failed to generate domain interface spec: failed to parse pci address {pci}")


def test_source_dev_alias_and_custom_binding_name():
    vmi = make_vmi({"binding": {"name": "passt-next"}}, net_name="podnet", dev="ovn-udn1")
    iface = passt_iface(run(vmi, binding_name="passt-next"), alias="ua-podnet")
    assert iface.find("source").get("dev") == "ovn-udn1"
    assert error(vmi) == ('failed to create passt configurator: interface "podnet" is not set '
                          "with Passt network binding plugin")
    assert passt_iface(run(make_vmi(), binding_name="")) is not None  # empty = "passt"


def test_nothing_else_emitted():
    iface = passt_iface(run(make_vmi({"bootOrder": 1, "dhcpOptions": {"bootFileName": "x"}, "tag": "t",
                                      "state": "up", "ports": [{"name": "http", "port": 80}]})))
    assert {c.tag for c in iface} == {"source", "model", "alias", "backend", "portForward"}
    assert all(set(pf.attrib) == {"proto"} for pf in iface.findall("portForward"))


def test_only_pod_network_interface_handled_first_pod_network_wins():
    vmi = make_vmi()
    vmi["spec"]["networks"] = [{"name": "sec", "multus": {"networkName": "x"}},
                               {"name": "default", "pod": {}}, {"name": "other", "pod": {}}]
    vmi["spec"]["domain"]["devices"]["interfaces"] = [
        {"name": "sec", "binding": {"name": "passt"}}, {"name": "other", "binding": {"name": "passt"}},
        {"name": "default", "binding": {"name": "passt"}}]
    ifaces = ET.fromstring(run(vmi)).find("devices").findall("interface")
    assert [i.find("alias").get("name") for i in ifaces] == ["ua-other", "ua-default"]


# --- port forwards (1.7)


@pytest.mark.parametrize("ports, expected", [
    ([], [("tcp", []), ("udp", [])]),
    (None, [("tcp", []), ("udp", [])]),
    ([{"port": 80}], [("tcp", [(80, False)])]),
    ([{"port": 53, "protocol": "UDP"}], [("udp", [(53, False)])]),
    ([{"port": 80, "protocol": "TcP"}, {"port": 53, "protocol": "uDp"}, {"port": 443, "protocol": ""}],
     [("tcp", [(80, False), (443, False)]), ("udp", [(53, False)])]),
    ([{"port": 9, "protocol": "SCTP"}], [("tcp", []), ("udp", [])]),
    ([{"port": 9, "protocol": "SCTP"}, {"port": 7, "protocol": "udp"}], [("udp", [(7, False)])]),
    ([{"port": 22}, {"port": 22}, {"port": 1}], [("tcp", [(22, False), (22, False), (1, False)])]),
    ([{"port": -5}, {"port": 0}, {"port": 65535}], [("tcp", [(0, False), (65535, False)])]),
    ([{"port": -1}], [("tcp", []), ("udp", [])]),
])
def test_port_forwards(ports, expected):
    iface = {} if ports is None else {"ports": ports}
    assert forwards(run(make_vmi(iface))) == expected


@pytest.mark.parametrize("value, on", [("true", True), ("TRUE", True), ("True", True), ("yes", False),
                                       ("false", False), ("", False), (None, False)])
def test_istio(value, on):
    annotations = {} if value is None else {"sidecar.istio.io/inject": value}
    got = forwards(run(make_vmi(annotations=annotations)))
    if on:
        assert got == [("tcp", [(p, True) for p in ISTIO])]  # no udp portForward
    else:
        assert got == [("tcp", []), ("udp", [])]


def test_istio_with_ports_exclusions_first():
    vmi = make_vmi({"ports": [{"port": 22}, {"port": 53, "protocol": "udp"}]},
                   annotations={"sidecar.istio.io/inject": "true"})
    assert forwards(run(vmi)) == [("tcp", [(p, True) for p in ISTIO] + [(22, False)]),
                                  ("udp", [(53, False)])]


def test_port_forwards_model():
    assert domain.port_forwards([("tcp", 80)], istio=False) == [
        PortForward(proto="tcp", ranges=[PortRange(start=80)])]
    rules = domain.port_forwards([], istio=True)
    assert [pf.to_spec() for pf in rules] == [",".join(f"~{p}" for p in ISTIO)]


@given(st.lists(st.builds(PortRange, start=st.integers(0, 65535),
                          end=st.one_of(st.none(), st.integers(0, 65535)),
                          to=st.one_of(st.none(), st.integers(0, 65535)), exclude=st.booleans()),
                max_size=5),
       st.sampled_from(["tcp", "udp"]), st.one_of(st.none(), st.just("192.0.2.1")),
       st.one_of(st.none(), st.just("eth0")))
def test_portforward_xml_round_trip(ranges, proto, address, dev):
    pf = PortForward(proto=proto, address=address, dev=dev, ranges=ranges)
    text = domain.portforward_to_xml(pf)
    assert domain.portforward_from_xml(ET.fromstring(text)) == pf


# --- memoryBacking (1.5) and flavours


def test_memory_backing_added_after_memory():
    out = run(make_vmi())
    tree = ET.fromstring(out)
    assert [c.tag for c in tree][:3] == ["name", "memory", "memoryBacking"]
    backing = tree.find("memoryBacking")
    assert [(c.tag, c.attrib) for c in backing] == [("source", {"type": "memfd"}),
                                                    ("access", {"mode": "shared"})]


@pytest.mark.parametrize("backing", [
    b'<memoryBacking><access mode="shared"/></memoryBacking>',
    b'<memoryBacking><hugepages><page size="1" unit="G"/></hugepages></memoryBacking>',
    b"<memoryBacking/>",
])
def test_memory_backing_left_alone(backing):
    xml = SMALL_DOMAIN.replace(b"\t<devices>", b"\t" + backing + b"\n\t<devices>")
    out = run(make_vmi(), xml)
    assert backing in out and out.count(b"<memoryBacking") == 1


@pytest.mark.parametrize("mode, quoted", [("private", '"private"'), ("", '""'), (None, '""'),
                                          ("Shared", '"Shared"')])
def test_memory_backing_mode_not_shared(mode, quoted):
    access = "<access/>" if mode is None else f'<access mode="{mode}"/>'
    xml = SMALL_DOMAIN.replace(b"\t<devices>", f"\t<memoryBacking>{access}</memoryBacking>\n\t<devices>".encode())
    assert error(make_vmi(), xml) == ("memory backing access mode must be 'shared'; cannot override "
                                      f"existing mode: {quoted}")
    assert b'<interface type="user">' in run(make_vmi(), xml, flavour="stream")


def test_memory_backing_access_found_among_other_children():
    backing = (b'<memoryBacking><hugepages/><access mode="private"/><locked/><nosharepages/>'
               b"</memoryBacking>")
    xml = SMALL_DOMAIN.replace(b"\t<devices>", b"\t" + backing + b"\n\t<devices>")
    assert error(make_vmi(), xml).endswith('cannot override existing mode: "private"')


def test_many_devices_interfaces_found_among_them():
    devices = b"".join(b'\t\t<controller type="pci" index="%d"/>\n' % i for i in range(50))
    xml = SMALL_DOMAIN.replace(b"\t\t<interface", devices + b"\t\t<interface type=\"user\"><alias name=\"ua-default\"/>"
                               b"</interface>\n" + devices + b"\t\t<interface").replace(b"\t\t<disk", devices + b"\t\t<disk")
    out = run(make_vmi(), xml, flavour="stream")
    assert [c.tag for c in ET.fromstring(out).find("devices")].count("interface") == 2
    assert passt_iface(out).get("type") == "user"
    head, _, rest = xml.partition(b'\t\t<interface type="user">')
    assert out.startswith(head) and out.endswith(rest.partition(b"</interface>")[2])
    assert out.count(b'<controller type="pci"') == 150
    appended = run(make_vmi(), SMALL_DOMAIN.replace(b"\t\t<disk", devices + b"\t\t<disk"))
    tags = [c.tag for c in ET.fromstring(appended).find("devices")]
    assert tags[:2] == ["interface", "interface"] and tags[-1] == "disk"


def test_stream_flavour():
    out = run(make_vmi(), flavour="stream")
    assert passt_iface(out).get("type") == "user"
    assert b"memoryBacking" not in out


def test_unknown_flavour_refused():
    with pytest.raises(ValueError):
        run(make_vmi(), flavour="tap")


# --- configurator errors (1.4 step 3)


def cfg(msg: str) -> str:
    return f"failed to create passt configurator: {msg}"


def edit(vmi: dict[str, Any], fn: Any) -> dict[str, Any]:
    vmi = copy.deepcopy(vmi)
    fn(vmi)
    return vmi


@pytest.mark.parametrize("change, msg", [
    (lambda v: v["spec"].pop("networks"), cfg("pod network not found")),
    (lambda v: v["spec"].update(networks=[{"name": "default", "multus": {"networkName": "x"}}]),
     cfg("pod network not found")),
    (lambda v: v["spec"]["networks"][0].update(pod=None), cfg("pod network not found")),
    (lambda v: v.pop("spec"), cfg("pod network not found")),
    (lambda v: v["spec"]["domain"]["devices"]["interfaces"][0].update(name="other"), cfg("no interface found")),
    (lambda v: v["spec"]["domain"]["devices"].pop("interfaces"), cfg("no interface found")),
    (lambda v: v["spec"]["domain"]["devices"]["interfaces"][0].pop("binding"),
     cfg('interface "default" is not set with Passt network binding plugin')),
    (lambda v: v["spec"]["domain"]["devices"]["interfaces"][0].update(binding=None),
     cfg('interface "default" is not set with Passt network binding plugin')),
    (lambda v: v["spec"]["domain"]["devices"]["interfaces"][0].update(binding={"name": "Passt"}),
     cfg('interface "default" is not set with Passt network binding plugin')),
    (lambda v: v["spec"]["domain"]["devices"]["interfaces"][0].update(binding={}),
     cfg('interface "default" is not set with Passt network binding plugin')),
    (lambda v: v.pop("status"), cfg("primary network interface status was not found")),
    (lambda v: v["status"]["interfaces"][0].update(name="eth0"), cfg("primary network interface status was not found")),
    (lambda v: v["status"]["interfaces"][0].pop("podInterfaceName"),
     cfg("primary pod network interface name was not found")),
    (lambda v: v["status"]["interfaces"][0].update(podInterfaceName=""),
     cfg("primary pod network interface name was not found")),
])
def test_configurator_errors(change, msg):
    assert error(edit(make_vmi(), change)) == msg


@pytest.mark.parametrize("name, quoted", [('we"ird\\net', '"we\\"ird\\\\net"'), ("tab\tnet", '"tab\\tnet"'),
                                          ("bell\x07", '"bell\\a"'), ("nul\x00", '"nul\\x00"'),
                                          ("réseau", '"réseau"'), ("nbsp\u00a0", '"nbsp\\u00a0"')])
def test_binding_error_uses_go_quoting(name, quoted):
    vmi = make_vmi({"binding": {"name": "bridge"}}, net_name=name)
    assert error(vmi) == cfg(f"interface {quoted} is not set with Passt network binding plugin")


# --- error precedence (1.4 "note the order", 1.5)


def test_vmi_errors_beat_xml_errors_and_memory_backing_beats_pci():
    assert error(b"", b"") == "failed to unmarshal VMI: unexpected end of JSON input"
    assert error(edit(make_vmi(), lambda v: v.pop("status")), b"<domain") == cfg(
        "primary network interface status was not found")
    bad_backing = SMALL_DOMAIN.replace(b"\t<devices>", b'\t<memoryBacking><access mode="private"/>'
                                                       b"</memoryBacking>\n\t<devices>")
    assert error(make_vmi({"pciAddress": "bad"}), bad_backing).startswith("memory backing access mode")
    assert error(make_vmi({"pciAddress": "bad"}), bad_backing, flavour="stream").startswith(
        "failed to generate domain interface spec")


# --- bad VMI JSON (1.4 step 1)


@pytest.mark.parametrize("data, msg", [
    (b"", "unexpected end of JSON input"),
    (b"   ", "unexpected end of JSON input"),
    (b"{", "unexpected end of JSON input"),
    (b'{"spec": {"networks": [', "unexpected end of JSON input"),
    (b'{"a": "unterminated', "unexpected end of JSON input"),
    (b"invalid-vmi", "invalid character 'i' looking for beginning of value"),
    (b"{,}", "invalid character ',' looking for beginning of object key string"),
    (b'{"a" 1}', "invalid character '1' after object key"),
    (b'{"a": 1 "b": 2}', "invalid character '\"' after object key:value pair"),
    (b'{"a": [1 2]}', "invalid character '2' after array element"),
    (b"{} x", "invalid character 'x' after top-level value"),
    (b'{"a": NaN}', "invalid character 'N' looking for beginning of value"),
    (b'{"a": [1, -Infinity]}', "invalid character 'I' in numeric literal"),
    (b'{"a": Infinity}', "invalid character 'I' looking for beginning of value"),
    (b'{"a": "\\q"}', "invalid character 'q' in string escape code"),
    (b'{"a": "line\nbreak"}', "invalid character '\\n' in string literal"),
    (b"[]", "json: cannot unmarshal array into Go value of type v1.VirtualMachineInstance"),
    (b'"vmi"', "json: cannot unmarshal string into Go value of type v1.VirtualMachineInstance"),
    (b'{"spec": 5}', "json: cannot unmarshal number into Go struct field VirtualMachineInstance.spec "
                     "of type v1.VirtualMachineInstanceSpec"),
    (b'{"spec": {"networks": "pod"}}', "json: cannot unmarshal string into Go struct field "
                                       "VirtualMachineInstanceSpec.spec.networks of type []v1.Network"),
    (b'{"spec": {"networks": [{"name": 1}]}}', "json: cannot unmarshal number into Go struct field "
                                               "Network.spec.networks.name of type string"),
    (b'{"metadata": {"annotations": {"a": 1}}}', "json: cannot unmarshal number into Go struct field "
                                                 "ObjectMeta.metadata.annotations of type string"),
])
def test_bad_vmi_json(data, msg):
    assert error(data) == f"failed to unmarshal VMI: {msg}"


def test_vmi_field_type_errors_deeper():
    vmi = make_vmi({"ports": [{"port": "80"}]})
    assert error(vmi) == ("failed to unmarshal VMI: json: cannot unmarshal string into Go struct field "
                          "Port.spec.domain.devices.interfaces.ports.port of type int32")
    vmi = make_vmi({"ports": [{"port": 1.5}]})
    assert error(vmi).endswith("cannot unmarshal number 1.5 into Go struct field "
                               "Port.spec.domain.devices.interfaces.ports.port of type int32")
    vmi = make_vmi({"ports": [{"port": 4294967296}]})
    assert "number 4294967296 into" in error(vmi)
    for literal in ("80.0", "8e1", "1" * 5000):
        data = json.dumps(make_vmi({"ports": [{"port": 1}]})).encode().replace(b'"port": 1', b'"port": ' + literal.encode())
        assert error(data).endswith(f"cannot unmarshal number {literal} into Go struct field "
                                    "Port.spec.domain.devices.interfaces.ports.port of type int32")
    data = json.dumps(make_vmi()).encode().replace(b'"name": "vmi"', b'"name": "vmi", "big": ' + b"9" * 5000)
    assert passt_iface(run(data)) is not None  # a huge number where nothing reads it is fine
    vmi = make_vmi(transitional=True)
    vmi["spec"]["domain"]["devices"]["useVirtioTransitional"] = "true"
    assert error(vmi).endswith("Devices.spec.domain.devices.useVirtioTransitional of type bool")


def test_deeply_nested_inputs_are_errors_not_crashes():
    assert error(b"[" * 200000) == "failed to unmarshal VMI: exceeded max depth"
    assert error(b'{"x": ' + b"[" * 200000 + b"]" * 200000 + b"}") == "failed to unmarshal VMI: exceeded max depth"
    deep = b"<domain>" + b"<a>" * 100000 + b"</a>" * 100000 + b"</domain>"
    assert passt_iface(run(make_vmi(), deep)) is not None


def test_vmi_json_go_leniency():
    # null = zero value, unknown fields ignored, keys matched case-insensitively
    assert error(b"null") == cfg("pod network not found")
    vmi = make_vmi({"ports": [{"port": 80}], "futureField": {"x": 1.5e300}})
    vmi["Spec"] = vmi.pop("spec")
    assert forwards(run(vmi)) == [("tcp", [(80, False)])]
    assert passt_iface(run(json.dumps(make_vmi()).encode() + b"\n")) is not None


# --- bad domain XML (1.4 step 4)


@pytest.mark.parametrize("xml, msg", [
    (b"", "EOF"),
    (b"invalid-domain-xml", "EOF"),
    (b"  <!-- only a comment -->  ", "EOF"),
    (b"<domain", "XML syntax error on line 1: unexpected EOF"),
    (b'<domain type="kvm">\n\t<devices>\n', "XML syntax error on line 3: unexpected EOF"),
    (b"<domain><devices></domain>", "XML syntax error on line 1: element <devices> closed by </domain>"),
    (b"<network></network>", "expected element type <domain> but have <network>"),
    (b'<?xml version="1.0" encoding="ISO-8859-1"?><domain/>',
     'xml: encoding "ISO-8859-1" declared but Decoder.CharsetReader is nil'),
])
def test_bad_domain_xml(xml, msg):
    assert error(make_vmi(), xml) == f"failed to unmarshal given domain spec: {msg}"


def test_utf16_and_bom_handling():
    assert error(make_vmi(), SMALL_DOMAIN.decode().encode("utf-16")) == (
        "failed to unmarshal given domain spec: XML syntax error on line 1: invalid UTF-8")
    out = run(make_vmi(), b"\xef\xbb\xbf" + SMALL_DOMAIN)  # a UTF-8 BOM is fine
    assert out.startswith(b"\xef\xbb\xbf") and passt_iface(out[3:]).get("type") == "vhostuser"
    assert run(make_vmi(), SMALL_DOMAIN.decode()) == run(make_vmi(), SMALL_DOMAIN)


def test_bad_xml_other_syntax_errors_are_reported():
    msg = error(make_vmi(), b'<domain a="1" a="2"></domain>')
    assert msg.startswith("failed to unmarshal given domain spec: XML syntax error on line 1: ")


def test_content_after_root_ignored_like_go():
    out = run(make_vmi(), SMALL_DOMAIN + b"\n<trailing-junk")
    assert out.endswith(b"\n<trailing-junk") and passt_iface(out.split(b"\n<trailing")[0]) is not None


def test_go_quote():
    assert domain.go_quote("a\"b\\c\n\x7f\u2028\U0001F600") == '"a\\"b\\\\c\\n\\x7f\\u2028\U0001F600"'


# --- arbitrary input: a result or a HookError, never another exception

_LAUNCHER_XML = (DATA / "domain-launcher.xml").read_bytes()
_VMI = (DATA / "vmi-passt.json").read_bytes()


def _outcome(vmi: bytes, xml: bytes) -> bytes | None:
    try:
        return domain.on_define_domain(vmi, xml)
    except HookError:
        return None


def _root_of(data: bytes) -> ET.Element | None:
    parser = ET.XMLPullParser(events=("end",))
    parser.feed(data)
    ends: list[ET.Element] = []
    try:
        for _, elem in parser.read_events():  # stops with the first error, if any
            ends.append(elem)
    except ET.ParseError:
        pass
    return ends[-1] if ends and ends[-1].tag == "domain" else None


@given(st.binary(max_size=400), st.binary(max_size=400))
def test_random_bytes_never_crash(vmi: bytes, xml: bytes):
    _outcome(vmi, xml)
    _outcome(_VMI, xml)


@given(st.integers(0, len(_LAUNCHER_XML) - 1), st.integers(0, 40), st.binary(max_size=8),
       st.integers(0, len(_VMI) - 1), st.binary(max_size=4))
def test_corrupted_fixtures_never_crash(at: int, cut: int, junk: bytes, vat: int, vjunk: bytes):
    xml = _LAUNCHER_XML[:at] + junk + _LAUNCHER_XML[at + cut:]
    out = _outcome(_VMI, xml)
    # an accepted document that ElementTree reads (to its root's end: Go reads no further)
    # stays readable, with the interface in it
    if out is not None and _root_of(xml) is not None:
        root = _root_of(out)
        assert root is not None and any(a.get("name") == "ua-default" for a in root.iter("alias"))
    _outcome(_VMI[:vat] + vjunk + _VMI[vat + 1:], _LAUNCHER_XML)
