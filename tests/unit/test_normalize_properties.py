"""Properties of normalisation: every equivalent spelling of a name or address digests equal,
and two different canonical values never do.

A name is drawn as a model (words of kana units, each maybe long) whose canonical spelling the
model states itself; an address as (ward, town, block numbers). Each is then written the many
ways departments write it, and normalised.
"""

from __future__ import annotations

import unicodedata

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from renkei.keys.normalize import normalize_address, normalize_name
from renkei.keys.ring import KeyRing

RING = KeyRing.generate()
SETTINGS = settings(max_examples=200, deadline=None)

VOWEL_ROWS = {
    "a": "アカガサザタダナハバパマヤラワ",
    "i": "イキギシジチヂニヒビピミリ",
    "u": "ウクグスズツヅヌフブプムユルヴ",
    "e": "エケゲセゼテデネヘベペメレ",
    "o": "オコゴソゾトドノホボポモヨロ",
}
VOWEL_OF = {k: v for v, row in VOWEL_ROWS.items() for k in row}
LENGTHENER = {"a": "ア", "i": "イ", "u": "ウ", "e": "イ", "o": "ウ"}
LENGTHENS = {"a": "ア", "i": "イ", "u": "ウ", "e": "イエ", "o": "ウオ"}
SMALL = dict(zip("アイウエオツヤユヨ", "ァィゥェォッャュョ"))
# Two-kana units whose second kana may be written small (canonical: large).
PAIRS = ["シヤ", "シユ", "シヨ", "チヤ", "チユ", "チヨ", "キヤ", "キユ", "キヨ", "ジヤ", "ジユ", "ジヨ",
         "リヨ", "ニヤ", "フア", "フイ", "フエ", "フオ", "ウイ", "ウエ", "ウオ", "シエ", "チエ"]
UNITS = [(k, VOWEL_OF[k]) for k in VOWEL_OF] + [(p, VOWEL_OF[p[1]]) for p in PAIRS] + [("ン", None)]


def _halfwidth() -> dict[str, str]:
    table: dict[str, str] = {}
    for cp in range(0xFF65, 0xFFA0):
        for tail in ("", "ﾞ", "ﾟ"):
            full = unicodedata.normalize("NFKC", chr(cp) + tail)
            if len(full) == 1:
                table.setdefault(full, chr(cp) + tail)
    return table


HALF = _halfwidth()


@st.composite
def kana_char(draw, kana: str) -> str:
    forms = [kana, chr(ord(kana) - 0x60)] + ([HALF[kana]] if kana in HALF else [])
    return draw(st.sampled_from(forms))


Unit = tuple[str, "str | None", bool]  # (canonical kana, its vowel, long)


@st.composite
def word_model(draw) -> list[Unit]:
    """Kana units of one word; a unit never starts with a vowel that would lengthen the last one."""
    units: list[Unit] = []
    vowel: str | None = None
    for _ in range(draw(st.integers(1, 5))):
        allowed = [u for u in UNITS if vowel is None or u[0][0] not in LENGTHENS[vowel]]
        kana, vowel = draw(st.sampled_from(allowed))
        units.append((kana, vowel, vowel is not None and draw(st.booleans())))
    return units


def canonical_word(units: list[Unit]) -> str:
    return "".join(kana + (LENGTHENER[vowel] if long else "") for kana, vowel, long in units)


@st.composite
def spell_word(draw, units: list[Unit]) -> str:
    out = []
    for kana, vowel, long in units:
        for i, k in enumerate(kana):
            small = i > 0 and k in SMALL and draw(st.booleans())
            out.append(draw(kana_char(SMALL[k] if small else k)))
        if kana == "ツ" and draw(st.booleans()):
            out[-1] = draw(kana_char("ッ"))
        if long:
            marks = ["ー", "ｰ", "－", "‐", "-"] + [draw(kana_char(k)) for k in LENGTHENS[vowel]]
            out.append(draw(st.sampled_from(marks)))
    return "".join(out)


name_model = st.tuples(word_model(), word_model())


def canonical_name(model) -> str:
    return " ".join(canonical_word(w) for w in model)


@st.composite
def spell_name(draw, model) -> str:
    sep = draw(st.sampled_from([" ", "\u3000", "  ", " \u3000", "・"]))
    pad = draw(st.sampled_from(["", " ", "\u3000"]))
    return f"{pad}{draw(spell_word(model[0]))}{sep}{draw(spell_word(model[1]))}{pad}"


