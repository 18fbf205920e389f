"""The side-by-side tables (values, then ratios to pasta and to veth; the VM
rows, results with ``"section": "vm"``, in a table of their own with ratios to
Debian's passt).

Rows are metrics, columns translators.  A ratio is ``value / reference``; for
throughput and connections/s higher is better, for latency, memory and CPU per GiB lower
is better.  Missing or failed cells print ``-`` / ``failed`` and the reasons
are listed under the table, one per translator status line.
"""
from __future__ import annotations

from collections.abc import Callable

MTUS = (65520, 1500)
STREAMS = (1, 4)


def iperf_key(mtu: int, streams: int, reverse: bool) -> str:
    return f"tcp_{'h2g' if reverse else 'g2h'}_P{streams}_mtu{mtu}"


def iperf_label(mtu: int, streams: int, reverse: bool) -> str:
    way = "host->guest" if reverse else "guest->host"
    return f"TCP {way} P{streams} MTU {mtu} (Gbit/s)"


def _rows() -> list[tuple[str, str, Callable[[dict], float | None]]]:
    """(key, label, getter over a translator result) for every table row."""
    rows: list[tuple[str, str, Callable[[dict], float | None]]] = []
    for mtu in MTUS:
        for streams in STREAMS:
            for reverse in (False, True):
                key = iperf_key(mtu, streams, reverse)
                rows.append((key, iperf_label(mtu, streams, reverse),
                             lambda r, k=key: _get(r, k, "bits_per_second", 1e-9)))
    for mtu in MTUS:
        rows.append((f"cpu_mtu{mtu}", f"translator CPU s per GiB, TCP, MTU {mtu}",
                     lambda r, m=mtu: _cpu_per_gib(r, m)))
    rows.append(("stalled", "stalled 1-s intervals, all iperf3 runs", _stalled_total))
    rows.append(("latency_p50", "TCP 1-byte RTT p50 (us)", lambda r: _get(r, "latency", "p50_us")))
    rows.append(("latency_p99", "TCP 1-byte RTT p99 (us)", lambda r: _get(r, "latency", "p99_us")))
    rows.append(("cps", "TCP connect+close per second", lambda r: _get(r, "cps", "per_second")))
    rows.append(("udp_g2h", "UDP guest->host 1400 B, unpaced (Mbit/s received)",
                 lambda r: _get(r, "udp_g2h", "bits_per_second", 1e-6)))
    rows.append(("udp_paced_loss", "UDP loss at a paced 1 Gbit/s (%)",
                 lambda r: _get(r, "udp_paced", "lost_percent")))
    rows.append(("udp_latency_p50", "UDP 64 B RTT p50 (us)",
                 lambda r: _get(r, "udp_latency", "p50_us")))
    rows.append(("rss", "translator VmRSS after runs (MiB)", lambda r: _mem(r, "VmRSS")))
    rows.append(("hwm", "translator VmHWM, peak (MiB)", lambda r: _mem(r, "VmHWM")))
    return rows


def _get(res: dict, key: str, field: str, scale: float = 1.0) -> float | None:
    m = res.get("metrics", {}).get(key)
    if not m or field not in m:
        return None
    return float(m[field]) * scale


def _cpu_per_gib(res: dict, mtu: int) -> float | None:
    """The translator's CPU seconds per GiB moved, over the TCP runs at ``mtu``."""
    runs = [m for k, m in res.get("metrics", {}).items()
            if k.startswith("tcp_") and k.endswith(f"_mtu{mtu}") and "translator_cpu_seconds" in m]
    nbytes = sum(m["bytes"] for m in runs)
    if not runs or not nbytes:
        return None
    return sum(m["translator_cpu_seconds"] for m in runs) / (nbytes / (1 << 30))


def _stalled_total(res: dict) -> float | None:
    vals = [m["stalled_seconds"] for k, m in res.get("metrics", {}).items()
            if k.startswith("tcp_") and "stalled_seconds" in m]
    return float(sum(vals)) if vals else None


