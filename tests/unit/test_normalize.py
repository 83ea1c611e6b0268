"""Normalisation before digesting: equivalent spellings are equal, different values are not."""

from renkei.keys.normalize import normalize_address, normalize_name


def test_name_forms_fold_together():
    forms = ["ヤマダ タロウ", "ヤマダ　タロウ", "やまだ たろう", "ﾔﾏﾀﾞ ﾀﾛｳ", " ヤマダ  タロウ "]
    assert {normalize_name(f) for f in forms} == {"ヤマダ タロウ"}


def test_empty_reading_is_none():
    assert normalize_name("") is None and normalize_name("　") is None and normalize_name(None) is None


def test_different_names_stay_different():
    assert normalize_name("ヤマダ タロウ") != normalize_name("ヤマダ ジロウ")


def test_address_forms_fold_together():
    forms = [
        "北九州市小倉北区城内1番1号",
        "福岡県北九州市小倉北区城内１番１号",
        "小倉北区城内1-1",
        "北九州市小倉北区城内一番一号",
        "北九州市 小倉北区 城内 1－1",
    ]
    assert {normalize_address(f) for f in forms} == {"小倉北区城内1-1"}


def test_chome_and_banchi():
    assert normalize_address("北九州市八幡西区黒崎3丁目15番地7号") == "八幡西区黒崎3-15-7"
    assert normalize_address("八幡西区黒崎3-15-7") == "八幡西区黒崎3-15-7"


def test_different_addresses_stay_different():
    assert normalize_address("小倉北区城内1番1号") != normalize_address("小倉北区城内1番2号")


def test_kanji_block_numbers_but_not_place_names():
    assert normalize_address("八幡東区中央二丁目十五番二十三号") == "八幡東区中央2-15-23"
    assert normalize_address("門司区大里十番") == "門司区大里10"


def test_small_kana_fold_to_large():
    assert normalize_name("シャ ハットリ") == normalize_name("シヤ ハツトリ") == "シヤ ハツトリ"


def test_long_vowels_have_one_spelling():
    # ー, a dash standing for it, and a lengthening vowel kana all become the vowel kana.
    assert {normalize_name(f) for f in ["サトー ユーコ", "サトウ ユウコ", "さとお ゆうこ", "ｻﾄｰ ﾕｰｺ", "サト－ ユ‐コ"]} == {"サトウ ユウコ"}
    assert normalize_name("ケーコ") == normalize_name("ケイコ") == "ケイコ"
    assert normalize_name("オオタ") == normalize_name("オータ") == "オウタ"


def test_long_vowel_mark_without_a_vowel_is_dropped():
    assert normalize_name("ー ヤマダ") == "ヤマダ" and normalize_name("ケンー") == "ケン"


def test_distinct_vowels_are_not_lengthening():
    assert normalize_name("カオリ") == "カオリ" and normalize_name("ミウ") == "ミウ"
    assert normalize_name("コウイチ") != normalize_name("コウチ")


def test_name_separators_and_iteration_marks():
    assert normalize_name("ジョン・スミス") == normalize_name("ジョン スミス")
    assert normalize_name("サヽキ") == normalize_name("ササキ") and normalize_name("いすゞ") == "イスズ"


def test_kanji_numerals_with_units_and_digit_by_digit():
    assert normalize_address("黒崎百二番") == normalize_address("黒崎一〇二番") == "黒崎102"
    assert normalize_address("城内十五番地の七") == normalize_address("城内15-7") == "城内15-7"


def test_ke_and_no_between_kanji():
    assert {normalize_address(a) for a in ["霧ヶ丘3-5-2", "霧ケ丘三丁目五番二号", "霧が丘3丁目5番地の2"]} == {"霧ケ丘3-5-2"}
    assert normalize_address("杉の木1") == normalize_address("杉ノ木1")


def test_long_mark_as_a_hyphen_between_digits_only():
    assert normalize_address("黒崎3ー15ー7") == "黒崎3-15-7"
    assert normalize_address("センター1") == "センター1"
