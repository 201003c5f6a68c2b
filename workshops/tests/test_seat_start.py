"""A seat's ComfyUI starts when its participant arrives, and their page says how far it is and forwards them.

The participant signs in (password or join link) → their SeatFrontend is asked to run → the supervisor starts
it → the waiting page, which asks ``/seat/comfyui`` on load, on reconnect and every few seconds, forwards them.
"""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from workshops import frontends
from workshops.models import JoinLink, Seat, SeatFrontend
from workshops.provisioning import FrontendStatus, ProvisioningError, SeatSpec
from workshops.provisioning.process import ProcessDriver
from workshops.tests.test_supervisor import reconcile_until


class FakeDriver:
    """A driver that records what it was asked and fails for the seats named in ``fail``."""

    name = "fake"

    def __init__(self, fail: dict[str, Exception] | None = None) -> None:
        self.fail = fail or {}
        self.started: list[str] = []

    def start(self, spec: SeatSpec) -> FrontendStatus:
        if spec.label in self.fail:
            raise self.fail[spec.label]
        self.started.append(f"{spec.workshop}/{spec.label}")
        return self.status(spec)

    def stop(self, spec: SeatSpec) -> None:
        if f"{spec.workshop}/{spec.label}" in self.started:
            self.started.remove(f"{spec.workshop}/{spec.label}")

    def status(self, spec: SeatSpec) -> FrontendStatus:
        running = f"{spec.workshop}/{spec.label}" in self.started
        # Port 9 (discard): nothing answers the health check there, so a started seat stays "starting".
        return FrontendStatus(running=running, address="127.0.0.1:9" if running else "")

    def reset(self, spec: SeatSpec) -> None:
        pass


def _free_base() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def seat_settings(settings, tmp_path):
    settings.SEAT_FRONTENDS = {**settings.SEAT_FRONTENDS, "PORT_BASE": _free_base(), "DATA_DIR": tmp_path / "seats"}
    return settings


@pytest.fixture
def process_supervisor(personas, seat_settings, tmp_path):
    sup = frontends.Supervisor(ProcessDriver(tmp_path / "seats"), interval=0.1)
    yield sup
    sup.stop_all()


def frontend_of(seat: Seat) -> SeatFrontend:
    return SeatFrontend.objects.get(seat=seat)


def comfyui_state(client: Client) -> dict:
    response = client.get("/seat/comfyui")
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    return response.json()


def sign_in_with_password(personas) -> Client:
    client = Client()
    response = client.post("/login/", {"username": "ws1-user001", "password": "pw-participant"})
    assert response.status_code == 302, response.content
    return client


# --- Starting on sign-in --------------------------------------------------------------------------------


def test_password_sign_in_starts_the_seat_and_the_page_follows_it_until_it_runs(process_supervisor, personas):
    assert not SeatFrontend.objects.filter(seat=personas.seat_a).exists()  # as create_workshop leaves a seat
    client = sign_in_with_password(personas)
    assert frontend_of(personas.seat_a).desired == SeatFrontend.Desired.RUNNING
    assert not SeatFrontend.objects.filter(seat=personas.seat_b).exists()  # only the one who signed in
    # Nothing supervises yet: the page says what it waits for.
    page = client.get("/").content.decode()
    assert 'data-phase="no_supervisor"' in page and "seat supervisor" in page
    frontends._beat("process", 1.0)  # the heartbeat a running supervisor leaves
    assert comfyui_state(client)["phase"] == "starting"
    process_supervisor.reconcile()  # started, not answering yet
    assert comfyui_state(client)["phase"] in ("answering", "ready")
    reconcile_until(process_supervisor, lambda: frontend_of(personas.seat_a).state == SeatFrontend.State.RUNNING)
    port = frontend_of(personas.seat_a).port
    state = comfyui_state(client)
    assert state["phase"] == "ready" and state["url"] == f"http://testserver:{port}/" and not state["error"]
    assert client.get("/")["Location"] == f"http://testserver:{port}/"


def test_join_link_starts_a_seat_the_instructor_had_stopped(personas, seat_settings):
    frontends.start_seats([personas.seat_a])
    frontends.stop_seats([personas.seat_a])
    token = JoinLink.issue(personas.seat_a)
    client = Client()
    assert client.get(f"/join/{token}/").status_code == 302
    assert frontend_of(personas.seat_a).desired == SeatFrontend.Desired.RUNNING
    frontends._beat("process", 1.0)
    page = client.get("/", follow=True).content.decode()
    assert 'data-phase="starting"' in page and "Your ComfyUI is starting" in page


def test_an_archived_workshops_seat_does_not_start(personas, seat_settings):
    personas.workshop.archived_at = timezone.now()
    personas.workshop.save()
    client = sign_in_with_password(personas)
    assert not SeatFrontend.objects.filter(seat=personas.seat_a).exists()
    assert comfyui_state(client)["phase"] == "archived"
    assert "This workshop has ended" in client.get("/").content.decode()


# --- create_workshop and the supervisor -------------------------------------------------------------------


def _create(slug: str, tmp_path) -> str:
    out = tmp_path / f"{slug}.out"
    with open(out, "w") as stdout:
        call_command("create_workshop", slug, "--seats", "2", stdout=stdout)
    return out.read_text()


def test_create_workshop_starts_the_seats_when_a_supervisor_runs(db, seat_settings, tmp_path):
    supervisor = frontends.Supervisor(FakeDriver(), interval=1.0)
    supervisor.reconcile()  # a supervisor is running: its heartbeat is fresh
    output = _create("cli-day", tmp_path)
    assert "Starting the 2 seats' ComfyUI now (the seat supervisor is running)" in output
    rows = SeatFrontend.objects.filter(seat__workshop__slug="cli-day")
    assert [r.desired for r in rows] == [SeatFrontend.Desired.RUNNING] * 2
    supervisor.reconcile()
    assert sorted(supervisor.driver.started) == ["cli-day/user001", "cli-day/user002"]
    assert {r.state for r in rows.all()} == {SeatFrontend.State.STARTING}


