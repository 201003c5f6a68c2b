"""Job operations: submit (with preflight and caps), cancel, finish, requeue — each one atomic.

Views, the RQ task, the reconciler, admin actions and management commands call these; none of them
changes a job's status any other way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from comfyume import jsonbody
from gpu_backends.client import BackendError
from gpu_backends.kinds import provider_for
from gpu_backends.models import GpuBackend
from gpu_backends.services import object_info_for
from workshops.models import Seat, Workshop

from . import events, sql, trace
from .models import Job
from .preflight import PromptValidationError, error_body, validate_prompt
from .scheduler import schedule

log = logging.getLogger(__name__)


class SubmissionRejected(Exception):
    """A prompt the hub will not queue; ``body`` is a ComfyUI-shaped error envelope."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body["error"]["message"])
        self.status = status
        self.body = body


def _reject(status: int, type_: str, message: str, details: str = "") -> SubmissionRejected:
    return SubmissionRejected(status, error_body(type_, message, details))


def prompt_too_large(size: int | None, limit: int) -> SubmissionRejected:
    """The 413 for a prompt body over ``limit`` bytes; ``size`` is None when it was not declared (chunked)."""
    amount = f"{size / 1e6:.1f} MB" if size is not None else f"over {limit / 1e6:.0f} MB"
    return _reject(
        413,
        "prompt_too_large",
        f"This workflow is {amount}; the limit is {limit / 1e6:.0f} MB.",
        "Remove embedded images or large text from the workflow and try again.",
    )


def parse_prompt_request(read: Callable[[int], bytes], size: int | None = None) -> dict[str, Any]:
    """Size and shape checks on a ``POST /prompt`` body, before anything touches the database.

    Reads the body through ``read`` (the request's own), at most one byte past the limit: a larger body is
    refused without ever being held whole (Django's ``request.body`` would read it all, or answer its own HTML
    400 above DATA_UPLOAD_MAX_MEMORY_SIZE). ``size`` is the declared Content-Length, for the message.
    """
    limit = settings.COMFYUME["MAX_PROMPT_BYTES"]
    if size is not None and size > limit:
        raise prompt_too_large(size, limit)
    raw = read(limit + 1)
    if len(raw) > limit:
        raise prompt_too_large(size, limit)
    if not raw.strip():
        raise _reject(400, "invalid_json", "The request body is empty; expected a JSON object with a 'prompt'.")
    try:
        body = jsonbody.loads(raw)
    except jsonbody.InvalidJSON as exc:
        raise _reject(400, "invalid_json", str(exc)[:300]) from None
    if not isinstance(body, dict):
        raise _reject(400, "invalid_prompt", "The request body must be a JSON object with a 'prompt' key.")
    if "prompt" not in body:
        # ComfyUI's own answer, word for word.
        raise _reject(400, "no_prompt", "No prompt provided", "No prompt provided")
    return body


def _check_caps(workshop: Workshop, waiting: int, depth: int) -> None:
    """The seat's jobs waiting and the workshop's, against their caps."""
    if waiting >= workshop.max_queued_per_seat:
        raise _reject(
            429,
            "seat_queue_full",
            f"You already have {waiting} jobs waiting (the limit is {workshop.max_queued_per_seat}). "
            "Wait for one to start before queueing another.",
        )
    if depth >= workshop.max_queue_depth:
        raise _reject(
            429,
            "workshop_queue_full",
            f"The workshop queue is full ({depth} jobs waiting). Please try again in a minute.",
        )


def _named_files(prompt: Any) -> list[str]:
    """The file names a prompt may mean: LoadImage and friends name an upload by its name, optionally annotated
    `` [input]``."""
    if not isinstance(prompt, dict):
        return []
    names = set()
    for node in prompt.values():
        values = node.get("inputs") if isinstance(node, dict) else None
        for value in values.values() if isinstance(values, dict) else ():
            if isinstance(value, str) and 0 < len(value) <= 320:
                names.add(value.removesuffix(" [input]"))
    return sorted(names)


_UPLOAD_FIELDS = ("name", "key", "sha256", "size", "content_type")  # what a job keeps of each upload it uses


