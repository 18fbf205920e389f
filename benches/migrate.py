"""Live migration: what the guest's TCP connections see, and what the state costs.

    python benches/migrate.py [--conns 0,1,100,1000] [--rounds 1] [--json FILE]

For each count N, in a private network namespace (as tests/daemon/test_migration.py):
two ``passtcore-run --vhost-user`` daemons with ``passtcore-repair`` each, QEMU
10 (TCG) booting the bench guest (benches/e2e/vm.py's image, with guestprobe)
on the source, a second QEMU waiting with ``-incoming``. The guest holds N
established connections to the host: one paced guest->host bulk stream (24
MiB/s, the receiver on the host notes the longest gap between bytes) and N-1
idle ones (``guestprobe hold``, echoing). Then ``migrate`` over QMP, and:

- QEMU's downtime and total time (``query-migrate``), N = 0 being QEMU's own
  with no network backend state;
- the longest gap the stream saw, against QEMU's downtime at N = 0 (the goal:
  within 1.2x);
- the device state: bytes, and the daemons' save and load times (their logs);
- how many of the N-1 idle connections still echo afterwards.

Progress goes to stderr; the table (and ``--json``) to stdout. Nothing is kept.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "e2e"))
sys.path.insert(0, os.path.dirname(HERE))

from passtcore.sandbox import Sandbox, stop_process, wait_for  # noqa: E402
from passtcore.sandbox.guest import Console, qemu_argv  # noqa: E402
from passtcore.sandbox.qmp import Qmp  # noqa: E402

INCOMING = 4444
RATE = 24 << 20
GUEST_PROBE = "/usr/bin/guestprobe"

# host side: the paced receiver of the stream (7102) and the idle connections'
# server (7201); commands on stdin: "status", "ping" (a byte on every idle
# connection, then how many echoed it)
PEER = r"""
import json, selectors, socket, sys, threading, time
RATE = int(sys.argv[1])
state = {"received": 0, "gap": 0.0, "idle": 0}
idle = []

def listen(port, backlog=128):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(backlog); return s

def receiver(ls):
    c, _ = ls.accept(); c.settimeout(120); t0 = last = time.monotonic()
    try:
        while True:
            b = c.recv(128 << 10)
            now = time.monotonic()
            if not b: break
            if state["received"]:   # from the first byte on
                state["gap"] = max(state["gap"], now - last)
            last = now
            state["received"] += len(b)
            ahead = state["received"] / RATE - (now - t0)
            if ahead > 0: time.sleep(ahead); last = time.monotonic()
    except OSError as e:
        state["error"] = str(e)

def acceptor(ls):
    while True:
        c, _ = ls.accept(); c.settimeout(10); c.recv(1); idle.append(c); state["idle"] = len(idle)

threading.Thread(target=receiver, args=(listen(7102),), daemon=True).start()
threading.Thread(target=acceptor, args=(listen(7201, 4096),), daemon=True).start()
print("listening", flush=True)
for line in sys.stdin:
    if line.strip() == "ping":
        ok = 0
        for c in idle:
            try:
                c.sendall(b"x"); ok += c.recv(1) == b"x"
            except OSError:
                pass
        print(ok, flush=True)
    else:
        print(json.dumps(state), flush=True)
