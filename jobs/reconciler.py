"""The reconciler: periodic sweeps that repair what events alone cannot. Never the hot path.

- orphans: a dispatching/running job whose worker has shown no sign of life for ``HEARTBEAT_TIMEOUT``
  goes back to the queue once (it is first removed from its backend, so it cannot run twice), then fails;
- timeouts: a running job past its workshop's limit (and a grace) is stopped on the backend, timed_out;
- backends: health checks flip ready/failing, a refreshed object_info keeps preflight current;
- deadline: a queued job that has waited ``BACKEND_DOWN_DEADLINE`` while its workshop has no working
  backend (a pinned job: while its own backend is not working) fails with a reason instead of waiting forever;
- schedule(): a safety net for a dispatch whose on-commit trigger was lost with its process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db.models.functions import Coalesce
from django.utils import timezone

from gpu_backends import scaling
from gpu_backends.client import BackendError
from gpu_backends.models import GpuBackend
from gpu_backends.providers import provider_for
from gpu_backends.services import check_health, object_info_is_stale, refresh_object_info

from .models import Job
from .scheduler import schedule
from .services import backend_is_available, finish_job, requeue_job

log = logging.getLogger(__name__)

TIMEOUT_GRACE = timedelta(seconds=60)


@dataclass
class SweepReport:
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    timed_out: list[int] = field(default_factory=list)
    claimed: list[int] = field(default_factory=list)


def _stop_on_backend(job: Job) -> None:
    if not (job.backend and job.backend_prompt_id):
        return
    try:
        provider_for(job.backend).cancel(job.backend_prompt_id)
    except BackendError as exc:
        log.warning("Could not remove job %s from %s: %s", job.pk, job.backend.name, exc, extra={"job_id": job.pk})


def sweep_orphans(report: SweepReport) -> None:
    cutoff = timezone.now() - timedelta(seconds=settings.COMFYUME["HEARTBEAT_TIMEOUT"])
    stale = (
        Job.objects.filter(status__in=Job.ACTIVE)
        .annotate(seen=Coalesce("heartbeat_at", "dispatched_at", "created_at"))
        .filter(seen__lt=cutoff)
        .select_related("backend", "seat", "workshop")
    )
    for job in stale:
        _stop_on_backend(job)
        if job.attempts < settings.COMFYUME["MAX_ATTEMPTS"]:
            if requeue_job(job, "Its worker stopped responding; queued again."):
                report.requeued.append(job.pk)
        elif finish_job(job, Job.Status.FAILED, reason="Its worker stopped responding twice; giving up."):
            report.failed.append(job.pk)


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


def sweep(*, check_backends: bool = True) -> SweepReport:
    """One pass of every repair; safe to run from several processes at once."""
    report = SweepReport()
    if check_backends:
        sweep_backends()
        sweep_backups()
    sweep_orphans(report)
    sweep_timeouts(report)
    sweep_deadline(report)
    report.claimed = schedule()
    if any((report.requeued, report.failed, report.timed_out)):
        log.info("Reconciler: %s", report)
    return report
