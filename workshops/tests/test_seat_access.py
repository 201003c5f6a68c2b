"""Who may use a seat (the hub's check behind nginx and every seat frontend), sign-in limits, announcements."""

from __future__ import annotations

import base64

import pytest
from django.test import Client
from django.urls import reverse

from workshops import frontends
from workshops.models import Announcement, Seat
from workshops.services import post_announcement


def check(client: Client, **headers) -> int:
    return client.get("/auth/seat", headers=headers).status_code


@pytest.fixture
def signed_in(personas):
    def make(user) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make


def test_nginx_check_by_path_allows_only_the_seats_participant_and_staff(personas, signed_in):
    nginx = {"X-Original-URI": "/user001/api/prompt", "X-Comfyume-Workshop": "ws1"}
    assert check(signed_in(personas.seat_a.participant), **nginx) == 204
    assert check(signed_in(personas.instructor), **nginx) == 204
    assert check(signed_in(personas.seat_b.participant), **nginx) == 403
    # Same label in another workshop is another seat.
    assert check(signed_in(personas.seat_c.participant), **nginx) == 403
    assert check(Client(), **nginx) == 401
    assert check(Client(), **{**nginx, "X-Original-URI": "/user999/"}) == 404
    assert check(Client(), **{**nginx, "X-Comfyume-Workshop": ""}) == 404


def test_frontend_check_names_the_seat_by_its_token(personas, signed_in):
    token = personas.seat_a.issue_token()
    # The URI is the browser's: it cannot point the check at another seat.
    spoofed = {"X-Comfyume-Seat-Token": token, "X-Original-URI": "/user002/", "X-Comfyume-Workshop": "ws1"}
    assert check(signed_in(personas.seat_a.participant), **spoofed) == 204
    assert check(signed_in(personas.seat_b.participant), **spoofed) == 403
    assert check(signed_in(personas.seat_a.participant), **{**spoofed, "X-Comfyume-Seat-Token": "seat_bogus"}) == 404


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def test_http_basic_counts_only_when_enabled(personas, settings):
    nginx = {"X-Original-URI": "/user001/", "X-Comfyume-Workshop": "ws1"}
    good = _basic("ws1-user001", "pw-participant")
    assert check(Client(), Authorization=good, **nginx) == 401
    settings.SEAT_HTTP_BASIC = True
    assert check(Client(), Authorization=good, **nginx) == 204
    assert check(Client(), Authorization=_basic("ws1-user002", "pw-participant"), **nginx) == 403
    assert check(Client(), Authorization=_basic("ws1-user001", "wrong"), **nginx) == 401
    assert check(Client(), Authorization="Basic !!!not-base64", **nginx) == 401


def test_repeated_wrong_passwords_are_slowed_down_with_a_clear_message(personas, settings):
    settings.LOGIN_RATE_LIMIT = 3
    client = Client()
    for _ in range(3):
        response = client.post(reverse("login"), {"username": "ws1-user001", "password": "wrong"})
        assert response.status_code == 200 and "do not match" in response.content.decode()
    refused = client.post(reverse("login"), {"username": "ws1-user001", "password": "pw-participant"})
    assert refused.status_code == 429
    assert "Too many sign-in attempts" in refused.content.decode()
    assert int(refused["Retry-After"]) > 0
    assert "_auth_user_id" not in client.session  # even the right password waits out the window


def test_a_successful_sign_in_forgets_that_usernames_failures(personas, settings):
    settings.LOGIN_RATE_LIMIT = 3
    client = Client(REMOTE_ADDR="10.0.0.1")
    client.post(reverse("login"), {"username": "ws1-user001", "password": "wrong"})
    client.post(reverse("login"), {"username": "ws1-user001", "password": "wrong"})
    assert client.post(reverse("login"), {"username": "ws1-user001", "password": "pw-participant"}).status_code == 302
    # From another address, the username starts with a clean slate.
    other = Client(REMOTE_ADDR="10.0.0.2")
    other.post(reverse("login"), {"username": "ws1-user001", "password": "wrong"})
    assert other.post(reverse("login"), {"username": "ws1-user001", "password": "pw-participant"}).status_code == 302


