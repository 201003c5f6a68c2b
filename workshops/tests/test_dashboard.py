"""The instructor's live dashboard: what its snapshot says, that it costs the same queries however big the
workshop, that only staff see it, and that each action (through the real URL, with CSRF) does what its
button says, records itself in the audit log, and refuses bad requests without changing anything."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from jobs.instructor import resubmit_job
from jobs.models import Job
from jobs.policy import Candidate
from jobs.scheduler import schedule
from jobs.services import SubmissionRejected, submit_prompt
from storage.models import Artifact
from tests.fixtures import run_worker
from tests.recorded import TINY_PATH, load
from workshops.instructor.dashboard import build_snapshot, projected_order
from workshops.models import Announcement, AuditEntry, Seat, SeatFrontend, Workshop

TINY = load(TINY_PATH)


def page_url(slug: str = "ws1") -> str:
    return reverse("dashboard:page", args=[slug])


def snapshot_url(slug: str = "ws1") -> str:
    return reverse("dashboard:snapshot", args=[slug])


def act_url(slug: str = "ws1") -> str:
    return reverse("dashboard:act", args=[slug])


def make_job(seat: Seat, status: str = Job.Status.QUEUED, *, ago: float = 0, **fields: Any) -> Job:
    """A job row in a given state, as the pipeline would have left it (no scheduling involved)."""
    now = timezone.now()
    created = now - timedelta(seconds=ago)
    if status in Job.ACTIVE:
        fields.setdefault("dispatched_at", created + timedelta(seconds=1))
        fields.setdefault("started_at", created + timedelta(seconds=2) if status == Job.Status.RUNNING else None)
    if status in Job.TERMINAL:
        fields.setdefault("finished_at", now)
    return Job.objects.create(
        workshop=seat.workshop, seat=seat, prompt=TINY, status=status, created_at=created, **fields
    )


def make_output(job: Job, filename: str) -> Artifact:
    return Artifact.objects.create(
        job=job,
        key=f"workshops/{job.seat.workshop.slug}/{job.seat.label}/{job.prompt_id}/{filename}",
        filename=filename,
        kind=Artifact.Kind.IMAGE,
        size=10,
        sha256="0" * 64,
        content_type="image/png",
    )


@pytest.fixture
def staff(personas) -> Client:
    """The instructor in a browser-like client that enforces CSRF, with the token the page set."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(personas.instructor)
    response = client.get(page_url())
    assert response.status_code == 200
    client.csrf = response.cookies["csrftoken"].value  # type: ignore[attr-defined]
    return client


def post(client: Client, payload: Any, slug: str = "ws1", *, csrf: bool = True):
    headers = {"HTTP_X_CSRFTOKEN": client.csrf} if csrf else {}  # type: ignore[attr-defined]
    data = payload if isinstance(payload, str | bytes) else json.dumps(payload)
    return client.post(act_url(slug), data=data, content_type="application/json", **headers)


# --- The snapshot ------------------------------------------------------------------------------------


@pytest.fixture
def scenario(personas):
    """Seat A: one job running, two waiting, near its budget. Seat B: one waiting, a failed job and a later
    succeeded one with an output. The other workshop has a running and a waiting job on the same backend."""
    workshop = personas.workshop
    workshop.seat_gpu_budget_seconds = 100
    workshop.seat_cost_budget = Decimal("1.00")
    workshop.save()
    personas.backend.max_concurrency = 3
    personas.backend.price_per_hour = Decimal("3.60")
    personas.backend.save()
    a, b = personas.seat_a, personas.seat_b
    a.display_name = "Ada Lovelace"
    a.gpu_seconds_used = 85.0
    a.cost_used = Decimal("0.085")
    a.save()
    b.gpu_seconds_used = 10.0
    b.cost_used = Decimal("0.01")
    b.save()
    SeatFrontend.objects.create(seat=a, state=SeatFrontend.State.RUNNING, port=18001)
    SeatFrontend.objects.create(seat=b, state=SeatFrontend.State.FAILED, port=18002, last_error="exit 1")
    jobs = {
        "a_running": make_job(a, Job.Status.RUNNING, ago=60, backend=personas.backend),
        "a_wait1": make_job(a, ago=50),
        "a_wait2": make_job(a, ago=40),
        "b_failed": make_job(b, Job.Status.FAILED, ago=300, status_reason="Out of memory"),
        "b_done": make_job(b, Job.Status.SUCCEEDED, ago=200, gpu_seconds=10.0),
        "b_wait": make_job(b, ago=30),
        "c_running": make_job(personas.seat_c, Job.Status.RUNNING, ago=20, backend=personas.backend),
        "c_wait": make_job(personas.seat_c, ago=10),
    }
    Job.objects.filter(pk=jobs["b_failed"].pk).update(finished_at=timezone.now() - timedelta(seconds=100))
    make_output(jobs["b_done"], "ComfyUI_00001_.png")
    make_output(jobs["b_done"], "ComfyUI_00002_.png")
    return jobs


