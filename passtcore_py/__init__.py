"""Pure-Python twins of passtcore's Cython kernels.

Same API and same results as ``passtcore._csum``, ``_headers``, ``_batch`` and
``_flowtable``: the fallback when the extension is not built
(``PASSTCORE_PURE=1`` forces it) and the oracle in differential tests.
"""
