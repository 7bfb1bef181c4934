# syntax=docker/dockerfile:1
# Airflow image for m365-3cx-sync: the official Airflow image extended with this project's
# pinned requirements and its package (docs/operations.md, "Build the image").
#
#   docker compose build            # uses the build args below
#
# AIRFLOW_VERSION must equal the apache-airflow pin in requirements.txt; PYTHON_VERSION the
# interpreter constraints.txt was frozen on (tests/compose/test_compose.py checks both).
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}

ARG AIRFLOW_VERSION
ENV M365_3CX_HOME=/opt/m365-3cx

USER root
# Project tree outside AIRFLOW_HOME; emulator-state is the mount point of the named volume the
# `emulators` profile shares (a fresh named volume copies this directory's owner and mode).
RUN mkdir -p "${M365_3CX_HOME}/emulator-state" \
 && chown -R airflow:0 "${M365_3CX_HOME}" \
 && chmod 2775 "${M365_3CX_HOME}/emulator-state"

USER airflow
WORKDIR ${M365_3CX_HOME}

# 1. Pinned third-party requirements first (cached layer). Airflow is pinned to the image's own
#    version so pip can neither upgrade nor downgrade it; constraints.txt is the frozen resolution
#    (the Airflow constraints URL is not used).
COPY --chown=airflow:0 requirements.txt constraints.txt ./
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r requirements.txt -c constraints.txt

# 2. The project package (include/m365_3cx, registers the connection types through its
#    apache_airflow_provider entry point), the emulators (run by the `emulators` profile with
#    this same image) and the container scripts.
COPY --chown=airflow:0 pyproject.toml ./
COPY --chown=airflow:0 include/ ./include/
COPY --chown=airflow:0 emulators/ ./emulators/
COPY --chown=airflow:0 docker/ ./docker/
RUN pip install --no-cache-dir --no-deps . \
 && chmod 0755 docker/*.sh docker/*.py

WORKDIR /opt/airflow
# The wrapper switches the connections to the emulators when the `emulators` profile runs, then
# execs the image's own /entrypoint (docker/entrypoint.sh).
ENTRYPOINT ["/usr/bin/dumb-init", "--", "/opt/m365-3cx/docker/entrypoint.sh"]
CMD []
