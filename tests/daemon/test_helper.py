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
