"""The three images build from the repository with deploy/'s Dockerfiles, as an operator builds them, and run.

On a real Docker Engine (tests/docker_engine.py: the one that answers, or Debian's dockerd started for the session
as root; otherwise these tests skip, saying why). Each build is the deploy README's command, from the repository
root, unchanged but for ``--network host`` (see PyPI below) and, for the GPU worker, ``--build-arg COMFYUI_IMAGE``.
What cannot be had here is stood in for, for these tests only (tests/images/), and nothing of it goes into a
Dockerfile:

- **Base images.** Docker Hub is out of reach, so the ``FROM`` names of the hub and seat Dockerfiles are tagged on one
  Debian bookworm minbase with Debian's Python 3.11 (debootstrap, from the mirror apt uses), made once per session.
  Its Python is Debian's, not python.org's as in the official images: ``python`` and ``pip`` come from
  python-is-python3 and python3-pip, and Debian's PEP 668 marker is removed, as the official images have none.
  Sizes are therefore those of this base plus the project's layers; both are printed.
- **PyPI.** HTTPS from inside a build goes through this network's TLS interception, whose CA must never enter an
  image. The requirements are built into a wheelhouse on the host once per session (``pip wheel``), served on
  127.0.0.1, and the stand-in base's ``/etc/pip.conf`` points pip there (``no-index``), so the builds run with
  ``--network host``.
- **ComfyUI.** No ComfyUI image can be had: the GPU worker image is built ``FROM`` a stand-in that holds the
  simulator in ComfyUI's place (``/comfyui/main.py``, started by start.sh as it starts ComfyUI), runs as root
  like RunPod's base, and is made from the same Python base.
- **PostgreSQL and Redis** are the machine's own, reached with ``--network host``: a scratch database, Redis db 5.

The seat and worker containers run with ``--network none`` (they need no one for these checks), so their health
endpoints are asked from inside, as their HEALTHCHECKs ask them; those checks run every second here
(``--health-interval``) instead of every 10 or 15 s, and are otherwise the images' own.

Figures (``BENCH`` lines, with ``-s``): each image's size and its build time, cold and rebuilt after a change to
one source file (docs/BENCHMARKS.md, "Images").
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import requests
from psycopg import sql

from tests.docker_engine import DockerEngine
from tests.gpu_worker import free_port
from tests.images import ROOT, copy_repository
from tests.images.built import DOCKERFILES
from tests.recorded import TINY_PATH

# For the rebuild: one source file each image copies, and a line that changes it.
CHANGED_FILE = {
    "hub": "jobs/services.py",
    "seat": "workshops/seat_frontend/app.py",
    "worker": "gpu_backends/worker/app.py",
}
CHANGE = "# changed by tests/test_images.py to time a rebuild\n"
# Where each image keeps its code, to read the changed file back.
CODE_DIR = {"hub": "/app", "seat": "/app", "worker": "/opt/comfyume-worker/app"}
HEALTH_PATH = {"hub": "/health", "seat": "/comfyume/health"}
# The one secret-looking value an image may carry: the hub's throwaway key for collectstatic (its Dockerfile).
THROWAWAY = "SECRET_KEY=collectstatic-only"
SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.IGNORECASE)
ASSIGNMENT = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)=(\S+)")
READY_SECONDS = 90


# --- What every image must be ----------------------------------------------------------------------------------


def secrets_in(engine: DockerEngine, tag: str) -> list[str]:
    """Secret-looking settings the image carries: in its environment, or in a build step's command."""
    found = [
        entry
        for entry in engine.inspect(tag)["Config"]["Env"] or []
        if SECRET_NAME.search(entry.split("=", 1)[0]) and entry.split("=", 1)[1]
    ]
    history = engine.run("history", "--no-trunc", "--format", "{{.CreatedBy}}", tag).stdout
    found += [
        match[0]
        for match in ASSIGNMENT.finditer(history)
        if SECRET_NAME.search(match[1]) and match[0].strip("\"'") != THROWAWAY
    ]
    return found


def test_the_secret_check_finds_a_secret_in_the_environment_or_a_build_step(images, tmp_path):
    (tmp_path / "Dockerfile").write_text(
        f"FROM {images.base}\nENV REDIS_PASSWORD=hunter2 LANGUAGE=en\nRUN API_TOKEN=abc123 true\n"
    )
    tag = f"{images.prefix}/leaky:latest"
    images.engine.run("build", "--network", "none", "-t", tag, ".", cwd=tmp_path)
    images.made.append(tag)
    found = secrets_in(images.engine, tag)
    assert "REDIS_PASSWORD=hunter2" in found and "API_TOKEN=abc123" in found and "LANGUAGE=en" not in found