def test_snapshot_shows_each_seats_load_budget_frontend_and_last_output(staff, personas, scenario):
    data = staff.get(snapshot_url()).json()

    seats = {seat["label"]: seat for seat in data["seats"]}
    assert list(seats) == ["user001", "user002"]  # never the other workshop's seat
    a, b = seats["user001"], seats["user002"]
    assert (a["state"], a["queued"], a["running"]) == ("running", 2, 1)
    assert (b["state"], b["queued"], b["running"]) == ("queued", 1, 0)
    assert a["display_name"] == "Ada Lovelace" and a["username"] == "ws1-user001"
    assert a["online"] is True and a["frontend_label"] == "Running" and a["url"]
    assert b["online"] is False and b["url"] is None and b["frontend_error"] == "exit 1"
    assert a["budget_used"] == 0.85 and a["budget_warning"] is True
    assert b["budget_used"] == 0.1 and b["budget_warning"] is False
    assert a["last_job"] is None
    last = b["last_job"]
    assert (last["id"], last["status"], last["status_label"]) == (scenario["b_done"].pk, "succeeded", "Done")
    assert last["output"]["filename"] == "ComfyUI_00001_.png"
    assert last["output"]["url"] == reverse("storage:artifact-file", args=[last["output"]["id"]])
    assert (b["succeeded"], b["failed"]) == (1, 1)


def test_queue_lists_running_jobs_then_waiting_ones_in_the_order_the_scheduler_would_take_them(
    staff, personas, scenario
):
    data = staff.get(snapshot_url()).json()

    queue = data["queue"]
    ids = [job["id"] for job in queue]
    # Round robin: B has nothing running, so its job goes before A's two, though it was queued later.
    assert ids == [scenario[k].pk for k in ("a_running", "b_wait", "a_wait1", "a_wait2")]
    assert [job["position"] for job in queue] == [None, 1, 2, 3]
    running = queue[0]
    assert running["status_label"] == "Running" and running["backend"] == "sim" and running["seat"] == "user001"
    assert running["running_seconds"] >= 57 and 0 < running["waited_seconds"] < 5
    assert running["nodes"] == {"1": "EmptyImage", "2": "ImageInvert", "3": "SaveImage"}
    waiting = queue[1]
    assert 29 <= waiting["waited_seconds"] < 40 and waiting["nodes"] is None and waiting["can_cancel"] is True

    Workshop.objects.filter(pk=personas.workshop.pk).update(queue_policy="fifo")
    fifo = [job["id"] for job in staff.get(snapshot_url()).json()["queue"]]
    assert fifo == [scenario[k].pk for k in ("a_running", "a_wait1", "a_wait2", "b_wait")]


