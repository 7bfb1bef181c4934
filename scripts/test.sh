#!/usr/bin/env bash
# The test command: installs what it needs, then lint + the whole test suite.
# Needs PostgreSQL at 127.0.0.1:5432 (trust auth) for the staging and DAG tests.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
export PATH="$ROOT/.venv/bin:$PATH"
AIRFLOW_HOME="$(mktemp -d -t m365-3cx-airflow-XXXXXX)"
export AIRFLOW_HOME
export AIRFLOW__CORE__LOAD_EXAMPLES=False
trap 'rm -rf "$AIRFLOW_HOME"' EXIT
echo "==> ruff"
ruff check .
echo "==> pytest"
set +e
python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
