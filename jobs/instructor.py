"""The instructor's queue operations beyond cancelling: run an ended job again, move waiting jobs to the
instructor lane or to another GPU backend, move a running job to another backend, pause and resume a
workshop's queue, change its policy and caps, switch a backend off and on, warm a backend up or scale it to zero.

Each one is atomic and leaves the audit entry to its caller (the live dashboard, an admin action), as
``cancel_job`` does; the ``do_*`` ones write their own, so the admin and the dashboard record one text. Live views
hear about a change after commit through a ``comfyume.queue`` message.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.utils import timezone

from gpu_backends import scaling
from gpu_backends.models import GpuBackend
from workshops import audit
from workshops.models import Workshop

from . import events
from .models import Job
from .scheduler import schedule
from .services import cancel_job, submit_prompt

log = logging.getLogger(__name__)

# Ended jobs that may be run again. A succeeded job is not among them: the participant has its outputs and
# can press Run again themselves; queueing it for them would only spend their budget.
RESUBMITTABLE = (Job.Status.FAILED, Job.Status.INTERRUPTED, Job.Status.TIMED_OUT, Job.Status.CANCELLED)


def can_resubmit(job: Job) -> bool:
    return job.status in RESUBMITTABLE


def resubmit_job(job: Job, by: str = "instructor") -> Job:
    """Queue an ended (failed, interrupted, timed-out or cancelled) job again, as a new job of the same seat
    with the same prompt, lane and priority; the old job stays as it ended, its history intact.

    It goes through :func:`jobs.services.submit_prompt`, so the workshop's caps, the seat's budget and
    preflight apply exactly as if the participant had pressed Run: SubmissionRejected says why not.
    Raises ValueError for a job that has not ended, or that succeeded.
    """
    if not can_resubmit(job):
        raise ValueError(f"job {job.pk} is {job.status}; only failed, interrupted, timed-out or cancelled jobs")
    new = _queue_copy(job)
    log.info(
        "Job %s of %s queued again as job %s by %s",
        job.pk,
        job.seat,
        new.pk,
        by,
        extra={"job_id": new.pk, "seat": job.seat.label},
    )
    return new


def _queue_copy(job: Job, *, pinned_backend: GpuBackend | None = None) -> Job:
    """A new waiting job of ``job``'s seat with its prompt, lane and priority, through submit_prompt."""
    body: dict[str, Any] = {"prompt": job.prompt, "extra_data": job.extra_data, "client_id": job.client_id}
    with transaction.atomic():
        new = submit_prompt(job.seat, body, instructor_lane=job.instructor_lane, priority=job.priority)
        if pinned_backend is not None:
            # Pinned before commit: the scheduler that submit_prompt runs on commit already sees the pin.
            Job.objects.filter(pk=new.pk).update(pinned_backend=pinned_backend)
            new.pinned_backend = pinned_backend
    return new


def pin_waiting_jobs(workshop: Workshop, job_ids: Iterable[int], backend: GpuBackend | None) -> list[int]:
    """Pin the workshop's waiting jobs among ``job_ids`` to ``backend``, or with None let any of the workshop's
    backends run them again; returns the ids changed.

    One conditional UPDATE per job (still queued, not already so pinned): a job a backend claimed a moment
    ago is left alone (the claim holds its row until it commits) and the caller learns exactly which ones
    moved. The scheduler runs on commit: the target may have a free slot now.
    """
    moved = []
    with transaction.atomic():
        for job_id in job_ids:
            waiting = Job.objects.filter(pk=job_id, workshop=workshop, status=Job.Status.QUEUED)
            if backend is None:
                waiting = waiting.filter(pinned_backend__isnull=False)
            else:
                waiting = waiting.exclude(pinned_backend=backend)
            if waiting.update(pinned_backend=backend) == 1:
                moved.append(job_id)
        if moved:
            transaction.on_commit(schedule)
            change = {"change": "move", "jobs": moved, "backend": backend.name if backend else None}
            _tell(workshop, {"type": "comfyume.queue", "data": change}, seats=False)
    return moved


