"""The instructor's queue operations beyond cancelling: run an ended job again, move waiting jobs to the
instructor lane, pause and resume a workshop's queue.

Each one is atomic and leaves the audit entry to its caller (the live dashboard, an admin action), as
``cancel_job`` does. Live views hear about a change after commit through a ``comfyume.queue`` message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.db import transaction

from workshops.models import Workshop

from . import events
from .models import Job
from .scheduler import schedule
from .services import submit_prompt

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
    body: dict[str, Any] = {"prompt": job.prompt, "extra_data": job.extra_data, "client_id": job.client_id}
    new = submit_prompt(job.seat, body, instructor_lane=job.instructor_lane, priority=job.priority)
    log.info(
        "Job %s of %s queued again as job %s by %s",
        job.pk,
        job.seat,
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
