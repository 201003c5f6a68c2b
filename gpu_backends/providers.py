"""GPU providers: one interface to run a job on a backend, whatever the backend is.

``Provider.run(spec, sink)`` runs one prompt to its end, handing every ComfyUI event and every output
file to ``sink`` as it happens, and returns a :class:`RunOutcome`. The ``comfyui`` provider speaks the
real protocol (the simulator speaks the same one, so it uses this provider too):

1. have ``/ws?clientId=…`` open first, so no event of the prompt can be missed (a worker keeps its socket
   between jobs: see :class:`EventSockets`);
2. ``POST /prompt`` with that socket's ``client_id`` and our own ``prompt_id``;
3. read events until ``executing {node: null}`` for the prompt — not ``execution_success``, which can
   arrive before ``/history`` is written;
4. fetch each file named by ``executed`` through ``/view`` and hand it to the sink;
5. if the socket drops, reconnect and ask ``/queue`` and ``/history`` where the prompt is, so a job is
   neither lost nor run twice; if it says nothing for ``QUIET_CHECK`` seconds (a long node, or a socket
   dropped on the way without a close), ask ``/history`` whether the prompt ended meanwhile.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, ClassVar, Protocol

import websocket

from .client import BackendError, ComfyUIClient, FileRef, decode_message
from .worker.prompts import Preview, decode_preview, file_refs, history_failure, history_stamps, rewrite_inputs

log = logging.getLogger(__name__)

# After an error or interrupt, ComfyUI still sends `status` and `executing {node: null}`; wait this long.
TERMINAL_GRACE = 2.0
# How long an interrupt may take to land (it lands only between nodes or at a progress tick).
INTERRUPT_GRACE = 30.0
# How long to wait for /history after the socket dropped (execution_success can precede it).
HISTORY_GRACE = 3.0
RECONNECT_ATTEMPTS = 5
# An event socket idle longer than this is closed instead of reused (a proxy or NAT may have dropped it quietly).
SOCKET_IDLE_REUSE = 60.0
# Idle event sockets a process keeps at most, over all backends.
SOCKET_IDLE_MAX = 8
# Seconds without a single frame on a job's event socket before /history is asked whether the prompt ended:
# a long node is quiet, but so is a socket that a proxy or NAT dropped without closing it.
QUIET_CHECK = 10.0


@dataclass
class RunSpec:
    """What the provider needs to run one job."""

    prompt: dict[str, Any]
    backend_prompt_id: str
    extra_data: dict[str, Any] = field(default_factory=dict)
    inputs: list[InputFile] = field(default_factory=list)
    # Serverless backends only: where the GPU worker reports (gpu_backends.serverless.WorkerCallback).
    callback: Any = None


@dataclass
class InputFile:
    """An image the participant uploaded that the prompt names (``name`` as in the prompt)."""

    name: str
    open: Callable[[], BinaryIO]
    content_type: str = "application/octet-stream"


class RunSink(Protocol):
    """Where a running job reports to (implemented by jobs.dispatch)."""

    def accepted(self, response: dict[str, Any]) -> bool:
        """The backend accepted the prompt. False: the job was cancelled meanwhile, stop it."""

    def event(self, message: dict[str, Any]) -> None:
        """One ComfyUI message about this prompt, in ComfyUI's format."""

    def store_output(self, node_id: str, ref: FileRef, content_type: str, chunks: Iterator[bytes]) -> dict[str, Any]:
        """Keep one output file; return the file reference the participant's UI should see."""

    def tick(self) -> str | None:
        """Called about once a second while waiting: heartbeat, and 'cancel' / 'timeout' to stop."""

    def record_file(self, node_id: str, ref: FileRef, stored: dict[str, Any]) -> dict[str, Any]:
        """A GPU worker uploaded an output itself (``stored``: key, size, sha256, content_type): check that it
        is where this job's outputs go and what was announced, record it, and return the reference the
        participant's UI should see."""

    def note_backend_ref(self, ref: str) -> None:
        """The provider's id of the request (Verda's X-Inference-Id), kept on the job for operators."""

    def preview(self, preview: Preview, running_node: str | None) -> None:
        """A live preview of the running prompt (a binary frame of ComfyUI's) and the node running when it came
        (where a frontend draws a preview without metadata); the sink may drop it."""


