"""Trend charts as inline SVG: pure functions from series of numbers to an SVG string.

The pages work offline and under a CSP without inline styles or scripts, so a chart is drawn
on the server with presentation attributes only (``fill=``, ``stroke=``, no ``style=``), with
no script and no font to fetch, in a fixed viewBox that scales with the page. Every piece of
text is escaped here, so the caller may inline the result as it is.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

# Proportional faces first (IPAGothic is the fixed-width one); all are local fonts, never fetched.
FONT_FAMILY = "'Noto Sans CJK JP', IPAPGothic, IPAGothic, sans-serif"
PALETTE = ("#2b6cb0", "#c53030", "#2f855a", "#b7791f", "#6b46c1", "#319795", "#d53f8c", "#4a5568")
NO_DATA = "データなし / no data"
WIDTH, HEIGHT = 640, 280
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 56, 52  # plot margins: y tick labels, title + legend, x labels
BAR_MAX = 48  # px: a chart of one or two runs still shows bars, not slabs
LEGEND_ROW = 16  # each further legend row moves the plot's top down by this
LABEL_MAX = 16  # characters of an x label before it is cut


@dataclass(frozen=True)
class Series:
    """One named sequence of values, one per category; None where there is no value."""

    label: str
    values: Sequence[float | None]
    color: str | None = None


def count_format(value: float) -> str:
    """12,345 — counts on an axis or a tooltip."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def percent_format(value: float) -> str:
    """A value already in percent: 1.5 → '1.5%'."""
    return f"{value:.3g}%"


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least ``top``: steps of 1, 2 or 5 × 10^k."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    n = math.ceil(top / step - 1e-9)
    return [round(i * step, 10) for i in range(n + 1)]


def bar_chart(chart_id: str, title: str, categories: Sequence[str], series: Sequence[Series], *,
              stacked: bool = False, y_label: str = "", fmt: Callable[[float], str] = count_format) -> str:
    """Bars per category, one per series side by side (or ``stacked``), with axes and legend.

    Each bar carries ``data-series``, ``data-category`` and ``data-value`` and a tooltip; its
    height is its value over the top tick times the plot height.
    """
    frame = _Frame(chart_id, title, y_label, categories, series)
    if frame.empty:
        return frame.no_data()
    tops = ([sum(v or 0 for v in col) for col in zip(*(s.values for s in series))] if stacked
            else [v or 0 for s in series for v in s.values])
    ticks = nice_ticks(max(tops, default=0))
    parts = frame.axes(ticks, fmt)
    slot = frame.plot_w / len(categories)
    bar_w = min(BAR_MAX, slot * 0.7 if stacked else slot * 0.8 / len(series))
    group_w = bar_w if stacked else bar_w * len(series)
    for i, cat in enumerate(categories):
        base = 0.0
        for k, s in enumerate(series):
            v = s.values[i]
            if v is None:
                continue
            h = frame.height_of(v, ticks[-1])
            x = LEFT + i * slot + (slot - group_w) / 2 + (0 if stacked else k * bar_w)
            y = frame.top + frame.plot_h - base - h
            parts.append(f'<rect class="bar" x="{x:.2f}" y="{y:.2f}" width="{bar_w:.2f}" height="{h:.2f}" '
                         f'fill="{frame.color(k)}" data-series={_attr(s.label)} data-category={_attr(cat)} '
                         f'data-value="{_number(v)}"><title>{_text(f"{s.label} · {cat}: {fmt(v)}")}</title></rect>')
            if stacked:
                base += h
    return frame.close(parts)


def line_chart(chart_id: str, title: str, categories: Sequence[str], series: Sequence[Series], *,
               y_label: str = "", fmt: Callable[[float], str] = count_format) -> str:
    """A line per series over the categories (a gap where a value is None), a dot per value."""
    frame = _Frame(chart_id, title, y_label, categories, series)
    if frame.empty:
        return frame.no_data()
    ticks = nice_ticks(max((v for s in series for v in s.values if v is not None), default=0))
    parts = frame.axes(ticks, fmt)
    slot = frame.plot_w / len(categories)
    for k, s in enumerate(series):
        points = [(LEFT + (i + 0.5) * slot, frame.top + frame.plot_h - frame.height_of(v or 0, ticks[-1]), v, cat)
                  for i, (v, cat) in enumerate(zip(s.values, categories))]
        run: list[str] = []
        for x, y, v, _ in [*points, (0, 0, None, "")]:  # the sentinel closes the last segment
            if v is not None:
                run.append(f"{x:.2f},{y:.2f}")
                continue
            if len(run) > 1:
                parts.append(f'<polyline class="line" points="{" ".join(run)}" fill="none" '
                             f'stroke="{frame.color(k)}" stroke-width="2"/>')
            run = []
        for x, y, v, cat in points:
            if v is not None:
                parts.append(f'<circle class="point" cx="{x:.2f}" cy="{y:.2f}" r="3" fill="{frame.color(k)}" '
                             f'data-series={_attr(s.label)} data-category={_attr(cat)} data-value="{_number(v)}">'
                             f'<title>{_text(f"{s.label} · {cat}: {fmt(v)}")}</title></circle>')
    return frame.close(parts)


