#!/usr/bin/env bash
# One-shot initialisation for the compose stack (service airflow-init, runs as root), modelled on
# the official Airflow docker-compose airflow-init service:
#   resource checks, shared folders and their owner, required secrets, the API login, the
#   metadata database, the staging database, the pools, the settings Variable (seeded once).
# Every step is idempotent: it runs on each `docker compose up`.
set -euo pipefail

AIRFLOW_UID="${AIRFLOW_UID:-50000}"

echo "== resources"
one_meg=1048576
mem_available=$(($(getconf _PHYS_PAGES) * $(getconf PAGE_SIZE) / one_meg))
cpus_available=$(grep -cE 'cpu[0-9]+' /proc/stat)
disk_available=$(df / | tail -1 | awk '{print $4}')
if (( mem_available < 4000 )); then
    echo "WARNING: not enough memory for Airflow: at least 4 GB, ideally 8 GB (have $((mem_available / 1024)) GB)."
fi
if (( cpus_available < 2 )); then
    echo "WARNING: not enough CPUs for Airflow: at least 2 (have ${cpus_available})."
fi
if (( disk_available < one_meg * 10 )); then
    echo "WARNING: not enough disk space for Airflow: at least 10 GB (have $((disk_available / one_meg)) GB)."
fi

echo "== required settings"
missing=()
for var in AIRFLOW__CORE__FERNET_KEY AIRFLOW__API_AUTH__JWT_SECRET \
           AIRFLOW_ADMIN_PASSWORD STAGING_DB_PASSWORD; do
    if [[ -z "${!var:-}" ]]; then
        missing+=("${var}")
    fi
done
if (( ${#missing[@]} )); then
    echo "ERROR: not set (see .env.example and docs/operations.md): ${missing[*]}" >&2
    exit 1
fi

echo "== shared folders"
mkdir -p /opt/airflow/{logs,dags,plugins,config}
# logs and config are written by the containers; dags and plugins are the repository's own.
chown -R "${AIRFLOW_UID}:0" /opt/airflow/logs /opt/airflow/config

echo "== API login (SimpleAuthManager)"
passwords_file="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-/opt/airflow/config/simple_auth_manager_passwords.json}"
admin_user="${AIRFLOW_ADMIN_USER:-admin}"
python - "${passwords_file}" "${admin_user}" <<'PY'
import json, os, sys
path, user = sys.argv[1], sys.argv[2]
with open(path, "w") as handle:
    json.dump({user: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, handle)
os.chmod(path, 0o600)
PY
chown "${AIRFLOW_UID}:0" "${passwords_file}"
echo "user ${admin_user}: password from AIRFLOW_ADMIN_PASSWORD"

echo "== metadata database"
airflow config list >/dev/null
airflow db migrate

echo "== staging database"
if [[ "${M365_3CX_SKIP_STAGING_DB_INIT:-false}" == "true" ]]; then
    echo "skipped (M365_3CX_SKIP_STAGING_DB_INIT=true)"
else
    python /opt/m365-3cx/docker/init_staging_db.py
fi

echo "== pools (created when missing; later changes made in the UI are kept)"
if ! airflow pools get graph_api >/dev/null 2>&1; then
    airflow pools set graph_api 4 "Microsoft Graph"
fi
if ! airflow pools get threecx_api >/dev/null 2>&1; then
    airflow pools set threecx_api 1 "3CX XAPI (one live token per client)"
fi

echo "== settings Variable m365_3cx_settings (in the metadata DB, so edits in the UI take effect)"
settings="${M365_3CX_SETTINGS:-}"
if [[ -z "${settings// }" ]]; then
    settings='{}'
fi
if [[ "${M365_3CX_SETTINGS_RESEED:-false}" == "true" ]] || ! airflow variables get m365_3cx_settings >/dev/null 2>&1; then
    # Validate first: a bad seed must stop the init with the list of problems, not reach the DAGs.
    M365_3CX_SEED="${settings}" python -c 'import os; from m365_3cx.settings import Settings; Settings.from_json(os.environ["M365_3CX_SEED"])'
    airflow variables set --description "m365-3cx-sync settings (docs/operations.md section 3)" m365_3cx_settings "${settings}"
    echo "seeded from M365_3CX_SETTINGS"
else
    echo "kept the stored value (edit it in the UI; M365_3CX_SETTINGS_RESEED=true overwrites it from .env)"
fi

# Files the commands above created as root (config, logs) must belong to the Airflow user.
chown -R "${AIRFLOW_UID}:0" /opt/airflow/logs /opt/airflow/config
airflow version
echo "== airflow-init done"