@dataclass
class RunOutcome:
    """How a run ended. ``status`` is one of succeeded, failed, interrupted."""

    status: str
    outputs: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    gpu_seconds: float = 0.0
    stop_reason: str | None = None  # 'cancel' or 'timeout' when we asked for the interrupt


class ReplicaState(Protocol):
    """A scaled deployment's replicas as its vendor reports them (gpu_backends.verda.ReplicaStatus)."""

    @property
    def state(self) -> str:
        """cold | warming | ready | failing | unknown"""

    @property
    def reason(self) -> str: ...

    @property
    def rolling_out(self) -> bool:
        """A new image is being rolled out: its nodes and models may differ."""

    @property
    def min_replicas(self) -> int:
        """The minimum the vendor keeps running now (its own setting, whoever set it)."""

    @property
    def running(self) -> int: ...

    @property
    def starting(self) -> int: ...

    @property
    def scale_down_delay(self) -> int:
        """Seconds the vendor keeps a replica above the minimum after its last request."""


class Scaler(Protocol):
    """A vendor's API for a deployment's minimum replica count (gpu_backends.verda.VerdaManagement)."""

    def set_min_replicas(self, name: str, count: int) -> Any: ...

    def replica_status(self, name: str) -> ReplicaState: ...


class Provider:
    """The interface every backend kind implements, and what the rest of the hub asks of a kind.

    A provider class answers for its kind, the way each healthchecks transport does: the questions are class
    attributes, so asking one costs no client (``gpu_backends.kinds.kind_of``), and no call site names a kind.
    The defaults are a server that is always on and asked directly (ComfyUI). This base class is also the
    answer for a kind nobody registered: it asks for nothing and cannot be built.
    """

    # Its GPU worker reports through the hub's callbacks (jobs/callbacks.py): the dispatch gives each attempt
    # a WorkerCallback in its RunSpec.
    needs_callback: ClassVar[bool] = False
    # A request to it may start a replica, and its bill: the health sweep and the submit path never ask it
    # (gpu_backends.services), its node list is read in the background, and its state comes from its scaler
    # and its jobs: a job it accepts, or a node list it answers, marks it ready.
    cold_starts: ClassVar[bool] = False
    # The hub sets its minimum replica count through scaler(): pre-warm, "Warm up now", scale to zero
    # (gpu_backends.scaling).
    scales: ClassVar[bool] = False
    # How an error of the scaler's API is prefixed on the backend, and what scaler() needs when it has no client.
    scaling_api: ClassVar[str] = ""
    scaler_needs: ClassVar[str] = ""

    @classmethod
    def for_backend(cls, backend: Any, cfg: dict[str, Any]) -> Provider:
        """This kind's provider for a GpuBackend row; ``cfg`` is ``settings.COMFYUME`` (its timeouts)."""
        raise BackendError(f"Backend {backend.name} has an unknown kind {backend.kind!r}", permanent=True)

    @classmethod
    def scaler(cls) -> Scaler | None:
        """The client that scales this kind's deployments; None when its settings are missing."""
        return None

    def health(self) -> dict[str, Any]:
        raise NotImplementedError

    def fetch_object_info(self) -> dict[str, Any]:
        raise NotImplementedError

    def run(self, spec: RunSpec, sink: RunSink) -> RunOutcome:
        raise NotImplementedError

    def cancel(self, backend_prompt_id: str) -> None:
        raise NotImplementedError


@dataclass
class _RunState:
    prompt_id: str
    started: float | None = None
    finished: float | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    stored: dict[FileRef, dict[str, Any]] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    interrupted: dict[str, Any] | None = None
    terminal_at: float | None = None
    stop_reason: str | None = None
    stop_sent_at: float | None = None
    reconnected: bool = False  # the socket dropped once: an `executed` may have been missed meanwhile
    running_node: str | None = None  # the last `executing` node (where a preview without metadata belongs)

    def outcome(self) -> RunOutcome:
        end = self.finished or time.monotonic()
        gpu = end - self.started if self.started is not None else 0.0
        if self.interrupted is not None or (self.stop_reason and self.error is None and not self.outputs):
            return RunOutcome("interrupted", self.outputs, self.interrupted, gpu, self.stop_reason)
        if self.error is not None:
            return RunOutcome("failed", self.outputs, self.error, gpu, self.stop_reason)
        return RunOutcome("succeeded", self.outputs, None, gpu, self.stop_reason)


