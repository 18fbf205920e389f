"""Memory of passtcore-sidecar while serving (KubeVirt gives it 64 MB).

Starts the installed console script on a socket in a temporary directory,
drives it with a real gRPC client like virt-launcher (Info, then
OnDefineDomain calls with the test fixtures: sequential, then from several
threads at once, plus a ~1 MiB domain), and reads VmRSS / VmHWM from
/proc/PID/status at each stage. Prints one line per stage and the verdict
against the 64 MB (64,000,000 bytes) support-container limit; exit status 1
if the peak exceeds it.

    .venv/bin/python benches/sidecar_rss.py [--calls N] [--threads T]
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from passtcore.kubevirt.proto import api_info_pb2, api_info_pb2_grpc, api_v1alpha3_pb2, api_v1alpha3_pb2_grpc

LIMIT = 64_000_000
DATA = Path(__file__).resolve().parent.parent / "tests" / "kubevirt" / "data"


def memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--big-lines", type=int, default=12000, help="devices in the big domain (12000 = 0.9 MiB)")
    args = parser.parse_args()
    vmi = (DATA / "vmi-passt.json").read_bytes()
    xml = (DATA / "domain-launcher.xml").read_bytes()
    filler = b"".join(b'\t\t<controller type="pci" index="%d" model="pcie-root-port"></controller>\n' % i
                      for i in range(args.big_lines))
    big = xml.replace(b"\t\t<channel", filler + b"\t\t<channel")
    with tempfile.TemporaryDirectory(prefix="sidecar-rss-") as tmp:
        sock = Path(tmp) / "passt.sock"
        exe = Path(sys.executable).parent / "passtcore-sidecar"
        proc = subprocess.Popen([str(exe), "--socket", str(sock)], stderr=subprocess.DEVNULL)
        try:
            target = f"unix://{sock}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    with grpc.insecure_channel(target) as ch:
                        api_info_pb2_grpc.InfoStub(ch).Info(api_info_pb2.InfoParams(), timeout=1)
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit("sidecar did not start")
                    time.sleep(0.05)
            stages = [("idle after Info", *memory(proc.pid))]

            def define(n: int, domain: bytes) -> None:
                with grpc.insecure_channel(target) as ch:
                    stub = api_v1alpha3_pb2_grpc.CallbacksStub(ch)
                    for _ in range(n):
                        stub.OnDefineDomain(api_v1alpha3_pb2.OnDefineDomainParams(domainXML=domain, vmi=vmi),
                                            timeout=60)

            start = time.perf_counter()
            define(args.calls, xml)
            per_call = (time.perf_counter() - start) / args.calls
            stages.append((f"{args.calls} sequential OnDefineDomain", *memory(proc.pid)))
            threads = [threading.Thread(target=define, args=(args.calls // args.threads, xml))
                       for _ in range(args.threads)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)
            stages.append((f"{args.threads} threads x {args.calls // args.threads} calls", *memory(proc.pid)))
            define(5, big)
            stages.append((f"5 calls with a {len(big) / 2**20:.1f} MiB domain", *memory(proc.pid)))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    for name, rss, hwm in stages:
        print(f"sidecar_rss: {name:40s} VmRSS {rss / 1e6:6.1f} MB  VmHWM {hwm / 1e6:6.1f} MB")
    peak = max(hwm for _, _, hwm in stages)
    print(f"sidecar_rss: OnDefineDomain round trip {per_call * 1e3:.2f} ms (launcher fixture)")
    print(f"sidecar_rss: peak {peak / 1e6:.1f} MB of the {LIMIT / 1e6:.0f} MB limit "
          f"({peak / LIMIT:.0%}) -> {'OK' if peak <= LIMIT else 'OVER'}")
    return 0 if peak <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
