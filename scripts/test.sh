#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite: once on the Cython
# kernels, then the kernel and protocol tests again on the pure-Python twins.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ulimit -n "$(ulimit -Hn)" || true
echo "passtcore: test suite, Cython backend"
.venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
echo "passtcore: kernel and protocol tests, pure-Python backend (PASSTCORE_PURE=1)"
PASSTCORE_PURE=1 .venv/bin/python -m pytest -q -p no:cacheprovider -m "not netns and not qemu and not slow" tests "$@"
