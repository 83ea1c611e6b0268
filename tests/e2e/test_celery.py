"""The CeleryExecutor end to end, with its workers as docker-compose.yaml configures them.

The stack (renkei.devstack, ``executor="CeleryExecutor"``) runs the scheduler, dag-processor,
triggerer and api-server, two ``airflow celery worker`` processes on queue ``default``
(concurrency 2) and one on queue ``delivery`` (concurrency 1); the broker is Redis (every key
under the stack's own prefix), the result backend the metadata database (``db+postgresql://``).
A department registers a birth and publishes the change: the newborn's notices — exactly the set
computed by hand (e2e_support.newborn_notices) — reach the outbox and the notices stream, and
the guardian's mailbox (aiosmtpd, STARTTLS and AUTH required) once each. That the tasks ran on
the workers, each on its queue, is read from Airflow's own records: every task instance carries
the Celery task id it was sent as (``external_executor_id``; none under the LocalExecutor), and
exactly one worker's log shows that id received. The task instances' ``hostname`` cannot tell
the workers apart here (one machine); the Celery hostnames can, through the workers' replies to
``inspect``. Nothing here sleeps: every wait is on a condition, with a bound.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from e2e_support import (SMTP_SENDER, SMTP_USER, SUBJECTS, newborn_notices, smtp_server, started_stack,
                         task_logs_saying, wait)

pytestmark = [pytest.mark.e2e, pytest.mark.airflow]

DEFAULT_WORKERS = ("worker-default-1", "worker-default-2")
DELIVERY_WORKER = "worker-delivery"


@pytest.fixture(scope="module")
def smtp(tmp_path_factory):
    """The stack's SMTP server: what its deliver_notices DAG sends to."""
    with smtp_server(tmp_path_factory.mktemp("smtp")) as box:
        yield box


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_factory, smtp):
    with started_stack(tmp_path_factory.mktemp("celery"), pg_factory, smtp, executor="CeleryExecutor",
                       celery_workers=2) as s:
        yield s


