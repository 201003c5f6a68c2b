"""The serverless provider: one job is exactly one request to a GPU worker (docs/GPU_WORKER.md).

Verda's load balancer may send each request to any replica, so nothing is ever asked of "the" replica after
the job's request: the worker posts ComfyUI's events to the job's callback on the hub, uploads outputs straight
to object storage and answers with a manifest. The hub's web process drops each callback into the attempt's
:class:`~gpu_backends.mailbox.Mailbox`; this provider, running in the job's dispatch task, takes them out in
order and reports to the sink exactly as the ComfyUI provider does, so the participant's UI cannot tell the two
apart.

How a run ends:

- the worker's ``result`` callback (or, if every callback was lost, the request's own answer) carries the
  manifest → succeeded / failed / interrupted, with ComfyUI's own error;
- the worker answered 400 (ComfyUI rejected the prompt) → a permanent error with ComfyUI's body;
- the replica died (the request broke after the worker had started, the worker said ``comfyui_lost``, or it fell
  silent) → ``lost``: the job is retried once on a new request;
- not reachable / 429 / 5xx before any worker started → the job waits for the backend (not an attempt).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .client import BackendError, FileRef
from .mailbox import Mailbox
from .providers import Provider, RunOutcome, RunSink, RunSpec
from .worker.prompts import file_refs

log = logging.getLogger(__name__)

# Output nodes whose jobs run long enough to be sent as asynchronous requests in "auto" mode.
VIDEO_NODES = frozenset({"SaveVideo", "SaveWEBM", "VHS_VideoCombine", "SaveAnimatedWEBP", "SaveAnimatedPNG"})
MANIFEST_STATUSES = ("succeeded", "failed", "interrupted")


class Gateway(Protocol):
    """The requests the provider makes to the deployment (gpu_backends.verda.VerdaInference)."""

    def run_sync(self, path: str, body: dict[str, Any]) -> tuple[int, Any]: ...

    def submit_async(self, path: str, body: dict[str, Any]) -> str: ...

    def async_state(self, inference_id: str) -> str: ...

    def result(self, inference_id: str) -> tuple[int, Any] | None: ...

    def get(self, path: str) -> Any: ...


@dataclass
class WorkerCallback:
    """Where the worker reports this attempt, and what it fetches (built by the dispatch task)."""

    url: str
    token: str
    inputs: list[dict[str, Any]] = field(default_factory=list)  # [{name, url, size, sha256, content_type}]
    heartbeat_seconds: float = 5.0
    preview_fps: float = 0.0  # live previews the worker posts per second, at most


@dataclass
class Timing:
    silence: float = 90.0  # no callback for this long from a started worker: the replica is gone
    cold_start: float = 20 * 60.0  # no worker started this long after the request: give the job back
    poll: float = 15.0  # asynchronous requests: how often Verda's status is asked (a backstop, not the hot path)
    interrupt_grace: float = 60.0  # after asking the worker to stop


def wants_async(prompt: dict[str, Any], mode: str) -> bool:
    if mode in ("sync", "async"):
        return mode == "async"
    return any(isinstance(node, dict) and node.get("class_type") in VIDEO_NODES for node in prompt.values())


class ServerlessProvider(Provider):
    """Runs jobs through a GPU worker behind a gateway (Verda), reporting through callbacks.

    What makes a vendor's kind (its gateway, its scaler, its settings) is a subclass: gpu_backends.kinds."""

    needs_callback = True
    cold_starts = True

    def __init__(self, gateway: Gateway, *, mode: str = "auto", timing: Timing | None = None) -> None:
        self.gateway = gateway
        self.mode = mode
        self.timing = timing or Timing()

    def health(self) -> dict[str, Any]:
        """The worker's readiness. Note: on a deployment scaled to zero this request starts a replica."""
        answer = self.gateway.get("/ready")
        return answer if isinstance(answer, dict) else {"ready": True}

    def fetch_object_info(self) -> dict[str, Any]:
        info = self.gateway.get("/object_info")
        if not isinstance(info, dict) or not info:
            raise BackendError("object_info from the GPU worker is empty or not a JSON object")
        return info

    def cancel(self, backend_prompt_id: str) -> None:
        """Answered on the worker's next callback (its heartbeat comes every few seconds)."""
        Mailbox(backend_prompt_id).request_stop("cancel")

    def run(self, spec: RunSpec, sink: RunSink) -> RunOutcome:
        callback = spec.callback
        if callback is None:
            raise BackendError("A serverless job needs a callback (the dispatch task builds one)", permanent=True)
        body = {
            "job": spec.backend_prompt_id,
            "prompt": spec.prompt,
            "extra_data": spec.extra_data,
            "inputs": callback.inputs,
            "callback": {"url": callback.url, "token": callback.token},
            "heartbeat_seconds": callback.heartbeat_seconds,
            "preview_fps": callback.preview_fps,
        }
        follower = _Follower(spec, sink, Mailbox(spec.backend_prompt_id), self.timing)
        if wants_async(spec.prompt, self.mode):
            inference_id = self.gateway.submit_async("/run", body)
            sink.note_backend_ref(inference_id)
            return follower.follow(_AsyncRequest(self.gateway, inference_id, self.timing.poll))
        request = _SyncRequest(lambda: self.gateway.run_sync("/run", body))
        request.start()
        return follower.follow(request)