def uid_inside(engine: DockerEngine, tag: str) -> str:
    return engine.run("run", "--rm", "--network", "none", "--entrypoint", "id", tag, "-u").stdout.strip()


@pytest.mark.parametrize("name", ["hub", "seat"])
def test_the_hub_and_seat_images_run_unprivileged_with_a_healthcheck_and_no_secret(images, name):
    engine, tag = images.engine, images.tags[name]
    config = engine.inspect(tag)["Config"]
    assert config["User"] not in ("", "root", "0", "0:0"), config["User"]
    assert uid_inside(engine, tag) != "0"
    healthcheck = " ".join(config.get("Healthcheck", {}).get("Test") or [])
    assert HEALTH_PATH[name] in healthcheck, config.get("Healthcheck")
    assert secrets_in(engine, tag) == []
    size, base = images.size_mb(tag), images.size_mb(images.base)
    print(f"\nBENCH image_{name}_mb {size:.0f} MB ({size - base:.0f} MB over its base)")


def test_the_worker_image_keeps_its_comfyui_base_user_and_has_a_readiness_healthcheck_and_no_secret(images):
    """ComfyUI images run ComfyUI as root (RunPod's base does; ComfyUI writes into its own folder there), and the
    worker image changes nothing about that: it runs as its base does, here the root of the stand-in."""
    engine, tag = images.engine, images.tags["worker"]
    config = engine.inspect(tag)["Config"]
    assert config["User"] == engine.inspect(images.comfyui)["Config"]["User"]
    assert uid_inside(engine, tag) == uid_inside(engine, images.comfyui)
    healthcheck = " ".join(config.get("Healthcheck", {}).get("Test") or [])
    assert ":%s/ready" in healthcheck and "COMFYUME_WORKER_PORT" in healthcheck, config.get("Healthcheck")
    assert secrets_in(engine, tag) == []
    base_mb = images.size_mb(images.comfyui)
    size = images.size_mb(tag)
    print(f"\nBENCH image_worker_mb {size:.0f} MB ({size - base_mb:.0f} MB over the stand-in ComfyUI image)")


# --- Running them ----------------------------------------------------------------------------------------------


def wait_healthy(engine: DockerEngine, container: str, timeout: float = READY_SECONDS) -> dict[str, Any]:
    """The container's state once Docker says its HEALTHCHECK passes; fails with its log if not in time."""
    deadline = time.monotonic() + timeout
    while True:
        state = engine.inspect(container)["State"]
        health = (state.get("Health") or {}).get("Status")
        if health == "healthy":
            return state
        if not state["Running"] or time.monotonic() > deadline:
            logs = engine.run("logs", "--tail", "60", container, check=False)
            pytest.fail(f"{container}: {health!r}, running={state['Running']}\n{logs.stdout}\n{logs.stderr}")
        time.sleep(0.5)


def get_inside(engine: DockerEngine, container: str, url: str, python: str = "python") -> tuple[int, Any]:
    """GET ``url`` from inside the container (its own network): the status and the JSON body."""
    script = (
        "import json, urllib.error, urllib.request\n"
        "try:\n"
        f"    answer = urllib.request.urlopen({url!r}, timeout=10)\n"
        "except urllib.error.HTTPError as exc:\n"
        "    answer = exc\n"
        "print(json.dumps([answer.status, json.loads(answer.read())]))\n"
    )
    status, body = json.loads(engine.run("exec", container, python, "-c", script).stdout)
    return status, body


@pytest.fixture
def container(images) -> Iterator[list[str]]:
    """Names of the containers a test starts; each is removed afterwards, with its volumes."""
    names: list[str] = []
    yield names
    for name in names:
        images.engine.run("rm", "--force", "--volumes", name, check=False)


def database_server() -> str | None:
    """The PostgreSQL server the suite uses (DATABASE_URL), else the machine's on 127.0.0.1:5432, if it answers."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        url = "postgres://postgres@127.0.0.1:5432/postgres"
    try:
        psycopg.connect(urlunsplit(urlsplit(url)._replace(path="/postgres")), connect_timeout=3).close()
    except psycopg.Error:
        return None
    return url


def redis_server() -> str | None:
    """The Redis the suite uses (REDIS_URL), else the machine's on 127.0.0.1:6379: its database 5."""
    url = os.environ.get("REDIS_URL", "") or "redis://127.0.0.1:6379/0"
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=3).close()
    except OSError:
        return None
    return urlunsplit(parts._replace(path="/5"))


