"""The event-driven runtime end to end, with every real component started by the test.

PostgreSQL holds the Airflow metadata and the warehouse; Redis carries the change events and
the notices stream; the scheduler, dag-processor, triggerer and api-server run as separate
processes (LocalExecutor); a real SMTP server (aiosmtpd, STARTTLS and AUTH required, a
certificate from a CA made here) receives what deliver_notices sends. A department changes its
data, runs the export adapter and publishes a change event; the newborn's notices — exactly the
set computed by hand (e2e_support.newborn_notices) — must reach the outbox and the stream within
a bound: also when the triggerer was down at the time, for a burst of 20 changes, and once only
for duplicate events; and they must reach the guardian's mailbox once each. Nothing here
sleeps: every wait is on a condition, with a bound.
"""

from __future__ import annotations

import datetime as dt
from datetime import date, timedelta

import pytest

from e2e_support import (SMTP_SENDER, SMTP_USER, SUBJECTS, anniv, jdate, newborn_notices, reach, smtp_server,
                         started_stack, task_logs_saying, wait)

pytestmark = [pytest.mark.e2e, pytest.mark.airflow]

# -- hand computation (e2e_support.py: SERVICES.md's arithmetic and newborn_notices) ----------------

def test_the_hand_arithmetic_matches_the_worked_examples_of_services_md():
    assert anniv(date(2018, 7, 31), 2) == date(2018, 10, 1)
    assert (reach(date(2018, 4, 1), 2), reach(date(2018, 4, 1), 60)) == (date(2018, 5, 31), date(2023, 3, 31))
    # The worked example of newborn_notices (D = 2026-12-05, born 2026-09-26).
    b = date(2026, 9, 26)
    assert (reach(b, 2), reach(b, 12), reach(b, 60), reach(b, 90), b + timedelta(days=104)) == (
        date(2026, 11, 25), date(2027, 9, 25), date(2031, 9, 25), date(2034, 3, 25), date(2027, 1, 8))


# -- a real SMTP server (e2e_support.smtp_server): STARTTLS and AUTH required ----------------------

@pytest.fixture(scope="module")
def smtp(tmp_path_factory):
    """The stack's SMTP server: what its deliver_notices DAG sends to."""
    with smtp_server(tmp_path_factory.mktemp("smtp")) as box:
        yield box


@pytest.fixture
def own_smtp(tmp_path):
    """A server of this test's own (same requirements): the stack's DAG keeps delivering to the
    stack's server in the background, so a test that counts what was accepted needs its own."""
    (tmp_path / "own-smtp").mkdir()
    with smtp_server(tmp_path / "own-smtp") as box:
        yield box


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_factory, smtp):
    with started_stack(tmp_path_factory.mktemp("e2e"), pg_factory, smtp) as s:
        yield s


# -- waiting and observing ----------------------------------------------------------------------

def _finished(stack, dag_id: str, run_id: str) -> str:
    """Wait until the DAG run is over; its final state."""
    wait(stack, f"{dag_id} run {run_id} to finish",
          lambda: stack.dag_run_state(dag_id, run_id) in ("success", "failed"))
    return stack.dag_run_state(dag_id, run_id)


def _written_notices(stack, code: str, what: str) -> list[dict]:
    """The child's notices once the services run(s) that wrote them have finished."""
    wait(stack, what, lambda: bool(stack.notice_rows(code)))
    for run in sorted({r["created_run_id"] for r in stack.notice_rows(code)}):
        dag_id, run_id = run.split("/", 1)
        assert _finished(stack, dag_id, run_id) == "success", f"{run} did not succeed"
    return stack.notice_rows(code)


def _assert_exact_notices(stack, code: str, born: date, today: date) -> list[dict]:
    rows = stack.notice_rows(code)
    # D is the services run's date (Asia/Tokyo); a run just after midnight evaluates the next day.
    days = {r["evaluated_on"] for r in rows}
    assert days <= {today, today + timedelta(days=1)}, f"evaluated on {sorted(days)}, not {today}"
    expected = newborn_notices(born, today)
    got = stack.notice_keys(code)
    assert got == expected, f"missing {sorted(set(expected) - set(got))}; unexpected or duplicated " \
                            f"{sorted(set(got) - set(expected)) or [k for k in got if got.count(k) > 1]}"
    return rows