"""


def log(msg: str) -> None:
    print(f"migrate: {msg}", file=sys.stderr, flush=True)


def daemon_times(text: str, what: str) -> tuple[int, float]:
    m = re.search(rf"device state {what}: (\d+) bytes, .* in ([\d.]+) ms", text)
    return (int(m.group(1)), float(m.group(2))) if m else (0, 0.0)


def one(image: tuple[str, str], n: int) -> dict[str, Any]:
    with Sandbox("pcmig") as sb:
        os.makedirs(sb.path("target"), exist_ok=True)
        common = ("--vhost-user", "-m", "1500", "--runas", "0", "--max-flows", "8192")
        src = sb.start_daemon(*common, "--migrate-exit", "--migrate-no-linger", mode="socket")
        tgt = sb.start_daemon(*common, mode="socket", socket_path=sb.path("target/t.socket"))
        helper = [sys.executable, "-m", "passtcore.run.migrate.helper"]
        helpers = [sb.popen_host(*helper, f"{src.socket_path}.repair"),
                   sb.popen_host(*helper, sb.path("target"))]
        procs: list[subprocess.Popen[Any]] = list(helpers)
        try:
            q1 = sb.popen_host(*qemu_argv(image, sb.path("con-src"), src.socket_path, extra=(
                "-qmp", f"unix:{sb.path('qmp-src')},server=on,wait=off")))
            procs.append(q1)
            con = Console(sb.path("con-src"), timeout=30)
            con.wait_ready(120)
            rc, out = con.run("udhcpc -i eth0 -n -q -t 5 -T 2 -s /usr/share/udhcpc/default.script",
                              60)
            assert rc == 0, out
            q2 = sb.popen_host(*qemu_argv(image, sb.path("con-tgt"), tgt.socket_path, extra=(
                "-qmp", f"unix:{sb.path('qmp-tgt')},server=on,wait=off",
                "-incoming", f"tcp:127.0.0.1:{INCOMING}")))
            procs.append(q2)
            wait_for(lambda: f":{INCOMING} " in sb.host("ss", "-Htln").stdout, 30, "target QEMU")
            peer = sb.popen_host(sys.executable, "-c", PEER, str(RATE), stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
            procs.append(peer)
            assert peer.stdout.readline().strip() == "listening"

            def ask(line: str) -> str:
                peer.stdin.write(line + "\n")
                peer.stdin.flush()
                return peer.stdout.readline().strip()

            def status() -> dict[str, Any]:
                return json.loads(ask("status"))

            if n > 1:
                con.run(f"({GUEST_PROBE} hold 192.0.2.1 7201 {n - 1} 600 > /tmp/hold &)")
                wait_for(lambda: status()["idle"] == n - 1, 120, f"{n - 1} idle connections",
                         interval=0.2)
            if n > 0:
                con.run("(dd if=/dev/zero bs=65536 count=100000 2>/dev/null "
                        "| nc 192.0.2.1 7102 > /dev/null &)")
                wait_for(lambda: status()["received"] > 4 << 20, 60, "the stream", interval=0.1)
            qmp = Qmp(sb.path("qmp-src"))
            log(f"{n} connections: migrating")
            info = qmp.migrate(f"tcp:127.0.0.1:{INCOMING}")
            qmp.close()
            assert info.get("status") == "completed", info
            if n > 0:
                before = status()["received"]
                wait_for(lambda: status()["received"] > before + (8 << 20), 60,
                         "the stream after the migration", interval=0.1)
            alive = int(ask("ping")) if n > 1 else 0
            wait_for(lambda: "device state received" in tgt.log(), 10, "the target's log")
            size, save_ms = daemon_times(src.log(), "sent")
            _, load_ms = daemon_times(tgt.log(), "received")
            row = {"connections": n, "qemu_downtime_ms": info.get("downtime"),
                   "qemu_total_ms": info.get("total-time"),
                   "stream_gap_ms": round(status()["gap"] * 1000, 1) if n else None,
                   "state_bytes": size, "save_ms": save_ms, "load_ms": load_ms,
                   "idle_alive": f"{alive}/{n - 1}" if n > 1 else None}
            log(json.dumps(row))
            return row
        finally:
            for p in reversed(procs):
                stop_process(p)


def report(rows: list[dict[str, Any]]) -> None:
    """Every run, then the medians by count against QEMU's own downtime (count 0)."""
    print("| connections | QEMU downtime ms | QEMU total ms | stream's longest gap ms "
          "| state bytes | save ms | load ms | idle alive |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        gap = r["stream_gap_ms"]
        print(f"| {r['connections']} | {r['qemu_downtime_ms']} | {r['qemu_total_ms']} "
              f"| {gap if gap is not None else ''} | {r['state_bytes']} | {r['save_ms']} "
              f"| {r['load_ms']} | {r['idle_alive'] or ''} |")
    by: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["connections"], []).append(r)
    base = statistics.median(r["qemu_downtime_ms"] for r in by[0]) if 0 in by else None
    print()
    print("| connections (median of runs) | QEMU downtime ms | stream's longest gap ms "
          "| gap / QEMU downtime with no state | save + load ms | per connection us |")
    print("|---|---|---|---|---|---|")
    for n, rs in sorted(by.items()):
        down = statistics.median(r["qemu_downtime_ms"] for r in rs)
        gaps = [r["stream_gap_ms"] for r in rs if r["stream_gap_ms"] is not None]
        gap = statistics.median(gaps) if gaps else None
        work = statistics.median(r["save_ms"] + r["load_ms"] for r in rs)
        ratio = f"{gap / base:.2f}" if gap is not None and base else ""
        per = f"{work * 1000 / n:.0f}" if n else ""
        print(f"| {n} | {down:g} | {gap if gap is not None else ''} | {ratio} | {work:.1f} "
              f"| {per} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", default="0,1,100,1000",
                    help="connection counts, comma-separated (default 0,1,100,1000)")
    ap.add_argument("--rounds", type=int, default=1, help="runs per count (default 1)")
    ap.add_argument("--json", help="write the rows here too")
    ap.add_argument("--from-json", metavar="FILE", help="print the tables of a saved run")
    args = ap.parse_args(argv)
    try:
        counts = [int(x) for x in args.conns.split(",")]
    except ValueError:
        ap.error(f"--conns: not a list of numbers: {args.conns}")
    if any(c < 0 or c > 4000 for c in counts):
        ap.error("--conns: 0 to 4000 connections")
    if args.from_json:
        with open(args.from_json) as f:
            rows = json.load(f)
    else:
        from vm import bench_image
        image = bench_image()
        rows = [one(image, n) for n in counts for _ in range(args.rounds)]
    report(rows)
    if args.json and not args.from_json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
