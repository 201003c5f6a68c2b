"""A claim whose dispatch task never reached a worker (Redis refused it, or lost it in a restart) is sent again
by the reconciler with its attempt unchanged, and runs once."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
import redis
from django.utils import timezone

from jobs import reconciler
from jobs.models import Job
from jobs.tests.test_pipeline import submit
from tests.fixtures import run_worker

pytestmark = pytest.mark.django_db(transaction=True)


def _claimed_while_redis_refused(client, personas) -> Job:
    with mock.patch("jobs.scheduler.send_dispatch", autospec=True, side_effect=redis.ConnectionError("refused")):
        response = submit(client, personas.seat_a)
    assert response.status_code == 200, response.content
    job = Job.objects.get(prompt_id=response.json()["prompt_id"])
    assert job.status == Job.Status.DISPATCHING
    Job.objects.filter(pk=job.pk).update(dispatched_at=timezone.now() - timedelta(seconds=5))
    return job


def test_a_claim_whose_enqueue_failed_is_enqueued_again_and_runs_once(client, personas, sim):
    job = _claimed_while_redis_refused(client, personas)
    run_worker()  # nothing to run: the task never reached Redis
    assert Job.objects.get(pk=job.pk).status == Job.Status.DISPATCHING
    report = reconciler.sweep(check_backends=False)
    assert report.redelivered == [job.pk]
    assert reconciler.sweep(check_backends=False).redelivered == []  # its task waits in Redis now: not sent twice
    run_worker()
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 1)
    assert list(job.events.values_list("to_status", flat=True)) == ["dispatching", "running", "succeeded"]


def test_a_claim_no_worker_took_goes_back_without_spending_an_attempt(client, personas, sim, settings):
    job = _claimed_while_redis_refused(client, personas)
    stale = timezone.now() - timedelta(seconds=settings.COMFYUME["HEARTBEAT_TIMEOUT"] + 5)
    Job.objects.filter(pk=job.pk).update(dispatched_at=stale)
    with mock.patch("jobs.reconciler.send_dispatch", autospec=True, side_effect=redis.TimeoutError("paused")):
        reconciler.sweep(check_backends=False)  # Redis still away: the claim cannot be sent again
    job.refresh_from_db()
    requeued = job.events.get(from_status="dispatching", to_status="queued")
    assert "attempt not counted" in requeued.reason and "stopped responding" not in requeued.reason
    run_worker()
    job.refresh_from_db()
    assert (job.status, job.attempts) == (Job.Status.SUCCEEDED, 1)
