"""Quick throughput / latency check of the TCP path (not a test; run as root):

    .venv/bin/python tests/tcp/throughput.py

A namespace guest behind passtcore-run (the ``World`` of the e2e tests): iperf3
guest->host and host->guest, 1 and 4 streams, MTU 65520 and 1500; a 1-byte
request/response loop (p50/p99) and connect+close rate. The side-by-side
comparison with pasta, slirp4netns and veth is benches/e2e.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tcp.world import World  # noqa: E402

RR_SERVER = r'''
import socket, threading
def echo():
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", 7600)); l.listen(); print("READY", flush=True)
    c, _ = l.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while (d := c.recv(10)): c.sendall(d)
threading.Thread(target=echo, daemon=True).start()
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 7601)); l.listen(1024)
while True:
    c, _ = l.accept(); c.close()
'''
RR_CLIENT = r'''
import socket, time, sys
s = socket.create_connection((sys.argv[1], 7600))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
lat = []
for i in range(3000):
    t = time.perf_counter(); s.sendall(b"x"); s.recv(1); lat.append(time.perf_counter() - t)
lat.sort()
print(f"request/response p50 {lat[len(lat)//2]*1e6:.0f} us, p99 {lat[int(len(lat)*.99)]*1e6:.0f} us")
t = time.perf_counter(); n = 0
while time.perf_counter() - t < 2:
    c = socket.create_connection((sys.argv[1], 7601)); c.close(); n += 1
print(f"connect+close {n/2:.0f}/s")
'''


def main() -> None:
    for mtu in (65520, 1500):
        w = World(mtu=mtu)
        try:
            w.sb.popen_host("iperf3", "-s", "-B", "127.0.0.1", "-p", "5201")
            time.sleep(0.5)
            for streams in ("1", "4"):
                for rev in ([], ["-R"]):
                    r = w.sb.guest("iperf3", "-c", w.gw4, "-p", "5201", "-t", "3", "-P", streams,
                                   "-J", *rev, timeout=60, check=False)
                    bps = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]
                    what = "host->guest" if rev else "guest->host"
                    print(f"MTU {mtu:5d}  {streams} stream(s)  {what}: {bps / 1e9:.2f} Gbit/s")
            if mtu == 65520:
                p = w.sb.popen_host(sys.executable, "-c", RR_SERVER, stdout=subprocess.PIPE,
                                    text=True)
                assert p.stdout is not None
                p.stdout.readline()
                print(w.sb.guest(sys.executable, "-c", RR_CLIENT, w.gw4, timeout=60).stdout.strip())
        finally:
            w.close()


if __name__ == "__main__":
    main()
