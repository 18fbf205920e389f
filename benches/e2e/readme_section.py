"""Write (or refresh) the end-to-end section of benches/README.md from a run's JSON.

    .venv/bin/python benches/e2e/readme_section.py RESULTS.json [MORE.json ...] [--command "..." ...]

Each JSON file gets its own "Latest results" block (the n-th ``--command`` is
the n-th file's command line): e.g. a namespace run and a ``--only vm`` run.

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
| `vm-*` | a QEMU guest (next section) | 192.0.2.1 |

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

Run as root (about 8 minutes without the VM rows; `--quick`: 3 s per iperf3 test, about 2 minutes):

    .venv/bin/python benches/e2e/run.py [--quick] [--only passtcore,pasta,slirp4netns,veth] [--no-vm] [--baseline EXE] [--json OUT]

### VM rows (`e2e/vm.py`)

A real Linux guest under QEMU (TCG, 1 vCPU, 512 MiB; `accel=kvm` hangs on the
reference machine, `PASSTCORE_KVM=1` uses it) whose only netdev is the daemon
under test; QEMU and the daemon run in the private host namespace:

| row | the daemon | QEMU's netdev / virtio-net device |
|---|---|---|
| `vm-passtcore` | `passtcore-run --vhost-user -f --runas 0 -s SOCK -t none -u none -m 65520` | vhost-user, device defaults (csum/TSO offloads, MRG_RXBUF) |
| `vm-passtcore-plain` | the same | vhost-user, csum/TSO/ECN/UFO/mrg_rxbuf off (`NO_OFFLOADS` of `tests/daemon/test_vhost_user.py`) |
| `vm-passtcore-stream` | `passtcore-run -f --runas 0 -s SOCK ...` | `-netdev stream` (QEMU's virtio-net back end) |
| `vm-passt` | Debian's `passt -f -q --runas 0 -s SOCK ...` (the reference of the ratios) | `-netdev stream` |
| `vm-passt-upstream` | with `--passt-upstream EXE`: that build, `--vhost-user` if its `--help` lists it | vhost-user (else stream) |

The guest is `passtcore.sandbox.guest`'s image (Debian's cloud kernel, busybox)
plus iperf3 (the host's binary with the libraries `ldd` lists and the loader)
and `guestprobe` (C, in `e2e/guestprobe.py`, built with gcc), added as a second
cached initramfs (`.cache/guest/extra-<hash>/`, built on first use; the
default image stays as it is). Each row boots once (about 4 s here): DHCP
from the daemon (MTU 65520), the MTU 65520 cells, then the guest sets MTU 1500
itself (TCP's MSS follows; the daemon is not restarted) for the MTU 1500 cells:

- iperf3 TCP, one stream, guest->host and host->guest (`-R`), the guest the
  client, the server on the host namespace's loopback (5 s; `--quick`: 3 s);
- TCP request/response with 64-byte messages over one connection, p50/p99
  (`guestprobe rr`, against `e2e/probes.py serve`), and connect + 64 B each
  way + close per second (`guestprobe crr`, netperf's TCP_CRR);
- the daemon's CPU per GiB moved (`/proc/PID/stat` utime+stime around each
  iperf3 run; QEMU's own CPU is in the JSON), its VmRSS (and the part of it
  that is guest memory a vhost-user daemon touched, RssShmem) and VmHWM.

`vm-passtcore-plain` runs at MTU 1500 only (its MTU 65520 cells show `n/a`):
without GSO, mergeable buffers or VIRTIO_NET_F_MTU (which passtcore-run does
not offer, so QEMU's `host_mtu` cannot reach the guest) Linux posts 1.5 KiB
receive buffers. Under TCG the emulated guest CPU is the limit of every row,
so the VM numbers say more about what the daemon costs (CPU per GiB, and a
row falling behind the others) than about its top speed; QEMU's CPU time
during each iperf3 run is in the JSON (`qemu_cpu_seconds`): a guest that idles
while host->guest throughput is low is waiting for the daemon, and
passtcore-run's `daemon_counters` (e.g. `drop.vhost-rx-no-buffer`,
`tcp_segments_retransmitted`) say why. All VM rows (about 30 s each here, one
boot of about 4 s included): `--only vm`; `--no-vm` leaves them out.

    .venv/bin/python benches/e2e/run.py --only vm [--quick] [--passt-upstream EXE] [--json OUT]

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


def _results(doc: dict, command: str, heading: str) -> str:
    meta = doc["meta"]
    v = meta["versions"]
    table = render(doc["translators"])
    vms = [r for r in doc["translators"].values() if r.get("section") == "vm"]
    if vms and len(vms) == len(doc["translators"]):   # a VM-only run
        guest = next((r["guest_kernel"] for r in vms if r.get("guest_kernel")), "?")
        tools = (f"{v.get('qemu')}, guest kernel {guest}, {v.get('iperf3')}, "
                 f"passt {v.get('pasta')}")
        if v.get("passt-upstream"):
            tools += f", passt-upstream {v['passt-upstream']}"
    else:
        tools = f"{v.get('iperf3')}, {v.get('slirp4netns')}, passt/pasta {v.get('pasta')}"
    return (f"### {heading}\n\n"
            f"`{command}` -- started {meta['started']}, kernel {meta['kernel']}, {meta['cpus']} CPUs, "
            f"passtcore kernels: {v.get('passtcore_backend')}, "
            f"{tools}.\n\n```\n{table}\n```\n")


def section(doc: dict, command: str, more: list[tuple[dict, str]] = ()) -> str:
    """The whole marked section: the text, then one results block per run."""
    blocks = [_results(doc, command, "Latest results")]
    for other, cmd in more:
        only_vm = all(r.get("section") == "vm" for r in other["translators"].values())
        blocks.append(_results(other, cmd, "Latest results: VM rows" if only_vm
                               else "Latest results (another run)"))
    return f"{BEGIN}\n{BODY}\n" + "\n".join(blocks) + f"{END}\n"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("results", nargs="+")
    p.add_argument("--command", action="append", default=[],
                   help="the command line shown for each results file, in order")
    a = p.parse_args()
    docs = []
    for i, path in enumerate(a.results):
        with open(path) as f:
            cmd = a.command[i] if i < len(a.command) else ".venv/bin/python benches/e2e/run.py"
            docs.append((json.load(f), cmd))
    new = section(docs[0][0], docs[0][1], docs[1:])
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
