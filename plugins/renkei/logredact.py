"""Masking personal data in log records: resident codes, e-mail addresses, name-like runs.

A last line of defence: Renkei's own messages never quote a value, but a driver error, a
library warning or a careless f-string can. The filter renders each record's message (msg %
args) and its exception text, masks what looks personal, and hands on a record without args,
so no handler sees the raw value. It masks more than it must (any run of four or more
kana/kanji, e.g. a ward name) because a log line that lost a place name costs little.

Install on handlers, not only on loggers: a logger's filters never see the records of its
child loggers (``renkei.ingest`` propagating to ``renkei``), a handler's filters see all.
"""

from __future__ import annotations

import logging
import re

__all__ = ["RedactingFilter", "redact", "install"]

RESIDENT_CODE = "[resident_code]"
EMAIL = "[email]"
NAME = "[name]"

# 11 digits (ASCII or full-width) not glued to other letters or digits: a hex id or a token
# that merely contains eleven digits in a row is not a resident code.
_CODE = re.compile(r"(?<![0-9A-Za-z０-９])[0-9０-９]{11}(?![0-9A-Za-z０-９])")
_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
_JP = (
    "\u3041-\u3096"  # hiragana
    "\u30a1-\u30fa\u30fc"  # katakana and the long vowel mark
    "\uff66-\uff9f"  # half-width katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"  # kanji, with 外字 such as 𠮷
    "々〆"
)
# A run of kana/kanji, optionally in parts separated by one space or ・ (family and given name).
_RUN = re.compile(f"[{_JP}]+(?:[ \u3000・][{_JP}]+)*")
MIN_RUN = 4  # letters in one unbroken run
MIN_SPACED = 3  # letters in a run with a separator ("山田 花" is already a name)


def _mask_run(match: re.Match) -> str:
    text = match.group(0)
    letters = sum(1 for ch in text if ch not in " \u3000・")
    spaced = letters != len(text)
    return NAME if letters >= MIN_RUN or (spaced and letters >= MIN_SPACED) else text


def redact(text: str) -> str:
    """``text`` with resident codes, e-mail addresses and name-like runs masked."""
    text = _EMAIL.sub(EMAIL, text)
    text = _CODE.sub(RESIDENT_CODE, text)
    return _RUN.sub(_mask_run, text)


class RedactingFilter(logging.Filter):
    """Masks personal data in a record's message, arguments and exception text; drops nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string must not lose the record
            message = f"{record.msg} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install(names: tuple[str, ...] = ("renkei",), include_root: bool = True) -> RedactingFilter:
    """Add one RedactingFilter to the named loggers and to their (and the root's) handlers.

    Idempotent. Handlers added later are not covered: call it after logging is configured.
    """
    loggers = [logging.getLogger(name) for name in names]
    if include_root:
        loggers.append(logging.getLogger())
    existing = next((f for lg in loggers for f in lg.filters if isinstance(f, RedactingFilter)), None)
    redactor = existing or RedactingFilter()
    for lg in loggers:
        for target in (lg, *lg.handlers):
            if not any(isinstance(f, RedactingFilter) for f in target.filters):
                target.addFilter(redactor)
    return redactor