def test_basic_auth_guessing_is_limited_too(personas, settings):
    settings.SEAT_HTTP_BASIC = True
    settings.LOGIN_RATE_LIMIT = 2
    nginx = {"X-Original-URI": "/user001/", "X-Comfyume-Workshop": "ws1"}
    for _ in range(2):
        assert check(Client(), Authorization=_basic("ws1-user001", "guess"), **nginx) == 401
    assert check(Client(), Authorization=_basic("ws1-user001", "pw-participant"), **nginx) == 401


def test_participant_lands_in_their_comfyui_once_it_runs(personas, signed_in, settings):
    client = signed_in(personas.seat_a.participant)
    # Not running yet (and no supervisor to start it): the seat page says what it waits for.
    page = client.get("/")
    assert page.status_code == 200 and 'data-phase="no_supervisor"' in page.content.decode()
    (frontend,) = frontends.ensure_frontends([personas.seat_a])
    frontend.state = frontend.State.RUNNING
    frontend.save()
    response = client.get("/", HTTP_HOST="127.0.0.1:8000")
    assert response.status_code == 302 and response["Location"] == f"http://127.0.0.1:{frontend.port}/"
    settings.SEAT_FRONTENDS = {**settings.SEAT_FRONTENDS, "ROUTING": "path"}
    assert client.get("/")["Location"] == "/user001/"


def test_ports_are_unique_per_seat(personas):
    rows = frontends.ensure_frontends(Seat.objects.select_related("workshop"))
    ports = [r.port for r in rows]
    assert len(set(ports)) == 3 and min(ports) >= 8101
    # Asking again changes nothing.
    assert [r.port for r in frontends.ensure_frontends(Seat.objects.select_related("workshop"))] == ports


def test_an_announcement_reaches_every_seat_socket_of_the_workshop(personas, django_capture_on_commit_callbacks):
    from jobs import events

    sent = []
    original = events.publish
    events.publish = lambda groups, message: sent.append((groups, message))  # type: ignore[assignment]
    try:
        with django_capture_on_commit_callbacks(execute=True):
            note = post_announcement(personas.workshop, "  Break until 14:00  ", by=personas.instructor)
    finally:
        events.publish = original
    assert Announcement.objects.get().message == "Break until 14:00"
    ((groups, message),) = sent
    assert sorted(groups) == sorted(
        [
            events.seat_group(personas.seat_a.pk),
            events.seat_group(personas.seat_b.pk),
            events.workshop_group(personas.workshop.pk),
        ]
    )
    assert message["message"]["type"] == "comfyume.announcement"
    assert message["message"]["data"]["id"] == note.pk


def test_seat_status_lists_announcements_and_the_queue_position(personas):
    post_announcement(personas.workshop, "Welcome!")
    post_announcement(personas.other_workshop, "Not for ws1")
    token = personas.seat_a.issue_token()
    status = Client().get("/api/hub/status", headers={"Authorization": f"Bearer {token}"}).json()
    assert [a["message"] for a in status["announcements"]] == ["Welcome!"]
    assert status["jobs"] == [] and status["paused"] is False
    assert status["backend"]["name"] == personas.backend.name


def test_the_banner_learns_how_much_of_the_budget_is_used(personas):
    Seat.objects.filter(pk=personas.seat_a.pk).update(gpu_seconds_used=540)
    token = personas.seat_a.issue_token()
    status = Client().get("/api/hub/status", headers={"Authorization": f"Bearer {token}"}).json()
    assert status["budget"] is None  # the workshop sets no budget
    personas.workshop.seat_gpu_budget_seconds = 600
    personas.workshop.save()
    status = Client().get("/api/hub/status", headers={"Authorization": f"Bearer {token}"}).json()
    assert status["budget"]["used"] == 0.9 and status["budget"]["exhausted"] is None


def test_the_seats_page_shows_who_is_near_their_limit(personas, signed_in):
    personas.workshop.seat_gpu_budget_seconds = 600
    personas.workshop.save()
    Seat.objects.filter(pk=personas.seat_a.pk).update(gpu_seconds_used=540)
    page = signed_in(personas.instructor).get("/admin/workshops/seat/").content.decode()
    assert '<strong style="color:#b91c1c">540 s of 600 s (90%)</strong>' in page
    assert "0 s of 600 s (0%)" in page


