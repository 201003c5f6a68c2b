"""The instructor's live dashboard of a workshop, inside the admin: the page, its JSON snapshot, and the
actions it offers (cancel, queue again, instructor lane, pause/resume, announce, withdraw).

Staff only, and only staff who may view workshops (to look) or change them (to act). Every action is one
POST of JSON ``{"action": ..., ...}`` with the CSRF token, answers JSON ``{ok, message, ...}`` and leaves
one audit entry per job, workshop or announcement it changed. A request that cannot be carried out as a
whole (an unknown action, a job of another workshop, a job in the wrong state) is refused with a 4xx and
changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_POST, require_safe

from jobs.instructor import RESUBMITTABLE, can_resubmit, cancel_outcome, move_to_lane, resubmit_job, set_paused
from jobs.models import Job
from jobs.services import SubmissionRejected, cancel_job

from . import audit
from .dashboard import build_snapshot
from .models import Announcement, QueuePolicy, Workshop
from .services import WorkshopError, announcement_changed, post_announcement

# A bulk action names at most this many jobs: the default cap on a workshop's queue.
MAX_JOBS_PER_ACTION = 500
MAX_ANNOUNCEMENT = Announcement._meta.get_field("message").max_length or 500


class Refused(Exception):
    """An action the dashboard will not carry out: its HTTP status, a code, and the sentence to show."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _get_workshop_for_staff(request: HttpRequest, slug: str) -> Workshop:
    if not request.user.has_perm("workshops.view_workshop"):
        raise PermissionDenied
    return get_object_or_404(Workshop, slug=slug)


@staff_member_required
@require_safe
def dashboard(request: HttpRequest, slug: str) -> HttpResponse:
    """The live page: rendered with a first snapshot, then kept current by its script over the socket."""
    workshop = _get_workshop_for_staff(request, slug)
    return render(
        request,
        "workshops/dashboard.html",
        {
            **admin.site.each_context(request),
            "title": f"Live dashboard: {workshop}",
            "workshop": workshop,
            "snapshot": build_snapshot(workshop, request),
            "may_act": request.user.has_perm("workshops.change_workshop"),
            "socket_path": f"/ws/hub/workshops/{workshop.slug}/",
            "audit_url": reverse("admin:workshops_auditentry_changelist") + f"?workshop__id__exact={workshop.pk}",
            "max_announcement": MAX_ANNOUNCEMENT,
            # The sidebar would squeeze the tables on a laptop projector.
            "is_nav_sidebar_enabled": False,
        },
    )


@staff_member_required
@require_safe
def snapshot(request: HttpRequest, slug: str) -> JsonResponse:
    """What the page shows, as JSON (the page fetches it again after every job event)."""
    workshop = _get_workshop_for_staff(request, slug)
    response = JsonResponse(build_snapshot(workshop, request))
    response["Cache-Control"] = "no-store"
    return response


@staff_member_required
@require_POST
def act(request: HttpRequest, slug: str) -> JsonResponse:
    """Carry out one action on one or many jobs of the workshop, or on the workshop itself."""
    try:
        if not request.user.has_perm("workshops.change_workshop"):
            raise Refused(403, "forbidden", "Your account may look at this workshop but not run it.")
        workshop = Workshop.objects.filter(slug=slug).first()
        if workshop is None:
            raise Refused(404, "no_workshop", f"There is no workshop called {slug!r}.")
        body = _body(request)
        action = body.get("action")
        handler = ACTIONS.get(action) if isinstance(action, str) else None
        if handler is None:
            raise Refused(400, "unknown_action", f"Unknown action {action!r}; expected one of {', '.join(ACTIONS)}.")
        return JsonResponse({"ok": True, "action": action, **handler(request, workshop, body)})
    except Refused as exc:
        return JsonResponse({"ok": False, "error": exc.code, "message": exc.message}, status=exc.status)


def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"null")
    except ValueError:
        raise Refused(400, "invalid_json", "The request body is not valid JSON.")
    if not isinstance(body, dict):
        raise Refused(400, "invalid_json", 'Send a JSON object such as {"action": "pause"}.')
    return body


def _jobs(workshop: Workshop, body: dict[str, Any]) -> list[Job]:
    """The jobs ``body["jobs"]`` names, in that order; every one must exist and belong to the workshop."""
    ids = body.get("jobs")
    if (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in ids)
    ):
        raise Refused(400, "no_jobs", 'Name the jobs by number: {"jobs": [12, 15]}.')
    ids = list(dict.fromkeys(ids))
    if len(ids) > MAX_JOBS_PER_ACTION:
        raise Refused(400, "too_many_jobs", f"At most {MAX_JOBS_PER_ACTION} jobs at once, not {len(ids)}.")
    found = {job.pk: job for job in Job.objects.filter(pk__in=ids).select_related("seat__workshop", "backend")}
    missing = [pk for pk in ids if pk not in found]
    if missing:
        raise Refused(404, "no_such_job", f"There is no job {_numbers(missing)}; nothing was changed.")
    elsewhere = [pk for pk in ids if found[pk].workshop_id != workshop.pk]
    if elsewhere:
        raise Refused(
            404, "other_workshop", f"Job {_numbers(elsewhere)} is not in {workshop.slug}; nothing was changed."
        )
    return [found[pk] for pk in ids]


