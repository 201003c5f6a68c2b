"""A running seat frontend started with other settings than the platform's current ones (the hub moved to another
port or address) is started again with the current ones by the supervisor, keeping the participant's files;
one started with the current settings is left alone. Both drivers: real processes, and a fake Docker Engine."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_docker import FakeDockerEngine
from workshops import frontends
from workshops.models import SeatFrontend
from workshops.provisioning.docker import DockerDriver
from workshops.provisioning.process import ProcessDriver, _alive
from workshops.tests.test_docker_driver import IMAGE, NETWORK, env_of
from workshops.tests.test_supervisor import _free_base, _pid, reconcile_until, state


def _environ(pid: int) -> dict[str, str]:
    items = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in items if b"=" in item)


def _running(seat) -> bool:
    return state(seat).state == SeatFrontend.State.RUNNING


@pytest.fixture
def seat_settings(personas, settings, tmp_path):
    settings.SEAT_FRONTENDS = {
        **settings.SEAT_FRONTENDS,
        "PORT_BASE": _free_base(),
        "DATA_DIR": tmp_path / "seats",
        "HUB_URL": "http://127.0.0.1:8000",
    }
    return settings


@pytest.fixture
def process_supervisor(seat_settings, tmp_path) -> Iterator[frontends.Supervisor]:
    sup = frontends.Supervisor(ProcessDriver(tmp_path / "seats"), interval=0.1)
    yield sup
    sup.stop_all()


def test_a_seat_started_for_another_hub_address_is_started_again_for_the_current_one(
    process_supervisor, personas, seat_settings
):
    frontends.start_seats([personas.seat_a])
    reconcile_until(process_supervisor, lambda: _running(personas.seat_a))
    first = _pid(process_supervisor.driver, personas.seat_a)
    seat_dir = process_supervisor.driver.seat_dir(frontends.seat_spec(personas.seat_a))
    saved = seat_dir / "user" / "workflows" / "mine.json"
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text('{"nodes": []}')

    # `make run` again on another port: the supervisor now starts seats for a hub on 8001.
    seat_settings.SEAT_FRONTENDS = {**seat_settings.SEAT_FRONTENDS, "HUB_URL": "http://127.0.0.1:8001"}
    status = process_supervisor.driver.status(frontends.seat_spec(personas.seat_a))
    assert status.running and status.stale == "COMFYUME_HUB_URL"
    reconcile_until(
        process_supervisor,
        lambda: _running(personas.seat_a) and _pid(process_supervisor.driver, personas.seat_a) != first,
    )

    second = _pid(process_supervisor.driver, personas.seat_a)
    assert _environ(second)["COMFYUME_HUB_URL"] == "http://127.0.0.1:8001"
    assert saved.read_text() == '{"nodes": []}'  # the participant's work stays with the seat
    assert state(personas.seat_a).restarts == 0  # a change of settings, not a crash
    assert not process_supervisor.driver.status(frontends.seat_spec(personas.seat_a)).stale


def test_a_seat_started_with_the_current_settings_is_left_running(process_supervisor, personas):
    frontends.start_seats([personas.seat_a])
    reconcile_until(process_supervisor, lambda: _running(personas.seat_a))
    first = _pid(process_supervisor.driver, personas.seat_a)
    for _ in range(5):
        process_supervisor.reconcile()
    assert _pid(process_supervisor.driver, personas.seat_a) == first


def test_a_seat_left_running_by_an_earlier_version_is_started_again_once(process_supervisor, personas):
    """No record of its settings (they were not kept before): it cannot be trusted to reach this hub."""
    frontends.start_seats([personas.seat_a])
    reconcile_until(process_supervisor, lambda: _running(personas.seat_a))
    first = _pid(process_supervisor.driver, personas.seat_a)
    seat_dir = process_supervisor.driver.seat_dir(frontends.seat_spec(personas.seat_a))
    (seat_dir / "frontend.settings.json").unlink()
    reconcile_until(
        process_supervisor,
        lambda: _running(personas.seat_a) and _pid(process_supervisor.driver, personas.seat_a) != first,
    )
    second = _pid(process_supervisor.driver, personas.seat_a)
    for _ in range(5):
        process_supervisor.reconcile()
    assert _pid(process_supervisor.driver, personas.seat_a) == second


def test_stopping_the_supervisor_stops_every_seat_together(process_supervisor, personas):
    """A seat that does not exit on SIGTERM takes the driver's whole grace period (5 s) to stop, as one whose
    participant keeps a socket open did: one after the other, two took 10 s, the time `make run` gives the
    supervisor before it kills it, and the seats not stopped by then were left running."""
    seats = (personas.seat_a, personas.seat_b)
    frontends.start_seats(personas.workshop)
    reconcile_until(process_supervisor, lambda: all(_running(s) for s in seats))
    pids = [_pid(process_supervisor.driver, s) for s in seats]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)  # a stopped process acts on SIGTERM only once continued; SIGKILL ends it

    started = time.monotonic()
    process_supervisor.stop_all()
    took = time.monotonic() - started

    assert took < 8, f"stopping two seats took {took:.1f} s"
    assert all(state(s).state == SeatFrontend.State.STOPPED for s in seats)
    assert not any(_alive(pid) for pid in pids)


# --- docker ------------------------------------------------------------------------------------------


@pytest.fixture
def engine() -> Iterator[FakeDockerEngine]:
    fake = FakeDockerEngine(images=(IMAGE,))
    yield fake
    fake.stop()


@pytest.fixture
def docker_supervisor(engine, seat_settings) -> frontends.Supervisor:
    seat_settings.SEAT_FRONTENDS = {**seat_settings.SEAT_FRONTENDS, "HUB_URL": "http://web:8000"}
    driver = DockerDriver(base_url=engine.base_url, image=IMAGE, network=NETWORK, memory="256m", cpus=0.5)
    return frontends.Supervisor(driver, interval=0.1)


def _container(engine: FakeDockerEngine, seat) -> dict:
    return engine.container(frontends.frontend_name(seat))


def test_a_container_started_for_another_hub_is_replaced_keeping_its_volume(
    docker_supervisor, engine, personas, seat_settings
):
    frontends.start_seats([personas.seat_a])
    docker_supervisor.reconcile()
    first = _container(engine, personas.seat_a)
    assert first["State"]["Running"] and env_of(first)["COMFYUME_HUB_URL"] == "http://web:8000"
    volumes = [m["Name"] for m in first["Mounts"]]

    for _ in range(3):  # while nothing changes, the container is left as it is
        docker_supervisor.reconcile()
    assert _container(engine, personas.seat_a)["Id"] == first["Id"]

    seat_settings.SEAT_FRONTENDS = {**seat_settings.SEAT_FRONTENDS, "HUB_URL": "http://hub.internal:8000"}
    docker_supervisor.reconcile()

    second = _container(engine, personas.seat_a)
    assert second["Id"] != first["Id"] and second["State"]["Running"]
    assert env_of(second)["COMFYUME_HUB_URL"] == "http://hub.internal:8000"
    assert [m["Name"] for m in second["Mounts"]] == volumes  # the seat's files are in the same volume
    assert list(engine.volumes) == volumes
    assert state(personas.seat_a).restarts == 0


def test_a_container_of_an_older_seat_image_is_replaced(docker_supervisor, engine, personas):
    frontends.start_seats([personas.seat_a])
    docker_supervisor.reconcile()
    first = _container(engine, personas.seat_a)
    engine.add_image("comfyume/seat-frontend:2")
    docker_supervisor.driver.image = "comfyume/seat-frontend:2"
    docker_supervisor.reconcile()
    second = _container(engine, personas.seat_a)
    assert second["Id"] != first["Id"] and second["Config"]["Image"] == "comfyume/seat-frontend:2"
