"""Packaging: the wheel builds, installs into a fresh venv and runs the Cython kernels.

Slow (compiles every kernel): marked ``slow``.  The source tree is copied to a
temporary directory first (minus build products and the venv), so the build
leaves nothing behind in the working tree.  The build uses the current venv's
setuptools/Cython/numpy (``--no-build-isolation``), so no build dependency is
downloaded; the fresh venv gets numpy from the package index (or pip's cache) and
the test is skipped if that is impossible.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ("csum", "headers", "batch", "flowtable")
SCRIPTS = ("passtcore-run", "passtcore-sidecar", "kubevirt-passt-binding")
IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "*.so", "*.c", "*.egg-info", "__pycache__", ".hypothesis",
    ".pytest_cache", ".benchmarks", "results", "tests", "deploy",
)


def run(*cmd: str | Path, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def built_kernels() -> list[str]:
    return [k for k in KERNELS if (ROOT / "passtcore" / f"_{k}.pyx").exists()]


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("pkg") / "src"
    shutil.copytree(ROOT, dst, ignore=IGNORE)
    return dst


@pytest.fixture(scope="module")
def wheel(src: Path) -> Path:
    out = src.parent / "wheels"
    r = run(sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
            "-w", out, cwd=src)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wheels = list(out.glob("passtcore-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contents(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "cp3" in wheel.name and "linux_x86_64" in wheel.name, wheel.name  # a binary wheel
    for k in built_kernels():
        assert any(n.startswith(f"passtcore/_{k}.") and n.endswith(".so") for n in names), k
    for stub in ("_csum.pyi", "_headers.pyi", "_batch.pyi", "py.typed"):
        assert f"passtcore/{stub}" in names, stub
    for twin in ("csum", "headers", "batch"):
        assert f"passtcore_py/{twin}.py" in names


def test_installs_and_runs_in_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    r = run(sys.executable, "-m", "venv", venv)
    assert r.returncode == 0, r.stderr
    py = venv / "bin" / "python"
    r = run(py, "-m", "pip", "install", "-q", "--no-deps", wheel)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run(py, "-m", "pip", "install", "-q", "numpy")
    if r.returncode != 0:
        pytest.skip(f"numpy not installable in a fresh venv (no package index?): {r.stderr[-500:]}")
    for script in SCRIPTS:
        assert (venv / "bin" / script).exists(), script
    probe = (
        "import passtcore, passtcore._csum as c, passtcore._headers as h, passtcore._batch as b\n"
        "assert '/site-packages/' in c.__file__, c.__file__\n"
        "assert c.inet_checksum(bytes.fromhex('0001f203f4f5f6f7')) == 0x220D\n"
        "assert h.header_len(6, 17) == 62\n"
        "print(passtcore.backend)\n"
    )
    r = run(py, "-c", probe, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    if len(built_kernels()) == len(KERNELS):
        assert r.stdout.strip() == "cython"


def test_sdist_ships_the_sources(src: Path) -> None:
    if importlib.util.find_spec("build") is None:
        pytest.skip("python -m build not installed")
    out = src.parent / "sdist"
    r = run(sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", out, src)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (sdist,) = out.glob("passtcore-*.tar.gz")
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    for k in built_kernels():
        assert f"passtcore/_{k}.pyx" in names, k
    assert "passtcore/_kern.pxd" in names
    assert "passtcore_py/csum.py" in names and "setup.py" in names
    assert not any(n.endswith((".so", ".c")) for n in names)
