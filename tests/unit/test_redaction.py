"""The log redaction filter (renkei.logredact): what it masks, what it leaves, where it applies."""

from __future__ import annotations

import io
import logging

import pytest
import structlog

from renkei.logredact import CODE, EMAIL, NAME, PHONE, RESIDENT_CODE, RedactingFilter, install, redact


@pytest.mark.parametrize(("text", "expected"), [
    ("opened 12345678901 for row 3", f"opened {RESIDENT_CODE} for row 3"),
    ("code=１２３４５６７８９０１", f"code={RESIDENT_CODE}"),
    ("write to hanako.yamada+city@example.co.jp now", f"write to {EMAIL} now"),
    ("name ヤマダ ハナコ differs", f"name {NAME} differs"),
    ("name ﾔﾏﾀﾞ ﾊﾅｺ differs", f"name {NAME} differs"),
    ("kanji 山田　花子 and 髙橋 一郎", f"kanji {NAME} and {NAME}"),
    ("𠮷田太郎 was here", f"{NAME} was here"),
    ("reading ヤマダハナコ", f"reading {NAME}"),
    # Issue #14 item 5: phone numbers, 10–13 digit codes, short names and readings.
    ("call 090-1234-5678 or 093-582-2111", f"call {PHONE} or {PHONE}"),
    ("free 0120-123-456, office (093)582-2111 / 093(582)2111", f"free {PHONE}, office {PHONE} / {PHONE}"),
    ("tel ０９０ー１２３４ー５６７８ fax ０９３－５８２‐２１１１", f"tel {PHONE} fax {PHONE}"),
    ("intl +81-90-1234-5678 and 090 1234 5678", f"intl {PHONE} and {PHONE}"),
    ("run 1234567890 and 123456789012", f"run {CODE} and {CODE}"),  # was: left as is (10/12 digits)
    ("my number 1234 5678 9012, household 1234-5678-90, 1234567890123", f"my number {CODE}, household {CODE}, {CODE}"),
    ("ward 401064 小倉 at 令和5年8月22日", f"ward 401064 {NAME} at 令和5年8月22日"),  # was: 小倉 left (a surname too)
    ("names 山田, 林 花 and 王・明", f"names {NAME}, {NAME} and {NAME}"),
    ("reading ヤマダ / やまだ / ﾔﾏﾀﾞ", f"reading {NAME} / {NAME} / {NAME}"),
    ('{"name": "\\u5c71\\u7530 \\u592a\\u90ce"}', f'{{"name": "{NAME}"}}'),  # json.dumps, ensure_ascii
    ("data b'\\xe5\\xb1\\xb1\\xe7\\x94\\xb0'", f"data b'{NAME}'"),  # a bytes repr
])
def test_masks_personal_data(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    "load immunization: 115 loaded, 5 quarantined, watermark 2025-05-01T09:00:00+09:00",
    "load immunization: 115 loaded (2 staged rows retired by tombstones), 5 quarantined (117 pseudonyms converted "
    "in 0.1s), watermark change_seq 1260",
    "extract immunization: 12 changes after change_seq 1248 (1 tombstones), 0 failing its suite (0.0s in the suite)",
    "erk v1.AbC12345678901xYz and notice 0000000000000000000000000000000a",  # tokens and ids stay
    "ward 401064 at 令和5年8月22日 (平成元年), 3件",  # era dates and single kanji stay
    "ids 6f1c2a3b-1234-4d5e-8f90-123456789012 and 1717200000000-0, at 2025-06-01 09:00:00,123",
    "run manual__2025-06-01T09:00:00.123456+00:00: 1,234,567,890 rows in 1717200000.123456",
    "local 582-2111, 14 digits 12345678901234, key dept:nhi, erk v1.AbC-1234567890-xYz_0123456",
    "expect_column_values_to_be_in_set:vaccine_code",
])
def test_leaves_operational_text(text):
    assert redact(text) == text


def _logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_filter_masks_args_of_any_type_and_exception_text():
    logger, stream = _logger("renkei.test_redaction.filter")
    logger.handlers[0].addFilter(RedactingFilter())
    logger.info("resident %s (%d) mail %s", "ヤマダ タロウ", 12345678901, "a@b.jp")
    try:
        raise ValueError("duplicate key (resident_code)=(98765432109)")
    except ValueError:
        logger.exception("insert failed for %s", "山田 太郎")
    out = stream.getvalue()
    assert "12345678901" not in out and "98765432109" not in out and "a@b.jp" not in out
    assert "ヤマダ" not in out and "山田" not in out
    assert f"resident {NAME} ({RESIDENT_CODE}) mail {EMAIL}" in out
    assert "ValueError" in out and "Traceback" in out  # the exception stays, only masked


