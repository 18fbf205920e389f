#!/usr/bin/env python3
"""Millions of hostile guest frames through passtcore-run's stream socket front end.

    .venv/bin/python benches/fuzz_frames.py [--frames 10000000] [--seed 1]

The frames are tests/fuzzframes.py's: structure-aware mutations of every kind a
guest sends, destinations pinned to the sandbox's own addresses, 5 % plain
garbage. The daemon runs in a private sandbox (``passtcore.sandbox``). Prints
the rate, the daemon's RSS now and then, and at the end its counters; exits 1
if the daemon died or any counter that stands for a bug is non-zero (an
engine's exception caught by the dispatcher, a parser crash, a loop callback
error). The CI suite runs a short version (tests/daemon/test_fuzz_frames.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from daemon.helpers import StreamClient, pack  # noqa: E402
from fuzzframes import bugs, frames  # noqa: E402

from passtcore.sandbox import Sandbox  # noqa: E402


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=10_000_000)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("fuzz_frames.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    with Sandbox("fuzz") as sb:
        d = sb.start_daemon(mode="socket")
        c = StreamClient(d.socket_path)
        c.sock.setblocking(False)
        t0 = last = time.monotonic()
        sent = 0
        batch: list[bytes] = []
        for f in frames(a.seed, a.frames):
            batch.append(pack(f if len(f) >= 14 else f + bytes(14 - len(f))))
            if len(batch) < 1000:
                continue
            data = memoryview(b"".join(batch))
            batch.clear()
            while data:
                try:
                    data = data[c.sock.send(data):]
                except BlockingIOError:
                    pass
                try:
                    while c.sock.recv(1 << 20):  # whatever the daemon answers
                        pass
                except BlockingIOError:
                    pass
            sent += 1000
            now = time.monotonic()
            if now - last >= 10:
                last = now
                if not d.alive():
                    break
                print(f"{sent:>10} frames, {sent / (now - t0):,.0f}/s, daemon RSS "
                      f"{rss_mib(d.pid):.1f} MiB", flush=True)
        c.sock.setblocking(True)
        alive = d.alive()
        counters = d.counters() if alive else {}
        c.close()
        d.stop()
    elapsed = time.monotonic() - t0
    print(f"{sent} frames in {elapsed:.0f} s ({sent / elapsed:,.0f}/s); daemon "
          f"{'alive' if alive else 'DEAD'}")
    drops = {k[5:]: v for k, v in counters.items() if k.startswith("drop.")}
    print(f"frames_in {counters.get('frames_in')}, frames_out {counters.get('frames_out')}, "
          f"{sum(drops.values())} dropped under {len(drops)} reasons")
    found = bugs(counters)
    print("bug counters:", found or "none")
    return 0 if alive and not found else 1


if __name__ == "__main__":
    sys.exit(main())
