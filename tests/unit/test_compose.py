"""docker-compose.yaml, the Dockerfile and .dockerignore, checked as data (no Docker engine in CI).

Each check is one that a plausible edit of the deployment would break: a service left on
another executor or image, a store shared between Airflow and the warehouse, a missing health
check or init dependency, a dependency cycle, the keyring baked into the image or mounted on a
component that never needs it, a password written as a literal, an env var the Renkei code reads
that no service sets.
"""

from __future__ import annotations

import os

import re
import shlex
from pathlib import Path, PurePosixPath

import pytest
import yaml

from renkei.runner import airflow_env
from renkei.settings import REPO_ROOT

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yaml").read_text(encoding="utf-8"))
SERVICES: dict[str, dict] = COMPOSE["services"]
DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
DOCKERIGNORE = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").split()
ENV_EXAMPLE = (REPO_ROOT / ".env.example").read_text(encoding="utf-8")

AIRFLOW_CORE = ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                "airflow-triggerer", "airflow-worker")
STORES = ("postgres", "redis", "warehouse", "events")
# Components that run Renkei code: DAG parsing (dag-processor), triggers, tasks (workers).
RUNS_RENKEI = ("airflow-dag-processor", "airflow-triggerer", "airflow-worker")
# Components that queue tasks or run them (the Celery broker and result backend).
CELERY_USERS = ("airflow-scheduler", "airflow-worker", "airflow-worker-delivery")
# Components that must never hold the keyring: they run no task.
NO_KEYS = ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
           "airflow-triggerer", *STORES)
VAR_REF = re.compile(r"^\$\{(?P<name>[A-Z0-9_]+)(?::?(?P<op>[-?])(?P<arg>[^}]*))?\}$")
URL = re.compile(r"^(?P<scheme>[a-z0-9+]+)://(?:(?P<user>[^:@/]*)(?::(?P<password>\$\{[^}]*\}|[^@]*))?@)?"
                 r"(?P<host>[^:/?]*)(?::(?P<port>\d+))?(?:/(?P<db>[^?]*))?")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_KEY$")


def airflow_services() -> list[str]:
    return sorted(set(AIRFLOW_CORE) | {n for n, s in SERVICES.items() if "airflow" in str(s.get("command", ""))})


def env(name: str) -> dict[str, str]:
    raw = SERVICES[name].get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: "" if v is None else str(v) for k, v in raw.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in (raw.strip() for raw in text.splitlines()) if line and not line.startswith("#")]


def image_env() -> dict[str, str]:
    out: dict[str, str] = {}
    for op, arg in dockerfile_instructions():
        if op == "ENV":
            out.update(tok.split("=", 1) for tok in shlex.split(arg))
    return out


def effective_env(name: str) -> dict[str, str]:
    return {**image_env(), **env(name)}


def url(value: str) -> re.Match:
    m = URL.match(value)
    assert m, f"not a URL: {value!r}"
    return m


def depends(name: str) -> dict[str, dict]:
    dep = SERVICES[name].get("depends_on") or {}
    return {d: {"condition": "service_started"} for d in dep} if isinstance(dep, list) else dep


def secret_mounts(name: str) -> dict[str, str]:
    """source secret → absolute path inside the container."""
    out = {}
    for item in SERVICES[name].get("secrets") or []:
        src, target = (item, item) if isinstance(item, str) else (item["source"], item.get("target", item["source"]))
        out[src] = target if target.startswith("/") else f"/run/secrets/{target}"
    return out


# -- the service graph -----------------------------------------------------------------------

def test_required_services_present():
    assert set(AIRFLOW_CORE) | set(STORES) <= set(SERVICES), set(AIRFLOW_CORE) | set(STORES) - set(SERVICES)


