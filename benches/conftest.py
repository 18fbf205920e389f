"""pytest-benchmark helpers for the micro-benchmarks in benches/.

* ``bench_*.py`` files are collected (pytest only collects ``test_*.py`` by default).
* Naming convention: one benchmark *group* per operation (``@pytest.mark.benchmark(group=...)``),
  one test per implementation whose name ends in (or contains) ``_cython``, ``_python`` or
  ``_stdlib`` (an extra suffix is kept as part of the variant, e.g. ``_cython_scalar``).
* At the end of the run a table prints, per group, every variant's median time, its
  throughput when the test set ``benchmark.extra_info["bytes"]`` (GB/s) or
  ``["frames"]`` (frames/s), and its speed ratio against the ``cython`` variant.
  The same table is written to ``benches/results/ratios.json``.

Run: ``.venv/bin/python -m pytest benches --benchmark-json=benches/results/micro.json``
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

RESULTS = Path(__file__).parent / "results"
_VARIANT = re.compile(r"_(cython|python|stdlib)((?:_[a-z0-9]+)*)$")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # files named on the command line are collected by pytest itself
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def variant_of(name: str) -> str:
    """``test_csum_cython_scalar[1500]`` -> ``cython_scalar``; unknown names keep their base name."""
    base = name.split("[", 1)[0]
    m = _VARIANT.search(base)
    return (m.group(1) + m.group(2)) if m else base


def _rows(benchmarks: list[Any]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for b in benchmarks:
        if not b.stats or not getattr(b.stats, "rounds", 0):
            continue
        group = b.group or b.name.split("[", 1)[0]
        if "[" in b.name and b.group is None:
            group += "[" + b.name.split("[", 1)[1]
        # the median resists the outliers of a shared, busy machine better than the mean
        med = float(b.stats.median)
        row: dict[str, Any] = {"variant": variant_of(b.name), "name": b.name, "median_s": med}
        extra = b.extra_info or {}
        if extra.get("bytes"):
            row["GB/s"] = extra["bytes"] / med / 1e9
        if extra.get("frames"):
            row["frames/s"] = extra["frames"] / med
        groups.setdefault(group, []).append(row)
    for rows in groups.values():
        ref = next((r["median_s"] for r in rows if r["variant"] == "cython"), None)
        for r in rows:
            r["x_slower_than_cython"] = r["median_s"] / ref if ref else None
    return groups


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or not getattr(bs, "benchmarks", None):
        return
    groups = _rows(bs.benchmarks)
    if not groups:
        return
    tr = terminalreporter
    tr.section("median time, throughput and ratio per group (cython = 1.00)")
    for group in sorted(groups):
        tr.write_line(f"{group}:")
        for r in sorted(groups[group], key=lambda r: r["median_s"]):
            thr = ""
            if "GB/s" in r:
                thr += f"  {r['GB/s']:9.3f} GB/s"
            if "frames/s" in r:
                thr += f"  {r['frames/s']:14,.0f} frames/s"
            ratio = r["x_slower_than_cython"]
            rs = f"  x{ratio:8.2f} vs cython" if ratio else ""
            tr.write_line(f"    {r['variant']:<16} {r['median_s'] * 1e6:12.3f} us{thr}{rs}")
    RESULTS.mkdir(exist_ok=True)
    out = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "groups": groups}
    (RESULTS / "ratios.json").write_text(json.dumps(out, indent=1))
    tr.write_line(f"ratios written to {RESULTS / 'ratios.json'}")