def test_backends_show_their_slots_shared_between_workshops_and_totals_count_this_workshop(staff, scenario):
    data = staff.get(snapshot_url()).json()

    (backend,) = data["backends"]
    assert (backend["name"], backend["active"], backend["active_here"], backend["max_concurrency"]) == ("sim", 2, 1, 3)
    assert backend["price_per_hour"] == 3.6 and backend["enabled"] is True and backend["dispatchable"] is True
    totals = data["totals"]
    assert totals["jobs"]["queued"] == 3 and totals["jobs"]["running"] == 1
    assert totals["jobs"]["failed"] == 1 and totals["jobs"]["succeeded"] == 1 and totals["jobs_total"] == 6
    assert totals["gpu_seconds"] == 95.0 and totals["cost"] == 0.1
    assert totals["gpu_budget_seconds"] == 200 and totals["cost_budget"] == 2.0
    assert totals["seats_near_budget"] == 1
    workshop = data["workshop"]
    assert workshop["paused"] is False and workshop["policy"] == "round_robin" and workshop["lane_counts"] is False
    assert workshop["caps"]["max_queued_per_seat"] == 5
    ended = [(job["id"], job["can_requeue"]) for job in data["ended"]]
    assert ended == [(scenario["b_done"].pk, False), (scenario["b_failed"].pk, True)]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("fifo", [1, 2, 3, 4, 5]),
        # Seat 10 has a job running: seat 20's first goes first, then they alternate.
        ("round_robin", [3, 1, 4, 2, 5]),
        # The instructor lane first, whatever its age; then round robin.
        ("priority", [5, 3, 1, 4, 2]),
    ],
)
def test_projected_order_follows_the_workshop_policy(policy, expected):
    queued = [
        Candidate(job_id=1, seat_id=10, seat_running=1, seat_gpu_seconds=0),
        Candidate(job_id=2, seat_id=10, seat_running=1, seat_gpu_seconds=0),
        Candidate(job_id=3, seat_id=20, seat_running=0, seat_gpu_seconds=50),
        Candidate(job_id=4, seat_id=20, seat_running=0, seat_gpu_seconds=50),
        Candidate(job_id=5, seat_id=30, seat_running=3, seat_gpu_seconds=900, instructor_lane=True),
    ]
    assert projected_order(policy, queued) == expected


def _seed(personas, seats: int, jobs_per_seat: int) -> None:
    """Seats with frontends and jobs in every state, some with outputs."""
    existing = Seat.objects.filter(workshop=personas.workshop).count()
    User = get_user_model()
    pool = list(Seat.objects.filter(workshop=personas.workshop))
    for n in range(existing, seats):
        user = User.objects.create_user(f"ws1-extra{n}", last_login=timezone.now())
        pool.append(Seat.objects.create(workshop=personas.workshop, label=f"user{n + 1:03d}", participant=user))
    statuses = [Job.Status.QUEUED, Job.Status.SUCCEEDED, Job.Status.FAILED, Job.Status.RUNNING]
    for i, seat in enumerate(pool):
        SeatFrontend.objects.get_or_create(seat=seat, defaults={"state": SeatFrontend.State.RUNNING, "port": 20000 + i})
        for j in range(jobs_per_seat):
            status = statuses[(i + j) % len(statuses)]
            job = make_job(seat, status, ago=j, backend=personas.backend if status != Job.Status.QUEUED else None)
            if status == Job.Status.SUCCEEDED:
                make_output(job, f"out_{job.pk}.png")
    AuditEntry.objects.create(workshop=personas.workshop, action="workshop.pause", summary="Paused")
    Announcement.objects.create(workshop=personas.workshop, message="Hello")


@pytest.mark.parametrize("url", [snapshot_url, page_url], ids=["snapshot", "page"])
def test_snapshot_and_page_cost_the_same_queries_for_2_seats_and_20(personas, url):
    client = Client()
    client.force_login(personas.instructor)
    _seed(personas, seats=2, jobs_per_seat=3)
    with CaptureQueriesContext(connection) as few:
        small = client.get(url())
    _seed(personas, seats=20, jobs_per_seat=3)
    with CaptureQueriesContext(connection) as many:
        large = client.get(url())

    assert small.status_code == large.status_code == 200
    assert len(large.content) > len(small.content)
    assert len(many.captured_queries) == len(few.captured_queries), [q["sql"] for q in many.captured_queries]
    assert len(few.captured_queries) <= 14, [q["sql"] for q in few.captured_queries]


def test_build_snapshot_is_json_ready_without_a_request(personas, scenario):
    data = build_snapshot(personas.workshop)

    assert json.loads(json.dumps(data)) == data
    # Without a request the page's origin is unknown: seat links are built from COMFYUME_PUBLIC_URL.
    assert next(s for s in data["seats"] if s["label"] == "user001")["url"]


# --- The page and who may see it ---------------------------------------------------------------------


