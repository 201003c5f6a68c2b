"""Artifacts: the files a job produced, kept in the store under a key per job."""

from __future__ import annotations

import secrets
from datetime import datetime

from django.db import models
from django.utils import timezone

from workshops.models import hash_token


class Artifact(models.Model):
    """One output file of one job (image, video or other), with its checksum."""

    class Kind(models.TextChoices):
        IMAGE = "image", "Image"
        VIDEO = "video", "Video"
        OTHER = "other", "Other"

    job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, related_name="artifacts")
    node_id = models.CharField(max_length=64, blank=True)
    key = models.CharField(max_length=500, unique=True, help_text="workshops/<slug>/<seat>/<prompt_id>/<file>")
    filename = models.CharField(max_length=255)
    subfolder = models.CharField(max_length=300, blank=True, help_text="As the participant's /view sees it.")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.OTHER)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    content_type = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "id"]
        indexes = [models.Index(fields=["job", "subfolder", "filename"], name="artifact_lookup")]

    def __str__(self) -> str:
        return self.key

    @staticmethod
    def kind_for(content_type: str) -> str:
        if content_type.startswith("image/"):
            return Artifact.Kind.IMAGE
        if content_type.startswith("video/"):
            return Artifact.Kind.VIDEO
        return Artifact.Kind.OTHER


class SeatInput(models.Model):
    """An image a participant uploaded in their ComfyUI. Jobs that name it take it to their GPU."""

    seat = models.ForeignKey("workshops.Seat", on_delete=models.CASCADE, related_name="inputs")
    name = models.CharField(max_length=300, help_text="As ComfyUI names it: photo.png or pasted/image.png.")
    key = models.CharField(max_length=500)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    content_type = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["seat", "name"]
        constraints = [models.UniqueConstraint(fields=["seat", "name"], name="unique_input_name_per_seat")]

    def __str__(self) -> str:
        return f"{self.seat}: {self.name}"


class BackupRun(models.Model):
    """One run of ``manage.py backup`` (by hand or from the reconciler's schedule) and how it ended.

    ``running → succeeded | failed``; each transition is one conditional UPDATE (see :meth:`finish`). A partial
    unique index allows one running row at a time: creating it is the lock that keeps two reconcilers (or a
    reconciler and an operator) from backing up at once. A run whose process died is marked failed by
    :meth:`expire_stale` once its heartbeat is old, which frees the lock.
    """

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    class Trigger(models.TextChoices):
        COMMAND = "command", "manage.py backup"
        SCHEDULE = "schedule", "Schedule"

    backup_id = models.CharField(max_length=40, blank=True, help_text="The backup's name at the destination.")
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.COMMAND)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    destination = models.CharField(max_length=500, help_text="file:///path or s3://bucket/prefix (never a secret).")
    started_at = models.DateTimeField()
    heartbeat_at = models.DateTimeField(help_text="Last sign of progress; a running backup silent for long is dead.")
    finished_at = models.DateTimeField(null=True, blank=True)
    object_count = models.PositiveIntegerField(
        "objects", default=0, help_text="Files written: the database dump, seat files, copied outputs, the manifest."
    )
    byte_count = models.BigIntegerField("bytes", default=0)
    reference_count = models.PositiveIntegerField(
        "references", default=0, help_text="Outputs recorded by reference (left in R2, not copied)."
    )
    error = models.TextField(blank=True)
    warnings = models.TextField(blank=True, help_text="Things worth a look that did not fail the backup.")

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["status"], condition=models.Q(status="running"), name="one_running_backup")
        ]

    def __str__(self) -> str:
        return f"backup {self.backup_id or self.pk} ({self.status})"

    def finish(self, status: str, **fields: object) -> bool:
        """Move a running backup to ``status``; False when it is no longer running (expired meanwhile)."""
        if status not in (self.Status.SUCCEEDED, self.Status.FAILED):
            raise ValueError(f"A backup run ends as succeeded or failed, not {status!r}.")
        fields = {"status": status, "finished_at": timezone.now(), **fields}
        updated = BackupRun.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(**fields)
        if updated == 1:
            for key, value in fields.items():
                setattr(self, key, value)
        return updated == 1


class OutputLink(models.Model):
    """A participant's personal link to their own outputs, without signing in: for after the workshop.

    Only the token's hash is kept. A link works until it expires (at the latest when the workshop's outputs are
    deleted, see ``Workshop.outputs_kept_days``) or is revoked.
    """

    seat = models.ForeignKey("workshops.Seat", on_delete=models.CASCADE, related_name="output_links")
    token_hash = models.CharField(max_length=64, unique=True)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(
        max_length=150, blank=True, help_text="Who issued it (an instructor, or the participant)."
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"take-home link of {self.seat}"

    @classmethod
    def issue(cls, seat, expires_at: datetime, *, created_by: str = "") -> str:  # seat: workshops.Seat
        """A new link for ``seat``; returns the raw token once (its URL is ``/take-home/<token>/``)."""
        raw = secrets.token_urlsafe(24)
        cls.objects.create(seat=seat, token_hash=hash_token(raw), expires_at=expires_at, created_by=created_by[:150])
        return raw

    def is_usable(self) -> bool:
        """Not revoked, not expired, and the workshop's outputs still kept."""
        now = timezone.now()
        kept_until = self.seat.workshop.outputs_expire_at
        return self.revoked_at is None and self.expires_at > now and (kept_until is None or kept_until > now)