def _numbers(ids: list[int]) -> str:
    return ", ".join(f"#{pk}" for pk in ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")


def _name(job: Job) -> str:
    return f"job #{job.pk} of {job.seat.label}"


def _names(jobs: list[Job]) -> str:
    shown = ", ".join(f"{_name(job)} ({job.get_status_display()})" for job in jobs[:5])
    return shown + (f" and {len(jobs) - 5} more" if len(jobs) > 5 else "")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _via(details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**(details or {}), "via": "dashboard"}


# --- Actions -----------------------------------------------------------------------------------------


def cancel(request: HttpRequest, workshop: Workshop, body: dict[str, Any]) -> dict[str, Any]:
    """Waiting jobs leave the queue; running ones are stopped on their GPU (they end as interrupted)."""
    jobs = _jobs(workshop, body)
    ended = [job for job in jobs if not job.can_cancel()]
    if ended:
        raise Refused(409, "already_ended", f"Nothing was cancelled: {_names(ended)} had already ended.")
    results, entries = [], []
    for job in jobs:
        accepted = cancel_job(job, by="instructor")
        result, summary = cancel_outcome(job, accepted)  # worded as the Jobs admin words it
        results.append({"job": job.pk, "result": result})
        entries.append(
            audit.build(
                request.user,
                "job.cancel",
                summary,
                workshop=workshop,
                target=job,
                details=_via({"result": result, "status": job.status}),
            )
        )
    audit.record_all(entries)
    counts = {
        r: sum(1 for x in results if x["result"] == r) for r in ("cancelled", "stop_requested", "already_finished")
    }
    parts = []
    if counts["cancelled"]:
        parts.append(f"Cancelled {_plural(counts['cancelled'], 'waiting job')}")
    if counts["stop_requested"]:
        parts.append(f"asked the GPU to stop {_plural(counts['stop_requested'], 'running job')}")
    if counts["already_finished"]:
        parts.append(f"{_plural(counts['already_finished'], 'job')} had ended meanwhile")
    message = "; ".join(parts) + "."
    return {"message": message[0].upper() + message[1:], "results": results}


def requeue(request: HttpRequest, workshop: Workshop, body: dict[str, Any]) -> dict[str, Any]:
    """Ended jobs are queued again as new jobs of their seats; all of them or, if one is refused, none."""
    jobs = _jobs(workshop, body)
    wrong = [job for job in jobs if not can_resubmit(job)]
    if wrong:
        allowed = ", ".join(Job.Status(s).label.lower() for s in RESUBMITTABLE)
        raise Refused(
            409, "not_ended", f"Only {allowed} jobs can be queued again; nothing was queued: {_names(wrong)}."
        )
    pairs = []
    with transaction.atomic():
        for job in jobs:
            try:
                new = resubmit_job(job, by=request.user.get_username())
            except SubmissionRejected as exc:
                # Leaving the atomic block by this exception undoes the jobs queued before this one.
                raise Refused(409, "refused", f"Nothing was queued again: {_name(job)} was refused: {exc}")
            pairs.append((job, new))
        audit.record_all(
            audit.build(
                request.user,
                "job.requeue",
                f"Queued job #{old.pk} of {old.seat} again as job #{new.pk}",
                workshop=workshop,
                target=old,
                details=_via({"new_job": new.pk, "previous_status": old.status}),
            )
            for old, new in pairs
        )
    if len(pairs) == 1:
        old, new = pairs[0]
        message = f"Queued {_name(old)} again as job #{new.pk}."
    else:
        message = f"Queued {_plural(len(pairs), 'job')} again as new jobs {_numbers([new.pk for _, new in pairs])}."
    return {"message": message, "jobs": [{"from": old.pk, "to": new.pk} for old, new in pairs]}


def lane(request: HttpRequest, workshop: Workshop, body: dict[str, Any]) -> dict[str, Any]:
    """Waiting jobs move to the instructor lane: under the priority policy they start before every other."""
    jobs = _jobs(workshop, body)
    not_waiting = [job for job in jobs if job.status != Job.Status.QUEUED]
    if not_waiting:
        raise Refused(
            409,
            "not_waiting",
            f"Only waiting jobs can move to the instructor lane; nothing moved: {_names(not_waiting)}.",
        )
    todo = [job for job in jobs if not job.instructor_lane]
    if not todo:
        raise Refused(409, "already_in_lane", "Those jobs are already in the instructor lane.")
    with transaction.atomic():
        moved = set(move_to_lane(workshop, [job.pk for job in todo]))
        audit.record_all(
            audit.build(
                request.user,
                "job.lane",
                f"Moved job #{job.pk} of {job.seat} to the instructor lane",
                workshop=workshop,
                target=job,
                details=_via({"policy": workshop.queue_policy}),
            )
            for job in todo
            if job.pk in moved
        )
    message = f"Moved {_plural(len(moved), 'job')} to the instructor lane."
    if len(moved) < len(todo):
        message += f" {_plural(len(todo) - len(moved), 'job')} had started meanwhile and did not move."
    result: dict[str, Any] = {"message": message, "moved": sorted(moved)}
    if workshop.queue_policy != QueuePolicy.PRIORITY:
        result["warning"] = (
            f"This workshop's policy is “{workshop.get_queue_policy_display()}”: the lane only goes first under "
            f"“{QueuePolicy.PRIORITY.label}”, so these jobs keep their place until you change the policy."
        )
    return result


def _pause_or_resume(request: HttpRequest, workshop: Workshop, paused: bool) -> dict[str, Any]:
    verb = "Paused" if paused else "Resumed"
    # Counted first: on resume the scheduler claims waiting jobs as soon as the change commits.
    waiting = Job.objects.filter(workshop=workshop, status=Job.Status.QUEUED).count()
    with transaction.atomic():
        if not set_paused(workshop, paused):
            state = "paused" if paused else "running (not paused)"
            raise Refused(409, "no_change", f"The queue of {workshop.slug} is already {state}.")
        audit.record(
            request.user,
            "workshop.pause" if paused else "workshop.resume",
            f"{verb} the queue of {workshop.slug}",
            workshop=workshop,
            target=workshop,
            details=_via({"changes": {"paused": {"old": not paused, "new": paused}}}),
        )
    if paused:
        running = Job.objects.filter(workshop=workshop, status__in=Job.ACTIVE).count()
        message = f"Paused the queue of {workshop.slug}: no waiting job starts until you resume"
        message += f" ({waiting} waiting now)" if waiting else ""
        message += f"; {_plural(running, 'running job')} will finish." if running else "."
    elif waiting:
        message = f"Resumed the queue of {workshop.slug}: {_plural(waiting, 'waiting job')} can start now."
    else:
        message = f"Resumed the queue of {workshop.slug}: new jobs start as soon as a GPU slot is free."
    return {"message": message, "paused": paused}


def pause(request: HttpRequest, workshop: Workshop, body: dict[str, Any]) -> dict[str, Any]:
    return _pause_or_resume(request, workshop, True)


def resume(request: HttpRequest, workshop: Workshop, body: dict[str, Any]) -> dict[str, Any]:
    return _pause_or_resume(request, workshop, False)


def announce(request: HttpRequest, workshop: Workshop, body: dict[str, Any]) -> dict[str, Any]:
    """A note shown at once in every participant's ComfyUI banner (workshops.services.post_announcement)."""
    text = body.get("message")
    if not isinstance(text, str) or not text.strip():
        raise Refused(400, "no_message", "Write the announcement first.")
    text = text.strip()
    if len(text) > MAX_ANNOUNCEMENT:
        raise Refused(
            400, "message_too_long", f"An announcement has at most {MAX_ANNOUNCEMENT} characters, not {len(text)}."
        )
    with transaction.atomic():
        try:
            note = post_announcement(workshop, text, by=request.user)
        except WorkshopError as exc:
            raise Refused(400, "no_message", str(exc))
        audit.record(
            request.user,
            "announcement.post",
            f"Posted an announcement to {workshop.slug}: “{audit.clip(text, 80)}”",
            workshop=workshop,
            target=note,
            details=_via({"message": text}),
        )
    return {"message": "Posted: every participant's ComfyUI shows it now.", "announcement": note.pk}


def withdraw(request: HttpRequest, workshop: Workshop, body: dict[str, Any]) -> dict[str, Any]:
    """Take an announcement off every participant's banner."""
    pk = body.get("announcement")
    note = (
        Announcement.objects.select_related("workshop").filter(pk=pk, workshop=workshop).first()
        if isinstance(pk, int) and not isinstance(pk, bool)
        else None
    )
    if note is None:
        raise Refused(404, "no_announcement", f"There is no announcement {pk!r} in {workshop.slug}.")
    with transaction.atomic():
        if Announcement.objects.filter(pk=note.pk, active=True).update(active=False) != 1:
            raise Refused(409, "no_change", "That announcement was already withdrawn.")
        note.active = False
        announcement_changed(note)
        audit.record(
            request.user,
            "announcement.withdraw",
            f"Withdrew the announcement “{audit.clip(note.message, 80)}” from {workshop.slug}",
            workshop=workshop,
            target=note,
            details=_via(),
        )
    return {"message": "Withdrawn: it is gone from every participant's banner."}


ACTIONS: dict[str, Callable[[HttpRequest, Workshop, dict[str, Any]], dict[str, Any]]] = {
    "cancel": cancel,
    "requeue": requeue,
    "lane": lane,
    "pause": pause,
    "resume": resume,
    "announce": announce,
    "withdraw": withdraw,
}