def move_running_job(job: Job, backend: GpuBackend, by: str = "instructor") -> Job | None:
    """Move a job that is on a GPU to ``backend``: stop it where it runs and queue its prompt again as a new job
    pinned to ``backend``. Returns the new job, or None when the job ended (or began stopping) meanwhile, in
    which case nothing is queued.

    This is :func:`resubmit_job`'s path (a copy through submit_prompt: the caps, the seat's budget and
    preflight apply; SubmissionRejected says why not, and then the job keeps running) followed by
    :func:`jobs.services.cancel_job`'s. The same row is not sent back to the queue (requeue_job, as the
    reconciler does for a dead worker) because the old run's dispatch task is alive and still reports to that
    row: its late progress, outputs, heartbeats and final "interrupted" would land on the job's next run. A
    new row keeps the two runs apart, and the old one ends as interrupted, its history intact.
    """
    with transaction.atomic():
        # The stop is claimed in the same transaction as the copy: a job that ended meanwhile gets no copy, and
        # a refused copy rolls the stop back. The dispatch loop notices the flag within a second by itself.
        asked = Job.objects.filter(pk=job.pk, status__in=Job.ACTIVE, cancel_requested_at__isnull=True).update(
            cancel_requested_at=timezone.now()
        )
        if asked != 1:
            return None
        new = _queue_copy(job, pinned_backend=backend)
        # cancel_job reaches the backend (a network call), so only once the copy is committed.
        transaction.on_commit(functools.partial(cancel_job, job, by=f"{by}, moving it to {backend.name}"))
    log.info(
        "Job %s of %s moved from %s to %s as job %s by %s",
        job.pk,
        job.seat,
        job.backend.name if job.backend else "its backend",
        backend.name,
        new.pk,
        by,
        extra={"job_id": new.pk, "seat": job.seat.label},
    )
    return new


def move_to_lane(workshop: Workshop, job_ids: Iterable[int]) -> list[int]:
    """Put the workshop's waiting jobs among ``job_ids`` in the instructor lane; returns the ids moved.

    One conditional UPDATE per job (still queued, not yet in the lane), so a job a worker claimed a moment
    ago is left alone and the caller learns exactly which ones moved. The lane ranks first only under the
    ``priority`` policy (see jobs.policy); the scheduler runs on commit in case it has a free slot.
    """
    moved = []
    with transaction.atomic():
        for job_id in job_ids:
            updated = Job.objects.filter(
                pk=job_id, workshop=workshop, status=Job.Status.QUEUED, instructor_lane=False
            ).update(instructor_lane=True)
            if updated == 1:
                moved.append(job_id)
        if moved:
            transaction.on_commit(schedule)
            _tell(workshop, {"type": "comfyume.queue", "data": {"change": "lane", "jobs": moved}}, seats=False)
    return moved


def set_paused(workshop: Workshop, paused: bool) -> bool:
    """Pause (no queued job starts; running ones finish) or resume the workshop's queue.

    False when it already was in that state. Resuming runs the scheduler on commit, so waiting jobs start
    at once rather than at the reconciler's next sweep. Seats hear of it too: their banner says the queue
    is paused.
    """
    with transaction.atomic():
        changed = Workshop.objects.filter(pk=workshop.pk, paused=not paused).update(paused=paused) == 1
        if not changed:
            return False
        workshop.paused = paused
        if not paused:
            transaction.on_commit(schedule)
        _tell(workshop, {"type": "comfyume.queue", "data": {"change": "pause", "paused": paused}}, seats=True)
    return True


def change_queue_settings(workshop: Workshop, values: dict[str, Any]) -> None:
    """Save already validated queue settings (policy, caps) of the workshop, only the fields given.

    The scheduler runs on commit: a raised running cap, or a policy that ranks someone else first, can start
    waiting jobs now rather than at the reconciler's next sweep.
    """
    with transaction.atomic():
        Workshop.objects.filter(pk=workshop.pk).update(**values)
        for name, value in values.items():
            setattr(workshop, name, value)
        transaction.on_commit(schedule)
        _tell(workshop, {"type": "comfyume.queue", "data": {"change": "settings", **values}}, seats=False)


