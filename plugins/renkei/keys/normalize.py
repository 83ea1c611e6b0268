"""Normalisation of names and addresses before they are digested.

Two departments' copies of the same name or address must digest equal, so each copy is first
brought to one canonical spelling: NFKC (full-width ASCII and half-width katakana folded),
hiragana to katakana, one half-width space between family and given name, the city and
prefecture prefix dropped from addresses and 丁目/番地/番/号 written as hyphens.
"""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")
_HIRAGANA_TO_KATAKANA = {c: c + 0x60 for c in range(0x3041, 0x3097)}
_DASHES = re.compile(r"[‐‑‒–—―−ｰー－-]")
_KANJI_VALUES = {c: i for i, c in enumerate("〇一二三四五六七八九")}
# Kanji numerals only where they number a block (三丁目, 十五番, 七号); 八幡 stays 八幡.
_KANJI_NUMBER = re.compile(r"([〇一二三四五六七八九十]+)(?=丁目|番|号)")


def _kanji_to_int(text: str) -> str:
    if "十" not in text:
        return "".join(str(_KANJI_VALUES[c]) for c in text)
    tens, _, ones = text.partition("十")
    return str((_KANJI_VALUES[tens] if tens else 1) * 10 + (_KANJI_VALUES[ones] if ones else 0))
_PREFIXES = ("福岡県", "北九州市")


def normalize_name(value: str | None) -> str | None:
    """Canonical reading: NFKC, katakana, single spaces; None for an empty reading."""
    if value is None:
        return None
    text = unicodedata.normalize("NFKC", value).translate(_HIRAGANA_TO_KATAKANA)
    text = _SPACES.sub(" ", text).strip()
    return text or None


def normalize_address(value: str | None) -> str | None:
    """Canonical address: NFKC, no prefecture/city prefix, block numbers as hyphens."""
    if value is None:
        return None
    text = _SPACES.sub("", unicodedata.normalize("NFKC", value))
    for prefix in _PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix):]
    text = _KANJI_NUMBER.sub(lambda m: _kanji_to_int(m.group(1)), text)
    text = re.sub(r"(\d+)丁目", r"\1-", text)
    text = re.sub(r"(\d+)番地?", r"\1-", text)
    text = re.sub(r"(\d+)号", r"\1", text)
    text = _DASHES.sub("-", text).strip("-")
    text = re.sub(r"-+", "-", text)
    return text or None
