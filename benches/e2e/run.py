#!/usr/bin/env python3
"""End-to-end network benchmark: passtcore-run vs pasta vs slirp4netns vs veth, and
a QEMU guest behind passtcore-run (vhost-user, stream socket) vs passt.

    .venv/bin/python benches/e2e/run.py [--quick] [--only NAME,...] [--no-vm] [--json OUT]

For each translator, in its own fresh set of namespaces (see netenv.py), a
guest namespace reaches servers in a private "host" namespace through the
translator, and we measure:

- iperf3 TCP throughput guest->host and host->guest (-R), 1 and 4 streams,
  guest MTU 65520 and 1500 (iperf3 -J JSON), plus "stalled seconds": 1-second
  receiver intervals that carried 0 bytes;
- TCP request/response latency p50/p99 (1-byte ping-pong, one connection);
- TCP connections per second (connect+close loop for a fixed time);
- the translator's VmRSS after the runs and its VmHWM (/proc/PID/status).

The ``vm-*`` rows (vm.py) boot a QEMU guest (TCG) once per row and measure
TCP both ways at guest MTU 65520 and 1500, 64-byte request/response latency,
connect-request-response per second, and the daemon's CPU per GiB and memory;
they print as a second table with ratios to Debian's passt (``vm-passt``).

The results print as one table with ratios to pasta and to veth and are saved
as JSON.  A translator that fails (to start, or in one test) gets "failed:
reason" and the run goes on with the rest.  Run as root; nothing leaves the
namespaces the benchmark creates, and everything is removed on exit, Ctrl-C
or SIGTERM included.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import measure  # noqa: E402
from measure import MeasureFailed  # noqa: E402
from netenv import EnvError, make_env  # noqa: E402
from report import MTUS, STREAMS, iperf_key, render  # noqa: E402
from translators import ALL, TranslatorFailed, read_mem_kib  # noqa: E402
import vm  # noqa: E402

ALL.update(vm.VMS)
ALIASES = {"passtcore-run": "passtcore", "slirp": "slirp4netns"}
DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "latest.json")


def _config(quick: bool) -> dict:
    # VM cells are short: under TCG the emulated guest CPU is the limit, not the daemon.
    if quick:
        return {"iperf_seconds": 3, "latency_seconds": 2.0, "latency_rounds": 20000, "cps_seconds": 2.0,
                "vm_iperf_seconds": 3, "vm_rr_seconds": 2.0, "vm_rr_rounds": 20000, "vm_crr_seconds": 2.0}
    return {"iperf_seconds": 10, "latency_seconds": 5.0, "latency_rounds": 50000, "cps_seconds": 5.0,
            "vm_iperf_seconds": 5, "vm_rr_seconds": 3.0, "vm_rr_rounds": 50000, "vm_crr_seconds": 3.0}


def bench_one(name: str, cfg: dict, logdir: str, res: dict) -> dict:
    """Everything for one translator; never raises EnvError/MeasureFailed.

    Each guest MTU gets a fresh set of namespaces and a translator started for
    that MTU (as a user would configure it).  Latency and connection rate run
    in the MTU 65520 world after its iperf3 runs; the memory row reports that
    process's VmRSS after all of them, VmHWM is the peak over both processes.
    """
    res.update({"status": "interrupted", "metrics": {}, "errors": {}, "notes": [], "memory_kib": {}, "pids": {}})
    t0 = time.monotonic()
    # The machine may be shared: the load around each row helps read its numbers.
    res["loadavg_start"] = list(os.getloadavg())
    status = "ok"
    for mtu in MTUS:
        failure = bench_mtu(name, mtu, cfg, logdir, res)
        if failure:
            status = f"failed: {failure}"
            if mtu == MTUS[0]:
                # A translator that cannot start or dies in the first world will not
                # do better in the second: mark the remaining tests and move on.
                for key in _all_keys():
                    if key not in res["metrics"]:
                        res["errors"].setdefault(key, "not run")
                break
    res["status"] = status  # "interrupted" until here
    hwm = [m.get("VmHWM", 0) for m in res["memory_kib"].values()]
    if hwm and max(hwm):
        res["memory_kib"]["max_hwm"] = max(hwm)
    if res["status"] == "ok" and res["errors"] and not res["metrics"]:
        first = next(iter(res["errors"].items()))
        res["status"] = f"failed: every test failed (first, {first[0]}: {first[1]})"
    elif res["status"] == "ok" and res["errors"]:
        res["status"] = f"partial: {len(res['errors'])} test(s) failed"
    res["pid"] = res["pids"].get(str(MTUS[0]))
    res["wall_seconds"] = round(time.monotonic() - t0, 1)
    res["loadavg_end"] = list(os.getloadavg())
    return res


def _attempt(name: str, link, res: dict, key: str, fn) -> None:
    """One cell: its metrics, or its failure reason; the run goes on either way."""
    if not link.alive():
        res["errors"][key] = link.exit_reason()
        return
    print(f"  {name}: {key} ...", end="", flush=True, file=sys.stderr)
    try:
        res["metrics"][key] = fn()
        print(" ok", file=sys.stderr)
    except (MeasureFailed, EnvError) as exc:
        res["errors"][key] = str(exc)
        print(f" failed: {exc}", file=sys.stderr)


VM_KEYS = [iperf_key(m, 1, r) for m in MTUS for r in (False, True)] + ["rr", "crr"]


def bench_vm(name: str, cfg: dict, logdir: str, res: dict) -> dict:
    """One guest boot behind ``name`` (a vm.VM) for every VM cell; never raises
    EnvError/MeasureFailed.  The daemon starts with -m MTUS[0] (or the first MTU the
    row can run); the MTUS[1] cells run after the guest lowered its own MTU (see vm.py)."""
    res.update({"section": "vm", "status": "interrupted", "metrics": {}, "errors": {}, "notes": [],
                "memory_kib": {}, "pids": {}})
    t0 = time.monotonic()
    res["loadavg_start"] = list(os.getloadavg())
    tr = ALL[name]
    res["what"] = tr.describe()
    status = "ok"
    link = None
    mtus = [m for m in MTUS if m not in tr.skip_mtus]
    for mtu, why in tr.skip_mtus.items():
        for r in (False, True):
            res["errors"][iperf_key(mtu, 1, r)] = why
    with make_env() as env:
        res["topology"] = env.topology
        try:
            link = tr.start(env, mtus[0], logdir)
        except (TranslatorFailed, EnvError, OSError, MeasureFailed) as exc:
            status = f"failed: start: {exc}"
            for key in VM_KEYS:
                res["errors"].setdefault(key, "not run")
        if link is not None:
            try:
                status = _vm_cells(name, env, link, cfg, res, mtus)
            finally:
                link.close()
    res["status"] = status
    if link is not None and tr.passtcore:
        res["daemon_counters"] = link.final_counters()  # logged on SIGTERM
    hwm = [m.get("VmHWM", 0) for m in res["memory_kib"].values()]
    if hwm and max(hwm):
        res["memory_kib"]["max_hwm"] = max(hwm)
    if res["status"] == "ok" and res["errors"] and not res["metrics"]:
        first = next(iter(res["errors"].items()))
        res["status"] = f"failed: every test failed (first, {first[0]}: {first[1]})"
    elif res["status"] == "ok" and any(not e.startswith("n/a") for e in res["errors"].values()):
        res["status"] = f"partial: {sum(not e.startswith('n/a') for e in res['errors'].values())} test(s) failed"
    res["wall_seconds"] = round(time.monotonic() - t0, 1)
    res["loadavg_end"] = list(os.getloadavg())
    return res


def _vm_cells(name: str, env, link, cfg: dict, res: dict, mtus: list[int]) -> str:
    res["pids"]["daemon"] = res["pid"] = link.pid
    res["pids"]["qemu"] = link.qemu.pid
    res["boot_seconds"] = link.boot_seconds
    res["lease"] = link.extra.get("lease")
    res["guest_kernel"] = link.extra.get("guest_kernel")
    for note in link.notes:
        if note not in res["notes"]:
            res["notes"].append(note)
    secs = cfg["vm_iperf_seconds"]
    try:
        budget = 300 + len(mtus) * 2 * (secs + 60) + cfg["vm_rr_seconds"] + cfg["vm_crr_seconds"]
        measure.start_servers(env, link, max_seconds=budget)
    except EnvError as exc:
        for key in VM_KEYS:
            res["errors"].setdefault(key, "not run")
        return f"failed: servers: {exc}"
    for mtu in mtus:
        if link.guest_mtu != mtu:
            try:
                vm.set_guest_mtu(link, mtu)
            except MeasureFailed as exc:
                for r in (False, True):
                    res["errors"][iperf_key(mtu, 1, r)] = f"guest MTU {mtu}: {exc}"
                continue
        for reverse in (False, True):
            _attempt(name, link, res, iperf_key(mtu, 1, reverse),
                     lambda r=reverse: vm.iperf(link, secs, r))
        if mtu == mtus[0]:
            _attempt(name, link, res, "rr", lambda: vm.rr(link, cfg["vm_rr_seconds"], cfg["vm_rr_rounds"]))
            _attempt(name, link, res, "crr", lambda: vm.crr(link, cfg["vm_crr_seconds"]))
        if link.pid:
            res["memory_kib"][str(mtu)] = read_mem_kib(link.pid)
    if res["errors"]:
        for line in link.log_highlights():
            note = f"log: {line}"
            if note not in res["notes"]:
                res["notes"].append(note)
    return "ok" if link.alive() else f"failed: {link.exit_reason()}"


def _all_keys() -> list[str]:
    keys = [iperf_key(m, s, r) for m in MTUS for s in STREAMS for r in (False, True)]
    return keys + ["latency", "cps", "udp_g2h", "udp_paced", "udp_latency"]


def bench_mtu(name: str, mtu: int, cfg: dict, logdir: str, res: dict) -> str | None:
    """One fresh world at guest MTU ``mtu``; fills ``res``; returns a failure reason or None."""
    tr = ALL[name]
    with make_env() as env:
        res["topology"] = env.topology
        try:
            link = tr.start(env, mtu, logdir)
        except (TranslatorFailed, EnvError, OSError) as exc:
            return f"start (MTU {mtu}): {exc}"
        if link.pid:
            res["pids"][str(mtu)] = link.pid
        for note in link.notes:
            if note not in res["notes"]:
                res["notes"].append(note)
        try:
            budget = 120 + len(STREAMS) * 2 * (cfg["iperf_seconds"] + 15) + 2 * 60
            measure.start_servers(env, link, max_seconds=budget)
        except EnvError as exc:
            return f"servers (MTU {mtu}): {exc}"

        def attempt(key: str, fn) -> None:
            _attempt(name, link, res, key, fn)

        for streams in STREAMS:
            for reverse in (False, True):
                attempt(iperf_key(mtu, streams, reverse),
                        lambda s=streams, r=reverse: measure.iperf(env, link, cfg["iperf_seconds"], s, r))
        if mtu == MTUS[0]:
            attempt("latency", lambda: measure.latency(env, link, cfg["latency_seconds"], cfg["latency_rounds"]))
            attempt("cps", lambda: measure.cps(env, link, cfg["cps_seconds"]))
            attempt("udp_g2h", lambda: measure.udp_iperf(env, link, cfg["iperf_seconds"], "0"))
            attempt("udp_paced", lambda: measure.udp_iperf(env, link, cfg["iperf_seconds"], "1G"))
            attempt("udp_latency", lambda: measure.udp_latency(env, link, cfg["latency_seconds"],
                                                               cfg["latency_rounds"]))
        if link.pid:
            res["memory_kib"][str(mtu)] = read_mem_kib(link.pid)
        if res["errors"]:
            for line in link.log_highlights():
                note = f"log: {line}"
                if note not in res["notes"]:
                    res["notes"].append(note)
        if not link.alive():
            return link.exit_reason()
    if name in ("passtcore", "baseline"):
        # Logged on SIGTERM: frames, bytes and drops by reason, to explain a bad row.
        res.setdefault("daemon_counters", {})[str(mtu)] = link.final_counters()
    return None


def _versions() -> dict:
    def first_line(argv: list[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return ((r.stdout or r.stderr).strip().splitlines() or [""])[0]
        except (OSError, subprocess.TimeoutExpired):
            return "unavailable"
    try:
        import passtcore
        backend = passtcore.backend
    except Exception as exc:  # the kernels may be mid-rewrite; the bench still runs
        backend = f"unavailable ({type(exc).__name__})"
    return {"iperf3": first_line(["iperf3", "--version"]),
            "slirp4netns": first_line(["slirp4netns", "--version"]),
            "pasta": first_line(["dpkg-query", "-W", "-f=${Version}", "passt"]),
            "pasta-upstream": (first_line([ALL["pasta-upstream"].exe, "--version"])
                               if "pasta-upstream" in ALL else None),
            "passt-upstream": (first_line([ALL["passt-upstream"].exe, "--version"])
                               if "passt-upstream" in ALL else None),
            "qemu": vm.qemu_version(),
            "passtcore_backend": backend}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="passtcore end-to-end benchmark")
    p.add_argument("--quick", action="store_true",
                   help="3 s per iperf3 test (about 2 minutes, plus about 25 s per vm-* row)")
    p.add_argument("--only", default="", help="comma-separated subset of " + ",".join(ALL)
                   + " (also accepted: passtcore-run, slirp; vm: every vm-* row)")
    p.add_argument("--no-vm", action="store_true",
                   help="leave out the vm-* rows (a QEMU guest each, about 30 s per row)")
    p.add_argument("--json", dest="json_out", default=DEFAULT_JSON,
                   help="write results to this JSON file (default: %(default)s)")
    p.add_argument("--baseline", metavar="EXE",
                   help="also measure another passtcore-run executable (e.g. a wrapper that runs "
                        "an older checkout) as the 'baseline' column")
    p.add_argument("--pasta-upstream", metavar="EXE",
                   help="also measure this pasta executable (an upstream build of your own) as "
                        "the 'pasta-upstream' column")
    p.add_argument("--passt-upstream", metavar="EXE",
                   help="also measure this passt executable (an upstream build of your own) on "
                        "the stream socket as the 'passt-upstream' column, and behind a QEMU guest "
                        "(vhost-user if it has --vhost-user) as 'vm-passt-upstream'")
    a = p.parse_args(argv)
    if a.passt_upstream:
        from translators import StreamSocket

        if not os.access(a.passt_upstream, os.X_OK):
            p.error(f"--passt-upstream: {a.passt_upstream} is not an executable")
        ALL["passt-upstream"] = StreamSocket("passt-upstream", os.path.abspath(a.passt_upstream))
        ALL["vm-passt-upstream"] = vm.upstream(os.path.abspath(a.passt_upstream))
    if a.pasta_upstream:
        from translators import Pasta

        if not os.access(a.pasta_upstream, os.X_OK):
            p.error(f"--pasta-upstream: {a.pasta_upstream} is not an executable")
        ALL["pasta-upstream"] = Pasta("pasta-upstream", os.path.abspath(a.pasta_upstream))
    if a.baseline:
        from translators import PasstcoreRun

        ALL["baseline"] = PasstcoreRun("baseline", a.baseline)
    names = [ALIASES.get(n.strip(), n.strip()) for n in a.only.split(",") if n.strip()] or list(ALL)
    if "vm" in names:
        names = [n for n in names if n != "vm"] + [n for n in ALL if n.startswith("vm-")]
    if a.no_vm:
        names = [n for n in names if not n.startswith("vm-")]
    vm_rows = any(n.startswith("vm-") for n in names)
    if a.baseline and "baseline" not in names:
        names.append("baseline")
    if a.pasta_upstream and "pasta-upstream" not in names:
        names.append("pasta-upstream")
    if (a.passt_upstream and "passt-upstream" not in names
            and any(not n.startswith("vm-") for n in names)):
        names.append("passt-upstream")
    if a.passt_upstream and vm_rows and "vm-passt-upstream" not in names:
        names.append("vm-passt-upstream")
    unknown = [n for n in names if n not in ALL]
    if unknown:
        p.error(f"unknown translator(s) {unknown}; choose from {','.join(ALL)}")
    a.names = [n for n in ALL if n in names]  # canonical order
    return a


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        print("run.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    cfg = _config(a.quick)
    logdir = tempfile.mkdtemp(prefix="passtcore-e2e-")
    doc = {"meta": {"started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "quick": a.quick, "config": cfg, "kernel": platform.release(),
                    "cpus": os.cpu_count(), "versions": _versions(), "logdir": logdir},
           "translators": {}}
    interrupted = False
    try:
        for name in a.names:
            print(f"== {name}", file=sys.stderr, flush=True)
            doc["translators"][name] = {}  # filled in place: kept if interrupted
            if isinstance(ALL[name], vm.VM):
                bench_vm(name, cfg, logdir, doc["translators"][name])
            else:
                bench_one(name, cfg, logdir, doc["translators"][name])
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: namespaces and processes cleaned up; partial results follow", file=sys.stderr)
    doc["meta"]["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if doc["translators"]:
        print(render(doc["translators"]))
    if a.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(a.json_out)), exist_ok=True)
        with open(a.json_out, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"\nJSON: {a.json_out}")
    failed = any(not r["status"].startswith("ok") for r in doc["translators"].values())
    if failed:
        print(f"logs: {logdir}")
    else:
        shutil.rmtree(logdir, ignore_errors=True)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
