#!/usr/bin/env python3
"""Python-level function calls per forwarded segment in bulk TCP (namespace mode).

    .venv/bin/python benches/e2e/pycalls.py [--seconds 3] [--json OUT]

For each case (guest MTU 65520 and 1500, the tap's offloads on and off, each
direction), passtcore-run runs under cProfile in a fresh sandbox
(``passtcore.sandbox``: private host and guest namespaces, documentation
addresses) while iperf3 moves data through it for ``--seconds``; the profile's
call count is divided by the frames the daemon moved (its exit counters:
frames in + frames out, data and ACKs alike). This is the figure the Cython
fast path is meant to drive towards zero; cProfile slows the daemon, so the
throughput printed beside it is not a benchmark. Run as root.
"""
from __future__ import annotations

import argparse
import json
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time

from passtcore.run.counters import parse_line
from passtcore.sandbox import Sandbox, wait_for

IPERF_PORT = 5301


def one_case(mtu: int, offload: bool, reverse: bool, seconds: int) -> dict:
    with Sandbox("pyc") as sb:
        out = os.path.join(tempfile.mkdtemp(prefix="pycalls-"), "daemon.prof")
        log = sb.path("daemon.log")
        argv = [sys.executable, "-m", "cProfile", "-o", out, "-m", "passtcore.run",
                "--netns", sb.guest_ns, "-I", "eth0", "--config-net", "-f", "-q",
                "--runas", "0", "-m", str(mtu), "-l", log]
        if not offload:
            argv.append("--no-tap-offload")
        daemon = subprocess.Popen(["ip", "netns", "exec", sb.host_ns, *argv])
        server = sb.popen_host("iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(IPERF_PORT),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: os.path.exists(log) and "ready: serving" in open(log).read(), 30,
                     "the daemon")
            wait_for(lambda: sb.guest("ip", "-4", "route", "show", "default").stdout.strip(),
                     10, "the guest's default route")
            cmd = ["iperf3", "-c", sb.gw4, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
            if reverse:
                cmd.append("-R")
            r = sb.guest(*cmd, check=False, timeout=seconds + 30)
            doc = json.loads(r.stdout)
            gbps = doc["end"]["sum_received"]["bits_per_second"] / 1e9
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
            server.kill()
            server.wait(10)
        counters: dict[str, int] = {}
        for line in open(log):
            parsed = parse_line(line)
            if parsed:
                counters = parsed
        stats = pstats.Stats(out)
        frames = counters.get("frames_in", 0) + counters.get("frames_out", 0)
        return {"mtu": mtu, "offload": offload, "direction": "host->guest" if reverse else
                "guest->host", "calls": stats.total_calls, "frames": frames,
                "calls_per_frame": round(stats.total_calls / frames, 2) if frames else None,
                "gbps_under_profiler": round(gbps, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=3)
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("pycalls.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    rows = []
    for mtu, offload in ((65520, True), (1500, True), (1500, False)):
        for reverse in (False, True):
            t = time.monotonic()
            row = one_case(mtu, offload, reverse, a.seconds)
            print(f"MTU {mtu:5} offload {'on ' if offload else 'off'} {row['direction']:11}: "
                  f"{row['calls_per_frame']} Python calls per frame ({row['calls']} calls, "
                  f"{row['frames']} frames; {row['gbps_under_profiler']} Gbit/s under cProfile, "
                  f"{time.monotonic() - t:.0f} s)", flush=True)
            rows.append(row)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