def set_backend_enabled(backend: GpuBackend, enabled: bool) -> bool:
    """Switch a GPU backend on or off for new jobs; jobs running on it finish there. False if it already was.

    Off, the scheduler passes it by: waiting jobs go to the next backend of their workshop in order (for a
    spot backend, the manual failover to on-demand) and jobs pinned to it wait. The scheduler runs on commit
    either way, and the dashboards of every workshop using it hear of it.
    """
    with transaction.atomic():
        if GpuBackend.objects.filter(pk=backend.pk, enabled=not enabled).update(enabled=enabled) != 1:
            return False
        backend.enabled = enabled
        transaction.on_commit(schedule)
        backend_changed(backend)
    return True


def do_warm_backend(
    backend: GpuBackend,
    *,
    actor: audit.Actor,
    workshop: Workshop | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Start a scaling backend's warm replicas now and keep them for an hour (gpu_backends.scaling.warm_now);
    record it and tell the live views. BackendError, with nothing recorded, when its kind does not scale or its
    vendor's API refused."""
    scaling.warm_now(backend)
    count = max(backend.warm_replicas, 1)
    replicas = f"{count} replica{'' if count == 1 else 's'}"
    _scaled(
        backend,
        "backend.warm",
        f"Warmed up GPU backend {backend.name} ({replicas} for an hour)",
        actor,
        workshop,
        details,
    )


def do_scale_backend_to_zero(
    backend: GpuBackend,
    *,
    actor: audit.Actor,
    workshop: Workshop | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Let a scaling backend's replicas stop once idle (gpu_backends.scaling.scale_to_zero); record it and tell
    the live views. BackendError, with nothing recorded, as for :func:`do_warm_backend`."""
    scaling.scale_to_zero(backend)
    _scaled(backend, "backend.scale_to_zero", f"Scaled GPU backend {backend.name} to zero", actor, workshop, details)


def _scaled(
    backend: GpuBackend,
    action: str,
    summary: str,
    actor: audit.Actor,
    workshop: Workshop | None,
    details: dict[str, Any] | None,
) -> None:
    # The warm_until shown on the dashboard changed even when the state did not (scale to zero).
    with transaction.atomic():
        audit.record(actor, action, summary, workshop=workshop, target=backend, details=details)
        backend_changed(backend)


def backend_changed(backend: GpuBackend) -> None:
    """Tell the live dashboards of every workshop using ``backend`` that it changed (after commit)."""
    groups = [events.workshop_group(pk) for pk in backend.workshops.values_list("pk", flat=True)]
    message = {"type": "comfyume.queue", "data": {"change": "backend", "backend": backend.name}}
    transaction.on_commit(lambda: events.publish(groups, {"type": "comfy.message", "message": message}))


def _tell(workshop: Workshop, message: dict[str, Any], *, seats: bool) -> None:
    """Send a ComfyUI-format message to the workshop's live views (and its seats), after commit."""
    groups = [events.workshop_group(workshop.pk)]
    if seats:
        groups += [events.seat_group(pk) for pk in workshop.seats.values_list("pk", flat=True)]
    transaction.on_commit(lambda: events.publish(groups, {"type": "comfy.message", "message": message}))


def cancel_outcome(job: Job, accepted: bool) -> tuple[str, str]:
    """How an instructor's cancel of ``job`` came out, as a result code and a sentence for the audit log
    (the same words from the Jobs admin and the live dashboard)."""
    name = f"job #{job.pk} of {job.seat}"
    if not accepted:
        # cancel_job read the job's status again before refusing, so this is how it ended.
        return "already_finished", f"Did not cancel {name}: it had already ended ({job.get_status_display()})"
    if job.status == Job.Status.CANCELLED:
        return "cancelled", f"Cancelled {name}"
    # It was on a GPU: the backend was asked to stop it, and the dispatch loop ends it within a second.
    return "stop_requested", f"Cancelled {name} (running: its backend was asked to stop it)"
