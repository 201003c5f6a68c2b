"""The instructor's queue operations: cancel, run an ended job again, move waiting jobs to the instructor lane
or to another GPU backend, move a running job to another backend, pause and resume a workshop's queue, change
its policy and caps, switch a backend off and on, warm a backend up or scale it to zero.

The plain ones are atomic and record nothing. The ``do_*`` ones are what an instructor's button calls: each
carries out the operation and writes its own audit entries (``details``: the caller's extras for every entry,
such as the dashboard's ``{"via": "dashboard"}``), so the Jobs admin and the live dashboard, calling the same
``do_*``, record one text. They carry out what they are given: what a caller can refuse beforehand (a job in
the wrong state) it refuses in its own words. Live views hear about a change after commit through a
``comfyume.queue`` message.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from django import forms
from django.db import transaction
from django.utils import timezone

from gpu_backends import scaling
from gpu_backends.models import GpuBackend
from workshops import audit
from workshops.models import AuditEntry, Workshop

from . import events
from .models import Job
from .scheduler import schedule
from .services import SubmissionRejected, cancel_job, submit_prompt

log = logging.getLogger(__name__)

# Ended jobs that may be run again. A succeeded job is not among them: the participant has its outputs and
# can press Run again themselves; queueing it for them would only spend their budget.
RESUBMITTABLE = (Job.Status.FAILED, Job.Status.INTERRUPTED, Job.Status.TIMED_OUT, Job.Status.CANCELLED)


class NothingDone(Exception):
    """A ``do_*`` operation on several jobs stopped at ``job`` and undid all it had done: submit_prompt refused
    the job's new run (``rejection``, its reason) or, with None, the job ended meanwhile."""

    def __init__(self, job: Job, rejection: SubmissionRejected | None = None) -> None:
        super().__init__(str(rejection) if rejection is not None else f"job {job.pk} ended meanwhile")
        self.job = job
        self.rejection = rejection


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


# --- What the instructor's buttons call: the operation and its audit entries ------------------------------


def do_cancel_jobs(
    jobs: Iterable[Job], *, actor: audit.Actor, details: dict[str, Any] | None = None
) -> list[tuple[Job, str]]:
    """Cancel each job as the instructor (:func:`jobs.services.cancel_job`: a waiting job ends at once, a
    running one's backend is asked to stop it) and record one ``job.cancel`` entry per job saying what came of it;
    returns each job with that result (``cancelled``, ``stop_requested``, ``already_finished``), in order.

    Not one transaction: each cancel commits by itself, as a participant's does, because stopping a running job
    asks its backend over the network and a freed slot goes to the next job at once. The entries are written
    together afterwards. Each entry belongs to its job's workshop (``select_related("seat__workshop")`` spares
    a query per job)."""
    outcomes, entries = [], []
    for job in jobs:
        result, summary = _cancel_outcome(job, cancel_job(job, by="instructor"))
        outcomes.append((job, result))
        entries.append(
            audit.build(
                actor,
                "job.cancel",
                summary,
                workshop=job.seat.workshop,
                target=job,
                details={"result": result, "status": job.status, **(details or {})},
            )
        )
    audit.record_all(entries)
    return outcomes


def _cancel_outcome(job: Job, accepted: bool) -> tuple[str, str]:
    """How an instructor's cancel of ``job`` came out, as a result code and a sentence for the audit log."""
    name = f"job #{job.pk} of {job.seat}"
    if not accepted:
        # cancel_job read the job's status again before refusing, so this is how it ended.
        return "already_finished", f"Did not cancel {name}: it had already ended ({job.get_status_display()})"
    if job.status == Job.Status.CANCELLED:
        return "cancelled", f"Cancelled {name}"
    # It was on a GPU: the backend was asked to stop it, and the dispatch loop ends it within a second.
    return "stop_requested", f"Cancelled {name} (running: its backend was asked to stop it)"


def do_requeue_jobs(
    jobs: Sequence[Job], *, actor: audit.Actor, workshop: Workshop, details: dict[str, Any] | None = None
) -> list[tuple[Job, Job]]:
    """Queue ended jobs again (:func:`resubmit_job`), all of them or none, with one ``job.requeue`` entry per job;
    returns each job with its new one. :class:`NothingDone` when submit_prompt refuses one."""
    pairs = []
    with transaction.atomic():
        for job in jobs:
            try:
                new = resubmit_job(job, by=_username(actor))
            except SubmissionRejected as exc:
                # Leaving the atomic block by this exception undoes the jobs queued before this one.
                raise NothingDone(job, exc) from exc
            pairs.append((job, new))
        audit.record_all(
            audit.build(
                actor,
                "job.requeue",
                f"Queued job #{old.pk} of {old.seat} again as job #{new.pk}",
                workshop=workshop,
                target=old,
                details={"new_job": new.pk, "previous_status": old.status, **(details or {})},
            )
            for old, new in pairs
        )
    return pairs


