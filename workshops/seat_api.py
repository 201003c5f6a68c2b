"""Hub endpoints a seat frontend calls with its token: the seat's workshop settings and templates, the job
status its banner shows, and the images its participant uploads (kept here so they travel with jobs)."""

from __future__ import annotations

import hashlib
from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from gpu_backends.models import GpuBackend
from jobs.auth import SeatRequest, api_error, seat_required
from jobs.models import Job
from storage.models import SeatInput
from storage.stores import StorageError, default_store, safe_key

from .models import THUMBNAIL_EXTENSIONS, Announcement, Seat, WorkflowTemplate
from .seat_frontend.media import ACCEPTED, HEAD_BYTES, NameProblem, check_path, detect, stored_name

MAX_INPUT_NAME = 300


def announcement_payload(note: Announcement) -> dict[str, Any]:
    return {"id": note.pk, "message": note.message, "created_at": note.created_at.isoformat()}


def active_announcements(workshop_id: int, limit: int = 3) -> list[dict[str, Any]]:
    notes = Announcement.objects.filter(workshop_id=workshop_id, active=True).order_by("-created_at")[:limit]
    return [announcement_payload(n) for n in notes]


@require_GET
@seat_required
def seat_info(request: SeatRequest) -> JsonResponse:
    """The seat frontend's view of its workshop: labels, templates for the workflow list, the default one."""
    seat: Seat = request.seat
    workshop = seat.workshop
    templates = list(workshop.templates.defer("thumbnail"))  # the pictures are fetched one by one
    default: WorkflowTemplate | None = workshop.default_template
    return JsonResponse(
        {
            "label": seat.label,
            "display_name": seat.display_name,
            "workshop": {"slug": workshop.slug, "title": workshop.title},
            "default_template": default.filename if default else None,
            "templates": [
                {
                    "id": t.pk,
                    "name": t.name,
                    "filename": t.filename,
                    "description": t.description,
                    "workflow": t.workflow,
                    # "png", "jpg", "webp" or None: the picture is at templates/<id>/thumbnail.
                    "thumbnail": THUMBNAIL_EXTENSIONS.get(t.thumbnail_type),
                }
                for t in templates
            ],
        }
    )


def _backend_state(seat: Seat) -> dict[str, Any]:
    backends = list(seat.workshop.backends.filter(enabled=True).order_by("order", "pk"))
    if not backends:
        return {"state": "none", "name": None}
    usable = [b for b in backends if b.state in GpuBackend.DISPATCHABLE]
    best = usable[0] if usable else backends[0]
    return {"state": best.state, "name": best.name, "since": best.state_changed_at.isoformat()}


@require_GET
@seat_required
def seat_status(request: SeatRequest) -> JsonResponse:
    """What the status banner shows: the seat's waiting and running jobs (with their place in the queue),
    its latest finished one, the GPU's state, a paused queue and the instructor's announcements."""
    seat: Seat = request.seat
    workshop = seat.workshop
    open_jobs = list(
        Job.objects.select_related("seat", "backend")
        .filter(seat=seat, status__in=(*Job.WAITING, *Job.ACTIVE))
        .order_by("id")
    )
    last_done = (
        Job.objects.select_related("seat", "backend")
        .filter(seat=seat, status__in=Job.TERMINAL)
        .order_by("-finished_at", "-id")
        .first()
    )
    jobs = []
    for job in open_jobs:
        data = job.summary()
        if job.status == Job.Status.QUEUED:
            # Jobs of the workshop queued before this one: its exact place under fifo, an upper bound otherwise.
            data["queued_ahead"] = Job.objects.filter(
                workshop_id=workshop.pk, status=Job.Status.QUEUED, id__lt=job.pk
            ).count()
        jobs.append(data)
    if last_done is not None:
        jobs.append(last_done.summary())
    return JsonResponse(
        {
            "jobs": jobs,
            "paused": workshop.paused,
            "spending_capped": workshop.spending_capped,
            "backend": _backend_state(seat),
            "announcements": active_announcements(workshop.pk),
            "budget": _budget(seat),
        }
    )


