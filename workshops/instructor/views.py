"""The instructor's live dashboard of a workshop, inside the admin: the page, its JSON snapshot and charts,
and the actions it offers (cancel, queue again, instructor lane, move to another GPU backend, pause/resume,
queue policy and caps, announce, withdraw; warm up, scale to zero, switch off and on a GPU backend).

Staff only, and only staff who may view workshops (to look) or change them (to act); the backend actions
also need the permission to change GPU backends. Every action is one POST of JSON ``{"action": ..., ...}``
with the CSRF token, answers JSON ``{ok, message, ...}`` and leaves one audit entry per job, workshop,
backend or announcement it changed. A request that cannot be carried out as a whole (an unknown action, a
job of another workshop, a job in the wrong state, a backend the workshop does not use) is refused with a 4xx
and changes nothing; a backend's own refusal (Verda's API) comes back as a 502 with its message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_POST, require_safe

from comfyume import jsonbody
from gpu_backends.client import BackendError
from gpu_backends.kinds import kind_of
from gpu_backends.models import GpuBackend
from jobs.instructor import (
    QUEUE_SETTINGS,
    RESUBMITTABLE,
    NothingDone,
    can_resubmit,
    do_cancel_jobs,
    do_change_queue_settings,
    do_move_jobs,
    do_move_to_lane,
    do_requeue_jobs,
    do_scale_backend_to_zero,
    do_set_backend_enabled,
    do_set_paused,
    do_warm_backend,
)
from jobs.models import Job
from workshops.models import Announcement, QueuePolicy, Workshop
from workshops.services import WorkshopError, do_post_announcement, do_withdraw_announcement

from . import bodies
from .dashboard import build_charts, build_snapshot

# A bulk action names at most this many jobs: the default cap on a workshop's queue.
MAX_JOBS_PER_ACTION = 500
MAX_ANNOUNCEMENT = Announcement._meta.get_field("message").max_length or 500
# What the dashboard's queue form changes, validated by the same model fields (choices, minimums) as the
# Workshop admin's form.
QueueSettingsForm = forms.modelform_factory(Workshop, fields=QUEUE_SETTINGS)


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
    may_act = request.user.has_perm("workshops.change_workshop")
    return render(
        request,
        "workshops/dashboard.html",
        {
            **admin.site.each_context(request),
            "title": f"Live dashboard: {workshop}",
            "workshop": workshop,
            "snapshot": build_snapshot(workshop, request),
            "charts": build_charts(workshop),
            "may_act": may_act,
            "may_change_backends": may_act and request.user.has_perm("gpu_backends.change_gpubackend"),
            "policies": QueuePolicy.choices,
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
@require_safe
def charts(request: HttpRequest, slug: str) -> JsonResponse:
    """Throughput and latency of the last hour, as JSON (the page fetches it every 30 seconds)."""
    workshop = _get_workshop_for_staff(request, slug)
    response = JsonResponse(build_charts(workshop))
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
        unknown = Refused(
            400, "unknown_action", f"Unknown action {body.get('action')!r}; expected one of {', '.join(ACTIONS)}."
        )
        action = _read(body, bodies.Action, unknown).action
        handler = ACTIONS.get(action)
        if handler is None:
            raise unknown
        return JsonResponse({"ok": True, "action": action, **handler(request, workshop, body)})
    except Refused as exc:
        return JsonResponse({"ok": False, "error": exc.code, "message": exc.message}, status=exc.status)


def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        return jsonbody.loads_object(request.body, hint='{"action": "pause"}')
    except jsonbody.InvalidJSON as exc:
        raise Refused(400, "invalid_json", str(exc)) from None


def _read(body: dict[str, Any], schema: type[jsonbody.B], refusal: Refused) -> jsonbody.B:
    """``body`` as ``schema`` (bodies.py), or ``refusal``: the action's own code and words for a wrong shape."""
    try:
        return jsonbody.validate(body, schema)
    except jsonbody.InvalidBody:
        raise refusal from None


def _jobs(workshop: Workshop, body: dict[str, Any]) -> list[Job]:
    """The jobs ``body["jobs"]`` names, in that order; every one must exist and belong to the workshop."""
    ids = _read(body, bodies.Jobs, Refused(400, "no_jobs", 'Name the jobs by number: {"jobs": [12, 15]}.')).jobs
    if len(ids) > MAX_JOBS_PER_ACTION:
        raise Refused(400, "too_many_jobs", f"At most {MAX_JOBS_PER_ACTION} jobs at once, not {len(ids)}.")
    found = {
        job.pk: job
        for job in Job.objects.filter(pk__in=ids).select_related("seat__workshop", "backend", "pinned_backend")
    }
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