def test_the_page_is_inside_the_admin_with_its_first_snapshot_socket_and_csrf_token(staff, personas, scenario):
    response = staff.get(page_url())

    html = response.content.decode()
    assert response.status_code == 200
    assert 'id="user-tools"' in html  # the admin's chrome
    assert 'data-socket-path="/ws/hub/workshops/ws1/"' in html
    assert f'data-act-url="{act_url()}"' in html and 'name="csrfmiddlewaretoken"' in html
    assert "comfyume/dashboard/main.js" in html
    embedded = response.context["snapshot"]
    assert embedded["queue"][0]["id"] == scenario["a_running"].pk
    assert '<script id="dashboard-snapshot" type="application/json">' in html
    for control in ("Pause the queue", "Show to every seat", "Cancel selected jobs", "Queue selected again"):
        assert control in html


@pytest.mark.parametrize("url", [page_url, snapshot_url, act_url], ids=["page", "snapshot", "act"])
def test_anonymous_and_participants_are_sent_to_the_admin_login_and_see_nothing(client, personas, scenario, url):
    method = client.post if url is act_url else client.get
    anonymous = method(url())
    client.force_login(personas.seat_a.participant)
    participant = method(url())

    for response in (anonymous, participant):
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login") + "?next=")
        assert b"user001" not in response.content and b"Ada" not in response.content
    assert Job.objects.filter(status=Job.Status.CANCELLED).count() == 0


def test_staff_need_permission_to_view_and_more_to_act(client, personas, scenario):
    helper = get_user_model().objects.create_user("helper", is_staff=True)
    client.force_login(helper)
    assert client.get(page_url()).status_code == 403
    assert client.get(snapshot_url()).status_code == 403

    helper.user_permissions.add(Permission.objects.get(codename="view_workshop"))
    client.force_login(get_user_model().objects.get(pk=helper.pk))  # fresh instance: no cached permissions
    page = client.get(page_url())
    refused = client.post(
        act_url(), data=json.dumps({"action": "pause"}), content_type="application/json"
    )  # the test client skips CSRF here: the permission is what is checked

    assert page.status_code == 200 and 'data-may-act="false"' in page.content.decode()
    assert "Pause the queue" not in page.content.decode()
    assert client.get(snapshot_url()).status_code == 200
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    assert Workshop.objects.get(pk=personas.workshop.pk).paused is False


def test_unknown_workshop_is_404(staff):
    assert staff.get(page_url("nope")).status_code == 404
    assert staff.get(snapshot_url("nope")).status_code == 404
    response = post(staff, {"action": "pause"}, slug="nope")
    assert response.status_code == 404 and response.json()["error"] == "no_workshop"


def test_the_workshop_admin_links_to_the_dashboard(personas):
    client = Client()
    client.force_login(personas.instructor)
    change = client.get(reverse("admin:workshops_workshop_change", args=[personas.workshop.pk])).content.decode()
    assert f'<a href="{page_url()}">Live dashboard</a>' in change


# --- Actions ------------------------------------------------------------------------------------------


def entries(action: str) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(action=action).order_by("id"))


def test_an_action_without_the_csrf_token_is_refused_and_changes_nothing(staff, personas):
    job = make_job(personas.seat_a)

    response = post(staff, {"action": "cancel", "jobs": [job.pk]}, csrf=False)

    assert response.status_code == 403
    assert Job.objects.get(pk=job.pk).status == Job.Status.QUEUED
    assert not AuditEntry.objects.exists()


def test_an_action_needs_a_post(staff):
    assert staff.get(act_url()).status_code == 405


def test_cancel_a_waiting_job(staff, personas):
    job = make_job(personas.seat_a)
    other = make_job(personas.seat_b)

    response = post(staff, {"action": "cancel", "jobs": [job.pk]})

    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True and body["message"] == "Cancelled 1 waiting job."
    assert body["results"] == [{"job": job.pk, "result": "cancelled"}]
    assert Job.objects.get(pk=job.pk).status == Job.Status.CANCELLED
    assert Job.objects.get(pk=other.pk).status != Job.Status.CANCELLED  # (the freed slot may have started it)
    (entry,) = entries("job.cancel")
    assert entry.summary == f"Cancelled job #{job.pk} of ws1/user001"
    assert (entry.actor, entry.workshop, entry.target_id) == (personas.instructor, personas.workshop, str(job.pk))
    assert entry.details == {"result": "cancelled", "status": "cancelled", "via": "dashboard"}