def test_create_workshop_says_how_to_start_the_seats_when_no_supervisor_runs(db, seat_settings, tmp_path):
    assert not frontends.supervisor_running()
    output = _create("cli-day", tmp_path)
    assert "No seat supervisor is running" in output and "python manage.py run_seat_frontends" in output
    assert "make run" in output
    # Asked for all the same: they start as soon as a supervisor runs.
    supervisor = frontends.Supervisor(FakeDriver(), interval=1.0)
    supervisor.reconcile()
    assert len(supervisor.driver.started) == 2


# --- A seat that cannot start says why ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "error, shown",
    [
        (ProvisioningError("The Docker engine refused the container: no such image"), "no such image"),
        (RuntimeError("disk full"), "RuntimeError: disk full"),
    ],
)
def test_a_seat_whose_driver_raises_says_why_on_its_page_and_in_the_admin(personas, seat_settings, error, shown):
    supervisor = frontends.Supervisor(FakeDriver(fail={"user001": error}), interval=1.0)
    client = sign_in_with_password(personas)
    frontends.start_seats([personas.seat_b])
    supervisor.reconcile()
    fe = frontend_of(personas.seat_a)
    assert fe.state == SeatFrontend.State.FAILED and shown in fe.last_error
    assert frontend_of(personas.seat_b).state == SeatFrontend.State.STARTING  # the other seat still started
    state = comfyui_state(client)
    assert state["phase"] == "failed" and shown in state["error"]
    page = client.get("/").content.decode()
    assert 'data-phase="failed"' in page and shown in page
    admin = Client()
    admin.force_login(personas.instructor)
    changelist = admin.get("/admin/workshops/seat/").content.decode()
    assert "Failed (restarting)" in changelist and shown in changelist


def test_a_frontend_that_exits_at_once_says_why(process_supervisor, personas, seat_settings):
    seat_settings.SEAT_FRONTENDS = {**seat_settings.SEAT_FRONTENDS, "HUB_URL": "hub-without-scheme"}
    client = sign_in_with_password(personas)
    reconcile_until(process_supervisor, lambda: "COMFYUME_HUB_URL" in frontend_of(personas.seat_a).last_error)
    fe = frontend_of(personas.seat_a)
    assert fe.restarts >= 1 and fe.last_error.startswith("It stopped by itself (exited; its log ends:")
    state = comfyui_state(client)
    assert state["phase"] in ("failed", "answering") and "COMFYUME_HUB_URL must be an http(s) URL" in state["error"]


def test_a_started_seat_that_does_not_answer_says_so(personas, seat_settings):
    supervisor = frontends.Supervisor(FakeDriver(), interval=1.0)
    client = sign_in_with_password(personas)
    supervisor.reconcile()
    assert comfyui_state(client) == {
        "phase": "answering",
        "message": "Your ComfyUI has started and is getting ready: waiting for it to answer…",
        "url": None,
        "error": "",
    }
    SeatFrontend.objects.filter(seat=personas.seat_a).update(started_at=timezone.now() - timedelta(minutes=1))
    supervisor.reconcile()
    assert "does not answer at 127.0.0.1:9" in comfyui_state(client)["error"]


# --- The waiting page's status endpoint --------------------------------------------------------------------


def test_the_status_endpoint_tells_a_page_that_missed_the_ready_moment(personas, seat_settings):
    client = sign_in_with_password(personas)
    frontends._beat("process", 1.0)
    page = client.get("/").content.decode()
    # The page polls the endpoint whatever its socket did (on load, on reconnect, every few seconds).
    assert 'data-status-url="/seat/comfyui"' in page and 'data-forward="1"' in page
    assert 'data-phase="starting"' in page
    # The seat comes up while the page is not listening (no event reaches it): asking tells it.
    SeatFrontend.objects.filter(seat=personas.seat_a).update(state=SeatFrontend.State.RUNNING)
    port = frontend_of(personas.seat_a).port
    assert comfyui_state(client)["url"] == f"http://testserver:{port}/"
    # Asking never starts anything (the instructor's Stop holds while the page is open).
    frontends.stop_seats([personas.seat_a])
    SeatFrontend.objects.filter(seat=personas.seat_a).update(state=SeatFrontend.State.STOPPED)
    assert comfyui_state(client)["phase"] == "stopped"
    assert frontend_of(personas.seat_a).desired == SeatFrontend.Desired.STOPPED
    # The hub's own page (?seat) shows the link instead of forwarding.
    assert 'data-forward=""' in client.get("/?seat").content.decode()


def test_the_status_endpoint_answers_json_errors(personas):
    response = Client().get("/seat/comfyui")
    assert response.status_code == 401 and response.json()["error"]["type"] == "not_signed_in"
    staff = Client()
    staff.force_login(personas.instructor)
    response = staff.get("/seat/comfyui")
    assert response.status_code == 403 and response.json()["error"]["type"] == "no_seat"
    response = Client().post("/seat/comfyui")
    assert response.status_code == 405


def test_the_supervisors_heartbeat_expires(db):
    assert not frontends.supervisor_running()
    frontends.Supervisor(FakeDriver(), interval=0.1).reconcile()
    assert frontends.supervisor_running()
    from comfyume.redis_client import counters

    assert 0 < counters().ttl(frontends._supervisor_key()) <= 10
