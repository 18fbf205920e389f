"""run_in_child: results and exceptions come back from a forked helper; state
changes in the child (imports, namespaces) stay there."""
from __future__ import annotations

import os
import sys

import pytest

from passtcore.run.process.config import ConfError
from passtcore.run.process.helper import run_in_child


def _pid_and_import() -> tuple[int, bool]:
    import xml.dom.minidom  # noqa: F401  (a module the parent has not loaded)

    return os.getpid(), "xml.dom.minidom" in sys.modules


def _fail() -> None:
    raise ConfError("External interface not usable")


class _Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("no")


def _fail_oddly() -> None:
    raise _Unpicklable("odd")


def test_result_and_isolation() -> None:
    was_loaded = "xml.dom.minidom" in sys.modules
    pid, loaded = run_in_child(_pid_and_import)
    assert pid != os.getpid() and loaded
    assert ("xml.dom.minidom" in sys.modules) == was_loaded


def test_exceptions_come_back() -> None:
    with pytest.raises(ConfError, match="External interface not usable"):
        run_in_child(_fail)
    with pytest.raises(RuntimeError, match="_Unpicklable: odd"):
        run_in_child(_fail_oddly)


def _pid_and_preloaded() -> tuple[int, bool]:
    return os.getpid(), "xml.dom.minidom" in sys.modules


def test_a_session_serves_every_call_from_one_preloaded_child() -> None:
    """helper.start(): one child imports the preload once and serves the calls in
    order (the daemon's host query and tap set-up: one pyroute2 import, not two)."""
    from passtcore.run.process import helper

    was_loaded = "xml.dom.minidom" in sys.modules
    helper.start(preload=("xml.dom.minidom",))
    try:
        first = run_in_child(_pid_and_preloaded)
        second = run_in_child(_pid_and_preloaded)
        assert first == second and first[0] != os.getpid() and first[1]
        with pytest.raises(ConfError):
            run_in_child(_fail)
        assert run_in_child(_pid_and_preloaded) == first  # an error does not end it
        child = first[0]
    finally:
        helper.stop()
        helper.stop()  # idempotent
    assert not os.path.exists(f"/proc/{child}")  # reaped
    assert ("xml.dom.minidom" in sys.modules) == was_loaded
    pid, _ = run_in_child(_pid_and_preloaded)  # without a session: a child per call
    assert pid != child
