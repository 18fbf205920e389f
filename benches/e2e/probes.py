"""TCP request/response latency and connection-rate probes (server and clients).

Run as a script inside a namespace (``ip netns exec NS python probes.py ...``):

    probes.py serve   --bind ADDR --echo-port P --accept-port Q --max-seconds S
    probes.py latency --host ADDR --port P --rounds N --seconds S
    probes.py cps     --host ADDR --port Q --seconds S

The server is one selectors loop: on the echo port it writes back every byte
it reads (1-byte ping-pong over one connection, TCP_NODELAY on both ends so
Nagle never adds a delay); on the accept port it accepts and closes at once.
Clients print one JSON object on stdout.  All loops are bounded by rounds and
by wall-clock deadlines; the server also exits after ``--max-seconds``.
"""
from __future__ import annotations

import argparse
import errno
import json
import selectors
import socket
import sys
import time

WARMUP_ROUNDS = 200


def serve(bind: str, echo_port: int, accept_port: int, max_seconds: float) -> int:
    sel = selectors.DefaultSelector()
    listeners = {}
    for port, kind in ((echo_port, "echo"), (accept_port, "accept")):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((bind, port))
        ls.listen(4096)
        ls.setblocking(False)
        sel.register(ls, selectors.EVENT_READ, kind)
        listeners[kind] = ls
    # UDP echo on the echo port's number: the UDP request/response probe
    us = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    us.bind((bind, echo_port))
    us.setblocking(False)
    sel.register(us, selectors.EVENT_READ, "udp")
    print("ready", flush=True)
    deadline = time.monotonic() + max_seconds
    accepted = 0
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            kind = key.data
            if kind == "accept":
                # Drain the backlog: accept-and-close is the whole service.
                for _ in range(256):
                    try:
                        conn, _addr = key.fileobj.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:
                        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ECONNABORTED):
                            break
                        raise
                    accepted += 1
                    conn.close()
            elif kind == "udp":
                for _ in range(256):
                    try:
                        data, peer = us.recvfrom(65536)
                    except (BlockingIOError, InterruptedError):
                        break
                    try:
                        us.sendto(data, peer)
                    except OSError:
                        pass
            elif kind == "echo":
                try:
                    conn, _addr = key.fileobj.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ, "conn")
            else:
                conn = key.fileobj
                try:
                    data = conn.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(conn)
                    conn.close()
                    continue
                try:
                    conn.sendall(data)
                except OSError:
                    sel.unregister(conn)
                    conn.close()
    return 0


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]


def latency(host: str, port: int, rounds: int, seconds: float, timeout: float = 3.0) -> dict:
    """1-byte request/response over one connection; microseconds per round trip."""
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(timeout)
        samples: list[float] = []
        clock = time.perf_counter_ns
        deadline = time.monotonic() + seconds
        for i in range(rounds + WARMUP_ROUNDS):
            t0 = clock()
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise ConnectionError("echo server closed the connection or sent other data")
            if i >= WARMUP_ROUNDS:
                samples.append((clock() - t0) / 1000.0)
            if (i & 63) == 0 and time.monotonic() > deadline:
                break
    finally:
        s.close()
    if not samples:
        raise ConnectionError("no round trips measured")
    samples.sort()
    return {
        "rounds": len(samples),
        "p50_us": _percentile(samples, 0.50),
        "p99_us": _percentile(samples, 0.99),
        "mean_us": sum(samples) / len(samples),
        "min_us": samples[0],
        "max_us": samples[-1],
    }


def udp_latency(host: str, port: int, rounds: int, seconds: float, size: int = 64,
                timeout: float = 0.2) -> dict:
    """``size``-byte datagram request/response; microseconds per round trip. A
    datagram not answered within ``timeout`` is counted as lost and the round
    repeated (bounded by ``seconds``)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((host, port))
    s.settimeout(timeout)
    samples: list[float] = []
    lost = 0
    clock = time.perf_counter_ns
    deadline = time.monotonic() + seconds
    payload = b"u" * size
    try:
        for i in range(rounds + WARMUP_ROUNDS):
            t0 = clock()
            s.send(payload)
            try:
                if s.recv(65536) != payload:
                    raise ConnectionError("UDP echo server sent other data")
            except socket.timeout:
                lost += 1
                continue
            if i >= WARMUP_ROUNDS:
                samples.append((clock() - t0) / 1000.0)
            if (i & 63) == 0 and time.monotonic() > deadline:
                break
    finally:
        s.close()
    if not samples:
        raise ConnectionError("no UDP round trips measured")
    samples.sort()
    return {"rounds": len(samples), "lost": lost, "p50_us": _percentile(samples, 0.50),
            "p99_us": _percentile(samples, 0.99), "mean_us": sum(samples) / len(samples)}


def cps(host: str, port: int, seconds: float, timeout: float = 3.0, max_errors: int = 20) -> dict:
    """connect()+close() in a loop for ``seconds``; connections per second."""
    ok = errors = 0
    last_error = ""
    start = time.monotonic()
    deadline = start + seconds
    while time.monotonic() < deadline:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect((host, port))
            ok += 1
        except OSError as exc:
            errors += 1
            last_error = f"{type(exc).__name__}: {exc}"
            if errors >= max_errors:
                break
        finally:
            s.close()
    elapsed = time.monotonic() - start
    return {"connections": ok, "errors": errors, "last_error": last_error,
            "seconds": elapsed, "per_second": ok / elapsed if elapsed > 0 else 0.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--bind", required=True)
    s.add_argument("--echo-port", type=int, required=True)
    s.add_argument("--accept-port", type=int, required=True)
    s.add_argument("--max-seconds", type=float, default=1800.0)
    lat = sub.add_parser("latency")
    lat.add_argument("--host", required=True)
    lat.add_argument("--port", type=int, required=True)
    lat.add_argument("--rounds", type=int, default=20000)
    lat.add_argument("--seconds", type=float, default=5.0)
    u = sub.add_parser("udp-latency")
    u.add_argument("--host", required=True)
    u.add_argument("--port", type=int, required=True)
    u.add_argument("--rounds", type=int, default=20000)
    u.add_argument("--seconds", type=float, default=5.0)
    c = sub.add_parser("cps")
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--seconds", type=float, default=5.0)
    a = p.parse_args(argv)
    if a.cmd == "serve":
        return serve(a.bind, a.echo_port, a.accept_port, a.max_seconds)
    try:
        if a.cmd == "latency":
            out = latency(a.host, a.port, a.rounds, a.seconds)
        elif a.cmd == "udp-latency":
            out = udp_latency(a.host, a.port, a.rounds, a.seconds)
        else:
            out = cps(a.host, a.port, a.seconds)
    except OSError as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