@contextlib.contextmanager
def database_of_its_own(server: str, prefix: str = "comfyume_images") -> Iterator[str]:
    """A database made on ``server`` for one container test, and dropped after it; its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    maintenance = urlunsplit(urlsplit(server)._replace(path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(maintenance, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def scratch_database() -> Iterator[str]:
    server = database_server()
    if server is None:
        pytest.skip("no PostgreSQL answers (DATABASE_URL, or 127.0.0.1:5432) for the hub container")
    with database_of_its_own(server) as url:
        yield url


def test_the_hub_image_migrates_and_answers_health_on_postgresql_and_redis(images, container, scratch_database):
    engine, tag = images.engine, images.tags["hub"]
    redis_url = redis_server()
    if redis_url is None:
        pytest.skip("no Redis answers (REDIS_URL, or 127.0.0.1:6379) for the hub container")
    settings = {
        "SECRET_KEY": secrets.token_urlsafe(32),  # the container's, never the image's
        "DATABASE_URL": scratch_database,
        "REDIS_URL": redis_url,
        "COMFYUME_REDIS_PREFIX": f"cfme-images-{os.getpid()}",
    }
    env = [arg for key, value in settings.items() for arg in ("--env", f"{key}={value}")]
    migrate = engine.run("run", "--rm", "--network", "host", *env, tag, "python", "manage.py", "migrate", "--noinput")
    assert "Applying workshops." in migrate.stdout

    # The image's own command and health check, on a free port instead of 8000 (the host's network is shared).
    config = engine.inspect(tag)["Config"]
    command, check = list(config["Cmd"]), config["Healthcheck"]["Test"]
    assert command[command.index("-p") + 1] == "8000" and "127.0.0.1:8000/health" in check[1], (command, check)
    port = str(free_port())
    command[command.index("-p") + 1], command[command.index("-b") + 1] = port, "127.0.0.1"
    name = f"{images.prefix}-hub"
    container.append(name)
    engine.run("run", "--detach", "--name", name, "--network", "host", *env, tag, *command)
    deadline, answer = time.monotonic() + READY_SECONDS, None
    while answer is None:
        try:
            answer = requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
        except requests.ConnectionError:
            assert engine.inspect(name)["State"]["Running"], engine.run("logs", name).stderr[-3000:]
            assert time.monotonic() < deadline, engine.run("logs", name).stderr[-3000:]
            time.sleep(0.5)
    assert answer.status_code == 200, answer.text
    assert answer.json()["database"] == "ok" and answer.json()["redis"] == "ok"
    assert check[0] == "CMD-SHELL"
    engine.run("exec", name, "sh", "-c", check[1].replace("127.0.0.1:8000/", f"127.0.0.1:{port}/"))


def test_the_seat_image_serves_its_health_endpoint_and_turns_healthy(images, container):
    engine, name = images.engine, f"{images.prefix}-seat"
    container.append(name)
    engine.run(
        "run", "--detach", "--name", name, "--network", "none", "--health-interval", "1s",
        "--env", "COMFYUME_HUB_URL=http://hub.invalid:8000", "--env", f"COMFYUME_SEAT_TOKEN={secrets.token_hex(16)}",
        "--env", "COMFYUME_SEAT_LABEL=user001", images.tags["seat"],
    )  # fmt: skip
    wait_healthy(engine, name)
    status, body = get_inside(engine, name, "http://127.0.0.1:8188/comfyume/health")
    assert (status, body) == (200, {"status": "ok", "seat": "user001"})


def test_the_worker_image_starts_comfyui_and_the_worker_as_on_verda(images, container):
    """start.sh brings up "ComfyUI" (the simulator) on 127.0.0.1:8188 and the worker on 8189: /ready turns 200,
    Docker's HEALTHCHECK (the one Verda is told to use) passes, a smoke ``/run`` goes through ComfyUI, and SIGTERM
    stops both with status 0."""
    engine, name = images.engine, f"{images.prefix}-worker"
    worker_python = "/opt/comfyume-worker/venv/bin/python"
    container.append(name)
    engine.run("run", "--detach", "--name", name, "--network", "none", "--health-interval", "1s", images.tags["worker"])
    wait_healthy(engine, name)
    assert get_inside(engine, name, "http://127.0.0.1:8189/ready", worker_python) == (200, {"ready": True})
    status, health = get_inside(engine, name, "http://127.0.0.1:8189/health", worker_python)
    assert status == 200 and health["status"] == "ok" and health["comfyui"] is True, health
    assert "ComfyuME simulator" in json.dumps(get_inside(engine, name, "http://127.0.0.1:8188/system_stats")[1])

    smoke = (
        "import json, sys, urllib.request\n"
        "body = json.dumps({'job': 'smoke-1', 'prompt': json.load(sys.stdin)}).encode()\n"
        "request = urllib.request.Request('http://127.0.0.1:8189/run', body, {'Content-Type': 'application/json'})\n"
        "print(urllib.request.urlopen(request, timeout=60).read().decode())\n"
    )
    ran = engine.run("exec", "--interactive", name, worker_python, "-c", smoke, input=TINY_PATH.read_text())
    assert json.loads(ran.stdout)["status"] == "succeeded", ran.stdout

    engine.run("stop", "--time", "20", name)
    state = engine.inspect(name)["State"]
    logs = engine.run("logs", name).stderr
    assert state["ExitCode"] == 0, logs[-3000:]
    assert "start.sh: ComfyUI (pid" in logs and "stop requested: stopping ComfyUI and the GPU worker" in logs, logs


def test_the_workshops_models_bake_into_the_worker_image_where_comfyui_reads_them(images, tmp_path):
    """Dockerfile.models with a models folder as its build context (what fetch_models.py fills): each file lands in
    ComfyUI's models folder under its own subfolder; the worker image carries the download script and the volume
    paths (deploy/gpu-worker/README.md, "Models for the workshop")."""
    engine = images.engine
    models = tmp_path / "models"
    (models / "vae").mkdir(parents=True)
    (models / "vae" / "flux2-vae.safetensors").write_bytes(b"weights")
    (models / "loras" / "ltx").mkdir(parents=True)
    (models / "loras" / "ltx" / "dolly.safetensors").write_bytes(b"lora")
    tag = f"{images.prefix}-worker-models"
    dockerfile = ROOT / "deploy" / "gpu-worker" / "Dockerfile.models"
    engine.run("build", "--file", str(dockerfile), "--build-arg", f"WORKER_IMAGE={images.tags['worker']}", "--tag", tag,
               str(models))  # fmt: skip
    try:
        listed = engine.run(
            "run", "--rm", "--entrypoint", "/bin/sh", tag, "-c",
            "cat /comfyui/models/vae/flux2-vae.safetensors /comfyui/models/loras/ltx/dolly.safetensors; echo; "
            "ls /opt/comfyume-worker; /opt/comfyume-worker/venv/bin/python /opt/comfyume-worker/fetch_models.py "
            "--help | head -1",
        ).stdout  # fmt: skip
    finally:
        engine.run("rmi", "--force", tag, check=False)
    assert listed.startswith("weightslora\n")
    assert "fetch_models.py" in listed and "extra_model_paths.yaml" in listed and "usage: fetch_models.py" in listed


# --- A code change -----------------------------------------------------------------------------------------------


def steps(engine: DockerEngine, tag: str) -> list[str]:
    """The image's build steps, oldest first: the id each produced and its command."""
    history = engine.run("history", "--no-trunc", "--format", "{{.ID}} {{.CreatedBy}}", tag).stdout
    return history.splitlines()[::-1]


