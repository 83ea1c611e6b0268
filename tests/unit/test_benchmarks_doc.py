"""docs/BENCHMARKS.md's figures come from the result files the benchmark scripts wrote.

A figure in the doc is followed by a marker naming its file and field, e.g.
``**226.0 s** <!-- full_run.json LocalExecutor.wall_s -->``; every marked figure must equal the
field as printed (same rounding), and the headline fields of the whole-city and incremental
results must each be marked somewhere, so no hand-typed number can drift from its file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "BENCHMARKS.md"
RESULTS = REPO / "bench" / "results"
MARKED = re.compile(r"(-?[\d,]*\d(?:\.\d+)?)[^\d<]{0,12}<!-- ([\w./-]+\.json) ([\w.\[\]-]+) -->")
HEADLINES = {
    "full_run.json": ("wall_s", "baseline_s", "ratio", "peak_rss_mb"),
    "incremental.json": ("wall_s", "changed_records", "new_notices", "withdrawn_notices"),
}


def field(doc: object, path: str) -> object:
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        doc = doc[int(part[1:-1])] if part.startswith("[") else doc[part]  # type: ignore[index]
    return doc


def marks() -> list[tuple[str, str, str]]:
    return MARKED.findall(DOC.read_text(encoding="utf-8"))


def test_the_doc_marks_its_figures():
    assert len(marks()) >= 10, "docs/BENCHMARKS.md: figures must carry <!-- file.json field --> markers"


@pytest.mark.parametrize("shown,name,path", marks())
def test_a_marked_figure_equals_its_result_file(shown: str, name: str, path: str):
    value = field(json.loads((RESULTS / name).read_text()), path)
    number = float(shown.replace(",", ""))
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    assert isinstance(value, (int, float)), f"{name} {path} is not a number: {value!r}"
    assert round(float(value), decimals) == number, f"docs/BENCHMARKS.md shows {shown} for {name} {path}; the file has {value}"


@pytest.mark.parametrize("name", sorted(HEADLINES))
def test_every_executor_headline_is_in_the_doc(name: str):
    doc = json.loads((RESULTS / name).read_text())
    marked = {(n, p) for _, n, p in marks()}
    missing = [f"{ex}.{k}" for ex in doc for k in HEADLINES[name] if (name, f"{ex}.{k}") not in marked]
    assert not missing, f"docs/BENCHMARKS.md does not show {name}'s {missing}"


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_each_result_file_says_how_it_was_measured(path: Path):
    doc = json.loads(path.read_text())
    if isinstance(doc, list):  # one entry per run (key_rotation.json)
        entries = doc
    elif all(isinstance(v, dict) and "command" in v for v in doc.values()):  # one entry per executor
        entries = list(doc.values())
    else:
        entries = [doc]
    for entry in entries:
        for key in ("command", "commit", "machine"):
            assert key in entry, f"{path.name}: no {key!r} (a result file is written by its script, with how it was run)"
        if path.name in HEADLINES:
            for key in ("residents", "executor", "measured_on", "runs"):
                assert key in entry, f"{path.name}: no {key!r}"
