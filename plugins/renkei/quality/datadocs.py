"""GX Data Docs per ingest run: one validation result per (run, source), rendered by GX's own
site builder into a configurable store, made to work offline.

Where: ``RENKEI_DATA_DOCS`` — a local folder (default ``$RENKEI_HOME/data_docs``), an object
store URL (``s3://bucket/prefix``, ``gs://bucket/prefix``, ``azure://container/prefix`` with
GX's S3/GCS/Azure store backends and their usual credentials), or ``off``. Under it: ``site/``
(the HTML site), ``results/`` (GX's validation results store, which the site's index lists)
and ``suites/`` (the suites the pages link to).

What is kept: the suite is validated chunk by chunk (renkei.quality.gx_runner); the chunks'
results are merged into one result per expectation — counts summed, success only if every
chunk passed — and nothing else: no unexpected values, no row positions, no exception text
(it may quote a value). Only a table-level expectation keeps its observed value (column names).

Offline: GX's page templates load Bootstrap, jQuery, Font Awesome, a datepicker, Vega,
bootstrap-table and a dark theme from public CDNs. Every page built is rewritten to load them from
``static/offline/`` inside the site, copied from Python packages pinned in requirements.lock
(XStatic-*, altair-viewer's Vega scripts) and, for the two no Python package ships, from npm
packages locked in tools/offline-assets (installed by ``make venv``). Any other external script,
style or image tag is dropped, and so is the tag of an npm asset that is not installed (with a
warning: the index's table stays empty without bootstrap-table): a page never reaches out of the site.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import importlib.util
import json
import logging
import os
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

ENV = "RENKEI_DATA_DOCS"
SITE_NAME = "renkei"
OFFLINE = ("static", "offline")  # where the offline assets live inside the site
INDEX_LIMIT = 500  # validation results the site's index lists (the pages of older ones stay)

# Result keys kept from a chunk's result (counts only); percentages are recomputed after merging.
_COUNTS = ("element_count", "unexpected_count", "missing_count")
_WITHHELD = "an error was raised while checking; its text is withheld here (it may quote a value)"


@dataclass
class _Merged:
    config: dict
    success: bool = True
    raised: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    observed: Any = None
    details: Any = None


class RunValidation:
    """The GX results of one (ingest run, source), merged across the chunks they came in."""

    def __init__(self, source: str, run_id: str) -> None:
        self.source = source
        self.run_id = run_id
        self._merged: dict[str, _Merged] = {}

    def add(self, result: Any) -> None:
        """Merge one GX ExpectationSuiteValidationResult (a chunk, or its dated part)."""
        for item in result.results:
            config = item.expectation_config
            kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
            key = json.dumps([config.type, kwargs], sort_keys=True, default=str)
            merged = self._merged.get(key)
            if merged is None:
                entry = config.to_json_dict()
                entry["kwargs"] = {k: v for k, v in entry["kwargs"].items() if k != "batch_id"}
                merged = self._merged[key] = _Merged(config=entry)
            found = item.result or {}
            merged.success = merged.success and bool(item.success)
            merged.raised = merged.raised or _raised(item.exception_info)
            for name in _COUNTS:
                if isinstance(found.get(name), int):
                    merged.counts[name] = merged.counts.get(name, 0) + found[name]
            if not any(name in kwargs for name in ("column", "column_A", "column_list")):
                # a table-level expectation: the observed value is column names or a row count
                merged.observed = found.get("observed_value", merged.observed)
                merged.details = found.get("details", merged.details)

    @property
    def rows(self) -> int:
        """Rows validated in the run (the largest row count any column check saw)."""
        return max((m.counts.get("element_count", 0) for m in self._merged.values()), default=0)

    def to_gx(self, run_identifier: Any = None) -> Any:
        """One ExpectationSuiteValidationResult for the run, holding counts only."""
        from great_expectations import __version__
        from great_expectations.core import ExpectationSuiteValidationResult
        from great_expectations.core.expectation_validation_result import ExpectationValidationResult
        from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

        results = []
        for merged in self._merged.values():
            found: dict[str, Any] = dict(merged.counts)
            if "element_count" in found:
                total, unexpected = found["element_count"], found.get("unexpected_count", 0)
                missing = found.get("missing_count", 0)
                present = total - missing
                found["missing_percent"] = 100.0 * missing / total if total else None
                found["unexpected_percent"] = 100.0 * unexpected / present if present else None
                found["unexpected_percent_nonmissing"] = found["unexpected_percent"]
                found["unexpected_percent_total"] = 100.0 * unexpected / total if total else None
                found["partial_unexpected_list"] = []
            if merged.observed is not None:
                found["observed_value"] = merged.observed
            if merged.details is not None:
                found["details"] = merged.details
            results.append(ExpectationValidationResult(
                success=merged.success and not merged.raised,
                expectation_config=ExpectationConfiguration(**merged.config),
                result=found,
                exception_info={"raised_exception": merged.raised, "exception_traceback": None,
                                "exception_message": _WITHHELD if merged.raised else None},
            ))
        passed = sum(1 for r in results if r.success)
        return ExpectationSuiteValidationResult(
            success=passed == len(results),
            results=results,
            suite_name=self.source,
            statistics={"evaluated_expectations": len(results), "successful_expectations": passed,
                        "unsuccessful_expectations": len(results) - passed,
                        "success_percent": 100.0 * passed / len(results) if results else None},
            meta={"great_expectations_version": __version__,
                  "active_batch_definition": {"datasource_name": "renkei", "data_connector_name": "extract",
                                              "data_asset_name": self.source, "batch_identifiers": {}},
                  "batch_spec": {"data_asset_name": self.source, "renkei_run": self.run_id, "rows": self.rows},
                  "run_id": run_identifier},
        )


# --- where ---------------------------------------------------------------------------------


def location(env: dict[str, str] | None = None) -> str | None:
    """The configured store: a local folder or object store URL, or None when docs are off."""
    env = os.environ if env is None else env
    raw = env.get(ENV, "").strip()
    if raw.lower() in ("off", "none", "false", "0"):
        return None
    if raw:
        return raw
    home = env.get("RENKEI_HOME") or str(Path(__file__).resolve().parents[3] / "var" / "renkei")
    return str(Path(home) / "data_docs")


def _backend(where: str, part: str) -> dict:
    """A GX store backend config for ``part`` (site, results, suites) of the store ``where``."""
    url = urlsplit(where)
    prefix = "/".join(p for p in (url.path.strip("/"), part) if p)
    if url.scheme == "s3":
        return {"class_name": "TupleS3StoreBackend", "bucket": url.netloc, "prefix": prefix}
    if url.scheme == "gs":
        return {"class_name": "TupleGCSStoreBackend", "bucket": url.netloc, "prefix": prefix,
                "project": os.environ.get("RENKEI_DATA_DOCS_GCP_PROJECT")}
    if url.scheme == "azure":
        return {"class_name": "TupleAzureBlobStoreBackend", "container": url.netloc, "prefix": prefix,
                "account_url": os.environ.get("RENKEI_DATA_DOCS_AZURE_ACCOUNT_URL")}
    if url.scheme not in ("", "file"):
        from renkei.errors import ConfigError

        raise ConfigError(f"{ENV}={where!r}: use a folder, s3://bucket/prefix, gs://bucket/prefix, "
                          "azure://container/prefix or off")
    return {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(Path(url.path or where) / part)}


def local_site(where: str | None) -> Path | None:
    """The site folder of a local store (None for an object store or when docs are off)."""
    if where is None or urlsplit(where).scheme not in ("", "file"):
        return None
    return Path(urlsplit(where).path or where) / "site"


# --- building --------------------------------------------------------------------------------


def _run_name(run_id: str) -> str:
    # the run key is "<dag_id>/<run_id>"; the suite already names the source
    return run_id.rsplit("/", 1)[-1]


def _context(where: str) -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import DataContextConfig, InMemoryStoreBackendDefaults

    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False))
    config.stores["renkei_results"] = {"class_name": "ValidationResultsStore", "store_backend": _backend(where, "results")}
    config.stores["renkei_suites"] = {"class_name": "ExpectationsStore", "store_backend": _backend(where, "suites")}
    config.validation_results_store_name = "renkei_results"
    config.expectations_store_name = "renkei_suites"
    return gx.get_context(project_config=config, mode="ephemeral")


class _CompiledTemplates:
    """Jinja bytecode of GX's page templates, kept in memory and shared by every environment of
    this process. GX makes a new Jinja environment for each page view it renders, so each build
    compiled every template again: most of a Data Docs build's CPU, in the extract's critical
    path. Warmed in a process that forks tasks (renkei.warm), the forks inherit the bytecode."""

    def __init__(self) -> None:
        import jinja2  # noqa: PLC0415

        class Cache(jinja2.BytecodeCache):
            def __init__(self) -> None:
                self.code: dict[str, bytes] = {}

            def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
                # the bucket checks the template source's checksum: a changed template compiles anew
                if bucket.key in self.code:
                    bucket.bytecode_from_string(self.code[bucket.key])

            def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
                self.code[bucket.key] = bucket.bytecode_to_string()

        self.cache = Cache()

    def install(self) -> None:
        """Make GX's page views build their Jinja environments with the shared bytecode (once)."""
        import great_expectations.render.view.view as gx_view  # noqa: PLC0415

        if getattr(gx_view.Environment, "renkei_shared", False):
            return
        cache, base = self.cache, gx_view.Environment

        class Environment(base):
            renkei_shared = True

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs.setdefault("bytecode_cache", cache)
                super().__init__(*args, **kwargs)

        gx_view.Environment = Environment


