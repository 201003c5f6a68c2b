"""The ``docker`` seat driver on a real Docker Engine, with the seat image built from deploy/seat-frontend/Dockerfile.

Beside the fake-Engine tests (workshops/tests/test_docker_driver.py): the same driver, the same calls the admin's
actions and ``manage.py seat_frontends`` make (``workshops.frontends``, carried out by the seat supervisor's
``reconcile``), against the engine and images of tests/test_images.py (tests/docker_engine.py, tests/images/built.py:
built once per session; without root or an engine these tests skip, saying why).

What differs from production, and why:

- **The supervisor runs on the host**, not in a container on ``COMFYUME_SEAT_NETWORK``, so a seat's name on that
  network does not resolve for it. :class:`FromTheHost` is the driver with one change: the address it reports is the
  container's IP on the network (the host reaches it through the network's bridge) instead of its name.
- **The hub** is a stand-in: a small HTTP server in a container on the seats' network, named as the hub is there
  (``COMFYUME_HUB_URL``). It answers ``/health`` and refuses every session check (``/auth/seat``: 403), which is all
  the isolation checks need of it.
- **The seats' network** is made by the test before the driver looks for it, internal as compose.yaml makes it;
  Docker's iptables rules (tests/docker_engine.py runs its engine with them, as a server does) keep its containers
  from every other network.

Figures (``BENCH`` lines, with ``-s``): seconds from "start every seat" until all of ``BENCH_SEATS`` seat containers
answer, and their memory (docs/BENCHMARKS.md, "Seat containers").
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import StringIO
from typing import Any

import pytest
import requests
from django.core.management import call_command

from tests.docker_engine import NO_ISOLATION, DockerEngine
from tests.images.built import Images
from workshops import frontends
from workshops.models import SeatFrontend, Workshop
from workshops.provisioning import SeatSpec
from workshops.provisioning.docker import SEAT_PORT, DockerDriver, volume_name
from workshops.services import create_workshop

MEMORY, CPUS = "256m", 0.5
HUB_PORT = 8000
READY_SECONDS = 60
BENCH_SEATS = 20
# The hub stand-in: /health answers, every session check is refused as someone else's (403); it prints each path.
HUB_STAND_IN = f"""
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Hub(BaseHTTPRequestHandler):
    def do_GET(self):
        print(self.path, flush=True)
        status = 403 if self.path.startswith("/auth/seat") else 200
        self.send_response(status)
        self.send_header("X-Comfyume-User", "someone-else")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("0.0.0.0", {HUB_PORT}), Hub).serve_forever()
"""
# Run inside a seat container: a TCP connection to each (host, port) of argv's JSON, and whether it opened.
PROBE = """
import json, socket, sys
found = {}
for host, port in json.loads(sys.argv[1]):
    try:
        socket.create_connection((host, port), timeout=2).close()
        found[f"{host}:{port}"] = "open"
    except OSError as exc:
        found[f"{host}:{port}"] = type(exc).__name__
print(json.dumps(found))
"""
# Run inside a seat container: GET argv[1] with the headers of argv[2]; the status and the JSON body (or None).
GET = """
import json, sys, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1], headers=json.loads(sys.argv[2]))
try:
    answer = urllib.request.urlopen(request, timeout=10)
except urllib.error.HTTPError as exc:
    answer = exc
body = answer.read()
try:
    body = json.loads(body)
except ValueError:
    body = None
print(json.dumps([answer.status, body]))
"""


class FromTheHost(DockerDriver):
    """The docker driver, reporting a seat's IP on the seats' network instead of its name there (see the module's
    docstring): the supervisor's health check runs on the host."""

    def _address(self, spec: SeatSpec) -> str:
        attrs = self._connect(f"inspect {spec.name}").api.inspect_container(spec.name)
        return f"{attrs['NetworkSettings']['Networks'][self.network]['IPAddress']}:{SEAT_PORT}"


