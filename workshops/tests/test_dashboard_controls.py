"""The live dashboard's controls beyond the queue buttons: moving jobs to another GPU backend, the queue policy
and caps, and the GPU backends' own switches (warm up, scale to zero, switch off and on). Each through the
real URL with CSRF, recorded in the audit log, refused whole (and unrecorded) when it cannot be carried out."""

from __future__ import annotations

import json
import threading
import time
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from gpu_backends.models import GpuBackend
from jobs import events
from jobs.models import Job
from jobs.scheduler import schedule
from jobs.services import submit_prompt
from tests.fake_verda import CLIENT_ID, CLIENT_SECRET
from tests.fixtures import run_worker
from workshops.models import AuditEntry, Seat, Workshop
from workshops.tests.test_dashboard import TINY, _seed, act_url, entries, make_job, page_url, post, snapshot_url


@pytest.fixture
def staff(personas) -> Client:
    """The instructor in a browser-like client that enforces CSRF, with the token the page set."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(personas.instructor)
    client.csrf = client.get(page_url()).cookies["csrftoken"].value  # type: ignore[attr-defined]
    return client


def queue_row(client: Client, job: Job) -> dict[str, Any]:
    return next(row for row in client.get(snapshot_url()).json()["queue"] if row["id"] == job.pk)


def unchanged(*jobs: Job) -> list[tuple]:
    fields = ("id", "status", "pinned_backend_id", "cancel_requested_at")
    return list(Job.objects.filter(pk__in=[j.pk for j in jobs]).order_by("id").values_list(*fields))


# --- Moving jobs to another backend ------------------------------------------------------------------


def test_moving_a_waiting_job_pins_it_to_that_backend_and_schedules_on_commit(
    staff, personas, second_backend, django_capture_on_commit_callbacks
):
    job = make_job(personas.seat_a)
    other = make_job(personas.seat_b)

    with django_capture_on_commit_callbacks() as callbacks:
        response = post(staff, {"action": "move", "jobs": [job.pk], "backend": second_backend.pk})

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["message"] == "Moved 1 waiting job to sim-2." and body["moved"] == [job.pk]
    assert schedule in callbacks
    assert Job.objects.get(pk=job.pk).pinned_backend == second_backend
    assert Job.objects.get(pk=other.pk).pinned_backend is None
    (entry,) = entries("job.move")
    assert entry.summary == f"Moved waiting job #{job.pk} of ws1/user001 to GPU backend sim-2"
    assert entry.details == {"from": None, "to": "sim-2", "via": "dashboard"}
    assert (entry.workshop, entry.target_id) == (personas.workshop, str(job.pk))
    row = queue_row(staff, job)
    assert row["pinned_backend"] == {"id": second_backend.pk, "name": "sim-2"} and row["waiting_for"] is None
    backends = {b["name"]: b for b in staff.get(snapshot_url()).json()["backends"]}
    assert backends["sim-2"]["pinned_waiting"] == 1 and backends["sim"]["pinned_waiting"] == 0


def test_any_backend_unpins_waiting_jobs(staff, personas, second_backend):
    pinned = make_job(personas.seat_a, pinned_backend=second_backend)
    free = make_job(personas.seat_b)

    response = post(staff, {"action": "move", "jobs": [pinned.pk, free.pk], "backend": None})

    assert response.status_code == 200, response.content
    assert response.json()["message"] == "1 waiting job may run on any backend again."
    assert Job.objects.get(pk=pinned.pk).pinned_backend is None
    (entry,) = entries("job.move")
    assert entry.summary == f"Let job #{pinned.pk} of ws1/user001 run on any GPU backend"
    assert entry.details == {"from": "sim-2", "to": None, "via": "dashboard"}


def test_a_job_pinned_to_a_backend_that_cannot_take_it_stays_queued_and_the_dashboard_says_why(
    staff, personas, second_backend
):
    job = make_job(personas.seat_a, pinned_backend=second_backend)

    GpuBackend.objects.filter(pk=second_backend.pk).update(enabled=False)
    switched_off = queue_row(staff, job)
    GpuBackend.objects.filter(pk=second_backend.pk).update(enabled=True, state=GpuBackend.State.FAILING)
    failing = queue_row(staff, job)
    personas.workshop.backends.remove(second_backend)
    detached = queue_row(staff, job)

    assert switched_off["status"] == "queued"
    assert switched_off["waiting_for"] == "Waits for sim-2, which is switched off: switch it on or move the job."
    assert failing["waiting_for"] == (
        "Waits for sim-2, which is failing: it starts once sim-2 answers again, or move the job."
    )
    assert detached["waiting_for"] == (
        "Pinned to sim-2, which this workshop no longer uses: it cannot start until you move it."
    )


def test_moving_a_running_job_stops_it_and_queues_its_prompt_again_pinned_to_the_target(
    staff, personas, second_backend, django_capture_on_commit_callbacks
):
    running = make_job(personas.seat_a, Job.Status.RUNNING, backend=personas.backend, instructor_lane=True)
    starting = make_job(personas.seat_b, Job.Status.DISPATCHING, backend=personas.backend, priority=3)

    with django_capture_on_commit_callbacks(execute=True):
        response = post(staff, {"action": "move", "jobs": [running.pk, starting.pk], "backend": second_backend.pk})

    assert response.status_code == 200, response.content
    body = response.json()
    copies = {pair["from"]: Job.objects.get(pk=pair["to"]) for pair in body["jobs"]}
    assert body["message"] == (
        f"Stopped 2 running jobs; they run again on sim-2 as jobs #{copies[running.pk].pk}, #{copies[starting.pk].pk}."
    )
    for old, new in ((running, copies[running.pk]), (starting, copies[starting.pk])):
        assert (new.seat, new.prompt, new.pinned_backend) == (old.seat, old.prompt, second_backend)
        assert (new.instructor_lane, new.priority) == (old.instructor_lane, old.priority)
        assert new.status in (Job.Status.QUEUED, Job.Status.DISPATCHING)
    # Its dispatch loop ends the running one (interrupted) within a second; the starting one never ran.
    old = Job.objects.get(pk=running.pk)
    assert old.status == Job.Status.RUNNING and old.cancel_requested_at is not None
    stopped = Job.objects.get(pk=starting.pk)
    assert stopped.status == Job.Status.CANCELLED
    assert stopped.status_reason == "Cancelled by the instructor, moving it to sim-2."
    summaries = [e.summary for e in entries("job.move")]
    assert summaries == [
        f"Stopped job #{old.pk} of ws1/{seat} on sim and queued it again on sim-2 as job #{copies[old.pk].pk}"
        for old, seat in ((running, "user001"), (starting, "user002"))
    ]
    assert entries("job.move")[0].details == {
        "from": "sim",
        "to": "sim-2",
        "new_job": copies[running.pk].pk,
        "previous_status": "running",
        "via": "dashboard",
    }


def test_a_move_whose_new_run_the_seat_cap_refuses_changes_nothing(staff, personas, second_backend):
    Workshop.objects.filter(pk=personas.workshop.pk).update(max_queued_per_seat=1)
    waiting_b = make_job(personas.seat_b)
    make_job(personas.seat_a)  # seat A's one waiting place is taken
    running_a = make_job(personas.seat_a, Job.Status.RUNNING, backend=personas.backend)
    before, count = unchanged(waiting_b, running_a), Job.objects.count()

    response = post(staff, {"action": "move", "jobs": [waiting_b.pk, running_a.pk], "backend": second_backend.pk})

    assert response.status_code == 409
    body = response.json()
    assert body["error"] == "refused"
    assert body["message"].startswith(
        f"Nothing was moved: the new run of job #{running_a.pk} of user001 was refused: You already have 1 jobs"
    )
    assert unchanged(waiting_b, running_a) == before and Job.objects.count() == count
    assert not AuditEntry.objects.exists()


@pytest.mark.parametrize(
    ("case", "status", "error"),
    [
        ("backend of no workshop of mine", 404, "no_such_backend"),
        ("backend switched off", 409, "backend_off"),
        ("backend named as text", 404, "no_such_backend"),
        ("no backend named", 400, "no_backend"),
        ("running job to any backend", 409, "pick_a_backend"),
        ("running job to where it runs", 409, "already_there"),
        ("running job being stopped", 409, "stopping"),
        ("ended job", 409, "already_ended"),
        ("waiting job pinned there already", 409, "no_change"),
    ],
)
def test_a_move_that_cannot_be_done_is_refused_and_changes_nothing(
    staff, personas, second_backend, case, status, error
):
    waiting = make_job(personas.seat_a)
    running = make_job(personas.seat_b, Job.Status.RUNNING, backend=personas.backend)
    elsewhere = GpuBackend.objects.create(name="elsewhere", kind=GpuBackend.Kind.SIMULATOR, url=personas.backend.url)
    payload: dict[str, Any] = {"action": "move", "jobs": [waiting.pk], "backend": second_backend.pk}
    if case == "backend of no workshop of mine":
        payload["backend"] = elsewhere.pk
    elif case == "backend switched off":
        GpuBackend.objects.filter(pk=second_backend.pk).update(enabled=False)
    elif case == "backend named as text":
        payload["backend"] = str(second_backend.pk)
    elif case == "no backend named":
        del payload["backend"]
    elif case == "running job to any backend":
        payload.update(jobs=[waiting.pk, running.pk], backend=None)
    elif case == "running job to where it runs":
        payload.update(jobs=[waiting.pk, running.pk], backend=personas.backend.pk)
    elif case == "running job being stopped":
        Job.objects.filter(pk=running.pk).update(cancel_requested_at=running.created_at)
        payload["jobs"] = [waiting.pk, running.pk]
    elif case == "ended job":
        payload["jobs"] = [waiting.pk, make_job(personas.seat_a, Job.Status.SUCCEEDED).pk]
    elif case == "waiting job pinned there already":
        Job.objects.filter(pk=waiting.pk).update(pinned_backend=second_backend)
    before, count = unchanged(waiting, running), Job.objects.count()

    response = post(staff, payload)

    assert response.status_code == status, response.content
    assert response.json()["error"] == error and response.json()["message"]
    assert unchanged(waiting, running) == before and Job.objects.count() == count
    assert not AuditEntry.objects.exists()


@pytest.mark.django_db(transaction=True)  # the stop and the new run go through commits, RQ and the simulator
def test_a_running_job_moved_to_another_backend_is_interrupted_and_its_new_run_finishes_there(
    personas, sim, second_backend
):
    staff = Client(enforce_csrf_checks=True)
    staff.force_login(personas.instructor)
    staff.csrf = staff.get(page_url()).cookies["csrftoken"].value  # type: ignore[attr-defined]
    sim.config.hang_on_class = {"ImageInvert"}
    job = submit_prompt(personas.seat_a, {"prompt": TINY})
    worker = threading.Thread(target=run_worker)
    worker.start()
    deadline = time.monotonic() + 10
    while Job.objects.get(pk=job.pk).status != Job.Status.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    assert Job.objects.get(pk=job.pk).backend == personas.backend

    response = post(staff, {"action": "move", "jobs": [job.pk], "backend": second_backend.pk})
    sim.config.hang_on_class = set()  # the new run must not hang too
    worker.join(timeout=60)
    run_worker()  # the new run, if it was claimed after the first worker had emptied the queue

    assert response.status_code == 200, response.content
    new = Job.objects.get(pk=response.json()["jobs"][0]["to"])
    old = Job.objects.get(pk=job.pk)
    assert old.status == Job.Status.INTERRUPTED and old.backend == personas.backend
    assert new.status == Job.Status.SUCCEEDED, new.status_reason
    assert (new.backend, new.pinned_backend) == (second_backend, second_backend)


# --- Queue policy and caps ---------------------------------------------------------------------------


def test_queue_settings_are_saved_recorded_old_to_new_and_scheduled_on_commit(
    staff, personas, django_capture_on_commit_callbacks
):
    payload = {
        "action": "queue_settings",
        "queue_policy": "fifo",
        "max_queued_per_seat": 3,
        "max_running_per_seat": "2",
        "max_queue_depth": 500,
    }
    with django_capture_on_commit_callbacks() as callbacks:
        response = post(staff, payload)

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["message"] == "Saved: First in, first out; up to 3 waiting and 2 running per seat; queue depth 500."
    assert body["changed"] == ["max_queued_per_seat", "max_running_per_seat", "queue_policy"]
    assert schedule in callbacks
    workshop = Workshop.objects.get(pk=personas.workshop.pk)
    assert (workshop.queue_policy, workshop.max_queued_per_seat, workshop.max_running_per_seat) == ("fifo", 3, 2)
    (entry,) = entries("workshop.change")
    assert entry.summary == (
        "Changed the queue settings of ws1: queue policy: round_robin → fifo, max queued per seat: 5 → 3, "
        "max running per seat: 1 → 2"
    )
    assert entry.details == {
        "changes": {
            "queue_policy": {"old": "round_robin", "new": "fifo"},
            "max_queued_per_seat": {"old": 5, "new": 3},
            "max_running_per_seat": {"old": 1, "new": 2},
        },
        "via": "dashboard",
    }
    shown = staff.get(snapshot_url()).json()["workshop"]
    assert shown["policy"] == "fifo" and shown["caps"]["max_running_per_seat"] == 2


def test_raising_the_running_cap_starts_a_waiting_job_at_once(staff, personas, django_capture_on_commit_callbacks):
    GpuBackend.objects.filter(pk=personas.backend.pk).update(max_concurrency=2)
    make_job(personas.seat_a, Job.Status.RUNNING, backend=personas.backend)
    waiting = make_job(personas.seat_a)

    with (
        mock.patch("jobs.scheduler.enqueue_dispatch", autospec=True),
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = post(staff, {"action": "queue_settings", "max_running_per_seat": 2})

    assert response.status_code == 200, response.content
    assert Job.objects.get(pk=waiting.pk).status == Job.Status.DISPATCHING
    assert Workshop.objects.get(pk=personas.workshop.pk).max_queued_per_seat == 5  # left out: kept


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"max_running_per_seat": 0}, "Max running per seat: Ensure this value is greater than or equal to 1."),
        ({"max_queue_depth": "lots"}, "Max queue depth: Enter a whole number."),
        ({"max_queued_per_seat": 2.5}, "Max queued per seat: Enter a whole number."),
        ({"max_queued_per_seat": None}, "Max queued per seat: This field is required."),
        ({"max_queued_per_seat": True}, "Max queued per seat: This field is required."),
        ({"queue_policy": "lottery"}, "Queue policy: Select a valid choice. lottery is not one of the available"),
    ],
)
def test_invalid_queue_settings_are_refused_with_the_fields_message(staff, personas, changes, expected):
    before = Workshop.objects.filter(pk=personas.workshop.pk).values().get()

    response = post(staff, {"action": "queue_settings", "max_running_per_seat": 2, **changes})

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_settings"
    assert response.json()["message"].startswith("Nothing was changed. " + expected), response.json()["message"]
    assert Workshop.objects.filter(pk=personas.workshop.pk).values().get() == before
    assert not AuditEntry.objects.exists()


def test_queue_settings_that_change_nothing_are_refused(staff, personas):
    response = post(staff, {"action": "queue_settings", "queue_policy": "round_robin", "max_queue_depth": 500})

    assert response.status_code == 409 and response.json()["error"] == "no_change"
    assert not AuditEntry.objects.exists()


# --- GPU backends ------------------------------------------------------------------------------------


def test_switching_a_backend_off_fails_over_to_the_next_and_every_dashboard_using_it_hears(
    staff, personas, second_backend, django_capture_on_commit_callbacks
):
    make_job(personas.seat_a, Job.Status.RUNNING, backend=personas.backend)
    make_job(personas.seat_b, pinned_backend=personas.backend)

    with (
        mock.patch.object(events, "publish", autospec=True) as publish,
        mock.patch("jobs.instructor.schedule", autospec=True) as scheduled,
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = post(staff, {"action": "switch_off", "backend": personas.backend.pk})

    assert response.status_code == 200, response.content
    body = response.json()
    assert (
        body["message"]
        == "Switched off sim: no new job starts on it (its 1 running job finishes there); waiting jobs go to sim-2."
    )
    assert body["warning"] == "1 job pinned to sim waits until you switch it on again or move it."
    assert GpuBackend.objects.get(pk=personas.backend.pk).enabled is False
    scheduled.assert_called_once_with()
    # sim serves both workshops: both dashboards refresh.
    groups = {group for call in publish.call_args_list for group in call.args[0]}
    assert groups == {events.workshop_group(personas.workshop.pk), events.workshop_group(personas.other_workshop.pk)}
    (entry,) = entries("backend.switch_off")
    assert (entry.summary, entry.target_id) == ("Switched off GPU backend sim", str(personas.backend.pk))
    assert entry.details == {"changes": {"enabled": {"old": True, "new": False}}, "via": "dashboard"}
    row = next(b for b in staff.get(snapshot_url()).json()["backends"] if b["name"] == "sim")
    assert row["enabled"] is False and row["dispatchable"] is False

    again = post(staff, {"action": "switch_off", "backend": personas.backend.pk})
    on = post(staff, {"action": "switch_on", "backend": personas.backend.pk})
    assert again.status_code == 409 and again.json()["message"] == "sim is switched off already."
    assert on.status_code == 200 and GpuBackend.objects.get(pk=personas.backend.pk).enabled is True
    assert [e.action for e in AuditEntry.objects.order_by("id")] == ["backend.switch_off", "backend.switch_on"]


def test_switching_off_the_last_backend_warns_that_jobs_will_wait(staff, personas):
    response = post(staff, {"action": "switch_off", "backend": personas.backend.pk})

    assert response.status_code == 200
    assert response.json()["warning"] == "No other GPU backend of ws1 is switched on: waiting jobs wait."


@pytest.fixture
def verda_backend(personas, fake_verda, settings) -> tuple[GpuBackend, Any]:
    settings.VERDA = {"API_URL": fake_verda.api_url, "CLIENT_ID": CLIENT_ID, "CLIENT_SECRET": CLIENT_SECRET}
    deployment = fake_verda.add_deployment("h200-spot", "http://127.0.0.1:9", max_replicas=3, startup_delay=0.3)
    backend = GpuBackend.objects.create(
        name="h200-spot", kind=GpuBackend.Kind.VERDA, url=fake_verda.deployment_url("h200-spot"), warm_replicas=2
    )
    personas.workshop.backends.add(backend)
    return backend, deployment


def test_warm_up_now_and_scale_to_zero_a_verda_backend(staff, personas, verda_backend):
    backend, deployment = verda_backend

    warmed = post(staff, {"action": "warm", "backend": backend.pk})
    state = GpuBackend.objects.get(pk=backend.pk).state
    replicas = deployment.scaling["min_replica_count"]
    cooled = post(staff, {"action": "scale_to_zero", "backend": backend.pk})

    assert warmed.status_code == 200, warmed.content
    assert warmed.json()["message"] == "Warming up h200-spot: 2 replicas start now and stay for at least an hour."
    assert (state, replicas) == (GpuBackend.State.WARMING, 2)
    assert cooled.status_code == 200 and deployment.scaling["min_replica_count"] == 0
    assert [(e.action, e.summary) for e in AuditEntry.objects.order_by("id")] == [
        ("backend.warm", "Warmed up GPU backend h200-spot (2 replicas for an hour)"),
        (
            "backend.scale_to_zero",
            "Scaled GPU backend h200-spot to zero. Verda confirms: minimum 0, no replica running.",
        ),
    ]


def test_scaling_without_api_credentials_shows_the_backends_error(staff, personas, verda_backend, settings):
    backend, _ = verda_backend
    settings.VERDA = {**settings.VERDA, "CLIENT_SECRET": ""}

    response = post(staff, {"action": "warm", "backend": backend.pk})

    assert response.status_code == 502
    assert response.json()["error"] == "scaling_failed"
    assert response.json()["message"] == (
        "Could not warm up h200-spot: Scaling needs Verda API credentials: set COMFYUME_VERDA_CLIENT_ID and "
        "COMFYUME_VERDA_CLIENT_SECRET."
    )
    assert not AuditEntry.objects.exists()


@pytest.mark.parametrize("action", ["warm", "scale_to_zero"])
def test_only_verda_backends_scale(staff, personas, action):
    response = post(staff, {"action": action, "backend": personas.backend.pk})

    assert response.status_code == 409 and response.json()["error"] == "not_serverless"
    assert response.json()["message"] == (
        "Only Verda backends warm up and scale to zero; sim is a ComfyUI simulator (no GPU)."
    )


@pytest.mark.parametrize("action", ["warm", "scale_to_zero", "switch_off", "switch_on"])
def test_backend_actions_need_a_backend_of_the_workshop_and_the_right_to_change_backends(
    staff, personas, client, action
):
    elsewhere = GpuBackend.objects.create(name="elsewhere", kind=GpuBackend.Kind.SIMULATOR, url=personas.backend.url)
    assert post(staff, {"action": action, "backend": elsewhere.pk}).status_code == 404
    assert post(staff, {"action": action}).status_code == 404

    runner = get_user_model().objects.create_user("runner", is_staff=True)
    runner.user_permissions.add(*Permission.objects.filter(codename__in=["view_workshop", "change_workshop"]))
    client.force_login(runner)
    page = client.get(page_url()).content.decode()
    payload = json.dumps({"action": action, "backend": personas.backend.pk})
    response = client.post(act_url(), data=payload, content_type="application/json")  # the permission is checked
    assert 'data-may-change-backends="false"' in page and 'data-may-act="true"' in page
    assert response.status_code == 403 and response.json()["error"] == "forbidden"
    assert GpuBackend.objects.get(pk=personas.backend.pk).enabled is True
    assert not AuditEntry.objects.exists()


# --- The page and its cost ---------------------------------------------------------------------------


def test_the_page_offers_the_new_controls(staff, personas):
    html = staff.get(page_url()).content.decode()

    assert 'data-may-change-backends="true"' in html
    assert 'id="queue-settings"' in html and 'id="bulk-move"' in html
    for value, label in (("fifo", "First in, first out"), ("priority", "Instructor lane and priority")):
        assert f'<option value="{value}">{label}' in html
    assert '<script id="dashboard-charts" type="application/json">' in html


@pytest.mark.parametrize("url", [snapshot_url, page_url], ids=["snapshot", "page"])
def test_pins_and_a_second_backend_cost_no_extra_queries_however_big_the_workshop(personas, second_backend, url):
    client = Client()
    client.force_login(personas.instructor)
    GpuBackend.objects.filter(pk=second_backend.pk).update(enabled=False)

    def pin_some() -> None:
        for i, job in enumerate(Job.objects.filter(workshop=personas.workshop, status=Job.Status.QUEUED)):
            Job.objects.filter(pk=job.pk).update(pinned_backend=(second_backend, personas.backend, None)[i % 3])

    _seed(personas, seats=2, jobs_per_seat=3)
    pin_some()
    with CaptureQueriesContext(connection) as few:
        small = client.get(url())
    _seed(personas, seats=20, jobs_per_seat=3)
    pin_some()
    with CaptureQueriesContext(connection) as many:
        large = client.get(url())

    assert small.status_code == large.status_code == 200
    assert Seat.objects.filter(workshop=personas.workshop).count() == 20
    assert len(many.captured_queries) == len(few.captured_queries), [q["sql"] for q in many.captured_queries]
    # The page adds one query for the charts to the snapshot's; both stay within the dashboard's bound.
    assert len(few.captured_queries) <= 14, [q["sql"] for q in few.captured_queries]
