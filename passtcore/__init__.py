"""passtcore: user-mode networking for VMs and namespaces.

The packet kernels (checksums, header parsing/rewriting, batches over shared
buffers, the flow table) are Cython extension modules with pure-Python twins in
``passtcore_py``. They are loaded lazily, on first use, so that light users of
the package (the CNI plugin, the daemon's start-up path) do not pay for numpy
and the extensions::

    import passtcore
    passtcore.backend                    # "cython" or "python"
    passtcore.csum.inet_checksum(b"...")
    passtcore.headers.parse_frame(frame)
    passtcore.flowtable.FlowTable(1024)

``PASSTCORE_PURE=1`` in the environment forces the pure-Python twins; when the
extension is missing they are used too, with one warning logged.
"""
from __future__ import annotations

# `typing` is not imported at run time: the CNI plugin imports this package per
# pod and counts milliseconds.
TYPE_CHECKING = False

__version__ = "0.1.0"

KERNELS = ("csum", "headers", "batch", "flowtable", "fastpath", "virtq")

__all__ = ["__version__", "backend", "KERNELS", *KERNELS]

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from typing import Any

    from passtcore_py import batch, csum, fastpath, flowtable, headers, virtq

    backend: str


def __getattr__(name: str) -> Any:
    if name == "backend" or name in KERNELS:
        from passtcore import _backend

        value = _backend.backend if name == "backend" else _backend.kernel(name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'passtcore' has no attribute {name!r}")
