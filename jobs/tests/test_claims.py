"""Claims are atomic: under concurrent schedulers no job is dispatched twice, none is lost, and a backend
never gets more jobs than its slots. A job pinned to a backend goes to that backend only, and waits (then
fails at the deadline) while that one is down."""

from __future__ import annotations

import threading
from datetime import timedelta
from unittest import mock

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from gpu_backends.models import GpuBackend
from jobs import reconciler, scheduler
from jobs import sql as jobs_sql
from jobs.models import IllegalTransition, Job
from jobs.services import backend_is_available
from tests.recorded import TINY_PATH, load
from workshops.models import Seat

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

    with mock.patch("jobs.scheduler.enqueue_dispatch"), mock.patch("jobs.events.announce_job"):
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
    with mock.patch("jobs.scheduler.enqueue_dispatch"), mock.patch("jobs.events.announce_job"):
        assert scheduler.schedule() == []
        personas.workshop.paused = False
        personas.workshop.save()
        assert len(scheduler.schedule()) == 1  # one slot on the test backend


@pytest.mark.django_db(transaction=True)
def test_a_leftover_dispatch_task_does_not_run_a_newer_claim(personas, sim):
    from jobs.dispatch import dispatch_job

    _queue(personas, 1)
    with mock.patch("jobs.scheduler.enqueue_dispatch"), mock.patch("jobs.events.announce_job"):
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
    with mock.patch("jobs.scheduler.enqueue_dispatch"), mock.patch("jobs.events.announce_job"):
        scheduler.schedule()
    running = Job.objects.filter(status=Job.Status.DISPATCHING)
    assert running.filter(workshop=personas.workshop).count() == 2
    assert running.filter(workshop=personas.other_workshop).count() == 2


# --- Jobs pinned to a backend ---------------------------------------------------------------------


def _job(personas, seat=None, **fields) -> Job:
    return Job.objects.create(workshop=personas.workshop, seat=seat or personas.seat_a, prompt=TINY, **fields)


@pytest.mark.django_db
def test_a_pinned_job_is_claimed_only_by_its_backend(personas, second_backend):
    pinned = _job(personas, pinned_backend=second_backend)
    with mock.patch("jobs.scheduler.enqueue_dispatch"), mock.patch("jobs.events.announce_job"):
        assert scheduler.claim_next(personas.backend.pk) is None  # free, first in order, but not its backend
        job = scheduler.claim_next(second_backend.pk)
    assert job is not None and job.pk == pinned.pk
    job.refresh_from_db()
    assert (job.status, job.backend, job.pinned_backend) == (Job.Status.DISPATCHING, second_backend, second_backend)


@pytest.mark.django_db
def test_a_seats_job_pinned_elsewhere_does_not_hold_up_its_other_jobs(personas, second_backend):
    """Seat A's oldest job waits for sim-2; its next one, unpinned, goes to the free backend first in order."""
    personas.workshop.queue_policy = "fifo"
    personas.workshop.save()
    waits_for_sim2 = _job(personas, pinned_backend=second_backend)
    unpinned = _job(personas)
    GpuBackend.objects.filter(pk=second_backend.pk).update(enabled=False)
    with mock.patch("jobs.scheduler.enqueue_dispatch"), mock.patch("jobs.events.announce_job"):
        assert scheduler.schedule() == [unpinned.pk]
    assert Job.objects.get(pk=unpinned.pk).backend == personas.backend
    assert Job.objects.get(pk=waits_for_sim2.pk).status == Job.Status.QUEUED


@pytest.mark.django_db
@pytest.mark.parametrize("policy", ["fifo", "round_robin", "priority"])
def test_a_backend_takes_the_seats_best_job_among_its_pinned_and_unpinned_ones(personas, second_backend, policy):
    personas.workshop.queue_policy = policy
    personas.workshop.save()
    _job(personas, pinned_backend=personas.backend)  # another backend's: never this one's candidate
    older = _job(personas)
    lane = _job(personas, pinned_backend=second_backend, instructor_lane=True)
    (candidate,) = scheduler.candidates(personas.workshop, second_backend.pk)
    # The lane counts only under the priority policy; otherwise the older unpinned job goes first.
    assert candidate.job_id == (lane.pk if policy == "priority" else older.pk)
    assert candidate.instructor_lane == (policy == "priority")