def _via() -> dict[str, Any]:
    """What every audit entry of a dashboard action adds to its details."""
    return {"via": "dashboard"}


# --- Actions -----------------------------------------------------------------------------------------


def cancel(request: HttpRequest, workshop: Workshop, body: dict[str, Any]) -> dict[str, Any]:
    """Waiting jobs leave the queue; running ones are stopped on their GPU (they end as interrupted)."""
    jobs = _jobs(workshop, body)
    ended = [job for job in jobs if not job.can_cancel()]
    if ended:
        raise Refused(409, "already_ended", f"Nothing was cancelled: {_names(ended)} had already ended.")
    outcomes = do_cancel_jobs(jobs, actor=request.user, details=_via())
    results = [{"job": job.pk, "result": result} for job, result in outcomes]
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
    try:
        pairs = do_requeue_jobs(jobs, actor=request.user, workshop=workshop, details=_via())
    except NothingDone as stop:
        raise Refused(409, "refused", f"Nothing was queued again: {_name(stop.job)} was refused: {stop.rejection}")
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
    moved = set(do_move_to_lane(workshop, todo, actor=request.user, details=_via()))
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
    # Counted first: on resume the scheduler claims waiting jobs as soon as the change commits.
    waiting = Job.objects.filter(workshop=workshop, status=Job.Status.QUEUED).count()
    if not do_set_paused(workshop, paused, actor=request.user, details=_via()):
        state = "paused" if paused else "running (not paused)"
        raise Refused(409, "no_change", f"The queue of {workshop.slug} is already {state}.")
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
    """A note shown at once in every participant's ComfyUI banner (workshops.services.do_post_announcement)."""
    text = _read(body, bodies.Announce, Refused(400, "no_message", "Write the announcement first.")).message
    if len(text) > MAX_ANNOUNCEMENT:
        raise Refused(
            400, "message_too_long", f"An announcement has at most {MAX_ANNOUNCEMENT} characters, not {len(text)}."
        )
    try:
        note = do_post_announcement(workshop, text, actor=request.user, details=_via())
    except WorkshopError as exc:
        raise Refused(400, "no_message", str(exc))
    return {"message": "Posted: every participant's ComfyUI shows it now.", "announcement": note.pk}


def withdraw(request: HttpRequest, workshop: Workshop, body: dict[str, Any]) -> dict[str, Any]:
    """Take an announcement off every participant's banner."""
    missing = Refused(
        404, "no_announcement", f"There is no announcement {body.get('announcement')!r} in {workshop.slug}."
    )
    pk = _read(body, bodies.Withdraw, missing).announcement
    note = Announcement.objects.select_related("workshop").filter(pk=pk, workshop=workshop).first()
    if note is None:
        raise missing
    if not do_withdraw_announcement(note, actor=request.user, details=_via()):
        raise Refused(409, "no_change", "That announcement was already withdrawn.")
    return {"message": "Withdrawn: it is gone from every participant's banner."}


# --- Moving jobs between GPU backends ----------------------------------------------------------------


def _target_backend(workshop: Workshop, body: dict[str, Any]) -> GpuBackend | None:
    """The backend ``body["backend"]`` names (None: any backend): one of the workshop's, switched on."""
    if "backend" not in body:
        raise Refused(400, "no_backend", 'Name the backend by number, or null for any backend: {"backend": 3}.')
    pk = _read(body, bodies.Target, _not_attached(workshop, body)).backend
    if pk is None:
        return None
    backend = _attached_backend(workshop, pk, body)
    if not backend.enabled:
        raise Refused(
            409, "backend_off", f"{backend.name} is switched off: switch it on first or pick another; nothing moved."
        )
    return backend


def _attached_backend(workshop: Workshop, pk: int, body: dict[str, Any]) -> GpuBackend:
    backend = workshop.backends.filter(pk=pk).first()
    if backend is None:
        raise _not_attached(workshop, body)
    return backend


def _not_attached(workshop: Workshop, body: dict[str, Any]) -> Refused:
    return Refused(
        404, "no_such_backend", f"GPU backend {body.get('backend')!r} is not one of {workshop.slug}'s backends."
    )


