"""Where the log redaction of renkei.logredact applies: the CLI, and Airflow 3's task logs.

Airflow 3 task logs are written by structlog, not by stdlib handlers. In a task process the
root logger's one handler renders records through a structlog ``ProcessorFormatter`` that
builds the traceback from ``exc_info`` itself, structlog-native events (the task runner's
"Task failed with exception") never meet a stdlib filter, and the supervisor process that
writes the file re-renders every line (including the task's stdout/stderr). A stdlib
``logging.Filter`` alone therefore masks only the message of stdlib records; measured on
Airflow 3.3.2: tracebacks, structlog events and printed lines kept the raw values.

So masking happens as a structlog processor, :func:`redact_event`, in two places:

- **Airflow processes** — ``[logging] logging_config_class = renkei.logsetup.LOGGING_CONFIG``
  (env ``AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS``, see :data:`AIRFLOW_ENV`). The config is
  Airflow's default; the module's ``REMOTE_TASK_LOG`` is Airflow's documented hook for
  "structlog processors to install in the task write path": Airflow adds its processors to
  every task process (structlog events and stdlib records alike) and to the supervisor that
  writes the task log file. It stores nothing remotely (upload/read are no-ops, so the UI
  reads the local files as before).
- **A process that already runs** (the CLI; ``dag.test()`` in-process runs) — :func:`install`
  puts the processor into the live structlog configuration and the stdlib filter on the
  handlers, after logging is configured.
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
import sys
from typing import Any

from renkei.logredact import install as install_filter, redact

__all__ = ["AIRFLOW_ENV", "REMOTE_TASK_LOG", "install", "install_cli", "redact_event"]

AIRFLOW_ENV = {"AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS": "renkei.logsetup.LOGGING_CONFIG"}

_PLAIN = (bool, float, type(None), _dt.date, _dt.datetime, _dt.time, _dt.timedelta)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_scrub(v) for v in value)
    if isinstance(value, logging.LogRecord):  # ProcessorFormatter's own bookkeeping
        return value
    # An int or any object the renderer will str(): mask only if its text holds personal data.
    text = str(value)
    masked = redact(text)
    return value if masked == text else masked


def redact_event(logger: Any, method_name: str, event_dict: dict) -> dict:
    """structlog processor: personal data masked in every value, the traceback included.

    Goes right before the renderer. JSON chains have turned ``exc_info`` into a dict by then;
    for console chains the traceback is rendered here, so the renderer prints the masked text.
    """
    if event_dict.get("exc_info"):
        import structlog  # noqa: PLC0415 - only processes that log through structlog get here

        event_dict = structlog.processors.format_exc_info(logger, method_name, event_dict)
    return {k: _scrub(v) for k, v in event_dict.items()}


def _insert(processors: Any) -> bool:
    """Put redact_event just before the renderer (the last processor) of a live list."""
    if not isinstance(processors, list) or not processors or redact_event in processors:
        return False
    processors.insert(len(processors) - 1, redact_event)
    return True


def install() -> None:
    """Mask personal data in this process's logs from now on. Idempotent and cheap.

    Call after logging is configured (a later ``dictConfig`` or ``structlog.configure``
    replaces what this installed). Covers: the stdlib handlers of the root and ``renkei``
    loggers (filter), structlog-rendering handlers (processor in their formatter), and, when
    structlog is already in use, its live processor chain — loggers cached on first use share
    that list, so they are covered too.
    """
    install_filter()
    structlog = sys.modules.get("structlog")
    if structlog is None:
        return
    _insert(structlog.get_config()["processors"])
    for lg in (logging.getLogger(), logging.getLogger("renkei")):
        for handler in lg.handlers:
            if isinstance(handler.formatter, structlog.stdlib.ProcessorFormatter):
                _insert(handler.formatter.processors)


class _Stderr(logging.Handler):
    """Writes to whatever sys.stderr is at the time (like logging.lastResort)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001
            self.handleError(record)


def install_cli() -> None:
    """The CLI's logging: warnings to stderr as before (message only), masked."""
    root = logging.getLogger()
    if not root.handlers:  # a plain process; under pytest or Airflow, keep their handlers
        handler = _Stderr(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    install()


class TaskLogRedaction:
    """Airflow's task-log write hook (``REMOTE_TASK_LOG``): our processor, no remote store."""

    processors = (redact_event,)

    def upload(self, path: Any, ti: Any = None) -> None:
        return None

    def read(self, relative_path: str, ti: Any) -> tuple[list, list]:
        return [], []  # nothing remote: Airflow reads the local log file


REMOTE_TASK_LOG = TaskLogRedaction()


def __getattr__(name: str) -> Any:
    # Airflow's default logging config, built only when Airflow asks for it: importing this
    # module (the CLI does) must not import Airflow.
    if name == "LOGGING_CONFIG":
        from airflow.config_templates.airflow_local_settings import DEFAULT_LOGGING_CONFIG  # noqa: PLC0415

        return copy.deepcopy(DEFAULT_LOGGING_CONFIG)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