@pytest.mark.parametrize("name", airflow_services())
def test_every_airflow_service_uses_celery_and_the_renkei_image(name):
    s = SERVICES[name]
    assert env(name).get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor"
    assert s.get("image") == SERVICES["airflow-worker"]["image"], "one image for every component"
    build = s.get("build")
    context = build if isinstance(build, str) else (build or {}).get("context")
    assert context == ".", f"{name} must build the repository's Dockerfile"
    assert (REPO_ROOT / context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")).exists()


@pytest.mark.parametrize("name", CELERY_USERS)
def test_broker_is_redis_and_result_backend_is_the_metadata_postgres(name):
    e = env(name)
    broker, backend = (url(e[k]) for k in ("AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND"))
    meta = url(env("airflow-scheduler")["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert broker["scheme"] == "redis" and broker["host"] == "redis"
    assert SERVICES["redis"]["image"].startswith("redis:")
    assert backend["scheme"] == "db+postgresql" and meta["scheme"].startswith("postgresql")
    assert (backend["host"], backend["db"]) == (meta["host"], meta["db"]) == ("postgres", "airflow")
    # workers write task results as airflow_celery (its two tables), never as the metadata owner
    assert backend["user"] == ("airflow" if name == "airflow-scheduler" else "airflow_celery")
    assert SERVICES["postgres"]["image"].startswith("postgres:")


def test_warehouse_is_a_separate_postgres_with_its_own_volume():
    wh = url(env("airflow-worker")["RENKEI_WAREHOUSE_URL"])
    meta = url(env("airflow-scheduler")["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert wh["host"] == "warehouse" != meta["host"]
    assert SERVICES["warehouse"]["image"].startswith("postgres:")
    vol = {name: _named_volume(name, "/var/lib/postgresql/data") for name in ("warehouse", "postgres")}
    assert vol["warehouse"] and vol["postgres"] and vol["warehouse"] != vol["postgres"]
    assert vol["warehouse"] in COMPOSE["volumes"]


def _named_volume(service: str, target: str) -> str | None:
    for v in SERVICES[service].get("volumes") or []:
        src, dst = (v.split(":")[0], v.split(":")[1]) if isinstance(v, str) else (v.get("source"), v.get("target"))
        if dst == target and src and not src.startswith((".", "/", "$")):
            return src
    return None


def test_event_bus_is_a_persistent_redis_apart_from_the_broker():
    e = env("airflow-worker")
    assert e["RENKEI_CHANNEL_KIND"] == "redis_stream"
    events = url(e["RENKEI_REDIS_URL"])
    assert events["host"] == "events" != url(e["AIRFLOW__CELERY__BROKER_URL"])["host"]
    cmd = " ".join(SERVICES["events"]["command"]) if isinstance(SERVICES["events"]["command"], list) else SERVICES["events"]["command"]
    assert "--appendonly yes" in cmd and "noeviction" in cmd, "streams must survive a restart and never be evicted"
    assert _named_volume("events", "/data") in COMPOSE["volumes"]


def test_every_long_running_service_has_a_healthcheck_and_a_restart_policy():
    for name, s in SERVICES.items():
        if name == "airflow-init":
            assert s.get("restart") == "no"
            continue
        hc = s.get("healthcheck") or {}
        assert hc.get("test") and not hc.get("disable"), f"{name} has no health check"
        assert s.get("restart") in ("always", "unless-stopped", "on-failure"), name


@pytest.mark.parametrize("name, probe", [
    ("airflow-apiserver", "localhost:8080/api/v2/"),
    ("airflow-scheduler", ":8974/health"),
    ("airflow-dag-processor", "--job-type DagProcessorJob"),
    ("airflow-triggerer", "--job-type TriggererJob"),
    ("airflow-worker", "inspect ping"),
    ("postgres", "pg_isready"),
    ("warehouse", "pg_isready"),
    ("redis", "redis-cli ping"),
    ("events", "redis-cli ping"),
])
def test_health_checks_probe_their_own_component(name, probe):
    assert probe in " ".join(SERVICES[name]["healthcheck"]["test"])
    if name == "airflow-scheduler":
        assert env(name)["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"].lower() == "true"
    if name == "airflow-apiserver":
        assert "--port" in SERVICES[name]["command"] and "8080" in SERVICES[name]["command"]


def test_init_runs_first_and_the_stores_are_healthy_before_use():
    for name in airflow_services():
        if name == "airflow-init":
            continue
        assert depends(name).get("airflow-init", {}).get("condition") == "service_completed_successfully", name
    for name in airflow_services():
        for dep, spec in depends(name).items():
            if dep in STORES:
                assert spec["condition"] == "service_healthy", (name, dep)
    assert {"postgres", "warehouse"} <= set(depends("airflow-init"))
    assert "airflow db migrate" in str(SERVICES["airflow-init"]["command"])
    assert "airflow-apiserver" in depends("airflow-worker"), "workers call the Execution API"


def test_depends_on_graph_references_existing_services_and_is_acyclic():
    state: dict[str, str] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name in SERVICES, f"{path[-1]} depends on unknown service {name}"
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", f"dependency cycle: {' -> '.join(path + (name,))}"
        state[name] = "open"
        for dep in depends(name):
            visit(dep, path + (name,))
        state[name] = "done"

    for name in SERVICES:
        visit(name, (name,))


def test_airflow_components_share_their_secrets_and_find_the_execution_api():
    shared = ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
              "AIRFLOW__API__SECRET_KEY")
    for key in shared:
        values = {env(n)[key] for n in airflow_services() if key in env(n)}
        assert len(values) == 1, f"{key} differs between components: {values}"
    api = url(env("airflow-worker")["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert (api["host"], api["port"], api["db"]) == ("airflow-apiserver", "8080", "execution/")


def test_workers_scale_and_take_their_concurrency_from_the_environment():
    w = SERVICES["airflow-worker"]
    assert "container_name" not in w and not w.get("ports"), "a fixed name or host port breaks --scale"
    ref = VAR_REF.match(env("airflow-worker")["AIRFLOW__CELERY__WORKER_CONCURRENCY"])
    assert ref and ref["op"] == "-" and ref["arg"].isdigit()
    limits = w["deploy"]["resources"]["limits"]
    assert limits.get("cpus") and limits.get("memory")
    assert w.get("stop_grace_period"), "workers need time for a warm shutdown"


# -- the Celery settings tests/e2e/test_celery.py proved (renkei.devstack) -------------------

def _default(value: str) -> str:
    """A ``${VAR:-default}`` reference's default; a literal as it is."""
    ref = VAR_REF.match(value)
    return ref["arg"] if ref and ref["op"] == "-" else value


@pytest.mark.parametrize("name", CELERY_USERS)
def test_celery_settings_are_those_the_e2e_test_ran(name):
    from renkei.devstack import celery_env

    ran = celery_env("t", "postgresql+psycopg://airflow@postgres:5432/airflow")
    e = env(name)
    for key in ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY", "RENKEI_DELIVERY_QUEUE"):
        assert _default(e[key]) == ran[key], key
    # the key prefix: the test gives each stack its own (renkei-dev-<tag>:celery:), compose one
    prefix = "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX"
    assert ran[prefix] == "renkei-dev-t:celery:" and e[prefix] == "renkei:celery:"
    for key in ("AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND"):
        assert (url(e[key])["scheme"], url(e[key])["db"]) == (url(ran[key])["scheme"], url(ran[key])["db"]), key
    assert set(ran) - {prefix} <= set(e), f"{name} lacks {sorted(set(ran) - {prefix} - set(e))}"


@pytest.mark.parametrize("name", ("airflow-scheduler", "airflow-worker", "airflow-worker-delivery"))
def test_latency_settings_are_those_the_e2e_tests_ran(name):
    """The scheduler's idle sleep and the supervisors' wait: what DevStack (e2e, benchmarks) ran."""
    from renkei.devstack import LATENCY_SETTINGS

    e = env(name)
    assert {k: e.get(k) for k in LATENCY_SETTINGS} == LATENCY_SETTINGS


def test_worker_command_lines_are_those_the_e2e_test_ran():
    from renkei.devstack import WORKER_WITHOUT, celery_worker_commands

    def without_hostname(args: list[str]) -> list[str]:  # one machine in the test: named workers
        i = args.index("--celery-hostname")
        return args[:i] + args[i + 2:]

    ran = celery_worker_commands("t", 1)
    assert SERVICES["airflow-worker"]["command"] == without_hostname(ran["worker-default-1"])
    assert SERVICES["airflow-worker-delivery"]["command"] == without_hostname(ran["worker-delivery"])
    for name in ("airflow-worker", "airflow-worker-delivery"):  # the test's workers ran without them too
        assert not set(WORKER_WITHOUT) & set(env(name)), name


def test_worker_health_check_is_the_ping_the_e2e_test_ran():
    from renkei.devstack import celery_ping_command

    test = SERVICES["airflow-worker"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and shlex.split(test[1]) == celery_ping_command("celery@$${HOSTNAME}")
    assert SERVICES["airflow-worker-delivery"]["healthcheck"]["test"] == test


# -- volumes, secrets, the keyring -----------------------------------------------------------

def test_named_volumes_are_declared_and_used():
    used = set()
    for s in SERVICES.values():
        for v in s.get("volumes") or []:
            src = v.split(":")[0] if isinstance(v, str) else v.get("source")
            if src and not src.startswith((".", "/", "$", "~")):
                assert src in (COMPOSE.get("volumes") or {}), f"volume {src} is not declared"
                used.add(src)
    assert used == set(COMPOSE["volumes"]), f"declared but unused: {set(COMPOSE['volumes']) - used}"


def test_keyring_is_a_secret_mounted_only_where_tasks_run():
    declared = COMPOSE["secrets"]
    assert "renkei_keyring" in declared and declared["renkei_keyring"].get("file")
    assert "renkei_keyring" in secret_mounts("airflow-worker")
    for name, s in SERVICES.items():
        mounts = secret_mounts(name)
        for src in mounts:
            assert src in declared, f"{name} mounts undeclared secret {src}"
        if name in NO_KEYS:
            assert not any("keyring" in src for src in mounts), f"{name} runs no task: it must not hold the keyring"
            assert "RENKEI_KEYRING" not in env(name)
        keyring_mounts = [path for src, path in mounts.items() if "keyring" in src]
        if keyring_mounts or "RENKEI_KEYRING" in env(name):
            assert env(name).get("RENKEI_KEYRING") in keyring_mounts, f"{name}: RENKEI_KEYRING must name its mount"
        for item in s.get("secrets") or []:
            mode = item.get("mode") if isinstance(item, dict) else None
            if mode is not None:
                mode = int(str(mode).replace("0o", ""), 8) if isinstance(mode, str) else mode
                assert mode & 0o077 == 0, f"{name}: KeyRing.load refuses a group/world-readable keyring"


def test_keyring_files_stay_out_of_the_image():
    for spec in COMPOSE["secrets"].values():
        ref = VAR_REF.match(spec["file"])
        default = ref["arg"] if ref else spec["file"]
        assert PurePosixPath(default).parts[0] == "var", f"{default}: keep keyrings under var/ (git- and docker-ignored)"
    assert "var/" in DOCKERIGNORE and ".env" in DOCKERIGNORE and any("keyring" in p for p in DOCKERIGNORE)
    copies = [arg for op, arg in dockerfile_instructions() if op in ("COPY", "ADD")]
    assert not any(shlex.split(a)[0] in (".", "./") for a in copies), "COPY . would take whatever is in the context"
    assert not any(re.search(r"(^|[\s/])(var|\.env)([\s/]|$)|keyring", a) for a in copies)


# -- no secret literal anywhere --------------------------------------------------------------

def _secret_free(value: str) -> bool:
    ref = VAR_REF.match(value)
    return bool(ref) and not (ref["op"] == "-" and ref["arg"])


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_passwords_and_keys_come_from_variables(name):
    for key, value in env(name).items():
        if SECRET_NAME.search(key) and not key.endswith("_FILE"):
            assert _secret_free(value), f"{name}: {key} must be ${{VAR}} from .env, not a literal"
        ref = VAR_REF.match(value)
        shown = ref["arg"] if ref and ref["op"] == "-" else value  # a default is a literal too
        if "://" in shown:
            pw = url(shown)["password"]
            assert pw is None or _secret_free(pw), f"{name}: {key} has a literal password"
    command = str(SERVICES[name].get("command", ""))
    assert not re.search(r"requirepass\s+(?![\"']?\$)", command), f"{name}: literal Redis password"


def _strings(node) -> list[str]:
    if isinstance(node, dict):
        return [t for k, v in node.items() for t in _strings(k) + _strings(v)]
    if isinstance(node, list):
        return [t for v in node for t in _strings(v)]
    return [node] if isinstance(node, str) else []


def test_every_required_variable_is_documented_and_empty_in_env_example():
    required = {m for text in _strings(COMPOSE) for m in re.findall(r"\$\{([A-Z0-9_]+):\?", text)}
    assert len(required) >= 5, f"secrets must be required variables (${{VAR:?}}), found {sorted(required)}"
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.splitlines() if "=" in line and not line.startswith("#"))
    assert required <= set(example), f"missing from .env.example: {required - set(example)}"
    for key, value in example.items():
        if SECRET_NAME.search(key):
            assert value.strip() == "", f".env.example must not carry a value for {key}"


# -- the Renkei code's environment -----------------------------------------------------------

def _code_reads(path: Path) -> set[str]:
    """The RENKEI_* names a module reads with os.environ.get("…") or os.environ["…"]."""
    return set(re.findall(r'environ(?:\.get\(|\[)\s*"(RENKEI_[A-Z_]+)"', path.read_text(encoding="utf-8")))


def test_every_variable_the_code_needs_in_production_is_set(tmp_path):
    # settings.py (stores, config, suites), channel.py (the event bus), and what the embedded
    # runner gives Airflow: a production deployment must set the same, through the image or compose.
    needed = _code_reads(REPO_ROOT / "plugins/renkei/settings.py") | _code_reads(REPO_ROOT / "plugins/renkei/events/channel.py")
    given = airflow_env(tmp_path, "sqlite://", "sqlite://", tmp_path / "k.json")
    exempt = {"PYTHONPATH": "the package is pip-installed in the image",
              "AIRFLOW__LOGGING__BASE_LOG_FOLDER": "default $AIRFLOW_HOME/logs is the airflow-logs volume"}
    # airflow_env starts from this process's environment: only what it sets itself counts.
    inherited = {k for k, v in os.environ.items() if given.get(k) == v}
    needed |= {k for k in given if k.startswith(("RENKEI_", "AIRFLOW__", "AIRFLOW_HOME"))
               and k not in exempt and k not in inherited}
    assert {"RENKEI_WAREHOUSE_URL", "RENKEI_REDIS_URL", "RENKEI_KEYRING", "AIRFLOW__CORE__DAGS_FOLDER"} <= needed
    # Credentials are per component (test_each_component_gets_exactly_its_secrets); the rest everywhere.
    needed -= set(CREDENTIALS)
    for name in RUNS_RENKEI:
        have = effective_env(name)
        missing = {k for k in needed if k not in have}
        assert not missing, f"{name} lacks {sorted(missing)}"
    assert {"RENKEI_WAREHOUSE_URL", "RENKEI_EXTRACTS_URL", "RENKEI_REDIS_URL", "RENKEI_KEYRING"} <= set(env("airflow-worker"))


def test_configured_paths_exist_in_the_image():
    workdir, copied = PurePosixPath("/"), set()
    for op, arg in dockerfile_instructions():
        if op == "WORKDIR":
            workdir = workdir / arg
        elif op == "COPY":
            dest = PurePosixPath(shlex.split(arg)[-1])
            copied.add(str(dest if dest.is_absolute() else workdir / dest))
    have = effective_env("airflow-worker")
    for key in ("AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__PLUGINS_FOLDER", "RENKEI_CONFIG_DIR", "RENKEI_EXPECTATIONS_DIR"):
        assert have[key] in copied, f"{key}={have[key]} is not a folder the Dockerfile copies"


# -- the Dockerfile --------------------------------------------------------------------------

def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_dockerfile_installs_the_lock_the_celery_provider_and_renkei_as_non_root():
    ops = dockerfile_instructions()
    stages = [arg for op, arg in ops if op == "FROM"]
    base = stages[-1]  # the runtime image; earlier stages only build assets
    assets = next((a for a in stages[:-1] if a.split()[-1] == "offline-assets"), None)
    assert assets and any(op == "COPY" and "--from=offline-assets" in arg and "tools/offline-assets/node_modules" in arg
                          for op, arg in ops), "the Data Docs' npm assets (bootstrap-table) must be in the image"
    assert re.match(r"(python:3\.11[.\w-]*|apache/airflow:3\.3\.2-python3\.11)$", base.split()[0]), base
    runs = " ".join(arg for op, arg in ops if op == "RUN")
    assert re.search(r"pip install[^&]*-r requirements\.lock", runs) and "pip check" in runs
    assert re.search(r"pip install[^&]*(-e \.|\s\.)(\s|$)", runs), "the renkei package must be installed"
    lock = (REPO_ROOT / "requirements.lock").read_text(encoding="utf-8")
    assert re.search(r"^apache-airflow-providers-celery==[\w.]+$", lock, re.M), "the lock pins the Celery provider"
    locked = {_norm(n): v for n, v in re.findall(r"^([\w.-]+)==(\S+)$", lock, re.M)}
    extra = {_norm(n): v for n, v in re.findall(r"\s([A-Za-z][\w.-]*)==([\w.]+)", runs)}
    assert all(locked.get(n) == v for n, v in extra.items()), \
        f"the Dockerfile pins other versions than the lock: {[(n, v, locked.get(n)) for n, v in extra.items() if locked.get(n) != v]}"
    assert "apache-airflow==3.3.2" in lock
    sources = {shlex.split(arg)[0].rstrip("/") for op, arg in ops if op == "COPY"}
    assert {"requirements.lock", "plugins", "dags", "config", "expectations"} <= sources
    user = [arg for op, arg in ops if op == "USER"]
    assert user, "the image must switch to a non-root user"
    uid = user[-1].split(":")[0]
    if ref := re.fullmatch(r"\$\{?(\w+)\}?", uid):  # USER ${ARG}: resolve the ARG's default
        uid = next(a.split("=", 1)[1] for op, a in ops if op == "ARG" and a.startswith(ref[1] + "="))
    assert uid not in ("root", "0"), "the image must run as a non-root user"


# -- least privilege (renkei/roles.py; docs/OPERATIONS.md, "Least privilege") -----------------

# Every environment key that carries a credential or a secret, and who holds it.
CREDENTIALS = ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET",
               "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND",
               "RENKEI_WAREHOUSE_URL", "RENKEI_EXTRACTS_URL", "RENKEI_REDIS_URL", "RENKEI_KEYRING")
META, FERNET, JWT, LOGKEY = CREDENTIALS[:4]
CELERY = {"AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND"}
EXPECTED_SECRETS: dict[str, set[str]] = {
    "airflow-init": {META, FERNET, "RENKEI_ADMIN_URL", "PIPELINE_DB_PASSWORD", "API_DB_PASSWORD",
                     "DELIVERY_DB_PASSWORD", "CELERY_RESULTS_DB_PASSWORD"},
    "airflow-apiserver": {META, FERNET, JWT, LOGKEY, "RENKEI_WAREHOUSE_URL"},
    "airflow-scheduler": {META, FERNET, JWT, *CELERY},
    "airflow-dag-processor": {META, FERNET, JWT},
    "airflow-triggerer": {META, FERNET, JWT, LOGKEY, "RENKEI_REDIS_URL"},
    "airflow-worker": {LOGKEY, *CELERY, "RENKEI_WAREHOUSE_URL", "RENKEI_EXTRACTS_URL", "RENKEI_REDIS_URL",
                       "RENKEI_KEYRING"},
    "airflow-worker-delivery": {LOGKEY, *CELERY, "RENKEI_WAREHOUSE_URL", "RENKEI_KEYRING", "RENKEI_SMTP_PASSWORD"},
}
# (service, env key) → the database role or Redis user it logs in as.
EXPECTED_LOGINS = {
    ("airflow-apiserver", "RENKEI_WAREHOUSE_URL"): "renkei_api",
    ("airflow-worker", "RENKEI_WAREHOUSE_URL"): "renkei_pipeline",
    ("airflow-worker", "RENKEI_EXTRACTS_URL"): "renkei_pipeline",
    ("airflow-worker-delivery", "RENKEI_WAREHOUSE_URL"): "renkei_delivery",
    ("airflow-worker", "RENKEI_REDIS_URL"): "renkei-relay",
    ("airflow-triggerer", "RENKEI_REDIS_URL"): "renkei-triggerer",
    ("airflow-init", "RENKEI_ADMIN_URL"): "renkei",
}
EXPECTED_MOUNTS = {"airflow-worker": {"renkei_keyring"}, "airflow-worker-delivery": {"renkei_keyring_delivery"},
                   "events": {"events_external_acl"}}


def _carries_secret(key: str, value: str) -> bool:
    if key.endswith("_FILE"):
        return False
    if SECRET_NAME.search(key) or key in CREDENTIALS:
        return True
    m = URL.match(value) if "://" in value and not value.startswith("${") else None
    return bool(m) and m["password"] is not None


@pytest.mark.parametrize("name", sorted(EXPECTED_SECRETS))
def test_each_component_gets_exactly_its_secrets(name):
    have = {k for k, v in env(name).items() if _carries_secret(k, v)}
    assert have == EXPECTED_SECRETS[name], f"{name}: extra {sorted(have - EXPECTED_SECRETS[name])}, " \
                                           f"missing {sorted(EXPECTED_SECRETS[name] - have)}"


def test_the_registry_boundary_settings_stay_on_the_delivery_worker():
    boundary = {"RENKEI_DELIVERY_URL", "RENKEI_RAW_DIR", "RENKEI_SMTP_HOST", "RENKEI_SMTP_USER", "RENKEI_SMTP_PASSWORD"}
    assert boundary <= set(env("airflow-worker-delivery"))
    for name in SERVICES:
        if name != "airflow-worker-delivery":
            assert not boundary & set(env(name)), name


def test_secret_mounts_are_exactly_what_each_component_uses():
    for name in SERVICES:
        assert set(secret_mounts(name)) == EXPECTED_MOUNTS.get(name, set()), name


def test_each_component_logs_in_as_its_own_role():
    for (name, key), user in EXPECTED_LOGINS.items():
        assert url(env(name)[key])["user"] == user, (name, key)
    # one password variable per role: only that role's component and the init that creates it see it
    for var, holders in {"PIPELINE_DB_PASSWORD": {"airflow-worker"}, "API_DB_PASSWORD": {"airflow-apiserver"},
                         "DELIVERY_DB_PASSWORD": {"airflow-worker-delivery"},
                         "CELERY_RESULTS_DB_PASSWORD": {"airflow-worker", "airflow-worker-delivery"},
                         "EVENTS_RELAY_PASSWORD": {"airflow-worker", "events"},
                         "EVENTS_TRIGGERER_PASSWORD": {"airflow-triggerer", "events"},
                         "WAREHOUSE_PASSWORD": {"warehouse"}, "EVENTS_PASSWORD": {"events"}}.items():
        seen = {n for n in SERVICES if any(f"${{{var}:" in v for v in env(n).values())}
        assert seen == holders | ({"airflow-init"} if "DB_PASSWORD" in var or var == "WAREHOUSE_PASSWORD" else set()), \
            (var, seen)


def test_init_creates_the_roles_and_the_schema_as_the_pipeline():
    command = str(SERVICES["airflow-init"]["command"])
    assert "roles.apply_postgres(" in command and "roles.apply_metadata(" in command
    assert "ensure_schema" not in command, "the schema is created by apply_postgres, logged in as renkei_pipeline"
    assert "events" not in depends("airflow-init")


def test_the_event_bus_acl_is_renkei_roles():
    from renkei import roles

    script = SERVICES["events"]["command"][-1]
    assert "requirepass" not in script and "--aclfile" in script and "/run/secrets/events_external_acl" in script
    # compose's $$ is a literal $ for the shell
    found = {m[0]: m[2] for m in re.findall(r'echo "user (\S+) on #\$\$\(h "\$\$(\w+)"\) ([^"]+)"', script)}
    assert set(found) == {"default", "renkei-relay", "renkei-triggerer"}, script
    rules = roles.redis_rules(roles.Layout.from_config())
    for user in ("renkei-relay", "renkei-triggerer"):
        assert found[user] == " ".join(rules[user]), user
    assert env("events")["RELAY_PASSWORD"] == "${EVENTS_RELAY_PASSWORD:?set EVENTS_RELAY_PASSWORD in .env}"
    assert env("events")["TRIGGERER_PASSWORD"].startswith("${EVENTS_TRIGGERER_PASSWORD:?")
