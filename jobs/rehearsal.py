"""A rehearsal before the day: each template queued on the workshop's real GPU backends as N participants would,
measured, and nothing left running or billed afterwards.

:func:`rehearse` makes a rehearsal workshop beside the real one (same backends, preview method and job limit;
its own seats, so the rehearsal's cost touches no participant's budget and no spending cap), queues every
template once per simulated participant all at once (the moment after a demo), waits for them through the
platform's normal queue and workers, and reports per template: jobs done and failed (with the reason), the
time to the first finished image, GPU seconds and cost; and how long the first job took to reach a GPU (a cold
start included). Afterwards it cancels whatever is still waiting, archives the rehearsal workshop (its outputs
stay in the gallery) and sets each scaling backend's minimum replicas back to what the schedule wants (zero
unless a session is on), with the vendor's own count quoted. ``manage.py rehearse`` runs it.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.utils import timezone

from gpu_backends import scaling
from gpu_backends.client import BackendError
from gpu_backends.kinds import kind_of
from workshops import audit
from workshops.models import QueuePolicy, Workshop
from workshops.services import WorkshopError, add_seats

from .models import Job
from .services import SubmissionRejected, cancel_job, submit_prompt

MAX_PARTICIPANTS = 100


class RehearsalError(Exception):
    """A rehearsal that cannot start as asked; the message says what to change."""


def read_prompt(name: str, data: Any) -> dict[str, Any]:
    """An API-format prompt from a file's JSON (the prompt itself, or ComfyUI's ``{"prompt": …}`` body)."""
    prompt = data.get("prompt") if isinstance(data, dict) and isinstance(data.get("prompt"), dict) else data
    if not isinstance(prompt, dict) or not prompt:
        raise RehearsalError(f"{name}: not an API-format prompt (a JSON object of nodes).")
    if "nodes" in prompt and "links" in prompt:
        raise RehearsalError(
            f"{name}: this is a saved workflow (UI format). Export it from ComfyUI with Workflow → Export (API)."
        )
    bad = [key for key, node in prompt.items() if not isinstance(node, dict) or "class_type" not in node]
    if bad:
        raise RehearsalError(f"{name}: node(s) {', '.join(bad[:5])} have no class_type: not an API-format prompt.")
    return prompt


@dataclass
class TemplateResult:
    name: str
    submitted: int = 0
    succeeded: int = 0
    failed: list[str] = field(default_factory=list)  # reasons, one per failed job
    refused: str = ""  # the submission's own refusal (preflight), when nothing could be queued
    first_done_seconds: float | None = None  # from the rehearsal's start to its first finished job
    gpu_seconds: list[float] = field(default_factory=list)
    cost: Decimal = Decimal("0")

    @property
    def median_gpu_seconds(self) -> float | None:
        return statistics.median(self.gpu_seconds) if self.gpu_seconds else None


@dataclass
class Rehearsal:
    workshop: Workshop  # the rehearsal's own
    participants: int
    started: datetime
    results: list[TemplateResult]
    first_on_gpu_seconds: float | None  # the first job's submit → running (a cold start included)
    timed_out: int  # jobs cancelled because the rehearsal's time ran out
    backends: list[str]  # what each scaling backend was set back to, with the vendor's count

    @property
    def cost(self) -> Decimal:
        return sum((result.cost for result in self.results), Decimal("0"))


def _finished(job: Job) -> bool:
    return job.status not in (*Job.WAITING, *Job.ACTIVE)


def _check_request(prompts: dict[str, Any], participants: int) -> None:
    if not prompts:
        raise RehearsalError("Give at least one template's API-format prompt to rehearse.")
    if not 1 <= participants <= MAX_PARTICIPANTS:
        raise RehearsalError(f"Rehearse with 1 to {MAX_PARTICIPANTS} simulated participants, not {participants}.")


def rehearse(
    workshop: Workshop,
    prompts: dict[str, dict[str, Any]],
    *,
    participants: int,
    timeout: float,
    actor: audit.Actor,
    progress: Callable[[str], None] = lambda line: None,
    poll: float = 1.0,
) -> Rehearsal:
    _check_request(prompts, participants)
    if timeout <= 0:
        raise RehearsalError("The timeout must be more than 0 seconds.")
    backends = list(workshop.backends.filter(enabled=True))
    if not backends:
        raise RehearsalError(f"{workshop.slug} has no switched-on GPU backend: attach one first.")
    started = timezone.now()
    slug = f"{workshop.slug[:30]}-rehearsal-{started:%Y%m%d%H%M%S}"
    try:
        rehearsal = Workshop.objects.create(
            slug=slug,
            title=f"Rehearsal of {workshop.title}"[:200],
            queue_policy=QueuePolicy.ROUND_ROBIN,
            max_queued_per_seat=len(prompts) + 1,
            max_running_per_seat=1,
            preview_method=workshop.preview_method,
            job_timeout_seconds=workshop.job_timeout_seconds,
            starts_at=started,
        )
        rehearsal.backends.set(backends)
        add_seats(rehearsal, participants)
    except WorkshopError as exc:
        raise RehearsalError(str(exc)) from exc
    for seat in rehearsal.seats.select_related("participant"):
        if seat.participant is not None:  # a rehearsal seat is never signed in to
            seat.participant.set_unusable_password()
            seat.participant.save(update_fields=["password"])
    seats = list(rehearsal.seats.order_by("label"))
    results = {name: TemplateResult(name) for name in prompts}
    jobs: dict[int, str] = {}
    progress(f"Queuing {len(prompts)} template(s) for {participants} participant(s) on {rehearsal.slug}")
    for name, prompt in prompts.items():
        for seat in seats:
            try:
                job = submit_prompt(seat, {"prompt": copy.deepcopy(prompt), "client_id": "rehearsal"})
            except SubmissionRejected as exc:
                results[name].refused = _refusal(exc)
                break
            jobs[job.pk] = name
            results[name].submitted += 1
    deadline = time.monotonic() + timeout
    while jobs:
        rows = list(Job.objects.filter(pk__in=list(jobs)).only("status"))
        left = sum(not _finished(job) for job in rows)
        if not left or time.monotonic() > deadline:
            break
        progress(f"{len(rows) - left} of {len(rows)} jobs finished")
        time.sleep(poll)
    timed_out = 0
    for job in Job.objects.filter(pk__in=list(jobs), status__in=(*Job.WAITING, *Job.ACTIVE)):
        if cancel_job(job, by="rehearsal (its time ran out)"):
            timed_out += 1
    first_on_gpu = _collect(results, jobs, started)
    Workshop.objects.filter(pk=rehearsal.pk).update(archived_at=timezone.now(), ends_at=timezone.now())
    rehearsal.refresh_from_db()
    settled = _settle_backends(backends)
    outcome = Rehearsal(rehearsal, participants, started, list(results.values()), first_on_gpu, timed_out, settled)
    audit.record(
        actor,
        "workshop.rehearse",
        f"Rehearsed {workshop.slug}: {len(prompts)} template(s) × {participants} participant(s), "
        f"cost {outcome.cost:.2f}",
        workshop=workshop,
        target=workshop,
        details={
            "rehearsal": rehearsal.slug,
            "participants": participants,
            "templates": {r.name: {"succeeded": r.succeeded, "failed": len(r.failed)} for r in outcome.results},
            "report": report(outcome),
            "timed_out": timed_out,
            "cost": str(outcome.cost),
        },
    )
    return outcome


def report(outcome: Rehearsal) -> list[str]:
    """The rehearsal's figures in sentences: the command prints them, the admin shows them from the audit log."""

    def seconds(value: float | None) -> str:
        if value is None:
            return "—"
        return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"

    lines = [f"First job on a GPU after {seconds(outcome.first_on_gpu_seconds)} (a cold start included)."]
    for result in outcome.results:
        if result.refused:
            lines.append(f"{result.name}: refused before any GPU time: {result.refused}")
            continue
        lines.append(
            f"{result.name}: {result.succeeded} of {result.submitted} done, first after "
            f"{seconds(result.first_done_seconds)}, GPU {seconds(result.median_gpu_seconds)} a job (median), "
            f"cost {result.cost:.2f}."
        )
        lines += [f"{result.name} failed: {reason}" for reason in sorted(set(result.failed))[:3]]
    if outcome.timed_out:
        lines.append(f"{outcome.timed_out} job(s) did not finish in time and were cancelled.")
    lines.append(f"Total cost {outcome.cost:.2f}; the outputs are in the gallery of {outcome.workshop.slug}.")
    return lines + outcome.backends


