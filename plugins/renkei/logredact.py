"""Masking personal data in log records: resident codes and other long numbers, phone numbers,
e-mail addresses, name-like runs of kana/kanji.

A last line of defence: Renkei's own messages never quote a value, but a driver error, a
library warning or a careless f-string can. The filter renders each record's message (msg %
args) and its exception text, masks what looks personal, and hands on a record without args,
so no handler sees the raw value.

What is masked (ASCII and full-width digits alike):

- e-mail addresses → ``[email]``;
- phone numbers in Japanese formats → ``[phone]``: 10 or 11 digits starting with 0 in two or
  three groups joined by a hyphen or dash (``- ‐ ‑ ‒ – — ― − ー ｰ －``, spaces around it
  allowed) or one space, or with the area code in parentheses: 090-1234-5678, 093-582-2111,
  0120-123-456, (093)582-2111, 093(582)2111, ０９０ー１２３４ー５６７８, and from abroad
  +81-90-1234-5678, +81 (0)93 582 2111;
- a bare run of 11 digits → ``[resident_code]``; of 10, 12 or 13 digits (insurer numbers, My
  Number, household codes, an unhyphenated phone) → ``[code]``; so are digit groups joined by
  hyphens that add up to 10–13 digits (1234-5678-9012) and 1234 5678 9012;
- name-like runs of kana/kanji → ``[name]``: three or more kana/kanji in a row (ヤマダ, やまだ,
  ﾔﾏﾀﾞ), two or more letters with a kanji among them (山田, 花子), or two or more letters in
  parts joined by a space or ・ (林 花, 王 明). It masks more than it must (a ward name, a word
  like 予防接種) because a log line that lost a place name costs little.

Escaped text is looked through first: JSON ``\\uXXXX`` escapes (``json.dumps`` with its default
``ensure_ascii``) and UTF-8 bytes shown as ``\\xNN`` (a ``bytes`` repr) are decoded before
masking, so 山田 hidden as ``\\u5c71\\u7530`` is masked all the same.

What stays readable:

- digits glued to a letter or digit (hex ids such as ``0000…000a``, ``abc12345678901``; but a
  letter does not shield a phone number with separators: TEL090-1234-5678 is masked), runs of up
  to 9 or of 14+ digits, counts with thousands separators (1,234,567,890) and decimals (a float's
  integer or fractional part next to the ``.``; an ``_`` or ``=`` does not shield digits);
- UUIDs, ``vN.<base64url>`` tokens, ISO dates and timestamps (2025-06-01, 2025-06-01T09:00:00+09:00,
  2025-06-01 09:00:00,123), Redis stream ids (1717200000000-0: 14+ digits in all), era dates
  (令和5年8月22日, 平成元年);
- a local number without its area code (582-2111: seven digits say too little to be sure);
- a single kana or kanji (年, 月, 件) and two kana in a row without a separator (です — and so a
  two-kana reading such as ユキ on its own);
- everything ASCII other than the above: Renkei's messages, ``dept:nhi``, source, table and
  DAG names, run ids (``manual__2025-06-01T09:00:00+00:00``).

The price: a bare number of 10–13 digits is masked whatever it counts — an epoch timestamp in
seconds or milliseconds, a ``change_seq`` past a billion.

Install on handlers, not only on loggers: a logger's filters never see the records of its
child loggers (``renkei.ingest`` propagating to ``renkei``), a handler's filters see all.
"""

from __future__ import annotations

import logging
import re

__all__ = ["CODE", "EMAIL", "NAME", "PHONE", "RESIDENT_CODE", "RedactingFilter", "install", "redact"]

RESIDENT_CODE = "[resident_code]"
CODE = "[code]"
PHONE = "[phone]"
EMAIL = "[email]"
NAME = "[name]"

# -- escapes -------------------------------------------------------------------------------------

_U_ESCAPES = re.compile(r"(?:\\u[0-9a-fA-F]{4})+")
_X_ESCAPES = re.compile(r"(?:\\x[0-9a-fA-F]{2})+")


def _decode_u(match: re.Match) -> str:
    units = [int(h, 16) for h in match.group(0).split("\\u")[1:]]
    raw = "".join(map(chr, units)).encode("utf-16-le", "surrogatepass")
    text = raw.decode("utf-16-le", "replace")
    # Only characters that carry letters or digits worth masking; ASCII escapes (\u0022) stay.
    return text if all(ord(ch) >= 0x80 for ch in text) else match.group(0)


def _decode_x(match: re.Match) -> str:
    raw = bytes(int(h, 16) for h in match.group(0).split("\\x")[1:])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return match.group(0)
    return text if all(ord(ch) >= 0x80 for ch in text) else match.group(0)


# -- numbers ---------------------------------------------------------------------------------------

_D = "[0-9\uff10-\uff19]"  # ASCII or full-width digit
_ALNUM = "0-9A-Za-z\uff10-\uff19\uff21-\uff3a\uff41-\uff5a"
_DASH = "[-\u2010-\u2015\u2212\u30fc\uff0d\uff70\ufe63]"  # hyphens, dashes, minus, ー, －, ｰ
_SP = "[ \u3000]"
_GAP = f"(?:{_SP}?{_DASH}{_SP}?|{_SP})"  # between the groups of a phone number
_OPEN, _CLOSE = "[(\uff08]", "[)\uff09]"
_HEX = "[0-9a-fA-F]"

