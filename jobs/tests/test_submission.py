"""Submitting prompts: ComfyUI's answers, caps, and a bad-input corpus that leaves nothing half-created."""

from __future__ import annotations

import json
import threading
import time
from unittest import mock

import pytest
from django.db import connections

from jobs.models import Job, JobEvent
from jobs.services import SubmissionRejected, submit_prompt
from tests.recorded import TINY_PATH, load, recorded_invalid
from workshops.models import Seat

TINY = load(TINY_PATH)


@pytest.fixture
def post(client, personas, settings):
    # No backend slot: jobs stay queued, so these tests look at submission alone.
    personas.backend.enabled = False
    personas.backend.save()
    token = personas.seat_a.issue_token()

    def _post(raw: bytes | str, token: str = token):
        return client.post(
            "/api/hub/prompt", data=raw, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
        )

    return _post


def tiny(**changes):
    prompt = json.loads(json.dumps(TINY))
    for path, value in changes.items():
        node, name = path.split("__")
        prompt[node]["inputs"][name] = value
    return prompt


def body(prompt) -> str:
    return json.dumps({"prompt": prompt, "client_id": "c1"})


@pytest.mark.django_db
def test_valid_prompt_answers_like_comfyui(post):
    response = post(body(TINY))
    assert response.status_code == 200
    data = response.json()
    assert data["node_errors"] == {} and isinstance(data["number"], int)
    job = Job.objects.get(prompt_id=data["prompt_id"])
    assert job.status == Job.Status.QUEUED and job.outputs_to_execute == ["3"] and job.client_id == "c1"