def _birth(stack, **kw) -> tuple[str, date, date]:
    from renkei.devstack import tokyo_today

    today = tokyo_today()
    born = today - timedelta(days=70)
    return stack.add_birth(born=born, **kw), born, today


def _announce_first_exports(stack) -> None:
    """Announce every source's first export (DevStack.launch wrote them): `renkei emit`."""
    import sqlalchemy as sa

    from renkei.config import ingest_sources
    from renkei.events import ChangeEvent, publish
    from renkei.events.channel import load_channel

    eng = sa.create_engine(stack.extracts)
    with eng.connect() as conn:
        for src in ingest_sources():
            last, n = conn.execute(sa.text(f"SELECT max(change_seq), count(*) FROM extract_{src.name}")).one()
            publish(ChangeEvent(source=src.name, change_seq=last, row_count=n), load_channel(stack.cfg_dir))
    eng.dispose()


def _sid(stream_id: str) -> tuple[int, int]:
    ms, seq = stream_id.split("-")
    return int(ms), int(seq)


# -- the tests ----------------------------------------------------------------------------------

def test_change_events_drive_the_chain_to_the_stream(stack):
    _announce_first_exports(stack)
    code, born, today = _birth(stack)
    stack.export_and_publish("registry")
    _written_notices(stack, code, "notices for the newborn")
    ids = {r["notice_id"] for r in _assert_exact_notices(stack, code, born, today)}
    wait(stack, "the newborn's notices on the stream", lambda: ids <= set(stack.stream_notice_ids()))
    on_stream = stack.stream_notice_ids()
    assert sorted(n for n in on_stream if n in ids) == sorted(ids), "a notice was published to the stream twice"
    _assert_one_outbox_event_per_services_run(stack)


def _assert_one_outbox_event_per_services_run(stack) -> None:
    """Each services run emits renkei_outbox_notices once: from plan when it evaluated a one-part
    run itself (evaluate and record then skipped), else from record. The newborn's run is an
    incremental one: at least one run took plan's way. A plan run started by a change published
    its notices itself (services_run.relay_at_once): its event says so, without a relay error
    (or that relay_notices held the lock then)."""
    import json

    import sqlalchemy as sa

    from renkei.outputs.relay import BUSY

    with stack._airflow().connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT e.source_run_id, e.source_task_id, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE a.name = 'renkei_outbox_notices' AND e.source_dag_id = 'proactive_services'")).all()
    emitted = {(r.source_run_id, r.source_task_id) for r in rows}
    for r in rows:
        extra = r.extra if isinstance(r.extra, dict) else json.loads(r.extra or "{}")
        if r.source_task_id == "plan" and r.source_run_id.startswith("asset_triggered"):
            relay = extra.get("relay", {})
            assert relay.get("skipped") == BUSY or (relay.get("errors") == 0 and "published" in relay), (r, extra)
    inline = 0
    for run_id, state in stack.dag_runs("proactive_services"):
        if state != "success":
            continue
        tasks = {ti["task_id"]: ti["state"] for ti in stack.task_instances("proactive_services", run_id)}
        by = "plan" if tasks["record"] == "skipped" else "record"
        inline += by == "plan"
        assert (by == "plan") == (tasks["evaluate"] == "skipped"), (run_id, tasks)
        assert {t for r, t in emitted if r == run_id} == {by}, (run_id, tasks, emitted)
    assert inline, "no services run was evaluated by plan itself (an incremental run should be)"


def test_only_the_scheduler_preloads_the_task_modules(stack):
    """Under the LocalExecutor the scheduler forks the workers that fork the task processes: it
    imports the tasks' heavy modules once at start (renkei.warm); the api-server, triggerer and
    DAG processor fork no task and do not."""
    said = {name: (stack.base / f"{name}.log").read_text(errors="replace") for name in stack.commands}
    assert sorted(name for name, text in said.items() if "renkei preload:" in text) == ["scheduler"]
    assert "not imported" not in said["scheduler"]
    # ... and once: not again in each task process (plugins/.airflowignore, test_warm)
    assert said["scheduler"].count("renkei preload:") == 1
    logs, saying = task_logs_saying(stack, "renkei preload")
    assert logs and not saying, saying[:3]


