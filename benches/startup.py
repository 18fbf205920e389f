"""Start-up latency and idle memory of passtcore-run.

Start-up: time from spawning the console script (fork+exec) until its UNIX
socket accepts a connect(), polled every 0.2 ms from this harness, median of
N runs (default 20). libvirt starts QEMU ~20 ms after the daemon and QEMU 7.2
connects once (passt-reference 2.4), so this number is the one that matters.
For scale, the bare interpreter start-up (``python -c pass``) of the same
venv is measured the same way.

Idle RSS: VmRSS of a daemon in socket mode after it logged "ready: serving"
and one second of idling, and of a namespace-mode daemon after serving a DHCP
lease and a ping to a real guest stack.

Everything runs inside a private Sandbox host namespace (the daemon copies the
host's addressing): run as root, ``.venv/bin/python benches/startup.py``.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def measure_startup(runs: int, plain: bool = False) -> list[float]:
    """Inside the host namespace: spawn -> socket connectable, in ms.

    ``plain``: the same entry point without any site processing (``python -S``
    with site-packages and the source tree on PYTHONPATH): what start-up costs
    when no .pth file or editable-install finder runs (a wheel install with a
    lean site-packages)."""
    from passtcore.sandbox import daemon_binary

    cmd = [daemon_binary()]
    env = None
    if plain:
        import sysconfig

        cmd = [sys.executable, "-S", "-c",
               "import sys; from passtcore.run.process.cli import main; sys.argv[0] = 'passtcore-run';"
               " sys.exit(main())"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(HERE.parent.parent), sysconfig.get_paths()["purelib"]]))
    out: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            path = os.path.join(tmp, f"s{i}.socket")
            log = os.path.join(tmp, f"l{i}.log")
            t0 = time.perf_counter()
            proc = subprocess.Popen([*cmd, "-f", "-q", "-s", path, "-l", log], env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            deadline = t0 + 10
            try:
                while True:
                    try:
                        s.connect(path)
                        break
                    except (FileNotFoundError, ConnectionRefusedError):
                        if time.perf_counter() > deadline:
                            raise TimeoutError("daemon socket never appeared") from None
                        time.sleep(0.0002)
                out.append((time.perf_counter() - t0) * 1000)
            finally:
                s.close()
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return out


def measure_interpreter(runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rt", action="store_true",
                    help="run harness and daemons SCHED_FIFO, so that other load on the "
                         "machine does not distort the start-up numbers")
    args = ap.parse_args()
    if args.inner:  # already inside the sandbox's host namespace
        if args.rt:
            # Inherited by the spawned daemons; the poll loop sleeps, so nothing spins.
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        daemon = measure_startup(args.runs)
        plain = measure_startup(args.runs, plain=True)
        interp = measure_interpreter(args.runs)
        print(f"startup_ms median={statistics.median(daemon):.1f} min={min(daemon):.1f} "
              f"max={max(daemon):.1f} runs={len(daemon)}")
        print(f"plain_ms median={statistics.median(plain):.1f} min={min(plain):.1f} "
              f"max={max(plain):.1f} runs={len(plain)}")
        print(f"interpreter_ms median={statistics.median(interp):.1f} min={min(interp):.1f}")
        return 0
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 1
    from passtcore.sandbox import Sandbox

    with Sandbox(prefix="pcb") as sb:
        r = sb.host(sys.executable, str(HERE), "--inner", "--runs", str(args.runs),
                    *(["--rt"] if args.rt else []), timeout=600)
        lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
        print(f"start-up, exec -> socket listening{' (SCHED_FIFO)' if args.rt else ''}: "
              f"{lines['startup_ms']}")
        print(f"  same entry point under `python -S` (no site/.pth processing): "
              f"{lines['plain_ms']}")
        print(f"  (bare `python -c pass` of this venv: {lines['interpreter_ms']})")
        print(f"  load average now: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

        d = sb.start_daemon(mode="socket")
        time.sleep(1.0)
        print(f"idle RSS, socket mode, no client: {rss_kib(d.pid) / 1024:.1f} MiB")
        d.stop()
        d = sb.start_daemon(mode="netns")
        sb.guest("udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-T", "2", check=False,
                 timeout=60)
        sb.guest("ping", "-c", "1", "-W", "2", sb.gw4, check=False)
        time.sleep(1.0)
        print(f"idle RSS, namespace mode after DHCP + ping: {rss_kib(d.pid) / 1024:.1f} MiB")
        d.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
