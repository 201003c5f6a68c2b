"""The docker seat driver against a fake Docker Engine (tests/fake_docker.py), and the compose renderer."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from io import StringIO
from typing import Any

import docker
import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from tests.fake_docker import FakeDockerEngine
from workshops.compose import render_users_compose, seat_token_variable
from workshops.models import Workshop
from workshops.provisioning import ProvisioningError, SeatSpec
from workshops.provisioning.docker import SPEC_LABEL, DockerDriver
from workshops.services import create_workshop

IMAGE = "comfyume/seat-frontend:latest"
NETWORK = "comfyume-seats"


@pytest.fixture
def engine() -> Iterator[FakeDockerEngine]:
    fake = FakeDockerEngine(images=(IMAGE,))
    yield fake
    fake.stop()


def make_driver(base_url: str, **overrides: Any) -> DockerDriver:
    options: dict[str, Any] = {"image": IMAGE, "network": NETWORK, "memory": "256m", "cpus": 0.5, **overrides}
    return DockerDriver(base_url=base_url, **options)


@pytest.fixture
def driver(engine: FakeDockerEngine) -> DockerDriver:
    return make_driver(engine.base_url)


def seat(label: str = "user001", token: str | None = "seat_token_one", **env: str) -> SeatSpec:
    full_env = {"COMFYUME_HUB_URL": "http://hub:8000", "COMFYUME_SEAT_LABEL": label, **env}
    if token is not None:
        full_env["COMFYUME_SEAT_TOKEN"] = token
    return SeatSpec(
        workshop="may",
        label=label,
        name=f"comfyume-seat-may-{label}",
        env=full_env,
        labels={"comfyume.seat-id": "7"},
    )


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in container["Config"]["Env"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- start ---


def test_start_creates_network_volume_and_container_as_specified(engine, driver):
    spec = seat()
    status = driver.start(spec)

    container = engine.container(spec.name)
    assert status.running and status.address == "comfyume-seat-may-user001:8188"
    assert status.detail == f"container {container['Id'][:12]}"
    assert container["State"]["Running"]
    assert [(n["Name"], n["Driver"]) for n in engine.networks.values()] == [(NETWORK, "bridge")]
    assert list(engine.volumes) == ["comfyume-seat-may-user001-data"]

    [created] = engine.created
    assert created["name"] == spec.name and created["Image"] == IMAGE
    assert env_of(container) == {
        "COMFYUME_HUB_URL": "http://hub:8000",
        "COMFYUME_SEAT_LABEL": "user001",
        "COMFYUME_SEAT_TOKEN": "seat_token_one",
        "COMFYUME_SEAT_HOST": "0.0.0.0",
        "COMFYUME_SEAT_PORT": "8188",
        "COMFYUME_SEAT_DATA_DIR": "/data",
    }
    labels = dict(created["Labels"])
    assert labels.pop(SPEC_LABEL)
    assert labels == {
        "comfyume.seat-id": "7",
        "comfyume.managed": "1",
        "comfyume.workshop": "may",
        "comfyume.seat": "user001",
    }
    host = created["HostConfig"]
    assert host["Memory"] == 256 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    assert host["RestartPolicy"] == {"Name": "unless-stopped"}
    assert host["NetworkMode"] == NETWORK
    assert [(m["Type"], m["Source"], m["Target"]) for m in host["Mounts"]] == [
        ("volume", "comfyume-seat-may-user001-data", "/data")
    ]


def test_the_driver_decides_where_the_frontend_listens_inside_the_container(engine, driver):
    spec = seat(COMFYUME_SEAT_PORT="9999", COMFYUME_SEAT_DATA_DIR="/elsewhere")
    driver.start(spec)
    env = env_of(engine.container(spec.name))
    assert env["COMFYUME_SEAT_PORT"] == "8188" and env["COMFYUME_SEAT_DATA_DIR"] == "/data"


def test_starting_a_running_seat_again_changes_nothing(engine, driver):
    spec = seat()
    first = driver.start(spec)
    requests_before = len(engine.requests)
    again = driver.start(spec)

    assert again.running and again.address == first.address
    assert len(engine.created) == 1 and len(engine.containers) == 1
    # Only a look at the container: no network, volume or container calls.
    assert engine.requests[requests_before:] == [("GET", f"/containers/{spec.name}/json")]


def test_a_second_seat_reuses_the_network(engine, driver):
    driver.start(seat("user001"))
    driver.start(seat("user002"))
    assert len(engine.networks) == 1
    assert engine.requests.count(("POST", "/networks/create")) == 1
    assert sorted(engine.volumes) == ["comfyume-seat-may-user001-data", "comfyume-seat-may-user002-data"]


def test_an_existing_network_is_used_as_it_is(engine, driver):
    docker.DockerClient(base_url=engine.base_url, timeout=5).networks.create(NETWORK, driver="bridge")
    driver.start(seat())
    assert len(engine.networks) == 1
    assert engine.requests.count(("POST", "/networks/create")) == 1  # ours above, none from the driver


def test_start_after_the_container_died_starts_the_same_container(engine, driver):
    spec = seat()
    driver.start(spec)
    container_id = engine.container(spec.name)["Id"]
    engine.die(spec.name, exit_code=137)

    dead = driver.status(spec)
    assert not dead.running and "exit code 137" in dead.detail

    assert driver.start(spec).running
    assert engine.container(spec.name)["Id"] == container_id
    assert engine.container(spec.name)["State"]["Running"]
    assert len(engine.created) == 1


def test_a_new_token_replaces_the_container_and_keeps_the_volume(engine, driver):
    driver.start(seat(token="seat_old"))
    old_id = engine.container(seat().name)["Id"]
    volume = engine.volumes["comfyume-seat-may-user001-data"]

    status = driver.start(seat(token="seat_new"))

    container = engine.container(seat().name)
    assert status.running and container["Id"] != old_id and container["State"]["Running"]
    assert env_of(container)["COMFYUME_SEAT_TOKEN"] == "seat_new"
    assert list(engine.containers) == [container["Id"]]
    assert engine.volumes["comfyume-seat-may-user001-data"] is volume


# --- stop, status, reset ---


def test_stop_stops_the_container_and_keeps_its_data(engine, driver):
    spec = seat()
    driver.start(spec)
    driver.stop(spec)

    container = engine.container(spec.name)
    assert not container["State"]["Running"] and container["StopTimeout"] == "10"
    assert "comfyume-seat-may-user001-data" in engine.volumes
    status = driver.status(spec)
    assert not status.running and status.address == "" and "exited" in status.detail

    driver.stop(spec)  # stopped already: the Engine's 304
    driver.stop(seat("user404"))  # no container at all
    assert not engine.container(spec.name)["State"]["Running"]


def test_status_of_a_seat_without_container(driver):
    assert driver.status(seat()) == driver.status(seat("user002"))
    status = driver.status(seat())
    assert not status.running and status.detail == "no container"


def test_status_of_a_running_seat(engine, driver):
    spec = seat()
    driver.start(spec)
    status = driver.status(spec)
    assert status.running and status.address == f"{spec.name}:8188"
    assert status.detail == f"container {engine.container(spec.name)['Id'][:12]} running"


def test_reset_removes_container_and_volume_so_the_next_start_is_fresh(engine, driver):
    spec = seat()
    driver.start(spec)
    old_id = engine.container(spec.name)["Id"]
    driver.stop(spec)

    driver.reset(spec)
    assert engine.containers == {} and engine.volumes == {}
    assert driver.status(spec).detail == "no container"

    driver.reset(spec)  # nothing left to remove: still fine
    driver.start(spec)
    assert engine.container(spec.name)["Id"] != old_id
    assert list(engine.volumes) == ["comfyume-seat-may-user001-data"]


def test_reset_removes_a_running_container_too(engine, driver):
    spec = seat()
    driver.start(spec)
    driver.reset(spec)
    assert engine.containers == {} and engine.volumes == {}


def test_list_managed_names_only_the_platforms_containers(engine, driver):
    driver.start(seat("user002"))
    driver.start(seat("user001"))
    driver.stop(seat("user002"))
    docker.DockerClient(base_url=engine.base_url, timeout=5).containers.create(IMAGE, name="someone-elses")

    assert driver.list_managed() == ["comfyume-seat-may-user001", "comfyume-seat-may-user002"]
    assert len(engine.containers) == 3


# --- images ---


def test_a_missing_image_is_pulled_once_then_used():
    engine = FakeDockerEngine()
    try:
        engine.registry.add(IMAGE)
        assert make_driver(engine.base_url).start(seat()).running
        assert engine.requests.count(("POST", "/images/create")) == 1
        assert IMAGE in engine.images
        assert engine.container(seat().name)["State"]["Running"]
    finally:
        engine.stop()


def test_a_missing_image_that_cannot_be_pulled_is_a_permanent_error_naming_it():
    engine = FakeDockerEngine()
    try:
        with pytest.raises(ProvisioningError) as excinfo:
            make_driver(engine.base_url).start(seat())
        error = excinfo.value
        assert error.permanent
        assert IMAGE in str(error) and "pull access denied" in str(error) and "docker build" in str(error)
        assert engine.requests.count(("POST", "/images/create")) == 1
        assert engine.containers == {}
    finally:
        engine.stop()


def test_a_pull_failing_inside_its_progress_stream_is_an_error_too():
    engine = FakeDockerEngine()
    try:
        engine.registry.add(IMAGE)
        engine.pull_stream_error = "toomanyrequests: You have reached your pull rate limit."
        with pytest.raises(ProvisioningError) as excinfo:
            make_driver(engine.base_url).start(seat())
        assert excinfo.value.permanent
        assert IMAGE in str(excinfo.value) and "pull rate limit" in str(excinfo.value)
        assert engine.containers == {}
    finally:
        engine.stop()


# --- failures ---


@pytest.mark.parametrize("operation", ["start", "stop", "status", "reset", "list_managed"])
def test_an_engine_that_does_not_answer_is_a_transient_error_naming_its_url(operation):
    url = f"tcp://127.0.0.1:{free_port()}"
    driver = make_driver(url)
    with pytest.raises(ProvisioningError) as excinfo:
        if operation == "list_managed":
            driver.list_managed()
        else:
            getattr(driver, operation)(seat())
    assert not excinfo.value.permanent
    assert url in str(excinfo.value) and "DOCKER_HOST" in str(excinfo.value)


@pytest.mark.parametrize("url", ["tcp://127.0.0.1:not-a-port", "ftp://127.0.0.1:2375", "localhost"])
def test_a_malformed_docker_host_is_a_permanent_error(url):
    with pytest.raises(ProvisioningError) as excinfo:
        make_driver(url).status(seat())
    assert excinfo.value.permanent and f"DOCKER_HOST {url!r}" in str(excinfo.value)


def test_an_engine_that_goes_away_is_a_transient_error(engine, driver):
    driver.start(seat())
    engine.stop()
    with pytest.raises(ProvisioningError) as excinfo:
        driver.status(seat())
    assert not excinfo.value.permanent and engine.base_url in str(excinfo.value)


def test_an_engine_error_is_reported_with_the_engines_explanation(engine, driver):
    engine.create_error = "devmapper: Thin Pool has 0 free data blocks"
    with pytest.raises(ProvisioningError) as excinfo:
        driver.start(seat())
    assert "Thin Pool has 0 free data blocks" in str(excinfo.value)
    assert not excinfo.value.permanent  # a 500: the engine may recover
    assert engine.containers == {}


def test_a_memory_limit_docker_cannot_read_is_a_permanent_error(engine):
    with pytest.raises(ProvisioningError) as excinfo:
        make_driver(engine.base_url, memory="lots").start(seat())
    assert excinfo.value.permanent and "lots" in str(excinfo.value)


# --- compose ---


def parse_yaml(text: str) -> Any:
    """PyYAML when it is installed; otherwise a strict reader of the block-YAML subset the renderer writes."""
    try:
        import yaml
    except ImportError:
        return _parse_block_yaml(text)
    return yaml.safe_load(text)


def _parse_block_yaml(text: str) -> Any:
    lines = [
        (len(line) - len(line.lstrip(" ")), line.strip())
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]

    def scalar(raw: str) -> Any:
        if raw.startswith('"'):
            value, end = json.JSONDecoder().raw_decode(raw)
            assert end == len(raw), f"trailing text after a quoted scalar: {raw!r}"
            return value
        known: dict[str, Any] = {"true": True, "false": False, "null": None, "{}": {}, "[]": []}
        if raw in known:
            return known[raw]
        return json.loads(raw)  # a number; anything else is not what the renderer writes

    def key_and_rest(content: str) -> tuple[str, str]:
        if content.startswith('"'):
            key, end = json.JSONDecoder().raw_decode(content)
            rest = content[end:]
        else:
            key, colon, after = content.partition(":")
            assert colon, f"not a mapping entry: {content!r}"
            rest = ":" + after
        assert rest == ":" or rest.startswith(": "), f"bad mapping entry: {content!r}"
        return key, rest[1:].strip()

    def block(i: int, indent: int) -> tuple[Any, int]:
        if lines[i][1].startswith("- ") or lines[i][1] == "-":
            items = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("-"):
                rest = lines[i][1][1:].strip()
                if rest.startswith('"') or ":" not in rest:
                    items.append(scalar(rest))
                    i += 1
                else:  # "- key: value" opens a mapping indented past the dash
                    lines[i] = (indent + 2, rest)
                    value, i = block(i, indent + 2)
                    items.append(value)
            return items, i
        mapping: dict[str, Any] = {}
        while i < len(lines) and lines[i][0] == indent:
            key, rest = key_and_rest(lines[i][1])
            assert key not in mapping, f"duplicate key {key!r}"
            if rest:
                mapping[key], i = scalar(rest), i + 1
            else:
                assert lines[i + 1][0] > indent, f"empty value for {key!r}"
                mapping[key], i = block(i + 1, lines[i + 1][0])
        return mapping, i

    document, end = block(0, 0)
    assert end == len(lines), f"unparsed line: {lines[end]!r}"
    return document


def render(specs: list[SeatSpec]) -> str:
    return render_users_compose(specs, image=IMAGE, network=NETWORK, memory="256m", cpus=0.5)


def test_the_compose_file_has_one_service_per_seat_built_like_the_drivers_containers(engine, driver):
    specs = [seat("user001", token=None), seat("user002", token=None)]
    compose = parse_yaml(render(specs))

    assert list(compose["services"]) == ["comfyume-seat-may-user001", "comfyume-seat-may-user002"]
    assert compose["networks"] == {NETWORK: {"name": NETWORK, "external": True}}
    assert compose["volumes"] == {
        "comfyume-seat-may-user001-data": {"name": "comfyume-seat-may-user001-data"},
        "comfyume-seat-may-user002-data": {"name": "comfyume-seat-may-user002-data"},
    }
    service = compose["services"]["comfyume-seat-may-user001"]
    assert service["image"] == IMAGE and service["container_name"] == "comfyume-seat-may-user001"
    assert service["restart"] == "unless-stopped"
    assert service["mem_limit"] == "256m" and service["cpus"] == 0.5
    assert service["read_only"] is True and service["tmpfs"] == ["/tmp:rw,noexec,nosuid,nodev,size=64m"]
    assert service["cap_drop"] == ["ALL"] and service["security_opt"] == ["no-new-privileges:true"]
    assert service["pids_limit"] == 128
    assert service["networks"] == [NETWORK]
    assert service["volumes"] == [{"type": "volume", "source": "comfyume-seat-may-user001-data", "target": "/data"}]

    # The same environment and labels as the container the driver creates (token and spec hash aside).
    driver.start(seat("user001", token="seat_x"))
    container = engine.container("comfyume-seat-may-user001")
    created_env = env_of(container)
    created_env.pop("COMFYUME_SEAT_TOKEN")
    compose_env = dict(service["environment"])
    compose_env.pop("COMFYUME_SEAT_TOKEN")
    assert compose_env == created_env
    created_labels = dict(container["Config"]["Labels"])
    created_labels.pop(SPEC_LABEL)
    assert service["labels"] == created_labels
    # The same confinement (tests/test_docker_seats.py checks it on a real Engine).
    host = container["HostConfig"]
    assert (host["ReadonlyRootfs"], host["CapDrop"], host["PidsLimit"]) == (True, ["ALL"], service["pids_limit"])
    assert host["Tmpfs"] == {"/tmp": "rw,noexec,nosuid,nodev,size=64m"}
    assert host["SecurityOpt"] == ["no-new-privileges"]


def test_the_compose_file_never_contains_a_seat_token():
    specs = [seat("user001", token="seat_SUPERSECRET_1"), seat("user002", token=None)]
    text = render(specs)
    assert "SUPERSECRET" not in text
    services = parse_yaml(text)["services"]
    for spec in specs:
        variable = seat_token_variable(spec)
        assert services[spec.name]["environment"]["COMFYUME_SEAT_TOKEN"].startswith(f"${{{variable}:?")
    assert seat_token_variable(specs[0]) == "SEAT_TOKEN_COMFYUME_SEAT_MAY_USER001"


def test_the_compose_file_keeps_awkward_values_literal():
    spec = seat(WEIRD='a$b "quoted" back\\slash\nnew line\ttab é \x7f')
    spec.labels["on"] = "yes"
    text = render([spec])
    environment = parse_yaml(text)["services"][spec.name]["environment"]
    # "$$" is compose's literal dollar: the container sees "a$b".
    assert environment["WEIRD"] == 'a$$b "quoted" back\\slash\nnew line\ttab é \x7f'
    assert '      "on": "yes"' in text.splitlines()  # a YAML 1.1 boolean word as a key is quoted
    assert "\x7f" not in text  # unprintable characters are escaped, as YAML requires


def test_the_compose_file_for_no_seats_is_still_valid():
    compose = parse_yaml(render([]))
    assert compose["services"] == {} and compose["volumes"] == {}


@pytest.mark.django_db
def test_render_compose_users_writes_the_seats_of_workshops_in_progress(tmp_path):
    create_workshop("may", seats=2)
    create_workshop("old", seats=1)
    Workshop.objects.filter(slug="old").update(archived_at=timezone.now())
    path = tmp_path / "deploy" / "docker-compose.users.yml"

    out = StringIO()
    call_command("render_compose_users", "--output", str(path), stdout=out)
    services = parse_yaml(path.read_text())["services"]
    assert list(services) == ["comfyume-seat-may-user001", "comfyume-seat-may-user002"]
    assert "Wrote 2 seat services" in out.getvalue() and "SEAT_TOKEN_COMFYUME_SEAT_MAY_USER001" in out.getvalue()

    out = StringIO()
    call_command("render_compose_users", "--workshop", "old", stdout=out)
    assert list(parse_yaml(out.getvalue())["services"]) == ["comfyume-seat-old-user001"]

    with pytest.raises(CommandError, match="No workshop called 'nope'"):
        call_command("render_compose_users", "--workshop", "nope", stdout=StringIO())
