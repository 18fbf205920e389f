"""Choose the Cython kernels or their pure-Python twins, once per process."""
from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

log = logging.getLogger("passtcore")

_NATIVE = {name: f"passtcore._{name}" for name in ("csum", "headers", "batch", "flowtable", "fastpath", "virtq")}
_PURE = {name: f"passtcore_py.{name}" for name in _NATIVE}


def _load() -> tuple[str, dict[str, ModuleType]]:
    if os.environ.get("PASSTCORE_PURE", "") not in ("", "0"):
        return "python", {n: importlib.import_module(m) for n, m in _PURE.items()}
    try:
        return "cython", {n: importlib.import_module(m) for n, m in _NATIVE.items()}
    except ImportError as exc:
        log.warning(
            "passtcore: Cython extension not available (%s); using the pure-Python kernels", exc
        )
        return "python", {n: importlib.import_module(m) for n, m in _PURE.items()}


backend, _modules = _load()


def kernel(name: str) -> ModuleType:
    return _modules[name]
