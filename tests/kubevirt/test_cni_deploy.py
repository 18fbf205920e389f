"""The CNI image's installer and launcher, run here from the layout the image has.

tests build ``/cni`` of deploy/cni/Containerfile in a temporary directory: the
launcher, install.sh, ``kubevirt-passt-binding.d/python`` (here a link to this
machine's base interpreter instead of the relocatable CPython) and ``lib/``
holding exactly the passtcore files the Containerfile copies. install.sh then
installs into a temporary "node CNI bin dir", and the installed launcher is
run the way a runtime runs a plugin, against a real network namespace. With
``-I -S`` and only ``lib/`` on sys.path, a missing module in the bundle shows
up here.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest



def _sibling(name: str):
    """A module beside this file, whatever pytest's import mode or package layout."""
    spec = importlib.util.spec_from_file_location(
        f"_passtcore_tests_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_cni, _manifests = _sibling("test_cni"), _sibling("test_manifests")
error_of, ns_sysctl, run_plugin = _cni.error_of, _cni.ns_sysctl, _cni.run_plugin
DEPLOY, ROOT, copies_from_context = _manifests.DEPLOY, _manifests.ROOT, _manifests.copies_from_context

NAME = "kubevirt-passt-binding"


def base_python() -> Path:
    """The interpreter behind this venv (no site-packages of ours under -I -S)."""
    return Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))


@pytest.fixture
def image_cni(tmp_path: Path) -> Path:
    """``/cni`` as deploy/cni/Containerfile lays it out, from its COPY lines."""
    cni = tmp_path / "image-cni"
    bundle = cni / f"{NAME}.d"
    (bundle / "python" / "bin").mkdir(parents=True)
    (bundle / "python" / "bin" / "python3").symlink_to(base_python())
    for sources, dest in copies_from_context("cni/Containerfile"):
        assert dest.startswith("/cni/"), dest
        target = cni / dest[len("/cni/"):]
        target.mkdir(parents=True, exist_ok=True)
        for src in sources:
            shutil.copy2(ROOT / src, target / Path(src).name)
    return cni


