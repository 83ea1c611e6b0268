# syntax=docker/dockerfile:1
# The Renkei image: Apache Airflow 3.3.2 with the CeleryExecutor and the renkei package, built
# from the repository's lock file. One image for every Airflow component (api-server, scheduler,
# dag-processor, triggerer, Celery workers) in docker-compose.yaml.
#
# Base: python:3.11-slim-bookworm, not apache/airflow — the official image ships Airflow's own
# constraint set (other SQLAlchemy/pandas/provider versions); installing our lock on top would
# give a mix that no test ran. Here the image holds exactly requirements.lock (docs/OPERATIONS.md).
#
# No key material is ever copied in: the keyring is mounted at run time (compose `secrets:`),
# and .dockerignore keeps var/, .env and keyring files out of the build context.
# The Data Docs' browser assets that no Python package ships (bootstrap-table), from the npm lock
# with its integrity hashes; only node_modules is copied into the image (no Node.js at run time).
FROM node:20-bookworm-slim AS offline-assets
WORKDIR /assets
COPY tools/offline-assets/package.json tools/offline-assets/package-lock.json tools/offline-assets/.npmrc ./
RUN npm ci --ignore-scripts --no-audit --no-fund

FROM python:3.11-slim-bookworm

ARG AIRFLOW_UID=50000
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AIRFLOW_HOME=/opt/airflow

# tini is PID 1 and forwards SIGTERM, so a Celery worker shuts down warm (running tasks finish);
# curl runs the HTTP health checks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini curl \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/renkei

# The lock is a complete freeze (the Celery executor's packages included): --no-deps installs
# exactly its pins and nothing else, and `pip check` fails the build if they are inconsistent.
COPY requirements.lock ./
RUN pip install --no-deps -r requirements.lock \
 && pip check

# The application: the renkei package (editable, as in `make venv`, so the plugins folder and
# the package are one copy), the thin DAG files, config (sources, rules, channels) and GX suites.
COPY pyproject.toml ./
COPY plugins ./plugins
COPY dags ./dags
COPY config ./config
COPY expectations ./expectations
COPY --from=offline-assets /assets/node_modules ./tools/offline-assets/node_modules
RUN pip install --no-deps -e . \
 && useradd --uid "${AIRFLOW_UID}" --gid 0 --home-dir "${AIRFLOW_HOME}" --create-home \
      --shell /usr/sbin/nologin airflow \
 && mkdir -p "${AIRFLOW_HOME}/logs" /var/lib/renkei/delivery \
 && chown -R "${AIRFLOW_UID}:0" "${AIRFLOW_HOME}" /var/lib/renkei \
 && chmod -R g=u "${AIRFLOW_HOME}" /var/lib/renkei

ENV AIRFLOW__CORE__DAGS_FOLDER=/opt/renkei/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/renkei/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    RENKEI_CONFIG_DIR=/opt/renkei/config \
    RENKEI_EXPECTATIONS_DIR=/opt/renkei/expectations \
    RENKEI_HOME=/var/lib/renkei

# Numeric, so Kubernetes' runAsNonRoot can verify it; group 0 as in the official Airflow image.
USER ${AIRFLOW_UID}:0
WORKDIR /opt/airflow
EXPOSE 8080 8793 8974
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["airflow", "version"]
