"""Measurements over one Link: iperf3 throughput, latency and connection rate.

Servers (``iperf3 -s -J`` and ``probes.py serve``) run in the host ns bound to
``link.server_bind``; clients run in the guest ns and dial ``link.target``.
iperf3 results come from its ``-J`` JSON (``--get-server-output`` adds the
server's per-second intervals): throughput is ``end.sum_received`` (what the
receiver got), and "stalled seconds" counts the receiver's 1-second intervals
that carried 0 bytes -- the client's for ``-R``, the server's otherwise.  Every
client is bounded by its own deadline and by a subprocess timeout.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from netenv import Env, EnvError
from translators import Link

IPERF_PORT = 5201
ECHO_PORT = 5301
ACCEPT_PORT = 5302
PROBES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probes.py")


class MeasureFailed(RuntimeError):
    """One measurement failed; the message is the reason shown in the table."""


def start_servers(env: Env, link: Link, max_seconds: float) -> None:
    env.spawn(env.host, ["iperf3", "-s", "-J", "-B", link.server_bind, "-p", str(IPERF_PORT),
                         "--rcv-timeout", "10000"],
              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = env.spawn(env.host, [sys.executable, PROBES, "serve", "--bind", link.server_bind,
                                 "--echo-port", str(ECHO_PORT), "--accept-port", str(ACCEPT_PORT),
                                 "--max-seconds", str(max_seconds)],
                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = probe.stdout.readline()  # "ready" once both ports listen
    if line.strip() != "ready":
        raise EnvError(f"probe server did not start: {probe.stderr.read()[-300:]}")
    # iperf3 -s has no readiness signal: wait until its port is listening.
    env.wait_for(lambda: f":{IPERF_PORT} " in env.run(env.host, ["ss", "-Htln"]).stdout,
                 5.0, "iperf3 server listening")


def _stalled(intervals: list[dict]) -> int:
    # The last interval is often a sliver (< 1 s); only whole seconds count.
    return sum(1 for iv in intervals
               if iv["sum"].get("seconds", 1.0) >= 0.5 and iv["sum"].get("bytes", 0) == 0)


def parse_iperf(doc: dict, reverse: bool) -> dict:
    """Throughput (bit/s), retransmits and stalled seconds from iperf3 -J output."""
    if doc.get("error"):
        raise MeasureFailed(f"iperf3: {doc['error']}")
    end = doc.get("end") or {}
    received = end.get("sum_received") or {}
    if "bits_per_second" not in received:
        raise MeasureFailed("iperf3: no end.sum_received in JSON")
    if reverse:
        rx_intervals = doc.get("intervals") or []
    else:
        rx_intervals = (doc.get("server_output_json") or {}).get("intervals") or []
    return {
        "bits_per_second": float(received["bits_per_second"]),
        "bytes": int(received.get("bytes", 0)),
        "seconds": float(received.get("seconds", 0.0)),
        "retransmits": int((end.get("sum_sent") or {}).get("retransmits", 0)),
        "stalled_seconds": _stalled(rx_intervals),
        "intervals": len(rx_intervals),
        "interval_bytes": [int(iv["sum"].get("bytes", 0)) for iv in rx_intervals],
        "interval_seconds": [round(float(iv["sum"].get("seconds", 0.0)), 3) for iv in rx_intervals],
    }


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of ``pid`` so far (None when unknown or gone)."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def iperf(env: Env, link: Link, seconds: int, streams: int, reverse: bool) -> dict:
    cpu0 = cpu_seconds(link.pid)
    out = _iperf(env, link, seconds, streams, reverse)
    cpu1 = cpu_seconds(link.pid)
    if cpu0 is not None and cpu1 is not None and out["bytes"]:
        # the translator's CPU for what it moved: comparable across throughputs
        out["translator_cpu_seconds"] = round(cpu1 - cpu0, 3)
        out["cpu_s_per_gib"] = round((cpu1 - cpu0) / (out["bytes"] / (1 << 30)), 4)
    return out


def _iperf(env: Env, link: Link, seconds: int, streams: int, reverse: bool) -> dict:
    argv = ["iperf3", "-c", link.target, "-p", str(IPERF_PORT), "-t", str(seconds), "-J",
            "-P", str(streams), "--get-server-output", "--connect-timeout", "3000"]
    if reverse:
        # Only a receiving client accepts --rcv-timeout; the subprocess timeout bounds the rest.
        argv += ["-R", "--rcv-timeout", "10000"]
    try:
        res = env.run(env.guest, argv, timeout=seconds + 15, check=False)
    except EnvError as exc:
        raise MeasureFailed(str(exc)) from exc
    try:
        doc = json.loads(res.stdout)
    except json.JSONDecodeError as exc:
        tail = (res.stderr or res.stdout).strip()[-200:]
        raise MeasureFailed(f"iperf3 rc={res.returncode}, no JSON: {tail}") from exc
    return parse_iperf(doc, reverse)


def udp_iperf(env: Env, link: Link, seconds: int, bitrate: str, size: int = 1400) -> dict:
    """Guest -> host UDP at ``bitrate`` ("0": as fast as the guest can send): what
    the receiver got (bit/s) and the loss it saw."""
    argv = ["iperf3", "-u", "-c", link.target, "-p", str(IPERF_PORT), "-t", str(seconds), "-J",
            "-l", str(size), "-b", bitrate, "--connect-timeout", "3000"]
    try:
        res = env.run(env.guest, argv, timeout=seconds + 15, check=False)
    except EnvError as exc:
        raise MeasureFailed(str(exc)) from exc
    try:
        doc = json.loads(res.stdout)
    except json.JSONDecodeError as exc:
        tail = (res.stderr or res.stdout).strip()[-200:]
        raise MeasureFailed(f"iperf3 rc={res.returncode}, no JSON: {tail}") from exc
    if doc.get("error"):
        raise MeasureFailed(f"iperf3: {doc['error']}")
    end = doc.get("end") or {}
    rx = end.get("sum_received") or end.get("sum") or {}
    if "bits_per_second" not in rx:
        raise MeasureFailed("iperf3: no end.sum_received in JSON")
    return {"bits_per_second": float(rx["bits_per_second"]), "bytes": int(rx.get("bytes", 0)),
            "lost_percent": float(rx.get("lost_percent", 0.0)),
            "packets": int(rx.get("packets", 0))}


def udp_latency(env: Env, link: Link, seconds: float, rounds: int) -> dict:
    return _probe_client(env, ["udp-latency", "--host", link.target, "--port", str(ECHO_PORT),
                               "--rounds", str(rounds), "--seconds", str(seconds)], seconds + 20)


def _probe_client(env: Env, args: list[str], timeout: float) -> dict:
    try:
        res = env.run(env.guest, [sys.executable, PROBES, *args], timeout=timeout, check=False)
    except EnvError as exc:
        raise MeasureFailed(str(exc)) from exc
    try:
        doc = json.loads(res.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError) as exc:
        raise MeasureFailed(f"probe rc={res.returncode}: {res.stderr.strip()[-200:]}") from exc
    if "error" in doc:
        raise MeasureFailed(doc["error"])
    return doc


def latency(env: Env, link: Link, seconds: float, rounds: int) -> dict:
    return _probe_client(env, ["latency", "--host", link.target, "--port", str(ECHO_PORT),
                               "--rounds", str(rounds), "--seconds", str(seconds)], seconds + 20)


def cps(env: Env, link: Link, seconds: float) -> dict:
    doc = _probe_client(env, ["cps", "--host", link.target, "--port", str(ACCEPT_PORT),
                              "--seconds", str(seconds)], seconds + 20)
    if doc["connections"] == 0:
        raise MeasureFailed(f"no connection succeeded: {doc['last_error']}")
    return doc