def start_in_background(
    workshop: Workshop, prompts: dict[str, dict[str, Any]], *, participants: int, timeout: float, actor: Any
) -> None:
    """The admin's Rehearse: run :func:`rehearse` in an RQ worker (it lasts minutes), its report to the audit log.

    It needs a worker of its own beside those that dispatch its jobs: refused with fewer than two."""
    from rq import Worker

    from .scheduler import dispatch_queue

    queue = dispatch_queue()
    if Worker.count(queue=queue) < 2:
        raise RehearsalError(
            "A rehearsal takes one RQ worker for itself and needs others to run its jobs: run at least two workers "
            "(compose: COMFYUME_WORKERS), or use manage.py rehearse."
        )
    _check_request(prompts, participants)
    queue.enqueue(
        run_queued, workshop.pk, prompts, participants, timeout, getattr(actor, "pk", None),
        job_timeout=int(timeout) + 600,
    )  # fmt: skip


def run_queued(workshop_id: int, prompts: dict[str, Any], participants: int, timeout: float, actor_id: Any) -> None:
    """The RQ job of :func:`start_in_background`: a rehearsal that cannot start is in the audit log too."""
    from django.contrib.auth import get_user_model

    workshop = Workshop.objects.get(pk=workshop_id)
    actor = get_user_model().objects.filter(pk=actor_id).first() if actor_id is not None else None
    try:
        rehearse(workshop, prompts, participants=participants, timeout=timeout, actor=actor)
    except RehearsalError as exc:
        audit.record(
            actor, "workshop.rehearse_failed", f"A rehearsal of {workshop.slug} could not start: {exc}",
            workshop=workshop, target=workshop, details={"error": str(exc)},
        )  # fmt: skip