def install(image_cni: Path, bin_dir: Path, script: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
    """install.sh --once as the DaemonSet runs it (the copy inside the image by default)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "CNI_SRC_DIR": str(image_cni), "CNI_BIN_DIR": str(bin_dir)}
    script = script or image_cni / "install.sh"
    return subprocess.run(["sh", str(script), "--once"], env=env,
                          capture_output=True, text=True, timeout=60)


def test_installer_copies_launcher_and_bundle(image_cni: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "node" / "opt" / "cni" / "bin"
    proc = install(image_cni, bin_dir)
    assert proc.returncode == 0, proc.stderr
    launcher = bin_dir / NAME
    assert launcher.is_file() and os.access(launcher, os.X_OK)
    assert (bin_dir / f"{NAME}.d").is_symlink()
    assert (bin_dir / f"{NAME}.d" / "lib" / "passtcore" / "kubevirt" / "cni.py").is_file()
    # No temporaries left behind.
    assert sorted(p.name for p in bin_dir.iterdir() if p.name.startswith(".")) == [
        os.readlink(bin_dir / f"{NAME}.d")]

    version = run_plugin("VERSION", "", plugin=launcher)
    assert version.returncode == 0, version.stderr
    assert json.loads(version.stdout)["cniVersion"] == "1.1.0"
    assert version.stdout.endswith("\n")


def test_reinstall_replaces_the_bundle(image_cni: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    assert install(image_cni, bin_dir).returncode == 0
    first = os.readlink(bin_dir / f"{NAME}.d")
    (bin_dir / "other-plugin").write_text("untouched")
    # Leftovers of an installer killed half-way are cleaned up.
    (bin_dir / f".{NAME}.new-19700101000000-1").write_text("partial")
    (bin_dir / f".{NAME}.d.link-19700101000000-1").symlink_to("nowhere")
    (bin_dir / f".{NAME}.d-19700101000000-1").mkdir()
    assert install(image_cni, bin_dir).returncode == 0
    second = os.readlink(bin_dir / f"{NAME}.d")
    assert first != second
    assert not (bin_dir / first).exists()
    assert (bin_dir / "other-plugin").read_text() == "untouched"
    assert sorted(p.name for p in bin_dir.iterdir()) == sorted(
        [NAME, f"{NAME}.d", second, "other-plugin"])
    assert run_plugin("DEL", plugin=bin_dir / NAME).returncode == 0


def test_installer_refuses_an_incomplete_image(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = install(empty, tmp_path / "bin", DEPLOY / "cni" / "install.sh")
    assert proc.returncode == 1
    assert "does not hold" in proc.stderr
    assert not (tmp_path / "bin").exists()


def test_launcher_errors_and_about(image_cni: Path) -> None:
    launcher = image_cni / NAME
    err = error_of(run_plugin("ADD", containerid="bad id", plugin=launcher))
    assert err["code"] == 4
    proc = run_plugin(None, plugin=launcher)
    assert proc.returncode == 0 and "CNI passt-binding plugin version unknown" in proc.stderr


def test_launcher_ignores_python_environment(image_cni: Path, tmp_path: Path) -> None:
    # -I: a PYTHONPATH pointing at a poisoned "passtcore" must not be used.
    evil = tmp_path / "evil" / "passtcore"
    evil.mkdir(parents=True)
    (evil / "__init__.py").write_text("raise SystemExit('poisoned')\n")
    proc = run_plugin("DEL", plugin=image_cni / NAME,
                      extra={"PYTHONPATH": str(evil.parent), "PYTHONSTARTUP": "/nonexistent"})
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr


def test_launcher_found_through_path(image_cni: Path) -> None:
    # Invoked by bare name (no slash in $0): it finds its bundle next to itself.
    env = {"PATH": f"{image_cni}:/usr/bin:/bin", "CNI_COMMAND": "VERSION"}
    proc = subprocess.run([NAME], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert '"cniVersion":"1.1.0"' in proc.stdout


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                    reason="needs root and iproute2's ip (creates a network namespace)")
def test_installed_launcher_add_in_real_netns(image_cni: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    assert install(image_cni, bin_dir).returncode == 0
    name = f"pcnid-{uuid.uuid4().hex[:10]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        proc = run_plugin("ADD", netns=f"/run/netns/{name}", plugin=bin_dir / NAME)
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        assert proc.stdout == '{\n    "cniVersion": "1.0.0"\n}'
        assert ns_sysctl(name, "net.ipv4.ip_unprivileged_port_start") == "0"
        assert ns_sysctl(name, "net.ipv4.ping_group_range") == "107\t107"
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=10)


def test_virt_launcher_passt_wrapper_runs_passtcore_run() -> None:
    """deploy/virt-launcher/passt executed directly, with this venv's interpreter."""
    env = {"PATH": os.environ.get("PATH", ""), "PASSTCORE_PYTHON": sys.executable}
    wrapper = DEPLOY / "virt-launcher" / "passt"
    daemon = str(Path(sys.executable).parent / "passtcore-run")
    direct = subprocess.run([daemon, "--version"],
                            env=env, capture_output=True, text=True, timeout=60)
    proc = subprocess.run([str(wrapper), "--version"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (direct.returncode, direct.stdout), proc.stderr
    assert proc.returncode == 0, proc.stderr
    # A bad option fails exactly as passtcore-run does (libvirt sees the exit status).
    bad = subprocess.run([str(wrapper), "--no-such-option"], env=env, capture_output=True,
                         text=True, timeout=60)
    bad_direct = subprocess.run([daemon, "--no-such-option"], env=env, capture_output=True,
                                text=True, timeout=60)
    assert bad.returncode == bad_direct.returncode != 0, (bad.stderr, bad_direct.stderr)


def test_installer_sleeps_until_terminated(image_cni: Path, tmp_path: Path) -> None:
    """The DaemonSet container keeps running after installing and stops at once on SIGTERM."""
    import signal

    bin_dir = tmp_path / "bin"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "CNI_SRC_DIR": str(image_cni), "CNI_BIN_DIR": str(bin_dir)}
    proc = subprocess.Popen(["sh", str(image_cni / "install.sh")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        line = proc.stdout.readline()  # printed once installed
        assert "installed" in line, line
        assert (bin_dir / NAME).is_file()
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)  # still running: a DaemonSet pod must not exit
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        # The background sleep went with it: nothing left in the process group.
        for _ in range(50):
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            pytest.fail("install.sh left a process behind")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
