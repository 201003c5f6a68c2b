"""Sizing and cost before the day: the arithmetic, its bad inputs, the admin page, and the estimate checked
against a simulated day's recorded GPU seconds."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client

from jobs.models import Job
from jobs.tests.test_pipeline import submit
from tests.fixtures import run_worker
from workshops.estimate import EstimateError, Inputs, estimate, inputs_for, measured_job_seconds
from workshops.services import add_seats


def inputs(**changes) -> Inputs:
    base = {
        "participants": 30, "jobs_per_hour": 6.0, "job_seconds": 20.0, "session_hours": 8.0,
        "prewarm_minutes": 20.0, "price_per_hour": Decimal("3.50"),
    }  # fmt: skip
    return Inputs(**{**base, **changes})


def test_thirty_participants_a_job_every_ten_minutes_need_two_replicas():
    result = estimate(inputs())
    assert result.gpu_seconds_per_hour == 3600.0  # 30 × 6 × 20
    assert (result.replicas, result.max_concurrency) == (2, 2)  # one would be 100 % busy; two are half busy
    assert result.utilisation == pytest.approx(0.5)
    assert result.burst_minutes == pytest.approx(5.0)  # 30 jobs on 2 slots, 20 s each
    assert result.billed_replica_hours == pytest.approx(2 * (8 + 20 / 60))
    assert result.cost == Decimal("58.33") and result.busy_cost == Decimal("28.00")
    assert result.suggested_cap == Decimal("70.00")
    # Two jobs per replica halve the replicas, not the GPU time.
    doubled = estimate(inputs(jobs_per_replica=2))
    assert (doubled.replicas, doubled.max_concurrency, doubled.busy_gpu_hours) == (1, 2, result.busy_gpu_hours)


def test_a_small_class_still_gets_one_replica_and_a_video_class_more():
    assert estimate(inputs(participants=1, jobs_per_hour=0.5)).replicas == 1
    assert estimate(inputs(job_seconds=90.0)).replicas == 7  # 16200 GPU s an hour / (3600 × 0.7)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"participants": 0}, "Participants must be at least 1"),
        ({"jobs_per_hour": 0}, "Jobs per participant per hour must be more than 0"),
        ({"job_seconds": -1}, "GPU seconds per job must be more than 0"),
        ({"session_hours": 0}, "The session must last more than 0"),
        ({"prewarm_minutes": -5}, "The pre-warm must be 0 to 1440 minutes"),
        ({"price_per_hour": Decimal("-1")}, "The price per hour cannot be negative"),
        ({"jobs_per_replica": 0}, "Jobs per replica must be at least 1"),
    ],
)
def test_bad_inputs_are_refused_by_name(changes, message):
    with pytest.raises(EstimateError, match=message):
        estimate(inputs(**changes))


@pytest.mark.django_db
def test_the_admin_page_starts_from_the_workshop_and_refuses_bad_figures(personas):
    instructor = Client()
    instructor.force_login(personas.instructor)
    personas.backend.price_per_hour = Decimal("4.00")
    personas.backend.save()
    url = f"/admin/workshops/workshop/{personas.workshop.pk}/estimate/"
    assert url in instructor.get(f"/admin/workshops/workshop/{personas.workshop.pk}/change/").content.decode()
    page = " ".join(instructor.get(url).content.decode().split())
    assert "a guess: nothing has run yet" in page and "<strong>1</strong>, each busy" in page
    assert "backend sim" in page and 'value="4.00"' in page
    changed = " ".join(instructor.get(url, {
        "participants": "30", "jobs_per_hour": "6", "job_seconds": "20", "session_hours": "8",
        "prewarm_minutes": "20", "price_per_hour": "3.50", "jobs_per_replica": "1",
    }).content.decode().split())  # fmt: skip
    assert (
        "<strong>58.33</strong> for 16.7 replica-hours" in changed
        and "<strong>2</strong>, each busy 50 % of the time" in changed
    )
    bad = instructor.get(url, {"participants": "0", "jobs_per_hour": "x"}).content.decode()
    assert "Ensure this value is greater than or equal to 1." in bad and "Enter a number." in bad
    assert 'id="estimate"' not in bad


@pytest.mark.django_db(transaction=True)
def test_the_estimate_matches_a_simulated_days_recorded_gpu_seconds(client, personas, sim):
    """Four participants run three jobs each on the simulator (0.2 s a node, so each job has GPU seconds to
    count): the estimate made from the measured median, for that hour, is within 20 % of the GPU seconds the
    jobs recorded, and its cost within 20 % of what the seats were charged."""
    sim.config.node_delay = 0.2
    personas.backend.price_per_hour = Decimal("36.00")  # a cent a second
    personas.backend.max_concurrency = 4
    personas.backend.save()
    seats = [personas.seat_a, personas.seat_b]
    add_seats(personas.workshop, 2)
    seats += list(personas.workshop.seats.filter(label__in=["user003", "user004"]))
    assert measured_job_seconds(personas.workshop) is None
    for _ in range(3):
        for seat in seats:
            assert submit(client, seat).status_code == 200
        run_worker()
    jobs = Job.objects.filter(workshop=personas.workshop, status=Job.Status.SUCCEEDED)
    assert jobs.count() == 12
    recorded = sum(jobs.values_list("gpu_seconds", flat=True))
    charged = sum(personas.workshop.seats.values_list("cost_used", flat=True))
    defaults, sources = inputs_for(personas.workshop)
    assert sources["job_seconds"] == "the median of 12 ws1's jobs" and defaults.participants == 4
    day = estimate(Inputs(**{**defaults.__dict__, "jobs_per_hour": 3, "session_hours": 1.0, "prewarm_minutes": 0}))
    assert day.busy_gpu_hours * 3600 == pytest.approx(recorded, rel=0.2)
    assert float(day.busy_cost) == pytest.approx(float(charged), rel=0.2)