_NUMBERS = re.compile(
    # Kept as they are (tried first, so their digits are never taken for a code):
    rf"(?P<keep>(?<![{_ALNUM}]){_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}(?![{_ALNUM}])"  # UUID
    r"|(?<![0-9A-Za-z_])v[0-9]{1,3}\.[A-Za-z0-9_\-]{16,}"  # a vN.<base64url> token
    r"|\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?(?![0-9])"  # ISO
    rf")"
    # Phone numbers: 0 and 1–4 digits (or +81 and 1–4), then 1–4 and 3–4, or one group of 5–8.
    rf"|(?P<phone>(?<![0-9\uff10-\uff19])(?<!{_D}{_DASH})(?<!{_D}[.,])"  # a letter before is fine: TEL090-…
    rf"(?:(?:[+\uff0b](?:81|\uff18\uff11){_GAP}?(?:{_OPEN}[0０]{_CLOSE}{_SP}?)?|[0０])"
    rf"(?:{_D}{{1,4}}{_GAP}{_D}{{1,4}}{_GAP}|{_D}{{1,4}}{_OPEN}{_D}{{1,4}}{_CLOSE}{_SP}?){_D}{{3,4}}"
    rf"|(?:[+\uff0b](?:81|\uff18\uff11){_GAP}?|[0０]){_D}{{1,4}}{_GAP}{_D}{{5,8}}"
    rf"|{_OPEN}[0０]{_D}{{1,4}}{_CLOSE}{_SP}?{_D}{{1,4}}{_GAP}?{_D}{{3,4}}"
    rf")(?![{_ALNUM}]|[.,]{_D}|{_DASH}{_D}))"
    # Codes: a maximal chain of digit groups joined by single dashes (a bare run is a chain of one).
    rf"|(?P<code>(?<![{_ALNUM}])(?<!{_D}{_DASH})(?<!{_D}[.,])"
    rf"(?:{_D}{{4}}{_SP}{_D}{{4}}{_SP}{_D}{{4}}|{_D}++(?:{_DASH}{_D}++)*+)"
    rf"(?![{_ALNUM}]|[.,]{_D}))"
)
_DIGIT = re.compile(_D)
_TRUNK = re.compile(f"{_OPEN}[0０]{_CLOSE}")


def _mask_number(match: re.Match) -> str:
    text = match.group(0)
    if match.lastgroup == "keep":
        return text
    digits = len(_DIGIT.findall(text))
    if match.lastgroup == "phone":
        if text[0] in "+\uff0b":  # +81: the national number without its trunk 0
            national = digits - 2 - len(_TRUNK.findall(text))
            if national in (9, 10):
                return PHONE
        elif digits in (10, 11):
            return PHONE
    if not 10 <= digits <= 13:
        return text
    return RESIDENT_CODE if digits == 11 and len(text) == 11 else CODE


# -- e-mail addresses --------------------------------------------------------------------------------

# Starts only where a local part starts, and never gives back: linear on a long run of digits.
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]++@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")

# -- names -------------------------------------------------------------------------------------------

_KANA = (
    "\u3041-\u3096\u3099-\u309f"  # hiragana, (combining) voicing marks, ゝゞ
    "\u30a1-\u30fa\u30fc-\u30ff"  # katakana, the long vowel mark, ヽヾ
    "\u31f0-\u31ff"  # small katakana extensions
    "\uff66-\uff9f"  # half-width katakana and voicing marks
)
_KANJI = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f々〆〇"  # with 外字 such as 𠮷
_JP = _KANA + _KANJI
_SEPARATORS = " \u3000・･"
_ERA = "(?:明治|大正|昭和|平成|令和)"
# An era date is kept; otherwise a run of kana/kanji, maybe in parts joined by up to two spaces or
# one ・ (family and given name).
_NAMES = re.compile(
    rf"(?P<keep>{_ERA}(?:{_D}{{1,2}}|元)年(?:{_D}{{1,2}}月(?:{_D}{{1,2}}日)?)?)"
    rf"|[{_JP}]+(?:(?:[ \u3000]{{1,2}}|[・･])[{_JP}]+)*"
)
_IS_KANJI = re.compile(f"[{_KANJI}]")
MIN_RUN = 3  # letters in a run of kana
MIN_KANJI_RUN = 2  # letters in a run that holds a kanji ("山田")
MIN_SPACED = 2  # letters in parts joined by a separator ("林 花")


def _mask_run(match: re.Match) -> str:
    text = match.group(0)
    if match.lastgroup == "keep":
        return text
    letters = sum(1 for ch in text if ch not in _SEPARATORS)
    spaced = letters != len(text)
    if letters >= MIN_RUN or (spaced and letters >= MIN_SPACED) or (letters >= MIN_KANJI_RUN and _IS_KANJI.search(text)):
        return NAME
    return text


def redact(text: str) -> str:
    """``text`` with e-mail addresses, phone numbers, long numbers and name-like runs masked."""
    if "\\" in text:
        text = _U_ESCAPES.sub(_decode_u, text)
        text = _X_ESCAPES.sub(_decode_x, text)
    text = _EMAIL.sub(EMAIL, text)
    text = _NUMBERS.sub(_mask_number, text)
    return _NAMES.sub(_mask_run, text)


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
