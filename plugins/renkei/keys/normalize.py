"""Normalisation of names and addresses before they are digested.

Two departments' copies of the same name or address must digest equal, so each copy is first
brought to one canonical spelling.

Names (the katakana reading): NFKC (half-width katakana → full-width, full-width space →
space), hiragana → katakana, ・ and = as spaces, one space between words, the iteration marks
ヽヾ written out, small kana as large (ァィゥェォッャュョヮヵヶ → アイウエオツヤユヨワカケ), and long
vowels written one way: a long-vowel mark (ー, or a dash standing for one: ｰ－‐-〜) and a vowel
kana that lengthens the kana before it (the same vowel; ウ or オ after an o-row kana; イ or エ
after an e-row kana) become the lengthening kana of that vowel — ア, イ, ウ, イ, ウ for a, i, u, e,
o — and a run of them counts once. So タロー, タロウ and タロオ are タロウ; ケーコ is ケイコ; a mark
with no kana vowel before it (word start, after ン) is dropped.

Addresses: NFKC, no whitespace, the prefecture/city prefix dropped, kanji numerals that number
a block (三丁目, 十五番, 七号, 番地の七; 一〇五 and 百五 alike) as digits, 丁目/番地/番/号/の and every
dash variant between numbers as one hyphen, ヶ/ケ/ヵ/が between kanji as ケ, の/ノ/之 between kanji
as ノ, ASCII letters upper-case.
"""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")
# ゝゞ are hiragana too: they become the katakana iteration marks ヽヾ.
_HIRAGANA_TO_KATAKANA = {c: c + 0x60 for c in (*range(0x3041, 0x3097), 0x309D, 0x309E)}
_SMALL_KANA = str.maketrans("ァィゥェォッャュョヮヵヶ", "アイウエオツヤユヨワカケ")
_NAME_SEPARATORS = str.maketrans({"・": " ", "=": " "})
_LONG_MARKS = str.maketrans({c: "ー" for c in "ｰ－‐‑‒–—―−-〜~"})
_VOWEL_ROWS = {
    "a": "アカガサザタダナハバパマヤラワ",
    "i": "イキギシジチヂニヒビピミリヰ",
    "u": "ウクグスズツヅヌフブプムユルヴ",
    "e": "エケゲセゼテデネヘベペメレヱ",
    "o": "オコゴソゾトドノホボポモヨロヲ",
}
_VOWEL_OF = {kana: v for v, row in _VOWEL_ROWS.items() for kana in row}
_LENGTHENER = {"a": "ア", "i": "イ", "u": "ウ", "e": "イ", "o": "ウ"}
# Which vowel kana lengthen a preceding kana of each vowel (現代仮名遣い: おう/おお, えい/ええ).
_LENGTHENS = {"a": "ア", "i": "イ", "u": "ウ", "e": "イエ", "o": "ウオ"}

_KANJI_DIGITS = {c: i for i, c in enumerate("〇一二三四五六七八九")}
_KANJI_UNITS = {"十": 10, "百": 100, "千": 1000}
_KANJI_RUN = "[〇一二三四五六七八九十百千]+"
# Kanji numerals only where they number a block (三丁目, 十五番, 七号, 番地の七); 八幡 stays 八幡.
_KANJI_BEFORE_UNIT = re.compile(rf"({_KANJI_RUN})(?=丁目|番|号)")
_KANJI_AFTER_SEPARATOR = re.compile(rf"(?<=[0-9番地目][-の])({_KANJI_RUN})(?=号|[-の]|$)")
_ADDRESS_DASHES = re.compile(r"[‐‑‒–—―−－-]|(?<=[0-9])[ーｰ]")
_KANJI = "[\u4e00-\u9fff々]"
_PREFIXES = ("福岡県", "北九州市")


def _kanji_to_int(text: str) -> str:
    """一〇五 (digit by digit) and 百五 / 二十三 (with units) as decimal digits."""
    if not any(c in _KANJI_UNITS for c in text):
        return "".join(str(_KANJI_DIGITS[c]) for c in text)
    total, digit = 0, None
    for c in text:
        if c in _KANJI_UNITS:
            total += (1 if digit is None else digit) * _KANJI_UNITS[c]
            digit = None
        else:
            digit = _KANJI_DIGITS[c]
    return str(total + (digit or 0))


def _expand_iteration_marks(text: str) -> str:
    out: list[str] = []
    for c in text:
        if c in "ヽヾ" and out and out[-1] in _VOWEL_OF:
            prev = unicodedata.normalize("NFD", out[-1])[0]
            out.append(unicodedata.normalize("NFC", prev + "\u3099") if c == "ヾ" else prev)
        else:
            out.append(c)
    return "".join(out)


def _fold_long_vowels(word: str) -> str:
    out: list[str] = []
    vowel: str | None = None  # the vowel of the last kana written
    lengthened = False  # whether that vowel has been lengthened already
    for c in word:
        if vowel is not None and (c == "ー" or c in _LENGTHENS[vowel]):
            if not lengthened:
                out.append(_LENGTHENER[vowel])
                lengthened = True
        elif c == "ー":
            continue  # nothing to lengthen
        else:
            out.append(c)
            vowel, lengthened = _VOWEL_OF.get(c), False
    return "".join(out)


def normalize_name(value: str | None) -> str | None:
    """Canonical reading (katakana, large kana, one long-vowel spelling, single spaces); None if empty."""
    if value is None:
        return None
    text = unicodedata.normalize("NFKC", value).translate(_HIRAGANA_TO_KATAKANA)
    text = text.translate(_NAME_SEPARATORS).translate(_LONG_MARKS)
    text = _expand_iteration_marks(text).translate(_SMALL_KANA)
    words = [_fold_long_vowels(w) for w in _SPACES.split(text)]
    return " ".join(w for w in words if w) or None


def normalize_address(value: str | None) -> str | None:
    """Canonical address: NFKC, no prefecture/city prefix, block numbers as hyphenated digits."""
    if value is None:
        return None
    text = _SPACES.sub("", unicodedata.normalize("NFKC", value)).upper()
    for prefix in _PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix):]
    text = _ADDRESS_DASHES.sub("-", text)
    text = _KANJI_BEFORE_UNIT.sub(lambda m: _kanji_to_int(m.group(1)), text)
    text = _KANJI_AFTER_SEPARATOR.sub(lambda m: _kanji_to_int(m.group(1)), text)
    text = re.sub(r"([0-9]+)丁目の?", r"\1-", text)
    text = re.sub(r"([0-9]+)番地?の?", r"\1-", text)
    text = re.sub(r"([0-9]+)号", r"\1", text)
    text = re.sub(r"(?<=[0-9])の(?=[0-9])", "-", text)
    text = re.sub(rf"(?<={_KANJI})[ヶケヵがガ](?={_KANJI})", "ケ", text)
    text = re.sub(rf"(?<={_KANJI})[のノ之](?={_KANJI})", "ノ", text)
    text = re.sub(r"-+", "-", text).strip("-")
    return text or None