def test_bulk_cancel_stops_running_jobs_and_records_each(staff, personas):
    waiting = make_job(personas.seat_a)
    running = make_job(personas.seat_b, Job.Status.RUNNING, backend=personas.backend)

    response = post(staff, {"action": "cancel", "jobs": [waiting.pk, running.pk]})

    body = response.json()
    assert response.status_code == 200
    assert body["message"] == "Cancelled 1 waiting job; asked the GPU to stop 1 running job."
    assert Job.objects.get(pk=waiting.pk).status == Job.Status.CANCELLED
    assert Job.objects.get(pk=running.pk).cancel_requested_at is not None  # its dispatch loop stops it
    assert [e.details["result"] for e in entries("job.cancel")] == ["cancelled", "stop_requested"]


@pytest.mark.parametrize("status", [Job.Status.QUEUED, Job.Status.RUNNING])
def test_the_admin_and_the_dashboard_record_a_cancel_in_the_same_words(staff, personas, status):
    by_admin = make_job(personas.seat_a, status, backend=personas.backend if status in Job.ACTIVE else None)
    by_dashboard = make_job(personas.seat_b, status, backend=personas.backend if status in Job.ACTIVE else None)
    admin = Client()
    admin.force_login(personas.instructor)

    answer = admin.post(
        reverse("admin:jobs_job_changelist"), {"action": "cancel_selected", "_selected_action": [by_admin.pk]}
    )
    assert answer.status_code == 302
    assert post(staff, {"action": "cancel", "jobs": [by_dashboard.pk]}).status_code == 200

    def said(job: Job) -> tuple:
        (entry,) = AuditEntry.objects.filter(action="job.cancel", target_id=str(job.pk))
        words = entry.summary.replace(f"#{job.pk} of {job.seat}", "#N of SEAT")
        return entry.actor, entry.workshop, entry.target_type, words, entry.details

    admin_said, dashboard_said = said(by_admin), said(by_dashboard)
    assert dashboard_said[-1] == {**admin_said[-1], "via": "dashboard"}
    assert dashboard_said[:-1] == admin_said[:-1]
    assert admin_said[3] == (
        "Cancelled job #N of SEAT"
        if status == Job.Status.QUEUED
        else "Cancelled job #N of SEAT (running: its backend was asked to stop it)"
    )


def test_a_job_named_twice_is_cancelled_and_recorded_once(staff, personas):
    job = make_job(personas.seat_a)

    response = post(staff, {"action": "cancel", "jobs": [job.pk, job.pk]})

    assert response.status_code == 200
    assert response.json()["results"] == [{"job": job.pk, "result": "cancelled"}]
    assert len(entries("job.cancel")) == 1


def test_cancel_with_one_ended_job_cancels_none(staff, personas):
    waiting = make_job(personas.seat_a)
    done = make_job(personas.seat_a, Job.Status.SUCCEEDED)

    response = post(staff, {"action": "cancel", "jobs": [waiting.pk, done.pk]})

    assert response.status_code == 409
    assert response.json() == {
        "ok": False,
        "error": "already_ended",
        "message": f"Nothing was cancelled: job #{done.pk} of user001 (Done) had already ended.",
    }
    assert Job.objects.get(pk=waiting.pk).status == Job.Status.QUEUED
    assert not AuditEntry.objects.exists()


def test_requeue_a_failed_job_queues_the_same_prompt_for_the_same_seat(staff, personas):
    failed = make_job(personas.seat_b, Job.Status.FAILED, status_reason="Out of memory", client_id="browser-7")

    response = post(staff, {"action": "requeue", "jobs": [failed.pk]})

    assert response.status_code == 200, response.content
    body = response.json()
    new = Job.objects.get(pk=body["jobs"][0]["to"])
    assert body["message"] == f"Queued job #{failed.pk} of user002 again as job #{new.pk}."
    assert new.pk != failed.pk and new.seat == personas.seat_b and new.prompt == failed.prompt
    assert new.status == Job.Status.QUEUED and new.client_id == "browser-7"
    assert Job.objects.get(pk=failed.pk).status == Job.Status.FAILED  # its history stays as it was
    (entry,) = entries("job.requeue")
    assert entry.summary == f"Queued job #{failed.pk} of ws1/user002 again as job #{new.pk}"
    assert entry.details == {"new_job": new.pk, "previous_status": "failed", "via": "dashboard"}


