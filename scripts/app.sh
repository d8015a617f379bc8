#!/usr/bin/env bash
# Sets up (first run only) and starts the CAS Lab app on the bundled checkpoints, for this machine only
# (localhost). Streamlit options pass through: `bash scripts/app.sh --server.address 0.0.0.0` opens it
# to the network (see README, "Security and limits").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m app.serve "$@"
