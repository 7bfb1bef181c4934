#!/usr/bin/env bash
# The demo command: installs what it needs, starts both emulators and runs the sync
# DAGs in real Airflow against an embedded SQLite staging database.
# Pass --ui to keep everything running under 'airflow standalone' afterwards.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
exec "$ROOT/.venv/bin/python" scripts/demo.py "$@"
