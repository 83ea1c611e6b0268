# Renkei on Apache Airflow 3.3 (Python 3.11). Dependencies come from the repo's lock file.
FROM python:3.11-slim
ENV AIRFLOW_HOME=/opt/airflow PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /opt/renkei
COPY requirements.lock pyproject.toml ./
RUN pip install --no-cache-dir -r requirements.lock
COPY plugins ./plugins
COPY dags ./dags
COPY config ./config
COPY expectations ./expectations
RUN pip install --no-cache-dir --no-deps -e . && useradd -m -u 50000 airflow && mkdir -p $AIRFLOW_HOME && chown airflow $AIRFLOW_HOME
USER airflow
ENV AIRFLOW__CORE__DAGS_FOLDER=/opt/renkei/dags AIRFLOW__CORE__PLUGINS_FOLDER=/opt/renkei/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False RENKEI_CONFIG_DIR=/opt/renkei/config \
    RENKEI_EXPECTATIONS_DIR=/opt/renkei/expectations
