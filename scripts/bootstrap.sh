#!/usr/bin/env bash
# Create .venv (if needed) and install the pinned dependencies and this package.
# Sourced by demo.sh and test.sh; safe to run repeatedly.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  echo "==> creating virtual environment in .venv"
  "$PYTHON" -m venv "$ROOT/.venv"
fi
stamp="$ROOT/.venv/.m365-3cx-installed"
want="$(cat "$ROOT/requirements.txt" "$ROOT/constraints.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "==> installing pinned requirements (a minute or two on a fresh machine)"
  "$ROOT/.venv/bin/python" -m pip install --quiet --upgrade pip
  "$ROOT/.venv/bin/python" -m pip install --quiet -r "$ROOT/requirements.txt" -c "$ROOT/constraints.txt"
  "$ROOT/.venv/bin/python" -m pip install --quiet --no-deps -e "$ROOT"
  echo "$want" > "$stamp"
fi
