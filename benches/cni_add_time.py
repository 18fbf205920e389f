"""Wall time of one CNI ADD of kubevirt-passt-binding, as the kubelet pays it.

Creates a real network namespace (``ip netns add`` with a random suffix,
deleted at the end) and runs ADD against it N times per launcher, each run a
fresh process with the CNI environment and the NAD's config on stdin, timed
from fork to exit. Launchers compared:

* ``console-script``: the pip-installed entry point (venv interpreter, site
  import, editable-install finder) — what ``pip install`` gives a node;
* ``deploy-launcher``: deploy/cni/kubevirt-passt-binding installed by
  deploy/cni/install.sh from the CNI image layout (``/bin/sh`` exec of the
  base interpreter with ``-I -S`` and only the bundled passtcore files on
  sys.path) — what the DaemonSet installs;
* ``python-floor``: ``python3 -I -S -c pass``, the interpreter's own start-up,
  for reference.

Prints, per launcher, the wall time (median, p90, min, max) and the child's
CPU time (user + system; less sensitive to other load on the machine), in ms,
and the verdict of the wall-time median against the 100 ms budget (exit
status 1 if a launcher's median exceeds it).

    .venv/bin/python benches/cni_add_time.py [-n 200]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_MS = 100.0
CONFIG = json.dumps({"cniVersion": "1.0.0", "name": "netbindingpasst",
                     "type": "kubevirt-passt-binding",
                     "args": {"cni": {"logicNetworkName": "default"}}}).encode()


def deploy_layout(tmp: Path, base: str) -> Path:
    """Install the deploy launcher the way the DaemonSet does; return its path.

    ``base`` stands in for the bundle's relocatable CPython.
    """
    image = tmp / "cni"
    bundle = image / "kubevirt-passt-binding.d"
    (bundle / "python" / "bin").mkdir(parents=True)
    (bundle / "python" / "bin" / "python3").symlink_to(base)
    for rel in ("passtcore/__init__.py", "passtcore/netns.py",
                "passtcore/kubevirt/__init__.py", "passtcore/kubevirt/cni.py"):
        (bundle / "lib" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, bundle / "lib" / rel)
    for name in ("kubevirt-passt-binding", "install.sh"):
        shutil.copy2(ROOT / "deploy" / "cni" / name, image / name)
    # Bytecode as the image has it (unchecked-hash, compiled at build time).
    subprocess.run([base, "-I", "-m", "compileall", "-q", "--invalidation-mode",
                    "unchecked-hash", str(bundle / "lib")], check=True)
    bin_dir = tmp / "opt-cni-bin"
    subprocess.run(["sh", str(image / "install.sh"), "--once"], check=True,
                   stdout=subprocess.DEVNULL,
                   env={"PATH": os.environ["PATH"], "CNI_SRC_DIR": str(image),
                        "CNI_BIN_DIR": str(bin_dir)})
    return bin_dir / "kubevirt-passt-binding"


def time_runs(argv: list[str], env: dict[str, str], n: int) -> list[tuple[float, float]]:
    """(wall ms, CPU ms of the child: user + system) per run."""
    times = []
    for _ in range(n):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(argv, input=CONFIG, env=env, capture_output=True, timeout=30)
        wall = (time.perf_counter() - start) * 1000
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
        times.append((wall, cpu))
        if proc.returncode != 0:
            raise SystemExit(f"{argv[0]} failed: {proc.stdout!r} {proc.stderr!r}")
    return times


def summary(times: list[float]) -> tuple[float, float, float, float]:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return statistics.median(ordered), p90, ordered[0], ordered[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="runs per launcher (default 200)")
    parser.add_argument("--bundle-python", metavar="PATH",
                        help="interpreter standing in for the image's CPython "
                             "(default: the one behind this venv)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (ip netns add, setns)")
    ns = f"pcnibench-{uuid.uuid4().hex[:10]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        with tempfile.TemporaryDirectory(prefix="cni-bench-") as tmp:
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": "ADD",
                   "CNI_CONTAINERID": "0123456789abcdef", "CNI_NETNS": f"/run/netns/{ns}",
                   "CNI_IFNAME": "net1", "CNI_PATH": "/opt/cni/bin"}
            base = args.bundle_python or os.path.realpath(
                getattr(sys, "_base_executable", sys.executable))
            print(f"bundle interpreter: {base}")
            launchers = {
                "console-script": [str(Path(sys.executable).parent / "kubevirt-passt-binding")],
                "deploy-launcher": [str(deploy_layout(Path(tmp), base))],
                "python-floor": [base, "-I", "-S", "-c", "pass"],
            }
            for argv in launchers.values():  # warm the page cache
                time_runs(argv, env, 3)
            results = {}
            # Interleave launchers so that load from other processes hits all alike.
            for _ in range(args.n // 10 or 1):
                for name, argv in launchers.items():
                    results.setdefault(name, []).extend(time_runs(argv, env, 10))
            check = subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-n",
                                    "net.ipv4.ip_unprivileged_port_start",
                                    "net.ipv4.ping_group_range"],
                                   capture_output=True, text=True, check=True).stdout.split()
            assert check == ["0", "107", "107"], check
    finally:
        subprocess.run(["ip", "netns", "del", ns])

    status = 0
    print(f"CNI ADD, {len(results['python-floor'])} runs each (real netns, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")
    print(f"{'launcher':<17} {'wall median':>11} {'p90':>7} {'min':>7} {'max':>7}"
          f" {'CPU median':>11} {'p90':>7}  (ms)")
    for name, runs in results.items():
        med, p90, lo, hi = summary([wall for wall, _ in runs])
        cmed, cp90, _, _ = summary([cpu for _, cpu in runs])
        verdict = ""
        if name != "python-floor":
            verdict = "  ok (< 100 ms)" if med < BUDGET_MS else "  OVER BUDGET"
            status |= med >= BUDGET_MS
        print(f"{name:<17} {med:11.1f} {p90:7.1f} {lo:7.1f} {hi:7.1f} {cmed:11.1f} {cp90:7.1f}"
              f"{verdict}")
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
