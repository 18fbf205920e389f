"""The README's library example runs as written (on a real TCP frame)."""
from __future__ import annotations

import re
from pathlib import Path

from scapy.all import IP, TCP, Ether, raw

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_library_example_runs(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    frame = raw(Ether() / IP(src="192.0.2.2", dst="192.0.2.1") / TCP(sport=40000, dport=80) / b"hello")
    (tmp_path / "frame.bin").write_bytes(frame)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    assert scope["info"].payload_len == 5
    assert list(scope["classified"].proto) == [6, 6]
    assert scope["bad"] == 0
    assert scope["i"] == 0