def test_requeue_refuses_jobs_that_have_not_ended_or_succeeded(staff, personas):
    waiting = make_job(personas.seat_a)
    done = make_job(personas.seat_a, Job.Status.SUCCEEDED)
    cancelled = make_job(personas.seat_a, Job.Status.CANCELLED)
    before = Job.objects.count()

    for job in (waiting, done):
        response = post(staff, {"action": "requeue", "jobs": [cancelled.pk, job.pk]})
        assert response.status_code == 409 and response.json()["error"] == "not_ended"
    assert Job.objects.count() == before and not AuditEntry.objects.exists()


def test_requeue_is_all_or_nothing_when_the_seat_cap_refuses_one(staff, personas):
    Workshop.objects.filter(pk=personas.workshop.pk).update(max_queued_per_seat=2)
    make_job(personas.seat_a)  # one waiting already: room for one more
    first = make_job(personas.seat_a, Job.Status.FAILED)
    second = make_job(personas.seat_a, Job.Status.TIMED_OUT)
    before = Job.objects.count()

    response = post(staff, {"action": "requeue", "jobs": [first.pk, second.pk]})

    assert response.status_code == 409
    body = response.json()
    assert body["error"] == "refused"
    assert body["message"].startswith(f"Nothing was queued again: job #{second.pk} of user001 was refused: You already")
    assert Job.objects.count() == before and not AuditEntry.objects.exists()


def test_resubmit_job_goes_through_the_submit_path(personas):
    """Budgets apply to a job queued again exactly as to one the participant submits."""
    Workshop.objects.filter(pk=personas.workshop.pk).update(seat_gpu_budget_seconds=60)
    Seat.objects.filter(pk=personas.seat_a.pk).update(gpu_seconds_used=61)
    failed = make_job(Seat.objects.get(pk=personas.seat_a.pk), Job.Status.FAILED)

    with pytest.raises(SubmissionRejected) as refused:
        resubmit_job(Job.objects.select_related("seat__workshop").get(pk=failed.pk), by="instructor")
    assert refused.value.status == 403 and "GPU time" in str(refused.value)
    with pytest.raises(ValueError):
        resubmit_job(make_job(personas.seat_a), by="instructor")


def test_lane_moves_only_waiting_jobs_and_schedules_on_commit(staff, personas, django_capture_on_commit_callbacks):
    Workshop.objects.filter(pk=personas.workshop.pk).update(queue_policy="priority")
    first = make_job(personas.seat_a)
    second = make_job(personas.seat_b)

    with django_capture_on_commit_callbacks() as callbacks:
        response = post(staff, {"action": "lane", "jobs": [first.pk]})

    assert response.status_code == 200
    body = response.json()
    assert body["message"] == "Moved 1 job to the instructor lane." and body["moved"] == [first.pk]
    assert "warning" not in body  # the priority policy honours the lane
    assert schedule in callbacks
    assert Job.objects.get(pk=first.pk).instructor_lane is True
    assert Job.objects.get(pk=second.pk).instructor_lane is False
    (entry,) = entries("job.lane")
    assert entry.summary == f"Moved job #{first.pk} of ws1/user001 to the instructor lane"
    assert entry.target_id == str(first.pk) and entry.details["via"] == "dashboard"
    # The dashboard now shows it first among the waiting jobs.
    queue = staff.get(snapshot_url()).json()["queue"]
    assert [(job["id"], job["lane"]) for job in queue] == [(first.pk, True), (second.pk, False)]


def test_lane_refuses_running_jobs_and_moves_nothing(staff, personas):
    waiting = make_job(personas.seat_a)
    running = make_job(personas.seat_b, Job.Status.RUNNING, backend=personas.backend)

    response = post(staff, {"action": "lane", "jobs": [waiting.pk, running.pk]})
    again = post(staff, {"action": "lane", "jobs": [waiting.pk]})
    twice = post(staff, {"action": "lane", "jobs": [waiting.pk]})

    assert response.status_code == 409 and response.json()["error"] == "not_waiting"
    assert "Running" in response.json()["message"]
    assert again.status_code == 200
    # Under round robin the lane changes nothing, and the answer says so.
    assert "Round robin between seats" in again.json()["warning"]
    assert twice.status_code == 409 and twice.json()["error"] == "already_in_lane"
    assert Job.objects.get(pk=running.pk).instructor_lane is False
    assert len(entries("job.lane")) == 1


