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
