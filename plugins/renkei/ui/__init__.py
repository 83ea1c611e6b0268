"""Renkei pages in the Airflow UI: run report, quarantine, review queue, notices (docs/UI.md).

``renkei.ui.plugin`` is the Airflow plugin (entry point ``airflow.plugins``); ``renkei.ui.app``
builds the FastAPI app it mounts under ``/renkei`` on the first request.
"""