class _Request(Protocol):
    def answer(self) -> tuple[int, Any] | BackendError | None:
        """The request's answer once it has one (status, body), the error it ended with, or None."""


class _SyncRequest:
    """The job's one synchronous request, waiting in a thread while callbacks are handled."""

    def __init__(self, call: Callable[[], tuple[int, Any]]) -> None:
        self._call = call
        self._answer: tuple[int, Any] | BackendError | None = None
        self._thread = threading.Thread(target=self._run, name="gpu-worker-request", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self._answer = self._call()
        except BackendError as exc:
            self._answer = exc
        except Exception as exc:  # the thread must report, never die silently
            self._answer = BackendError(f"The request to the GPU worker failed: {exc.__class__.__name__}: {exc}")

    def answer(self) -> tuple[int, Any] | BackendError | None:
        return self._answer


class _AsyncRequest:
    """An asynchronous request: Verda keeps its status and result; asked every ``poll`` seconds as a backstop."""

    def __init__(self, gateway: Gateway, inference_id: str, poll: float) -> None:
        self.gateway = gateway
        self.inference_id = inference_id
        self.poll = poll
        self.next_poll = time.monotonic() + poll

    def answer(self) -> tuple[int, Any] | BackendError | None:
        if time.monotonic() < self.next_poll:
            return None
        self.next_poll = time.monotonic() + self.poll
        try:
            state = self.gateway.async_state(self.inference_id)
            if state in ("done", "failed"):
                result = self.gateway.result(self.inference_id)
                if result is not None:
                    return result
                if state == "failed":
                    return BackendError(f"Verda reports request {self.inference_id} failed", lost=True)
        except BackendError as exc:
            if exc.lost or exc.permanent:
                return exc
            log.warning("Status of request %s unknown for now: %s", self.inference_id, exc)
        return None


@dataclass
class _State:
    seq: int = 0
    started: bool = False
    last_heard: float = 0.0
    saw_end: bool = False
    error: dict[str, Any] | None = None
    interrupted: dict[str, Any] | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    refs: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)  # worker's name → hub's
    stop_reason: str | None = None
    stop_sent_at: float | None = None