def do_move_to_lane(
    workshop: Workshop, jobs: Sequence[Job], *, actor: audit.Actor, details: dict[str, Any] | None = None
) -> list[int]:
    """Put the workshop's waiting jobs among ``jobs`` in the instructor lane, with one ``job.lane`` entry per job
    moved; returns the ids moved.

    One conditional UPDATE per job (still queued, not yet in the lane), so a job a worker claimed a moment
    ago is left alone and the caller learns exactly which ones moved. The lane ranks first only under the
    ``priority`` policy (see jobs.policy); the scheduler runs on commit in case it has a free slot.
    """
    moved = []
    with transaction.atomic():
        for job in jobs:
            updated = Job.objects.filter(
                pk=job.pk, workshop=workshop, status=Job.Status.QUEUED, instructor_lane=False
            ).update(instructor_lane=True)
            if updated == 1:
                moved.append(job)
        if moved:
            transaction.on_commit(schedule)
            change = {"change": "lane", "jobs": [job.pk for job in moved]}
            _tell(workshop, {"type": "comfyume.queue", "data": change}, seats=False)
        audit.record_all(
            audit.build(
                actor,
                "job.lane",
                f"Moved job #{job.pk} of {job.seat} to the instructor lane",
                workshop=workshop,
                target=job,
                details={"policy": workshop.queue_policy, **(details or {})},
            )
            for job in moved
        )
    return [job.pk for job in moved]


def do_move_jobs(
    workshop: Workshop,
    target: GpuBackend | None,
    *,
    waiting: Sequence[Job],
    running: Sequence[Job],
    actor: audit.Actor,
    details: dict[str, Any] | None = None,
) -> tuple[list[Job], list[tuple[Job, Job]]]:
    """Pin ``waiting`` jobs to ``target`` (None: any backend again, :func:`pin_waiting_jobs`) and move ``running``
    ones there (:func:`move_running_job`; they need a named target), all of them or none, with one ``job.move``
    entry per job moved. Returns the waiting jobs pinned (one a backend claimed meanwhile is not) and each running
    job with its new run. :class:`NothingDone` when submit_prompt refuses a new run or a running job ended."""
    if running and target is None:
        raise ValueError("a running job moves to a named backend, not to any backend")
    copies: list[tuple[Job, Job]] = []
    with transaction.atomic():
        pinned = set(pin_waiting_jobs(workshop, [job.pk for job in waiting], target))
        for job in running:
            assert target is not None  # checked above
            try:
                new = move_running_job(job, target, by=_username(actor))
            except SubmissionRejected as exc:
                # Leaving the atomic block by this exception undoes every pin and copy made before this one.
                raise NothingDone(job, exc) from exc
            if new is None:
                raise NothingDone(job)
            copies.append((job, new))
        moved = [job for job in waiting if job.pk in pinned]
        audit.record_all(_move_entries(actor, workshop, target, moved, copies, details or {}))
    return moved, copies


def _move_entries(
    actor: audit.Actor,
    workshop: Workshop,
    target: GpuBackend | None,
    moved: list[Job],
    copies: list[tuple[Job, Job]],
    details: dict[str, Any],
) -> list[AuditEntry]:
    """One audit entry per waiting job pinned (or unpinned) and per running job stopped and queued again."""
    entries = [
        audit.build(
            actor,
            "job.move",
            f"Moved waiting job #{job.pk} of {job.seat} to GPU backend {target.name}"
            if target is not None
            else f"Let job #{job.pk} of {job.seat} run on any GPU backend",
            workshop=workshop,
            target=job,
            details={"from": _name_of(job.pinned_backend), "to": _name_of(target), **details},
        )
        for job in moved
    ]
    for old, new in copies:
        assert target is not None  # a running job moves to a named backend only
        entries.append(
            audit.build(
                actor,
                "job.move",
                f"Stopped job #{old.pk} of {old.seat} on {_name_of(old.backend) or 'its GPU'} and queued it again "
                f"on {target.name} as job #{new.pk}",
                workshop=workshop,
                target=old,
                details={
                    "from": _name_of(old.backend),
                    "to": target.name,
                    "new_job": new.pk,
                    "previous_status": old.status,
                    **details,
                },
            )
        )
    return entries


def _name_of(backend: GpuBackend | None) -> str | None:
    return backend.name if backend is not None else None


def do_set_paused(
    workshop: Workshop, paused: bool, *, actor: audit.Actor, details: dict[str, Any] | None = None
) -> bool:
    """Pause (no queued job starts; running ones finish) or resume the workshop's queue, with a
    ``workshop.pause`` or ``workshop.resume`` entry; False, with nothing recorded, when it already was so.

    Resuming runs the scheduler on commit, so waiting jobs start at once rather than at the reconciler's next
    sweep. Seats hear of it too: their banner says the queue is paused.
    """
    with transaction.atomic():
        if Workshop.objects.filter(pk=workshop.pk, paused=not paused).update(paused=paused) != 1:
            return False
        workshop.paused = paused
        if not paused:
            transaction.on_commit(schedule)
        workshop_changed(workshop, ["paused"])
        audit.record(
            actor,
            "workshop.pause" if paused else "workshop.resume",
            f"{'Paused' if paused else 'Resumed'} the queue of {workshop.slug}",
            workshop=workshop,
            target=workshop,
            details={"changes": {"paused": {"old": not paused, "new": paused}}, **(details or {})},
        )
    return True