@dataclass
class SeatEngine:
    """One test's seats: the engine, the seats' network (named for the test) and what the test made on it."""

    engine: DockerEngine
    image: str
    network: str
    hub: str  # the hub stand-in's container name, its name on the network
    driver: FromTheHost
    workshop: str  # the slug of the test's seats (their volumes carry it as a label)
    others: list[str] = field(default_factory=list)  # containers and networks the test made itself

    def spec(self, label: str, token: str = "seat-token") -> SeatSpec:
        """A seat as ``workshops.frontends.seat_spec`` makes it (path routing), for calls to the driver itself."""
        return SeatSpec(
            workshop=self.workshop,
            label=label,
            name=f"{self.network}-{label}",
            env={
                "COMFYUME_HUB_URL": f"http://{self.hub}:{HUB_PORT}",
                "COMFYUME_SEAT_LABEL": label,
                "COMFYUME_SEAT_BASE_PATH": "/",
                "COMFYUME_SEAT_LOGIN_URL": "http://{host}/login/",
                "COMFYUME_SEAT_AUTH_CACHE_SECONDS": "5",
                "COMFYUME_MAX_UPLOAD_MB": "50",
                "COMFYUME_SEAT_TOKEN": token,
            },
            labels={"comfyume.test": self.network},
        )

    def inspect(self, name: str) -> Any:
        return self.engine.inspect(name)

    def ip(self, name: str, network: str | None = None) -> str:
        return self.inspect(name)["NetworkSettings"]["Networks"][network or self.network]["IPAddress"]

    def exec_python(self, container: str, script: str, *args: str) -> Any:
        return json.loads(self.engine.run("exec", container, "python", "-c", script, *args).stdout)

    def volume_exists(self, name: str) -> bool:
        return self.engine.run("volume", "inspect", name, check=False).returncode == 0


def health(address: str) -> tuple[int, Any] | None:
    """The seat's ``/comfyume/health`` asked from the host, or None while nothing answers."""
    try:
        answer = requests.get(f"http://{address}/comfyume/health", timeout=2)
    except requests.RequestException:
        return None
    return answer.status_code, answer.json()


def wait_answering(address: str, timeout: float = READY_SECONDS) -> tuple[int, Any]:
    deadline = time.monotonic() + timeout
    while (answer := health(address)) is None:
        assert time.monotonic() < deadline, f"{address} did not answer within {timeout} s"
        time.sleep(0.2)
    return answer


@pytest.fixture
def seats(images: Images, request: pytest.FixtureRequest) -> Iterator[SeatEngine]:
    """A seats' network named for the test (made first, as the compose file makes ``comfyume-seats``, so that the
    hub stand-in is on it; the driver uses a network it finds), the hub stand-in, and the driver. Every container,
    volume and network the test made on the engine is removed afterwards, and checked gone."""
    engine = images.engine
    network = f"{images.prefix}-{request.node.name.removeprefix('test_')[:20].rstrip('_').replace('_', '-')}"
    base_url = engine.env.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    driver = FromTheHost(base_url=base_url, image=images.tags["seat"], network=network, memory=MEMORY, cpus=CPUS)
    made = SeatEngine(engine, images.tags["seat"], network, f"{network}-hub", driver, f"dock-{uuid.uuid4().hex[:6]}")
    try:
        engine.run("network", "create", "--internal", "--label", "comfyume.managed=1", network)
        engine.run(
            "run", "--detach", "--name", made.hub, "--network", network, "--entrypoint", "python",
            images.tags["seat"], "-c", HUB_STAND_IN,
        )  # fmt: skip
        yield made
    finally:
        containers = engine.run("ps", "--all", "--quiet", "--filter", f"network={network}").stdout.split()
        containers += [c for c in made.others if not c.startswith("net:")]
        volumes = engine.run("volume", "ls", "--quiet", "--filter", f"label=comfyume.workshop={made.workshop}").stdout
        for container in containers:
            engine.run("rm", "--force", container, check=False)
        for volume in volumes.split():
            engine.run("volume", "rm", "--force", volume, check=False)
        for name in [network, *(n.removeprefix("net:") for n in made.others if n.startswith("net:"))]:
            engine.run("network", "rm", name, check=False)
        assert engine.run("ps", "--all", "--quiet", "--filter", f"network={network}").stdout.split() == []
        assert engine.run("network", "ls", "--quiet", "--filter", f"name=^{network}$").stdout.split() == []
        assert (
            engine.run("volume", "ls", "--quiet", "--filter", f"label=comfyume.workshop={made.workshop}").stdout == ""
        )


