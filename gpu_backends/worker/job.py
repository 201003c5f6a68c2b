"""One job on the local ComfyUI: inputs → prompt → events → uploads → manifest (docs/GPU_WORKER.md).

:class:`JobRunner` runs a checked ``/run`` request (:mod:`.request`), following the protocol the hub's ComfyUI
provider follows (gpu_backends/providers.py):

1. fetch every input (size and sha256 checked) and upload it to ComfyUI under ``comfyume/<job>/``, so jobs
   sharing this ComfyUI never see each other's files; rewrite the prompt's values that name it;
2. open ``/ws?clientId=<fresh uuid>`` first, so no event of the prompt can be missed, then ``POST /prompt``
   with ``prompt_id = job``;
3. forward every message of the prompt to the callback, in order; on ``executed``, upload every file it names
   first, then forward it with ``comfyume_files``;
4. finish on ``executing {node: null}`` for the prompt (``execution_success`` can come before ComfyUI is done);
   after an error or interrupt ComfyUI still sends ``status`` and ``executing null``, waited for briefly;
5. if the socket drops, reconnect and ask ``/queue`` and ``/history`` where the prompt is.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .callback import Callback, HubError, presigned
from .comfy import ComfyClient, ComfyError, ComfyRejected
from .prompts import (
    FileRef,
    PreviewThrottle,
    decode_message,
    decode_preview,
    file_refs,
    history_failure,
    history_stamps,
    rewrite_inputs,
)
from .request import BadRequest, InputSpec, RunRequest

log = logging.getLogger("comfyume.worker")

# After an error or interrupt, ComfyUI still sends `status` and `executing {node: null}`; wait this long.
TERMINAL_GRACE = 2.0
# How long an interrupt may take to land (it lands only between nodes or at a progress tick).
INTERRUPT_GRACE = 30.0
# After a stop, how often the queue is looked at (a prompt deleted before it ran sends no event at all) and the
# stop asked again.
STOP_RECHECK = 1.0
# How long to wait for /history after the socket dropped (execution_success can precede it).
HISTORY_GRACE = 3.0
RECONNECT_ATTEMPTS = 5
# How often the event loop looks at stop requests while ComfyUI is quiet.
TICK = 0.25
INPUT_ATTEMPTS = 3
INPUT_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
CHUNK = 256 * 1024


@dataclass
class RunAnswer:
    """What ``/run`` answers: an HTTP status and its JSON body."""

    status: int
    body: dict[str, Any]


class InputError(Exception):
    """An input could not be fetched as announced (its message says which)."""


class ComfyLost(Exception):
    """ComfyUI no longer knows a prompt it had accepted (died, restarted)."""


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


def _outcome(answer: RunAnswer) -> str:
    """One word for the log: the manifest's status, or the error's type."""
    if answer.status == 200:
        return str(answer.body.get("status"))
    error = answer.body.get("error")
    return str(error.get("type")) if isinstance(error, dict) else "rejected"


@dataclass
class _Progress:
    """What is known about the prompt while it runs."""

    started: float | None = None
    finished: float | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    stored: dict[FileRef, dict[str, Any]] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    interrupted: dict[str, Any] | None = None
    terminal_at: float | None = None
    stop_sent_at: float | None = None
    next_stop_check: float = 0.0
    stamps: dict[str, float] = field(default_factory=dict)

    def gpu_seconds(self) -> float:
        if "history" in self.stamps:  # the socket missed the run: ComfyUI's own timestamps
            return self.stamps["history"]
        if self.started is None:
            return 0.0
        return (self.finished or time.monotonic()) - self.started


class JobRunner:
    """Runs one ``/run`` request to its end. ``request_stop`` (from ``/cancel`` or the hub's answers) interrupts it."""

    def __init__(
        self,
        request: RunRequest,
        *,
        comfy: ComfyClient,
        http: aiohttp.ClientSession,
        worker_info: dict[str, Any],
    ) -> None:
        self.request = request
        self.job = request.job
        self.comfy = comfy
        self.http = http
        self.worker_info = worker_info
        self.stop_reason: str | None = None
        self.state = _Progress()
        self.submitted = False
        self.recovered = False  # the socket dropped once: events may have been missed meanwhile
        self.workdir: Path | None = None
        self.callback: Callback | None = None
        self.previews = PreviewThrottle(request.preview_fps)
        self.running_node: str | None = None  # where a preview without metadata belongs
        if request.callback_url:
            self.callback = Callback(
                http,
                request.callback_url,
                request.callback_token,
                heartbeat_seconds=request.heartbeat_seconds,
                on_stop=self.request_stop,
            )

    def request_stop(self, reason: str) -> None:
        """Stop the job: it leaves ComfyUI's queue, or is interrupted if it runs (the event loop acts on it)."""
        if self.stop_reason is None:
            log.info("job %s: stop asked (%s)", self.job, reason)
            self.stop_reason = reason

    # --- the whole run ---
    async def run(self) -> RunAnswer:
        began = time.monotonic()
        log.info("job %s started (%d inputs)", self.job, len(self.request.inputs))
        self.workdir = Path(tempfile.mkdtemp(prefix=f"comfyume-{self.job[:40]}-"))
        if self.callback is not None:
            self.callback.start()
        answer = RunAnswer(500, _error("worker_error", "the worker failed (see its log)"))
        result: dict[str, Any] | None = None
        try:
            answer, result = await self._run()
        except asyncio.CancelledError:  # the worker is stopping
            answer = RunAnswer(503, _error("worker_stopped", "the worker stopped while the job ran"))
            await self._cancel_in_comfyui()
            raise
        except Exception as exc:
            log.exception("job %s: the worker failed", self.job)
            answer = RunAnswer(500, _error("worker_error", f"{exc.__class__.__name__}: {exc}"))
            await self._cancel_in_comfyui()
        finally:
            if self.callback is not None:
                await self.callback.close(result)
            shutil.rmtree(self.workdir, ignore_errors=True)
            log.info(
                "job %s ended: %s (HTTP %d) in %.1f s, gpu %.1f s, %d files",
                self.job,
                _outcome(answer),
                answer.status,
                time.monotonic() - began,
                self.state.gpu_seconds(),
                len(self.state.files),
            )
        return answer

    async def _run(self) -> tuple[RunAnswer, dict[str, Any] | None]:
        """(the answer, the manifest to post as the result or None)."""
        try:
            renamed = await self._stage_inputs()
        except InputError as exc:
            body = BadRequest(str(exc)).body
            return RunAnswer(400, body), self.manifest("rejected", body)
        except ComfyError as exc:
            return RunAnswer(503, _error("not_ready", f"ComfyUI refused an input upload: {exc}")), None
        if self.stop_reason:
            manifest = self.manifest("interrupted")
            return RunAnswer(200, manifest), manifest
        prompt = rewrite_inputs(self.request.prompt, renamed)
        client_id = uuid.uuid4().hex
        try:
            ws = await self.comfy.connect_ws(client_id)
        except ComfyError as exc:
            return RunAnswer(503, _error("not_ready", str(exc))), None
        try:
            try:
                await self.comfy.submit(
                    prompt, client_id=client_id, prompt_id=self.job, extra_data=self.request.extra_data
                )
            except ComfyRejected as exc:
                body = exc.payload if isinstance(exc.payload, dict) else {"error": exc.payload}
                return RunAnswer(400, body), self.manifest("rejected", body)
            except ComfyError as exc:
                # It may have been queued all the same (a timeout after ComfyUI took it): take it back.
                await self._cancel_in_comfyui(unconfirmed=True)
                return RunAnswer(503, _error("not_ready", str(exc))), None
            self.submitted = True
            try:
                await self._follow(ws, client_id)
            except ComfyLost as exc:
                return RunAnswer(502, _error("comfyui_lost", str(exc))), None
        finally:
            await ws.close()
        manifest = self.manifest(self._status())
        return RunAnswer(200, manifest), manifest

    def _status(self) -> str:
        """As the hub's ComfyUI provider decides it: a stop that landed before anything came out is an interrupt
        (a prompt deleted from the queue sends no event at all); a prompt that finished first succeeded."""
        state = self.state
        if state.interrupted is not None or (self.stop_reason and state.error is None and not state.outputs):
            return "interrupted"
        if state.error is not None:
            return "failed"
        return "succeeded"

    def manifest(self, status: str, error: dict[str, Any] | None = None) -> dict[str, Any]:
        state = self.state
        if error is None:
            error = state.interrupted if status == "interrupted" else state.error if status == "failed" else None
        return {
            "job": self.job,
            "status": status,
            "outputs": state.outputs,
            "files": state.files,
            "error": error,
            "gpu_seconds": round(state.gpu_seconds(), 3),
            "worker": self.worker_info,
        }

    # --- inputs ---
    async def _stage_inputs(self) -> dict[str, str]:
        """Fetch and check every input, upload it under comfyume/<job>/: prompt name -> ComfyUI's name."""
        assert self.workdir is not None
        renamed = {}
        for index, item in enumerate(self.request.inputs):
            path = self.workdir / f"input-{index}"
            await self._fetch_input(index, item, path)
            folder, _, filename = item.name.rpartition("/")
            subfolder = "/".join(p for p in ("comfyume", self.job, folder) if p)
            try:
                answer = await self.comfy.upload_image(
                    path, filename=filename, subfolder=subfolder, content_type=item.content_type
                )
            except ComfyError as exc:
                if exc.status is not None and 400 <= exc.status < 500:  # e.g. 413: the same next time
                    raise InputError(f"inputs[{index}] ({item.name}): ComfyUI refused it: {exc}") from exc
                raise
            path.unlink(missing_ok=True)
            renamed[item.name] = f"{answer.get('subfolder') or subfolder}/{answer.get('name') or filename}"
        return renamed

    async def _fetch_input(self, index: int, item: InputSpec, path: Path) -> None:
        what = f"inputs[{index}] ({item.name})"
        for attempt in range(1, INPUT_ATTEMPTS + 1):
            digest, size = hashlib.sha256(), 0
            try:
                async with self.http.get(presigned(item.url), timeout=INPUT_TIMEOUT) as response:
                    if response.status != 200:
                        if response.status < 500 or attempt == INPUT_ATTEMPTS:
                            raise InputError(f"{what}: GET answered {response.status}")
                        continue
                    with path.open("wb") as out:
                        async for chunk in response.content.iter_chunked(CHUNK):
                            size += len(chunk)
                            if size > item.size:
                                raise InputError(f"{what}: larger than its announced size of {item.size} bytes")
                            digest.update(chunk)
                            out.write(chunk)
            except (aiohttp.ClientError, TimeoutError) as exc:
                if attempt == INPUT_ATTEMPTS:
                    raise InputError(f"{what}: GET failed: {exc.__class__.__name__}: {exc}") from exc
                await asyncio.sleep(0.5 * attempt)
                continue
            if size != item.size:
                raise InputError(f"{what}: {size} bytes, not the announced {item.size}")
            if digest.hexdigest() != item.sha256:
                raise InputError(f"{what}: sha256 {digest.hexdigest()} does not match the announced {item.sha256}")
            return

    # --- following the prompt ---
    async def _follow(self, ws: aiohttp.ClientWebSocketResponse, client_id: str) -> None:
        """Read the prompt's events until it is done; ``ws`` may be replaced after a drop."""
        state = self.state
        try:
            while True:
                now = time.monotonic()
                if self.stop_reason and await self._stop_step(now):
                    return
                if state.terminal_at is not None and now - state.terminal_at > TERMINAL_GRACE:
                    return
                try:
                    frame = await ws.receive(timeout=TICK)
                except TimeoutError:
                    continue
                if frame.type == aiohttp.WSMsgType.TEXT:
                    message = decode_message(frame.data)
                    if message is None or message["data"].get("prompt_id") != self.job:
                        continue
                    if await self._handle(message):
                        return
                elif frame.type == aiohttp.WSMsgType.BINARY:
                    self._preview(frame.data)
                elif frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    log.warning("job %s: ComfyUI's socket closed; recovering", self.job)
                    await ws.close()
                    recovered = await self._recover(client_id)
                    if recovered is None:
                        return
                    ws = recovered
                elif frame.type == aiohttp.WSMsgType.ERROR:
                    log.warning("job %s: ComfyUI's socket failed (%s); recovering", self.job, ws.exception())
                    await ws.close()
                    recovered = await self._recover(client_id)
                    if recovered is None:
                        return
                    ws = recovered
        finally:
            await ws.close()

    def _preview(self, raw: bytes) -> None:
        """A live preview: ComfyUI sends the prompt's previews to its client only, and this socket's client is
        this job's; one between the start and the end (or naming the job) goes to the hub, throttled."""
        if self.callback is None or self.state.started is None or self.state.finished is not None:
            return
        preview = decode_preview(raw)
        if preview is None or preview.prompt_id not in (None, self.job):
            return
        frame = preview.frame(self.job, self.running_node)
        if frame is not None and self.previews.allows(time.monotonic()):
            self.callback.preview(frame)

    async def _stop_step(self, now: float) -> bool:
        """Act on a stop request; True when the job is over (deleted before it ran, or the interrupt never landed)."""
        state = self.state
        if state.terminal_at is not None:
            return False  # it has ended; ComfyUI's closing messages follow
        if state.stop_sent_at is None:
            state.stop_sent_at = now
        elif now - state.stop_sent_at > INTERRUPT_GRACE:
            log.warning("job %s: the interrupt did not land in %.0f s; giving up on it", self.job, INTERRUPT_GRACE)
            return True
        if now < state.next_stop_check:
            return False
        state.next_stop_check = now + STOP_RECHECK
        await self._cancel_in_comfyui()
        if state.started is not None:
            return False  # it runs: its execution_interrupted will come
        try:
            if await self.comfy.is_queued(self.job) or await self.comfy.history(self.job) is not None:
                return False
        except ComfyError as exc:
            log.warning("job %s: could not look at ComfyUI's queue: %s", self.job, exc)
            return False
        log.info("job %s: removed from ComfyUI's queue before it ran", self.job)
        return True

    async def _cancel_in_comfyui(self, *, unconfirmed: bool = False) -> None:
        """Take the prompt out of the queue if it waits, interrupt it if it runs (only it: by prompt_id).
        ``unconfirmed``: even though ComfyUI never said it took the prompt."""
        if not self.submitted and not unconfirmed:
            return
        try:
            await self.comfy.delete_from_queue(self.job)
            await self.comfy.interrupt(self.job)
        except ComfyError as exc:
            log.warning("job %s: could not cancel it in ComfyUI: %s", self.job, exc)

    async def _handle(self, message: dict[str, Any]) -> bool:
        """Apply and forward one message of the prompt; True when the prompt is done."""
        kind, data, state, now = message["type"], message["data"], self.state, time.monotonic()
        if kind == "executing":
            self.running_node = str(data["node"]) if data.get("node") is not None else None
        if kind == "execution_start":
            state.started = now
        elif kind == "executed" and isinstance(data.get("output"), dict):
            node_id = str(data.get("node"))
            data["comfyume_files"] = await self._store_outputs(node_id, data["output"])
            state.outputs[node_id] = data["output"]
        elif kind in ("execution_error", "execution_interrupted"):
            if kind == "execution_error":
                state.error = data
            else:
                state.interrupted = data
            state.terminal_at = now
            state.finished = state.finished or now
        elif kind == "execution_success":
            state.stamps["execution_success"] = now
            state.finished = state.finished or now
        done = kind == "executing" and data.get("node") is None
        if done:
            state.finished = state.finished or now
            if self.recovered:
                # What ComfyUI sent while the socket was down is lost; its history (written before this
                # message) has the outputs and errors, so replay the missed ones before the end.
                self.recovered = False
                await self._replay_from_history()
        if self.callback is not None:
            self.callback.send(message)
        return done

    async def _store_outputs(self, node_id: str, output: dict[str, Any]) -> list[dict[str, Any]]:
        """Upload every file an ``executed`` output names (each once per job); their comfyume_files entries."""
        state, entries = self.state, []
        for _, _, ref in file_refs(output):
            if not ref.filename:
                continue
            if ref in state.stored:
                if state.stored[ref] not in entries:
                    entries.append(state.stored[ref])
                continue
            if self.callback is None:  # no hub (the warm-up): nobody to give the file to
                continue
            entry = await self._upload(node_id, ref)
            if entry is not None:
                state.stored[ref] = entry
                state.files.append(entry)
                entries.append(entry)
        return entries

    async def _upload(self, node_id: str, ref: FileRef) -> dict[str, Any] | None:
        assert self.callback is not None and self.workdir is not None
        path = self.workdir / f"output-{len(self.state.files)}"
        try:
            size, sha256, content_type = await self.comfy.download(ref, path)
            meta = {
                "node_id": node_id,
                "filename": ref.filename,
                "subfolder": ref.subfolder,
                "type": ref.type,
                "content_type": content_type,
                "size": size,
                "sha256": sha256,
            }
            return await self.callback.store_file(path, meta)
        except (ComfyError, HubError) as exc:
            # The job goes on: the file stays named in `outputs`, missing from `files`.
            log.warning("job %s: output %s/%s not uploaded: %s", self.job, ref.subfolder, ref.filename, exc)
            return None
        finally:
            path.unlink(missing_ok=True)

    # --- after the socket dropped ---
    async def _recover(self, client_id: str) -> aiohttp.ClientWebSocketResponse | None:
        """Reconnect, then find the prompt: queued → the new socket; in history → finished from it (None)."""
        ws = None
        for attempt in range(RECONNECT_ATTEMPTS):
            await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
            try:
                ws = await self.comfy.connect_ws(client_id)
                break
            except ComfyError as exc:
                log.warning("job %s: reconnect %d to ComfyUI failed: %s", self.job, attempt + 1, exc)
        if ws is None:
            raise ComfyLost("lost the connection to ComfyUI while the job ran (ComfyUI died?)")
        # The socket is open again before we look, so whatever happens after the look arrives on it.
        self.recovered = True
        try:
            if await self.comfy.is_queued(self.job):
                return ws
            deadline = time.monotonic() + HISTORY_GRACE
            while True:
                entry = await self.comfy.history(self.job)
                if entry is not None:
                    await ws.close()
                    await self._finish_from_history(entry)
                    return None
                if self.stop_reason and self.state.started is None:
                    await ws.close()
                    return None  # we took it out of the queue ourselves
                if time.monotonic() > deadline:
                    await ws.close()
                    raise ComfyLost("ComfyUI no longer knows the prompt (restarted?)")
                await asyncio.sleep(0.2)
        except ComfyError as exc:
            await ws.close()
            raise ComfyLost(f"ComfyUI stopped answering after the socket dropped: {exc}") from exc

    async def _replay_from_history(self) -> None:
        try:
            entry = await self.comfy.history(self.job)
        except ComfyError as exc:
            log.warning("job %s: could not read its history after a reconnect: %s", self.job, exc)
            return
        if entry is not None:
            await self._replay_missed(entry)

    async def _replay_missed(self, entry: dict[str, Any]) -> dict[str, float]:
        """Forward the outputs and the error / interrupt of a history entry that the socket did not bring;
        ComfyUI's message timestamps (ms) by message type."""
        for node_id, output in (entry.get("outputs") or {}).items():
            if str(node_id) not in self.state.outputs and isinstance(output, dict):
                data = {"node": str(node_id), "display_node": str(node_id), "output": output, "prompt_id": self.job}
                await self._handle({"type": "executed", "data": data})
        stamps = history_stamps(entry)
        failure = history_failure(entry, self.job)
        if failure is not None and self.state.error is None and self.state.interrupted is None:
            await self._handle({"type": failure[0], "data": failure[1]})
        return stamps

    async def _finish_from_history(self, entry: dict[str, Any]) -> None:
        """The prompt ended while the socket was down: complete the hub's record from its history entry."""
        self.recovered = False
        stamps = await self._replay_missed(entry)
        if self.state.started is None and "execution_start" in stamps:
            # The socket missed the whole run: its duration from ComfyUI's own timestamps (ms).
            self.state.stamps["history"] = (max(stamps.values()) - stamps["execution_start"]) / 1000
        status = entry.get("status") or {}
        if status.get("status_str") == "success" and "execution_success" not in self.state.stamps:
            await self._handle({"type": "execution_success", "data": {"prompt_id": self.job}})
        await self._handle({"type": "executing", "data": {"node": None, "prompt_id": self.job}})