_TEMPLATES: _CompiledTemplates | None = None


def share_compiled_templates() -> _CompiledTemplates:
    """The process's shared template bytecode, installed into GX's page views."""
    global _TEMPLATES  # noqa: PLW0603 - one per process, inherited by forks
    if _TEMPLATES is None:
        _TEMPLATES = _CompiledTemplates()
    _TEMPLATES.install()
    return _TEMPLATES


def warm_templates() -> int:
    """Compile every GX page template into the shared bytecode; returns how many."""
    from great_expectations.render.view.view import DefaultJinjaPageView  # noqa: PLC0415

    share_compiled_templates()
    env = DefaultJinjaPageView().env
    names = [n for n in env.list_templates() if n.endswith(".j2")]
    for name in names:
        env.get_template(name)
    return len(names)


def _site_builder(context: Any, where: str) -> Any:
    from great_expectations.render.renderer.site_builder import SiteBuilder

    return SiteBuilder(
        data_context=context, site_name=SITE_NAME, store_backend=_backend(where, "site"),
        show_how_to_buttons=False,
        # the index reads every result it lists: the newest only, so a build stays cheap after years of runs
        site_index_builder={"class_name": "DefaultSiteIndexBuilder", "validation_results_limit": INDEX_LIMIT},
        site_section_builders={"profiling": "None"},
        runtime_environment={"root_directory": None},
    )


