"""Frame, byte and drop counters of the daemon.

A flat ``name -> int`` mapping is all the daemon needs: the front ends count
frames/bytes in and out, the dispatcher and the engines count drops by a
short, stable reason (``counters.drop("no-engine-tcp")`` is stored as
``drop.no-engine-tcp``). ``format()`` renders one log line that
``parse_line()`` reads back, which is how the test sandbox observes a running
daemon (SIGUSR1 -> log line).
"""
from __future__ import annotations

PREFIX = "counters:"


class Counters:
    """Monotonic counters; ``drop(reason)`` is ``inc("drop." + reason)``."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[str, int] = {
            "frames_in": 0, "bytes_in": 0, "frames_out": 0, "bytes_out": 0,
        }

    def inc(self, name: str, n: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + n

    def drop(self, reason: str, n: int = 1) -> None:
        key = "drop." + reason
        self.values[key] = self.values.get(key, 0) + n

    def frame_in(self, nbytes: int) -> None:
        v = self.values
        v["frames_in"] += 1
        v["bytes_in"] += nbytes

    def frame_out(self, nbytes: int, n: int = 1) -> None:
        v = self.values
        v["frames_out"] += n
        v["bytes_out"] += nbytes

    def __getitem__(self, name: str) -> int:
        return self.values.get(name, 0)

    def get(self, name: str, default: int = 0) -> int:
        return self.values.get(name, default)

    def drops(self) -> dict[str, int]:
        return {k[5:]: v for k, v in self.values.items() if k.startswith("drop.")}

    def snapshot(self) -> dict[str, int]:
        return dict(self.values)

    def format(self) -> str:
        """One line: ``counters: frames_in=3 bytes_in=180 ... drop.runt-frame=1``."""
        fixed = ("frames_in", "bytes_in", "frames_out", "bytes_out")
        rest = sorted(k for k in self.values if k not in fixed)
        return PREFIX + " " + " ".join(f"{k}={self.values[k]}" for k in (*fixed, *rest))


def parse_line(line: str) -> dict[str, int] | None:
    """The mapping from a line containing ``format()``'s output, else None."""
    at = line.find(PREFIX)
    if at < 0:
        return None
    out: dict[str, int] = {}
    for item in line[at + len(PREFIX):].split():
        name, sep, value = item.partition("=")
        if sep and value.isdigit():
            out[name] = int(value)
    return out