def test_a_change_made_while_the_triggerer_is_down_still_arrives(stack):
    from renkei.events.channel import load_channel

    group = load_channel(stack.cfg_dir).group
    stack.stop("triggerer")
    assert "triggerer" not in stack.procs
    code, born, today = _birth(stack)
    res = stack.export_and_publish("registry")
    source, sid = stack.published[-1]
    # The event is durably on the change stream, and the consumer group has not taken it yet.
    ch = stack.change_stream("registry")
    entry = dict(ch["entries"]).get(sid)
    assert entry is not None and (entry["source"], entry["change_seq"]) == ("registry", res.last_seq)
    assert ch["length"] == len(ch["entries"]) >= 1
    assert group in ch["groups"], f"the triggerer never created group {group}: {ch['groups']}"
    assert _sid(ch["groups"][group]["last_delivered"]) < _sid(sid) and sid not in ch["groups"][group]["pending"]
    assert stack.change_asset_events([sid]) == {}
    assert stack.notice_rows(code) == []

    stack.start("triggerer")
    wait(stack, "the change event taken from the stream after the triggerer restarted",
          lambda: sid in stack.change_asset_events([sid]))
    _written_notices(stack, code, "notices after the triggerer restarted")
    _assert_exact_notices(stack, code, born, today)
    after = stack.change_stream("registry")["groups"][group]
    assert _sid(after["last_delivered"]) >= _sid(sid) and sid not in after["pending"]  # taken and acknowledged


def test_a_burst_of_twenty_changes_all_reach_the_outbox(stack):
    births = []
    for _ in range(20):
        births.append(_birth(stack))
        stack.export_and_publish("registry")
    for i, (code, _, _) in enumerate(births):
        _written_notices(stack, code, f"notices for child {i + 1} of 20")
    for code, born, today in births:
        _assert_exact_notices(stack, code, born, today)


def test_duplicate_events_give_one_notice_per_idempotency_key(stack):
    code, born, today = _birth(stack)
    stack.export_and_publish("registry", times=5)
    sids = [sid for _, sid in stack.published[-5:]]
    assert len(set(sids)) == 5
    _written_notices(stack, code, "notices for the child")

    def at_rest() -> bool:
        # The triggerer made an asset event of every duplicate, and nothing they set off (ingest,
        # then link, services, relay, delivery) is still queued — as a run or in
        # asset_dag_run_queue — or running. An event that arrives while its DAG is already queued
        # by an earlier one is absorbed (Airflow queues a DAG once and its run consumes the
        # events up to the queueing time): no run consumes it, and none is still to come.
        events = stack.change_asset_events(sids)
        return len(events) == 5 and not stack.unfinished_runs()

    wait(stack, "the five duplicates' runs, and all they set off, to finish", at_rest,
          lambda: f"asset events {stack.change_asset_events(sids)}, unfinished {stack.unfinished_runs()}")
    assert stack.change_asset_events(sids[:1])[sids[0]]["consumed_by"], "the first event triggered no run"
    ids = {r["notice_id"] for r in _assert_exact_notices(stack, code, born, today)}
    on_stream = stack.stream_notice_ids()
    assert sorted(n for n in on_stream if n in ids) == sorted(ids), "a child's notice is missing from the stream or on it twice"
    assert len(on_stream) == len(set(on_stream)), "a notice was published to the stream twice"


@pytest.fixture(scope="module")
def guardian_child(stack):
    """A newborn whose household adult has a verified test e-mail, registered and announced;
    (address, code, born, today) once the child's notices are in the outbox."""
    address = f"guardian-{stack.tag}@example.test"  # a test contact, no real person
    code, born, today = _birth(stack, guardian_email=address)
    stack.export_and_publish("registry")
    _written_notices(stack, code, "notices for the guardian's child")
    return address, code, born, today


