"""QEMU's monitor (QMP): JSON lines over a UNIX socket, for tests and benchmarks
that drive a live migration (``migrate``, ``query-migrate``)."""
from __future__ import annotations

import json
import time
from typing import Any

from passtcore.sandbox.guest import connect_unix


class QmpError(RuntimeError):
    pass


class Qmp:
    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.sock = connect_unix(path, timeout)
        self.sock.settimeout(timeout)
        self.file = self.sock.makefile("rwb")
        json.loads(self.file.readline())           # the greeting
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        for _ in range(1000):                       # events come in between
            line = self.file.readline()
            if not line:
                raise QmpError(f"{command}: QEMU closed the monitor")
            reply = json.loads(line)
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise QmpError(f"{command}: {reply['error']}")
        raise QmpError(f"{command}: no reply")

    def migrate(self, uri: str, timeout: float = 60.0) -> dict[str, Any]:
        """Migrate to ``uri`` and wait for the end: query-migrate's last answer
        (``status``, ``downtime``, ``total-time`` in ms)."""
        self.execute("migrate", uri=uri)
        info: dict[str, Any] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.execute("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.05)
        return info

    def close(self) -> None:
        self.sock.close()