def _celery_control(stack):
    """A Celery app on the stack's broker (its key prefix included), to ask the workers."""
    from celery import Celery

    app = Celery(broker=stack.env["AIRFLOW__CELERY__BROKER_URL"])
    app.conf.broker_transport_options = {
        "global_keyprefix": stack.env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX"]}
    return app


def _ran_on(stack, celery_ids: set[str]) -> dict[str, set[str]]:
    """Worker name → which of ``celery_ids`` its log shows received."""
    return {name: stack.worker_task_ids(name) & celery_ids for name in (*DEFAULT_WORKERS, DELIVERY_WORKER)}


def test_the_workers_have_compose_queues_concurrency_and_health_check(stack):
    app = _celery_control(stack)
    names = {f"default-1@renkei-dev-{stack.tag}": (["default"], 2),
             f"default-2@renkei-dev-{stack.tag}": (["default"], 2),
             f"delivery-1@renkei-dev-{stack.tag}": (["delivery"], 1)}
    seen: dict = {}

    def all_answer() -> bool:
        seen["queues"] = app.control.inspect(timeout=3).active_queues() or {}
        return set(seen["queues"]) >= set(names)

    try:
        wait(stack, "all three workers answering inspect", all_answer, lambda: sorted(seen.get("queues", {})))
        stats = app.control.inspect(destination=list(names), timeout=3).stats() or {}
    finally:
        app.close()
    got = {h: (sorted(q["name"] for q in queues), stats.get(h, {}).get("pool", {}).get("max-concurrency"))
           for h, queues in seen["queues"].items()}
    assert got == names, "workers on the stack's broker, their queues and concurrency differ from compose's"
    assert stack.executor == "CeleryExecutor" == stack.env["AIRFLOW__CORE__EXECUTOR"]
    # compose's worker health check answers for each worker, with the worker's own environment
    for name in (*DEFAULT_WORKERS, DELIVERY_WORKER):
        assert stack.ping_worker(name), f"the compose health check fails for {name}"


def test_a_change_reaches_the_mailbox_through_the_celery_workers(stack, smtp):
    from renkei.devstack import tokyo_today

    today = tokyo_today()
    born = today - timedelta(days=70)
    address = f"guardian-{stack.tag}@example.test"  # a test contact, no real person
    code = stack.add_birth(born=born, guardian_email=address)
    stack.export_and_publish("registry")

    # The outbox: exactly the notices computed by hand, written by a services run that succeeded.
    wait(stack, "the newborn's notices in the outbox", lambda: bool(stack.notice_rows(code)))
    runs = sorted({r["created_run_id"] for r in stack.notice_rows(code)})
    for run in runs:
        dag_id, run_id = run.split("/", 1)
        wait(stack, f"{run} to finish", lambda: stack.dag_run_state(dag_id, run_id) in ("success", "failed"))
        assert stack.dag_run_state(dag_id, run_id) == "success", f"{run} did not succeed"
    rows = {r["notice_id"]: r for r in stack.notice_rows(code)}
    assert {r["evaluated_on"] for r in rows.values()} <= {today, today + timedelta(days=1)}
    assert stack.notice_keys(code) == newborn_notices(born, today)

    # The stream, then the guardian's mailbox: one message per notice, over STARTTLS with AUTH.
    wait(stack, "the notices on the stream", lambda: set(rows) <= set(stack.stream_notice_ids()))

    def delivered() -> bool:
        if failed := stack.failed_runs("deliver_notices"):
            pytest.fail(f"deliver_notices runs failed: {failed}; logs under {stack.base}")
        return len(smtp.to(address)) >= len(rows)

    wait(stack, "the child's notices in the guardian's mailbox", delivered, lambda: len(smtp.to(address)))
    got = smtp.to(address)
    assert sorted(m["msg"]["X-Renkei-Notice"] for m in got) == sorted(rows), "not one message per notice"
    for m in got:
        n = rows[m["msg"]["X-Renkei-Notice"]]
        assert (m["rcpt"], m["tls"], m["login"], m["mail_from"]) == ([address], True, SMTP_USER, SMTP_SENDER)
        assert m["msg"]["Subject"] == SUBJECTS[(n["subject"], n["dose_number"])]
    wait(stack, "the receipts", lambda: len(stack.receipts(rows)) == len(rows))
    assert [(r["notice_id"], r["attempt"], r["status"]) for r in stack.receipts(rows)] == \
        sorted((nid, 1, "sent") for nid in rows)

    # Where each task ran: the services run's tasks on queue default, on a default worker; the
    # delivery tasks on queue delivery, on the delivery worker — and never the other way round.
    tis = [ti for run in runs for ti in stack.task_instances(*run.split("/", 1))]
    # A one-part run is evaluated by plan itself: evaluate and record are skipped, never run.
    assert {ti["task_id"] for ti in tis if ti["state"] == "skipped"} <= {"evaluate", "record"}, tis
    services = [ti for ti in tis if ti["state"] != "skipped"]
    assert services and all(ti["state"] == "success" for ti in services), services
    assert all(ti["external_executor_id"] for ti in services), "a task ran without Celery (the LocalExecutor?)"
    ids = {ti["external_executor_id"] for ti in services}
    assert {ti["queue"] for ti in services} == {"default"}
    ran = _ran_on(stack, ids)
    assert ran[DELIVERY_WORKER] == set() and set().union(*(ran[w] for w in DEFAULT_WORKERS)) == ids, ran

    sends = [ti for ti in stack.task_instances("deliver_notices") if ti["state"] == "success"]
    assert sends and all(ti["external_executor_id"] for ti in sends), "no delivery task ran on Celery"
    assert {ti["queue"] for ti in sends} == {"delivery"}
    ids = {ti["external_executor_id"] for ti in sends}
    ran = _ran_on(stack, ids)
    assert ran[DELIVERY_WORKER] == ids and not any(ran[w] for w in DEFAULT_WORKERS), ran

    # Both default workers took tasks: the default queue is shared, not served by one of them.
    every = {ti["external_executor_id"] for dag in ("ingest_registry", "link_residents", "proactive_services")
             for ti in stack.task_instances(dag) if ti["external_executor_id"]}
    ran = _ran_on(stack, every)
    assert all(ran[w] for w in DEFAULT_WORKERS), {w: len(ran[w]) for w in DEFAULT_WORKERS}


def test_delivery_waits_for_the_delivery_worker_and_no_default_worker_takes_it(stack):
    import redis

    # Stopped mid-task, the worker would fail the delivery run an earlier test's outbox event
    # started (and the mailbox test, in any order after this one, fails on a failed run).
    wait(stack, "the delivery worker idle", lambda: not [
        ti for ti in stack.task_instances("deliver_notices") if ti["state"] in ("scheduled", "queued", "running")])
    stack.stop(DELIVERY_WORKER)
    try:
        run_id = stack.trigger("deliver_notices")
        queue_key = stack.env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX"] + "delivery"
        r = redis.Redis.from_url(stack.env["AIRFLOW__CELERY__BROKER_URL"])
        waiting: dict = {}

        def held_by_the_broker() -> bool:
            # A delivery task was queued (its Celery id set) and its message sits in the broker's
            # delivery list: only a worker on that queue can take it.
            waiting["tis"] = [ti for ti in stack.task_instances("deliver_notices")
                              if ti["state"] == "queued" and ti["external_executor_id"]]
            waiting["llen"] = r.llen(queue_key)
            return bool(waiting["tis"]) and waiting["llen"] >= 1

        try:
            wait(stack, "a delivery task held in the broker's delivery queue", held_by_the_broker, lambda: waiting)
        finally:
            r.close()
        held = {ti["id"]: ti["external_executor_id"] for ti in waiting["tis"]}
        assert not any(_ran_on(stack, set(held.values()))[w] for w in DEFAULT_WORKERS)
    finally:
        stack.start(DELIVERY_WORKER)

    def all_done() -> bool:
        tis = {ti["id"]: ti for ti in stack.task_instances("deliver_notices")}
        return all(tis[i]["state"] == "success" for i in held) and stack.dag_run_state("deliver_notices", run_id) in (
            "success", "failed")

    wait(stack, "the held delivery tasks and the triggered run to finish on the restarted worker", all_done,
          lambda: [(ti["run_id"], ti["state"]) for ti in stack.task_instances("deliver_notices")])
    assert stack.dag_run_state("deliver_notices", run_id) == "success"
    ran = _ran_on(stack, set(held.values()))
    assert ran[DELIVERY_WORKER] == set(held.values()) and not any(ran[w] for w in DEFAULT_WORKERS), ran


def test_only_the_workers_preload_the_task_modules(stack):
    """Each ``airflow celery worker`` imports the tasks' heavy modules once at start, for the
    task processes its pool forks (renkei.warm); the scheduler, which forks no task under
    Celery, and the other components do not."""
    said = {name: (stack.base / f"{name}.log").read_text(errors="replace") for name in stack.commands}
    preloaded = sorted(name for name, text in said.items() if "renkei preload:" in text)
    assert preloaded == sorted((*DEFAULT_WORKERS, DELIVERY_WORKER))
    assert all("not imported" not in said[name] for name in preloaded)
    # ... and not again in each task process (plugins/.airflowignore, test_warm)
    logs, saying = task_logs_saying(stack, "renkei preload")
    assert logs and not saying, saying[:3]
