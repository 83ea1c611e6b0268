"""Run Renkei's DAGs as real Airflow DAG runs, in order, for one evaluation date.

Started by :mod:`renkei.runner` in a child process whose environment already points Airflow at
its home, metadata DB and the repo's dags/ folder (Airflow reads configuration at import).
Prints one ``@@renkei {json}`` line per DAG run for the parent; writes Airflow's own output as
usual (the parent sends it to the log file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date, datetime, time as dtime

from renkei.runctx import TOKYO

PROGRESS_PREFIX = "@@renkei "


def _say(**fields) -> None:
    sys.stdout.write(PROGRESS_PREFIX + json.dumps(fields, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m renkei.airflow_chain")
    ap.add_argument("--as-of", required=True, type=date.fromisoformat)
    ap.add_argument("--dags", required=True, help="comma-separated dag ids, run in this order")
    ap.add_argument("--at", default="06:00", type=dtime.fromisoformat,
                    help="the runs' logical time of day (Asia/Tokyo): later chains of one day get their own run ids")
    args = ap.parse_args(argv)

    from airflow.dag_processing.dagbag import DagBag  # noqa: PLC0415 - after env is set

    from renkei.logsetup import install  # noqa: PLC0415

    install()  # dag.test() runs tasks in this process: Airflow's task-log hook does not apply here

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        for path, err in bag.import_errors.items():
            _say(event="import_error", path=str(path), error=str(err).splitlines()[-1][:500])
        return 2
    logical = datetime.combine(args.as_of, args.at, tzinfo=TOKYO)
    for dag_id in args.dags.split(","):
        dag = bag.get_dag(dag_id)
        if dag is None:
            _say(event="missing_dag", dag_id=dag_id)
            return 2
        started = time.perf_counter()
        _say(event="start", dag_id=dag_id)
        dag_run = dag.test(run_after=logical, logical_date=logical, run_conf={"as_of": args.as_of.isoformat()})
        state = str(getattr(dag_run, "state", "unknown"))
        _say(event="end", dag_id=dag_id, run_id=dag_run.run_id, state=state,
             seconds=round(time.perf_counter() - started, 2))
        if not state.endswith("success"):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
