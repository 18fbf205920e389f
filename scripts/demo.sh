#!/usr/bin/env bash
# Set up passtcore and run the demo: passtcore-run serving a guest network
# namespace from inside a private "host" namespace (nothing leaves the machine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/passtcore-run --demo "$@"