def move(request: HttpRequest, workshop: Workshop, body: dict[str, Any]) -> dict[str, Any]:
    """Waiting jobs are pinned to the chosen backend (``null``: any backend again); jobs on a GPU are stopped
    there and queued again as new jobs pinned to it. All of them or, if one is refused, none."""
    jobs = _jobs(workshop, body)
    target = _target_backend(workshop, body)
    ended = [job for job in jobs if not job.can_cancel()]
    if ended:
        raise Refused(409, "already_ended", f"Nothing was moved: {_names(ended)} had already ended.")
    on_gpu = [job for job in jobs if job.status in Job.ACTIVE]
    if on_gpu and target is None:
        raise Refused(
            409,
            "pick_a_backend",
            f"Nothing was moved: a job on a GPU moves to a named backend, not to “any backend”: {_names(on_gpu)}.",
        )
    stopping = [job for job in on_gpu if job.cancel_requested_at is not None]
    if stopping:
        raise Refused(409, "stopping", f"Nothing was moved: {_names(stopping)} is being stopped already.")
    there = [job for job in on_gpu if target is not None and job.backend_id == target.pk]
    if there:
        assert target is not None
        raise Refused(409, "already_there", f"Nothing was moved: {_names(there)} runs on {target.name} already.")
    waiting = [job for job in jobs if job.status == Job.Status.QUEUED and job.pinned_backend_id != _pk(target)]
    if not waiting and not on_gpu:
        where = f"wait for {target.name}" if target else "may run on any backend"
        raise Refused(409, "no_change", f"Those jobs {where} already.")
    try:
        moved, copies = do_move_jobs(
            workshop, target, waiting=waiting, running=on_gpu, actor=request.user, details=_via()
        )
    except NothingDone as stop:
        if stop.rejection is not None:
            raise Refused(
                409, "refused", f"Nothing was moved: the new run of {_name(stop.job)} was refused: {stop.rejection}"
            )
        raise Refused(409, "already_ended", f"Nothing was moved: {_name(stop.job)} ended meanwhile.")
    result: dict[str, Any] = {
        "message": _move_message(target, moved, copies, len(waiting) - len(moved)),
        "moved": sorted(job.pk for job in moved),
        "jobs": [{"from": old.pk, "to": new.pk} for old, new in copies],
    }
    if target is not None and target.state not in GpuBackend.DISPATCHABLE:
        result["warning"] = f"{target.name} is failing: the moved jobs wait until it answers again."
    return result


def _move_message(target: GpuBackend | None, moved: list[Job], copies: list[tuple[Job, Job]], late: int) -> str:
    to = target.name if target is not None else "any backend"
    parts = []
    if moved:
        parts.append(
            f"moved {_plural(len(moved), 'waiting job')} to {to}"
            if target is not None
            else f"{_plural(len(moved), 'waiting job')} may run on any backend again"
        )
    if len(copies) == 1:
        old, new = copies[0]
        parts.append(
            f"stopped {_name(old)} on {_name_of(old.backend) or 'its GPU'}; it runs again on {to} as job #{new.pk}"
        )
    elif copies:
        parts.append(
            f"stopped {_plural(len(copies), 'running job')}; they run again on {to} as jobs "
            f"{_numbers([new.pk for _, new in copies])}"
        )
    if late:
        parts.append(f"{_plural(late, 'job')} had started meanwhile and did not move")
    message = "; ".join(parts) + "."
    return message[0].upper() + message[1:]


def _pk(backend: GpuBackend | None) -> int | None:
    return backend.pk if backend is not None else None


def _name_of(backend: GpuBackend | None) -> str | None:
    return backend.name if backend is not None else None


# --- Queue policy and caps ---------------------------------------------------------------------------


def queue_settings(request: HttpRequest, workshop: Workshop, body: dict[str, Any]) -> dict[str, Any]:
    """Change the queue policy and caps, validated as the Workshop admin validates them. Fields left out keep
    their value. The scheduler runs on commit: a raised cap can start waiting jobs at once."""
    data = {}
    for name in QUEUE_SETTINGS:
        value = body.get(name, getattr(workshop, name))
        data[name] = "" if value is None or isinstance(value, bool) else str(value)
    form = QueueSettingsForm(data, instance=Workshop.objects.get(pk=workshop.pk))
    if not form.is_valid():
        problems = "; ".join(
            f"{form.fields[name].label if name in form.fields else name}: {' '.join(str(e) for e in errors)}"
            for name, errors in form.errors.items()
        )
        raise Refused(400, "invalid_settings", f"Nothing was changed. {problems}")
    changed = do_change_queue_settings(workshop, form, actor=request.user, details=_via())
    if not changed:
        raise Refused(409, "no_change", f"Those are the queue settings of {workshop.slug} already.")
    message = (
        f"Saved: {workshop.get_queue_policy_display()}; up to {workshop.max_queued_per_seat} waiting and "
        f"{workshop.max_running_per_seat} running per seat; queue depth {workshop.max_queue_depth}."
    )
    return {"message": message, "changed": sorted(changed)}


