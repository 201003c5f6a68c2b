"""Workshops and their seats: who may queue what, under which policy and caps."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from jobs import policy


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def hash_token(raw: str) -> str:
    """Tokens are long random strings, so one SHA-256 is enough; only the hash is stored."""
    return hashlib.sha256(raw.encode()).hexdigest()


class QueuePolicy(models.TextChoices):
    """The policies of jobs.policy (pure, where each one's rule is written), with the words the admin shows."""

    FIFO = policy.FIFO, "First in, first out"
    ROUND_ROBIN = policy.ROUND_ROBIN, "Round robin between seats"
    PRIORITY = policy.PRIORITY, "Instructor lane and priority, then round robin"


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
    preview_method = models.CharField(
        max_length=12,
        choices=[
            ("auto", "Auto (the GPU's ComfyUI picks)"),
            ("latent2rgb", "Fast (latent2rgb)"),
            ("taesd", "Detailed (TAESD, if the GPU image has its decoders)"),
            ("none", "None"),
        ],
        default="auto",
        help_text="Live previews while a sampler runs, sent with every job as ComfyUI's preview_method (a ComfyUI "
        "that does not read it from the prompt uses its --preview-method). None saves the GPU the decoding.",
    )
    seat_gpu_budget_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="GPU seconds each seat may use in this workshop. Empty: no limit."
    )
    seat_cost_budget = models.DecimalField(
        max_digits=8,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="Money each seat may spend, at the backends' price per hour. Empty: no limit.",
    )
    spending_cap = models.DecimalField(
        max_digits=10,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0"))],
        help_text="Stop starting jobs once the workshop's GPU cost (at the backends' price per hour) reaches this; "
        "waiting jobs stay queued and running ones finish. Raise it to go on. Empty: no cap.",
    )
    # What the workshop's finished jobs cost, kept on the row (updated with F() as each job ends) so the claim
    # compares it with the cap without adding up the job history.
    cost_used = models.DecimalField(max_digits=12, decimal_places=4, default=Decimal("0"), editable=False)
    backends = models.ManyToManyField("gpu_backends.GpuBackend", blank=True, related_name="workshops")
    templates: models.ManyToManyField = models.ManyToManyField(
        "WorkflowTemplate", blank=True, related_name="workshops", help_text="In every seat's workflow list."
    )
    default_template = models.ForeignKey(
        "WorkflowTemplate",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Opened for a participant whose canvas is empty.",
    )
    outputs_kept_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        verbose_name="keep outputs for (days)",
        help_text="Days after the workshop ends (its end time, or when it is archived) that participants' outputs "
        "are kept and their take-home links work; then the outputs are deleted. Empty: kept until you delete them.",
    )
    archived_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.title or self.slug

    @property
    def job_timeout(self) -> int:
        return self.timeout_for(self.job_timeout_seconds)

    @staticmethod
    def timeout_for(job_timeout_seconds: int | None) -> int:
        """A job's time limit from the workshop's setting (empty: the platform default)."""
        return job_timeout_seconds or settings.COMFYUME["JOB_TIMEOUT"]

    @property
    def spending_capped(self) -> bool:
        """The workshop's GPU cost has reached its cap: no new job starts."""
        return self.spending_cap is not None and self.cost_used >= self.spending_cap

    @property
    def outputs_expire_at(self) -> datetime | None:
        """When the outputs are deleted: ``outputs_kept_days`` after the workshop's end (its end time, or its
        archiving, whichever is earlier). None: kept for good, or not ended yet."""
        ends = [moment for moment in (self.ends_at, self.archived_at) if moment is not None]
        if self.outputs_kept_days is None or not ends:
            return None
        return min(ends) + timedelta(days=self.outputs_kept_days)

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
    # What those seconds cost at the price of the backend each job ran on (same F() update, same reason).
    cost_used = models.DecimalField(max_digits=10, decimal_places=4, default=Decimal("0"))
    # One participant's budget raised without raising everyone's: added to the workshop's per-seat budgets.
    extra_gpu_seconds = models.PositiveIntegerField(
        default=0,
        verbose_name="extra GPU seconds",
        help_text="GPU seconds this seat may use on top of the workshop's per-seat budget.",
    )
    extra_cost = models.DecimalField(
        max_digits=8,
        decimal_places=2,
        default=Decimal("0"),
        validators=[MinValueValidator(Decimal("0"))],
        help_text="Money this seat may spend on top of the workshop's per-seat budget.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["workshop", "label"]
        constraints = [models.UniqueConstraint(fields=["workshop", "label"], name="unique_seat_label_per_workshop")]

    def __str__(self) -> str:
        return f"{self.workshop.slug}/{self.label}"

    @property
    def gpu_seconds_limit(self) -> int | None:
        """GPU seconds this seat may use: the workshop's per-seat budget plus the seat's extra; None: no limit."""
        budget = self.workshop.seat_gpu_budget_seconds
        return None if budget is None else budget + self.extra_gpu_seconds

    @property
    def cost_limit(self) -> Decimal | None:
        """Money this seat may spend: the workshop's per-seat budget plus the seat's extra; None: no limit."""
        budget = self.workshop.seat_cost_budget
        return None if budget is None else budget + self.extra_cost

    def budget_used(self) -> float | None:
        """The larger share of the seat's GPU-time and money budgets used so far (1.0 = all), or None."""
        gpu_limit, cost_limit = self.gpu_seconds_limit, self.cost_limit
        shares = []
        if gpu_limit is not None:
            shares.append(self.gpu_seconds_used / max(gpu_limit, 1))
        if cost_limit is not None:
            shares.append(float(self.cost_used) / max(float(cost_limit), 0.01))
        return max(shares) if shares else None

    def budget_exhausted(self) -> str | None:
        """Why this seat may not queue more work, in words a participant understands; None while it may."""
        limit, cost_limit = self.gpu_seconds_limit, self.cost_limit
        if limit is not None and self.gpu_seconds_used >= limit:
            return (
                f"You have used your GPU time for this workshop ({_duration(self.gpu_seconds_used)} of "
                f"{_duration(limit)}). Ask the instructor if you need more."
            )
        if cost_limit is not None and self.cost_used >= cost_limit:
            return (
                f"You have used your GPU budget for this workshop ({self.cost_used:.2f} of "
                f"{cost_limit:.2f}). Ask the instructor if you need more."
            )
        return None

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


class Announcement(models.Model):
    """A message from the instructor, shown at once in every participant's ComfyUI of the workshop."""

    workshop = models.ForeignKey(Workshop, on_delete=models.CASCADE, related_name="announcements")
    message = models.CharField(max_length=500)
    active = models.BooleanField(default=True, help_text="Shown to participants (untick to withdraw it).")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.message[:60]


THUMBNAIL_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
MAX_THUMBNAIL_BYTES = 2 * 1024 * 1024


class WorkflowTemplate(models.Model):
    """A workflow (ComfyUI's UI format, subgraphs included) that workshops put in every seat's workflow list."""

    name = models.CharField(max_length=120, unique=True, help_text="Shown in the workflow list as <name>.json.")
    description = models.TextField(blank=True)
    workflow = models.JSONField(help_text="The workflow as ComfyUI saves it (UI format).")
    # Its picture in ComfyUI's Templates browser (PNG, JPEG or WebP, checked by content); none: a drawn card.
    thumbnail = models.BinaryField(blank=True, default=b"", editable=False)
    thumbnail_type = models.CharField(max_length=20, blank=True, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def filename(self) -> str:
        return f"{self.name}.json"


class SeatFrontend(models.Model):
    """The seat's own ComfyUI frontend server: what the instructor asked for and what is running.

    The seat-frontend supervisor (``manage.py run_seat_frontends``) reconciles ``desired`` with the driver's
    view of the world; admin actions only change ``desired`` and bump the request counters, so they are
    instant and safe to repeat.
    """

    class Desired(models.TextChoices):
        RUNNING = "running", "Running"
        STOPPED = "stopped", "Stopped"

    class State(models.TextChoices):
        STOPPED = "stopped", "Stopped"
        STARTING = "starting", "Starting"
        RUNNING = "running", "Running"
        FAILED = "failed", "Failed (restarting)"

    seat = models.OneToOneField(Seat, on_delete=models.CASCADE, related_name="frontend")
    desired = models.CharField(max_length=10, choices=Desired.choices, default=Desired.RUNNING)
    state = models.CharField(max_length=10, choices=State.choices, default=State.STOPPED)
    driver = models.CharField(max_length=20, blank=True, help_text="The driver that last started it.")
    port = models.PositiveIntegerField(null=True, blank=True, unique=True)
    address = models.CharField(max_length=200, blank=True, help_text="host:port where nginx and the hub reach it.")
    # An admin action bumps a counter; the supervisor carries it out and records the value it handled.
    restart_requested = models.PositiveIntegerField(default=0)
    restart_done = models.PositiveIntegerField(default=0)
    reset_requested = models.PositiveIntegerField(default=0)
    reset_done = models.PositiveIntegerField(default=0)
    restarts = models.PositiveIntegerField(default=0, help_text="Times it died and was started again.")
    last_error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"frontend of {self.seat}"


class AuditEntry(models.Model):
    """One thing an instructor did in the admin: who, what (a code and a sentence), when, and on what.

    Rows are only added (see ``workshops.audit``); the admin shows them read-only. The actor's username is
    copied into ``actor_name`` so an entry still says who it was after the account is deleted, and the
    target is kept as text for the same reason: the job or seat acted on may be gone by the time someone
    reads the log.
    """

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_entries"
    )
    actor_name = models.CharField(max_length=150, blank=True, help_text="The username at the time.")
    action = models.CharField(max_length=50, help_text="What was done, as a code: job.cancel, seat.restart, …")
    summary = models.CharField(max_length=500)
    workshop = models.ForeignKey(
        Workshop, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_entries"
    )
    target_type = models.CharField(max_length=100, blank=True, help_text="app_label.model of the object.")
    target_id = models.CharField(max_length=64, blank=True)
    target_repr = models.CharField(max_length=200, blank=True, help_text="The object as it was named then.")
    details = models.JSONField(default=dict, blank=True, help_text="E.g. the changed fields, old and new.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.actor_name or 'someone'}: {self.summary[:80]}"
