"""Run a function in a short-lived forked child and get its result back.

pyroute2 costs ~24 MiB of resident memory once imported, and the daemon
needs netlink only at start-up (host addressing defaults, tap
configuration). Doing that work in a child keeps the long-lived daemon small
(pyroute2 never maps into it; the idle RSS is measured by benches/startup.py).
The child is single-threaded, so it may also ``setns()`` the whole process
into the target namespace. Results and errors
come back pickled over a pipe; an exception in the child is re-raised in the
parent with its type preserved when it pickles (else as RuntimeError).
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import Any


def run_in_child(fn: Callable[..., Any], *args: Any, timeout: float = 30.0) -> Any:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 0
        try:
            os.close(r)
            try:
                payload = pickle.dumps(("ok", fn(*args)))
            except BaseException as exc:
                try:
                    payload = pickle.dumps(("err", exc))
                except Exception:
                    payload = pickle.dumps(("err", RuntimeError(f"{type(exc).__name__}: {exc}")))
            view = memoryview(payload)
            while view:
                view = view[os.write(w, view):]
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    try:
        import select

        poller = select.poll()
        poller.register(r, select.POLLIN)
        while True:
            if not poller.poll(timeout * 1000):
                os.kill(pid, 9)
                raise TimeoutError("netlink helper did not answer")
            data = os.read(r, 1 << 16)
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    if not chunks:
        raise RuntimeError("netlink helper died without an answer")
    status, value = pickle.loads(b"".join(chunks))
    if status == "err":
        raise value
    return value