@dataclass
class EventSocket:
    """An open ``/ws`` of one backend and the ``clientId`` it was opened with (ComfyUI sends a prompt's events
    to the sockets of the client that queued it)."""

    key: tuple[str, ...]
    client_id: str
    ws: websocket.WebSocket
    idle_since: float = 0.0


class EventSockets:
    """Event sockets kept open between jobs, per backend, for the next job of this process.

    Opening ``/ws`` costs a TCP connection, an HTTP upgrade and ComfyUI's greeting before the prompt can be
    sent: a few milliseconds of every job's start when the hub is busy. A worker runs one job at a time, so
    its socket waits here in between. A socket is taken again only if its last job ended without trouble and
    it has been idle less than ``SOCKET_IDLE_REUSE`` seconds; else a new one is opened. What arrived while it
    waited (ComfyUI's ``status`` broadcasts, late events of earlier prompts) is read and skipped by the next
    job while its prompt runs, not before it is sent. If the backend closed the socket meanwhile (a restart),
    that job finds out on its first read and recovers as from any dropped socket (reconnect, then ``/queue``
    and ``/history``). Each socket has its own ``clientId``, so two jobs running at once in one process never
    share one.
    """

    def __init__(self) -> None:
        self._idle: list[EventSocket] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    @staticmethod
    def _key(client: ComfyUIClient) -> tuple[str, ...]:
        auth = {k.lower(): v for k, v in client.headers.items()}.get("authorization", "")
        return (client.base_url, auth)

    def acquire(self, client: ComfyUIClient) -> EventSocket:
        key = self._key(client)
        while (sock := self._take(key)) is not None:
            if time.monotonic() - sock.idle_since < SOCKET_IDLE_REUSE and sock.ws.connected:
                return sock
            sock.ws.close()
        client_id = f"comfyume-{uuid.uuid4().hex[:16]}"
        return EventSocket(key, client_id, client.connect_ws(client_id))

    def _take(self, key: tuple[str, ...]) -> EventSocket | None:
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's sockets are not ours to read
                self._idle, self._pid = [], os.getpid()
            for index in range(len(self._idle) - 1, -1, -1):
                if self._idle[index].key == key:
                    return self._idle.pop(index)
        return None

    def release(self, sock: EventSocket, *, reusable: bool) -> None:
        if not reusable or not sock.ws.connected:
            sock.ws.close()
            return
        sock.idle_since = time.monotonic()
        with self._lock:
            self._idle.append(sock)
            surplus = self._idle[:-SOCKET_IDLE_MAX] if len(self._idle) > SOCKET_IDLE_MAX else []
            del self._idle[: len(surplus)]
        for old in surplus:
            old.ws.close()


EVENT_SOCKETS = EventSockets()


