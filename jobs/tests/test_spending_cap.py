"""A workshop's spending cap: once its jobs' GPU cost reaches it, no waiting job starts (they stay queued,
running ones finish), the participants' banner and the dashboard say why, and raising the cap lets the queue go
on at once. Real pipeline: the simulator on a real port, RQ workers in the test."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client

from jobs.models import Job
from jobs.scheduler import schedule
from jobs.tests.test_pipeline import submit
from tests.fixtures import run_worker
from workshops.instructor.dashboard import build_snapshot
from workshops.models import Seat, Workshop

pytestmark = pytest.mark.django_db(transaction=True)


def status(client, seat) -> dict:
    return client.get("/api/hub/status", HTTP_AUTHORIZATION=f"Bearer {seat._raw_token}").json()


def test_the_cap_holds_the_queue_until_it_is_raised(client, personas):
    # 999,999.99 an hour: the simulator's few hundredths of a second cost several units, well over the cap of 1.
    personas.backend.price_per_hour = Decimal("999999.99")
    personas.backend.save()
    Workshop.objects.filter(pk=personas.workshop.pk).update(spending_cap=Decimal("1.00"))
    first = Job.objects.get(prompt_id=submit(client, personas.seat_a).json()["prompt_id"])
    run_worker()
    first.refresh_from_db()
    assert first.status == Job.Status.SUCCEEDED and first.gpu_seconds > 0
    workshop = Workshop.objects.get(pk=personas.workshop.pk)
    seats_cost = sum(Seat.objects.filter(workshop=workshop).values_list("cost_used", flat=True))
    assert workshop.cost_used == seats_cost > Decimal("1.00") and workshop.spending_capped

    # Over the cap: a new job is accepted and waits; nothing claims it.
    second = Job.objects.get(prompt_id=submit(client, personas.seat_b).json()["prompt_id"])
    assert schedule() == []
    second.refresh_from_db()
    assert second.status == Job.Status.QUEUED
    assert status(client, personas.seat_b)["spending_capped"] is True
    spending = build_snapshot(workshop)["workshop"]["spending"]
    assert spending["capped"] is True and spending["cap"] == 1.0 and spending["used"] > 1

    # The other workshop, on the same backend, is not held by this one's cap.
    other = Job.objects.get(prompt_id=submit(client, personas.seat_c).json()["prompt_id"])
    other.refresh_from_db()
    assert other.status == Job.Status.DISPATCHING

    # Raising the cap in the admin lets the waiting job start at once (the save schedules).
    instructor = Client()
    instructor.force_login(personas.instructor)
    run_worker()  # the other workshop's job, so the backend's one slot is free
    form = instructor.get(f"/admin/workshops/workshop/{workshop.pk}/change/").context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and not isinstance(v, list)}
    data.update({
        "spending_cap": "1000000", "backends": [personas.backend.pk], "templates": [],
        "seats-TOTAL_FORMS": "0", "seats-INITIAL_FORMS": "0",
    })  # fmt: skip
    response = instructor.post(f"/admin/workshops/workshop/{workshop.pk}/change/", data)
    assert response.status_code == 302, response.content[:2000]
    second.refresh_from_db()
    assert second.status == Job.Status.DISPATCHING
    assert status(client, personas.seat_b)["spending_capped"] is False
