"""Workshops and their seats: who may queue what, under which policy and caps."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone


def hash_token(raw: str) -> str:
    """Tokens are long random strings, so one SHA-256 is enough; only the hash is stored."""
    return hashlib.sha256(raw.encode()).hexdigest()


class QueuePolicy(models.TextChoices):
    FIFO = "fifo", "First in, first out"
    ROUND_ROBIN = "round_robin", "Round robin between seats"
    PRIORITY = "priority", "Instructor lane and priority, then round robin"


class Workshop(models.Model):
    """One workshop day: its seats share the queue and the GPU backends listed here."""

    slug = models.SlugField(unique=True)
    title = models.CharField(max_length=200)
    starts_at = models.DateTimeField(null=True, blank=True)
    ends_at = models.DateTimeField(null=True, blank=True)
    queue_policy = models.CharField(max_length=20, choices=QueuePolicy.choices, default=QueuePolicy.ROUND_ROBIN)
    max_queued_per_seat = models.PositiveIntegerField(
        default=5, validators=[MinValueValidator(1)], help_text="Jobs one seat may have waiting at once."
    )
    max_running_per_seat = models.PositiveIntegerField(
        default=1, validators=[MinValueValidator(1)], help_text="Jobs one seat may have on a GPU at once."
    )
    max_queue_depth = models.PositiveIntegerField(
        default=500, validators=[MinValueValidator(1)], help_text="Jobs the whole workshop may have waiting."
    )
    job_timeout_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Stop a job that runs longer than this. Empty: the platform default."
    )
    paused = models.BooleanField(default=False, help_text="While paused, jobs are accepted but none starts.")
    backends = models.ManyToManyField("gpu_backends.GpuBackend", blank=True, related_name="workshops")
    archived_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.title or self.slug

    @property
    def job_timeout(self) -> int:
        return self.job_timeout_seconds or settings.COMFYUME["JOB_TIMEOUT"]

    def primary_backend(self):  # -> GpuBackend | None
        """The backend whose node catalogue preflight checks against: the first enabled one by order
        (a disabled one still answers for its catalogue, so jobs can queue while no GPU is switched on)."""
        return self.backends.order_by("-enabled", "order", "pk").first()


class Seat(models.Model):
    """A participant's place in a workshop (``user001``…): their ComfyUI, jobs and outputs hang off it."""

    workshop = models.ForeignKey(Workshop, on_delete=models.CASCADE, related_name="seats")
    label = models.CharField(max_length=32)
    participant = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="seat"
    )
    display_name = models.CharField(max_length=200, blank=True)
    token_hash = models.CharField(max_length=64, unique=True, null=True, blank=True, editable=False)
    # GPU seconds of this seat's finished jobs; kept on the row (updated with F()) so the round-robin
    # policy reads it per seat instead of summing the job history on every claim.
    gpu_seconds_used = models.FloatField(default=0.0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["workshop", "label"]
        constraints = [models.UniqueConstraint(fields=["workshop", "label"], name="unique_seat_label_per_workshop")]

    def __str__(self) -> str:
        return f"{self.workshop.slug}/{self.label}"

    def issue_token(self) -> str:
        """Give the seat frontend a new token; the old one stops working. Returns the raw token once."""
        raw = f"seat_{secrets.token_urlsafe(32)}"
        self.token_hash = hash_token(raw)
        self.save(update_fields=["token_hash"])
        return raw


class JoinLink(models.Model):
    """A one-time sign-in link for a seat's participant (printed as a QR code on the credential card)."""

    seat = models.ForeignKey(Seat, on_delete=models.CASCADE, related_name="join_links")
    token_hash = models.CharField(max_length=64, unique=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"join link for {self.seat}"

    @classmethod
    def issue(cls, seat: Seat, valid_for: timedelta = timedelta(days=7)) -> str:
        raw = secrets.token_urlsafe(24)
        cls.objects.create(seat=seat, token_hash=hash_token(raw), expires_at=timezone.now() + valid_for)
        return raw

    def is_usable(self) -> bool:
        return self.used_at is None and self.expires_at > timezone.now()