# --- The driver's own calls -------------------------------------------------------------------------------------


def test_a_seat_container_starts_answers_stops_starts_again_and_a_reset_removes_its_volume(seats):
    spec, driver = seats.spec("user001"), seats.driver
    status = driver.start(spec)
    assert status.running
    assert wait_answering(status.address) == (200, {"status": "ok", "seat": "user001"})
    first = seats.inspect(spec.name)["Id"]
    seats.engine.run("exec", spec.name, "sh", "-c", "echo kept > /data/marker")

    driver.stop(spec)
    assert not driver.status(spec).running and not seats.inspect(spec.name)["State"]["Running"]
    assert health(status.address) is None
    assert seats.volume_exists(volume_name(spec))

    status = driver.start(spec)
    assert seats.inspect(spec.name)["Id"] == first  # the same container, started again
    assert wait_answering(status.address)[0] == 200
    assert seats.engine.run("exec", spec.name, "cat", "/data/marker").stdout == "kept\n"

    driver.stop(spec)
    driver.reset(spec)
    assert seats.engine.run("inspect", spec.name, check=False).returncode != 0
    assert not seats.volume_exists(volume_name(spec))
    status = driver.start(spec)
    assert wait_answering(status.address)[0] == 200
    assert seats.engine.run("exec", spec.name, "test", "-e", "/data/marker", check=False).returncode == 1
    assert spec.name in driver.list_managed()


def test_a_seats_saved_workflows_are_copied_to_the_hub_and_put_back_into_a_new_volume(seats, tmp_path):
    """The docker driver's volumes are out of the backup's reach: the seat's user/ folder is copied to the hub's side
    (where the backup reads the process driver's), and a seat whose volume is new, as on a new server after a
    restore, starts with it. A reset removes the copy too, so nothing comes back that was meant to go."""
    spec, driver = seats.spec("user001"), seats.driver
    driver.files_dir = tmp_path / "seats"
    kept = tmp_path / "seats" / seats.workshop / "user001" / "user"
    assert not driver.save_files(spec)  # no container yet: nothing to copy
    status = driver.start(spec)
    wait_answering(status.address)
    workflow = '{"nodes": [], "note": "Agnès"}'
    seats.engine.run(
        "exec", spec.name, "sh", "-c",
        f"mkdir -p /data/user/default/workflows && printf '%s' '{workflow}' > /data/user/default/workflows/my.json "
        "&& ln -s /etc/passwd /data/user/default/escape",
    )  # fmt: skip
    assert driver.save_files(spec)
    assert (kept / "default" / "workflows" / "my.json").read_text() == workflow
    assert not (kept / "default" / "escape").exists() or (kept / "default" / "escape").is_symlink()
    driver.stop(spec)  # copies again on the way down

    # A new server: the container and its volume are gone, the hub's copy (restored from a backup) is there.
    seats.engine.run("rm", "--force", spec.name)
    seats.engine.run("volume", "rm", volume_name(spec))
    status = driver.start(spec)
    wait_answering(status.address)
    shown = seats.engine.run("exec", spec.name, "cat", "/data/user/default/workflows/my.json").stdout
    assert shown == workflow
    owner = seats.engine.run("exec", spec.name, "stat", "-c", "%u:%g", "/data/user/default/workflows/my.json").stdout
    assert owner.strip() == "1000:1000"  # the seat's own user may change it
    assert seats.engine.run("exec", spec.name, "test", "-e", "/data/user/default/escape", check=False).returncode == 1

    driver.stop(spec)
    driver.reset(spec)
    assert not kept.exists()
    status = driver.start(spec)
    wait_answering(status.address)
    assert seats.engine.run("exec", spec.name, "test", "-e", "/data/user/default/workflows/my.json",
                            check=False).returncode == 1  # fmt: skip