def test_install_covers_child_loggers_through_the_handlers():
    parent, stream = _logger("renkei.test_redaction.install")
    parent.propagate = False
    child = logging.getLogger("renkei.test_redaction.install.ingest")
    first = install(("renkei.test_redaction.install",), include_root=False)
    again = install(("renkei.test_redaction.install",), include_root=False)
    assert first is again
    assert sum(isinstance(f, RedactingFilter) for f in parent.handlers[0].filters) == 1
    child.warning("bad row for %s", "12345678901")
    assert stream.getvalue().strip() == f"renkei.test_redaction.install.ingest bad row for {RESIDENT_CODE}"


def test_a_broken_format_string_is_still_logged_masked():
    logger, stream = _logger("renkei.test_redaction.broken")
    logger.handlers[0].addFilter(RedactingFilter())
    logger.info("code %s %s", "12345678901")  # one argument short
    assert "12345678901" not in stream.getvalue() and RESIDENT_CODE in stream.getvalue()


# -- renkei.logsetup: the structlog processor and where it is installed ----------------------

def test_redact_event_masks_every_value_and_a_console_traceback():
    from renkei.logsetup import redact_event

    try:
        raise ValueError("duplicate key (resident_code)=(98765432109)")
    except ValueError as exc:
        event = redact_event(None, "error", {
            "event": "insert failed for 山田 太郎", "row": {"code": 12345678901, "mail": ["a@b.jp"]},
            "count": 3, "exc_info": exc,
        })
    assert event["event"] == f"insert failed for {NAME}"
    assert event["row"] == {"code": RESIDENT_CODE, "mail": [EMAIL]} and event["count"] == 3
    assert "exc_info" not in event and "Traceback" in event["exception"]
    assert "98765432109" not in event["exception"] and RESIDENT_CODE in event["exception"]


def test_redact_event_masks_a_json_traceback_dict():
    from renkei.logsetup import redact_event

    event = redact_event(None, "error", {"event": "Task failed with exception", "exception": [
        {"exc_type": "RenkeiError", "exc_value": "bad row 98765432109", "frames": [{"lineno": 3}]}]})
    assert event["exception"][0]["exc_value"] == f"bad row {RESIDENT_CODE}"
    assert event["exception"][0]["frames"] == [{"lineno": 3}]


def test_install_puts_the_processor_into_a_live_structlog_chain_once():
    from renkei.logsetup import install, redact_event

    saved = structlog.get_config()
    out = io.StringIO()
    try:
        structlog.configure(processors=[structlog.processors.KeyValueRenderer(key_order=["event"])],
                            logger_factory=structlog.PrintLoggerFactory(out), cache_logger_on_first_use=True)
        cached = structlog.get_logger("renkei.test_redaction.sl")
        cached.info("before 12345678901")  # cached on first use, before install
        install()
        install()
        assert structlog.get_config()["processors"].count(redact_event) == 1
        cached.info("after 12345678902", mail="a@b.jp")
        lines = out.getvalue().splitlines()
        assert "12345678901" in lines[0]  # the control: unmasked without the processor
        assert "12345678902" not in lines[1] and RESIDENT_CODE in lines[1] and EMAIL in lines[1]
    finally:
        structlog.configure(**{k: v for k, v in saved.items() if k in (
            "processors", "logger_factory", "wrapper_class", "context_class", "cache_logger_on_first_use")})


def test_airflow_logging_config_is_airflows_default_and_hooks_the_processor():
    from airflow.config_templates.airflow_local_settings import DEFAULT_LOGGING_CONFIG

    import renkei.logsetup as logsetup

    assert logsetup.LOGGING_CONFIG == DEFAULT_LOGGING_CONFIG and logsetup.LOGGING_CONFIG is not DEFAULT_LOGGING_CONFIG
    assert logsetup.REMOTE_TASK_LOG.processors == (logsetup.redact_event,)
    assert logsetup.REMOTE_TASK_LOG.read("x.log", None) == ([], [])  # nothing remote: the UI reads the local file
    module, attr = logsetup.AIRFLOW_ENV["AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS"].rsplit(".", 1)
    assert module == logsetup.__name__ and attr == "LOGGING_CONFIG"


def test_the_cli_installs_it_at_startup():
    """`renkei …` (cli.main) installs the masking before it parses: warnings reach stderr masked."""
    import subprocess
    import sys

    code = ("import logging\nfrom renkei import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "logging.getLogger('renkei.x.y').warning('row %s failed', '12345678901')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stderr.strip().splitlines()[-1] == f"row {RESIDENT_CODE} failed"
