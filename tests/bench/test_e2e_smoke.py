"""Smoke test of the end-to-end benchmark harness (benches/e2e/run.py).

The smoke test runs the real thing, ``run.py --quick --only veth,pasta``, in
its private namespaces, and checks that the JSON it writes carries positive
numbers for every measurement of both rows (throughput, latency, connection
rate, pasta's RSS).  It exists so that the harness cannot silently rot; it
asserts nothing about speed.  Two fast tests pin the parts that decide what
the table says: which iperf3 intervals count as stalled, and how a failed
translator shows up.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

E2E = Path(__file__).resolve().parents[2] / "benches" / "e2e"
RUN = E2E / "run.py"


def _e2e_module(name: str):
    if str(E2E) not in sys.path:
        sys.path.insert(0, str(E2E))
    return __import__(name)


def _iperf_doc(client_bytes: list[int], server_bytes: list[int], tail: float = 0.0004) -> dict:
    """The shape of ``iperf3 -c ... -J --get-server-output`` (3.12) output."""
    def intervals(values: list[int]) -> list[dict]:
        out = [{"sum": {"start": float(i), "seconds": 1.0, "bytes": b}} for i, b in enumerate(values)]
        out.append({"sum": {"start": float(len(values)), "seconds": tail, "bytes": 0}})
        return out
    total = sum(server_bytes)
    return {"intervals": intervals(client_bytes),
            "end": {"sum_received": {"bits_per_second": total * 8 / len(server_bytes), "bytes": total,
                                     "seconds": float(len(server_bytes))},
                    "sum_sent": {"retransmits": 7}},
            "server_output_json": {"intervals": intervals(server_bytes)}}


def test_stalled_seconds_count_the_receivers_empty_whole_seconds() -> None:
    measure = _e2e_module("measure")
    # guest->host: the server receives; the sub-second tail interval never counts.
    fwd = measure.parse_iperf(_iperf_doc([9, 9, 9], [5, 0, 0]), reverse=False)
    assert fwd["stalled_seconds"] == 2 and fwd["retransmits"] == 7 and fwd["bytes"] == 5
    # host->guest (-R): the client receives; the server's intervals are the sender's.
    rev = measure.parse_iperf(_iperf_doc([4, 0, 4], [9, 9, 9]), reverse=True)
    assert rev["stalled_seconds"] == 1
    with pytest.raises(measure.MeasureFailed, match="unable to connect"):
        measure.parse_iperf({"error": "unable to connect to server: Connection timed out"}, reverse=False)


def test_table_shows_failed_translator_and_ratios() -> None:
    report = _e2e_module("report")
    key = report.iperf_key(65520, 1, False)
    ok = {"status": "ok", "metrics": {key: {"bits_per_second": 4e9, "stalled_seconds": 0}},
          "errors": {}, "memory_kib": {"65520": {"VmRSS": 2048}, "max_hwm": 4096}}
    veth = {"status": "ok", "metrics": {key: {"bits_per_second": 8e9, "stalled_seconds": 0}}, "errors": {}}
    bad = {"status": "failed: start (MTU 65520): no guest interface", "metrics": {},
           "errors": {key: "not run"}, "memory_kib": {}}
    text = report.render({"passtcore": bad, "pasta": ok, "veth": veth})
    row = next(line for line in text.splitlines() if line.startswith("TCP guest->host P1 MTU 65520"))
    assert row.split()[-3:] == ["failed", "4.00", "8.00"]
    assert "passtcore: failed: start (MTU 65520): no guest interface" in text
    ratio_rows = [line for line in text.splitlines() if line.startswith("TCP guest->host P1 MTU 65520")]
    # columns: passtcore/pasta, passtcore/veth, pasta/veth
    assert ratio_rows[1].split()[-3:] == ["-", "-", "0.50"]


def _require() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    missing = [t for t in ("ip", "iperf3", "pasta", "ss") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (scripts/install-system-deps.sh)")


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_run_veth_and_pasta_produces_numbers(tmp_path: Path) -> None:
    _require()
    out = tmp_path / "e2e.json"
    res = subprocess.run([sys.executable, str(RUN), "--quick", "--only", "veth,pasta", "--json", str(out)],
                         capture_output=True, text=True, timeout=540)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(out.read_text())
    rows = doc["translators"]
    assert list(rows) == ["pasta", "veth"]
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row["status"], row["errors"])
        metrics = row["metrics"]
        tcp = {k: m for k, m in metrics.items() if k.startswith("tcp_")}
        assert len(tcp) == 8, (name, sorted(tcp))  # 2 directions x 2 stream counts x 2 MTUs
        for key, m in tcp.items():
            assert m["bits_per_second"] > 0 and m["bytes"] > 0, (name, key, m)
            assert m["intervals"] >= 2 and m["stalled_seconds"] >= 0, (name, key, m)
        assert 0 < metrics["latency"]["p50_us"] <= metrics["latency"]["p99_us"], (name, metrics["latency"])
        assert metrics["latency"]["rounds"] > 100, (name, metrics["latency"])
        assert metrics["cps"]["per_second"] > 0 and metrics["cps"]["connections"] > 0, (name, metrics["cps"])
    mem = rows["pasta"]["memory_kib"]
    assert mem["65520"]["VmRSS"] > 0 and mem["max_hwm"] >= mem["65520"]["VmRSS"], mem
    assert "memory_kib" not in rows["veth"] or not rows["veth"]["memory_kib"]
    # The table went to stdout, with the ratio section.
    assert "TCP guest->host P1 MTU 65520" in res.stdout and "pasta/veth" in res.stdout