def test_announce_shows_a_note_to_every_seat_and_is_recorded(staff, personas):
    response = post(staff, {"action": "announce", "message": "  Coffee break until 14:30  "})

    assert response.status_code == 200
    note = Announcement.objects.get()
    assert (note.message, note.active, note.created_by) == ("Coffee break until 14:30", True, personas.instructor)
    assert response.json()["announcement"] == note.pk
    (entry,) = entries("announcement.post")
    assert entry.summary == "Posted an announcement to ws1: “Coffee break until 14:30”"
    assert entry.target_id == str(note.pk)
    assert staff.get(snapshot_url()).json()["announcements"][0]["message"] == "Coffee break until 14:30"

    withdrawn = post(staff, {"action": "withdraw", "announcement": note.pk})
    assert withdrawn.status_code == 200 and Announcement.objects.get().active is False
    (entry,) = entries("announcement.withdraw")
    assert entry.summary == "Withdrew the announcement “Coffee break until 14:30” from ws1"
    assert post(staff, {"action": "withdraw", "announcement": note.pk}).status_code == 409
    assert staff.get(snapshot_url()).json()["announcements"] == []


@pytest.mark.parametrize(
    ("payload", "status", "error"),
    [
        ({"action": "announce", "message": "   "}, 400, "no_message"),
        ({"action": "announce"}, 400, "no_message"),
        ({"action": "announce", "message": "x" * 501}, 400, "message_too_long"),
        ({"action": "withdraw", "announcement": 999}, 404, "no_announcement"),
        ({"action": "explode"}, 400, "unknown_action"),
        ({"jobs": [1]}, 400, "unknown_action"),
        ("not json", 400, "invalid_json"),
        ('["pause"]', 400, "invalid_json"),
        ({"action": "cancel"}, 400, "no_jobs"),
        ({"action": "cancel", "jobs": []}, 400, "no_jobs"),
        ({"action": "cancel", "jobs": ["1"]}, 400, "no_jobs"),
        ({"action": "cancel", "jobs": [True]}, 400, "no_jobs"),
        ({"action": "cancel", "jobs": 7}, 400, "no_jobs"),
        ({"action": "cancel", "jobs": list(range(1, 502))}, 400, "too_many_jobs"),
        ({"action": "cancel", "jobs": [987654]}, 404, "no_such_job"),
        ({"action": "cancel", "jobs": [0]}, 400, "no_jobs"),
        ({"action": "cancel", "jobs": [1.0]}, 400, "no_jobs"),
        ({"action": 5}, 400, "unknown_action"),
        ({"action": "announce", "message": 5}, 400, "no_message"),
        ({"action": "announce", "message": ["Coffee"]}, 400, "no_message"),
        ({"action": "withdraw", "announcement": "1"}, 404, "no_announcement"),
        ({"action": "withdraw", "announcement": True}, 404, "no_announcement"),
    ],
)
def test_bad_requests_get_a_clear_4xx_and_change_nothing(staff, personas, payload, status, error):
    job = make_job(personas.seat_a)

    response = post(staff, payload)

    assert response.status_code == status
    body = response.json()
    assert body["ok"] is False and body["error"] == error and body["message"]
    assert Job.objects.get(pk=job.pk).status == Job.Status.QUEUED
    assert not Announcement.objects.exists() and not AuditEntry.objects.exists()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            {"action": 5},
            "Unknown action 5; expected one of cancel, requeue, lane, move, pause, resume, queue_settings, announce, "
            "withdraw, warm, scale_to_zero, switch_off, switch_on.",
        ),
        ({"action": "cancel", "jobs": ["12"]}, 'Name the jobs by number: {"jobs": [12, 15]}.'),
        ({"action": "cancel", "jobs": [*range(1, 502), 1]}, "At most 500 jobs at once, not 501."),
        ({"action": "announce", "message": " \t "}, "Write the announcement first."),
        ({"action": "announce", "message": "x" * 501 + "  "}, "An announcement has at most 500 characters, not 501."),
        ({"action": "withdraw", "announcement": "7"}, "There is no announcement '7' in ws1."),
        ({"action": "switch_off", "backend": True}, "GPU backend True is not one of ws1's backends."),
        ({"action": "warm"}, "GPU backend None is not one of ws1's backends."),
        ({"action": "move", "jobs": "mine", "backend": "3"}, "GPU backend '3' is not one of ws1's backends."),
    ],
)
def test_a_body_of_the_wrong_shape_is_refused_in_the_actions_own_words(staff, personas, payload, message):
    if payload.get("jobs") == "mine":  # a job that exists, so that the move is refused for its backend
        payload = {**payload, "jobs": [make_job(personas.seat_a).pk]}

    response = post(staff, payload)

    assert response.status_code in (400, 404)
    assert response.json()["message"] == message
    assert not AuditEntry.objects.exists()


