#!/usr/bin/env python3
"""Millions of hostile vhost-user inputs: the control-channel parser and the descriptor walker.

    .venv/bin/python benches/fuzz_vhost.py [--iterations 1000000] [--seed 1]
        [--engine atheris|random] [--progress 100000] [--out benches/results/fuzz_vhost]
    .venv/bin/python benches/fuzz_vhost.py --replay FILE...

The inputs and the properties are tests/vhostfuzz.py's (tests/kernels/test_vhost_fuzz.py
runs a few hundred of each under hypothesis, in the suite). The first byte of an
input picks the target (shares for the random engine; libFuzzer drifts towards
what finds coverage), the rest are its choices (``vhostfuzz.ByteChoices``):

- ``session`` (40 %): message sequences into the sans-IO ``Session``: only
  ``VhostError``, replies of 8 bytes, every fd kept or returned exactly once;
- ``stream`` (15 %): serialised messages, lying headers and garbage through the
  real ``VhostUserFrontend``'s framing: no exception, the end always seen;
- ``fds`` (5 %): messages with real memfds, eventfds, pipes through the front
  end's ``_apply`` (memory mapped, kick fds watched, both rings driven): no fd
  left open once it is closed;
- ``rings`` (40 %): regions, rings and descriptor chains of every shape into
  ``Virtqueue.pop_tx`` / ``push_rx`` on the Cython kernel (regions between
  PROT_NONE guard pages, canaries after their ends) and on the pure twin: the
  two must agree on every result and every byte of guest memory.

Engines: ``atheris`` (the default when ``import atheris`` works; it is in the
``bench`` extra): libFuzzer, coverage-guided over the code under test that is
Python (``vhost_user.py`` and the pure twin ``passtcore_py/virtq.py``; the
Cython kernel runs uninstrumented as the twin's differential peer), started
from a corpus of 200 structured inputs (``--out``/corpus, where libFuzzer adds
what it finds); ``random`` (the fallback, or ``--engine random``): seeded
random choices (``RandomChoices``; the bytes it records replay an input exactly).

Prints a progress line every ``--progress`` inputs and a summary: inputs/s,
inputs and errors by target, the refusals by reason (the documented error paths
the inputs took: ``VhostError`` reasons, drop counters, virtqueue errors), and
the errors by kind (``<target>:property`` for a
broken property, ``<target>:<Exception>`` for anything raised,
``<target>:generator-*`` for a bug of the generators themselves). An input
that finds one is written to ``--out`` as ``<kind>-<sha1>.bin`` (at most 5 per
kind), replayable with ``--replay`` (``--verbose``: with its traceback). A
fault (SIGSEGV in the kernel) kills the process: libFuzzer keeps that input as
``crash-<sha1>`` in ``--out`` (atheris; replayable the same way); the random
engine leaves the index of the input in ``--out``/random-position, which
``--replay-index N`` runs again. libFuzzer's own status lines go to stderr.
Exits 1 if any error was found. Needs no root and no network: in-process only.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import mmap
import os
import random
import struct
import sys
import time
import traceback
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

TARGETS = (("session", 40), ("stream", 15), ("fds", 5), ("rings", 40))
ROUTE = [name for name, share in TARGETS for _ in range(share)]   # first byte % 100
KEEP_PER_KIND = 5


class Fuzz:
    def __init__(self, args: argparse.Namespace, vf) -> None:
        self.args = args
        self.vf = vf
        vf.quiet()
        self.mods = vf.backends()
        self.arena = vf.Arena()
        self.stream = vf.StreamHarness()
        self.fds = vf.FdHarness()
        # target: (the input from the choices, the check of the properties on it)
        self.runs: dict[str, tuple[Callable[[object], object], Callable[[object], object]]] = {
            "session": (vf.messages, vf.check_session),
            "stream": (vf.stream, self.stream.run),
            "fds": (vf.fd_messages, self.fds.run),
            "rings": (vf.ring_case, self._rings),
        }
        self.refusals: collections.Counter[str] = collections.Counter()
        self.n = 0
        self.by_target: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.kept: collections.Counter[str] = collections.Counter()
        self.t0 = self.last = time.monotonic()
        os.makedirs(args.out, exist_ok=True)

    def one(self, data: bytes, target: str | None = None, ch=None) -> str | None:
        """Run one input (bytes, or a target and its RandomChoices); the error kind, if any."""
        if target is None:
            target = ROUTE[data[0] % 100] if data else "session"
            ch = self.vf.ByteChoices(data[1:])
        self.by_target[target] += 1
        kind = tb = None
        make, check = self.runs[target]
        try:
            made = make(ch)
        except Exception as exc:  # noqa: BLE001 - a bug of the generator, not a finding
            made, kind, detail, tb = None, f"{target}:generator-{type(exc).__name__}", exc, \
                traceback.format_exc()
        try:
            if kind is None:
                for reason, n in check(made).items():   # the documented error paths taken
                    self.refusals[f"{target}:{reason}"] += n
        except AssertionError as exc:
            kind, detail, tb = f"{target}:property", exc, traceback.format_exc()
        except Exception as exc:  # noqa: BLE001 - what the fuzzer is looking for
            kind, detail, tb = f"{target}:{type(exc).__name__}", exc, traceback.format_exc()
        if kind is not None:
            self.errors[kind] += 1
            self.errors[f"{target}:total"] += 1
            name = "-"
            if self.args.engine != "replay" and self.kept[kind] < KEEP_PER_KIND:
                self.kept[kind] += 1
                if not data:    # RandomChoices: the bytes that replay it
                    data = bytes([ROUTE.index(target)]) + ch.recorded()
                name = f"{kind.replace(':', '-')}-{hashlib.sha1(data).hexdigest()[:12]}.bin"
                with open(os.path.join(self.args.out, name), "wb") as f:
                    f.write(data)
            if name != "-" or self.args.verbose:
                print(f"!! {kind}: {str(detail)[:300]} -> {name}", flush=True)
            if self.args.verbose:
                print(tb, flush=True)
        self.n += 1
        if self.n % self.args.progress == 0:
            self.progress()
        return kind

    def _rings(self, case) -> dict[str, int]:
        trace = self.vf.check_rings(case, self.mods, self.arena)
        counts = [step[0] for step in trace
                  if isinstance(step, tuple) and isinstance(step[0], dict)]
        return counts[-1] if counts else {"no-queue": 1} if "no queue" in trace else {}

    def progress(self) -> None:
        now = time.monotonic()
        total = sum(v for k, v in self.errors.items() if k.endswith(":total"))
        print(f"{self.n:>10} inputs  {self.n / (now - self.t0):>8,.0f}/s overall  "
              f"({self.args.progress / (now - self.last):,.0f}/s lately)  "
              + " ".join(f"{t}={self.by_target[t]}" for t, _ in TARGETS)
              + f"  errors={total}", flush=True)
        self.last = now

    def summary(self) -> int:
        elapsed = time.monotonic() - self.t0
        print(f"\n{self.n} inputs in {elapsed:.1f} s: {self.n / elapsed:,.0f} inputs/s "
              f"(engine {self.args.engine}, seed {self.args.seed}, virtqueue backends "
              f"{'+'.join(self.mods)})")
        for t, _ in TARGETS:
            print(f"  {t:<8} {self.by_target[t]:>9} inputs, {self.errors[t + ':total']} errors")
        for t, _ in TARGETS:
            seen = {k.split(":", 1)[1]: v for k, v in sorted(self.refusals.items())
                    if k.startswith(t + ":")}
            print(f"  {t} refusals by reason (documented error paths):", seen or "none")
        kinds = {k: v for k, v in self.errors.items() if not k.endswith(":total")}
        print("errors by kind:", dict(sorted(kinds.items())) or "none")
        if kinds and self.args.engine != "replay":
            print(f"reproducers in {self.args.out} (replay: --replay FILE)")
        return 1 if kinds else 0


def structured_seeds(vf, seed: int, count: int) -> list[bytes]:
    """Inputs recorded from random choices: a start with structure for libFuzzer."""
    out = []
    for i in range(count):
        target = i % 100
        ch = vf.RandomChoices(random.Random(seed * 1_000_003 + i))
        name = ROUTE[target]
        if name == "session":
            vf.messages(ch)
        elif name == "stream":
            vf.stream(ch)
        elif name == "fds":
            vf.fd_messages(ch)
        else:
            vf.ring_case(ch)
        out.append(bytes([target]) + ch.recorded())
    return out


def run_atheris(args: argparse.Namespace) -> int:
    import atheris

    # coverage of what is under test (the generators stay uninstrumented: faster)
    with atheris.instrument_imports(include=["passtcore.run.io.vhost_user", "passtcore_py.virtq"]):
        import passtcore.run.io.vhost_user  # noqa: F401
        import passtcore_py.virtq  # noqa: F401
    import vhostfuzz as vf
    fuzz = Fuzz(args, vf)
    corpus = os.path.join(args.out, "corpus")
    os.makedirs(corpus, exist_ok=True)
    for data in structured_seeds(vf, args.seed, 200):
        with open(os.path.join(corpus, hashlib.sha1(data).hexdigest()), "wb") as f:
            f.write(data)

    def test_one_input(data: bytes) -> None:
        fuzz.one(data)
        if fuzz.n >= args.iterations:
            sys.stdout.flush()
            os._exit(fuzz.summary())

    atheris.Setup([sys.argv[0], f"-seed={args.seed}", f"-runs={args.iterations + 1000}",
                   "-max_len=8192", "-len_control=0", f"-artifact_prefix={args.out}/",
                   "-rss_limit_mb=4096", "-print_final_stats=1", corpus],
                  test_one_input)
    atheris.Fuzz()
    return fuzz.summary()   # libFuzzer ran out of -runs first


def run_random(args: argparse.Namespace, replay_index: int | None = None) -> int:
    import vhostfuzz as vf

    fuzz = Fuzz(args, vf)
    # the index of the input being run, kept where a fault cannot lose it
    with open(os.path.join(args.out, "random-position"), "w+b") as f:
        f.write(bytes(8))
        f.flush()
        pos = mmap.mmap(f.fileno(), 8)
    indices = range(args.iterations) if replay_index is None else (replay_index,)
    for i in indices:
        struct.pack_into("<Q", pos, 0, i)
        rnd = random.Random(args.seed * 1_000_003 + i)
        target = ROUTE[rnd.randrange(100)]
        fuzz.one(b"", target, vf.RandomChoices(rnd))
    return fuzz.summary()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--progress", type=int, default=100_000)
    p.add_argument("--engine", choices=("atheris", "random"), default=None)
    p.add_argument("--out", default=os.path.join(HERE, "results", "fuzz_vhost"))
    p.add_argument("--replay", nargs="+", metavar="FILE")
    p.add_argument("--replay-index", type=int, help="random engine: run input N of --seed only")
    p.add_argument("--verbose", action="store_true", help="tracebacks of the errors found")
    a = p.parse_args(argv)
    if a.replay:
        import vhostfuzz as vf

        a.engine, a.verbose, a.progress = "replay", True, 1 << 62
        fuzz = Fuzz(a, vf)
        for path in a.replay:
            with open(path, "rb") as f:
                print(path, "->", fuzz.one(f.read()) or "no error")
        return fuzz.summary()
    if a.engine is None:
        try:
            import atheris  # noqa: F401
            a.engine = "atheris"
        except ImportError:
            a.engine = "random"
    if a.replay_index is not None:
        a.engine = "random"
        return run_random(a, a.replay_index)
    print(f"fuzz_vhost: {a.iterations} inputs, engine {a.engine}, seed {a.seed}", flush=True)
    return run_atheris(a) if a.engine == "atheris" else run_random(a)


if __name__ == "__main__":
    sys.exit(main())
