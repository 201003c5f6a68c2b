"""Filling free GPU slots: candidates from the database, the choice from :mod:`jobs.policy`, atomic claims.

``schedule()`` runs on commit of every submit and every finish (event-driven: no polling interval in the
hot path) and once per reconciler sweep as a safety net. Each claim locks the backend row, so two
processes scheduling at once cannot overfill a backend, and moves the job with one conditional UPDATE
(``queued → dispatching``), so no job is dispatched twice. A job the instructor pinned to a backend is
claimed only by that one; the others by any backend of their workshop. A claim's cost is two index seeks
per seat with work (its unpinned head, its head pinned to this backend), independent of how many jobs wait.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Case, Value, When

from gpu_backends.models import GpuBackend
from workshops.models import Workshop

from . import events, sql, trace
from .models import Job
from .policy import Candidate, pick_next, seat_head

log = logging.getLogger(__name__)


def candidates(workshop: Workshop, backend_id: int) -> list[Candidate]:
    """One candidate per seat with a job ``backend_id`` may run: that seat's head of queue under the policy."""
    return _candidates(workshop.pk, workshop.queue_policy, backend_id)


def _candidates(workshop_id: int, policy: str, backend_id: int) -> list[Candidate]:
    rows = sql.candidate_rows(workshop_id, policy, backend_id)
    # Per seat with work, so kept lean: a claim's cost is to follow the seats, and barely at that.
    found = []
    for seat_id, gpu, running, job_id, priority, lane, pinned_id, pinned_priority, pinned_lane in rows:
        head = None if job_id is None else Candidate(job_id, seat_id, running, gpu, priority or 0, bool(lane))
        if pinned_id is not None:  # the seat also has a job pinned to this backend: the better of the two
            pinned = Candidate(pinned_id, seat_id, running, gpu, pinned_priority or 0, bool(pinned_lane))
            head = seat_head(policy, (head, pinned))
        assert head is not None  # the WHERE keeps only seats with a head
        found.append(head)
    return found


def claim_next(backend: GpuBackend | int) -> Job | None:
    """Claim one job for one free slot of the backend, or None (no slot, no eligible job).

    ``job.slots_left`` tells the caller whether another claim on this backend could succeed.

    Round trips: the backend's lock, its active count and the workshops with work waiting go together in one
    (:func:`jobs.sql.claim_reads`; the count runs after the lock is granted, so it sees every claim committed
    before); the candidates in one; the move of the picked job with its JobEvent in one; BEGIN and COMMIT.
    """
    backend_id = backend if isinstance(backend, int) else backend.pk
    with transaction.atomic():
        locked, counted, waiting = sql.claim_reads(backend_id)
        if not locked:
            return None
        enabled, state, max_concurrency = locked[0]
        if not enabled or state not in GpuBackend.DISPATCHABLE:
            return None
        active = counted[0][0]
        if active >= max_concurrency:
            return None
        # Waiting workshops: the one with the fewest jobs running first, so one's backlog cannot starve another's.
        for workshop_id, policy, cap, timeout, _ in waiting:
            pick = pick_next(policy, _candidates(workshop_id, policy, backend_id), cap)
            if pick is None:
                continue
            # The pick moves only if it still waits and is not pinned elsewhere: an instructor moving it to another
            # backend right now either goes first (and this finds it pinned there) or finds it started.
            # The prompt (tens of KB of JSON for a real workflow) is read by the worker, not here.
            job = Job.claim(pick.job_id, backend_id, defer=("prompt", "extra_data", "inputs"))
            if job is None:
                continue
            if not isinstance(backend, int):
                backend.enabled, backend.state, backend.max_concurrency = bool(enabled), state, max_concurrency
                job.backend = backend
            timeout = Workshop.timeout_for(timeout)
            transaction.on_commit(functools.partial(enqueue_dispatch, job.pk, job.attempts, timeout))
            job.slots_left = max_concurrency - active - 1  # type: ignore[attr-defined]
            return job
        return None