def submit_prompt(seat: Seat, body: dict[str, Any], *, instructor_lane: bool = False, priority: int = 0) -> Job:
    """Validate and queue a prompt for ``seat``; answers like ComfyUI's ``POST /prompt``.

    Raises SubmissionRejected (400 ComfyUI node_errors, 413, 429, 503) and queues nothing in that case.
    """
    workshop = seat.workshop
    if workshop.archived_at is not None:
        raise _reject(403, "workshop_archived", "This workshop has ended; its queue is closed.")
    prompt = body.get("prompt")
    backend = workshop.primary_backend()
    if backend is None:
        raise _reject(503, "no_backend", "No GPU is set up for this workshop yet. Please tell the instructor.")
    object_info = object_info_for(backend)
    outputs: list[str] = []
    if object_info is not None:
        try:
            outputs = validate_prompt(prompt, object_info)
        except PromptValidationError as exc:
            raise SubmissionRejected(400, exc.body) from None
    elif not isinstance(prompt, dict) or not prompt:
        raise _reject(400, "invalid_prompt", "The prompt must be a non-empty JSON object of nodes.")
    extra_data = body.get("extra_data") if isinstance(body.get("extra_data"), dict) else {}
    raw_client_id = body.get("client_id")
    client_id = raw_client_id[:128] if isinstance(raw_client_id, str) else ""

    names = _named_files(prompt)
    read_uploads = sql.seat_uploads(seat.pk, names, _UPLOAD_FIELDS)
    # The uploads need no lock. Where they can ride along with the lock's round trip (PostgreSQL) they do;
    # elsewhere they are read first: SQLite's transaction holds the database's one write lock.
    early = bool(names) and not sql.one_round_trip()
    uploads = sql.together([read_uploads]) if early else []
    with transaction.atomic():
        # One round trip for the reads (jobs.sql.together): the seat's usage, read fresh and locked, then its caps.
        statements = sql.submit_reads(seat.pk, workshop.pk)
        if names and not early:
            statements.append(read_uploads)
        locked, ((depth, waiting),), *late = sql.together(statements)
        uploads = uploads or late
        if not locked:
            raise _reject(403, "seat_gone", "This seat no longer exists. Please tell the instructor.")
        seat.gpu_seconds_used = _field_value(Seat, "gpu_seconds_used", locked[0][0])
        seat.cost_used = _field_value(Seat, "cost_used", locked[0][1])
        exhausted = seat.budget_exhausted()
        if exhausted:
            raise _reject(403, "budget_exhausted", exhausted)
        _check_caps(workshop, waiting, depth)
        inputs = [dict(zip(_UPLOAD_FIELDS, row, strict=True)) for row in (uploads[0] if uploads else [])]
        job = Job.objects.create(
            workshop=workshop,
            seat=seat,
            prompt=prompt,
            extra_data=extra_data,
            client_id=client_id,
            outputs_to_execute=outputs,
            inputs=inputs,
            instructor_lane=instructor_lane,
            priority=priority,
        )
        transaction.on_commit(lambda: _schedule_or_announce(job))
    log.info("Queued job %s for %s", job.pk, seat, extra={"job_id": job.pk, "seat": seat.label})
    return job


def _field_value(model: type[Any], name: str, value: Any) -> Any:
    """A column read by hand, as the ORM would have given it (SQLite has no decimal type)."""
    return model._meta.get_field(name).to_python(value)


def _schedule_or_announce(job: Job) -> None:
    """After a submit: try to start it at once. A job that got a slot was announced by its claim; the seat's
    queue counter still has to hear of the new job."""
    trace.mark(job.pk, "queued")
    if job.pk in schedule(until=job.pk):
        events.announce_queue(job)
    else:
        events.announce_job(job)


def cancel_job(job: Job, *, by: str = "participant") -> bool:
    """Cancel a waiting job at once; ask the backend to stop a running one. False if already over."""
    reason = f"Cancelled by the {by}."
    if job.status == Job.Status.QUEUED and job.transition(Job.Status.CANCELLED, reason=reason):
        _after_finish(job)
        return True
    if job.status == Job.Status.DISPATCHING and job.transition(Job.Status.CANCELLED, reason=reason):
        # Its dispatch task will find it cancelled and not start it; the slot is free now.
        _after_finish(job)
        return True
    job.refresh_status()
    if job.status not in Job.ACTIVE:
        return False
    Job.objects.filter(pk=job.pk, cancel_requested_at__isnull=True).update(cancel_requested_at=timezone.now())
    if job.backend_id and job.backend_prompt_id:
        try:
            provider_for(job.backend).cancel(job.backend_prompt_id)
        except BackendError as exc:
            # The dispatch loop sees cancel_requested_at within a second and interrupts it itself.
            log.warning("Backend refused to cancel job %s: %s", job.pk, exc, extra={"job_id": job.pk})
    return True


def finish_job(job: Job, status: str, *, reason: str = "", error: dict | None = None, **fields: Any) -> bool:
    """End a job (succeeded/failed/interrupted/timed_out), account its GPU time, free its slot."""
    with transaction.atomic():
        if not job.transition(status, reason=reason, error=error, **fields):
            return False
        if job.gpu_seconds:
            price = job.backend.price_per_hour if job.backend_id and job.backend else Decimal("0")
            cost = price * Decimal(str(job.gpu_seconds)) / 3600
            Seat.objects.filter(pk=job.seat_id).update(
                gpu_seconds_used=F("gpu_seconds_used") + job.gpu_seconds, cost_used=F("cost_used") + cost
            )
            if cost:
                Workshop.objects.filter(pk=job.workshop_id).update(cost_used=F("cost_used") + cost)
        transaction.on_commit(lambda: _after_finish(job))
    return True


def requeue_job(job: Job, reason: str, *, count_attempt: bool = True) -> bool:
    """Put a dispatching/running job back in the queue (its backend was down, or its worker died)."""
    fields: dict[str, Any] = {"backend": None, "heartbeat_at": None, "started_at": None, "dispatched_at": None}
    if not count_attempt:
        fields["attempts"] = max(job.attempts - 1, 0)
    with transaction.atomic():
        if not job.transition(Job.Status.QUEUED, reason=reason, **fields):
            return False
        transaction.on_commit(lambda: events.announce_job(job))
        transaction.on_commit(schedule)
    return True


def _after_finish(job: Job) -> None:
    events.announce_job(job)
    schedule()


# --- What participants and the instructor see -------------------------------------------------


def backend_is_available(workshop: Workshop, pinned_backend_id: int | None = None) -> bool:
    """Whether a waiting job of the workshop could start: some backend of the workshop is switched on and not
    failing — for a job pinned to a backend, that backend (and only while the workshop still uses it)."""
    backends = workshop.backends.filter(enabled=True, state__in=GpuBackend.DISPATCHABLE)
    if pinned_backend_id is not None:
        backends = backends.filter(pk=pinned_backend_id)
    return backends.exists()
