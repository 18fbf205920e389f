#!/usr/bin/env python3
"""Start to first TCP exchange: how soon a namespace guest can talk after the
translator is exec'd.

    .venv/bin/python benches/first_exchange.py [--runs 7] [--pasta-upstream EXE]

For each translator (passtcore-run in namespace mode, Debian's pasta, and an
upstream pasta build if given) and each run, a fresh ``passtcore.sandbox``
(private host and guest namespaces, documentation addresses): an echo server
listens on the host's loopback; a probe already running in the guest
namespace tries, every 0.5 ms, to connect to the gateway address, send one
byte and read it back (ENETUNREACH, refusals and timeouts are retried); the
translator is then exec'd. The figure is exec -> first echoed byte
(CLOCK_MONOTONIC is one clock for every namespace), median of the runs, with
the probe's failed attempts by errno. Run as root.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from passtcore.sandbox import Sandbox, daemon_binary, stop_process, wait_for

PORT = 5401
PROBE = r"""
import errno, json, socket, sys, time
host, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
print("armed", flush=True)
fails = {}
while time.monotonic() < deadline:
    s = socket.socket()
    s.settimeout(2.0)  # a real client waits for its SYN to be answered
    try:
        s.connect((host, port))
        s.sendall(b"x")
        if s.recv(1) == b"x":
            print(json.dumps({"t": time.monotonic(), "fails": fails}), flush=True)
            sys.exit(0)
    except OSError as exc:
        name = errno.errorcode.get(exc.errno, type(exc).__name__) if exc.errno else type(exc).__name__
        fails[name] = fails.get(name, 0) + 1
    finally:
        s.close()
    time.sleep(0.0005)
print(json.dumps({"t": None, "fails": fails}), flush=True)
"""
ECHO = r"""
import socket, sys
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", int(sys.argv[1]))); ls.listen(64)
print("ready", flush=True)
while True:
    c, _ = ls.accept()
    d = c.recv(1)
    if d:
        c.sendall(d)
    c.close()
"""


def one_run(name: str, exe: str) -> dict:
    with Sandbox("fx") as sb:
        echo = sb.popen_host(sys.executable, "-c", ECHO, str(PORT), stdout=subprocess.PIPE,
                             text=True)
        probe = None
        proc = None
        try:
            assert echo.stdout.readline().strip() == "ready"
            probe = sb.popen_guest(sys.executable, "-c", PROBE, sb.gw4, str(PORT), "10",
                                   stdout=subprocess.PIPE, text=True)
            assert probe.stdout.readline().strip() == "armed"
            if name.startswith("pasta"):
                argv = [exe, "-f", "-q", "--runas", "0", "--config-net", "-t", "none", "-u",
                        "none", "-T", "none", "-U", "none", "--netns",
                        f"/run/netns/{sb.guest_ns}"]
            else:
                argv = [exe, "--netns", f"/run/netns/{sb.guest_ns}", "-I", "eth0",
                        "--config-net", "-f", "-q", "--runas", "0", "-t", "none", "-u", "none"]
            t0 = time.monotonic()
            proc = subprocess.Popen(["ip", "netns", "exec", sb.host_ns, *argv],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            out = json.loads(probe.stdout.readline())
            return {"ms": (out["t"] - t0) * 1000 if out["t"] else None, "fails": out["fails"]}
        finally:
            stop_process(proc)
            stop_process(probe)
            stop_process(echo)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--pasta-upstream", metavar="EXE")
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("first_exchange.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    who = [("passtcore", daemon_binary()), ("pasta", "pasta")]
    if a.pasta_upstream:
        who.append(("pasta-upstream", os.path.abspath(a.pasta_upstream)))
    results = {}
    for i in range(a.runs):      # interleaved: one run of each per round
        for name, exe in who:
            results.setdefault(name, []).append(one_run(name, exe))
    rows = {}
    for name, runs in results.items():
        ms = [r["ms"] for r in runs if r["ms"] is not None]
        fails: dict[str, int] = {}
        for r in runs:
            for k, n in r["fails"].items():
                fails[k] = fails.get(k, 0) + n
        rows[name] = {"median_ms": round(statistics.median(ms), 1) if ms else None,
                      "runs": len(runs), "ok": len(ms),
                      "failed_attempts_per_run": {k: round(n / len(runs), 1)
                                                  for k, n in sorted(fails.items())}}
        print(f"{name:15} start to first TCP exchange: median {rows[name]['median_ms']} ms "
              f"({len(ms)}/{len(runs)} ok; failed attempts per run: "
              f"{rows[name]['failed_attempts_per_run']})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