def do_change_queue_settings(
    workshop: Workshop, form: forms.BaseForm, *, actor: audit.Actor, details: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Save the queue settings (policy, caps) a valid form of the workshop changed, only those, with a
    ``workshop.change`` entry saying from what to what; returns the changes (``{}``, with nothing saved or
    recorded, when the form changed nothing).

    The scheduler runs on commit: a raised running cap, or a policy that ranks someone else first, can start
    waiting jobs now rather than at the reconciler's next sweep.
    """
    changed = audit.changes(form)
    if not changed:
        return {}
    values = {name: form.cleaned_data[name] for name in changed}
    with transaction.atomic():
        Workshop.objects.filter(pk=workshop.pk).update(**values)
        for name, value in values.items():
            setattr(workshop, name, value)
        transaction.on_commit(schedule)
        workshop_changed(workshop, values)
        audit.record(
            actor,
            "workshop.change",
            f"Changed the queue settings of {workshop.slug}: {audit.describe_changes(changed, form)}",
            workshop=workshop,
            target=workshop,
            details={"changes": changed, **(details or {})},
        )
    return changed


def do_set_backend_enabled(
    backend: GpuBackend,
    enabled: bool,
    *,
    actor: audit.Actor,
    workshop: Workshop | None = None,
    details: dict[str, Any] | None = None,
) -> bool:
    """Switch a GPU backend on or off for new jobs, with a ``backend.switch_on`` or ``backend.switch_off``
    entry; jobs running on it finish there. False, with nothing recorded, when it already was so.

    Off, the scheduler passes it by: waiting jobs go to the next backend of their workshop in order (for a
    spot backend, the manual failover to on-demand) and jobs pinned to it wait. The scheduler runs on commit
    either way, and the dashboards of every workshop using it hear of it.
    """
    word = "on" if enabled else "off"
    with transaction.atomic():
        if GpuBackend.objects.filter(pk=backend.pk, enabled=not enabled).update(enabled=enabled) != 1:
            return False
        backend.enabled = enabled
        transaction.on_commit(schedule)
        backend_changed(backend)
        audit.record(
            actor,
            f"backend.switch_{word}",
            f"Switched {word} GPU backend {backend.name}",
            workshop=workshop,
            target=backend,
            details={"changes": {"enabled": {"old": not enabled, "new": enabled}}, **(details or {})},
        )
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
) -> str:
    """Let a scaling backend's replicas stop once idle (gpu_backends.scaling.scale_to_zero), held for the sessions
    under way; record it with what the vendor reports afterwards, tell the live views, and return that report.
    BackendError, with nothing recorded, as for :func:`do_warm_backend`."""
    status = scaling.scale_to_zero(backend)
    confirmed = scaling.confirmation(status)
    reported = {"min_replicas": status.min_replicas, "running": status.running + status.starting, "verda": confirmed}
    summary = f"Scaled GPU backend {backend.name} to zero. {confirmed}"
    _scaled(backend, "backend.scale_to_zero", summary, actor, workshop, {**(details or {}), **reported})
    return confirmed


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


# The workshop's fields its live views show and act on: a change to one is told to them (and, for the pause, to
# the seats, whose banner says so).
QUEUE_SETTINGS = ("queue_policy", "max_queued_per_seat", "max_running_per_seat", "max_queue_depth")


def workshop_changed(workshop: Workshop, fields: Iterable[str]) -> None:
    """Tell the live views of ``workshop`` that ``fields`` changed (after commit): the dashboards, and for
    ``paused`` the seats too. The do_* operations and the Workshop admin's form saves both call it."""
    fields = set(fields)
    if "paused" in fields:
        message = {"type": "comfyume.queue", "data": {"change": "pause", "paused": workshop.paused}}
        _tell(workshop, message, seats=True)
    settings = {name: getattr(workshop, name) for name in QUEUE_SETTINGS if name in fields}
    if settings:
        _tell(workshop, {"type": "comfyume.queue", "data": {"change": "settings", **settings}}, seats=False)


def _tell(workshop: Workshop, message: dict[str, Any], *, seats: bool) -> None:
    """Send a ComfyUI-format message to the workshop's live views (and its seats), after commit."""
    groups = [events.workshop_group(workshop.pk)]
    if seats:
        groups += [events.seat_group(pk) for pk in workshop.seats.values_list("pk", flat=True)]
    transaction.on_commit(lambda: events.publish(groups, {"type": "comfy.message", "message": message}))


def _username(actor: audit.Actor) -> str:
    """Who a job's log lines name as having moved or queued it again."""
    return actor.get_username() if actor is not None else "instructor"
