#!/usr/bin/env bash
# Creates .venv and installs CAS Lab with its dependencies (idempotent: a second run only checks).
# With --browser it also installs Debian's Chromium for the real-browser tests and HAProxy for the
# load-balancer test.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
want_browser=0
[ "${1:-}" = "--browser" ] && want_browser=1

if [ "$want_browser" = 1 ]; then
  debs=""
  command -v chromium >/dev/null 2>&1 || debs="chromium fonts-dejavu-core"
  # HAProxy: the load-balancer test (tests/test_class_server.py) and deploy/haproxy.cfg
  command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || debs="$debs haproxy"
  if [ -n "$debs" ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -q $debs
  fi
fi

stamp=.venv/.installed
reqs=$(cat requirements.txt requirements-dev.txt pyproject.toml | sha1sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$reqs" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements-dev.txt
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$reqs" > "$stamp"
fi
