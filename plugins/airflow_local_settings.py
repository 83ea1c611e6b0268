"""Airflow imports this module in every component at start (it is on sys.path as the plugins
folder). Renkei uses it for one thing: the processes that fork task processes import the
tasks' heavy modules once (renkei.warm). A deployment with its own airflow_local_settings in
$AIRFLOW_HOME/config (found first) calls ``renkei.warm.preload`` from there instead."""

import sys as _sys

__all__: list[str] = []  # no policy or setting is defined here


def _preload() -> None:
    from airflow.configuration import conf

    from renkei.warm import preload

    preload(_sys.argv, conf.get("core", "executor", fallback=""))


_preload()
