"""The SVG trend charts (renkei.ui.charts): well-formed, proportional, escaped, honest when empty."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from renkei.ui.charts import NO_DATA, Series, bar_chart, line_chart, nice_ticks, percent_format

SVG = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return root


def _bars(root: ET.Element) -> list[ET.Element]:
    return [e for e in root.iter(f"{SVG}rect") if e.get("class") == "bar"]


def _texts(root: ET.Element, cls: str) -> list[str]:
    return [e.text for e in root.iter(f"{SVG}text") if e.get("class") == cls]


def test_bar_heights_are_proportional_to_the_values():
    root = _parse(bar_chart("c1", "読込 read", ["a", "b", "c"], [Series("read", [10, 25, 40])]))
    heights = {b.get("data-category"): float(b.get("height")) for b in _bars(root)}
    # hand-computed: the top tick for 40 is 40 (step 10), so the bars are 1/4, 5/8 and all of the plot
    assert heights["b"] / heights["a"] == pytest.approx(2.5, abs=1e-3)
    assert heights["c"] / heights["a"] == pytest.approx(4.0, abs=1e-3)
    assert heights["c"] == pytest.approx(280 - 56 - 52)  # the whole plot height
    assert [b.get("data-value") for b in _bars(root)] == ["10", "25", "40"]


def test_bars_stand_on_the_x_axis_and_stack():
    root = _parse(bar_chart("c2", "t", ["d1", "d2"], [Series("s1", [3, 1]), Series("s2", [1, 0])], stacked=True))
    axis_y = 280 - 52
    bars = {(b.get("data-series"), b.get("data-category")): b for b in _bars(root)}
    for b in bars.values():
        assert float(b.get("y")) + float(b.get("height")) <= axis_y + 1e-6
    low, high = bars[("s1", "d1")], bars[("s2", "d1")]
    assert float(high.get("y")) + float(high.get("height")) == pytest.approx(float(low.get("y")))
    # stacked: d1's 3 + 1 = 4 is the tallest column, the top tick (4, step 1) fills the plot
    assert float(low.get("height")) + float(high.get("height")) == pytest.approx(axis_y - 56)


def test_axes_ticks_title_and_legend_are_drawn():
    root = _parse(bar_chart("c3", "通知 notices", ["06-01", "06-02"],
                            [Series("immunization", [5, 7]), Series("checkup", [2, None])], y_label="件"))
    assert _texts(root, "chart-title") == ["通知 notices"]
    assert root.find(f"{SVG}title").text == "通知 notices"
    assert _texts(root, "y-tick") == ["0", "2", "4", "6", "8"]
    assert _texts(root, "x-tick") == ["06-01", "06-02"]
    legend = [g.find(f"{SVG}text").text for g in root.iter(f"{SVG}g") if g.get("class") == "legend-item"]
    assert legend == ["immunization", "checkup"]
    assert len(_bars(root)) == 3  # None draws nothing
    assert root.get("viewBox") == "0 0 640 280" and "IPAGothic" in root.get("font-family")


def test_no_style_attributes_and_no_script():
    svg = bar_chart("c4", "t", ["a"], [Series("s", [1])]) + line_chart("c5", "t", ["a", "b"], [Series("s", [1, 2])])
    assert "style=" not in svg and "<script" not in svg and "href" not in svg


@pytest.mark.parametrize("make", [bar_chart, line_chart])
@pytest.mark.parametrize("categories, series", [([], []), (["a", "b"], []), (["a"], [Series("s", [None])])])
def test_an_empty_series_says_no_data(make, categories, series):
    root = _parse(make("empty", "隔離率 quarantine rate", categories, series))
    assert _texts(root, "no-data") == [NO_DATA] and "データなし" in NO_DATA and "no data" in NO_DATA
    assert not _bars(root) and root.find(f".//{SVG}circle") is None


def test_labels_are_escaped():
    evil = '<script>alert("x")</script> & \'q\''
    svg = bar_chart('id" onload="x', evil, [evil], [Series(evil, [1])])
    root = _parse(svg)
    assert "<script" not in svg and 'onload="' not in svg
    assert _texts(root, "chart-title") == [evil]  # the parser gives the text back unescaped
    bar = _bars(root)[0]
    assert bar.get("data-series") == evil and bar.get("data-category") == evil
    assert root.get("id") == "id--onload--x"


def test_line_points_and_gaps():
    root = _parse(line_chart("c6", "rate", ["r1", "r2", "r3", "r4"], [Series("s", [1.0, None, 2.0, 4.0])],
                             fmt=percent_format))
    points = [e for e in root.iter(f"{SVG}circle")]
    assert [p.get("data-value") for p in points] == ["1", "2", "4"]
    lines = [e for e in root.iter(f"{SVG}polyline")]
    assert len(lines) == 1 and len(lines[0].get("points").split()) == 2  # r1 stands alone: the gap at r2
    axis_y = 280 - 52
    rise = {p.get("data-value"): axis_y - float(p.get("cy")) for p in points}
    assert rise["4"] / rise["1"] == pytest.approx(4.0) and rise["2"] / rise["1"] == pytest.approx(2.0)
    assert _texts(root, "y-tick")[-1] == "4%"


def test_many_categories_thin_out_their_labels():
    cats = [f"d{i}" for i in range(30)]
    root = _parse(bar_chart("c7", "t", cats, [Series("s", list(range(30)))]))
    labels = _texts(root, "x-tick")
    assert labels[-1] == "d29" and 5 <= len(labels) <= 10 and len(_bars(root)) == 30  # 0 is a bar of height 0
    # long labels are cut
    root = _parse(bar_chart("c8", "t", ["x" * 40], [Series("s", [1])]))
    assert _texts(root, "x-tick") == ["x" * 15 + "…"]


def test_a_long_legend_wraps_and_the_plot_moves_down():
    names = [f"source_number_{i}" for i in range(8)]  # ~130 px each: four to a 560 px row
    root = _parse(bar_chart("c10", "t", ["a"], [Series(n, [i + 1]) for i, n in enumerate(names)]))
    items = [g for g in root.iter(f"{SVG}g") if g.get("class") == "legend-item"]
    assert [g.find(f"{SVG}text").text for g in items] == names
    rows = sorted({float(g.find(f"{SVG}rect").get("y")) for g in items})
    assert len(rows) == 2 and rows[1] - rows[0] == 16
    assert all(float(g.find(f"{SVG}rect").get("x")) + 130 <= 640 for g in items)
    bars = _bars(root)
    top = min(float(b.get("y")) for b in bars)  # the tallest bar (8) reaches the top tick (8)
    assert top == pytest.approx(56 + 16)
    assert float(bars[7].get("height")) / float(bars[0].get("height")) == pytest.approx(8.0)


def test_data_values_are_exact():
    root = _parse(bar_chart("c11", "t", ["a", "b"], [Series("s", [1_234_567, 0.125])]))
    assert [b.get("data-value") for b in _bars(root)] == ["1234567", "0.125"]


def test_a_series_must_match_its_categories():
    with pytest.raises(ValueError, match="series 's' has 1 values for 2 categories"):
        bar_chart("c9", "t", ["a", "b"], [Series("s", [1])])


@pytest.mark.parametrize("top, ticks", [(0, [0, 1]), (4, [0, 1, 2, 3, 4]), (7, [0, 2, 4, 6, 8]),
                                        (40, [0, 10, 20, 30, 40]), (0.3, [0, 0.1, 0.2, 0.3]),
                                        (1234, [0, 500, 1000, 1500])])
def test_nice_ticks(top, ticks):
    assert nice_ticks(top) == pytest.approx(ticks)