@contextlib.contextmanager
def _locked(where: str):
    """Serialise builds into one local site (ingest DAGs of several sources run at once)."""
    site = local_site(where)
    if site is None:
        yield
        return
    site.parent.mkdir(parents=True, exist_ok=True)
    with open(site.parent / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def publish(run: RunValidation, suite: Any, where: str | None = None,
            now: datetime.datetime | None = None) -> str | None:
    """Store the run's merged result and render its Data Docs page (and the suite's page and
    the index); returns the page's path inside the site, or None when docs are off.

    A run published again (the suite ran again in validate) replaces its earlier page.
    """
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    where = location() if where is None else where
    if where is None:
        return None
    now = now or datetime.datetime.now(datetime.timezone.utc)
    run_name = _run_name(run.run_id)
    with _locked(where):
        context = _context(where)
        results = context.validation_results_store
        earlier = [key for key in results.list_keys()
                   if key.expectation_suite_identifier.name == run.source and key.run_id.run_name == run_name]
        for key in earlier:
            results.remove_key(key)
        suite_id = ExpectationSuiteIdentifier(name=run.source)
        context.expectations_store.add_or_update(suite_id, suite)
        run_identifier = RunIdentifier(run_name=run_name, run_time=now)
        result_id = ValidationResultIdentifier(suite_id, run_identifier, run.source)
        results.set(result_id, run.to_gx(run_identifier))
        share_compiled_templates()
        builder = _site_builder(context, where)
        pages = builder.target_store.store_backends["static_assets"]  # any file of the site, by path
        for key in earlier:  # the page of an earlier publish of this run
            if pages.has_key(_page_key(key)):
                pages.remove_key(_page_key(key))
        builder.build(resource_identifiers=[result_id, suite_id])
        available = _copy_offline_assets(pages)
        for key in (_page_key(result_id), _suite_key(suite_id), ("index.html",)):
            if pages.has_key(key):
                pages.set(key, offline_html(pages.get(key), depth=len(key) - 1, available=available),
                          content_type="text/html; charset=utf-8")
    page = "/".join(_page_key(result_id))
    log.info("data docs %s: %s (%d rows)", run.source, page, run.rows)
    return page


def _raised(info: dict | None) -> bool:
    """Whether GX recorded an exception (its info is flat, or one dict per metric)."""
    info = info or {}
    if "raised_exception" in info:
        return bool(info["raised_exception"])
    return any(isinstance(v, dict) and v.get("raised_exception") for v in info.values())


def _page_key(result_id: Any) -> tuple[str, ...]:
    parts = ("validations", *result_id.to_tuple())
    return (*parts[:-1], parts[-1] + ".html")


def _suite_key(suite_id: Any) -> tuple[str, ...]:
    parts = ("expectations", *suite_id.to_tuple())
    return (*parts[:-1], parts[-1] + ".html")


# --- offline assets --------------------------------------------------------------------------


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)  # no import: altair_viewer's __init__ imports altair
    if spec is None or not spec.submodule_search_locations:
        from renkei.errors import ConfigError

        raise ConfigError(f"Data Docs assets: package {module!r} is not installed; install requirements.lock")
    return Path(next(iter(spec.submodule_search_locations)))


