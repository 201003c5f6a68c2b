"""The instructor's live dashboard of one workshop: everything it shows, as one JSON-ready snapshot, and its
charts of the last hour.

:func:`build_snapshot` costs the same nine queries whatever the number of seats and jobs: counts are
annotated, each seat's last ended job comes from one correlated subquery, the queue is read once (with
the backend each waiting job is pinned to) and its order projected in Python with the scheduler's own
policy (:func:`projected_order`). The page fetches it again after every job event, so a workshop growing
must not make that slower in queries. Live progress is not in it: the page keeps that itself from the
ComfyUI events of the workshop's socket.

:func:`build_charts` is one query over the last hour's finished jobs. It is not part of the snapshot: its
5-minute buckets change slowly, and the page fetches it every 30 seconds instead of after every event.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, OuterRef, Q, Subquery
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from gpu_backends.kinds import kind_of
from gpu_backends.models import GpuBackend
from jobs.instructor import can_resubmit
from jobs.models import Job
from jobs.policy import Candidate, head_key, pick_next
from storage.models import Artifact
from workshops import frontends
from workshops.models import Announcement, AuditEntry, QueuePolicy, Seat, Workshop

# What the page lists besides the queue; enough to act on, short enough for a projector.
RECENT_ENDED = 20
RECENT_ACTIONS = 10
SHOWN_ANNOUNCEMENTS = 5
# The participant's banner and the Seats admin warn from here; the dashboard flags the same seats.
BUDGET_WARNING = 0.8

QUEUE_FIELDS = (
    "id", "prompt_id", "status", "status_reason", "instructor_lane", "priority", "attempts", "gpu_seconds",
    "created_at", "dispatched_at", "started_at", "cancel_requested_at",
    "seat__id", "seat__label", "seat__display_name", "backend__id", "backend__name",
    "pinned_backend__id", "pinned_backend__name",
)  # fmt: skip
ENDED_FIELDS = (
    "id", "prompt_id", "status", "status_reason", "gpu_seconds", "created_at", "finished_at", "seat_id",
)  # fmt: skip


def build_snapshot(workshop: Workshop, request: HttpRequest | None = None) -> dict[str, Any]:
    """The dashboard of ``workshop`` as JSON-ready data: seats, queue, backends, totals, recent activity.

    ``request`` gives the host for seat links under port routing and whether the viewer may see outputs.
    """
    now = timezone.now()
    may_view_outputs = request is None or request.user.has_perm("storage.view_artifact")
    seats = _seats(workshop)
    last_ended = _last_ended_jobs(workshop)
    backends = _backends(workshop)
    queue = _queue(workshop, seats, {b.pk: b for b in backends}, now)
    pinned = Counter(
        job["pinned_backend"]["id"] for job in queue if job["pinned_backend"] and job["status"] == "queued"
    )
    ended = list(
        Job.objects.filter(workshop=workshop, status__in=Job.TERMINAL)
        .select_related("seat")
        .only(*ENDED_FIELDS, "seat__label", "seat__display_name")
        .order_by("-finished_at", "-id")[:RECENT_ENDED]
    )
    by_status = {
        row["status"]: row["n"]
        for row in Job.objects.filter(workshop=workshop).order_by().values("status").annotate(n=Count("pk"))
    }
    seat_rows = [_seat_row(seat, last_ended.get(seat.pk), request, may_view_outputs) for seat in seats]
    return {
        "generated_at": now.isoformat(),
        "workshop": _workshop_row(workshop, len(seats)),
        "seats": seat_rows,
        "queue": queue,
        "ended": [_ended_row(job) for job in ended],
        "backends": [_backend_row(b, pinned.get(b.pk, 0)) for b in backends],
        "totals": _totals(workshop, seats, by_status),
        "announcements": [
            {"id": note.pk, "message": note.message, "created_at": note.created_at.isoformat()}
            for note in Announcement.objects.filter(workshop=workshop, active=True).order_by("-created_at")[
                :SHOWN_ANNOUNCEMENTS
            ]
        ],
        "actions": [
            {"at": entry.created_at.isoformat(), "who": entry.actor_name, "summary": entry.summary}
            for entry in AuditEntry.objects.filter(workshop=workshop)
            .only("created_at", "actor_name", "summary")
            .order_by("-created_at", "-id")[:RECENT_ACTIONS]
        ],
    }


# --- Seats -------------------------------------------------------------------------------------------


def _last_ended_subquery() -> Subquery:
    """A seat's most recently ended job (any end: done, failed, cancelled…), by id."""
    return Subquery(
        Job.objects.filter(seat=OuterRef("pk"), status__in=Job.TERMINAL)
        .order_by("-finished_at", "-id")
        .values("pk")[:1]
    )