@pytest.mark.django_db
@pytest.mark.parametrize("policy", ["fifo", "round_robin", "priority"])
def test_a_claim_reads_each_seats_heads_through_the_pin_indexes_without_sorting(personas, second_backend, policy):
    """The claim's cost stays one index seek per seat and head, whatever the queue's length: the plan reads the
    head-of-queue indexes in their order (a sort would mean reading the seat's whole queue). Planned over a
    workshop's worth of jobs with fresh statistics, as a database in use has them."""
    seats = Seat.objects.bulk_create([Seat(workshop=personas.workshop, label=f"bulk{i:03d}") for i in range(40)])
    statuses = [Job.Status.SUCCEEDED] * 16 + [Job.Status.QUEUED] * 3 + [Job.Status.RUNNING]
    Job.objects.bulk_create(
        [
            Job(
                workshop=personas.workshop,
                seat=seats[i % len(seats)],
                prompt=TINY,
                status=statuses[i % len(statuses)],
                pinned_backend=(second_backend, personas.backend, None, None, None)[i % 5],
            )
            for i in range(4000)
        ]
    )
    sql = jobs_sql.candidates_sql(policy)
    params = ["queued", "queued", second_backend.pk, personas.workshop.pk]
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Job._meta.db_table}")
        if connection.vendor == "postgresql":
            cursor.execute("EXPLAIN " + sql, params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "Sort" not in plan, plan
        else:
            cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
            plan = "\n".join(row[-1] for row in cursor.fetchall())
            assert "TEMP B-TREE" not in plan, plan
    index = "job_seat_pin_priority_head" if policy == "priority" else "job_seat_pin_head"
    assert plan.count(index) >= 2, plan  # the unpinned head and the pinned one


@pytest.mark.django_db
def test_a_claim_costs_the_same_queries_for_a_short_queue_and_a_long_one(personas, second_backend):
    personas.workshop.max_running_per_seat = 100
    personas.workshop.save()
    GpuBackend.objects.filter(pk=personas.backend.pk).update(max_concurrency=100)

    def claim_queries(count: int) -> int:
        Job.objects.all().delete()
        for i in range(count):
            seat = personas.seat_a if i % 2 else personas.seat_b
            _job(personas, seat, pinned_backend=second_backend if i % 3 == 0 else None)
        with (
            mock.patch("jobs.scheduler.enqueue_dispatch"),
            mock.patch("jobs.events.announce_job"),
            CaptureQueriesContext(connection) as queries,
        ):
            assert scheduler.claim_next(personas.backend.pk) is not None
        return len(queries.captured_queries)

    assert claim_queries(3) == claim_queries(60)


@pytest.mark.django_db
def test_a_job_pinned_to_a_backend_that_is_down_waits_then_fails_at_the_deadline(personas, second_backend, settings):
    """Judged by its own backend: sim-2 switched off fails its pinned job at the deadline while the workshop's
    other backend works; the unpinned job of the same age keeps waiting for a slot on that one."""
    old = timezone.now() - timedelta(seconds=settings.COMFYUME["BACKEND_DOWN_DEADLINE"] + 60)
    GpuBackend.objects.filter(pk=personas.backend.pk).update(max_concurrency=1)
    _job(personas, personas.seat_b, status=Job.Status.RUNNING, backend=personas.backend)  # the slot is taken
    pinned_to_off = _job(personas, pinned_backend=second_backend, created_at=old)
    unpinned = _job(personas, created_at=old)
    pinned_to_working = _job(personas, pinned_backend=personas.backend, created_at=old)
    recent = _job(personas, pinned_backend=second_backend)
    GpuBackend.objects.filter(pk=second_backend.pk).update(enabled=False)
    assert backend_is_available(personas.workshop)
    assert not backend_is_available(personas.workshop, second_backend.pk)
    assert backend_is_available(personas.workshop, personas.backend.pk)

    report = reconciler.SweepReport()
    with mock.patch("jobs.events.announce_job"), mock.patch("jobs.scheduler.enqueue_dispatch"):
        reconciler.sweep_deadline(report)

    assert report.failed == [pinned_to_off.pk]
    failed = Job.objects.get(pk=pinned_to_off.pk)
    assert failed.status == Job.Status.FAILED
    assert failed.status_reason.startswith("Its GPU backend sim-2 was not available for")
    for job in (unpinned, pinned_to_working, recent):
        assert Job.objects.get(pk=job.pk).status == Job.Status.QUEUED


@pytest.mark.django_db
def test_a_job_pinned_to_a_backend_the_workshop_no_longer_uses_is_judged_unavailable(personas, second_backend):
    personas.workshop.backends.remove(second_backend)
    assert not backend_is_available(personas.workshop, second_backend.pk)
    GpuBackend.objects.filter(pk=personas.backend.pk).update(state=GpuBackend.State.FAILING)
    assert not backend_is_available(personas.workshop)


def test_a_warm_backend_takes_the_job_before_a_cold_one_earlier_in_the_order(personas, sim):
    from jobs.services import submit_prompt
    from workshops.models import Workshop

    cold = personas.backend
    cold.state, cold.order = GpuBackend.State.COLD, 0
    cold.save()
    warm = GpuBackend.objects.create(
        name="warm", kind=GpuBackend.Kind.SIMULATOR, url=sim.url, order=1, state=GpuBackend.State.READY
    )
    personas.workshop.backends.add(warm)
    Workshop.objects.filter(pk=personas.workshop.pk).update(paused=True)
    job = submit_prompt(personas.seat_a, {"prompt": TINY})
    Workshop.objects.filter(pk=personas.workshop.pk).update(paused=False)
    assert scheduler.schedule() == [job.pk]
    job.refresh_from_db()
    assert job.backend == warm


@pytest.mark.django_db
def test_after_a_submit_the_scheduler_stops_once_that_job_is_claimed(personas):
    """A submit needs one claim, not a second one to find nothing else claimable; a job whose own trigger was
    lost (queued straight into the table here) is still started by the next submit's claim on the way."""
    personas.backend.max_concurrency = 5
    personas.backend.save()
    personas.workshop.max_running_per_seat = 5
    personas.workshop.save()
    lost = Job.objects.create(workshop=personas.workshop, seat=personas.seat_a, prompt=TINY)
    submitted = Job.objects.create(workshop=personas.workshop, seat=personas.seat_b, prompt=TINY)
    with (
        mock.patch("jobs.scheduler.enqueue_dispatch"),
        mock.patch("jobs.events.announce_job"),
        mock.patch("jobs.scheduler.claim_next", wraps=scheduler.claim_next) as claim,
    ):
        assert scheduler.schedule(until=submitted.pk) == [lost.pk, submitted.pk]
        assert claim.call_count == 2  # free slots remain, but no third claim looked for another job
        later = Job.objects.create(workshop=personas.workshop, seat=personas.seat_a, prompt=TINY)
        claim.reset_mock()
        assert scheduler.schedule() == [later.pk]  # without `until`: fill slots until nothing is claimable
        assert claim.call_count == 2


@pytest.mark.django_db
def test_with_nothing_queued_the_scheduler_reads_once_and_locks_nothing(personas):
    """After a job ends in a class that keeps up, nothing waits: one indexed read answers that, without a
    claim's transaction (which locks a backend row, and on SQLite the whole database for writing)."""
    Job.objects.create(workshop=personas.workshop, seat=personas.seat_a, prompt=TINY, status=Job.Status.SUCCEEDED)
    with (
        mock.patch("jobs.scheduler.claim_next", wraps=scheduler.claim_next) as claim,
        CaptureQueriesContext(connection) as queries,
    ):
        assert scheduler.schedule() == []
    assert claim.call_count == 0
    assert len(queries.captured_queries) == 1
    waiting = Job.objects.create(workshop=personas.workshop, seat=personas.seat_b, prompt=TINY)
    with mock.patch("jobs.scheduler.enqueue_dispatch"), mock.patch("jobs.events.announce_job"):
        assert scheduler.schedule() == [waiting.pk]  # and a waiting job is still found


@pytest.mark.django_db
def test_a_claim_moves_only_a_job_still_waiting_for_this_backend(personas, second_backend):
    """The claim's conditional UPDATE is the check: a job pinned to another backend a moment before (the
    instructor's move) or no longer waiting is left alone, with no JobEvent."""
    job = _job(personas, pinned_backend=second_backend)
    assert Job.claim(job.pk, personas.backend.pk) is None
    claimed = Job.claim(job.pk, second_backend.pk, defer=("prompt", "extra_data", "inputs"))
    assert claimed is not None and claimed.pk == job.pk
    assert (claimed.status, claimed.backend_id, claimed.attempts) == (Job.Status.DISPATCHING, second_backend.pk, 1)
    assert claimed.dispatched_at is not None and claimed.get_deferred_fields() == {"prompt", "extra_data", "inputs"}
    assert Job.claim(job.pk, second_backend.pk) is None  # already on its way
    assert [(e.from_status, e.to_status) for e in job.events.all()] == [("queued", "dispatching")]
    assert Job.objects.get(pk=job.pk).attempts == 1


@pytest.mark.django_db
def test_a_transition_is_one_statement_on_postgresql(personas):
    """The status change and its JobEvent: one statement on PostgreSQL (no BEGIN/COMMIT around it), a
    transaction of two elsewhere; both or neither are written."""
    job = _job(personas)
    with CaptureQueriesContext(connection) as queries:
        assert job.transition(Job.Status.CANCELLED, reason="Cancelled by the participant.")
    statements = [q["sql"] for q in queries.captured_queries]
    if connection.vendor == "postgresql":
        assert len(statements) == 1 and statements[0].startswith("WITH moved AS (UPDATE"), statements
    stored = Job.objects.get(pk=job.pk)
    assert (stored.status, stored.status_reason) == (Job.Status.CANCELLED, "Cancelled by the participant.")
    assert [(e.from_status, e.to_status, e.reason) for e in stored.events.all()] == [
        ("queued", "cancelled", "Cancelled by the participant.")
    ]
    stale = Job.objects.get(pk=job.pk)
    stale.status = Job.Status.QUEUED  # it believes the job still waits
    assert not stale.transition(Job.Status.CANCELLED)
    assert stored.events.count() == 1
