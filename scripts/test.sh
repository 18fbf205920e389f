#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite: once on the Cython
# kernels, then again on the pure-Python twins (all but the packaging and
# benchmark-harness tests, which do not depend on the backend, and the real-QEMU
# and libvirt ones: minutes of emulated guest each, over paths the kernels'
# differential tests already hold equal in both backends).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ulimit -n "$(ulimit -Hn)" || true
echo "passtcore: test suite, Cython backend"
.venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
echo "passtcore: test suite, pure-Python backend (PASSTCORE_PURE=1)"
PASSTCORE_PURE=1 .venv/bin/python -m pytest -q -p no:cacheprovider \
  --ignore=tests/test_packaging.py --ignore=tests/bench -m "not qemu" tests "$@"
