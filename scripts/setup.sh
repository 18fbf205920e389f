#!/usr/bin/env bash
# Set up passtcore for development on Debian 12 (as root): system packages, a
# virtualenv in .venv, and an editable install that compiles the Cython kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
if [ ! -x .venv/bin/python ]; then
  echo "passtcore: creating .venv"
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# compat mode: a plain .pth path entry; the default editable finder costs
# ~100 ms at every interpreter start (start-up time is measured and matters).
echo "passtcore: building and installing (editable, with test/bench/sidecar extras)"
.venv/bin/python -m pip install -q -e ".[test,bench,sidecar]" --config-settings editable_mode=compat
# Bytecode as an installed wheel has it (pip compiles wheels at install; an editable
# install does not, and PYTHONDONTWRITEBYTECODE may be set): start-up is measured.
.venv/bin/python -m compileall -q passtcore passtcore_py >/dev/null
.venv/bin/python -c "import passtcore; print('passtcore: backend =', passtcore.backend)"
# The test guest for QEMU (Debian's cloud kernel + busybox, under .cache/guest/):
# downloaded with apt-get, never installed on this machine.
.venv/bin/python -c "from passtcore.sandbox import guest; guest.image()" \
  || echo "passtcore: no guest image (the vhost-user tests will be skipped)"
