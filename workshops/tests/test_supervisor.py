"""The seat supervisor with the process driver: real seat frontend processes started, restarted after a
crash, stopped, restarted and reset on request."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from django.core.management import call_command

from workshops import frontends
from workshops.models import SeatFrontend
from workshops.provisioning.process import ProcessDriver


def reconcile_until(supervisor: frontends.Supervisor, condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        supervisor.reconcile()
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError("the supervisor did not get there in time")


def state(seat) -> SeatFrontend:
    return SeatFrontend.objects.get(seat=seat)


@pytest.fixture
def supervisor(personas, tmp_path, settings):
    settings.SEAT_FRONTENDS = {**settings.SEAT_FRONTENDS, "PORT_BASE": _free_base(), "DATA_DIR": tmp_path / "seats"}
    sup = frontends.Supervisor(ProcessDriver(tmp_path / "seats"), interval=0.1)
    yield sup
    sup.stop_all()


def _free_base() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid(driver: ProcessDriver, seat) -> int:
    return int((driver.seat_dir(frontends.seat_spec(seat)) / "frontend.pid").read_text())


def test_a_started_seat_runs_and_answers(supervisor, personas):
    frontends.start_seats([personas.seat_a])
    reconcile_until(supervisor, lambda: state(personas.seat_a).state == SeatFrontend.State.RUNNING)
    fe = state(personas.seat_a)
    assert fe.driver == "process" and fe.address == f"127.0.0.1:{fe.port}"
    assert requests.get(f"http://{fe.address}/comfyume/health", timeout=2).json()["seat"] == "user001"
    # The frontend got a fresh token and only the environment it needs (no database, no secret key).
    environ = Path(f"/proc/{_pid(supervisor.driver, personas.seat_a)}/environ").read_bytes().split(b"\0")
    names = {item.split(b"=", 1)[0].decode() for item in environ if item}
    assert "COMFYUME_SEAT_TOKEN" in names and "DATABASE_URL" not in names and "SECRET_KEY" not in names


def test_a_crashed_seat_is_started_again_and_counted(supervisor, personas):
    frontends.start_seats([personas.seat_a])
    reconcile_until(supervisor, lambda: state(personas.seat_a).state == SeatFrontend.State.RUNNING)
    first = _pid(supervisor.driver, personas.seat_a)
    os.kill(first, signal.SIGKILL)
    reconcile_until(
        supervisor,
        lambda: (
            state(personas.seat_a).state == SeatFrontend.State.RUNNING
            and _pid(supervisor.driver, personas.seat_a) != first
        ),
    )
    assert state(personas.seat_a).restarts == 1


def test_stop_restart_and_reset_on_request(supervisor, personas):
    frontends.start_seats([personas.seat_a, personas.seat_b])
    reconcile_until(
        supervisor,
        lambda: all(state(s).state == SeatFrontend.State.RUNNING for s in (personas.seat_a, personas.seat_b)),
    )
    saved = supervisor.driver.seat_dir(frontends.seat_spec(personas.seat_a)) / "user" / "workflows" / "mine.json"
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text("{}")

    call_command("seat_frontends", "stop", "--workshop", "ws1", "--seat", "user002")
    reconcile_until(supervisor, lambda: state(personas.seat_b).state == SeatFrontend.State.STOPPED)
    assert not supervisor.driver.status(frontends.seat_spec(personas.seat_b)).running

    before = _pid(supervisor.driver, personas.seat_a)
    frontends.restart_seats([personas.seat_a])
    reconcile_until(
        supervisor,
        lambda: (
            _pid(supervisor.driver, personas.seat_a) != before
            and state(personas.seat_a).state == SeatFrontend.State.RUNNING
        ),
    )
    assert saved.exists()  # a restart keeps the seat's files
    assert state(personas.seat_a).restarts == 0  # asked for, not a crash

    frontends.reset_seats([personas.seat_a])
    reconcile_until(
        supervisor,
        lambda: state(personas.seat_a).reset_done == 1 and state(personas.seat_a).state == SeatFrontend.State.RUNNING,
    )
    assert not saved.exists()
    kept = list((supervisor.driver.data_dir / "trash").rglob("mine.json"))
    assert len(kept) == 1  # set aside, not deleted


def test_status_command_lists_each_seat(supervisor, personas, capsys):
    frontends.start_seats(personas.workshop)
    call_command("seat_frontends", "status", "--workshop", "ws1")
    out = capsys.readouterr().out
    assert "user001" in out and "user002" in out and "wanted running" in out


def test_unknown_workshop_or_seat_is_a_clear_error(personas):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No workshop called 'nope'"):
        call_command("seat_frontends", "start", "--workshop", "nope")
    with pytest.raises(CommandError, match="No such seat in ws1: user404"):
        call_command("seat_frontends", "start", "--workshop", "ws1", "--seat", "user404")


def test_an_archived_workshops_seats_stop(supervisor, personas):
    from django.utils import timezone

    frontends.start_seats([personas.seat_a])
    reconcile_until(supervisor, lambda: state(personas.seat_a).state == SeatFrontend.State.RUNNING)
    personas.workshop.archived_at = timezone.now()
    personas.workshop.save()
    reconcile_until(supervisor, lambda: state(personas.seat_a).state == SeatFrontend.State.STOPPED)
    assert not supervisor.driver.status(frontends.seat_spec(personas.seat_a)).running


def test_a_port_something_else_holds_is_skipped(personas, settings):
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        taken = blocker.getsockname()[1]
        settings.SEAT_FRONTENDS = {**settings.SEAT_FRONTENDS, "PORT_BASE": taken}
        (row,) = frontends.ensure_frontends([personas.seat_a])
        assert row.port != taken and row.port > taken
