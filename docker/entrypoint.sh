#!/usr/bin/env bash
# Entrypoint of the m365-3cx-sync Airflow image (Dockerfile ENTRYPOINT, behind dumb-init).
#
# When the compose `emulators` profile runs, point the m365_graph and threecx_xapi connections at
# the emulators (docker/emulator_connections.py); then hand over to the official image's
# /entrypoint, which runs the Airflow command unchanged.
#
# M365_3CX_EMULATORS: auto (default; emulators only if their containers run now) | on | off.
set -euo pipefail

mode="${M365_3CX_EMULATORS:-auto}"
state_dir="${M365_3CX_EMULATOR_STATE:-/opt/m365-3cx/emulator-state}"

if [[ "${mode}" != "off" ]]; then
    exports="$(python /opt/m365-3cx/docker/emulator_connections.py --state-dir "${state_dir}" --mode "${mode}")"
    eval "${exports}"
fi

exec /entrypoint "$@"