def _seats(workshop: Workshop) -> list[Seat]:
    seats: list[Seat] = list(
        Seat.objects.filter(workshop=workshop)
        .select_related("frontend", "participant")
        .annotate(
            n_queued=Count("jobs", filter=Q(jobs__status=Job.Status.QUEUED)),
            n_active=Count("jobs", filter=Q(jobs__status__in=Job.ACTIVE)),
            n_succeeded=Count("jobs", filter=Q(jobs__status=Job.Status.SUCCEEDED)),
            n_failed=Count("jobs", filter=Q(jobs__status__in=(Job.Status.FAILED, Job.Status.TIMED_OUT))),
        )
        .order_by("label")
    )
    for seat in seats:
        seat.workshop = workshop  # budget_used() reads it: one workshop object, not a query per seat
    return seats


def _first_output(field: str) -> Subquery:
    return Subquery(Artifact.objects.filter(job=OuterRef("pk")).order_by("id").values(field)[:1])


def _last_ended_jobs(workshop: Workshop) -> dict[int, Job]:
    """Each seat's last ended job with its first output file (id, name, kind), keyed by seat id.

    One query however many seats: the ids come from a subquery per seat, not from a list (an empty list
    would skip the query and make the count depend on the data).
    """
    last_ids = Seat.objects.filter(workshop=workshop).annotate(last=_last_ended_subquery()).values("last")
    jobs = (
        Job.objects.filter(pk__in=Subquery(last_ids))
        .only(*ENDED_FIELDS)
        .annotate(
            output_id=_first_output("pk"), output_name=_first_output("filename"), output_kind=_first_output("kind")
        )
    )
    return {job.seat_id: job for job in jobs}


def _seat_row(seat: Seat, last: Job | None, request: HttpRequest | None, may_view_outputs: bool) -> dict[str, Any]:
    frontend = getattr(seat, "frontend", None)
    participant = seat.participant
    used = seat.budget_used()
    n_queued, n_active = seat.n_queued, seat.n_active  # type: ignore[attr-defined]
    return {
        "id": seat.pk,
        "label": seat.label,
        "display_name": seat.display_name,
        "username": participant.get_username() if participant else None,
        "last_login": participant.last_login.isoformat() if participant and participant.last_login else None,
        # "Online" is what the hub can know: the seat's ComfyUI server is up (browsers connect to it, not here).
        "online": frontend is not None and frontend.state == frontend.State.RUNNING,
        "frontend": frontend.state if frontend else None,
        "frontend_label": frontend.get_state_display() if frontend else "not set up",
        "frontend_error": frontend.last_error[:200] if frontend else "",
        "url": frontends.url_for(seat, frontend, request),
        "state": "running" if n_active else "queued" if n_queued else "idle",
        "queued": n_queued,
        "running": n_active,
        "succeeded": seat.n_succeeded,  # type: ignore[attr-defined]
        "failed": seat.n_failed,  # type: ignore[attr-defined]
        "gpu_seconds": round(seat.gpu_seconds_used, 1),
        "cost": float(seat.cost_used),
        "budget_used": round(used, 3) if used is not None else None,
        "budget_warning": used is not None and used >= BUDGET_WARNING,
        "last_job": _last_job_row(last, may_view_outputs) if last else None,
        "admin_url": reverse("admin:workshops_seat_change", args=[seat.pk]),
    }


