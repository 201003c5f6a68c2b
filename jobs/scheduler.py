"""Filling free GPU slots: candidates from the database, the choice from :mod:`jobs.policy`, atomic claims.

``schedule()`` runs on commit of every submit and every finish (event-driven: no polling interval in the
hot path) and once per reconciler sweep as a safety net. Each claim locks the backend row, so two
processes scheduling at once cannot overfill a backend, and moves the job with one conditional UPDATE
(``queued → dispatching``), so no job is dispatched twice. Its cost is one index seek per seat with
work, independent of how many jobs wait.
"""

from __future__ import annotations

import functools
import logging

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Exists, IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce

from gpu_backends.models import GpuBackend
from workshops.models import Seat, Workshop

from .models import Job
from .policy import Candidate, head_order, pick_next

log = logging.getLogger(__name__)


def candidates(workshop: Workshop) -> list[Candidate]:
    """One candidate per seat that has a queued job: that seat's head of queue under the policy."""
    heads = Job.objects.filter(seat=OuterRef("pk"), status=Job.Status.QUEUED).order_by(
        *head_order(workshop.queue_policy)
    )
    running = (
        Job.objects.filter(seat=OuterRef("pk"), status__in=Job.ACTIVE)
        .order_by()
        .values("seat")
        .annotate(n=Count("pk"))
        .values("n")
    )
    rows = (
        Seat.objects.filter(workshop=workshop)
        .annotate(
            head_id=Subquery(heads.values("pk")[:1]),
            head_priority=Subquery(heads.values("priority")[:1]),
            head_lane=Subquery(heads.values("instructor_lane")[:1]),
            running=Coalesce(Subquery(running, output_field=IntegerField()), Value(0)),
        )
        .filter(head_id__isnull=False)
        .values_list("pk", "head_id", "head_priority", "head_lane", "running", "gpu_seconds_used")
    )
    return [
        Candidate(
            job_id=head_id,
            seat_id=seat_id,
            seat_running=running,
            seat_gpu_seconds=gpu,
            priority=priority or 0,
            instructor_lane=bool(lane),
        )
        for seat_id, head_id, priority, lane, running, gpu in rows
    ]


def _waiting_workshops(backend: GpuBackend):
    queued = Job.objects.filter(workshop=OuterRef("pk"), status=Job.Status.QUEUED)
    return (
        Workshop.objects.filter(backends=backend, paused=False, archived_at__isnull=True)
        .filter(Exists(queued))
        .order_by("pk")
    )


def claim_next(backend_id: int) -> Job | None:
    """Claim one job for one free slot of the backend, or None (no slot, no eligible job)."""
    with transaction.atomic():
        backend = GpuBackend.objects.select_for_update().filter(pk=backend_id).first()
        if backend is None or not backend.enabled or backend.state not in GpuBackend.DISPATCHABLE:
            return None
        active = Job.objects.filter(backend=backend, status__in=Job.ACTIVE).count()
        if active >= backend.max_concurrency:
            return None
        for workshop in _waiting_workshops(backend):
            pick = pick_next(workshop.queue_policy, candidates(workshop), workshop.max_running_per_seat)
            if pick is None:
                continue
            job = Job.objects.select_related("seat", "workshop").get(pk=pick.job_id)
            if job.status != Job.Status.QUEUED:
                continue
            if job.transition(Job.Status.DISPATCHING, backend=backend, attempts=job.attempts + 1):
                transaction.on_commit(functools.partial(enqueue_dispatch, job.pk))
                return job
        return None


def schedule() -> list[int]:
    """Fill every free slot of every dispatchable backend; returns the claimed job ids."""
    claimed: list[int] = []
    backends = GpuBackend.objects.filter(enabled=True, state__in=GpuBackend.DISPATCHABLE).values_list("pk", flat=True)
    for backend_id in backends:
        while (job := claim_next(backend_id)) is not None:
            claimed.append(job.pk)
            from .services import announce_job  # services imports this module

            transaction.on_commit(functools.partial(announce_job, job))
    return claimed


def enqueue_dispatch(job_id: int) -> None:
    """Hand the claimed job to an RQ worker. If Redis refuses, the reconciler requeues the job later."""
    import django_rq

    from .dispatch import dispatch_job

    job = Job.objects.select_related("workshop").only("attempts", "workshop__job_timeout_seconds").get(pk=job_id)
    queue = django_rq.get_queue(settings.RQ_QUEUE_NAME)
    try:
        queue.enqueue(
            dispatch_job,
            job_id,
            job_id=f"dispatch-{job_id}-{job.attempts}",
            job_timeout=job.workshop.job_timeout + 300,
            result_ttl=3600,
            failure_ttl=7 * 24 * 3600,
        )
    except Exception:
        log.exception(
            "Could not enqueue dispatch of job %s; the reconciler will retry", job_id, extra={"job_id": job_id}
        )