def _refusal(exc: SubmissionRejected) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    message = (error.get("message") if isinstance(error, dict) else None) or str(body)[:300]
    details = [
        f"{node}: {err.get('message', '')} {err.get('details', '')}".strip()
        for node, info in (body.get("node_errors") or {}).items()
        for err in (info.get("errors") or [])[:2]
    ]
    return "; ".join([message, *details[:5]])


def _collect(results: dict[str, TemplateResult], jobs: dict[int, str], started: datetime) -> float | None:
    first_on_gpu: float | None = None
    for job in Job.objects.filter(pk__in=list(jobs)).select_related("backend"):
        result = results[jobs[job.pk]]
        if job.started_at is not None:
            on_gpu = (job.started_at - started).total_seconds()
            first_on_gpu = on_gpu if first_on_gpu is None else min(first_on_gpu, on_gpu)
        if job.status == Job.Status.SUCCEEDED:
            result.succeeded += 1
            if job.finished_at is not None:
                done = (job.finished_at - started).total_seconds()
                result.first_done_seconds = (
                    done if result.first_done_seconds is None else min(result.first_done_seconds, done)
                )
        elif _finished(job):
            result.failed.append(f"{job.get_status_display()}: {job.status_reason or 'no reason given'}")
        if job.gpu_seconds:
            result.gpu_seconds.append(job.gpu_seconds)
            price = job.backend.price_per_hour if job.backend is not None else Decimal("0")
            result.cost += price * Decimal(str(job.gpu_seconds)) / 3600
    return first_on_gpu


def _settle_backends(backends: list[Any]) -> list[str]:
    """Each scaling backend's minimum back to what the schedule wants now (0 unless a session is on), and what
    its vendor then reports."""
    said = []
    now = timezone.now()
    for backend in backends:
        kind = kind_of(backend)
        if not kind.scales:
            continue
        client = kind.scaler()
        if client is None:
            said.append(f"{backend.name}: cannot check its replicas ({kind.scaler_needs} not set)")
            continue
        wanted = scaling.wanted_min_replicas(backend, now)
        try:
            scaling.apply_min_replicas(backend, wanted, client)
            status = client.replica_status(backend.deployment_name)
        except BackendError as exc:
            said.append(f"{backend.name}: could not set its minimum replicas: {exc}")
            continue
        if wanted:
            said.append(f"{backend.name}: kept at {wanted} warm replica(s) for a session that is on")
        else:
            said.append(f"{backend.name}: {scaling.confirmation(status)}")
    return said