WARDS = ["門司区", "若松区", "戸畑区", "小倉北区", "小倉南区", "八幡東区", "八幡西区"]
# (canonical town, its spellings, whether it has 丁目)
TOWNS = [("城内", ["城内"], False), ("黒崎", ["黒崎"], True), ("中央", ["中央"], True),
         ("大里", ["大里"], False), ("霧ケ丘", ["霧ケ丘", "霧ヶ丘", "霧が丘"], True),
         ("杉ノ木", ["杉ノ木", "杉の木", "杉之木"], False)]
KANJI = "〇一二三四五六七八九"


def _kanji_units(n: int) -> str:
    out = ""
    for value, unit in ((1000, "千"), (100, "百"), (10, "十")):
        d, n = divmod(n, value)
        out += ("" if d == 1 else KANJI[d]) + unit if d else ""
    return out + (KANJI[n] if n else "")


@st.composite
def number(draw, n: int, kanji_ok: bool) -> str:
    forms = [str(n), str(n).translate(str.maketrans("0123456789", "０１２３４５６７８９"))]
    if kanji_ok:
        forms += [_kanji_units(n), "".join(KANJI[int(d)] for d in str(n))]
    return draw(st.sampled_from(forms))


@st.composite
def address_model(draw) -> tuple[str, int, tuple[int, ...]]:
    """(ward, town index, block numbers): a town with 丁目 always has the 丁目 first."""
    town = draw(st.integers(0, len(TOWNS) - 1))
    nums = ([draw(st.integers(1, 9))] if TOWNS[town][2] else []) + [draw(st.integers(1, 999))]
    nums += [draw(st.integers(1, 99))] if draw(st.booleans()) else []
    return draw(st.sampled_from(WARDS)), town, tuple(nums)


def canonical_address(model) -> str:
    ward, town, nums = model
    return f"{ward}{TOWNS[town][0]}{'-'.join(map(str, nums))}"


@st.composite
def spell_address(draw, model) -> str:
    ward, town, nums = model
    _, spellings, chome = TOWNS[town]
    gap = st.sampled_from(["", "", " ", "\u3000"])
    text = draw(st.sampled_from(["", "北九州市", "福岡県北九州市", "福岡県 北九州市"])) + draw(gap)
    text += ward + draw(gap) + draw(st.sampled_from(spellings)) + draw(gap)
    prev_sep = ""
    for i, n in enumerate(nums):
        last = i == len(nums) - 1
        if last:
            sep = draw(st.sampled_from(["", "号"] if len(nums) > 1 else ["", "番", "番地"]))
        elif chome and i == 0:
            sep = draw(st.sampled_from(["丁目", "-", "－", "ー"]))
        else:
            sep = draw(st.sampled_from(["番", "番地", "番地の", "-", "の", "‐"]))
        # Kanji numerals are read only where they number a block (see normalize.py).
        kanji_ok = sep in ("丁目", "番", "番地", "番地の", "号") or (last and prev_sep == "番地の")
        text += draw(number(n, kanji_ok)) + sep
        prev_sep = sep
    return text


@SETTINGS
@given(st.data())
def test_equivalent_name_spellings_normalise_to_the_canonical_reading(data):
    model = data.draw(name_model)
    assert normalize_name(data.draw(spell_name(model))) == canonical_name(model)


@SETTINGS
@given(st.data())
def test_two_spellings_of_one_name_digest_equal(data):
    model = data.draw(name_model)
    first, second = data.draw(spell_name(model)), data.draw(spell_name(model))
    assert RING.digest(normalize_name(first)) == RING.digest(normalize_name(second))


@SETTINGS
@given(st.data())
def test_different_names_digest_differently(data):
    a, b = data.draw(name_model), data.draw(name_model)
    assume(canonical_name(a) != canonical_name(b))
    first, second = data.draw(spell_name(a)), data.draw(spell_name(b))
    assert RING.digest(normalize_name(first)) != RING.digest(normalize_name(second))


@SETTINGS
@given(st.data())
def test_equivalent_address_spellings_normalise_to_the_canonical_address(data):
    model = data.draw(address_model())
    assert normalize_address(data.draw(spell_address(model))) == canonical_address(model)


@SETTINGS
@given(st.data())
def test_two_spellings_of_one_address_digest_equal(data):
    model = data.draw(address_model())
    first, second = data.draw(spell_address(model)), data.draw(spell_address(model))
    assert RING.digest(normalize_address(first)) == RING.digest(normalize_address(second))


@SETTINGS
@given(st.data())
def test_different_addresses_digest_differently(data):
    a, b = data.draw(address_model()), data.draw(address_model())
    assume(canonical_address(a) != canonical_address(b))
    first, second = data.draw(spell_address(a)), data.draw(spell_address(b))
    assert RING.digest(normalize_address(first)) != RING.digest(normalize_address(second))