def test_the_seat_container_runs_with_the_drivers_limits_as_the_images_unprivileged_user(seats):
    spec = seats.spec("user001")
    seats.driver.start(spec)
    host = seats.inspect(spec.name)["HostConfig"]
    assert host["Memory"] == 256 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    assert not host["Privileged"]
    [mount] = seats.inspect(spec.name)["Mounts"]
    assert (mount["Type"], mount["Name"], mount["Destination"]) == ("volume", volume_name(spec), "/data")
    assert seats.inspect(spec.name)["Config"]["User"] == "1000:1000"
    assert seats.engine.run("exec", spec.name, "id", "-u").stdout.strip() == "1000"
    # The kernel's view from inside: the cgroup's memory limit (v2, else v1) and no effective capability.
    limit = seats.engine.run(
        "exec", spec.name, "sh", "-c",
        "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
    ).stdout.strip()  # fmt: skip
    assert limit == str(256 * 1024 * 1024)
    capabilities = seats.engine.run("exec", spec.name, "grep", "CapEff", "/proc/self/status").stdout.split()
    assert capabilities == ["CapEff:", "0000000000000000"]


def test_the_seat_container_has_a_pids_limit_a_read_only_root_and_drops_every_capability(seats):
    """Its files are the /data volume and a small /tmp; no capability, none to be gained; a bounded process count."""
    spec = seats.spec("user001")
    seats.driver.start(spec)
    host = seats.inspect(spec.name)["HostConfig"]
    assert host["PidsLimit"] == 128
    assert host["ReadonlyRootfs"] and "/tmp" in (host["Tmpfs"] or {})
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
    wait_answering(f"{seats.ip(spec.name)}:{SEAT_PORT}")
    probe = """
import json, os
def writes(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        os.unlink(path)
        return True
    except OSError:
        return False
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"root": writes("/probe"), "app": writes("/app/probe"), "tmp": writes("/tmp/probe"),
                  "data": writes("/data/probe"), "cap_eff": status["CapEff"].strip(),
                  "no_new_privs": status["NoNewPrivs"].strip()}))
"""
    inside = seats.exec_python(spec.name, probe)
    assert inside == {
        "root": False, "app": False, "tmp": True, "data": True, "cap_eff": "0000000000000000", "no_new_privs": "1",
    }, inside  # fmt: skip


# --- What the admin and `seat_frontends` ask, carried out by the supervisor -------------------------------------


def reconcile_until(supervisor: frontends.Supervisor, done: Any, timeout: float = READY_SECONDS) -> None:
    """Supervisor passes, as ``run_seat_frontends`` makes them, until ``done()``."""
    deadline = time.monotonic() + timeout
    while True:
        supervisor.reconcile()
        if done():
            return
        assert time.monotonic() < deadline, list(SeatFrontend.objects.values("seat__label", "state", "last_error"))
        time.sleep(0.3)


def states(workshop: Workshop) -> list[str]:
    return list(
        SeatFrontend.objects.filter(seat__workshop=workshop).order_by("seat__label").values_list("state", flat=True)
    )


@pytest.fixture
def supervised(seats, settings) -> tuple[SeatEngine, frontends.Supervisor]:
    settings.SEAT_FRONTENDS = {
        **settings.SEAT_FRONTENDS,
        "DRIVER": "docker",
        "ROUTING": "path",
        "HUB_URL": f"http://{seats.hub}:{HUB_PORT}",
    }
    return seats, frontends.Supervisor(seats.driver, interval=0.3)