def _last_job_row(job: Job, may_view_outputs: bool) -> dict[str, Any]:
    output_id = job.output_id  # type: ignore[attr-defined]
    output = None
    if output_id is not None:
        output = {
            "id": output_id,
            "filename": job.output_name,  # type: ignore[attr-defined]
            "kind": job.output_kind,  # type: ignore[attr-defined]
            "url": reverse("storage:artifact-file", args=[output_id]) if may_view_outputs else None,
        }
    return {**_job_basics(job), "finished_at": _iso(job.finished_at), "output": output}


# --- The queue ---------------------------------------------------------------------------------------


def projected_order(policy: str, queued: Iterable[Candidate]) -> list[int]:
    """The order the scheduler would start these waiting jobs in if none finished meanwhile.

    Each seat's jobs line up in the policy's head order; the policy then picks among the seats' heads, as
    :func:`jobs.scheduler.claim_next` does, and every pick counts as one more running job for its seat.
    Exact under ``fifo``; under the fair policies an estimate, as finishing jobs and the GPU time they add
    shift the later places. The per-seat running cap is left out: it delays a seat's jobs, not their order;
    so are pins: a job pinned to a busy backend may start after the ones numbered after it.
    """
    per_seat: dict[int, list[Candidate]] = {}
    for candidate in queued:
        per_seat.setdefault(candidate.seat_id, []).append(candidate)
    key = head_key(policy)
    for jobs in per_seat.values():
        jobs.sort(key=key, reverse=True)  # popped from the end
    heads = {seat_id: jobs.pop() for seat_id, jobs in per_seat.items()}
    order = []
    while heads:
        pick = pick_next(policy, heads.values(), sys.maxsize)
        assert pick is not None  # no cap: some head is always eligible
        order.append(pick.job_id)
        rest = per_seat[pick.seat_id]
        if rest:
            heads[pick.seat_id] = replace(rest.pop(), seat_running=pick.seat_running + 1)
        else:
            del heads[pick.seat_id]
    return order


def _queue(
    workshop: Workshop, seats: list[Seat], backends: dict[int, GpuBackend], now: datetime
) -> list[dict[str, Any]]:
    """Jobs on a GPU first (oldest start first), then waiting ones numbered in projected order."""
    jobs = list(
        Job.objects.filter(workshop=workshop, status__in=(*Job.WAITING, *Job.ACTIVE))
        .select_related("seat", "backend", "pinned_backend")
        .only(*QUEUE_FIELDS)
        .order_by("id")
    )
    # Node names for the jobs on a GPU, so "executing 7" can read "KSampler (7)". Only these jobs' prompts
    # are read: their number is bounded by the backends' slots, unlike the waiting ones'.
    nodes = {
        pk: _node_titles(prompt)
        for pk, prompt in Job.objects.filter(workshop=workshop, status__in=Job.ACTIVE).values_list("pk", "prompt")
    }
    running = {seat.pk: seat.n_active for seat in seats}  # type: ignore[attr-defined]
    used = {seat.pk: seat.gpu_seconds_used for seat in seats}
    waiting = {job.pk: job for job in jobs if job.status == Job.Status.QUEUED}
    order = projected_order(
        workshop.queue_policy,
        (
            Candidate(
                job_id=job.pk,
                seat_id=job.seat_id,
                seat_running=running.get(job.seat_id, 0),
                seat_gpu_seconds=used.get(job.seat_id, 0.0),
                priority=job.priority,
                instructor_lane=job.instructor_lane,
            )
            for job in waiting.values()
        ),
    )
    active = sorted((job for job in jobs if job.status in Job.ACTIVE), key=lambda j: (j.started_at or now, j.pk))
    rows = [_queue_row(job, None, now, nodes.get(job.pk), backends) for job in active]
    rows += [_queue_row(waiting[pk], position, now, None, backends) for position, pk in enumerate(order, start=1)]
    return rows


