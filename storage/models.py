"""Artifacts: the files a job produced, kept in the store under a key per job."""

from __future__ import annotations

from django.db import models


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
