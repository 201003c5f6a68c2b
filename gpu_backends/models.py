"""GPU backends: where jobs run. Each is a database row, so switching one is an admin action."""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.dispatch import Signal
from django.utils import timezone

# Sent after a backend's state changed (kwargs: backend); the jobs app tells the live views.
backend_state_changed = Signal()


def validate_backend_url(value: str) -> None:
    """http(s)://host[:port][/path] — single-label hosts allowed (``http://comfyui:8188`` on a private network)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Enter a URL like http://gpu-box:8188 (http or https, with a host).")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValidationError("The port in this URL is not a number.") from None
    if parts.query or parts.fragment:
        raise ValidationError("The backend URL must not have a query string or a fragment.")


class GpuBackend(models.Model):
    """A ComfyUI server (or the simulator, or a Verda deployment) with a number of job slots."""

    class Kind(models.TextChoices):
        COMFYUI = "comfyui", "ComfyUI server"
        SIMULATOR = "simulator", "ComfyUI simulator (no GPU)"
        VERDA = "verda", "Verda serverless container (GPU worker)"

    class State(models.TextChoices):
        UNKNOWN = "unknown", "Not checked yet"
        COLD = "cold", "Cold (scaled to zero)"
        WARMING = "warming", "Warming up"
        READY = "ready", "Ready"
        FAILING = "failing", "Failing"

    class InferenceMode(models.TextChoices):
        AUTO = "auto", "Automatic (asynchronous for video workflows)"
        SYNC = "sync", "Synchronous requests"
        ASYNC = "async", "Asynchronous requests (Prefer: respond-async)"

    # States in which the scheduler sends it work; a failing backend keeps its jobs queued. A cold serverless
    # backend takes work: the request itself starts a replica.
    DISPATCHABLE = (State.UNKNOWN, State.COLD, State.WARMING, State.READY)

    name = models.SlugField(max_length=64, unique=True)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.COMFYUI)
    url = models.CharField(
        max_length=500,
        validators=[validate_backend_url],
        help_text="Base URL, e.g. http://gpu-box:8188; for Verda the deployment URL "
        "https://containers.datacrunch.io/<deployment>",
    )
    # --- Verda (serverless) only ---
    deployment = models.CharField(
        max_length=100,
        blank=True,
        help_text="Verda deployment name. Empty: the last part of the URL. With a gateway-only URL "
        "(https://containers.datacrunch.io) it completes the deployment URL.",
    )
    api_key_env = models.CharField(
        max_length=100,
        default="COMFYUME_VERDA_INFERENCE_KEY",
        help_text="Name of the environment variable that holds this deployment's inference API key "
        "(secrets stay in the environment, never in the database).",
    )
    inference_mode = models.CharField(max_length=10, choices=InferenceMode.choices, default=InferenceMode.AUTO)
    warm_replicas = models.PositiveIntegerField(
        default=1, help_text="Replicas kept running from the pre-warm until the workshop ends (Verda)."
    )
    prewarm_minutes = models.PositiveIntegerField(
        default=20, help_text="Warm up this many minutes before a workshop using this backend starts (Verda)."
    )
    warm_until = models.DateTimeField(
        null=True, blank=True, help_text="Kept warm until then by the admin's “Warm up now” (Verda)."
    )
    held_cold_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="When it was scaled to zero by hand: the sessions already under way then do not warm it again.",
    )
    applied_min_replicas = models.PositiveIntegerField(
        null=True, blank=True, editable=False, help_text="The minimum replica count last set through Verda's API."
    )
    gpu_type = models.CharField(max_length=64, blank=True, help_text="e.g. H200, B300")
    price_per_hour = models.DecimalField(max_digits=8, decimal_places=2, default=Decimal("0"))
    max_concurrency = models.PositiveIntegerField(
        default=1, validators=[MinValueValidator(1)], help_text="Jobs this backend runs at once."
    )
    enabled = models.BooleanField(default=True)
    order = models.PositiveIntegerField(default=0, help_text="Lower comes first when several have free slots.")

    state = models.CharField(max_length=20, choices=State.choices, default=State.UNKNOWN)
    state_changed_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True)
    # When the node catalogue (NodeCatalogue) was last read; it also versions the per-process cache.
    object_info_fetched_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["order", "name"]
        verbose_name = "GPU backend"

    def __str__(self) -> str:
        return self.name

    @property
    def deployment_name(self) -> str:
        return self.deployment or urlsplit(self.url).path.rstrip("/").rpartition("/")[2]

    @property
    def inference_url(self) -> str:
        """The deployment URL: the URL as given, or the gateway URL plus the deployment name."""
        if urlsplit(self.url).path.strip("/") or not self.deployment:
            return self.url
        return f"{self.url.rstrip('/')}/{self.deployment}"

    def clean(self) -> None:
        super().clean()
        if self.kind == self.Kind.VERDA and not self.deployment_name:
            raise ValidationError(
                {"url": "A Verda backend needs its deployment: https://containers.datacrunch.io/<deployment>."}
            )

    def mark(self, state: str, error: str = "") -> bool:
        """Record a health observation; returns True when the state changed."""
        changed = state != self.state
        fields: dict[str, object] = {"last_error": error[:2000]}
        if changed:
            fields.update(state=state, state_changed_at=timezone.now())
        GpuBackend.objects.filter(pk=self.pk).update(**fields)
        for key, value in fields.items():
            setattr(self, key, value)
        if changed:
            backend_state_changed.send(sender=GpuBackend, backend=self)
        return changed


class NodeCatalogue(models.Model):
    """A backend's ``/object_info`` (about 0.5 MB of JSON): kept off the GpuBackend row, which the
    scheduler reads on every claim, and parsed once per process (see services.object_info_for)."""

    backend = models.OneToOneField(GpuBackend, on_delete=models.CASCADE, related_name="catalogue")
    object_info = models.JSONField()
    fetched_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"node catalogue of {self.backend}"