@pytest.mark.django_db
def test_preflight_answers_exactly_as_the_recorded_comfyui(post):
    recorded = recorded_invalid()
    cases = {
        "missing_input": {k: v for k, v in TINY.items()}
        | {"3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "harness/tiny"}}},
        "bad_value": tiny(**{"1__width": 999999}),
        "bad_type": tiny(**{"1__width": "abc"}),
    }
    for name, prompt in cases.items():
        response = post(body(prompt))
        assert response.status_code == 400, name
        assert response.json() == recorded[name]["body"], name
    assert Job.objects.count() == 0


BAD_INPUT = [
    ("malformed json", b'{"prompt": {', 400, "invalid_json"),
    ("zero bytes", b"", 400, "invalid_json"),
    ("not a dict", b"[1, 2, 3]", 400, "invalid_prompt"),
    ("no prompt key", b'{"client_id": "x"}', 400, "no_prompt"),
    ("prompt not a dict", b'{"prompt": "draw a cat"}', 400, None),
    ("unknown node", body({"1": {"class_type": "NoSuchNode", "inputs": {}}}).encode(), 400, "invalid_prompt"),
    ("wrong type", body(tiny(**{"1__width": "wide"})).encode(), 400, "prompt_outputs_failed_validation"),
    ("huge number", body(tiny(**{"1__width": 10**30})).encode(), 400, "prompt_outputs_failed_validation"),
    ("link to a missing node", body(tiny(**{"3__images": ["9", 0]})).encode(), 400, "prompt_outputs_failed_validation"),
    ("unicode junk", body({"ü": {"class_type": "💥", "inputs": {"ß": "∞"}}}).encode(), 400, None),
    ("deep nesting", b'{"prompt": ' + b"[" * 100000 + b"]" * 100000 + b"}", 400, None),
    ("empty prompt", body({}).encode(), 400, "prompt_no_outputs"),
    ("invalid utf-8", b'{"prompt": "\xff\xfe"}', 400, "invalid_json"),
    ("lone surrogate in a value", body(tiny(**{"3__filename_prefix": "a\ud800b"})).encode(), 400, "invalid_json"),
    ("lone surrogate in a key", body({"\udfff": {"class_type": "SaveImage", "inputs": {}}}).encode(), 400, None),
    ("surrogate as raw bytes", b'{"prompt": {"1": "\xed\xa0\x80"}}', 400, "invalid_json"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "raw", "status", "error_type"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_gets_a_clear_4xx_and_creates_nothing(post, name, raw, status, error_type):
    response = post(raw)
    assert response.status_code == status
    data = response.json()
    assert isinstance(data["error"]["message"], str) and data["error"]["message"]
    if error_type:
        assert data["error"]["type"] == error_type
    assert Job.objects.count() == 0 and JobEvent.objects.count() == 0


@pytest.mark.django_db
def test_an_emoji_written_as_a_surrogate_pair_is_text(post):
    """JSON writes characters outside the BMP as an escaped surrogate pair: that is text, and queues."""
    raw = body(tiny(**{"3__filename_prefix": "cat 😺"}))
    assert "\\ud83d\\ude3a" in raw
    assert post(raw).status_code == 200
    assert Job.objects.get().prompt["3"]["inputs"]["filename_prefix"] == "cat 😺"


@pytest.mark.django_db
def test_oversized_prompt_is_refused_with_413(post, settings):
    settings.COMFYUME = {**settings.COMFYUME, "MAX_PROMPT_BYTES": 1000}
    response = post(body(tiny(**{"3__filename_prefix": "x" * 2000})))
    assert response.status_code == 413
    assert "limit is" in response.json()["error"]["message"]
    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_seat_cap_answers_429_in_words_a_participant_understands(post, personas):
    personas.workshop.max_queued_per_seat = 2
    personas.workshop.save()
    assert post(body(TINY)).status_code == 200
    assert post(body(TINY)).status_code == 200
    response = post(body(TINY))
    assert response.status_code == 429
    assert "You already have 2 jobs waiting" in response.json()["error"]["message"]
    assert Job.objects.count() == 2


@pytest.mark.django_db
def test_workshop_queue_depth_cap_answers_429(post, personas):
    personas.workshop.max_queue_depth = 1
    personas.workshop.save()
    assert post(body(TINY)).status_code == 200
    other_token = personas.seat_b.issue_token()
    response = post(body(TINY), token=other_token)
    assert response.status_code == 429 and "workshop queue is full" in response.json()["error"]["message"]


@pytest.mark.django_db
def test_identity_comes_from_the_token_never_from_the_body(client, personas, post):
    response = post(json.dumps({"prompt": TINY, "seat": "user002", "seat_id": personas.seat_b.pk}))
    assert Job.objects.get(prompt_id=response.json()["prompt_id"]).seat == personas.seat_a
    bad = client.post(
        "/api/hub/prompt", data=body(TINY), content_type="application/json", HTTP_AUTHORIZATION="Bearer nope"
    )
    assert bad.status_code == 401
    anonymous = client.post("/api/hub/prompt", data=body(TINY), content_type="application/json")
    assert anonymous.status_code == 401
    assert Job.objects.count() == 1


@pytest.mark.django_db
def test_session_submit_needs_csrf(personas):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(personas.seat_a.participant)
    response = browser.post("/api/hub/prompt", data=body(TINY), content_type="application/json")
    assert response.status_code == 403 and response.json()["error"]["type"] == "csrf_failed"
    browser.get("/")  # sets the CSRF cookie, as the seat page does
    token = browser.cookies["csrftoken"].value
    response = browser.post("/api/hub/prompt", data=body(TINY), content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200


@pytest.mark.django_db
def test_staff_without_a_seat_cannot_submit(client, personas):
    client.force_login(personas.instructor)
    response = client.get("/api/hub/jobs")
    assert response.status_code == 403


@pytest.mark.django_db
def test_archived_workshop_refuses_jobs(post, personas):
    from django.utils import timezone

    personas.workshop.archived_at = timezone.now()
    personas.workshop.save()
    assert post(body(TINY)).status_code == 403
    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_a_seat_over_its_gpu_time_budget_is_told_so_and_nothing_is_queued(post, personas):
    from workshops.models import Seat

    personas.workshop.seat_gpu_budget_seconds = 600
    personas.workshop.save()
    Seat.objects.filter(pk=personas.seat_a.pk).update(gpu_seconds_used=599)
    assert post(body(TINY)).status_code == 200  # under the limit: accepted (queued jobs still run)
    Seat.objects.filter(pk=personas.seat_a.pk).update(gpu_seconds_used=600)
    response = post(body(TINY))
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["type"] == "budget_exhausted"
    assert error["message"] == (
        "You have used your GPU time for this workshop (10 min 0 s of 10 min 0 s). Ask the instructor if you need more."
    )
    assert Job.objects.count() == 1


@pytest.mark.django_db
def test_a_money_budget_counts_each_jobs_gpu_time_at_its_backends_price(personas, sim):
    from decimal import Decimal

    from jobs.services import finish_job, submit_prompt
    from workshops.models import Seat

    personas.backend.price_per_hour = Decimal("3.60")  # 0.001 per second
    personas.backend.save()
    personas.workshop.seat_cost_budget = Decimal("0.50")
    personas.workshop.save()
    job = submit_prompt(personas.seat_a, {"prompt": TINY})
    job.backend = personas.backend
    job.save(update_fields=["backend"])
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
    job.refresh_from_db()
    assert finish_job(job, Job.Status.SUCCEEDED, gpu_seconds=500.0)
    seat = Seat.objects.select_related("workshop").get(pk=personas.seat_a.pk)
    assert seat.cost_used == Decimal("0.5000") and seat.gpu_seconds_used == 500.0
    assert seat.budget_used() == pytest.approx(1.0)
    assert "You have used your GPU budget for this workshop (0.50 of 0.50)" in seat.budget_exhausted()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("cap", ["seat", "workshop"])
def test_caps_hold_under_concurrent_submits(personas, cap):
    """Eight submits at once (one seat, or spread over two seats) against a cap of 3: exactly 3 queue.
    The submit's lock and its counts travel in one round trip; the counts still run after the lock is
    granted, so none of them misses a job a submit before it committed. Each submit holds its lock a while
    (a slow INSERT), so that the others are all waiting on it with their reads sent."""
    personas.backend.enabled = False  # nothing starts: every accepted job stays queued
    personas.backend.save()
    personas.workshop.max_queued_per_seat = 3 if cap == "seat" else 100
    personas.workshop.max_queue_depth = 3 if cap == "workshop" else 100
    personas.workshop.save()
    seats = [personas.seat_a] if cap == "seat" else [personas.seat_a, personas.seat_b]
    start = threading.Barrier(8)  # each holds a connection: fewer than the pool's (DATABASE_POOL_MAX_SIZE)
    answers: list[int] = []
    errors: list[BaseException] = []

    def submit(i: int) -> None:
        try:
            seat = Seat.objects.select_related("workshop").get(pk=seats[i % len(seats)].pk)
            start.wait(timeout=30)
            submit_prompt(seat, {"prompt": TINY})
            answers.append(200)
        except SubmissionRejected as exc:
            answers.append(exc.status)
        except BaseException as exc:  # reported below, not swallowed
            errors.append(exc)
        finally:
            connections.close_all()

    create = Job.objects.create

    def slow_create(**fields):
        time.sleep(0.2)
        return create(**fields)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
    with mock.patch.object(Job.objects, "create", side_effect=slow_create):
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors
    assert sorted(answers) == [200] * 3 + [429] * 5
    assert Job.objects.filter(status=Job.Status.QUEUED).count() == 3


@pytest.mark.django_db
def test_a_submit_for_a_seat_that_was_deleted_meanwhile_queues_nothing(personas):
    seat = Seat.objects.select_related("workshop").get(pk=personas.seat_a.pk)
    Seat.objects.filter(pk=seat.pk).delete()
    with pytest.raises(SubmissionRejected) as rejected:
        submit_prompt(seat, {"prompt": TINY})
    assert rejected.value.status == 403 and "no longer exists" in str(rejected.value)
    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_the_job_carries_the_seats_uploads_its_prompt_names_and_no_others(personas):
    from storage.models import SeatInput

    def upload(seat, name):
        SeatInput.objects.create(seat=seat, name=name, key=f"k/{seat.pk}/{name}", size=3, sha256="a" * 64,
                                 content_type="image/png")  # fmt: skip

    upload(personas.seat_a, "photo.png")
    upload(personas.seat_a, "unused.png")
    upload(personas.seat_b, "theirs.png")
    prompt = tiny(**{"3__filename_prefix": "photo.png [input]"}) | {
        "9": {"class_type": "LoadImage", "inputs": {"image": "theirs.png"}}
    }
    seat = Seat.objects.select_related("workshop").get(pk=personas.seat_a.pk)
    job = submit_prompt(seat, {"prompt": prompt})
    expected = {"name": "photo.png", "key": f"k/{seat.pk}/photo.png", "sha256": "a" * 64, "size": 3}
    assert Job.objects.get(pk=job.pk).inputs == [expected | {"content_type": "image/png"}]