def _mem(res: dict, key: str) -> float | None:
    mem = res.get("memory_kib", {})
    kib = mem.get("max_hwm") if key == "VmHWM" else mem.get(str(MTUS[0]), {}).get(key)
    return kib / 1024.0 if kib else None


def _fmt(key: str, v: float | None) -> str:
    if v is None:
        return "-"
    if key.startswith("tcp_"):
        return f"{v:.2f}"
    if key in ("stalled", "cps", "udp_g2h"):
        return f"{v:.0f}"
    if key.startswith("cpu_"):
        return f"{v:.3f}"
    if key == "udp_paced_loss":
        return f"{v:.2f}"
    return f"{v:.1f}"


def _cell(res: dict, key: str, v: float | None) -> str:
    # latency_p50/latency_p99 come from the one "latency" measurement, the loss row
    # from "udp_paced".
    source = {"udp_paced_loss": "udp_paced"}.get(key, key.rsplit("_p", 1)[0] if
                                                   key.endswith(("_p50", "_p99")) else key)
    if v is None and source in res.get("errors", {}):
        return "failed"
    return _fmt(key, v)


VM_REF = ("vm-passt", "vm-passt-upstream")


def _vm_rows() -> list[tuple[str, str, Callable[[dict], float | None]]]:
    """The VM table: TCP P1 both ways per MTU (Mbit/s: a TCG guest), 64 B RR and CRR."""
    rows: list[tuple[str, str, Callable[[dict], float | None]]] = []
    for mtu in MTUS:
        for reverse in (False, True):
            key = iperf_key(mtu, 1, reverse)
            way = "host->guest" if reverse else "guest->host"
            rows.append((key, f"VM TCP {way} MTU {mtu} (Mbit/s)",
                         lambda r, k=key: _get(r, k, "bits_per_second", 1e-6)))
    for mtu in MTUS:
        rows.append((f"cpu_mtu{mtu}", f"daemon CPU s per GiB, TCP, MTU {mtu}",
                     lambda r, m=mtu: _cpu_per_gib(r, m)))
    rows.append(("stalled", "stalled 1-s intervals, all iperf3 runs", _stalled_total))
    rows.append(("rr_p50", "VM TCP 64 B RR p50 (us)", lambda r: _get(r, "rr", "p50_us")))
    rows.append(("rr_p99", "VM TCP 64 B RR p99 (us)", lambda r: _get(r, "rr", "p99_us")))
    rows.append(("crr", "VM TCP CRR 64 B (connections/s)", lambda r: _get(r, "crr", "per_second")))
    rows.append(("rss", "daemon VmRSS after the first MTU's runs (MiB)", lambda r: _mem_vm(r, "VmRSS")))
    rows.append(("rss_shmem", "  of which guest memory (RssShmem, MiB)",
                 lambda r: _mem_vm(r, "RssShmem")))
    rows.append(("hwm", "daemon VmHWM, peak (MiB)", lambda r: _mem(r, "VmHWM")))
    return rows


def _mem_vm(res: dict, key: str) -> float | None:
    """A VM row's memory after its first MTU's runs (the plain row has only MTU 1500)."""
    mem = res.get("memory_kib", {})
    first = next((mem[str(m)] for m in MTUS if str(m) in mem), {})
    kib = first.get(key)
    return kib / 1024.0 if kib is not None else None


def _vm_fmt(key: str, v: float | None) -> str:
    if v is None:
        return "-"
    if key.startswith("tcp_") or key in ("stalled", "crr"):
        return f"{v:.0f}"
    if key.startswith("cpu_"):
        return f"{v:.3f}"
    return f"{v:.1f}"


def _vm_cell(res: dict, key: str, v: float | None) -> str:
    source = key.rsplit("_p", 1)[0] if key.endswith(("_p50", "_p99")) else key
    if v is None and source in res.get("errors", {}):
        return "n/a" if res["errors"][source].startswith("n/a") else "failed"
    return _vm_fmt(key, v)