def _node_titles(prompt: Any) -> dict[str, str]:
    if not isinstance(prompt, dict):
        return {}
    titles = {}
    for node_id, node in prompt.items():
        if isinstance(node, dict):
            meta = node.get("_meta")
            title = meta.get("title") if isinstance(meta, dict) else None
            titles[str(node_id)] = str(title or node.get("class_type") or node_id)[:80]
    return titles


def _queue_row(
    job: Job, position: int | None, now: datetime, nodes: dict[str, str] | None, backends: dict[int, GpuBackend]
) -> dict[str, Any]:
    began = job.started_at or job.dispatched_at
    pinned = job.pinned_backend if job.pinned_backend_id else None
    return {
        **_job_basics(job),
        "position": position,
        "seat": job.seat.label,
        "seat_name": job.seat.display_name,
        "lane": job.instructor_lane,
        "priority": job.priority,
        "backend": job.backend.name if job.backend_id and job.backend else None,
        "backend_id": job.backend_id,
        "pinned_backend": {"id": pinned.pk, "name": pinned.name} if pinned else None,
        "waiting_for": _pin_problem(pinned, backends) if pinned and job.status == Job.Status.QUEUED else None,
        "attempts": job.attempts,
        "dispatched_at": _iso(job.dispatched_at),
        "started_at": _iso(job.started_at),
        "waited_seconds": round(((began or now) - job.created_at).total_seconds(), 1),
        "running_seconds": round((now - job.started_at).total_seconds(), 1) if job.started_at else None,
        "cancel_requested": job.cancel_requested_at is not None,
        "can_cancel": job.can_cancel(),
        "nodes": nodes,
    }


def _pin_problem(pinned: GpuBackend, backends: dict[int, GpuBackend]) -> str | None:
    """Why a job pinned to ``pinned`` cannot start now, when that is the backend's doing; None when it can."""
    backend = backends.get(pinned.pk)
    name = pinned.name
    if backend is None:
        return f"Pinned to {name}, which this workshop no longer uses: it cannot start until you move it."
    if not backend.enabled:
        return f"Waits for {name}, which is switched off: switch it on or move the job."
    if backend.state not in GpuBackend.DISPATCHABLE:
        return f"Waits for {name}, which is failing: it starts once {name} answers again, or move the job."
    return None


def _job_basics(job: Job) -> dict[str, Any]:
    return {
        "id": job.pk,
        "prompt_id": str(job.prompt_id),
        "status": job.status,
        "status_label": Job.Status(job.status).label,
        "reason": job.status_reason,
        "created_at": job.created_at.isoformat(),
        "gpu_seconds": round(job.gpu_seconds, 1),
        "admin_url": reverse("admin:jobs_job_change", args=[job.pk]),
    }


def _ended_row(job: Job) -> dict[str, Any]:
    return {
        **_job_basics(job),
        "seat": job.seat.label,
        "seat_name": job.seat.display_name,
        "finished_at": _iso(job.finished_at),
        "can_requeue": can_resubmit(job),
    }


# --- Backends, totals, the workshop ------------------------------------------------------------------


def _backends(workshop: Workshop) -> list[GpuBackend]:
    return list(
        GpuBackend.objects.filter(workshops=workshop)
        .annotate(
            # Slots are the backend's, shared by every workshop on it; "here" is this workshop's part.
            n_active=Count("jobs", filter=Q(jobs__status__in=Job.ACTIVE), distinct=True),
            n_active_here=Count("jobs", filter=Q(jobs__status__in=Job.ACTIVE, jobs__workshop=workshop), distinct=True),
        )
        .order_by("order", "name")
    )