def test_unpausing_or_enabling_a_backend_in_the_admin_starts_waiting_jobs_at_once(
    personas, signed_in, django_capture_on_commit_callbacks
):
    from gpu_backends.models import GpuBackend
    from jobs.models import Job, JobEvent
    from jobs.services import submit_prompt
    from workshops.models import Workshop

    personas.backend.enabled = False
    personas.backend.save()
    job = submit_prompt(personas.seat_a, {"prompt": TINY_PROMPT})
    instructor = signed_in(personas.instructor)
    backend_form = {
        "name": personas.backend.name,
        "kind": personas.backend.kind,
        "url": personas.backend.url,
        "gpu_type": personas.backend.gpu_type,
        "price_per_hour": "0",
        "max_concurrency": 1,
        "order": 0,
        "enabled": "on",
        "api_key_env": "COMFYUME_VERDA_INFERENCE_KEY",
        "inference_mode": "auto",
        "warm_replicas": 1,
        "prewarm_minutes": 20,
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = instructor.post(f"/admin/gpu_backends/gpubackend/{personas.backend.pk}/change/", backend_form)
    assert response.status_code == 302, response.content.decode()[:500]
    # Claimed on commit of the change, not at the reconciler's next sweep.
    assert JobEvent.objects.filter(job=job, to_status=Job.Status.DISPATCHING).exists()
    # The same for a paused workshop that is resumed from its admin form.
    Workshop.objects.filter(pk=personas.workshop.pk).update(paused=True)
    second = submit_prompt(personas.seat_b, {"prompt": TINY_PROMPT})
    GpuBackend.objects.filter(pk=personas.backend.pk).update(max_concurrency=2)  # a free slot for it
    assert not JobEvent.objects.filter(job=second, to_status=Job.Status.DISPATCHING).exists()  # paused
    page = instructor.get(f"/admin/workshops/workshop/{personas.workshop.pk}/change/")
    form = page.context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and not isinstance(v, list)}
    data.update(
        {
            "paused": "",
            "backends": [personas.backend.pk],
            "seats-TOTAL_FORMS": "0",
            "seats-INITIAL_FORMS": "0",
            "seats-MIN_NUM_FORMS": "0",
            "seats-MAX_NUM_FORMS": "1000",
        }
    )
    data.pop("paused")
    with django_capture_on_commit_callbacks(execute=True):
        response = instructor.post(f"/admin/workshops/workshop/{personas.workshop.pk}/change/", data)
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else response
    assert JobEvent.objects.filter(job=second, to_status=Job.Status.DISPATCHING).exists()


TINY_PROMPT = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
}


def test_a_join_link_signs_its_participant_in_once(personas):
    """The link on the credential card: it signs the participant in and is spent; an expired, used, unknown or
    participant-less link signs no one in. (PostgreSQL once refused the link's locking read: every link was a
    500 there.)"""
    from datetime import timedelta

    from django.utils import timezone

    from workshops.models import JoinLink

    token = JoinLink.issue(personas.seat_a)
    client = Client()
    response = client.get(f"/join/{token}/")
    assert response.status_code == 302
    assert client.get("/api/hub/queue").status_code == 200  # signed in, as the seat's participant
    assert int(client.session["_auth_user_id"]) == personas.seat_a.participant.pk
    assert JoinLink.objects.get(seat=personas.seat_a).used_at is not None
    again = Client().get(f"/join/{token}/")
    assert again.status_code == 410 and "_auth_user_id" not in again.client.session
    assert Client().get("/join/not-a-link/").status_code == 404
    expired = JoinLink.issue(personas.seat_b, valid_for=timedelta(seconds=-1))
    assert Client().get(f"/join/{expired}/").status_code == 410
    personas.seat_b.participant = None
    personas.seat_b.save()
    orphan = JoinLink.issue(personas.seat_b)
    assert Client().get(f"/join/{orphan}/").status_code == 410
    assert timezone.now() > JoinLink.objects.get(seat=personas.seat_a).used_at
