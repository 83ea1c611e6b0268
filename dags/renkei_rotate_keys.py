"""renkei_rotate_link_key: re-seal the warehouse's ERKs under the link key's new version.

Trigger it after `renkei keys rotate --purpose link` has added the version to the keyring
(`airflow dags trigger renkei_rotate_link_key`, optional conf {"batch_size": 10000}):

    start (lock the link key, record the rotation) → reseal (batches; progress in the task log)
      → finish (check every ERK column, audit-trail entry `key_rotation`, release the lock)

Until finish, ingest, link and services refuse to write ERKs. Every batch commits its rows and
its cursor together, so a retry or a new run resumes where the last one stopped; notice ids do
not change (renkei.keys.rotation). Only counts and the rotation id travel through XCom.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task


@dag(
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="Asia/Tokyo"),
    catchup=False,
    max_active_runs=1,
    tags=["renkei", "keys"],
    doc_md=__doc__,
)
def renkei_rotate_link_key():
    @task
    def start() -> dict:
        from renkei.keys.ring import KeyRing
        from renkei.keys.rotation import start as start_rotation
        from renkei.settings import Settings

        rot = start_rotation(Settings.from_env().warehouse_url, KeyRing.load())
        return {"rotation_id": rot["rotation_id"] if rot else None}

    @task(retries=3, retry_delay=pendulum.duration(seconds=10))
    def reseal(started: dict, **context) -> dict:
        from renkei.keys.ring import KeyRing
        from renkei.keys.rotation import DEFAULT_BATCH, reseal as run_reseal
        from renkei.settings import Settings

        if started["rotation_id"] is None:
            return {"complete": True, "rows": 0}
        conf = getattr(context.get("dag_run"), "conf", None) or {}
        return run_reseal(Settings.from_env().warehouse_url, KeyRing.load(), started["rotation_id"],
                          batch_size=int(conf.get("batch_size", DEFAULT_BATCH)))

    @task
    def finish(started: dict, resealed: dict) -> dict:
        from renkei.keys.ring import KeyRing
        from renkei.keys.rotation import finish as finish_rotation
        from renkei.settings import Settings

        if started["rotation_id"] is None:
            return {"state": "up_to_date"}
        return finish_rotation(Settings.from_env().warehouse_url, KeyRing.load(), started["rotation_id"])

    started = start()
    finish(started, reseal(started))


renkei_rotate_link_key()