# Site path under static/offline/ -> (package, file inside it). Versions as pinned in the lock.
ASSETS: dict[str, tuple[str, str]] = {
    "bootstrap/bootstrap.min.css": ("xstatic.pkg.bootstrap", "data/css/bootstrap.min.css"),
    "bootstrap/bootstrap.bundle.min.js": ("xstatic.pkg.bootstrap", "data/js/bootstrap.bundle.min.js"),
    "jquery/jquery.min.js": ("xstatic.pkg.jquery", "data/jquery.min.js"),
    "font-awesome/css/all.min.css": ("xstatic.pkg.font_awesome", "data/css/all.min.css"),
    "datepicker/bootstrap-datepicker.css": ("xstatic.pkg.bootstrap_datepicker", "data/bootstrap-datepicker3.standalone.css"),
    "datepicker/bootstrap-datepicker.js": ("xstatic.pkg.bootstrap_datepicker", "data/bootstrap-datepicker.js"),
    "vega/vega.js": ("altair_viewer", "scripts/vega-5.21.0.js"),
    "vega/vega-lite.js": ("altair_viewer", "scripts/vega-lite-4.17.0.js"),
    "vega/vega-embed.js": ("altair_viewer", "scripts/vega-embed-6.20.0.js"),
}
FONT_DIRS = {"font-awesome/webfonts": ("xstatic.pkg.font_awesome", "data/webfonts")}

