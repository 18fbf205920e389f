"""passtcore-sidecar driven over its unix socket exactly as virt-launcher does.

Each test runs the installed console script as a subprocess
(``Path(sys.executable).parent / "passtcore-sidecar" --socket tmp``) and talks
to it with a real grpcio client and the generated stubs (kubevirt-binding.md
section 3): Info, version pick, OnDefineDomain with a tab-indented domain and
the full VMI JSON, Shutdown; then the lifetime rules (signals, stale or live
socket, exit codes). No network namespace is needed.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from passtcore.kubevirt.proto import (api_info_pb2, api_info_pb2_grpc, api_v1alpha2_pb2,
                                      api_v1alpha2_pb2_grpc, api_v1alpha3_pb2, api_v1alpha3_pb2_grpc)

pytestmark = pytest.mark.timeout(120)

SIDECAR = Path(sys.executable).parent / "passtcore-sidecar"
DATA = Path(__file__).parent / "data"
VMI = (DATA / "vmi-passt.json").read_bytes()
DOMAIN = (DATA / "domain-launcher.xml").read_bytes()
EXPECTED = (DATA / "domain-launcher.expected.xml").read_bytes()
LAUNCHER_VERSIONS = ("v1alpha3", "v1alpha2", "v1alpha1")  # virt-launcher v1.2+ preference
STUBS = {"v1alpha3": (api_v1alpha3_pb2, api_v1alpha3_pb2_grpc),
         "v1alpha2": (api_v1alpha2_pb2, api_v1alpha2_pb2_grpc)}


def canon(data: bytes) -> str:
    return ET.canonicalize(data.decode(), strip_text=True, rewrite_prefixes=True)


class Sidecar:
    """One sidecar process and a virt-launcher-like client for it."""

    def __init__(self, sock: Path, env: dict[str, str] | None = None) -> None:
        self.sock = sock
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("NETWORK_BINDING_PLUGIN_NAME", "PASSTCORE_BINDING_FLAVOUR")}
        full_env.update(env or {})
        self.proc = subprocess.Popen([str(SIDECAR), "--socket", str(sock)], env=full_env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sidecar exited {self.proc.returncode}: {self.proc.stderr.read()!r}")
            if self.sock.exists():
                try:
                    self.info()
                    return
                except grpc.RpcError:
                    pass
            time.sleep(0.05)
        raise AssertionError("sidecar did not come up")

    def channel(self) -> grpc.Channel:
        # a fresh connection per call, like virt-launcher
        return grpc.insecure_channel(f"unix://{self.sock}", options=[("grpc.default_authority", "localhost")])

    def info(self) -> Any:
        with self.channel() as ch:
            return api_info_pb2_grpc.InfoStub(ch).Info(api_info_pb2.InfoParams(), timeout=1)

    def pick_version(self, known: tuple[str, ...] = LAUNCHER_VERSIONS) -> str:
        exposed = list(self.info().versions)
        for version in known:
            if version in exposed:
                return version
        raise AssertionError(f"Hook sidecar does not expose a supported version. Exposed versions: {exposed}")

    def define(self, vmi: bytes = VMI, xml: bytes = DOMAIN, version: str = "v1alpha3") -> bytes:
        pb, pb_grpc = STUBS[version]
        with self.channel() as ch:
            result = pb_grpc.CallbacksStub(ch).OnDefineDomain(
                pb.OnDefineDomainParams(domainXML=xml, vmi=vmi), timeout=60)
        return result.domainXML

    def define_error(self, vmi: bytes = VMI, xml: bytes = DOMAIN, version: str = "v1alpha3") -> str:
        with pytest.raises(grpc.RpcError) as info:
            self.define(vmi, xml, version)
        assert info.value.code() == grpc.StatusCode.UNKNOWN
        return info.value.details()

    def shutdown(self) -> None:
        with self.channel() as ch:
            api_v1alpha3_pb2_grpc.CallbacksStub(ch).Shutdown(api_v1alpha3_pb2.ShutdownParams(), timeout=60)

    def wait_exit(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        return self.proc.stderr.read().decode()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    started: list[Sidecar] = []

    def _start(env: dict[str, str] | None = None, sock: Path | None = None, ready: bool = True) -> Sidecar:
        sidecar = Sidecar(sock or tmp_path / "passt.sock", env)
        started.append(sidecar)
        if ready:
            sidecar.wait_ready()
        return sidecar

    try:
        yield _start
    finally:
        for sidecar in started:
            sidecar.kill()


@pytest.fixture
def sidecar(start: Any) -> Sidecar:
    return start()


def vmi_with(change: Any) -> bytes:
    vmi = json.loads(VMI)
    change(vmi)
    return json.dumps(vmi).encode()


def passt_iface(xml: bytes) -> ET.Element:
    return next(i for i in ET.fromstring(xml).find("devices").findall("interface")
                if i.find("alias").get("name") == "ua-default")


# --- discovery and the normal call sequence


def test_info_and_version_pick(sidecar: Sidecar):
    info = sidecar.info()
    assert info.name == "network-passt-binding"
    assert list(info.versions) == ["v1alpha3", "v1alpha2"]
    assert [(h.name, h.priority) for h in info.hookPoints] == [("OnDefineDomain", 0), ("Shutdown", 0)]
    assert sidecar.pick_version() == "v1alpha3"
    assert sidecar.pick_version(("v1alpha2", "v1alpha1")) == "v1alpha2"  # a v1.1 virt-launcher


@pytest.mark.parametrize("version", ["v1alpha3", "v1alpha2"])
def test_on_define_domain_full_sequence(sidecar: Sidecar, version: str):
    assert b"\n\t\t<interface" in DOMAIN  # virt-launcher's tab indentation
    out = sidecar.define(version=version)
    assert canon(out) == canon(EXPECTED)
    sidecar.shutdown()
    assert sidecar.wait_exit() == 0
    assert not sidecar.sock.exists()


def test_v1alpha2_version_picked_by_old_launcher_works(sidecar: Sidecar):
    version = sidecar.pick_version(("v1alpha2", "v1alpha1"))
    assert canon(sidecar.define(version=version)) == canon(EXPECTED)


def test_rich_domain_preserved_through_grpc(sidecar: Sidecar):
    src = (DATA / "domain-rich.xml").read_bytes()
    out = sidecar.define(xml=src)
    for keep in (b"<!-- trailing comment -->", b"<qemu:commandline>", b"<![CDATA[raw <text> & more]]>",
                 b"<vendorDevice xmlns:v=\"urn:example:vendor\" v:flag=\"on\">", b"<?passtcore "):
        assert keep in out
    ifaces = ET.fromstring(out).find("devices").findall("interface")
    assert [i.find("alias").get("name") for i in ifaces] == ["ua-default", "ua-secondary"]
    assert ifaces[0].find("rom") is None and ifaces[0].get("type") == "vhostuser"
    assert sidecar.define(xml=out) == out  # idempotent


def test_stream_flavour_and_binding_name_from_env(start: Any):
    vmi = vmi_with(lambda v: v["spec"]["domain"]["devices"]["interfaces"][1].update(binding={"name": "passtcore"}))
    sidecar = start({"PASSTCORE_BINDING_FLAVOUR": "stream", "NETWORK_BINDING_PLUGIN_NAME": "passtcore"})
    out = sidecar.define(vmi=vmi)
    assert passt_iface(out).get("type") == "user"
    assert ET.fromstring(out).find("memoryBacking") is None
    expected = ET.fromstring(EXPECTED)
    expected.remove(expected.find("memoryBacking"))
    passt_iface_expected = next(i for i in expected.find("devices").findall("interface")
                                if i.find("alias").get("name") == "ua-default")
    passt_iface_expected.set("type", "user")
    assert canon(out) == canon(ET.tostring(expected))
    assert sidecar.define_error() == ('failed to create passt configurator: interface "default" is not set '
                                      "with Passt network binding plugin")


def test_istio_ports_protocols_pci_acpi_through_grpc(sidecar: Sidecar):
    def change(v: dict[str, Any]) -> None:
        v["metadata"]["annotations"]["sidecar.istio.io/inject"] = "True"
        v["spec"]["domain"]["devices"]["useVirtioTransitional"] = True
        v["spec"]["domain"]["devices"]["interfaces"][1].update(
            pciAddress="0000:0A:1f.7", acpiIndex=2,
            ports=[{"port": 80, "protocol": "TCP"}, {"port": 5353, "protocol": "udp"},
                   {"port": 2905, "protocol": "SCTP"}, {"port": 8080}])
    iface = passt_iface(sidecar.define(vmi=vmi_with(change)))
    assert iface.find("address").attrib == {"type": "pci", "domain": "0x0000", "bus": "0x0A",
                                            "slot": "0x1f", "function": "0x7"}
    assert iface.find("acpi").get("index") == "2"
    assert iface.find("model").get("type") == "virtio-transitional"
    rules = [(pf.get("proto"), [(r.get("start"), r.get("exclude")) for r in pf]) for pf in iface.findall("portForward")]
    istio = [(str(p), "yes") for p in (15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090)]
    assert rules == [("tcp", istio + [("80", None), ("8080", None)]), ("udp", [("5353", None)])]


def test_replaced_vs_appended_through_grpc(sidecar: Sidecar):
    appended = sidecar.define()
    existing = DOMAIN.replace(b"\t\t<interface", b'\t\t<interface type="user"><alias name="default"/>'
                                                  b'<rom enabled="no"/></interface>\n\t\t<interface')
    replaced = sidecar.define(xml=existing)
    assert canon(replaced) != canon(appended)  # placement differs...
    aliases = [i.find("alias").get("name") for i in ET.fromstring(replaced).find("devices").findall("interface")]
    assert aliases == ["ua-default", "ua-secondary"]
    aliases = [i.find("alias").get("name") for i in ET.fromstring(appended).find("devices").findall("interface")]
    assert aliases == ["ua-secondary", "ua-default"]
    assert ET.tostring(passt_iface(replaced)) == ET.tostring(passt_iface(appended))  # ...content does not


# --- errors: status UNKNOWN, upstream's text, the server keeps serving


ERRORS = [
    (b"", DOMAIN, "failed to unmarshal VMI: unexpected end of JSON input"),
    (b"{not json", DOMAIN, "failed to unmarshal VMI: invalid character 'n' looking for beginning of object key string"),
    (VMI, b"", "failed to unmarshal given domain spec: EOF"),
    (VMI, b"invalid-domain-xml", "failed to unmarshal given domain spec: EOF"),
    (VMI, b"<domain", "failed to unmarshal given domain spec: XML syntax error on line 1: unexpected EOF"),
    (vmi_with(lambda v: v["spec"]["networks"].pop(1)), DOMAIN, "failed to create passt configurator: pod network not found"),
    (vmi_with(lambda v: v["spec"]["domain"]["devices"]["interfaces"].pop(1)), DOMAIN,
     "failed to create passt configurator: no interface found"),
    (vmi_with(lambda v: v["spec"]["domain"]["devices"]["interfaces"][1].pop("binding")), DOMAIN,
     'failed to create passt configurator: interface "default" is not set with Passt network binding plugin'),
    (vmi_with(lambda v: v["status"]["interfaces"].pop(1)), DOMAIN,
     "failed to create passt configurator: primary network interface status was not found"),
    (vmi_with(lambda v: v["status"]["interfaces"][1].update(podInterfaceName="")), DOMAIN,
     "failed to create passt configurator: primary pod network interface name was not found"),
    (vmi_with(lambda v: v["spec"]["domain"]["devices"]["interfaces"][1].update(pciAddress="0000:81:01.10")), DOMAIN,
     "failed to generate domain interface spec: failed to parse pci address 0000:81:01.10"),
    (VMI, DOMAIN.replace(b"\t<os>", b'\t<memoryBacking><access mode="private"></access></memoryBacking>\n\t<os>'),
     "memory backing access mode must be 'shared'; cannot override existing mode: \"private\""),
]


@pytest.mark.parametrize("version", ["v1alpha3", "v1alpha2"])
def test_every_error_unknown_and_server_survives(sidecar: Sidecar, version: str):
    for vmi, xml, msg in ERRORS:
        assert sidecar.define_error(vmi, xml, version) == msg
        assert canon(sidecar.define(version=version)) == canon(EXPECTED)
    assert sidecar.proc.poll() is None
    sidecar.shutdown()
    assert sidecar.wait_exit() == 0
    assert "failed to parse pci address" in sidecar.stderr()


def test_concurrent_calls(sidecar: Sidecar):
    results: list[Any] = []

    def worker() -> None:
        for _ in range(10):
            try:
                results.append(canon(sidecar.define()) == canon(EXPECTED))
            except Exception as err:  # collected and reported below
                results.append(err)
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [True] * 40


def test_pre_cloud_init_iso_passes_data_through(sidecar: Sidecar):
    data = json.dumps({"userData": "#cloud-config\n", "networkData": "x"}).encode()
    for version, (pb, pb_grpc) in STUBS.items():
        with sidecar.channel() as ch:
            result = pb_grpc.CallbacksStub(ch).PreCloudInitIso(
                pb.PreCloudInitIsoParams(cloudInitData=data, vmi=VMI, cloudInitNoCloudSource=b"{}"), timeout=10)
        assert result.cloudInitData == data and result.cloudInitNoCloudSource == b""


def test_big_domain_within_message_limit(sidecar: Sidecar):
    filler = b"".join(b'\t\t<controller type="pci" index="%d" model="pcie-root-port"></controller>\n' % i
                      for i in range(20000))
    big = DOMAIN.replace(b"\t\t<channel", filler + b"\t\t<channel")
    assert 1 << 20 < len(big) < 4 << 20
    out = sidecar.define(xml=big)
    assert len(out) > len(big) and passt_iface(out).get("type") == "vhostuser"


# --- lifetime


def test_shutdown_idempotent_concurrent_calls_never_hang(sidecar: Sidecar):
    outcomes: list[Any] = []

    def call() -> None:
        try:
            sidecar.shutdown()
            outcomes.append("ok")
        except grpc.RpcError as err:  # the server may already be gone for late callers
            outcomes.append(err.code())
    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    # A caller racing the server's own stop sees it gone: UNAVAILABLE if it came
    # after, CANCELLED if grpc core had queued the call when the stop began.
    gone = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert "ok" in outcomes and set(outcomes) <= {"ok"} | gone
    assert sidecar.wait_exit() == 0
    assert not sidecar.sock.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT])
def test_signals_stop_cleanly(sidecar: Sidecar, signum: int):
    sidecar.proc.send_signal(signum)
    assert sidecar.wait_exit() == 0
    assert not sidecar.sock.exists()
    assert signal.Signals(signum).name in sidecar.stderr()


def test_stale_socket_removed_before_binding(start: Any, tmp_path: Path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "passt.sock"))
    stale.close()  # the file stays, nobody listens
    sidecar = start()
    assert canon(sidecar.define()) == canon(EXPECTED)
    sidecar.proc.send_signal(signal.SIGTERM)
    assert sidecar.wait_exit() == 0
    assert "removing stale socket" in sidecar.stderr()


def test_live_socket_refused(start: Any, sidecar: Sidecar):
    second = start(ready=False)
    assert second.wait_exit() == 1
    assert "another process is already listening on" in second.stderr()
    assert sidecar.info().name == "network-passt-binding"  # the first one is unharmed
    assert sidecar.sock.exists()


def test_not_a_socket_refused(start: Any, tmp_path: Path):
    path = tmp_path / "passt.sock"
    path.write_text("precious")
    second = start(ready=False)
    assert second.wait_exit() == 1
    assert "is not a socket" in second.stderr()
    assert path.read_text() == "precious"


def test_missing_directory_exit_1(start: Any, tmp_path: Path):
    second = start(sock=tmp_path / "missing" / "passt.sock", ready=False)
    assert second.wait_exit() == 1
    assert "failed to listen on" in second.stderr()


def test_bad_flavour_exit_1(start: Any):
    second = start({"PASSTCORE_BINDING_FLAVOUR": "tap"}, ready=False)
    assert second.wait_exit() == 1
    assert "PASSTCORE_BINDING_FLAVOUR" in second.stderr()
    assert not second.sock.exists()


def test_help():
    out = subprocess.run([str(SIDECAR), "--help"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0
    for word in ("--socket", "/var/run/kubevirt-hooks/passt.sock", "PASSTCORE_BINDING_FLAVOUR",
                 "NETWORK_BINDING_PLUGIN_NAME"):
        assert word in out.stdout


def test_rss_within_support_container_limit(sidecar: Sidecar):
    for _ in range(30):
        sidecar.define()
    status = Path(f"/proc/{sidecar.proc.pid}/status").read_text()
    peak_kib = int(status.split("VmHWM:")[1].split()[0])
    assert peak_kib * 1024 <= 64_000_000, f"peak RSS {peak_kib} KiB"


# --- the raw OnDefineDomain codec against the generated classes


@given(st.binary(max_size=300), st.binary(max_size=300), st.binary(max_size=300), st.binary(max_size=50))
def test_define_params_codec_matches_generated_class(xml: bytes, vmi: bytes, extra_xml: bytes, cloud: bytes):
    from passtcore.kubevirt.sidecar import decode_define_params

    one = api_v1alpha3_pb2.OnDefineDomainParams(domainXML=xml, vmi=vmi).SerializeToString()
    two = api_v1alpha3_pb2.OnDefineDomainParams(domainXML=extra_xml).SerializeToString()
    unknown = api_v1alpha3_pb2.PreCloudInitIsoParams(cloudInitData=cloud).SerializeToString()  # field 3
    for raw in (one, one + two, unknown + one, one + unknown + two):
        reference = api_v1alpha3_pb2.OnDefineDomainParams.FromString(raw)
        got_xml, got_vmi = decode_define_params(raw)
        assert (bytes(got_xml), bytes(got_vmi)) == (reference.domainXML, reference.vmi)


@given(st.binary(max_size=70000))
def test_define_result_codec_matches_generated_class(xml: bytes):
    from passtcore.kubevirt.sidecar import encode_define_result

    raw = encode_define_result(xml)
    assert raw == api_v1alpha3_pb2.OnDefineDomainResult(domainXML=xml).SerializeToString()


@pytest.mark.parametrize("raw", [b"\x0a", b"\x0a\x05abc", b"\x0a\xff\xff", b"\x00", b"\x0b", b"\x08\xff"])
def test_define_params_codec_rejects_malformed(raw: bytes):
    from passtcore.kubevirt.sidecar import WireError, decode_define_params

    with pytest.raises(WireError):
        decode_define_params(raw)


def test_malformed_request_rejected_server_survives(sidecar: Sidecar):
    with sidecar.channel() as ch:
        call = ch.unary_unary("/kubevirt.hooks.v1alpha3.Callbacks/OnDefineDomain")
        with pytest.raises(grpc.RpcError) as info:
            call(b"\x0a\xff\xff", timeout=10)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert canon(sidecar.define()) == canon(EXPECTED)


# --- the committed generated modules match the shipped .proto files


@pytest.mark.parametrize("name", ["api_info", "api_v1alpha2", "api_v1alpha3"])
def test_generated_modules_match_proto_files(tmp_path: Path, name: str):
    import importlib

    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    proto_dir = Path(importlib.import_module("passtcore.kubevirt.proto").__file__).parent
    out = tmp_path / "set.pb"
    assert protoc.main(["protoc", f"-I{proto_dir}", f"--descriptor_set_out={out}", f"{proto_dir}/{name}.proto"]) == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    for message in fresh.message_type:
        for fld in message.field:
            fld.ClearField("json_name")  # protoc adds it to descriptor sets, not to generated modules
    module = importlib.import_module(f"passtcore.kubevirt.proto.{name}_pb2")
    committed = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(committed)
    assert committed == fresh
    services = {s.name: [m.name for m in s.method] for s in fresh.service}
    assert services == ({"Info": ["Info"]} if name == "api_info" else
                        {"Callbacks": ["OnDefineDomain", "PreCloudInitIso"] + (["Shutdown"] if name == "api_v1alpha3" else [])})