class _Frame:
    """What both charts share: the outer svg, title, legend, axes, the no-data message."""

    def __init__(self, chart_id: str, title: str, y_label: str, categories: Sequence[str],
                 series: Sequence[Series]) -> None:
        self.id = re.sub(r"[^A-Za-z0-9_-]", "-", chart_id)
        self.title, self.y_label, self.categories, self.series = title, y_label, list(categories), list(series)
        for s in self.series:
            if len(s.values) != len(self.categories):
                raise ValueError(f"chart {self.id}: series {s.label!r} has {len(s.values)} values for "
                                 f"{len(self.categories)} categories: give one value (or None) per category")
        self.legend_at = self._legend_positions()
        self.top = TOP + max((dy for _, dy in self.legend_at), default=0)  # below the legend's last row
        self.plot_w, self.plot_h = WIDTH - LEFT - RIGHT, HEIGHT - self.top - BOTTOM
        self.empty = not self.categories or all(v is None for s in self.series for v in s.values)

    def color(self, k: int) -> str:
        return escape(self.series[k].color or PALETTE[k % len(PALETTE)])

    def height_of(self, value: float, top: float) -> float:
        return self.plot_h * max(value, 0) / top

    def open(self) -> list[str]:
        return [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{self.id}" '
                f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="{self.id}-title" '
                f'font-family="{escape(FONT_FAMILY)}" font-size="12" fill="#1a202c">',
                f'<title id="{self.id}-title">{_text(self.title)}</title>',
                f'<rect class="backdrop" x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
                f'<text class="chart-title" x="{LEFT}" y="20" font-size="14" font-weight="bold">{_text(self.title)}</text>']

    def no_data(self) -> str:
        return "\n".join([*self.open(), f'<text class="no-data" x="{WIDTH / 2}" y="{HEIGHT / 2}" '
                          f'text-anchor="middle" fill="#4a5568">{_text(NO_DATA)}</text>', "</svg>"])

    def axes(self, ticks: list[float], fmt: Callable[[float], str]) -> list[str]:
        parts = self.open()
        parts += self.legend()
        x0, y0 = LEFT, self.top + self.plot_h
        for t in ticks:
            y = y0 - self.height_of(t, ticks[-1])
            parts.append(f'<line class="grid" x1="{x0}" y1="{y:.2f}" x2="{x0 + self.plot_w}" y2="{y:.2f}" '
                         f'stroke="#e2e8f0"/>')
            parts.append(f'<text class="y-tick" x="{x0 - 6}" y="{y + 4:.2f}" text-anchor="end">{_text(fmt(t))}</text>')
        if self.y_label:
            parts.append(f'<text class="y-label" x="14" y="{self.top + self.plot_h / 2:.2f}" text-anchor="middle" '
                         f'transform="rotate(-90 14 {self.top + self.plot_h / 2:.2f})">{_text(self.y_label)}</text>')
        slot = self.plot_w / len(self.categories)
        every = max(1, math.ceil(len(self.categories) * 70 / self.plot_w))  # labels ~70 px apart at most
        for i, cat in enumerate(self.categories):
            if (len(self.categories) - 1 - i) % every == 0:  # counted from the last: the latest is named
                x = x0 + (i + 0.5) * slot
                parts.append(f'<text class="x-tick" x="{x:.2f}" y="{y0 + 16}" text-anchor="middle">'
                             f'{_text(_cut(cat))}</text>')
        parts.append(f'<line class="axis" x1="{x0}" y1="{y0}" x2="{x0 + self.plot_w}" y2="{y0}" stroke="#4a5568"/>')
        parts.append(f'<line class="axis" x1="{x0}" y1="{self.top}" x2="{x0}" y2="{y0}" stroke="#4a5568"/>')
        return parts

    def _legend_positions(self) -> list[tuple[float, int]]:
        """(x, row offset) of each series' legend entry: rows wrap at the chart's width."""
        out, x, y = [], float(LEFT), 0
        for s in self.series:
            w = 16 + _text_width(s.label) + 14
            if x + w > WIDTH - RIGHT and x > LEFT:
                x, y = float(LEFT), y + LEGEND_ROW
            out.append((x, y))
            x += w
        return out

    def legend(self) -> list[str]:
        parts = []
        for k, (s, (x, dy)) in enumerate(zip(self.series, self.legend_at)):
            y = 40 + dy
            parts.append(f'<g class="legend-item"><rect x="{x:.2f}" y="{y - 9}" width="12" height="12" '
                         f'fill="{self.color(k)}"/><text x="{x + 16:.2f}" y="{y + 1}">{_text(s.label)}</text></g>')
        return parts

    def close(self, parts: list[str]) -> str:
        return "\n".join([*parts, "</svg>"])


def _text(value: str) -> str:
    return escape(str(value), quote=False)


def _attr(value: str) -> str:
    return f'"{escape(str(value), quote=True)}"'


def _number(value: float) -> str:
    """The exact value for ``data-value`` (no exponent: 1234567, not 1.23457e+06)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _cut(label: str) -> str:
    return label if len(label) <= LABEL_MAX else label[: LABEL_MAX - 1] + "…"


def _text_width(label: str) -> float:
    """Roughly, in px at 12 px: a wide (CJK) character is about twice a Latin one."""
    return sum(12 if unicodedata.east_asian_width(c) in "WF" else 7 for c in label)