@pytest.mark.parametrize("action", ["cancel", "requeue", "lane"])
def test_a_job_of_another_workshop_is_refused_with_the_rest(staff, personas, action):
    mine = make_job(personas.seat_a, Job.Status.FAILED if action == "requeue" else Job.Status.QUEUED)
    theirs = make_job(personas.seat_c, Job.Status.FAILED if action == "requeue" else Job.Status.QUEUED)
    before = list(Job.objects.order_by("id").values_list("id", "status", "instructor_lane"))

    response = post(staff, {"action": action, "jobs": [mine.pk, theirs.pk]})

    assert response.status_code == 404
    assert response.json()["error"] == "other_workshop"
    assert response.json()["message"] == f"Job #{theirs.pk} is not in ws1; nothing was changed."
    assert list(Job.objects.order_by("id").values_list("id", "status", "instructor_lane")) == before
    assert not AuditEntry.objects.exists()


def test_pausing_twice_is_refused_the_second_time(staff, personas):
    make_job(personas.seat_a)
    make_job(personas.seat_b, Job.Status.RUNNING, backend=personas.backend)

    first = post(staff, {"action": "pause"})
    second = post(staff, {"action": "pause"})
    not_paused = post(staff, {"action": "resume"}), post(staff, {"action": "resume"})

    assert first.status_code == 200 and first.json()["paused"] is True
    assert first.json()["message"] == (
        "Paused the queue of ws1: no waiting job starts until you resume (1 waiting now); 1 running job will finish."
    )
    assert second.status_code == 409 and second.json()["message"] == "The queue of ws1 is already paused."
    assert not_paused[0].status_code == 200 and not_paused[1].status_code == 409
    assert [e.action for e in AuditEntry.objects.order_by("id")] == ["workshop.pause", "workshop.resume"]


@pytest.mark.django_db(transaction=True)  # resuming schedules on commit, and the job then runs for real
def test_pause_holds_new_jobs_and_resume_starts_them_on_the_simulator(personas, sim):
    staff = Client(enforce_csrf_checks=True)
    staff.force_login(personas.instructor)
    staff.csrf = staff.get(page_url()).cookies["csrftoken"].value  # type: ignore[attr-defined]

    paused = post(staff, {"action": "pause"})
    job = submit_prompt(personas.seat_a, {"prompt": TINY})
    run_worker()

    assert paused.status_code == 200
    assert paused.json()["message"] == "Paused the queue of ws1: no waiting job starts until you resume."
    assert Workshop.objects.get(pk=personas.workshop.pk).paused is True
    assert Job.objects.get(pk=job.pk).status == Job.Status.QUEUED  # accepted, but not started
    assert staff.get(snapshot_url()).json()["workshop"]["paused"] is True

    resumed = post(staff, {"action": "resume"})
    assert resumed.status_code == 200
    assert resumed.json()["message"] == "Resumed the queue of ws1: 1 waiting job can start now."
    assert Job.objects.get(pk=job.pk).status == Job.Status.DISPATCHING  # claimed on commit of the resume
    run_worker()
    assert Job.objects.get(pk=job.pk).status == Job.Status.SUCCEEDED
    pause_entry, resume_entry = AuditEntry.objects.order_by("id")
    assert (pause_entry.action, pause_entry.summary) == ("workshop.pause", "Paused the queue of ws1")
    assert (resume_entry.action, resume_entry.summary) == ("workshop.resume", "Resumed the queue of ws1")
    assert resume_entry.details["changes"] == {"paused": {"old": True, "new": False}}
    assert resume_entry.target_id == str(personas.workshop.pk) and resume_entry.actor == personas.instructor
