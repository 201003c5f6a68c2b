"""The hub API for seat frontends and participants (documented in docs/HUB_API.md).

Answers where ComfyUI has an equivalent use ComfyUI's shapes (``/prompt``, ``/queue``, ``/history``,
``/interrupt``, ``/object_info``, ``/view``), so a seat frontend can pass them through unchanged.
"""

from __future__ import annotations

import time
import uuid

from django.http import Http404, HttpResponse, HttpResponseBase, JsonResponse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from pydantic import Field

from comfyume import jsonbody
from gpu_backends.services import cached_object_info, object_info_for
from storage.models import Artifact
from storage.views import artifact_response
from workshops.seat_frontend.media import NameProblem, check_name, check_path

from . import trace
from .auth import SeatRequest, api_error, seat_required
from .models import Job
from .services import SubmissionRejected, cancel_job, parse_prompt_request, submit_prompt

HISTORY_LIMIT = 200


def job_for_seat(request: SeatRequest, prompt_id: str) -> Job | None:
    """The one place a job is looked up for a seat: another seat's job is simply not found."""
    key = _uuid(prompt_id)
    if key is None:
        return None
    return Job.objects.select_related("seat", "backend").filter(prompt_id=key, seat=request.seat).first()


@require_POST
@seat_required
def prompt(request: SeatRequest) -> JsonResponse:
    """``POST /prompt`` as ComfyUI answers it: ``{prompt_id, number, node_errors}`` or a 4xx error body."""
    arrived = time.time()
    declared = request.META.get("CONTENT_LENGTH") or ""
    try:
        body = parse_prompt_request(request.read, int(declared) if declared.isdigit() else None)
        job = submit_prompt(request.seat, body)
    except SubmissionRejected as exc:
        return JsonResponse(exc.body, status=exc.status)
    trace.mark(job.pk, "submit", at=arrived)
    trace.save(job.pk)
    return JsonResponse({"prompt_id": str(job.prompt_id), "number": job.number, "node_errors": {}})


@require_GET
@seat_required
def job_list(request: SeatRequest) -> JsonResponse:
    try:
        limit = max(1, min(int(request.GET.get("limit", 50)), HISTORY_LIMIT))
    except ValueError:
        return api_error(400, "bad_limit", "limit must be a whole number.")
    jobs = Job.objects.select_related("seat", "backend").filter(seat=request.seat).order_by("-id")[:limit]
    return JsonResponse({"jobs": [job.summary() for job in jobs]})


@require_GET
@seat_required
def job_detail(request: SeatRequest, prompt_id: str) -> JsonResponse:
    job = job_for_seat(request, prompt_id)
    if job is None:
        return api_error(404, "not_found", "No such job for this seat.")
    data = job.summary()
    if job.status == Job.Status.QUEUED:
        # Jobs of the workshop still waiting that were queued before this one: its place under fifo, an
        # upper bound under round robin (where a seat with less GPU time goes sooner).
        data["queued_ahead"] = Job.objects.filter(
            workshop_id=job.workshop_id, status=Job.Status.QUEUED, id__lt=job.pk
        ).count()
    data["artifacts"] = [
        {"filename": a.filename, "subfolder": a.subfolder, "kind": a.kind, "size": a.size, "sha256": a.sha256}
        for a in job.artifacts.all()
    ]
    return JsonResponse(data)


@require_POST
@seat_required
def job_cancel(request: SeatRequest, prompt_id: str) -> JsonResponse:
    job = job_for_seat(request, prompt_id)
    if job is None:
        return api_error(404, "not_found", "No such job for this seat.")
    if not cancel_job(job, by="participant"):
        return api_error(409, "already_finished", f"The job has already ended ({job.get_status_display()}).")
    job.refresh_from_db()
    return JsonResponse(job.summary())


def _queue_item(job: Job) -> list:
    return [job.number, str(job.prompt_id), job.prompt, {"client_id": job.client_id}, job.outputs_to_execute]


@require_http_methods(["GET", "POST"])
@seat_required
def queue(request: SeatRequest) -> JsonResponse:
    """ComfyUI's ``/queue`` for this seat: GET lists, POST ``{delete: [ids]}`` / ``{clear: true}`` cancels."""
    mine = Job.objects.filter(seat=request.seat)
    if request.method == "POST":
        try:
            edit = jsonbody.parse(request.body, ListEdit, empty={})
        except jsonbody.InvalidJSON as exc:
            return api_error(400, "invalid_json", str(exc))
        targets = mine.filter(status=Job.Status.QUEUED)
        if not edit.clear:
            targets = targets.filter(prompt_id__in=_uuids(edit.delete))
        for job in targets.select_related("seat"):
            cancel_job(job, by="participant")
        return JsonResponse({})
    running = mine.filter(status__in=Job.ACTIVE).order_by("id")
    pending = mine.filter(status=Job.Status.QUEUED).order_by("id")
    return JsonResponse(
        {"queue_running": [_queue_item(j) for j in running], "queue_pending": [_queue_item(j) for j in pending]}
    )


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _uuids(ids: list[str]) -> list[uuid.UUID]:
    """The ids that are prompt ids; ComfyUI too passes over one it does not know."""
    return [u for u in (_uuid(i) for i in ids) if u]


