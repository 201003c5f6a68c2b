"""The live dashboard's charts of the last hour: jobs ended per 5 minutes by outcome, and the wait and run
time percentiles of those jobs; one query however many jobs, served to staff only."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from jobs.models import Job
from workshops.instructor.dashboard import build_charts, percentile
from workshops.tests.test_dashboard import TINY

NOW = datetime.fromisoformat("2026-05-20T14:37:30+00:00")


def charts_url(slug: str = "ws1") -> str:
    return reverse("dashboard:charts", args=[slug])


def ended(seat, status: str, *, ended_ago: float, waited: float | None = 0.0, ran: float = 0.0) -> Job:
    """A job that ended ``ended_ago`` minutes before NOW, after waiting and running that many seconds
    (``waited=None``: it never reached a GPU)."""
    finished = NOW - timedelta(minutes=ended_ago)
    started = None if waited is None else finished - timedelta(seconds=ran)
    created = (started or finished) - timedelta(seconds=waited or 0)
    return Job.objects.create(
        workshop=seat.workshop,
        seat=seat,
        prompt=TINY,
        status=status,
        created_at=created,
        started_at=started,
        finished_at=finished,
    )


def test_buckets_count_each_outcome_and_give_wait_and_run_percentiles(personas):
    a, b = personas.seat_a, personas.seat_b
    # The current bucket is 14:35–14:40; these end at 14:36, 14:35:30 and 14:35:00.
    ended(a, Job.Status.SUCCEEDED, ended_ago=1.5, waited=10, ran=30)
    ended(b, Job.Status.SUCCEEDED, ended_ago=2, waited=20, ran=50)
    ended(a, Job.Status.TIMED_OUT, ended_ago=2.5, waited=30, ran=600)
    ended(b, Job.Status.CANCELLED, ended_ago=2.5, waited=None)  # left the queue: no wait or run to measure
    # 14:20–14:25
    ended(a, Job.Status.INTERRUPTED, ended_ago=15, waited=5, ran=5)
    # Too old, another workshop's, and a job still running: none of them counts.
    ended(a, Job.Status.SUCCEEDED, ended_ago=61)
    ended(personas.seat_c, Job.Status.SUCCEEDED, ended_ago=1)
    Job.objects.create(workshop=personas.workshop, seat=a, prompt=TINY, status=Job.Status.RUNNING, started_at=NOW)

    charts = build_charts(personas.workshop, now=NOW)

    assert (charts["start"], charts["end"]) == ("2026-05-20T13:40:00+00:00", "2026-05-20T14:40:00+00:00")
    assert charts["bucket_minutes"] == 5 and charts["finished"] == 5
    assert [o["key"] for o in charts["outcomes"]] == ["succeeded", "failed", "cancelled"]
    buckets = charts["buckets"]
    assert len(buckets) == 12 and buckets[0]["start"] == "2026-05-20T13:40:00+00:00"
    last = buckets[-1]
    assert last["start"] == "2026-05-20T14:35:00+00:00"
    assert last["finished"] == {"succeeded": 2, "failed": 1, "cancelled": 1}
    assert last["wait"] == {"p50": 20.0, "p90": 28.0, "jobs": 3}
    assert last["run"] == {"p50": 50.0, "p90": 490.0, "jobs": 3}
    assert buckets[8]["finished"] == {"succeeded": 0, "failed": 0, "cancelled": 1}  # 14:20–14:25
    assert buckets[8]["run"] == {"p50": 5.0, "p90": 5.0, "jobs": 1}
    quiet = buckets[0]
    assert quiet["finished"] == {"succeeded": 0, "failed": 0, "cancelled": 0}
    assert quiet["wait"] == {"p50": None, "p90": None, "jobs": 0}


def test_an_hour_without_ended_jobs_has_empty_buckets(personas):
    charts = build_charts(personas.workshop, now=NOW)

    assert charts["finished"] == 0
    assert all(sum(b["finished"].values()) == 0 and b["run"]["p50"] is None for b in charts["buckets"])


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 0.5, None), ([7.0], 0.9, 7.0), ([1, 2, 3, 4], 0.5, 2.5), ([4, 1, 3, 2], 0.9, 3.7), ([10, 20], 0.0, 10)],
)
def test_percentiles_interpolate_between_ranks_like_postgresqls_percentile_cont(values, q, expected):
    assert percentile(values, q) == expected


def test_the_charts_cost_one_query_for_a_few_jobs_or_many(personas):
    ended(personas.seat_a, Job.Status.SUCCEEDED, ended_ago=3, waited=1, ran=1)
    with CaptureQueriesContext(connection) as few:
        build_charts(personas.workshop, now=NOW)
    for i in range(60):
        ended(personas.seat_b, Job.Status.FAILED, ended_ago=i % 55, waited=i, ran=i)
    with CaptureQueriesContext(connection) as many:
        charts = build_charts(personas.workshop, now=NOW)

    assert charts["finished"] == 61
    assert len(few.captured_queries) == len(many.captured_queries) == 1


def test_staff_get_the_charts_as_json_and_participants_are_sent_to_the_login(client, personas):
    client.force_login(personas.seat_a.participant)
    refused = client.get(charts_url())
    client.force_login(personas.instructor)
    response = client.get(charts_url())

    assert refused.status_code == 302 and refused["Location"].startswith(reverse("admin:login"))
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    assert response.json()["finished"] == 0 and len(response.json()["buckets"]) == 12
    assert Client().get(charts_url("nope")).status_code == 302
    assert client.get(charts_url("nope")).status_code == 404
    assert client.post(charts_url()).status_code == 405
