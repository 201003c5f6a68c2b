"""Jobs: one participant prompt on its way through the queue to a GPU, as an explicit state machine."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, cast

from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from . import sql


class IllegalTransition(Exception):
    """A state change the job's state machine does not allow (e.g. finishing a job that never ran)."""


class Job(models.Model):
    """A prompt queued by a seat.

    ``queued → dispatching → running → succeeded | failed | cancelled | interrupted | timed_out``; a job whose
    dispatch could not reach its backend, or whose worker died, goes back from dispatching/running to
    queued (``attempts`` counts dispatches). Every transition is one conditional UPDATE, so two processes
    racing on the same job cannot both win, and each is recorded as a :class:`JobEvent`.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        DISPATCHING = "dispatching", "Starting"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"
        INTERRUPTED = "interrupted", "Interrupted"
        TIMED_OUT = "timed_out", "Timed out"

    WAITING = (Status.QUEUED,)
    ACTIVE = (Status.DISPATCHING, Status.RUNNING)
    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.INTERRUPTED, Status.TIMED_OUT)
    _ALLOWED: dict[str, set[str]] = {
        Status.QUEUED: {Status.DISPATCHING, Status.CANCELLED, Status.FAILED},
        Status.DISPATCHING: {Status.RUNNING, Status.QUEUED, Status.FAILED, Status.CANCELLED, Status.TIMED_OUT},
        Status.RUNNING: {Status.SUCCEEDED, Status.FAILED, Status.INTERRUPTED, Status.TIMED_OUT, Status.QUEUED},
    }

    prompt_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    workshop = models.ForeignKey("workshops.Workshop", on_delete=models.CASCADE, related_name="jobs")
    seat = models.ForeignKey("workshops.Seat", on_delete=models.CASCADE, related_name="jobs")
    backend = models.ForeignKey(
        "gpu_backends.GpuBackend", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    # The instructor's "move to another backend" (live dashboard): only this backend may claim the job while it
    # waits. Kept when the job goes back to the queue, so a job moved off a failing GPU does not drift back to it.
    # No index of its own: the scheduler reads it through the head-of-queue indexes below, and one on the pin
    # alone tempted PostgreSQL into reading every job pinned to a backend for each seat's head.
    pinned_backend = models.ForeignKey(
        "gpu_backends.GpuBackend",
        null=True,
        blank=True,
        db_index=False,
        on_delete=models.SET_NULL,
        related_name="pinned_jobs",
        help_text="Only this GPU backend may run the job. Empty: any of the workshop's backends.",
    )
    prompt = models.JSONField(help_text="The API-format prompt as submitted.")
    extra_data = models.JSONField(default=dict, blank=True)
    client_id = models.CharField(max_length=128, blank=True, help_text="The submitting frontend's clientId.")
    outputs_to_execute = models.JSONField(default=list)
    inputs = models.JSONField(
        default=list, blank=True, help_text="Uploaded images the prompt names: [{name, key, sha256, size}]."
    )
    hidden = models.BooleanField(default=False, help_text="Removed from the participant's history list.")
    priority = models.IntegerField(default=0)
    instructor_lane = models.BooleanField(default=False, help_text="Goes before every participant job.")

    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    status_reason = models.CharField(max_length=500, blank=True, help_text="Why the job ended as it did.")
    error = models.JSONField(null=True, blank=True, help_text="ComfyUI-shaped error payload.")
    outputs = models.JSONField(default=dict, blank=True, help_text="Node outputs as the participant sees them.")
    attempts = models.PositiveIntegerField(default=0)
    backend_prompt_id = models.CharField(max_length=64, blank=True)
    # Serverless backends: the GPU worker's per-attempt callback token (sha256, never the token itself) and the
    # request's id at the provider (Verda's X-Inference-Id for an asynchronous request).
    callback_token_hash = models.CharField(max_length=64, blank=True, editable=False)
    backend_ref = models.CharField(max_length=128, blank=True)
    gpu_seconds = models.FloatField(default=0.0)

    created_at = models.DateTimeField(default=timezone.now)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            # The scheduler reads each seat's head of queue through these: one index seek per seat for its
            # unpinned jobs and one for those pinned to the claiming backend, so the cost of a claim does not
            # grow with the length of the queue (see jobs.sql.candidates_sql). Their (seat, status)
            # prefix serves the per-seat counts (caps, running jobs) as the indexes without the pin did.
            models.Index(fields=["seat", "status", "pinned_backend", "id"], name="job_seat_pin_head"),
            models.Index(
                F("seat"), F("status"), F("pinned_backend"), F("instructor_lane").desc(), F("priority").desc(),
                F("id"), name="job_seat_pin_priority_head",
            ),
            models.Index(fields=["backend", "status"], name="job_backend_status"),
            models.Index(fields=["workshop", "status"], name="job_workshop_status"),
            # The dashboard's charts read the last hour's finished jobs: a range on this, not the whole day's.
            models.Index(fields=["workshop", "finished_at"], name="job_workshop_finished"),
            models.Index(fields=["status", "heartbeat_at"], name="job_status_heartbeat"),
        ]  # fmt: skip

    def __str__(self) -> str:
        return f"job {self.pk} ({self.status})"

    @property
    def number(self) -> int:
        """The queue number ComfyUI shows; ours is the row id, which only grows."""
        return self.pk

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    def can_cancel(self) -> bool:
        return self.status in (*self.WAITING, *self.ACTIVE)

    def transition(self, to: str, *, reason: str = "", **fields) -> bool:
        """Move to ``to`` if the row is still in the state this instance holds; False if another process won.

        Raises IllegalTransition for a move the state machine forbids.
        """
        source = self.status
        if to not in self._ALLOWED.get(source, set[str]()):
            raise IllegalTransition(f"job {self.pk}: {source} → {to} is not allowed")
        now = timezone.now()
        fields = {"status": to, **fields}
        if reason:
            fields["status_reason"] = reason[:500]
        if to == self.Status.DISPATCHING:
            fields.setdefault("dispatched_at", now)
        elif to == self.Status.RUNNING:
            fields.setdefault("started_at", now)
            fields.setdefault("heartbeat_at", now)
        elif to in self.TERMINAL:
            fields.setdefault("finished_at", now)
        if not sql.move_job(self.pk, source, to, reason[:500], fields):
            return False
        for key, value in fields.items():
            setattr(self, key, value)
        return True

    @classmethod
    def claim(cls, job_id: int, backend_id: int, *, defer: Sequence[str] = ()) -> Job | None:
        """``queued → dispatching`` on the backend if the job still waits and is not pinned to another; the job as
        it is now (the ``defer`` fields left unread), or None. One statement with its JobEvent on PostgreSQL."""
        return cast(Job | None, sql.claim_job(job_id, backend_id, columns=sql.job_columns(leave=defer)))

    def refresh_status(self) -> str:
        self.status = Job.objects.values_list("status", flat=True).get(pk=self.pk)
        return self.status

    def summary(self) -> dict[str, Any]:
        """The job as the hub API and our ``comfyume.job`` events describe it."""
        backend = self.backend if self.backend_id else None
        return {
            "prompt_id": str(self.prompt_id),
            "number": self.number,
            "seat": self.seat.label if self.seat_id else None,
            "status": self.status,
            "status_label": Job.Status(self.status).label,
            "can_cancel": self.can_cancel(),
            "reason": self.status_reason,
            "backend": backend.name if backend else None,
            # A serverless backend with no replica yet: the participant sees "GPU starting" while it comes up.
            "backend_state": backend.state if backend else None,
            "attempts": self.attempts,
            "created_at": self.created_at.isoformat(),
            "dispatched_at": self.dispatched_at.isoformat() if self.dispatched_at else None,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "gpu_seconds": round(self.gpu_seconds, 3),
            "error": self.error,
            "outputs": self.outputs,
        }

    @classmethod
    def queue_remaining(cls, seat_id: int) -> int:
        """The seat's jobs waiting or running: ComfyUI's queue counter (``exec_info.queue_remaining``)."""
        return cls.objects.filter(seat_id=seat_id, status__in=(*cls.WAITING, *cls.ACTIVE)).count()


class JobEvent(models.Model):
    """One state change of a job, kept for the instructor's history and for debugging a lost job."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=20, choices=Job.Status.choices)
    to_status = models.CharField(max_length=20, choices=Job.Status.choices)
    reason = models.CharField(max_length=500, blank=True)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.from_status} → {self.to_status}"


ACTIVE_Q = Q(status__in=Job.ACTIVE)