class _Follower:
    """Takes one attempt's callbacks out of its mailbox and reports them to the sink, in order."""

    def __init__(self, spec: RunSpec, sink: RunSink, mailbox: Mailbox, timing: Timing) -> None:
        self.spec = spec
        self.sink = sink
        self.mailbox = mailbox
        self.timing = timing
        self.prompt_id = spec.backend_prompt_id
        self.state = _State()
        self.sent_at = time.monotonic()

    def follow(self, request: _Request) -> RunOutcome:
        last_tick = 0.0
        try:
            while True:
                now = time.monotonic()
                if now - last_tick >= 1.0:
                    last_tick = now
                    stopped = self._tick()
                    if stopped is not None:
                        return stopped
                item = self.mailbox.receive(timeout=0.5)
                if item is not None:
                    outcome = self._handle(item)
                    if outcome is not None:
                        return outcome
                # Checked every turn: heartbeats keep the mailbox busy, and a broken request must still be seen.
                answer = request.answer()
                if answer is not None:
                    outcome = self._answered(answer)
                    if outcome is not None:
                        return outcome
                self._watch(time.monotonic())
        finally:
            self.mailbox.discard()

    # --- what the worker posted ---
    def _handle(self, item: dict[str, Any]) -> RunOutcome | None:
        self.state.last_heard = time.monotonic()
        if not self.state.started:
            self.state.started = True
            if not self.sink.accepted({"prompt_id": self.prompt_id}):
                self._ask_stop("cancel")
        if item.get("kind") == "events":
            seq = item.get("seq")
            if not isinstance(seq, int) or seq <= self.state.seq:
                return None  # a repeated post: already applied
            self.state.seq = seq
            for message in item.get("messages") or []:
                if isinstance(message, dict):
                    self._apply(message)
            return None
        if item.get("kind") == "result":
            return self._finish(item.get("manifest") or {})
        return None

    def _apply(self, message: dict[str, Any]) -> None:
        kind, data = message.get("type"), message.get("data")
        if not isinstance(kind, str) or not isinstance(data, dict) or data.get("prompt_id") != self.prompt_id:
            return
        if kind == "executed" and isinstance(data.get("output"), dict):
            self._record_files(data.pop("comfyume_files", None) or [])
            node = str(data.get("node"))
            data["output"] = self._rewrite(data["output"])
            self.state.outputs[node] = data["output"]
        elif kind == "execution_error":
            self.state.error = data
        elif kind == "execution_interrupted":
            self.state.interrupted = data
        elif kind == "executing" and data.get("node") is None:
            self.state.saw_end = True
        self.sink.event({"type": kind, "data": data})

    def _record_files(self, files: list[Any]) -> None:
        for item in files:
            if not isinstance(item, dict):
                continue
            ref = FileRef(
                str(item.get("filename")), str(item.get("subfolder") or ""), str(item.get("type") or "output")
            )
            name = (ref.filename, ref.subfolder, ref.type)
            if name in self.state.refs:
                continue
            self.state.refs[name] = self.sink.record_file(str(item.get("node_id") or ""), ref, item)

    def _rewrite(self, output: dict[str, Any]) -> dict[str, Any]:
        rewritten: dict[str, Any] = {}
        for key, value in output.items():
            if isinstance(value, list):
                value = [self._hub_ref(item) for item in value]
            rewritten[key] = value
        return rewritten

    def _hub_ref(self, item: Any) -> Any:
        if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
            return item
        name = (item["filename"], str(item.get("subfolder") or ""), str(item.get("type") or "output"))
        return self.state.refs.get(name, item)

    def _finish(self, manifest: dict[str, Any]) -> RunOutcome:
        """The manifest: record anything the events missed, complete the participant's UI, return the outcome."""
        status = manifest.get("status")
        if status == "rejected":
            error = manifest.get("error")
            raise _refused(error if isinstance(error, dict) else {})
        if status not in MANIFEST_STATUSES:
            raise BackendError(f"The GPU worker answered an unknown status {status!r}", lost=True)
        self._record_files(manifest.get("files") or [])
        for node_id, output in (manifest.get("outputs") or {}).items():
            if str(node_id) not in self.state.outputs and isinstance(output, dict):
                # The events never arrived (callbacks lost): replay what the UI needs from the manifest.
                self._apply(
                    {
                        "type": "executed",
                        "data": {
                            "node": node_id,
                            "display_node": node_id,
                            "output": output,
                            "prompt_id": self.prompt_id,
                        },
                    }
                )
        error = manifest.get("error") if isinstance(manifest.get("error"), dict) else None
        if status == "failed" and self.state.error is None and error is not None:
            self._apply({"type": "execution_error", "data": {**error, "prompt_id": self.prompt_id}})
        if status == "interrupted" and self.state.interrupted is None:
            self._apply({"type": "execution_interrupted", "data": {**(error or {}), "prompt_id": self.prompt_id}})
        if not self.state.saw_end:
            if status == "succeeded":
                self.sink.event({"type": "execution_success", "data": {"prompt_id": self.prompt_id}})
            self._apply({"type": "executing", "data": {"node": None, "prompt_id": self.prompt_id}})
        gpu = float(manifest.get("gpu_seconds") or 0.0)
        if status == "interrupted" or (self.state.stop_reason and status != "succeeded"):
            return RunOutcome(
                "interrupted", self.state.outputs, self.state.interrupted or error, gpu, self.state.stop_reason
            )
        if status == "failed":
            return RunOutcome("failed", self.state.outputs, self.state.error or error, gpu, self.state.stop_reason)
        lost = self._unstored()
        if lost:
            # The worker could not upload these (storage unreachable, a refused PUT): a result without them is
            # not a success, and the participant is told which files are missing.
            names = ", ".join(sorted(lost)[:5]) + (" …" if len(lost) > 5 else "")
            failure = {
                "prompt_id": self.prompt_id,
                "exception_type": "output_not_stored",
                "exception_message": f"The GPU made {len(lost)} output file(s) that could not be stored: {names}. "
                "Run it again; if it happens again, tell the instructor (storage may be unreachable).",
            }
            return RunOutcome("failed", self.state.outputs, failure, gpu, self.state.stop_reason)
        return RunOutcome("succeeded", self.state.outputs, None, gpu, self.state.stop_reason)

    def _unstored(self) -> list[str]:
        """Files named in the outputs that the hub has no stored copy of."""
        stored = {(ref.get("filename"), ref.get("subfolder")) for ref in self.state.refs.values()}
        return [
            ref.filename
            for output in self.state.outputs.values()
            if isinstance(output, dict)
            for _, _, ref in file_refs(output)
            if (ref.filename, ref.subfolder) not in stored
        ]

    # --- the request's own answer ---
    def _answered(self, answer: tuple[int, Any] | BackendError) -> RunOutcome | None:
        if isinstance(answer, BackendError):
            if self.state.started and not answer.permanent:
                raise BackendError(f"The GPU replica was lost while running the job ({answer})", lost=True)
            raise answer
        status, body = answer
        body = body if isinstance(body, dict) else {}
        if status == 200:
            # Callbacks still on their way are applied first (the worker posts the result before it answers).
            while (item := self.mailbox.receive(timeout=0.05)) is not None:
                outcome = self._handle(item)
                if outcome is not None:
                    return outcome
            return self._finish(body)
        error: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else {}
        if status == 400:
            raise _refused(body)
        if status == 409:
            # This job id already runs on the replica (an earlier request for it): that one reports, not this.
            raise BackendError(f"The GPU worker already runs this job: {error.get('message', '')}", lost=True)
        if status == 502 or error.get("type") == "comfyui_lost":
            raise BackendError(f"The GPU's ComfyUI lost the job: {error.get('message', '')}".rstrip(": "), lost=True)
        if status == 503:
            raise BackendError("The GPU worker is not ready yet (still starting)", status=503)
        raise BackendError(f"The GPU worker answered {status}: {error.get('message', body)}", status=status)

    # --- time ---
    def _tick(self) -> RunOutcome | None:
        stop = self.sink.tick()
        if stop and self.state.stop_sent_at is None:
            self._ask_stop(stop)
        if self.state.stop_reason and not self.state.started:
            # No replica has the job yet: nothing to interrupt. If one takes it later, its first callback is
            # refused (the job has ended) and the worker drops it.
            return RunOutcome("interrupted", stop_reason=self.state.stop_reason)
        return None

    def _ask_stop(self, reason: str) -> None:
        self.state.stop_reason = reason
        self.state.stop_sent_at = time.monotonic()
        self.mailbox.request_stop(reason)

    def _watch(self, now: float) -> None:
        if self.state.stop_sent_at is not None and now - self.state.stop_sent_at > self.timing.interrupt_grace:
            raise BackendError(f"The GPU worker did not stop within {self.timing.interrupt_grace:.0f} s", lost=True)
        if self.state.started and now - self.state.last_heard > self.timing.silence:
            raise BackendError(f"The GPU worker fell silent for {self.timing.silence:.0f} s (replica gone?)", lost=True)
        if not self.state.started and now - self.sent_at > self.timing.cold_start:
            raise BackendError(f"No GPU replica took the job within {self.timing.cold_start / 60:.0f} min")


def _refused(body: dict[str, Any]) -> BackendError:
    """The job itself was refused, and no retry helps: ComfyUI's own 400 (``node_errors``), or the worker's
    (an input that did not arrive intact, a malformed request). Shaped like ComfyUI's, so the job fails with it
    and the participant's UI shows it."""
    error: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else {}
    message = str(error.get("message") or "The job was refused")
    if "node_errors" in body:
        return BackendError(
            f"The GPU's ComfyUI rejected the prompt: {message}", permanent=True, status=400, payload=body
        )
    payload = {
        "error": {"type": str(error.get("type") or "bad_request"), "message": message, "details": "", "extra_info": {}},
        "node_errors": {},
    }
    return BackendError(f"The GPU worker refused the job: {message}", permanent=True, status=400, payload=payload)