def up_to_dependencies(engine: DockerEngine, tag: str) -> list[str]:
    """The build steps up to the first that installs requirements, included."""
    built = steps(engine, tag)
    first = next((index for index, step in enumerate(built) if "pip install" in step), None)
    assert first is not None, built
    return built[: first + 1]


def test_a_code_change_rebuilds_the_code_but_not_the_dependencies(images, tmp_path):
    """Each Dockerfile installs its requirements before it copies the code, so a changed source file costs a rebuild
    of the code layers only (the figures the deploy README's upgrade step costs)."""
    engine = images.engine
    copy = copy_repository(tmp_path / "repository")
    for changed in CHANGED_FILE.values():
        with (copy / changed).open("a") as file:
            file.write(CHANGE)
    for name in DOCKERFILES:
        tag = f"{images.prefix}/{name}:rebuilt"
        seconds = images.build(name, tag, copy)
        print(f"\nBENCH image_{name}_build_rebuilt_s {seconds:.1f} s (cold: {images.cold_seconds[name]:.1f} s)")
        assert up_to_dependencies(engine, tag) == up_to_dependencies(engine, images.tags[name]), steps(engine, tag)
        inside = f"{CODE_DIR[name]}/{CHANGED_FILE[name]}"
        tail = engine.run("run", "--rm", "--network", "none", "--entrypoint", "tail", tag, "-n", "1", inside).stdout
        assert tail == CHANGE
