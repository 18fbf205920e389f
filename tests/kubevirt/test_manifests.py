"""deploy/: the KubeVirt manifests and the container build files, checked by reading.

* Every manifest parses as YAML; the DaemonSet validates (strict: unknown
  fields rejected) against the Kubernetes OpenAPI schemas shipped with
  kubernetes-validate, offline, for the oldest and newest Kubernetes versions
  KubeVirt supports here.
* The custom resources (NetworkAttachmentDefinition, the KubeVirt CR patch, the
  VirtualMachine) have no schema there: their required fields, and the
  references between them (NAD name, binding name, images), are checked here.
  The NAD's CNI config is fed to the real plugin the way Multus/libcni does.
* Containerfiles: every COPY source exists, the commands they run exist in the
  package (console scripts in pyproject.toml), the image names agree with the
  manifests and docs/deploy-kubevirt.md.

No engine is available to build the images; tests/kubevirt/test_cni_deploy.py
runs the installer and the launcher from the layout the CNI Containerfile makes.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = DEPLOY / "manifests"
PLUGIN = Path(sys.executable).parent / "kubevirt-passt-binding"
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def load(name: str) -> dict:
    docs = [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d is not None]
    assert len(docs) == 1, name
    return docs[0]


def containerfile(path: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuations joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / path).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        instr, _, args = line.partition(" ")
        out.append((instr.upper(), args.strip()))
    assert not pending, f"{path}: dangling continuation"
    return out


def copies_from_context(path: str) -> list[tuple[list[str], str]]:
    """COPY instructions that take files from the build context: (sources, destination)."""
    result = []
    for instr, args in containerfile(path):
        if instr == "COPY" and not args.startswith("--from"):
            *sources, dest = args.split()
            result.append((sources, dest))
    return result


# --- YAML and schemas -----------------------------------------------------------


@pytest.mark.parametrize("path", sorted(p.name for p in MANIFESTS.glob("*.yaml")))
def test_manifest_parses(path: str) -> None:
    doc = load(path)
    assert isinstance(doc, dict) and doc


@pytest.mark.parametrize("k8s", ["1.28.0", "1.33.0"])
def test_daemonset_validates_against_kubernetes_schema(k8s: str) -> None:
    import kubernetes_validate

    doc = load("cni-daemonset.yaml")
    kubernetes_validate.validate(doc, k8s, strict=True)


def test_schema_validation_is_not_vacuous() -> None:
    import kubernetes_validate

    doc = load("cni-daemonset.yaml")
    doc["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 7
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, "1.28.0", strict=True)
    doc = load("cni-daemonset.yaml")
    doc["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []  # typo'd field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, "1.28.0", strict=True)


@pytest.mark.netns
def test_validator_needs_no_network() -> None:
    # The schemas ship inside the package: validation works in an empty netns.
    if os.geteuid() != 0:
        pytest.skip("needs root for unshare -n")
    proc = subprocess.run(
        ["unshare", "-n", str(Path(sys.executable).parent / "kubernetes-validate"),
         "--strict", "-k", "1.28.0", str(MANIFESTS / "cni-daemonset.yaml")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passed" in proc.stdout + proc.stderr


# --- the CNI installer DaemonSet ----------------------------------------------------


def test_daemonset_installs_into_the_node_cni_dir() -> None:
    ds = load("cni-daemonset.yaml")
    assert (ds["kind"], ds["metadata"]["name"], ds["metadata"]["namespace"]) == (
        "DaemonSet", "passt-binding-cni", "kubevirt")
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"][
        "metadata"]["labels"].items()
    (container,) = pod["containers"]
    assert container["securityContext"]["privileged"] is True
    env = {e["name"]: e["value"] for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cni-bin"]["hostPath"]["path"] == "/opt/cni/bin"
    assert mounts["cni-bin"] == env["CNI_BIN_DIR"] == "/opt/cni/bin"
    # The command runs the installer the CNI image puts at /cni/install.sh.
    assert container["command"] == ["/bin/sh", "/cni/install.sh"]
    assert (["deploy/cni/kubevirt-passt-binding", "deploy/cni/install.sh"], "/cni/") in \
        copies_from_context("cni/Containerfile")
    assert env["CNI_SRC_DIR"] == "/cni"
    assert container["image"].rsplit(":", 1)[0].endswith("/passtcore-cni")


# --- NAD, KubeVirt CR patch, VirtualMachine --------------------------------------------


def test_network_attachment_definition() -> None:
    nad = load("network-attachment-definition.yaml")
    assert nad["apiVersion"] == "k8s.cni.cncf.io/v1"
    assert nad["kind"] == "NetworkAttachmentDefinition"
    assert nad["metadata"]["name"] == "netbindingpasst"
    config = json.loads(nad["spec"]["config"])
    assert config["name"] == nad["metadata"]["name"]
    assert [p["type"] for p in config["plugins"]] == ["kubevirt-passt-binding"]
    assert config["cniVersion"] in ("0.3.1", "0.4.0", "1.0.0", "1.1.0")


def test_nad_config_accepted_by_the_plugin() -> None:
    """libcni hands each plugin of a conflist its own conf with name and cniVersion."""
    config = json.loads(load("network-attachment-definition.yaml")["spec"]["config"])
    runtime_conf = {
        "cniVersion": config["cniVersion"],
        "name": config["name"],
        **config["plugins"][0],
        "args": {"cni": {"logicNetworkName": "default"}},
    }
    base = {"PATH": os.environ.get("PATH", ""), "CNI_CONTAINERID": "c0ffee",
            "CNI_IFNAME": "net1", "CNI_PATH": "/opt/cni/bin"}
    for command in ("DEL", "CHECK"):
        proc = subprocess.run([str(PLUGIN)], input=json.dumps(runtime_conf), text=True,
                              capture_output=True, timeout=30,
                              env={**base, "CNI_COMMAND": command,
                                   "CNI_NETNS": "/run/netns/absent-for-manifest-test"})
        assert (proc.returncode, proc.stdout) == (0, ""), (command, proc.stdout)


def test_kubevirt_cr_patch_registers_passt() -> None:
    patch = load("kubevirt-passt-binding-patch.yaml")
    binding = patch["spec"]["configuration"]["network"]["binding"]
    assert list(binding) == ["passt"]
    passt = binding["passt"]
    assert passt["migration"] == {}
    assert set(passt) >= {"sidecarImage", "networkAttachmentDefinition", "migration",
                          "computeResourceOverhead"}
    memory = passt["computeResourceOverhead"]["requests"]["memory"]
    assert re.fullmatch(r"[0-9]+(Ki|Mi|Gi|k|M|G)?", memory), memory
    # The NAD reference names the NAD manifest (namespace/name).
    nad = load("network-attachment-definition.yaml")
    assert passt["networkAttachmentDefinition"] == (
        f"{nad['metadata']['namespace']}/{nad['metadata']['name']}")
    assert passt["sidecarImage"].rsplit(":", 1)[0].endswith("/passtcore-sidecar")
    # A merge patch: nothing else of the CR is touched.
    assert list(patch) == ["spec"] and list(patch["spec"]) == ["configuration"]


def test_example_vm_uses_the_binding_on_the_pod_network() -> None:
    vm = load("example-vm.yaml")
    assert (vm["apiVersion"], vm["kind"]) == ("kubevirt.io/v1", "VirtualMachine")
    assert vm["metadata"]["name"]
    spec = vm["spec"]
    assert ("runStrategy" in spec) != ("running" in spec)
    tmpl = spec["template"]["spec"]
    pod_nets = [n["name"] for n in tmpl["networks"] if "pod" in n]
    assert len(pod_nets) == 1
    ifaces = {i["name"]: i for i in tmpl["domain"]["devices"]["interfaces"]}
    binding_names = set(load("kubevirt-passt-binding-patch.yaml")["spec"]["configuration"][
        "network"]["binding"])
    assert ifaces[pod_nets[0]]["binding"]["name"] in binding_names
    # Every disk has a volume and vice versa.
    disks = {d["name"] for d in tmpl["domain"]["devices"]["disks"]}
    assert disks == {v["name"] for v in tmpl["volumes"]}
    for port in ifaces[pod_nets[0]].get("ports", []):
        assert 0 < port["port"] < 65536 and port.get("protocol", "TCP") in ("TCP", "UDP")


# --- Containerfiles ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["cni/Containerfile", "sidecar/Containerfile",
                                  "virt-launcher/Containerfile"])
def test_containerfile_copy_sources_exist(path: str) -> None:
    instrs = containerfile(path)
    assert any(i == "FROM" for i, _ in instrs)
    known = {"ARG", "FROM", "RUN", "COPY", "ENV", "WORKDIR", "USER", "ENTRYPOINT", "CMD",
             "LABEL"}
    assert {i for i, _ in instrs} <= known
    for sources, _dest in copies_from_context(path):
        for src in sources:
            assert (ROOT / src).exists(), f"{path}: COPY {src} missing"
    # Stages referenced by --from exist (as a stage name or an image).
    stages = {args.split()[-1] for i, args in instrs if i == "FROM" and " AS " in args.upper()}
    for i, args in instrs:
        if i == "COPY" and args.startswith("--from="):
            ref = args.split()[0].split("=", 1)[1]
            assert ref in stages or "/" in ref, f"{path}: unknown stage {ref}"


def test_cni_bundle_holds_every_module_the_plugin_imports() -> None:
    """The Containerfile copies a handful of passtcore files: they must suffice."""
    lib = "/cni/kubevirt-passt-binding.d/lib/"
    shipped = set()
    for sources, dest in copies_from_context("cni/Containerfile"):
        if dest.startswith(lib):
            shipped |= {dest[len(lib):] + Path(s).name for s in sources}
    assert shipped == {"passtcore/__init__.py", "passtcore/netns.py",
                       "passtcore/kubevirt/__init__.py", "passtcore/kubevirt/cni.py"}
    # Import the plugin for ADD in a fresh interpreter and list the passtcore modules used.
    code = ("import sys; import passtcore.kubevirt.cni as c; c.netns_problem('/proc/self/ns/net');"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('passtcore'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=30).stdout.split()
    as_files = {m.replace(".", "/") + ("/__init__.py" if (ROOT / m.replace(".", "/")).is_dir()
                                       else ".py") for m in out}
    assert as_files <= shipped, as_files - shipped


def test_sidecar_image_runs_the_sidecar_console_script() -> None:
    instrs = containerfile("sidecar/Containerfile")
    entry = [json.loads(a) for i, a in instrs if i == "ENTRYPOINT"][-1]
    assert entry == ["passtcore-sidecar"]
    assert SCRIPTS["passtcore-sidecar"] == "passtcore.kubevirt.sidecar:main"
    assert (Path(sys.executable).parent / "passtcore-sidecar").exists()
    assert any(i == "USER" and a == "1001" for i, a in instrs)
    env = " ".join(a for i, a in instrs if i == "ENV")
    assert "PASSTCORE_BINDING_FLAVOUR=" in env


def test_sidecar_flavour_variable_is_the_one_the_sidecar_reads() -> None:
    source = (ROOT / "passtcore/kubevirt/sidecar.py").read_text()
    assert 'FLAVOUR_ENV = "PASSTCORE_BINDING_FLAVOUR"' in source
    assert '"stream"' in source and '"vhostuser"' in source


def test_virt_launcher_layer_puts_passt_first_in_path() -> None:
    instrs = containerfile("virt-launcher/Containerfile")
    text = " ".join(a for _, a in instrs)
    assert "/stage/usr/local/bin/passt" in text and "/stage/usr/bin/passt" in text
    assert instrs[-1] == ("COPY", "--from=build /stage/ /")
    assert any(a.startswith("quay.io/kubevirt/virt-launcher:") for i, a in instrs if i == "FROM")
    wrapper = (DEPLOY / "virt-launcher/passt").read_text()
    module, func = SCRIPTS["passtcore-run"].split(":")
    assert f"from {module} import {func}" in wrapper
    assert os.access(DEPLOY / "virt-launcher/passt", os.X_OK)
    # passt-repair (virt-handler's name for the helper) is passtcore-repair
    assert "/stage/usr/bin/passt-repair" in text
    repair = (DEPLOY / "virt-launcher/passt-repair").read_text()
    module, func = SCRIPTS["passtcore-repair"].split(":")
    assert f"from {module} import {func}" in repair
    assert os.access(DEPLOY / "virt-launcher/passt-repair", os.X_OK)
    assert os.access(DEPLOY / "cni/kubevirt-passt-binding", os.X_OK)
    assert os.access(DEPLOY / "cni/install.sh", os.X_OK)


def test_shell_scripts_parse() -> None:
    for script in ("cni/install.sh", "cni/kubevirt-passt-binding", "virt-launcher/passt",
                   "virt-launcher/passt-repair"):
        subprocess.run(["sh", "-n", str(DEPLOY / script)], check=True, timeout=10)


def test_walkthrough_uses_these_files() -> None:
    doc = (ROOT / "docs/deploy-kubevirt.md").read_text()
    for rel in ("deploy/cni/Containerfile", "deploy/sidecar/Containerfile",
                "deploy/virt-launcher/Containerfile", "deploy/manifests/cni-daemonset.yaml",
                "deploy/manifests/network-attachment-definition.yaml",
                "deploy/manifests/kubevirt-passt-binding-patch.yaml",
                "deploy/manifests/example-vm.yaml"):
        assert rel in doc, rel
        assert (ROOT / rel).exists(), rel
    for rel in re.findall(r"\b(deploy/[\w./-]+\w)", doc):
        assert (ROOT / rel).exists(), f"docs/deploy-kubevirt.md names missing {rel}"
