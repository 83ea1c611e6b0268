"""The trend charts of the Renkei pages: the warehouse's series (renkei.ui.data) as labelled SVG.

Labels are bilingual (Japanese beside English) because the pages have no language switch.
"""

from __future__ import annotations

from renkei.ui import data
from renkei.ui.charts import Series, bar_chart, line_chart, percent_format

READ, QUARANTINED, RATE = "読込 read", "隔離 quarantined", "隔離率 quarantine rate"
HALTED = "停止"  # marks a run whose validation halted it (nothing loaded)
AGE_LABELS = {"<1": "<1 日 day", "1-7": "1–7 日 days", "8-30": "8–30 日 days", ">30": ">30 日 days",
              "unknown": "不明 unknown"}
STATES = {"pending": ("未決 pending", "#d69e2e"), "approved": ("承認 approved", "#2f855a"),
          "rejected": ("却下 rejected", "#c53030")}


def _run_label(run: dict) -> str:
    at = run["updated_at"]  # canonical 'YYYY-MM-DDTHH:MM:SS+09:00'
    return f"{at[5:10]} {at[11:16]}" + (f" {HALTED}" if run["halted"] else "")


def _percent(rate: float | None) -> float | None:
    return None if rate is None else round(rate * 100, 4)


def source_charts(runs: dict[str, list[dict]], last_runs: int) -> list[dict]:
    """Per source: a bar chart of rows read and quarantined per run and a line of its rate."""
    out = []
    for i, (source, rows) in enumerate(sorted(runs.items())):
        labels = [_run_label(r) for r in rows]
        counts = bar_chart(f"trend-runs-{i}", f"{source}: 読込・隔離 rows read and quarantined, last {last_runs} runs",
                           labels, [Series(READ, [r["read"] for r in rows], "#2b6cb0"),
                                    Series(QUARANTINED, [r["quarantined"] for r in rows], "#c53030")],
                           y_label="行 rows")
        rate = line_chart(f"trend-rate-{i}", f"{source}: {RATE} (%), last {last_runs} runs", labels,
                          [Series(RATE, [_percent(r["rate"]) for r in rows], "#c53030")], fmt=percent_format)
        out.append({"source": source, "counts": counts, "rate": rate})
    return out


def rate_overview(runs: dict[str, list[dict]], last_runs: int) -> str:
    """Every source's quarantine rate over its last runs, aligned on the latest run (the runs page)."""
    width = max((len(rows) for rows in runs.values()), default=0)
    labels = [f"-{width - 1 - i}" for i in range(width - 1)] + ["最新 latest"] if width else []
    series = [Series(source, [None] * (width - len(rows)) + [_percent(r["rate"]) for r in rows])
              for source, rows in sorted(runs.items())]
    return line_chart("trend-rate-overview", f"{RATE} (%) per source, last {last_runs} runs (0 = 最新 latest)",
                      labels, series, fmt=percent_format)


def notices_chart(per_day: dict) -> str:
    """Notices created per day, stacked by service."""
    days = per_day["days"]
    series = [Series(service, counts) for service, counts in per_day["services"].items()]
    return bar_chart("trend-notices", f"通知 notices per service per day, last {len(days)} days",
                     [d[5:] for d in days], series, stacked=True, y_label="件 notices")


def review_chart(by_age: dict) -> str:
    """Active review items by age, stacked by state (pending first)."""
    order = sorted(by_age["states"], key=lambda s: (list(STATES).index(s) if s in STATES else len(STATES), s))
    series = [Series(STATES.get(s, (s, None))[0], by_age["states"][s], STATES.get(s, (s, None))[1]) for s in order]
    return bar_chart("trend-review", "紐付け点検 active review items by age (days since first seen)",
                     [AGE_LABELS[b] for b in by_age["buckets"]], series, stacked=True, y_label="件 items")


def for_trends_page() -> dict:
    """Every chart of the trends page, from the warehouse now."""
    return page(data.trends())


def for_runs_page() -> str:
    return rate_overview(data.trends(parts=("runs",))["runs"], data.TREND_RUNS)


def for_notices_page() -> str:
    return notices_chart(data.trends(parts=("notices",))["notices"])


def for_review_page() -> str:
    return review_chart(data.trends(parts=("review",))["review"])


def page(trend: dict) -> dict:
    """Every chart of the trends page, from ``data.trends()``."""
    return {"sources": source_charts(trend["runs"], trend["last_runs"]),
            "overview": rate_overview(trend["runs"], trend["last_runs"]),
            "notices": notices_chart(trend["notices"]), "review": review_chart(trend["review"]),
            "last_runs": trend["last_runs"], "days": trend["days"]}
