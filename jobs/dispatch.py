"""The RQ task that runs one claimed job on its backend, and the sink that records what happens.

``dispatch_job(job_id)`` is enqueued on commit of a claim. It hands the job to its backend's provider and
turns what comes back into state changes, stored Artifacts and live events:

- the backend could not be reached or answered 5xx before accepting → back to the queue, attempt not
  counted, backend marked failing (its jobs wait for it instead of failing);
- the backend rejected the prompt (400) → failed with ComfyUI's own error;
- the backend lost a job it had accepted → back to the queue once, then failed with a reason;
- cancel / timeout → interrupt on the backend, then ``interrupted`` / ``timed_out``;
- the worker is told to stop (SIGTERM: a clean stop of the platform) → interrupt on the backend, then back to
  the queue with its attempt not counted (our stop ended it, not the job).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from gpu_backends.client import BackendError, FileRef
from gpu_backends.kinds import kind_of, provider_for
from gpu_backends.models import GpuBackend
from gpu_backends.providers import InputFile, RunOutcome, RunSpec
from gpu_backends.serverless import WorkerCallback
from gpu_backends.worker.prompts import Preview, PreviewThrottle
from storage.models import Artifact
from storage.stores import StorageError, StoredObject, default_store

from . import callbacks, events, metrics, trace
from .models import Job
from .services import finish_job, requeue_job

log = logging.getLogger(__name__)

HANDED_BACK = "The platform was stopped while it ran; queued again (attempt not counted)."
# Set by SIGTERM while a worker runs a dispatch: the run hands its job back at its next tick (within a second).
_stop_requested = threading.Event()
# A stop asks the GPU to interrupt the job and waits this long for it to confirm, then hands the job back anyway:
# the platform's stop must not wait out a GPU that does not answer (the interrupt was sent; a start's recovery
# removes the prompt from the backend again).
HAND_BACK_WAIT = 5.0


class HandedBack(Exception):
    """The worker is stopping: its job goes back to the queue without waiting any longer for the GPU."""


@contextlib.contextmanager
def _hand_back_on_stop() -> Iterator[None]:
    """While a dispatch runs in an RQ worker's main thread, a SIGTERM also asks the run to hand its job back.

    RQ's own handler (a warm shutdown: exit after the current task) still runs after ours; without this a clean
    stop waited for every running job to end, or cut it off and left it to the heartbeat timeout, which counted
    an attempt the job never lost. Outside a worker (no handler of RQ's to chain to) nothing is changed.
    """
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return

    def on_stop(signum: int, frame: Any) -> None:
        _stop_requested.set()
        previous(signum, frame)

    signal.signal(signal.SIGTERM, on_stop)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is on_stop:  # RQ replaces it with its cold shutdown on the first signal
            signal.signal(signal.SIGTERM, previous)


def rewrite_prompt_id(value: Any, old: str, new: str) -> Any:
    """Replace the backend's prompt id by the job's everywhere in a message (progress_state nests it)."""
    if old == new:
        return value
    if isinstance(value, dict):
        return {k: rewrite_prompt_id(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [rewrite_prompt_id(v, old, new) for v in value]
    return new if value == old else value


# ComfyUI messages whose arrival a job's trace notes (jobs.trace); the final one is noted as ``done``.
TRACED_MESSAGES = frozenset({"execution_start", "executed", "execution_success"})


class OutputRejected(Exception):
    """A GPU worker reported an output that is not where this job's outputs go, or not what it announced."""


class JobRun:
    """The sink a provider reports one job's run to (see gpu_backends.providers.RunSink)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.prompt_id = str(job.prompt_id)
        self.store = default_store()
        self.timeout = job.workshop.job_timeout
        self.heartbeat_every = settings.COMFYUME["HEARTBEAT_INTERVAL"]
        self.last_beat = time.monotonic()
        self.started = time.monotonic()
        self.finished_event_at: float | None = None
        self.stop_seen_at: float | None = None
        self.previews = PreviewThrottle(settings.COMFYUME["PREVIEW_FPS"])

    def accepted(self, response: dict[str, Any]) -> bool:
        trace.mark(self.job.pk, "accepted")
        ok = self.job.transition(Job.Status.RUNNING, backend_prompt_id=self.job.backend_prompt_id)
        backend = self.job.backend
        if backend is not None and kind_of(backend).cold_starts and backend.state != GpuBackend.State.READY:
            backend.mark(GpuBackend.State.READY)  # a replica took the job: the deployment is warm
        if ok:
            self.started = time.monotonic()
            metrics.observe("dispatch_latency_seconds", (timezone.now() - self.job.created_at).total_seconds())
            events.announce_job(self.job, queue_changed=False)  # running or dispatching, it counts the same
        return ok

    def event(self, message: dict[str, Any]) -> None:
        message = rewrite_prompt_id(message, self.job.backend_prompt_id, self.prompt_id)
        kind = message["type"]
        if kind == "executing" and message["data"].get("node") is None:
            self.finished_event_at = time.monotonic()
            trace.mark(self.job.pk, "done")
        elif kind in TRACED_MESSAGES:
            trace.mark(self.job.pk, kind)
        events.comfy_message(self.job.seat_id, self.job.workshop_id, message, self.job.seat.label)
        if self.finished_event_at is not None:
            # The participant is waiting for exactly this message: let the publisher thread send it (and what
            # is queued before it) before this thread records the outcome and claims the next job, instead of
            # sharing the GIL with them (docs/BENCHMARKS.md). Bounded: a Redis in trouble costs 1 s at most.
            events.flush(1.0)
            trace.mark(self.job.pk, "relayed")

    def preview(self, preview: Preview, running_node: str | None) -> None:
        frame = preview.frame(self.prompt_id, running_node)
        if frame is not None and self.previews.allows(time.monotonic()):
            events.preview(self.job.seat_id, self.prompt_id, frame)

    def store_output(self, node_id: str, ref: FileRef, content_type: str, chunks: Iterator[bytes]) -> dict[str, Any]:
        trace.mark(self.job.pk, "output_fetch")
        key, subfolder = callbacks.output_location(self.job, ref)
        stored = self.store.put(key, chunks, content_type=content_type)
        recorded = self._record(node_id, ref, subfolder, stored, content_type)
        trace.mark(self.job.pk, "output_stored")
        return recorded

    def record_file(self, node_id: str, ref: FileRef, stored: dict[str, Any]) -> dict[str, Any]:
        key, subfolder = callbacks.output_location(self.job, ref)
        if stored.get("key") != key:
            raise OutputRejected(
                f"The GPU worker put {ref.filename} at {stored.get('key')!r}, not at this job's {key!r}."
            )
        trace.mark(self.job.pk, "output_fetch")
        try:
            checked = self.store.verify(key, size=int(stored.get("size") or 0), sha256_hex=str(stored.get("sha256")))
        except (StorageError, ValueError) as exc:
            raise OutputRejected(f"The output {ref.filename} did not arrive intact: {exc}") from exc
        content_type = str(stored.get("content_type") or "application/octet-stream")
        recorded = self._record(node_id, ref, subfolder, checked, content_type)
        trace.mark(self.job.pk, "output_stored")
        return recorded

    def _record(
        self, node_id: str, ref: FileRef, subfolder: str, stored: StoredObject, content_type: str
    ) -> dict[str, Any]:
        artifact = Artifact(
            key=stored.key,
            job=self.job,
            node_id=node_id,
            filename=ref.filename,
            subfolder=subfolder,
            kind=Artifact.kind_for(content_type),
            size=stored.size,
            sha256=stored.sha256,
            content_type=content_type,
        )
        # One upsert: a job recovered from history may store the same file a second time.
        Artifact.objects.bulk_create(
            [artifact],
            update_conflicts=True,
            unique_fields=["key"],
            update_fields=["node_id", "size", "sha256", "content_type", "kind"],
        )
        return {"filename": ref.filename, "subfolder": subfolder, "type": "output"}

    def note_backend_ref(self, ref: str) -> None:
        self.job.backend_ref = ref[:128]
        Job.objects.filter(pk=self.job.pk).update(backend_ref=self.job.backend_ref)

    def tick(self) -> str | None:
        now = time.monotonic()
        if now - self.started > self.timeout:
            return "timeout"
        if _stop_requested.is_set():
            self.stop_seen_at = self.stop_seen_at or now
            if now - self.stop_seen_at > HAND_BACK_WAIT:
                raise HandedBack
            return "shutdown"
        if now - self.last_beat >= self.heartbeat_every:
            self.last_beat = now
            Job.objects.filter(pk=self.job.pk).update(heartbeat_at=timezone.now())
        # Cancel is asked from another process (a view, the admin); one indexed read a second notices it.
        if Job.objects.filter(pk=self.job.pk, cancel_requested_at__isnull=False).exists():
            return "cancel"
        return None


def _input_file(item: dict[str, Any]) -> InputFile:
    store = default_store()
    return InputFile(
        name=item["name"],
        open=lambda: store.open(item["key"]),
        content_type=item.get("content_type") or "application/octet-stream",
    )


def dispatch_job(job_id: int, attempt: int | None = None) -> str:
    """Run one claimed job to its end. Returns the final status (for RQ's records).

    ``attempt`` is the claim this task was enqueued for. A task left over from an earlier claim (its job
    was requeued by the reconciler and claimed again) must not run the new claim as well: the first
    heartbeat is taken with a conditional UPDATE, so exactly one task runs each claim.
    """
    close_old_connections()
    trace.mark(job_id, "dispatch")
    try:
        return _dispatch(job_id, attempt)
    finally:
        trace.save(job_id)


def _dispatch(job_id: int, attempt: int | None) -> str:
    job = Job.objects.select_related("seat", "workshop", "backend").filter(pk=job_id).first()
    if job is None or job.status != Job.Status.DISPATCHING or job.backend is None:
        return job.status if job else "missing"
    if attempt is not None and job.attempts != attempt:
        return "superseded"
    log_extra = {"job_id": job.pk, "seat": job.seat.label, "backend": job.backend.name}
    # A fresh backend prompt id per attempt: a retried job must not collide with what the backend kept.
    job.backend_prompt_id = str(job.prompt_id) if job.attempts <= 1 else str(uuid.uuid4())
    taken = Job.objects.filter(
        pk=job.pk, status=Job.Status.DISPATCHING, attempts=job.attempts, heartbeat_at__isnull=True
    ).update(backend_prompt_id=job.backend_prompt_id, heartbeat_at=timezone.now())
    if taken != 1:
        return "taken by another worker"
    spec = RunSpec(
        prompt=job.prompt,
        backend_prompt_id=job.backend_prompt_id,
        # The workshop's preview method, whatever the participant's frontend asked for (ComfyUI applies it per prompt).
        extra_data={**job.extra_data, "preview_method": job.workshop.preview_method},
        inputs=[_input_file(item) for item in job.inputs],
    )
    if kind_of(job.backend).needs_callback:
        spec.callback = _worker_callback(job)
    run = JobRun(job)
    trace.mark(job.pk, "run")
    try:
        with _hand_back_on_stop():
            outcome = provider_for(job.backend).run(spec, run)
    except BackendError as exc:
        return _backend_failed(job, exc, log_extra)
    except HandedBack:
        requeue_job(job, HANDED_BACK, count_attempt=False)
        return job.status
    except OutputRejected as exc:
        log.error("Job %s: %s", job.pk, exc, extra=log_extra)
        job.refresh_status()
        if job.status in Job.ACTIVE:
            finish_job(job, Job.Status.FAILED, reason=str(exc)[:500])
        return job.status
    except Exception as exc:
        log.exception("Job %s crashed in dispatch", job.pk, extra=log_extra)
        job.refresh_status()
        if job.status in Job.ACTIVE:
            finish_job(job, Job.Status.FAILED, reason=f"Internal error while running the job: {exc.__class__.__name__}")
        return job.status
    _record(job, outcome, run)
    trace.mark(job.pk, "recorded")
    events.flush()
    return job.status


def _worker_callback(job: Job) -> WorkerCallback:
    """This attempt's callback for a GPU worker: a fresh token, and where the worker fetches the inputs."""
    backend = job.backend
    assert backend is not None
    token = callbacks.issue_token(job)
    if backend.state == GpuBackend.State.COLD:
        backend.mark(GpuBackend.State.WARMING)  # the deployment had no replica: this request starts one
    return WorkerCallback(
        url=callbacks.callback_url(job),
        token=token,
        inputs=callbacks.input_urls(job, token),
        heartbeat_seconds=settings.COMFYUME["WORKER_HEARTBEAT"],
        preview_fps=0.0 if job.workshop.preview_method == "none" else settings.COMFYUME["PREVIEW_FPS"],
    )


def _record(job: Job, outcome: RunOutcome, run: JobRun) -> None:
    job.refresh_from_db(fields=["status", "cancel_requested_at"])
    if job.status not in Job.ACTIVE:
        return
    fields: dict[str, Any] = {"gpu_seconds": outcome.gpu_seconds, "outputs": outcome.outputs}
    if outcome.status == "succeeded":
        finish_job(job, Job.Status.SUCCEEDED, reason="", **fields)
    elif outcome.stop_reason == "shutdown":
        requeue_job(job, HANDED_BACK, count_attempt=False)
        return
    elif outcome.stop_reason == "timeout":
        finish_job(
            job, Job.Status.TIMED_OUT, reason=f"Stopped after the {job.workshop.job_timeout} s time limit.", **fields
        )
    elif outcome.status == "interrupted" and job.status == Job.Status.RUNNING:
        cancelled = outcome.stop_reason == "cancel" or job.cancel_requested_at is not None
        who = "Cancelled while running." if cancelled else "Interrupted on the GPU."
        finish_job(job, Job.Status.INTERRUPTED, reason=who, error=outcome.error, **fields)
    elif outcome.status == "interrupted":
        finish_job(job, Job.Status.CANCELLED, reason="Cancelled before it started.")
    else:
        message = (outcome.error or {}).get("exception_message") or "The workflow failed on the GPU."
        finish_job(job, Job.Status.FAILED, reason=str(message).strip()[:500], error=outcome.error, **fields)
    if run.finished_event_at is not None:
        metrics.observe("finish_to_record_seconds", time.monotonic() - run.finished_event_at)
    metrics.observe("end_to_end_seconds", (timezone.now() - job.created_at).total_seconds())


def _backend_failed(job: Job, exc: BackendError, log_extra: dict[str, Any]) -> str:
    job.refresh_status()
    if job.status not in Job.ACTIVE:
        return job.status
    if exc.permanent and exc.payload and "node_errors" in exc.payload:
        # ComfyUI rejected the prompt itself: no retry helps. Tell the participant's UI the way ComfyUI would.
        error = exc.payload.get("error") or {}
        finish_job(job, Job.Status.FAILED, reason=str(error.get("message", exc))[:500], error=exc.payload)
        events.comfy_message(
            job.seat_id,
            job.workshop_id,
            {
                "type": "execution_error",
                "data": {
                    "prompt_id": str(job.prompt_id),
                    "node_id": next(iter(exc.payload.get("node_errors") or {}), None),
                    "node_type": "",
                    "executed": [],
                    "exception_message": f"{error.get('message', '')}: {error.get('details', '')}".strip(": "),
                    "exception_type": str(error.get("type", "prompt_rejected")),
                    "traceback": [],
                    "current_inputs": {},
                    "current_outputs": [],
                },
            },
            job.seat.label,
        )
        return job.status
    if exc.lost:
        if job.attempts < settings.COMFYUME["MAX_ATTEMPTS"]:
            log.warning("Job %s lost on its backend; requeued: %s", job.pk, exc, extra=log_extra)
            requeue_job(job, f"The GPU lost the job ({exc}); it was queued again.")
        else:
            finish_job(job, Job.Status.FAILED, reason=f"The GPU lost the job twice ({exc}).")
        return job.status
    # Not reached, or 5xx before accepting: the backend is the problem, not the job.
    backend = job.backend
    assert backend is not None  # dispatch_job only runs jobs that have one
    log.warning("Backend %s failed for job %s: %s", backend.name, job.pk, exc, extra=log_extra)
    backend.mark(GpuBackend.State.FAILING, str(exc))
    requeue_job(job, f"The GPU backend did not answer ({exc}); waiting for it.", count_attempt=False)
    return job.status
