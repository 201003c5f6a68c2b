"""GET /api/queue/status: the queue and the GPUs for anyone, with nothing personal in it, cheap to poll."""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from gpu_backends.models import GpuBackend
from jobs import status
from jobs.models import Job
from workshops.models import Seat, Workshop

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """Each test reads the database, not an answer another test left in this process's cache."""
    monkeypatch.setattr(status, "_last", (float("-inf"), {}))


def _job(seat: Seat, state: str, backend: GpuBackend | None = None) -> Job:
    return Job.objects.create(
        workshop=seat.workshop, seat=seat, prompt={"secret": "a castle at dusk"}, status=state, backend=backend
    )


def test_anyone_sees_how_busy_each_open_workshop_and_gpu_is(client, personas, second_backend):
    personas.backend.gpu_type = "H200"
    personas.backend.save()
    _job(personas.seat_a, Job.Status.QUEUED)
    _job(personas.seat_b, Job.Status.QUEUED)
    _job(personas.seat_a, Job.Status.RUNNING, personas.backend)
    _job(personas.seat_c, Job.Status.DISPATCHING, personas.backend)
    _job(personas.seat_c, Job.Status.SUCCEEDED, personas.backend)  # over: not counted
    archived = Workshop.objects.create(slug="yesterday", title="Yesterday", archived_at=timezone.now())
    old_seat = Seat.objects.create(workshop=archived, label="user009")
    _job(old_seat, Job.Status.QUEUED)  # an archived workshop is not shown, nor counted
    GpuBackend.objects.create(name="spare", kind=GpuBackend.Kind.COMFYUI, url="http://x", enabled=False)

    answer = client.get("/api/queue/status")

    assert answer.status_code == 200 and answer["Access-Control-Allow-Origin"] == "*"
    assert answer["Cache-Control"] == "public, max-age=2"
    body = answer.json()
    assert (body["waiting"], body["running"]) == (2, 2)
    assert body["workshops"] == [
        {"slug": "ws1", "title": "Workshop one", "paused": False, "waiting": 2, "running": 1},
        {"slug": "ws2", "title": "Workshop two", "paused": False, "waiting": 0, "running": 1},
    ]
    assert body["backends"] == [
        {"name": "sim", "kind": "simulator", "state": personas.backend.state, "gpu": "H200", "running": 2, "slots": 1},
        {"name": "sim-2", "kind": "simulator", "state": second_backend.state, "gpu": None, "running": 0, "slots": 1},
    ]


def test_it_says_nothing_personal_or_secret(client, personas):
    personas.seat_a.display_name = "Ada Lovelace"
    personas.seat_a.save()
    personas.backend.last_error = "connect to http://10.0.0.7:8188 refused"
    personas.backend.save()
    job = _job(personas.seat_a, Job.Status.RUNNING, personas.backend)
    text = json.dumps(client.get("/api/queue/status").json())
    for private in ("user001", "Ada", "ws1-user001", "castle", str(job.prompt_id), "10.0.0.7", personas.backend.url):
        assert private not in text, private


def test_polling_costs_the_same_queries_for_a_big_queue_and_is_answered_from_memory_meanwhile(client, personas):
    seats = Seat.objects.bulk_create([Seat(workshop=personas.workshop, label=f"s{i:03d}") for i in range(50)])
    Job.objects.bulk_create([Job(workshop=personas.workshop, seat=seats[i % 50], prompt={}) for i in range(500)])
    with CaptureQueriesContext(connection) as first:
        assert client.get("/api/queue/status").json()["waiting"] == 500
    with CaptureQueriesContext(connection) as again:
        assert client.get("/api/queue/status").json()["waiting"] == 500
    assert len([q for q in first.captured_queries if "jobs_job" in q["sql"] or "gpu_backends" in q["sql"]]) <= 3
    assert len(first.captured_queries) <= 4  # the three reads, and the session's user when there is one
    assert [q for q in again.captured_queries if "jobs_job" in q["sql"]] == []


def test_switched_off_it_is_for_staff_only(client, admin_client, personas, settings):
    settings.COMFYUME = {**settings.COMFYUME, "PUBLIC_QUEUE_STATUS": False}
    refused = client.get("/api/queue/status")
    assert refused.status_code == 404 and refused.json()["error"] == "not_found"
    answer = admin_client.get("/api/queue/status")
    assert answer.status_code == 200 and "Access-Control-Allow-Origin" not in answer
    assert answer["Cache-Control"] == "private, max-age=2"


def test_it_only_reads(client, personas):
    assert client.post("/api/queue/status", {}).status_code == 405