def _render_vm(results: dict[str, dict], names: list[str]) -> list[str]:
    rows = _vm_rows()
    label_w = max(len(label) for _, label, _ in rows) + 2
    col_w = max(12, *(len(n) + 2 for n in names))
    out = ["VM: a QEMU guest (TCG, 1 vCPU) behind each daemon; one boot per column, "
           "the MTU 1500 cells after the guest lowered its MTU"]
    out.append("".ljust(label_w) + "".join(n.rjust(col_w) for n in names))
    for key, label, get in rows:
        out.append(label.ljust(label_w) + "".join(
            _vm_cell(results[n], key, get(results[n])).rjust(col_w) for n in names))
    pairs = [(n, ref) for ref in VM_REF if ref in names for n in names
             if n != ref and not (ref == "vm-passt-upstream" and n == "vm-passt")]
    out += _ratio_lines(results, rows, pairs, label_w,
                        "VM ratios (value / reference; >1 = more throughput/conn/s, or more "
                        "latency/CPU/memory)")
    return out


def _ratio_lines(results: dict[str, dict], rows: list, pairs: list[tuple[str, str]],
                 label_w: int, title: str) -> list[str]:
    """The ratio table under a results table: one column per (name, reference)."""
    if not pairs:
        return []
    heads = [f"{n}/{ref}" for n, ref in pairs]
    w = max(12, *(len(h) + 2 for h in heads))
    out = ["", title, "".ljust(label_w) + "".join(h.rjust(w) for h in heads)]
    for _key, label, get in rows:
        cells = []
        for n, ref in pairs:
            a, b = get(results[n]), get(results[ref])
            cells.append(f"{a / b:.2f}" if a is not None and b else "-")
        out.append(label.ljust(label_w) + "".join(c.rjust(w) for c in cells))
    return out


def render(results: dict[str, dict]) -> str:
    vm_names = [n for n, r in results.items() if r.get("section") == "vm"]
    ns_names = [n for n in results if n not in vm_names]
    out = _render_ns(results, ns_names) if ns_names else []
    if vm_names:
        if out:
            out.append("")
        out += _render_vm(results, vm_names)
    out.append("")
    for n in results:
        res = results[n]
        line = f"{n}: {res.get('status', '?')}"
        if res.get("section") == "vm":
            pids = res.get("pids", {})
            if pids:
                line += f" (daemon pid {pids.get('daemon')}, QEMU pid {pids.get('qemu')}"
                line += f", boot {res['boot_seconds']} s)" if res.get("boot_seconds") else ")"
        elif res.get("pids"):
            line += " (pid " + ", ".join(f"{p} at MTU {m}" for m, p in res["pids"].items()) + ")"
        out.append(line)
        for key, reason in res.get("errors", {}).items():
            out.append(f"    {key}: {reason}" if reason.startswith("n/a") else f"    {key}: failed: {reason}")
        for note in res.get("notes", []):
            out.append(f"    note: {note}")
    return "\n".join(out)


def _render_ns(results: dict[str, dict], names: list[str]) -> list[str]:
    rows = _rows()
    label_w = max(len(label) for _, label, _ in rows) + 2
    col_w = max(12, *(len(n) + 2 for n in names))
    out = []
    out.append("".ljust(label_w) + "".join(n.rjust(col_w) for n in names))
    for key, label, get in rows:
        out.append(label.ljust(label_w) + "".join(
            _cell(results[n], key, get(results[n])).rjust(col_w) for n in names))

    # each column against the no-translation limit; the namespace-mode columns
    # against every pasta, the stream-socket ones against every passt
    against = {"pasta": ("passtcore", "baseline", "slirp4netns"),
               "pasta-upstream": ("passtcore", "baseline"),
               "passt": ("passtcore-stream",), "passt-upstream": ("passtcore-stream",),
               "veth": None}
    pairs = [(n, ref) for ref, who in against.items() if ref in results for n in names
             if n != ref and (who is None or n in who)]
    out += _ratio_lines(results, rows, pairs, label_w,
                        "ratios (value / reference; >1 = more throughput/conn/s, or more "
                        "latency/memory)")
    return out
