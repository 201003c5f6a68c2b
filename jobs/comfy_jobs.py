"""ComfyUI's Jobs API for one seat (``/api/jobs``, ``/api/jobs/{id}``, ``…/cancel``), as newer frontends call it.

The contract is upstream ComfyUI's ``server.py`` and ``comfy_execution/jobs.py`` (the Jobs API of December 2025,
recorded from 0.12.1 in ../shared/fixtures/comfyui-0.12.1/), answered from the seat's own :class:`Job` rows:

- list: ``{"jobs": [...], "pagination": {"offset", "limit", "total", "has_more"}}``; filters ``status`` (comma
  separated: pending, in_progress, completed, failed, cancelled) and ``workflow_id``; ``sort_by`` created_at or
  execution_duration, ``sort_order`` desc or asc; ``limit`` (none by default) and ``offset``; ComfyUI's error
  bodies (``{"error": "…"}``, 400) for a bad value;
- a job: ``id, status, priority, create_time`` (ms), ``outputs_count``, ``previewable_outputs_count``,
  ``workflow_id``; an ended one also ``execution_start_time``, ``execution_end_time``, ``execution_error``,
  ``preview_output``. A field without a value is left out, never null;
- detail: the same plus ``outputs``, ``execution_status`` and ``workflow: {prompt, extra_data}``; 404
  ``{"error": "Job not found"}``;
- cancel: ``POST /api/jobs/{id}/cancel`` → ``{"cancelled": bool}``; ``POST /api/jobs/cancel`` with
  ``{"job_ids": [...]}``.

Where the hub's jobs differ from a ComfyUI queue: a job the hub is handing to a GPU (*Starting*) is
``in_progress``, as in ``/queue``; *Interrupted* and *Cancelled* are ``cancelled`` (ComfyUI: an interrupted
execution); *Timed out* is ``failed``. A job removed from the participant's history (``POST /history``) is
gone from this list too, as in ComfyUI. Outputs are the participant's view of them (no host paths).
"""

from __future__ import annotations

import re
from typing import Any

from django.http import JsonResponse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from comfyume import jsonbody

from .api import job_for_seat
from .auth import SeatRequest, seat_required
from .models import Job
from .services import cancel_job

STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
_OURS = {
    "pending": (Job.Status.QUEUED,),
    "in_progress": Job.ACTIVE,
    "completed": (Job.Status.SUCCEEDED,),
    "failed": (Job.Status.FAILED, Job.Status.TIMED_OUT),
    "cancelled": (Job.Status.CANCELLED, Job.Status.INTERRUPTED),
}
_THEIRS = {ours: theirs for theirs, statuses in _OURS.items() for ours in statuses}
PREVIEW_MEDIA = ("images", "video", "audio", "3d", "text")
MODEL_SUFFIXES = (".obj", ".fbx", ".gltf", ".glb", ".usdz")
TEXT_SUFFIXES = (".txt", ".md", ".json")
TEXT_PREVIEW_CHARS = 1024
# extra_data keys ComfyUI never hands back (credentials a frontend may send along with a prompt).
SENSITIVE = re.compile(r"api_key|auth_token|secret|password", re.IGNORECASE)
CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def error(message: str, status: int = 400, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": message, **extra}, status=status)


def _ms(moment: Any) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def _previewable(media: str, item: dict[str, Any]) -> bool:
    filename = str(item.get("filename", "")).lower()
    content_format = str(item.get("format", ""))
    return (
        media in PREVIEW_MEDIA
        or content_format.startswith(("video/", "audio/"))
        or filename.endswith(MODEL_SUFFIXES + TEXT_SUFFIXES)
    )


def _output_items(outputs: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(node id, media key, item) for every list item of every node's outputs, as ComfyUI walks them."""
    found = []
    for node_id, node_outputs in (outputs or {}).items():
        if not isinstance(node_outputs, dict):
            continue
        for media, items in node_outputs.items():
            if media == "animated" or not isinstance(items, list):
                continue
            found += [(str(node_id), media, item) for item in items if item is not None]
    return found


def counts_and_preview(outputs: dict[str, Any]) -> tuple[int, int, dict[str, Any] | None]:
    """``outputs_count``, ``previewable_outputs_count`` and ``preview_output`` as ComfyUI picks it: the first saved
    output that shows as media, else another visual one (a preview), else a saved text file, else raw text."""
    total = previewable = 0
    saved: dict[str, Any] | None = None
    visual = text_file = raw_text = saved
    for node_id, media, item in _output_items(outputs):
        if isinstance(item, str):
            if media == "3d":
                total += 1
                previewable += 1
                item = {"filename": item, "type": "output", "subfolder": "", "mediaType": "3d"}
            elif media == "text":
                if raw_text is None:
                    raw_text = {"content": item[:TEXT_PREVIEW_CHARS], "nodeId": node_id, "mediaType": "text"}
                    if len(item) > TEXT_PREVIEW_CHARS:
                        raw_text["truncated"] = True
                continue
            else:
                continue
        if not isinstance(item, dict):
            continue
        total += 1
        if not _previewable(media, item):
            continue
        previewable += 1
        chosen = {**item, "nodeId": node_id, "mediaType": item.get("mediaType", media)}
        is_text = media == "text" or str(item.get("filename", "")).lower().endswith(TEXT_SUFFIXES)
        if is_text:
            text_file = text_file or chosen
        elif item.get("type") == "output":
            saved = saved or chosen
        else:
            visual = visual or chosen
    return total, previewable, saved or visual or text_file or raw_text


def _workflow_id(job: Job) -> str | None:
    workflow = ((job.extra_data or {}).get("extra_pnginfo") or {}).get("workflow")
    value = workflow.get("id") if isinstance(workflow, dict) else None
    return str(value) if value is not None else None


def _execution_error(job: Job) -> dict[str, Any] | None:
    """The failed node's ``execution_error`` message, as ComfyUI keeps it; None for a failure of the platform's own
    (a GPU that stopped answering, a timeout), which a ComfyUI could not have had. Newer frontends validate the
    whole list against this shape, so one job's error of another shape would empty their job history."""
    error = job.error if isinstance(job.error, dict) else {}
    texts = ("node_id", "node_type", "exception_message", "exception_type")
    if all(isinstance(error.get(key), str) for key in texts) and isinstance(error.get("traceback"), list):
        return error
    return None


def describe(job: Job) -> dict[str, Any]:
    """One job as ComfyUI's list names it (fields without a value left out)."""
    status = _THEIRS[Job.Status(job.status)]
    data: dict[str, Any] = {
        "id": str(job.prompt_id),
        "status": status,
        "priority": job.number,
        "create_time": _ms(job.created_at),
        "outputs_count": 0,
        "previewable_outputs_count": 0,
        "workflow_id": _workflow_id(job),
    }
    if job.status in Job.TERMINAL:
        total, previewable, preview = counts_and_preview(job.outputs)
        data.update(
            execution_start_time=_ms(job.started_at),
            execution_end_time=_ms(job.finished_at),
            outputs_count=total,
            previewable_outputs_count=previewable,
            preview_output=preview,
            execution_error=_execution_error(job) if status == "failed" else None,
        )
    return {key: value for key, value in data.items() if value is not None}


def _duration(data: dict[str, Any]) -> int:
    start, end = data.get("execution_start_time"), data.get("execution_end_time")
    return end - start if start is not None and end is not None else 0


def _visible(request: SeatRequest):  # type: ignore[no-untyped-def]
    """The seat's jobs, without those it removed from its history."""
    return Job.objects.filter(seat=request.seat).exclude(status__in=Job.TERMINAL, hidden=True)


@require_GET
@seat_required
def job_list(request: SeatRequest) -> JsonResponse:
    query = request.GET
    wanted = [value.strip().lower() for value in query.get("status", "").split(",") if value.strip()]
    bad = [value for value in wanted if value not in STATUSES]
    if bad:
        return error(f"Invalid status value(s): {', '.join(bad)}. Valid values: {', '.join(STATUSES)}")
    sort_by = query.get("sort_by", "created_at").lower()
    if sort_by not in ("created_at", "execution_duration"):
        return error("sort_by must be 'created_at' or 'execution_duration'")
    sort_order = query.get("sort_order", "desc").lower()
    if sort_order not in ("asc", "desc"):
        return error("sort_order must be 'asc' or 'desc'")
    limit: int | None = None
    if query.get("limit") is not None:
        try:
            limit = int(query["limit"])
        except ValueError:
            return error("limit must be an integer")
        if limit <= 0:
            return error("limit must be a positive integer")
    try:
        offset = max(0, int(query.get("offset", 0)))
    except ValueError:
        return error("offset must be an integer")

    jobs = _visible(request)
    if wanted:
        jobs = jobs.filter(status__in=[ours for theirs in wanted for ours in _OURS[theirs]])
    workflow_id = query.get("workflow_id")
    descending = sort_order == "desc"
    if sort_by == "created_at" and not workflow_id:
        # In the database: the frontend asks for the running and waiting ones every few seconds.
        total = jobs.count()
        ordered = jobs.order_by("-created_at" if descending else "created_at", "-id" if descending else "id")
        end = total if limit is None else min(total, offset + limit)  # a huge number never reaches the database
        page = [describe(job) for job in ordered[offset:end]] if offset < total else []
    else:
        # One seat's jobs of a day, described and then filtered and sorted as ComfyUI does (a JSON path lookup
        # on workflow_id would compare types differently on SQLite and PostgreSQL).
        described = [describe(job) for job in jobs.order_by("created_at", "id")]
        if workflow_id:
            described = [job for job in described if job.get("workflow_id") == workflow_id]
        key = _duration if sort_by == "execution_duration" else (lambda job: job["create_time"])
        described.sort(key=key, reverse=descending)
        total = len(described)
        page = described[offset:][:limit]
    pagination = {"offset": offset, "limit": limit, "total": total, "has_more": offset + len(page) < total}
    return JsonResponse({"jobs": page, "pagination": pagination})


def _find(request: SeatRequest, job_id: str) -> Job | None:
    """The seat's job by its id as ComfyUI's queue and history key it (the canonical lowercase form only)."""
    return job_for_seat(request, job_id) if CANONICAL_UUID.fullmatch(job_id) else None


@require_GET
@seat_required
def job_detail(request: SeatRequest, job_id: str) -> JsonResponse:
    job = _find(request, job_id)
    if job is None or (job.hidden and job.status in Job.TERMINAL):  # removed from the history: gone, as there
        return error("Job not found", 404)
    data = describe(job)
    extra_data = {key: value for key, value in (job.extra_data or {}).items() if not SENSITIVE.search(key)}
    data["workflow"] = {"prompt": job.prompt, "extra_data": extra_data}
    if job.status in Job.TERMINAL:
        ok = job.status == Job.Status.SUCCEEDED
        data["outputs"] = job.outputs
        data["execution_status"] = {"status_str": "success" if ok else "error", "completed": ok, "messages": []}
    return JsonResponse(data)


def _cancel(request: SeatRequest, job_id: str) -> bool:
    job = _find(request, job_id)
    return job is not None and job.status not in Job.TERMINAL and cancel_job(job, by="participant")


@require_POST
@seat_required
def job_cancel(request: SeatRequest, job_id: str) -> JsonResponse:
    """ComfyUI answers 200 whatever the id: ``cancelled`` says whether a waiting or running job was stopped."""
    return JsonResponse({"cancelled": _cancel(request, job_id)})


@require_http_methods(["GET", "POST"])
@seat_required
def jobs_cancel(request: SeatRequest) -> JsonResponse:
    if request.method == "GET":  # ComfyUI: GET /api/jobs/cancel asks for a job called "cancel"
        return error("Job not found", 404)
    try:
        body = jsonbody.loads(request.body)
    except jsonbody.InvalidJSON:
        return error("Request body must be valid JSON")
    ids = body.get("job_ids") if isinstance(body, dict) else None
    if not isinstance(ids, list):
        return error("job_ids must be a list")
    invalid = [
        i if isinstance(i, str) else repr(i) for i in ids if not (isinstance(i, str) and CANONICAL_UUID.fullmatch(i))
    ]
    if invalid:
        return error("job_ids contains invalid id(s)", invalid_ids=invalid)
    cancelled = [_cancel(request, job_id) for job_id in ids]
    return JsonResponse({"cancelled": any(cancelled)})