def _busy(backend: GpuBackend) -> bool:
    return backend.state == GpuBackend.State.READY and backend.n_active >= backend.max_concurrency  # type: ignore[attr-defined]


def _backend_row(backend: GpuBackend, pinned_waiting: int) -> dict[str, Any]:
    return {
        "id": backend.pk,
        "name": backend.name,
        "kind": backend.kind,
        "kind_label": backend.get_kind_display(),
        "gpu_type": backend.gpu_type,
        # Busy is the ready state with every slot taken: derived, so it is never stale.
        "state": "busy" if _busy(backend) else backend.state,
        "state_label": "Busy (every slot running)" if _busy(backend) else backend.get_state_display(),
        "state_since": backend.state_changed_at.isoformat(),
        "last_error": backend.last_error[:300],
        "enabled": backend.enabled,
        "dispatchable": backend.enabled and backend.state in GpuBackend.DISPATCHABLE,
        "active": backend.n_active,  # type: ignore[attr-defined]
        "active_here": backend.n_active_here,  # type: ignore[attr-defined]
        "max_concurrency": backend.max_concurrency,
        "pinned_waiting": pinned_waiting,  # jobs of this workshop that only it may start
        "serverless": kind_of(backend).scales,  # the page offers warm up / scale to zero
        "warm_until": _iso(backend.warm_until),
        "order": backend.order,
        "price_per_hour": float(backend.price_per_hour),
        "admin_url": reverse("admin:gpu_backends_gpubackend_change", args=[backend.pk]),
    }


def _totals(workshop: Workshop, seats: list[Seat], by_status: dict[str, int]) -> dict[str, Any]:
    """Jobs by status and what the seats used, against the seats' budgets added up (each one's extra included)."""
    gpu_seconds = sum(seat.gpu_seconds_used for seat in seats)
    cost = sum((seat.cost_used for seat in seats), Decimal("0"))
    gpu_limits = [seat.gpu_seconds_limit for seat in seats]
    cost_limits = [seat.cost_limit for seat in seats]
    return {
        "jobs": {status: by_status.get(status, 0) for status in Job.Status.values},
        "jobs_total": sum(by_status.values()),
        "gpu_seconds": round(gpu_seconds, 1),
        "cost": float(round(cost, 2)),
        # The seats' budgets added up, each seat's extra included.
        "gpu_budget_seconds": sum(gpu_limits) if seats and None not in gpu_limits else None,
        "cost_budget": float(sum(cost_limits)) if seats and None not in cost_limits else None,  # type: ignore[arg-type]
        "seats_near_budget": sum(1 for seat in seats if (seat.budget_used() or 0) >= BUDGET_WARNING),
    }