class ListEdit(jsonbody.Body):
    """``POST /queue`` and ``/history`` as ComfyUI's frontend sends them: ``{delete: [ids]}`` or ``{clear: true}``."""

    delete: list[str] = Field(default_factory=list, description="a list of prompt ids")
    clear: bool = Field(default=False, description="true or false")


class Interrupt(jsonbody.Body):
    """``POST /interrupt``: the seat's running job, or the one named (ComfyUI ≥ 0.3.4x sends its prompt_id)."""

    prompt_id: str | None = Field(default=None, description="a prompt id")


@require_POST
@seat_required
def interrupt(request: SeatRequest) -> JsonResponse:
    """ComfyUI's ``/interrupt`` for this seat: stops its running job (or the one named by prompt_id)."""
    try:
        which = jsonbody.parse(request.body, Interrupt, empty={})
    except jsonbody.InvalidJSON as exc:
        return api_error(400, "invalid_json", str(exc))
    running = Job.objects.select_related("seat", "backend").filter(seat=request.seat, status__in=Job.ACTIVE)
    if which.prompt_id is not None:
        running = running.filter(prompt_id=_uuid(which.prompt_id) or uuid.UUID(int=0))
    for job in running:
        cancel_job(job, by="participant")
    return JsonResponse({})


@require_http_methods(["GET", "POST"])
@seat_required
def history(request: SeatRequest, prompt_id: str | None = None) -> JsonResponse:
    """ComfyUI's ``/history`` for this seat's finished jobs; POST ``{delete: [ids]}`` / ``{clear: true}``
    removes them from the list (outputs stay, for the instructor's gallery)."""
    if request.method == "POST":
        try:
            edit = jsonbody.parse(request.body, ListEdit, empty={})
        except jsonbody.InvalidJSON as exc:
            return api_error(400, "invalid_json", str(exc))
        finished = Job.objects.filter(seat=request.seat, status__in=Job.TERMINAL)
        if not edit.clear:
            finished = finished.filter(prompt_id__in=_uuids(edit.delete))
        finished.update(hidden=True)
        return JsonResponse({})
    jobs = Job.objects.filter(seat=request.seat, status__in=Job.TERMINAL, hidden=False).order_by("-id")
    if prompt_id is not None:
        key = _uuid(prompt_id)
        jobs = jobs.filter(prompt_id=key) if key else jobs.none()
    try:
        limit = max(1, min(int(request.GET.get("max_items", HISTORY_LIMIT)), HISTORY_LIMIT))
    except ValueError:
        limit = HISTORY_LIMIT
    out = {}
    for job in jobs[:limit]:
        ok = job.status == Job.Status.SUCCEEDED
        out[str(job.prompt_id)] = {
            "prompt": _queue_item(job),
            "outputs": job.outputs,
            "status": {"status_str": "success" if ok else "error", "completed": ok, "messages": []},
            "meta": {},
        }
    return JsonResponse(out)


@require_GET
@seat_required
def object_info(request: SeatRequest) -> HttpResponse:
    workshop = request.seat.workshop
    backend = workshop.primary_backend()
    info = object_info_for(backend) if backend else None
    if info is None:
        # The primary has not reported yet (a serverless deployment still starting): another of the workshop's
        # backends' node list is better than a ComfyUI that cannot load.
        for other in workshop.backends.order_by("-enabled", "order"):
            info = cached_object_info(other)
            if info is not None:
                break
    if info is None:
        return api_error(
            503, "no_object_info", "The GPU has not reported its nodes yet. Please wait a minute and reload."
        )
    return JsonResponse(info)


@require_GET
@seat_required
def view(request: SeatRequest) -> HttpResponseBase:
    """An output of this seat's jobs, as ComfyUI's ``/view?filename&subfolder&type=output`` names it."""
    filename, subfolder = request.GET.get("filename", ""), request.GET.get("subfolder", "")
    if request.GET.get("type", "output") not in ("output", "temp"):
        return api_error(400, "bad_type", "Only outputs are kept by the hub.")
    try:
        # A NUL would otherwise reach the database (PostgreSQL refuses it: a 500, not a 404).
        check_name(filename)
        check_path(subfolder)
    except NameProblem as exc:
        return api_error(400, "bad_filename", str(exc))
    artifact = (
        Artifact.objects.filter(job__seat=request.seat, filename=filename, subfolder=subfolder).order_by("-id").first()
    )
    if artifact is None:
        return api_error(404, "not_found", "No such output for this seat.")
    try:
        # Streamed chunk by chunk (daphne would otherwise read a whole video into memory), with ranges.
        return artifact_response(request, artifact)
    except Http404:
        return api_error(404, "not_found", "The output file is missing from storage.")