# Site path under static/offline/ -> (npm package, file inside it), from tools/offline-assets'
# package-lock.json: bootstrap-table fills the index page's table (and sorts the others), and the
# dark theme applies when the reader's system prefers dark. GX 1.24 asks for these versions.
NODE_MODULES = Path(__file__).resolve().parents[3] / "tools" / "offline-assets" / "node_modules"
NPM_ASSETS: dict[str, tuple[str, str]] = {
    "bootstrap-table/bootstrap-table.min.css": ("bootstrap-table", "dist/bootstrap-table.min.css"),
    "bootstrap-table/bootstrap-table.min.js": ("bootstrap-table", "dist/bootstrap-table.min.js"),
    "bootstrap-table/bootstrap-table-filter-control.min.css":
        ("bootstrap-table", "dist/extensions/filter-control/bootstrap-table-filter-control.min.css"),
    "bootstrap-table/bootstrap-table-filter-control.min.js":
        ("bootstrap-table", "dist/extensions/filter-control/bootstrap-table-filter-control.min.js"),
    "bootstrap-dark/bootstrap-prefers-dark.css": ("@forevolve/bootstrap-dark", "dist/css/bootstrap-prefers-dark.css"),
}

# CDN URL (prefix) in GX's templates -> the offline asset, or None to drop the tag.
CDN: list[tuple[str, str | None]] = [
    ("https://maxcdn.bootstrapcdn.com/bootstrap/", "bootstrap/bootstrap.min.css"),
    ("https://stackpath.bootstrapcdn.com/bootstrap/", "bootstrap/bootstrap.bundle.min.js"),
    ("https://cdnjs.cloudflare.com/ajax/libs/popper.js/", None),  # inside bootstrap.bundle
    ("https://code.jquery.com/jquery-", "jquery/jquery.min.js"),
    ("https://cdnjs.cloudflare.com/ajax/libs/font-awesome/", "font-awesome/css/all.min.css"),
    ("https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/", None),  # per file type below
    ("https://cdn.jsdelivr.net/npm/vega@", "vega/vega.js"),
    ("https://cdn.jsdelivr.net/npm/vega-lite@", "vega/vega-lite.js"),
    ("https://cdn.jsdelivr.net/npm/vega-embed@", "vega/vega-embed.js"),
    ("https://unpkg.com/bootstrap-table@", None),  # per file below
    ("https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@", "bootstrap-dark/bootstrap-prefers-dark.css"),
]
_GX_LOGO = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png"
_TAG = re.compile(r"<(script|link|img)\b[^>]*?\b(?:src|href)\s*=\s*[\"'](https?:)?//[^>]*>(?:\s*</script>)?",
                  re.IGNORECASE)
_URL = re.compile(r"\b(?:src|href)\s*=\s*[\"']((?:https?:)?//[^\"']+)[\"']", re.IGNORECASE)


def _local_asset(url: str) -> str | None:
    if url.startswith("https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/"):
        return "datepicker/bootstrap-datepicker." + ("css" if url.endswith(".css") else "js")
    if url.startswith("https://unpkg.com/bootstrap-table@"):
        # …/bootstrap-table.min.js, …/bootstrap-table-filter-control.css: GX names the minified file or not
        base, _, kind = url.split("?")[0].rsplit("/", 1)[-1].rpartition(".")
        asset = f"bootstrap-table/{base.removesuffix('.min')}.min.{kind}"
        return asset if asset in NPM_ASSETS else None
    for prefix, asset in CDN:
        if url.startswith(prefix):
            return asset
    return None


def offline_html(html: str, depth: int, available: Collection[str] | None = None) -> str:
    """The page with every external script/style/image tag pointed at the site's own copy of
    the asset, or removed when no pinned package ships it. ``depth``: folders below the site;
    ``available``: the assets the site holds (None: all), a tag for any other is removed too."""
    up = "../" * depth

    def replace(match: re.Match) -> str:
        tag = match.group(0)
        url = _URL.search(tag).group(1)
        if url.startswith(_GX_LOGO):
            return tag.replace(url, f"{up}static/images/logo-long.png")
        asset = _local_asset(url)
        if asset is None:
            return f"<!-- renkei: {url.split('?')[0]} not available offline -->"
        if available is not None and asset not in available:
            return f"<!-- renkei: {url.split('?')[0]} not installed (make venv: tools/offline-assets) -->"
        local = f"{up}{'/'.join(OFFLINE)}/{asset}"
        tag = re.sub(r"\s(integrity|crossorigin)\s*=\s*[\"'][^\"']*[\"']", "", tag)
        return tag.replace(url, local)

    return _TAG.sub(replace, html)