class ComfyUIProvider(Provider):
    """Runs jobs on a ComfyUI server (or the simulator) over HTTP + WebSocket."""

    def __init__(self, base_url: str, *, connect_timeout: float = 5.0, read_timeout: float = 30.0) -> None:
        self.client = ComfyUIClient(base_url, connect_timeout=connect_timeout, read_timeout=read_timeout)

    @classmethod
    def for_backend(cls, backend: Any, cfg: dict[str, Any]) -> ComfyUIProvider:
        return cls(
            backend.url, connect_timeout=cfg["BACKEND_CONNECT_TIMEOUT"], read_timeout=cfg["BACKEND_READ_TIMEOUT"]
        )

    def health(self) -> dict[str, Any]:
        return self.client.system_stats()

    def fetch_object_info(self) -> dict[str, Any]:
        return self.client.object_info()

    def cancel(self, backend_prompt_id: str) -> None:
        """Remove the prompt if it still waits on the backend, interrupt it if it runs."""
        self.client.delete_from_queue([backend_prompt_id])
        self.client.interrupt(backend_prompt_id)

    def upload_inputs(self, spec: RunSpec) -> dict[str, str]:
        """Put the job's uploaded images on the backend under a folder of their own, so seats sharing a
        backend never see (or overwrite) each other's files. Returns prompt name -> backend name."""
        renamed = {}
        for item in spec.inputs:
            folder, _, filename = item.name.rpartition("/")
            subfolder = "/".join(p for p in ("comfyume", spec.backend_prompt_id, folder) if p)
            with item.open() as handle:
                answer = self.client.upload_image(
                    handle, filename=filename, subfolder=subfolder, content_type=item.content_type
                )
            renamed[item.name] = f"{answer.get('subfolder') or subfolder}/{answer.get('name') or filename}"
        return renamed

    def run(self, spec: RunSpec, sink: RunSink) -> RunOutcome:
        prompt = rewrite_inputs(spec.prompt, self.upload_inputs(spec))
        sock = EVENT_SOCKETS.acquire(self.client)
        reusable = False
        try:
            response = self.client.submit(
                prompt, client_id=sock.client_id, prompt_id=spec.backend_prompt_id, extra_data=spec.extra_data
            )
            state = _RunState(prompt_id=spec.backend_prompt_id)
            if not sink.accepted(response):
                self._best_effort_cancel(spec.backend_prompt_id)
                outcome = RunOutcome("interrupted", stop_reason="cancel")
            else:
                outcome = self._follow(sock, sink, state)
            reusable = True
            return outcome
        finally:
            EVENT_SOCKETS.release(sock, reusable=reusable)

    def _best_effort_cancel(self, prompt_id: str) -> None:
        try:
            self.cancel(prompt_id)
        except BackendError as exc:
            log.warning("Could not cancel %s on the backend: %s", prompt_id, exc)

    def _follow(self, sock: EventSocket, sink: RunSink, state: _RunState) -> RunOutcome:
        last_tick = 0.0
        last_frame = time.monotonic()
        while True:
            now = time.monotonic()
            if now - last_tick >= 1.0:
                last_tick = now
                stop = sink.tick()
                if stop and state.stop_sent_at is None:
                    state.stop_reason, state.stop_sent_at = stop, now
                    self._best_effort_cancel(state.prompt_id)
            if state.stop_sent_at is not None and now - state.stop_sent_at > INTERRUPT_GRACE:
                log.warning("Interrupt of %s did not land in %ss; giving up on it", state.prompt_id, INTERRUPT_GRACE)
                return state.outcome()
            if state.terminal_at is not None and now - state.terminal_at > TERMINAL_GRACE:
                return state.outcome()
            try:
                raw = sock.ws.recv()
            except websocket.WebSocketTimeoutException:
                if now - last_frame >= QUIET_CHECK:
                    last_frame = now
                    ended = self._ended_while_quiet(sock, sink, state)
                    if ended is not None:
                        return ended
                continue
            except UnicodeDecodeError:  # a text frame that is not UTF-8: not a ComfyUI message
                last_frame = time.monotonic()
                continue
            except (websocket.WebSocketException, OSError) as exc:
                log.warning("Event socket for %s dropped (%s); recovering", state.prompt_id, exc)
                sock.ws.close()
                recovered = self._recover(sock, sink, state)
                if isinstance(recovered, RunOutcome):
                    return recovered
                state.reconnected = True
                last_frame = time.monotonic()
                continue
            last_frame = time.monotonic()
            if isinstance(raw, bytes):
                # ComfyUI sends a prompt's previews to its client only, and this socket follows one prompt at
                # a time: a frame between its start and its end is its own (or names it, with metadata).
                preview = decode_preview(raw) if state.started is not None and state.finished is None else None
                if preview is not None and preview.prompt_id in (None, state.prompt_id):
                    sink.preview(preview, state.running_node)
                continue
            # Most frames are about other prompts (ComfyUI broadcasts `status` to every socket): skip them
            # before parsing any JSON.
            if not isinstance(raw, str) or state.prompt_id not in raw:
                continue
            message = decode_message(raw)
            if message is None or message["data"].get("prompt_id") != state.prompt_id:
                continue
            if state.reconnected and message["type"] == "executing" and message["data"].get("node") is None:
                # Outputs sent while the socket was down are in /history: take them before finishing.
                entry = self.client.history(state.prompt_id)
                if entry is not None:
                    self._replay_outputs(entry, sink, state)
            if self._handle(message, sink, state):
                return state.outcome()

    def _handle(self, message: dict[str, Any], sink: RunSink, state: _RunState) -> bool:
        """Apply one message; True when the prompt is done."""
        kind, data = message["type"], message["data"]
        if kind == "executing":
            node = data.get("node")
            state.running_node = str(node) if node is not None else None
        if kind == "execution_start":
            state.started = time.monotonic()
        elif kind == "executed" and isinstance(data.get("output"), dict):
            data["output"] = self._store_outputs(str(data.get("node")), data["output"], sink, state)
            state.outputs[str(data.get("node"))] = data["output"]
        elif kind == "execution_error":
            state.error, state.terminal_at, state.finished = data, time.monotonic(), time.monotonic()
        elif kind == "execution_interrupted":
            state.interrupted, state.terminal_at, state.finished = data, time.monotonic(), time.monotonic()
        elif kind == "execution_success":
            state.finished = time.monotonic()
        sink.event(message)
        if kind == "executing" and data.get("node") is None:
            state.finished = state.finished or time.monotonic()
            return True
        return False

    def _store_outputs(self, node_id: str, output: dict[str, Any], sink: RunSink, state: _RunState) -> dict[str, Any]:
        rewritten = {key: list(value) if isinstance(value, list) else value for key, value in output.items()}
        for key, index, ref in file_refs(output):
            if ref not in state.stored:
                content_type, chunks = self.client.view(ref)
                state.stored[ref] = sink.store_output(node_id, ref, content_type, chunks)
            rewritten[key][index] = state.stored[ref]
        return rewritten

    def _ended_while_quiet(self, sock: EventSocket, sink: RunSink, state: _RunState) -> RunOutcome | None:
        """The socket has said nothing for ``QUIET_CHECK`` seconds: a long node, or a socket dropped on the way
        without a close (then the prompt's end would never arrive, and the job would wait out its time limit).
        /history answers which: a prompt that ended is finished from there, and its socket is not kept."""
        try:
            entry = self.client.history(state.prompt_id)
        except BackendError as exc:
            log.warning("Could not ask /history about quiet prompt %s: %s", state.prompt_id, exc)
            return None
        if entry is None:
            return None
        log.warning(
            "Event socket for %s went quiet and missed the prompt's end; finished from /history", state.prompt_id
        )
        sock.ws.close()
        return self._finish_from_history(entry, sink, state)

    def _recover(self, sock: EventSocket, sink: RunSink, state: _RunState) -> EventSocket | RunOutcome:
        """After the socket dropped: reconnect (same ``clientId``), then find the prompt in /queue or /history."""
        ws = None
        for attempt in range(RECONNECT_ATTEMPTS):
            time.sleep(min(0.2 * 2**attempt, 3.0))
            try:
                ws = self.client.connect_ws(sock.client_id)
                break
            except BackendError as exc:
                log.warning("Reconnect %d to the backend failed: %s", attempt + 1, exc)
        if ws is None:
            raise BackendError("Lost the connection to the backend while the job ran", lost=True)
        sock.ws = ws
        # The socket is open again before we look, so whatever happens after the look arrives on it.
        if self.client.is_queued(state.prompt_id):
            return sock
        deadline = time.monotonic() + HISTORY_GRACE
        while True:
            entry = self.client.history(state.prompt_id)
            if entry is not None:
                return self._finish_from_history(entry, sink, state)
            if time.monotonic() > deadline:
                raise BackendError("The backend no longer knows the job (restarted or replaced?)", lost=True)
            time.sleep(0.2)

    def _replay_outputs(self, entry: dict[str, Any], sink: RunSink, state: _RunState) -> None:
        """Send the UI the ``executed`` of every output in a history entry that the socket did not deliver."""
        for node_id, output in (entry.get("outputs") or {}).items():
            if node_id not in state.outputs and isinstance(output, dict):
                self._handle(
                    {
                        "type": "executed",
                        "data": {
                            "node": node_id,
                            "display_node": node_id,
                            "output": output,
                            "prompt_id": state.prompt_id,
                        },
                    },
                    sink,
                    state,
                )

    def _finish_from_history(self, entry: dict[str, Any], sink: RunSink, state: _RunState) -> RunOutcome:
        """Replay what the socket missed from the history entry, so the participant's UI completes."""
        self._replay_outputs(entry, sink, state)
        status = entry.get("status") or {}
        stamps = history_stamps(entry)
        failure = history_failure(entry, state.prompt_id)
        if failure is not None and state.error is None and state.interrupted is None:
            self._handle({"type": failure[0], "data": failure[1]}, sink, state)
        if state.started is None and "execution_start" in stamps:
            # The socket missed the whole run: take its duration from ComfyUI's own timestamps (ms).
            state.started, state.finished = 0.0, (max(stamps.values()) - stamps["execution_start"]) / 1000
        if status.get("status_str") == "success" and state.error is None:
            sink.event({"type": "execution_success", "data": {"prompt_id": state.prompt_id}})
        self._handle({"type": "executing", "data": {"node": None, "prompt_id": state.prompt_id}}, sink, state)
        return state.outcome()