def test_deliver_notices_sends_each_notice_once_over_starttls_with_auth(stack, smtp, guardian_child):
    address, code, born, today = guardian_child
    rows = {r["notice_id"]: r for r in _assert_exact_notices(stack, code, born, today)}

    def delivered() -> bool:
        if failed := stack.failed_runs("deliver_notices"):  # e.g. the SMTP settings: no use waiting
            pytest.fail(f"deliver_notices runs failed: {failed}; task logs under {stack.base}/work/airflow/logs")
        return len(smtp.to(address)) >= len(rows)

    wait(stack, "the child's notices in the guardian's mailbox", delivered)

    for _ in range(2):  # the DAG runs twice more: nothing is sent again
        run_id = stack.trigger("deliver_notices")
        assert _finished(stack, "deliver_notices", run_id) == "success"

    got = smtp.to(address)
    assert sorted(m["msg"]["X-Renkei-Notice"] for m in got) == sorted(rows), "not one message per notice"
    for m in got:
        n = rows[m["msg"]["X-Renkei-Notice"]]
        msg = m["msg"]
        assert (m["rcpt"], m["tls"], m["login"], m["mail_from"]) == ([address], True, SMTP_USER, SMTP_SENDER)
        assert msg["To"] == address and msg["Message-ID"] == f"<{n['notice_id']}@city.kitakyushu.example>"
        assert msg["Subject"] == SUBJECTS[(n["subject"], n["dose_number"])]
        body = msg.get_content()
        assert f"接種できる期間：{jdate(n['window_start'])}から{jdate(n['window_end'])}まで" in body
        assert born.isoformat() not in body and jdate(born) not in body  # no linked facts
    receipts = [(r["notice_id"], r["attempt"], r["status"], r["reason"], r["channel"]) for r in stack.receipts(rows)]
    assert receipts == sorted((nid, 1, "sent", None, "email") for nid in rows)
    assert smtp.logins and all(ok and login == SMTP_USER for _, login, ok in smtp.logins)


@pytest.mark.parametrize("case, change, error, says", [
    ("a wrong password", {"RENKEI_SMTP_PASSWORD": "not-the-password"}, "ChannelSetupError",
     "refused the login (535): check RENKEI_SMTP_USER / RENKEI_SMTP_PASSWORD"),
    ("no AUTH", {"RENKEI_SMTP_USER": None, "RENKEI_SMTP_PASSWORD": None}, "ChannelSetupError",
     "refuses mail before STARTTLS or authentication (530); no login is configured"),
    ("no STARTTLS", {"RENKEI_SMTP_STARTTLS": "false", "RENKEI_SMTP_USER": None, "RENKEI_SMTP_PASSWORD": None,
                     "RENKEI_SMTP_CA_FILE": None}, "ChannelSetupError",
     "refuses mail before STARTTLS or authentication (530); STARTTLS is off"),
    ("credentials without STARTTLS", {"RENKEI_SMTP_STARTTLS": "false", "RENKEI_SMTP_CA_FILE": None}, "ConfigError",
     "the password would cross the network in clear"),
    ("an untrusted certificate", {"RENKEI_SMTP_CA_FILE": None}, "ChannelSetupError",
     "its TLS certificate is not trusted"),
])
def test_delivery_without_auth_tls_or_the_right_password_fails_clearly(stack, own_smtp, guardian_child, tmp_path,
                                                                       monkeypatch, case, change, error, says):
    """The DAG's entry point (deliver_from_env) with the stack's settings but one: it stops with an
    error naming the setting to fix, sends nothing, spends no attempt, and names no recipient."""
    from renkei.delivery.deliver import deliver_from_env
    from renkei.errors import RenkeiError

    smtp = own_smtp
    delivery_db = tmp_path / "delivery.db"
    for name, value in stack.env.items():
        if name.startswith("RENKEI_"):
            monkeypatch.setenv(name, value)
    for name, value in smtp.env.items():  # this test's server, with the stack's other settings
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RENKEI_DELIVERY_URL", f"sqlite:///{delivery_db}")  # not the stack's receipts
    for name, value in change.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(RenkeiError) as raised:
        deliver_from_env(dt.datetime.now(dt.timezone.utc))
    text = str(raised.value)
    assert type(raised.value).__name__ == error and says in text, f"{case}: {type(raised.value).__name__}: {text}"
    assert "@" not in text and smtp.password not in text and "not-the-password" not in text
    assert smtp.messages == [], f"{case}: a message was accepted"
    if delivery_db.exists():
        import sqlalchemy as sa

        eng = sa.create_engine(f"sqlite:///{delivery_db}")
        with eng.connect() as conn:
            spent = conn.execute(sa.text("SELECT count(*) FROM delivery_receipts WHERE status IN ('sent', 'failed')")).scalar()
        eng.dispose()
        assert spent == 0, f"{case}: {spent} sent/failed receipts"
