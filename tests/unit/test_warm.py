"""The task-forking Airflow processes import the tasks' heavy modules once (renkei.warm)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from renkei.warm import MODULES, forks_tasks

LOCAL = "LocalExecutor"


@pytest.mark.parametrize(("argv", "executor", "expected"), [
    (["airflow", "scheduler"], LOCAL, True),
    (["/venv/bin/airflow", "scheduler", "--skip-serve-logs"], "airflow.executors.local_executor.LocalExecutor", True),
    (["airflow", "scheduler"], "CeleryExecutor", False),  # the Celery scheduler forks no task
    (["airflow", "celery", "worker", "--queues", "delivery", "--concurrency", "1"], "CeleryExecutor", True),
    (["airflow", "celery", "flower"], "CeleryExecutor", False),
    (["airflow", "api-server", "--port", "8080"], LOCAL, False),
    (["airflow", "dag-processor"], LOCAL, False),
    (["airflow", "triggerer"], LOCAL, False),
    (["airflow", "db", "migrate"], LOCAL, False),
    (["airflow"], LOCAL, False),
])
def test_which_processes_preload(argv, executor, expected):
    assert forks_tasks(argv, executor) is expected


def _run(argv: list[str], **env) -> list[str]:
    """In a fresh interpreter: preload for ``argv``; which heavy modules are then imported."""
    code = (
        "import sys; from renkei.warm import preload; "
        f"preload({argv!r}, 'LocalExecutor'); "
        "print(' '.join(m for m in ('pandas', 'great_expectations', 'renkei.ingest') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, check=True)
    return done.stdout.split(), done.stderr


def test_a_scheduler_imports_every_module_and_says_so():
    imported, said = _run(["airflow", "scheduler"], RENKEI_PRELOAD="on")
    assert imported == ["pandas", "great_expectations", "renkei.ingest"]
    assert f"renkei preload: {len(MODULES)} of {len(MODULES)} modules" in said


@pytest.mark.parametrize("syntax", ["glob", "regexp"])
def test_airflow_imports_the_local_settings_once_and_its_plugin_loader_never(syntax, tmp_path):
    """Airflow imports plugins/airflow_local_settings.py as its local settings at start (which
    preloads). Its plugin loader, run again in every task process, would execute every .py file
    of the plugins folder as a plugin: the preload line (stderr, shown as an error) in every
    task log. plugins/.airflowignore keeps it out, under either ignore-file syntax."""
    plugins = Path(__file__).resolve().parents[2] / "plugins"
    code = (
        "import sys, airflow\n"
        "from airflow._shared.plugins_manager.plugins_manager import _load_plugins_from_plugin_directory\n"
        "before = sys.modules.get('airflow_local_settings')\n"
        f"found, errors = _load_plugins_from_plugin_directory({str(plugins)!r}, ignore_file_syntax={syntax!r})\n"
        "print(getattr(before, '__file__', None)); print(sys.modules.get('airflow_local_settings') is before, "
        "len(found), len(errors))\n"
    )
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
           "AIRFLOW__CORE__DAG_IGNORE_FILE_SYNTAX": syntax, "RENKEI_PRELOAD": "off"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                          env=env)
    imported_from, outcome = done.stdout.splitlines()[-2:]
    assert imported_from == str(plugins / "airflow_local_settings.py")
    assert outcome.split() == ["True", "0", "0"], done.stderr


@pytest.mark.parametrize(("argv", "env"), [
    (["airflow", "api-server"], {"RENKEI_PRELOAD": "on"}),
    (["airflow", "scheduler"], {"RENKEI_PRELOAD": "off"}),
])
def test_other_processes_and_the_off_switch_import_nothing(argv, env):
    imported, said = _run(argv, **env)
    assert imported == []
    assert "renkei preload" not in said


@pytest.mark.parametrize("docs", ["on", "off"])
def test_a_preloading_process_compiles_the_data_docs_templates_once(docs, tmp_path):
    """Its forks render Data Docs without compiling GX's templates (each build did: seconds of
    every extract); none when Data Docs are off. The count is of bytecode in the shared cache."""
    code = (
        "from renkei.warm import preload; preload(['airflow', 'scheduler'], 'LocalExecutor'); "
        "from renkei.quality import datadocs; "
        "print(len(datadocs._TEMPLATES.cache.code) if datadocs._TEMPLATES else 0)"
    )
    where = str(tmp_path / "dd") if docs == "on" else "off"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, check=True,
                          env={**os.environ, "RENKEI_PRELOAD": "on", "RENKEI_DATA_DOCS": where})
    compiled = int(done.stdout.split()[-1])
    if docs == "off":
        assert compiled == 0 and "and 0 Data Docs templates" in done.stderr
    else:
        assert compiled >= 30, done.stderr  # GX 1.x ships 42 page templates
        assert f"and {compiled} Data Docs templates" in done.stderr


def test_shared_bytecode_renders_the_same_page_without_compiling(monkeypatch):
    """A second GX page view (a new Jinja environment, as GX makes per view) loads its templates
    from the shared bytecode: no compile, and the same rendered text."""
    import jinja2
    from great_expectations.render.view.view import DefaultJinjaPageView

    from renkei.quality import datadocs

    plain = DefaultJinjaPageView().env.get_template("markdown.j2").render(content_block={"markdown": "**x**"})
    datadocs.share_compiled_templates()
    DefaultJinjaPageView().env.get_template("markdown.j2")  # compiled once into the shared cache
    compiled = []
    real = jinja2.Environment._compile
    monkeypatch.setattr(jinja2.Environment, "_compile", lambda self, *a: compiled.append(a[1]) or real(self, *a))
    shared = DefaultJinjaPageView().env.get_template("markdown.j2").render(content_block={"markdown": "**x**"})
    assert compiled == [] and shared == plain