def schedule(*, until: int | None = None) -> list[int]:
    """Fill every free slot of every dispatchable backend; returns the claimed job ids.

    ``until``: stop as soon as that job is claimed. After a submit nothing else can have become claimable
    (every slot that could take a waiting job took it when that job was queued or the slot was freed), so
    the scheduler need not read the queue again to find that out — a whole second claim on every submit.
    The reconciler's sweep still fills whatever a lost trigger left.
    """
    claimed: list[int] = []
    if until is None and not Job.objects.filter(status=Job.Status.QUEUED).exists():
        # Nothing waits (the usual case after a job ends in a class that keeps up): no claim could succeed,
        # so none is tried. A claim's transaction locks its backend's row — on SQLite, the whole database.
        # A job queued after this read is claimed by its own submit's schedule(), which runs on its commit.
        return claimed
    # Warm backends first: a job should not wait out a cold start while a ready GPU has a free slot. Within the
    # same warmth, the instructor's order (the failover order: spot, on-demand, B300).
    warmth = Case(
        When(state=GpuBackend.State.WARMING, then=Value(1)),
        When(state=GpuBackend.State.COLD, then=Value(2)),
        default=Value(0),
    )
    backends = GpuBackend.objects.filter(enabled=True, state__in=GpuBackend.DISPATCHABLE).order_by(
        warmth, "order", "name"
    )

    for backend in backends:
        while (job := claim_next(backend)) is not None:
            claimed.append(job.pk)
            # Waiting or dispatching, the job counts the same in the seat's queue: only the job itself changed.
            transaction.on_commit(functools.partial(events.announce_job, job, queue_changed=False))
            if job.pk == until:
                return claimed
            if job.slots_left <= 0:  # type: ignore[attr-defined]
                break
    return claimed


_dispatch_queue: tuple[int, Any] | None = None


def dispatch_queue() -> Any:
    """The RQ queue, one per process: django_rq.get_queue() opens a new Redis connection pool on every
    call, which cost a fresh connection (1–2 ms) per enqueue."""
    global _dispatch_queue
    if _dispatch_queue is None or _dispatch_queue[0] != os.getpid():
        import django_rq

        _dispatch_queue = (os.getpid(), django_rq.get_queue(settings.RQ_QUEUE_NAME))
    return _dispatch_queue[1]


DISPATCH_TASK = "jobs.dispatch.dispatch_job"


def dispatch_task_id(job_id: int, attempt: int) -> str:
    """The RQ job id of one claim's dispatch: enqueuing it again replaces it instead of adding a second task."""
    return f"dispatch-{job_id}-{attempt}"


def send_dispatch(job_id: int, attempt: int, timeout: int) -> None:
    """Put the claim's ``dispatch_job`` on the RQ queue; raises Redis's own errors (the caller decides). The task
    is named, not imported: the dispatch module builds on this one, not the other way round."""
    dispatch_queue().enqueue(
        DISPATCH_TASK,
        job_id,
        attempt,
        job_id=dispatch_task_id(job_id, attempt),
        job_timeout=timeout + 300,
        result_ttl=3600,
        failure_ttl=7 * 24 * 3600,
    )


def enqueue_dispatch(job_id: int, attempt: int, timeout: int) -> None:
    """Hand the claimed job to an RQ worker, on commit of its claim.

    No retry here: this runs in the committing request or worker, which must not wait for Redis. A claim whose
    task did not reach Redis (refused, timed out, or lost when Redis restarted) stays ``dispatching`` and the
    reconciler's next sweep enqueues it again (``jobs.reconciler.sweep_undelivered``), attempt unchanged.
    """
    try:
        send_dispatch(job_id, attempt, timeout)
        trace.mark(job_id, "claimed")
        trace.save(job_id)
    except Exception as exc:  # any Redis trouble: the row keeps the claim, the reconciler delivers it
        log.warning(
            "Could not enqueue dispatch of job %s (%s); the reconciler will enqueue it again",
            job_id,
            exc,
            extra={"job_id": job_id},
        )
