#!/usr/bin/env bash
# Sets up (first run only) and starts the CAS Lab app on the bundled checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m app.serve "$@"