def seat_frontends(action: str, slug: str) -> str:
    out = StringIO()
    call_command("seat_frontends", action, "--workshop", slug, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_seat_frontends_start_stop_restart_and_reset_reach_the_containers(supervised):
    seats, supervisor = supervised
    workshop, _ = create_workshop(seats.workshop, seats=2)
    running = lambda: states(workshop) == ["running", "running"]  # noqa: E731
    names = [frontends.frontend_name(seat) for seat in workshop.seats.order_by("label")]

    assert "start: 2 seat(s)" in seat_frontends("start", seats.workshop)
    reconcile_until(supervisor, running)
    for name, label in zip(names, ["user001", "user002"], strict=True):
        assert health(f"{seats.ip(name)}:{SEAT_PORT}") == (200, {"status": "ok", "seat": label})
    before = {name: seats.inspect(name)["Id"] for name in names}

    seat_frontends("restart", seats.workshop)
    supervisor.reconcile()  # stops them; the next passes start them with new tokens: new containers
    reconcile_until(supervisor, running)
    assert all(seats.inspect(name)["Id"] != before[name] for name in names)

    seat_frontends("stop", seats.workshop)
    reconcile_until(supervisor, lambda: states(workshop) == ["stopped", "stopped"])
    assert not any(seats.inspect(name)["State"]["Running"] for name in names)

    volume = volume_name(frontends.seat_spec(workshop.seats.get(label="user001")))
    seats.engine.run("run", "--rm", "--volume", f"{volume}:/data", "--entrypoint", "touch", seats.image, "/data/marker")
    seat_frontends("reset", seats.workshop)
    reconcile_until(supervisor, running)
    assert seats.engine.run("exec", names[0], "test", "-e", "/data/marker", check=False).returncode == 1
    assert "running" in seat_frontends("status", seats.workshop)


@pytest.mark.django_db
def test_a_killed_seat_container_is_noticed_counted_and_started_again(supervised):
    seats, supervisor = supervised
    workshop, _ = create_workshop(seats.workshop, seats=1)
    seat = workshop.seats.get()
    frontends.start_seats(workshop)
    reconcile_until(supervisor, lambda: states(workshop) == ["running"])
    name = frontends.frontend_name(seat)

    seats.engine.run("kill", name)
    # `docker kill` counts as stopping it by hand: the restart policy (unless-stopped) leaves it down.
    assert not seats.inspect(name)["State"]["Running"]
    supervisor.reconcile()
    frontend = SeatFrontend.objects.get(seat=seat)
    assert (frontend.state, frontend.restarts) == ("failed", 1)
    assert "stopped by itself" in frontend.last_error and "exit code 137" in frontend.last_error

    reconcile_until(supervisor, lambda: states(workshop) == ["running"])
    assert SeatFrontend.objects.get(seat=seat).restarts == 1
    assert health(f"{seats.ip(name)}:{SEAT_PORT}") == (200, {"status": "ok", "seat": "user001"})


# --- Isolation, from inside a seat container ----------------------------------------------------------------------


def test_a_seat_container_reaches_the_hub_but_not_postgresql_redis_or_the_gpu_backend(seats, simulator):
    """PostgreSQL and Redis are the machine's, on 127.0.0.1 (as in ``make run``; in production they sit on the
    compose file's internal ``backend`` network, which no seat joins), and so is the GPU backend (the simulator). From
    a seat, 127.0.0.1 is the container itself, and the host, reached as the seats' network's gateway, does not
    listen for them."""
    spec = seats.spec("user001")
    seats.driver.start(spec)
    wait_answering(f"{seats.ip(spec.name)}:{SEAT_PORT}")
    gateway = seats.inspect(seats.network)["IPAM"]["Config"][0]["Gateway"]
    simulator_port = int(simulator.url.rsplit(":", 1)[1].strip("/"))
    refused = [(host, port) for host in ("127.0.0.1", gateway) for port in (5432, 6379, simulator_port)]
    found = seats.exec_python(spec.name, PROBE, json.dumps([*refused, [seats.hub, HUB_PORT]]))
    assert found.pop(f"{seats.hub}:{HUB_PORT}") == "open"
    assert set(found.values()) <= {"ConnectionRefusedError", "TimeoutError"}, found
    # The hub answers what a seat asks of it (its session checks go to the same address).
    status, _ = seats.exec_python(spec.name, GET, f"http://{seats.hub}:{HUB_PORT}/health", "{}")
    assert status == 200


def test_another_seats_container_answers_only_its_health_and_refuses_this_seats_requests(seats):
    """Every seat is on the one seats' network (nginx and the hub reach each by name there), so a seat's container
    reaches another's port: what keeps it out is the other seat's session check, asked of the hub."""
    mine, theirs = seats.spec("user001"), seats.spec("user002")
    for spec in (mine, theirs):
        seats.driver.start(spec)
        wait_answering(f"{seats.ip(spec.name)}:{SEAT_PORT}")
    other = f"http://{theirs.name}:{SEAT_PORT}"
    assert seats.exec_python(mine.name, GET, f"{other}/comfyume/health", "{}") == [
        200,
        {"status": "ok", "seat": "user002"},
    ]
    status, body = seats.exec_python(mine.name, GET, f"{other}/api/userdata?dir=workflows", "{}")
    assert (status, body["error"]["type"]) == (401, "not_signed_in")
    cookie = json.dumps({"Cookie": "sessionid=stolen", "Accept": "application/json"})
    status, body = seats.exec_python(mine.name, GET, f"{other}/api/userdata?dir=workflows", cookie)
    assert (status, body["error"]["type"]) == (403, "other_seat")
    assert "/auth/seat" in seats.engine.run("logs", seats.hub).stdout  # the other seat asked the hub


def test_a_seat_container_cannot_reach_a_container_on_another_network(seats):
    """The seats' network is internal, as compose.yaml makes it: Docker's rules drop what a seat container sends off
    it (an engine started with ``--iptables=false`` has no such rules, and fails this)."""
    if not seats.engine.isolates:
        pytest.skip(NO_ISOLATION)
    backend = f"{seats.network}-backend"
    seats.engine.run("network", "create", "--internal", backend)
    seats.others.append(f"net:{backend}")
    stand_in = f"{backend}-service"
    seats.others.insert(0, stand_in)
    seats.engine.run(
        "run", "--detach", "--name", stand_in, "--network", backend, "--entrypoint", "python", seats.image,
        "-c", HUB_STAND_IN,
    )  # fmt: skip
    spec = seats.spec("user001")
    seats.driver.start(spec)
    target = seats.ip(stand_in, backend)
    found = seats.exec_python(spec.name, PROBE, json.dumps([[target, HUB_PORT]]))
    assert found[f"{target}:{HUB_PORT}"] == "TimeoutError", found  # dropped on the way, not refused


# --- Figures ------------------------------------------------------------------------------------------------------


def memory_mb(engine: DockerEngine, names: list[str]) -> list[float]:
    """Each container's memory use as ``docker stats`` reports it (its cgroup's, page cache excluded), in MB."""
    units = {"B": 1e-6, "KiB": 1024 / 1e6, "MiB": 1024**2 / 1e6, "GiB": 1024**3 / 1e6}
    lines = engine.run("stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", *names).stdout.splitlines()
    used = []
    for line in lines:
        figure = line.split()[1]
        unit = next(u for u in sorted(units, key=len, reverse=True) if figure.endswith(u))
        used.append(float(figure.removesuffix(unit)) * units[unit])
    return used


@pytest.mark.django_db
def test_every_seat_of_a_workshop_answers_after_start_every_seat(supervised):
    seats, supervisor = supervised
    workshop, _ = create_workshop(seats.workshop, seats=BENCH_SEATS)
    started = time.monotonic()
    frontends.start_seats(workshop)
    reconcile_until(supervisor, lambda: set(states(workshop)) == {"running"}, timeout=180)
    seconds = time.monotonic() - started
    names = [frontends.frontend_name(seat) for seat in workshop.seats.all()]
    assert all(health(f"{seats.ip(name)}:{SEAT_PORT}") for name in names)
    used = memory_mb(seats.engine, names)
    assert len(used) == BENCH_SEATS
    print(
        f"\nBENCH docker_seats_{BENCH_SEATS}_answering_s {seconds:.1f} s (start every seat → all answer their health)"
    )
    print(f"BENCH docker_seat_memory_mb {sum(used) / len(used):.0f} MB mean, {max(used):.0f} MB max (docker stats)")
