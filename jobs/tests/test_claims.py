"""Claims are atomic: under concurrent schedulers no job is dispatched twice, none is lost, and a backend
never gets more jobs than its slots."""

from __future__ import annotations

import threading
from unittest import mock

import pytest
from django.db import connections
from django.utils import timezone

from jobs import scheduler
from jobs.models import IllegalTransition, Job
from tests.recorded import TINY_PATH, load

TINY = load(TINY_PATH)


def _queue(personas, count: int) -> None:
    seats = [personas.seat_a, personas.seat_b]
    Job.objects.bulk_create(
        [
            Job(workshop=personas.workshop, seat=seats[i % 2], prompt=TINY, outputs_to_execute=["3"])
            for i in range(count)
        ]
    )


@pytest.mark.django_db(transaction=True)
def test_concurrent_schedulers_never_double_claim_or_overfill(personas):
    personas.backend.max_concurrency = 5
    personas.backend.save()
    personas.workshop.max_running_per_seat = 10
    personas.workshop.save()
    _queue(personas, 30)
    claimed: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def scheduler_thread() -> None:
        try:
            start.wait()
            claimed.extend(scheduler.schedule())
        except BaseException as exc:  # reported below, not swallowed
            errors.append(exc)
        finally:
            connections.close_all()

    with mock.patch("jobs.scheduler.enqueue_dispatch"), mock.patch("jobs.services.announce_job"):
        threads = [threading.Thread(target=scheduler_thread) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors
    assert len(claimed) == len(set(claimed)) == 5
    assert Job.objects.filter(status=Job.Status.DISPATCHING, backend=personas.backend).count() == 5
    assert Job.objects.filter(status=Job.Status.QUEUED).count() == 25
    assert Job.objects.filter(status=Job.Status.DISPATCHING, attempts=1).count() == 5


@pytest.mark.django_db
def test_a_job_cannot_skip_or_reverse_its_state_machine(personas):
    _queue(personas, 1)
    job = Job.objects.get()
    with pytest.raises(IllegalTransition, match="queued → succeeded"):
        job.transition(Job.Status.SUCCEEDED)
    assert job.transition(Job.Status.CANCELLED)
    with pytest.raises(IllegalTransition):
        job.transition(Job.Status.QUEUED)
    assert Job.objects.get().status == Job.Status.CANCELLED


@pytest.mark.django_db
def test_a_stale_instance_loses_the_race_instead_of_overwriting(personas):
    _queue(personas, 1)
    first, second = Job.objects.get(), Job.objects.get()
    assert first.transition(Job.Status.CANCELLED)
    assert not second.transition(Job.Status.DISPATCHING)  # it still believes the job is queued
    assert Job.objects.get().status == Job.Status.CANCELLED
    assert [e.to_status for e in Job.objects.get().events.all()] == ["cancelled"]


@pytest.mark.django_db
def test_paused_workshop_accepts_but_starts_nothing(personas):
    personas.workshop.paused = True
    personas.workshop.save()
    _queue(personas, 3)
    with mock.patch("jobs.scheduler.enqueue_dispatch"), mock.patch("jobs.services.announce_job"):
        assert scheduler.schedule() == []
        personas.workshop.paused = False
        personas.workshop.save()
        assert len(scheduler.schedule()) == 1  # one slot on the test backend


@pytest.mark.django_db(transaction=True)
def test_a_leftover_dispatch_task_does_not_run_a_newer_claim(personas, sim):
    from jobs.dispatch import dispatch_job

    _queue(personas, 1)
    with mock.patch("jobs.scheduler.enqueue_dispatch"), mock.patch("jobs.services.announce_job"):
        scheduler.schedule()
    job = Job.objects.get()
    assert job.attempts == 1
    # As if the reconciler had requeued it and it was claimed again: attempt 2 is the live claim.
    Job.objects.filter(pk=job.pk).update(attempts=2)
    assert dispatch_job(job.pk, 1) == "superseded"
    assert dispatch_job(job.pk, 2) == "succeeded"
    # A duplicate task for the same claim finds it taken and does nothing.
    Job.objects.filter(pk=job.pk).update(status=Job.Status.DISPATCHING, heartbeat_at=timezone.now())
    assert dispatch_job(job.pk, 2) == "taken by another worker"


@pytest.mark.django_db
def test_workshops_sharing_a_backend_take_turns(personas):
    personas.backend.max_concurrency = 4
    personas.backend.save()
    for workshop in (personas.workshop, personas.other_workshop):
        workshop.max_running_per_seat = 10
        workshop.save()
    _queue(personas, 10)  # a backlog in the first workshop
    Job.objects.bulk_create(
        [Job(workshop=personas.other_workshop, seat=personas.seat_c, prompt=TINY) for _ in range(3)]
    )
    with mock.patch("jobs.scheduler.enqueue_dispatch"), mock.patch("jobs.services.announce_job"):
        scheduler.schedule()
    running = Job.objects.filter(status=Job.Status.DISPATCHING)
    assert running.filter(workshop=personas.workshop).count() == 2
    assert running.filter(workshop=personas.other_workshop).count() == 2
