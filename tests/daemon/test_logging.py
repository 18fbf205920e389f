"""passt's log-file format, --log-size cutting, --trace, and the PID/--runas forms."""
from __future__ import annotations

import logging
import re
import time

import pytest

from passtcore.run.process import logsink
from passtcore.run.process import options
from passtcore.sandbox import Sandbox


def test_log_file_format_and_size_cap(tmp_path) -> None:
    path = tmp_path / "log"
    opts = options.parse(["-l", str(path), "--log-size", "40960"])
    handler = logsink.setup(opts, "0.1.0")
    log = logging.getLogger("passtcore.run.test")
    try:
        log.info("hello %d", 1)
        log.warning("careful")
        log.error("bad")
        log.debug("not shown at the default level")
        text = path.read_text()
        lines = text.splitlines()
        assert re.fullmatch(r"passt 0\.1\.0: .* \(\d+\)", lines[0])
        assert re.fullmatch(r"\d+\.\d{4}: info:    hello 1", lines[1])
        assert lines[2].endswith(": WARNING: careful") and lines[3].endswith(": ERROR:   bad")
        assert len(lines) == 4
        for i in range(2000):
            log.info("line %05d %s", i, "x" * 40)
        data = path.read_bytes()
        assert len(data) <= 40960
        first = data.split(b"\n", 1)[0].decode()
        assert " - log truncated at " in first
        assert b"line 01999" in data and b"line 00000" not in data
        # The cut ends on a line boundary: every line after the header is whole.
        for line in data.decode().splitlines()[1:]:
            assert re.fullmatch(r"\d+\.\d{4}: info:    line \d{5} x{40}", line), line
    finally:
        logging.getLogger("passtcore").handlers.clear()
        if handler.fd >= 0:
            import os

            os.close(handler.fd)


def test_runas_forms() -> None:
    assert options.parse(["--runas", "nobody"]).runas == (65534, 65534)
    assert options.parse(["--runas", "0:0"]).runas == (0, 0)
    assert options.parse(["--runas", "1234"]).runas[0] == 1234


@pytest.mark.netns
def test_trace_logs_every_frame(sandbox: Sandbox) -> None:
    d = sandbox.start_daemon("--trace")
    sandbox.guest("busybox", "arping", "-c", "1", "-w", "3", "-I", "eth0", sandbox.gw4,
                  check=False)
    deadline = time.monotonic() + 5
    while "-> arp" not in d.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert re.search(r"guest frame: 42 bytes, ethertype 0x0806, proto -1 -> arp", d.log())


@pytest.mark.netns
def test_netns_given_as_pid_and_runas_root(sandbox: Sandbox) -> None:
    holder = sandbox.popen_guest("sleep", "60")
    time.sleep(0.2)
    import subprocess

    from passtcore.sandbox import daemon_binary

    log = sandbox.path("pid.log")
    proc = sandbox.popen_host(daemon_binary(), "-f", "--runas", "0", "-l", log,
                              "--ns-ifname", "eth0", str(holder.pid))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if "ready: serving" in open(log).read():
                break
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    try:
        assert "Changing to" not in open(log).read()
        r = sandbox.guest("busybox", "arping", "-c", "1", "-w", "3", "-I", "eth0", sandbox.gw4,
                          check=False)
        assert r.returncode == 0, r.stdout
        uid = next(ln for ln in open(f"/proc/{proc.pid}/status") if ln.startswith("Uid:"))
        assert uid.split()[1] == "0"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        holder.kill()
        holder.wait()
        del subprocess