def _budget(seat: Seat) -> dict[str, Any] | None:
    """How much of the seat's budget is used (None when the workshop sets none); ``seat_required`` has just
    read the seat's row, so the figures are current."""
    used = seat.budget_used()
    if used is None:
        return None
    return {
        "used": round(used, 3),
        "gpu_seconds_used": round(seat.gpu_seconds_used, 1),
        "gpu_seconds_limit": seat.gpu_seconds_limit,
        "exhausted": seat.budget_exhausted(),
    }


def _max_input_bytes() -> int:
    """The seat frontend's own limit (COMFYUME_MAX_UPLOAD_MB), applied again here: the hub trusts no seat."""
    return int(settings.SEAT_FRONTENDS["MAX_UPLOAD_MB"]) * 1024 * 1024


@require_POST
@seat_required
def upload_input(request: SeatRequest) -> JsonResponse:
    """Keep a file the participant uploaded: ``multipart: name, image``. Same name again replaces it.

    Checked as the seat frontend checks it (media.py): an image, video or audio file by its first bytes, no
    larger than the upload limit, kept under a name whose extension matches its bytes and with their type.
    """
    limit = _max_input_bytes()
    # Refused before Django spools the body to disk; a multipart envelope adds a little to the file itself.
    if int(request.META.get("CONTENT_LENGTH") or 0) > limit + 64 * 1024:
        return api_error(413, "upload_too_large", f"The file is larger than {limit // 2**20} MB.")
    upload = request.FILES.get("image")
    name = str(request.POST.get("name", "")).strip().strip("/")
    if upload is None or not name or len(name) > MAX_INPUT_NAME:
        return api_error(400, "bad_upload", "Send the image as 'image' and its ComfyUI name as 'name'.")
    if upload.size is not None and upload.size > limit:
        return api_error(413, "upload_too_large", f"The file is larger than {limit // 2**20} MB.")
    media = detect(upload.read(HEAD_BYTES))
    upload.seek(0)
    if media is None:
        return api_error(400, "unsupported_type", f"This file cannot be uploaded: only {ACCEPTED} can.")
    folder, _, filename = name.rpartition("/")
    try:
        check_path(folder)
        name = f"{folder}/{stored_name(filename, media)}" if folder else stored_name(filename, media)
    except NameProblem as exc:
        return api_error(400, "bad_upload", str(exc))
    seat: Seat = request.seat
    digest = hashlib.sha256()
    for chunk in upload.chunks():
        digest.update(chunk)
    try:
        # Content-addressed: a queued job keeps the image it was submitted with even if the name is reused.
        key = safe_key("workshops", seat.workshop.slug, seat.label, "inputs", digest.hexdigest()[:32], name)
        stored = default_store().put(key, upload.chunks(), content_type=media.content_type)
    except StorageError as exc:
        return api_error(400, "bad_upload", str(exc))
    with transaction.atomic():
        SeatInput.objects.update_or_create(
            seat=seat,
            name=name,
            defaults={
                "key": stored.key,
                "size": stored.size,
                "sha256": stored.sha256,
                "content_type": media.content_type,
            },
        )
    return JsonResponse({"name": name, "size": stored.size, "sha256": stored.sha256})


@require_GET
@seat_required
def template_thumbnail(request: SeatRequest, template_id: int) -> HttpResponse:
    """A template's picture for the seat's Templates browser: only a template of the seat's own workshop."""
    template = request.seat.workshop.templates.filter(pk=template_id).exclude(thumbnail_type="").first()
    if template is None or not template.thumbnail:
        return api_error(404, "not_found", "This workshop has no such template picture.")
    return picture_response(template)


def picture_response(template: WorkflowTemplate) -> HttpResponse:
    """A template's stored picture (its type checked by content when it was set), never sniffed otherwise."""
    response = HttpResponse(bytes(template.thumbnail), content_type=template.thumbnail_type)
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, max-age=60"
    return response