def _workshop_row(workshop: Workshop, seat_count: int) -> dict[str, Any]:
    return {
        "id": workshop.pk,
        "slug": workshop.slug,
        "title": workshop.title,
        "paused": workshop.paused,
        "archived": workshop.archived_at is not None,
        "policy": workshop.queue_policy,
        "policy_label": QueuePolicy(workshop.queue_policy).label,
        # Under the other policies the instructor lane changes nothing (see jobs.policy).
        "lane_counts": workshop.queue_policy == QueuePolicy.PRIORITY,
        "seats": seat_count,
        "caps": {
            "max_queued_per_seat": workshop.max_queued_per_seat,
            "max_running_per_seat": workshop.max_running_per_seat,
            "max_queue_depth": workshop.max_queue_depth,
            "job_timeout_seconds": workshop.job_timeout,
        },
        "budget": {
            "seat_gpu_seconds": workshop.seat_gpu_budget_seconds,
            "seat_cost": float(workshop.seat_cost_budget) if workshop.seat_cost_budget is not None else None,
        },
        "spending": {
            "cap": float(workshop.spending_cap) if workshop.spending_cap is not None else None,
            "used": float(round(workshop.cost_used, 2)),
            "capped": workshop.spending_capped,
        },
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# --- Charts of the last hour ---------------------------------------------------------------------------

CHART_WINDOW = timedelta(minutes=60)
CHART_BUCKET = timedelta(minutes=5)
# How the charts group the ways a job ends (the colours of the throughput chart, in this order).
OUTCOMES = (
    ("succeeded", "Done", (Job.Status.SUCCEEDED,)),
    ("failed", "Failed or timed out", (Job.Status.FAILED, Job.Status.TIMED_OUT)),
    ("cancelled", "Cancelled or interrupted", (Job.Status.CANCELLED, Job.Status.INTERRUPTED)),
)
_OUTCOME_OF: dict[str, str] = {status: key for key, _, statuses in OUTCOMES for status in statuses}


def build_charts(workshop: Workshop, now: datetime | None = None) -> dict[str, Any]:
    """Throughput and latency of the workshop over the last hour, in 5-minute buckets by the time jobs ended:
    jobs finished per bucket by outcome; the wait (queued → started) and the run time (started → finished)
    of those that reached a GPU, as p50 and p90 per bucket.

    One query, however many jobs: the last hour's ended jobs, four columns each, through the
    ``job_workshop_finished`` index. The percentiles are computed here because SQLite has no percentile
    aggregate (PostgreSQL's ``percentile_cont`` would tie the dashboard to one database); an hour of a
    workshop's jobs is at most a few thousand short rows.
    """
    now = now or timezone.now()
    # Buckets end on round times (…:05, …:10), so the axis reads like a clock; the last is the current one,
    # partly filled.
    step = CHART_BUCKET.total_seconds()
    end = datetime.fromtimestamp((math.floor(now.timestamp() / step) + 1) * step, tz=now.tzinfo)
    start = end - CHART_WINDOW
    count = int(CHART_WINDOW / CHART_BUCKET)
    counts = [dict.fromkeys(_OUTCOME_OF.values(), 0) for _ in range(count)]
    waits: list[list[float]] = [[] for _ in range(count)]
    runs: list[list[float]] = [[] for _ in range(count)]
    ended = (
        Job.objects.filter(workshop=workshop, finished_at__gte=start, status__in=Job.TERMINAL)
        .order_by()
        .values_list("status", "created_at", "started_at", "finished_at")
    )
    total = 0
    for status, created_at, started_at, finished_at in ended:
        assert finished_at is not None  # filtered above
        index = min(int((finished_at - start) / CHART_BUCKET), count - 1)
        counts[index][_OUTCOME_OF[status]] += 1
        total += 1
        if started_at is not None:
            waits[index].append(max((started_at - created_at).total_seconds(), 0.0))
            runs[index].append(max((finished_at - started_at).total_seconds(), 0.0))
    return {
        "generated_at": now.isoformat(),
        "start": start.isoformat(),
        "end": end.isoformat(),
        "bucket_minutes": int(CHART_BUCKET.total_seconds() // 60),
        "finished": total,
        "outcomes": [{"key": key, "label": label} for key, label, _ in OUTCOMES],
        "buckets": [
            {
                "start": (start + i * CHART_BUCKET).isoformat(),
                "finished": counts[i],
                "wait": _percentiles(waits[i]),
                "run": _percentiles(runs[i]),
            }
            for i in range(count)
        ],
    }


def _percentiles(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {"p50": _percentile(ordered, 0.5), "p90": _percentile(ordered, 0.9), "jobs": len(ordered)}


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile (0–1) of ``values``, interpolated between the nearest ranks as PostgreSQL's
    ``percentile_cont`` does; None for no values."""
    return _percentile(sorted(values), q)


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    value = ordered[low] + (ordered[high] - ordered[low]) * (position - low)
    return round(value, 1)