def _copy_offline_assets(pages: Any) -> set[str]:
    """Copy the asset files into the site once (a marker lists those copied); returns the assets
    the site holds. An npm asset that is not installed is left out, with a warning."""
    marker = (*OFFLINE, "assets.json")
    have = set(json.loads(pages.get(marker))) if pages.has_key(marker) else set()
    wanted = {*ASSETS, *FONT_DIRS, *NPM_ASSETS}
    missing = wanted - have
    copied = set()
    for name in sorted(missing):
        files = _asset_files(name)
        if files is None:
            continue
        for key, source in files:
            pages.set(key, source.read_bytes(), content_type=_content_type(source.name))
        copied.add(name)
    if missing - copied:
        log.warning("data docs: %s not installed under %s; the pages are built without them (the index "
                    "page's table stays empty): run `make venv` (npm ci --prefix tools/offline-assets)",
                    ", ".join(sorted(missing - copied)), NODE_MODULES)
    if copied:
        pages.set(marker, json.dumps(sorted(have | copied)), content_type="application/json")
    return (have | copied) & wanted


def _asset_files(name: str) -> list[tuple[tuple[str, ...], Path]] | None:
    """(site key, source file) for one offline asset; None for an npm asset not installed."""
    key = (*OFFLINE, *name.split("/"))
    if name in ASSETS:
        pkg, inside = ASSETS[name]
        return [(key, _package_dir(pkg) / inside)]
    if name in FONT_DIRS:
        pkg, inside = FONT_DIRS[name]
        return [((*key, font.name), font) for font in sorted((_package_dir(pkg) / inside).iterdir())]
    pkg, inside = NPM_ASSETS[name]
    source = NODE_MODULES / pkg / inside
    return [(key, source)] if source.is_file() else None


def _content_type(name: str) -> str:
    import mimetypes

    return mimetypes.guess_type(name)[0] or "application/octet-stream"


# --- finding pages (local store) ------------------------------------------------------------


def pages_of(source: str, where: str | None = None) -> list[dict]:
    """The source's pages in a local site, newest run first: [{"run_name", "run_time", "path"}]."""
    site = local_site(location() if where is None else where)
    if site is None or not (site / "validations" / source).is_dir():
        return []
    found = []
    for page in (site / "validations" / source).glob(f"*/*/{source}.html"):
        found.append({"run_name": page.parent.parent.name, "run_time": page.parent.name,
                      "path": page.relative_to(site).as_posix()})
    return sorted(found, key=lambda p: p["run_time"], reverse=True)


def page_for(source: str, run_id: str | None = None, where: str | None = None) -> str | None:
    """The site path of the source's page for this run (None: its latest page), if built."""
    pages = pages_of(source, where)
    if run_id is not None:
        pages = [p for p in pages if p["run_name"] == _run_name(run_id)]
    return pages[0]["path"] if pages else None


def for_run(source: str, run_id: str) -> RunValidation | None:
    """A collector for this run's results, or None when Data Docs are off (``RENKEI_DATA_DOCS=off``)."""
    return RunValidation(source, run_id) if location() is not None else None


def publish_run(run: RunValidation | None, expectations_dir: Path | None = None) -> str | None:
    """:func:`publish` for an ingest step: a failure to render the docs is logged (its type only:
    a message may quote a value) and never fails the ingest, whose data is already decided."""
    if run is None or not run.rows:
        return None
    from renkei.quality.gx_runner import load_suite

    try:
        return publish(run, load_suite(run.source, expectations_dir))
    except Exception as error:  # noqa: BLE001 - the docs are a report: the ingest stands without them
        log.warning("data docs %s: not built (%s); the ingest is unaffected, see docs/OPERATIONS.md",
                    run.source, type(error).__name__)
        return None
