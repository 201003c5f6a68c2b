"""The reconciler: periodic sweeps that repair what events alone cannot. Never the hot path.

- delivery: a claimed job whose dispatch task Redis does not hold (the enqueue failed while Redis was away or
  paused, or a restarted Redis lost it) is enqueued again, attempt unchanged: the Job row is the truth;
- orphans: a dispatching/running job whose worker has shown no sign of life for ``HEARTBEAT_TIMEOUT``
  goes back to the queue once (it is first removed from its backend, so it cannot run twice), then fails;
  a claim no worker ever took goes back without counting an attempt (the job did nothing wrong);
- after a restart (:func:`recover_at_start`, before the new workers start): what the last run's workers
  left running is stopped on its backend and queued again without counting an attempt;
- timeouts: a running job past its workshop's limit (and a grace) is stopped on the backend, timed_out;
- backends: health checks flip ready/failing, a refreshed object_info keeps preflight current;
- deadline: a queued job that has waited ``BACKEND_DOWN_DEADLINE`` while its workshop has no working
  backend (a pinned job: while its own backend is not working) fails with a reason instead of waiting forever;
- schedule(): a safety net for a dispatch whose on-commit trigger was lost with its process.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

import redis
from django.conf import settings
from django.db.models.functions import Coalesce
from django.utils import timezone

from gpu_backends import scaling
from gpu_backends.client import BackendError
from gpu_backends.kinds import provider_for
from gpu_backends.models import GpuBackend
from gpu_backends.services import check_health, object_info_is_stale, refresh_object_info

from .models import Job
from .scheduler import dispatch_queue, dispatch_task_id, schedule, send_dispatch
from .services import backend_is_available, finish_job, requeue_job

log = logging.getLogger(__name__)

TIMEOUT_GRACE = timedelta(seconds=60)
# A claim's task is enqueued on the claim's commit, a few milliseconds later: younger claims are left alone, so
# the sweep does not enqueue a second task for a claim whose first is still on its way.
DELIVERY_GRACE = timedelta(seconds=2)
# RQ states in which a dispatch task will still run (or runs): anything else (finished, failed, missing) means
# no worker will take the claim unless it is enqueued again.
_TASK_PENDING = frozenset({"queued", "started", "deferred", "scheduled"})
NEVER_TAKEN = "No worker took it within {} s; queued again (attempt not counted)."
LEFT_BY_RESTART = "The platform restarted while it ran; queued again (attempt not counted)."


@dataclass
class SweepReport:
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    timed_out: list[int] = field(default_factory=list)
    claimed: list[int] = field(default_factory=list)
    redelivered: list[int] = field(default_factory=list)


def _stop_on_backend(job: Job) -> None:
    if not (job.backend and job.backend_prompt_id):
        return
    try:
        provider_for(job.backend).cancel(job.backend_prompt_id)
    except BackendError as exc:
        log.warning("Could not remove job %s from %s: %s", job.pk, job.backend.name, exc, extra={"job_id": job.pk})


def sweep_undelivered(report: SweepReport) -> None:
    """Enqueue again each claim whose dispatch task Redis does not hold, with the same task id and attempt.

    A task enqueued twice is harmless: ``dispatch_job`` takes its claim with a conditional UPDATE, so one runs
    it and the other finds it taken. While Redis does not answer, nothing is changed: the claims wait for it.
    """
    cutoff = timezone.now() - DELIVERY_GRACE
    waiting = list(
        Job.objects.filter(status=Job.Status.DISPATCHING, heartbeat_at__isnull=True, dispatched_at__lt=cutoff)
        .select_related("workshop")
        .only("pk", "attempts", "workshop__job_timeout_seconds")
    )
    if not waiting:
        return
    try:
        queue = dispatch_queue()
        for job in waiting:
            task = queue.fetch_job(dispatch_task_id(job.pk, job.attempts))
            if task is not None and task.get_status(refresh=False) in _TASK_PENDING:
                continue
            send_dispatch(job.pk, job.attempts, job.workshop.job_timeout)
            report.redelivered.append(job.pk)
    except (redis.RedisError, OSError) as exc:
        log.warning("Redis does not answer (%s); %d claimed job(s) wait for it", exc, len(waiting))


def sweep_orphans(report: SweepReport) -> None:
    cutoff = timezone.now() - timedelta(seconds=settings.COMFYUME["HEARTBEAT_TIMEOUT"])
    stale = (
        Job.objects.filter(status__in=Job.ACTIVE)
        .annotate(seen=Coalesce("heartbeat_at", "dispatched_at", "created_at"))
        .filter(seen__lt=cutoff)
        .select_related("backend", "seat", "workshop")
    )
    for job in stale:
        if job.status == Job.Status.DISPATCHING and job.heartbeat_at is None:
            # No worker ever took the claim (Redis away, every worker busy or restarting): nothing ran, so the
            # job keeps its attempts. Back in the queue it is claimed and enqueued afresh.
            reason = NEVER_TAKEN.format(settings.COMFYUME["HEARTBEAT_TIMEOUT"])
            if requeue_job(job, reason, count_attempt=False):
                report.requeued.append(job.pk)
            continue
        _stop_on_backend(job)
        if job.attempts < settings.COMFYUME["MAX_ATTEMPTS"]:
            if requeue_job(job, "Its worker stopped responding; queued again."):
                report.requeued.append(job.pk)
        elif finish_job(job, Job.Status.FAILED, reason="Its worker stopped responding twice; giving up."):
            report.failed.append(job.pk)


def recover_at_start() -> SweepReport:
    """What the last run left, handled at the start of a new one, before its workers start: seconds, not the
    minute a heartbeat takes to go stale.

    Every job a worker had taken (``running``, or ``dispatching`` with a heartbeat) was left by a process that
    no longer exists: it is removed from its backend and queued again without counting an attempt, since our
    own stop ended it, not the job. Claims no worker took are enqueued again as they are. The caller must know
    that no worker of this database runs (``run_platform`` checks RQ's worker registry).
    """
    report = SweepReport()
    taken = Job.objects.filter(status__in=Job.ACTIVE).exclude(status=Job.Status.DISPATCHING, heartbeat_at__isnull=True)
    for job in taken.select_related("backend", "seat", "workshop"):
        _stop_on_backend(job)
        if requeue_job(job, LEFT_BY_RESTART, count_attempt=False):
            report.requeued.append(job.pk)
    sweep_undelivered(report)
    report.claimed = schedule()
    if report.requeued or report.redelivered:
        log.info("Recovered after a restart: %s", report)
    return report


def sweep_timeouts(report: SweepReport) -> None:
    now = timezone.now()
    running = Job.objects.filter(status=Job.Status.RUNNING, started_at__isnull=False).select_related(
        "backend", "seat", "workshop"
    )
    for job in running.iterator():
        assert job.started_at is not None  # filtered above
        if job.started_at + timedelta(seconds=job.workshop.job_timeout) + TIMEOUT_GRACE < now:
            _stop_on_backend(job)
            reason = f"Stopped after the {job.workshop.job_timeout} s time limit."
            if finish_job(job, Job.Status.TIMED_OUT, reason=reason):
                report.timed_out.append(job.pk)


def sweep_backends() -> None:
    scaling.sweep()
    for backend in GpuBackend.objects.filter(enabled=True):
        check_health(backend)
        if backend.state == GpuBackend.State.READY and object_info_is_stale(backend):
            try:
                refresh_object_info(backend)
            except BackendError as exc:
                log.warning("object_info refresh of %s failed: %s", backend.name, exc)


def sweep_deadline(report: SweepReport) -> None:
    """Fail jobs that waited past the deadline while no backend could take them. A job pinned to a backend is
    judged by that backend alone: the others being up does not help it, nor does its own being down hurt the
    workshop's other jobs."""
    cutoff = timezone.now() - timedelta(seconds=settings.COMFYUME["BACKEND_DOWN_DEADLINE"])
    waiting = Job.objects.filter(status=Job.Status.QUEUED, created_at__lt=cutoff).select_related(
        "workshop", "seat", "pinned_backend"
    )
    minutes = settings.COMFYUME["BACKEND_DOWN_DEADLINE"] // 60
    checked: dict[tuple[int, int | None], bool] = {}
    for job in waiting:
        key = (job.workshop_id, job.pinned_backend_id)
        if key not in checked:
            checked[key] = backend_is_available(job.workshop, job.pinned_backend_id)
        if not checked[key]:
            if job.pinned_backend is not None:
                reason = (
                    f"Its GPU backend {job.pinned_backend.name} was not available for {minutes} minutes. "
                    "Please try again later."
                )
            else:
                reason = f"No GPU backend was available for {minutes} minutes. Please try again later."
            if finish_job(job, Job.Status.FAILED, reason=reason):
                report.failed.append(job.pk)


def sweep_backups() -> None:
    """Start the scheduled backup when one is due (in a thread of its own: the sweep goes on)."""
    from storage import backup

    try:
        backup.run_scheduled(timezone.now())
    except Exception:
        log.exception("Scheduling a backup failed")


# How often a reconciler deletes the outputs whose workshop's retention ran out (storage/take_home.py).
EXPIRE_OUTPUTS_EVERY = 3600.0
_outputs_checked = [0.0]  # monotonic time of this process's last check


def sweep_outputs() -> None:
    """Once an hour: delete the outputs that their workshop's retention no longer keeps."""
    from storage import take_home

    if time.monotonic() - _outputs_checked[0] < EXPIRE_OUTPUTS_EVERY and _outputs_checked[0]:
        return
    _outputs_checked[0] = time.monotonic()
    try:
        take_home.expire_outputs()
    except Exception:
        log.exception("Deleting expired outputs failed")


def sweep(*, check_backends: bool = True) -> SweepReport:
    """One pass of every repair; safe to run from several processes at once."""
    report = SweepReport()
    if check_backends:
        sweep_backends()
        sweep_backups()
        sweep_outputs()
    sweep_undelivered(report)
    sweep_orphans(report)
    sweep_timeouts(report)
    sweep_deadline(report)
    report.claimed = schedule()
    if any((report.requeued, report.failed, report.timed_out, report.redelivered)):
        log.info("Reconciler: %s", report)
    return report
