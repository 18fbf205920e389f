"""Write (or refresh) the end-to-end section of benches/README.md from a run's JSON.

    .venv/bin/python benches/e2e/readme_section.py RESULTS.json [--command "..."]

benches/README.md is shared with the micro-benchmark section: only the text
between the ``<!-- e2e:begin -->`` and ``<!-- e2e:end -->`` markers is ours;
it is replaced in place, or appended once if the markers are absent.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report import render  # noqa: E402

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
BEGIN, END = "<!-- e2e:begin -->", "<!-- e2e:end -->"

BODY = """\
## End-to-end network benchmark (`e2e/`)

`e2e/run.py` puts a guest network namespace behind each translator in turn and
measures them side by side in one run:

| row | what serves the guest | the guest dials |
|---|---|---|
| `passtcore` | `passtcore-run --netns <guest> -f --config-net -m MTU -t none -u none` | 192.0.2.1 (gateway -> host loopback) |
| `pasta` | Debian's `pasta -f --runas 0 --config-net -m MTU -t none -u none -T none -U none --netns <guest>` | 192.0.2.1 (same mapping) |
| `slirp4netns` | `slirp4netns --configure --mtu=MTU --netns-type=path <guest> tap0` | 10.0.2.2 (-> host loopback) |
| `veth` | a plain veth pair host ns <-> guest ns (no translation: the upper bound) | 198.51.100.1 |
| `baseline` | with `--baseline EXE`: another passtcore-run build (e.g. an older checkout, or a wrapper setting `PASSTCORE_NO_FASTPATH=1`), as `passtcore` | 192.0.2.1 |
| `pasta-upstream` | with `--pasta-upstream EXE`: your own upstream pasta build, run as Debian's | 192.0.2.1 |
| `passtcore-stream`, `passt`, `passt-upstream` | the daemon on its QEMU stream socket (`-s`); the guest's tap is joined to it by a QEMU without a machine (`-M none`, hub); `passt-upstream` with `--passt-upstream EXE` | 192.0.2.1 |

passtcore-run uses the tap's checksum/TSO offloads (64 KiB segments at any
guest MTU); Debian's pasta has none.

Measurements, each row in its own fresh namespaces (`passtcore.sandbox`:
upstream/host/guest, documentation addresses, a private resolv.conf), one fresh
translator per guest MTU:

- iperf3 TCP throughput guest->host and host->guest (`-R`), 1 and 4 streams
  (`-P 4`), guest MTU 65520 and 1500 (`-J` JSON, receiver's `end.sum_received`);
- stalled seconds: the receiver's 1-s iperf3 intervals that carried 0 bytes;
- TCP request/response latency p50/p99: 1-byte ping-pong over one connection
  (`e2e/probes.py`, TCP_NODELAY; the client and server are Python, so the
  veth row shows the floor they impose on every row);
- connections per second: a connect()+close() loop for a fixed time;
- the translator's CPU seconds per GiB moved over the TCP runs of each MTU
  (`/proc/PID/stat` utime+stime around each iperf3 run);
- the translator's VmRSS after the MTU 65520 runs and its peak VmHWM
  (`/proc/PID/status`).

Run as root (about 8 minutes; `--quick`: 3 s per iperf3 test, about 2 minutes):

    .venv/bin/python benches/e2e/run.py [--quick] [--only passtcore,pasta,slirp4netns,veth] [--baseline EXE] [--json OUT]

Python-level calls per frame in bulk TCP (cProfile over the daemon, MTU 65520 and
1500, offloads on and off, both directions; the figure the Cython fast path is
to bring towards zero):

    .venv/bin/python benches/e2e/pycalls.py [--seconds 3]

It prints the table (values, then ratios to pasta and to veth) and saves the
JSON (default `benches/e2e/results/latest.json`, not committed): per-interval
bytes, retransmits, pids, the load average around each row, and
passtcore-run's own frame/drop counters.  The full run shown below is kept in
`benches/e2e/results/full.json`.
A translator that fails to start, or fails a test, shows `failed` in that
cell and `failed: reason` in its status line; the other rows go on.
Nothing leaves the namespaces the run creates, and everything (processes by
PID, namespaces, /etc/netns dirs) is removed on exit, Ctrl-C or SIGTERM.
`tests/bench/test_e2e_smoke.py` (`netns`, `slow`) runs `--quick --only veth,pasta`
so that the harness cannot rot silently.

Reading the numbers: the reference machine has 2 cores shared with other
jobs, so single runs are noisy (compare the load averages in the JSON); the
translator, iperf3 client and server all compete for the same two CPUs.
Debian's pasta (2023) stalls guest->host at MTU 1500 (throughput collapses
after the first second; this is what the "stalled" row catches).
"""


def section(doc: dict, command: str) -> str:
    meta = doc["meta"]
    table = render(doc["translators"])
    return (f"{BEGIN}\n{BODY}\n### Latest results\n\n"
            f"`{command}` -- started {meta['started']}, kernel {meta['kernel']}, {meta['cpus']} CPUs, "
            f"passtcore kernels: {meta['versions'].get('passtcore_backend')}, "
            f"{meta['versions'].get('iperf3')}, {meta['versions'].get('slirp4netns')}, "
            f"passt/pasta {meta['versions'].get('pasta')}.\n\n```\n{table}\n```\n{END}\n")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("results")
    p.add_argument("--command", default=".venv/bin/python benches/e2e/run.py")
    a = p.parse_args()
    with open(a.results) as f:
        doc = json.load(f)
    new = section(doc, a.command)
    text = open(README).read() if os.path.exists(README) else "# benches\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + new + tail
    else:
        text = text.rstrip("\n") + "\n\n" + new
    with open(README, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
