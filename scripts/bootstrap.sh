#!/usr/bin/env bash
# Shared by scripts/run and scripts/test: make sure .venv exists with this checkout installed in it.
# Usage: scripts/bootstrap.sh [test]   (test: also the test extra)
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib.sh

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "bootstrap: Python >= 3.11 is required ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
  exit 2
fi
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
  apt_install python3-venv
fi

extra=""
[ "${1:-}" = test ] && extra="[test]"
stamp=".venv/.installed$extra"
want=$(cat setup.py pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# The test install includes the plain one: scripts/run after scripts/test installs nothing.
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] && [ "$(cat ".venv/.installed[test]" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing the appliance and its dependencies into .venv" >&2
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip wheel >/dev/null
  .venv/bin/pip install -q --disable-pip-version-check -e ".$extra"
  echo "$want" > "$stamp"
fi
