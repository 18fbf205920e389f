"""Fixtures for the packet-kernel tests: every test runs against each available backend.

``passtcore._X`` (Cython) and ``passtcore_py.X`` (pure twin) are imported side by
side, independently of ``passtcore.backend``; the Cython variant is skipped when the
extension is not built, and with PASSTCORE_PURE=1 only the twins are tested.
"""
from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from kernel_support import PURE_ONLY


def _load(kind: str, name: str) -> ModuleType:
    if kind == "python":
        return importlib.import_module(f"passtcore_py.{name}")
    if PURE_ONLY:
        pytest.skip("PASSTCORE_PURE=1: Cython kernels not tested")
    try:
        return importlib.import_module(f"passtcore._{name}")
    except ImportError as exc:  # pragma: no cover - depends on the build
        pytest.skip(f"passtcore._{name} not built: {exc}")


@pytest.fixture(scope="session", params=["python", "cython"])
def csum(request: pytest.FixtureRequest) -> ModuleType:
    return _load(request.param, "csum")


@pytest.fixture(scope="session", params=["python", "cython"])
def headers(request: pytest.FixtureRequest) -> ModuleType:
    return _load(request.param, "headers")


@pytest.fixture(scope="session", params=["python", "cython"])
def batch(request: pytest.FixtureRequest) -> ModuleType:
    return _load(request.param, "batch")