# --- GPU backends --------------------------------------------------------------------------------------


def _backend_to_change(request: HttpRequest, workshop: Workshop, body: dict[str, Any]) -> GpuBackend:
    if not request.user.has_perm("gpu_backends.change_gpubackend"):
        raise Refused(403, "forbidden", "Your account may run this workshop but not change its GPU backends.")
    pk = _read(body, bodies.Backend, _not_attached(workshop, body)).backend
    return _attached_backend(workshop, pk, body)


def _scale(request: HttpRequest, workshop: Workshop, body: dict[str, Any], *, warm: bool) -> dict[str, Any]:
    backend = _backend_to_change(request, workshop, body)
    if not kind_of(backend).scales:
        raise Refused(
            409,
            "not_serverless",
            f"Only Verda backends warm up and scale to zero; {backend.name} is a {backend.get_kind_display()}.",
        )
    action = do_warm_backend if warm else do_scale_backend_to_zero
    try:
        reported = action(backend, actor=request.user, workshop=workshop, details=_via())
    except BackendError as exc:
        verb = "warm up" if warm else "scale to zero"
        raise Refused(502, "scaling_failed", f"Could not {verb} {backend.name}: {exc}")
    if warm:
        replicas = _plural(max(backend.warm_replicas, 1), "replica")
        return {"message": f"Warming up {backend.name}: {replicas} start now and stay for at least an hour."}
    return {
        "message": f"Scaled {backend.name} to zero: it stays cold for the rest of today's sessions (a later "
        f"session's pre-warm still applies; Warm up starts it again). {reported}"
    }


def warm(request: HttpRequest, workshop: Workshop, body: dict[str, Any]) -> dict[str, Any]:
    """Start a Verda backend's warm replicas now and keep them for an hour (jobs.instructor.do_warm_backend)."""
    return _scale(request, workshop, body, warm=True)


def scale_to_zero(request: HttpRequest, workshop: Workshop, body: dict[str, Any]) -> dict[str, Any]:
    """Let a Verda backend's replicas stop (jobs.instructor.do_scale_backend_to_zero)."""
    return _scale(request, workshop, body, warm=False)


def _switch(request: HttpRequest, workshop: Workshop, body: dict[str, Any], *, on: bool) -> dict[str, Any]:
    backend = _backend_to_change(request, workshop, body)
    if not do_set_backend_enabled(backend, on, actor=request.user, workshop=workshop, details=_via()):
        raise Refused(409, "no_change", f"{backend.name} is switched {'on' if on else 'off'} already.")
    if on:
        return {"message": f"Switched on {backend.name}: it takes jobs again, in its place in the failover order."}
    running = Job.objects.filter(backend=backend, status__in=Job.ACTIVE).count()
    pinned = Job.objects.filter(workshop=workshop, pinned_backend=backend, status=Job.Status.QUEUED).count()
    successor = workshop.backends.filter(enabled=True).exclude(pk=backend.pk).order_by("order", "name").first()
    message = f"Switched off {backend.name}: no new job starts on it"
    if running:
        message += f" (its {_plural(running, 'running job')} {'finishes' if running == 1 else 'finish'} there)"
    message += f"; waiting jobs go to {successor.name}." if successor else "."
    result: dict[str, Any] = {"message": message}
    warnings = []
    if successor is None:
        warnings.append(f"No other GPU backend of {workshop.slug} is switched on: waiting jobs wait.")
    if pinned:
        wait, them = ("waits", "it") if pinned == 1 else ("wait", "them")
        warnings.append(
            f"{_plural(pinned, 'job')} pinned to {backend.name} {wait} until you switch it on again or move {them}."
        )
    if warnings:
        result["warning"] = " ".join(warnings)
    return result


def switch_off(request: HttpRequest, workshop: Workshop, body: dict[str, Any]) -> dict[str, Any]:
    """No new job starts on the backend: the manual failover to the next backend in order."""
    return _switch(request, workshop, body, on=False)


def switch_on(request: HttpRequest, workshop: Workshop, body: dict[str, Any]) -> dict[str, Any]:
    return _switch(request, workshop, body, on=True)


ACTIONS: dict[str, Callable[[HttpRequest, Workshop, dict[str, Any]], dict[str, Any]]] = {
    "cancel": cancel,
    "requeue": requeue,
    "lane": lane,
    "move": move,
    "pause": pause,
    "resume": resume,
    "queue_settings": queue_settings,
    "announce": announce,
    "withdraw": withdraw,
    "warm": warm,
    "scale_to_zero": scale_to_zero,
    "switch_off": switch_off,
    "switch_on": switch_on,
}
