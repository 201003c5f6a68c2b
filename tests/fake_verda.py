"""A fake of Verda serverless containers over real HTTP, and its pytest fixtures (a pytest plugin).

Two aiohttp servers on 127.0.0.1 (or ``host``) in one background thread, as faithful to Verda as docs/VERDA.md allows:

- the inference gateway (``gateway_url``, standing in for https://containers.datacrunch.io):
  ``/<deployment>/<path>`` is forwarded to the deployment's upstream (the GPU worker on a real port) after the
  Bearer inference key is checked. A wrong or missing key, or an unknown deployment, answers **404** — Verda's
  answer, not 401. ``Prefer: respond-async`` answers 202 ``{"Id", "StatusPath", "ResultPath"}`` with the headers
  ``X-Inference-Id`` and ``Location``, runs the request in the background, and serves ``/status/<deployment>``
  and ``/result/<deployment>`` (with ``X-Inference-Id``). A deployment without a running replica starts one on
  the first request (a cold start of ``startup_delay`` seconds) and holds the request until it is up.
- the management API (``api_url``, standing in for https://api.datacrunch.io/v1): ``POST /oauth2/token``
  (client credentials), ``/container-deployments/<name>`` and its ``/status``, ``/scaling`` (GET, PATCH),
  ``/replicas``, ``/pause``, ``/resume``; Verda's ``{"code", "message"}`` errors. Raising the minimum replicas
  starts replicas (``starting`` for ``startup_delay`` seconds, then ``running``); lowering it removes idle ones.

Where Verda's behaviour is not documented (see "Not confirmed" in docs/VERDA.md), the fake picks something
plausible and says so in a comment.

Fault knobs: :meth:`FakeVerda.fail_next` (429/500/503… for the next N inference requests), :meth:`kill_next`
and :meth:`kill_replicas` (the replica dies mid-request: the client's connection drops; the upstream request is
cut or keeps running), :meth:`delay_next` (extra latency before forwarding), :meth:`fail_api_next`,
:meth:`expire_tokens`. Every request is recorded in :attr:`FakeVerda.requests`.

Cutting the upstream connection does not stop a worker that carries on after its client went away (an aiohttp
app without handler cancellation, like the GPU worker). To make a replica's death real, give the deployment an
``on_replica_death`` hook (e.g. stop the worker process, start a new one and point ``deployment.upstream`` at
it); it runs before the caller sees its connection drop.

Fixture: ``fake_verda`` (a fresh, started :class:`FakeVerda`). Helper: :class:`AppServer` serves any aiohttp
app on a real port (a test upstream).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from tests.app_server import AppServer

INFERENCE_KEY = "dc_fake-inference-key"
CLIENT_ID = "fake-client-id"
CLIENT_SECRET = "fake-client-secret"
HOP_BY_HOP = frozenset(
    {"authorization", "host", "prefer", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade",
     "x-inference-id", "te", "trailer", "proxy-authorization"}
)  # fmt: skip
AnswerT = TypeVar("AnswerT", bound=web.StreamResponse)
DEFAULT_SCALING: dict[str, Any] = {
    "min_replica_count": 0,
    "max_replica_count": 1,
    "scale_down_policy": {"delay_seconds": 300},
    "scale_up_policy": {"delay_seconds": 0},
    "queue_message_ttl_seconds": 3600,
    "concurrent_requests_per_replica": 1,
    "scaling_triggers": {
        "queue_load": {"threshold": 1},
        "cpu_utilization": {"enabled": False},
        "gpu_utilization": {"enabled": False},
    },
}


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class SeenRequest:
    """One request the fake received, and what it answered (``None``: no answer, the connection was dropped)."""

    server: str  # "gateway" | "api"
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    deployment: str | None = None
    answered: int | None = None


@dataclass(eq=False)
class FakeReplica:
    id: str
    started_at: str
    ready_at: float  # time.monotonic()
    busy: int = 0
    death: asyncio.Future[None] | None = None  # set once the replica has died

    @property
    def status(self) -> str:
        return "running" if time.monotonic() >= self.ready_at else "starting"


@dataclass
class FakeDeployment:
    name: str
    upstream: str  # base URL the gateway forwards to (the GPU worker)
    scaling: dict[str, Any]
    startup_delay: float = 0.0  # a new replica is "starting" this long
    paused: bool = False
    status_override: str | None = None  # e.g. "quota_reached", "unhealthy"
    # Called (in a thread) when a replica dies and its upstream is not to keep running, e.g. to stop the worker
    # process as a real replica's death would: cutting the connection alone does not stop an aiohttp worker.
    on_replica_death: Callable[[FakeReplica], None] | None = None
    replicas: list[FakeReplica] = field(default_factory=list)


@dataclass
class FakeAsyncRequest:
    id: str
    deployment: str
    status: str = "Initialized"  # Initialized → Queue → Inference → Completed (Verda's words); Failed: ours
    result_status: int | None = None
    result_body: bytes = b""
    result_type: str = "application/json"
    finished_at: float | None = None


@dataclass
class _Fault:
    kind: str  # "status" | "kill" | "delay"
    status: int = 0
    body: Any = None
    seconds: float = 0.0
    upstream_keeps_running: bool = False


@dataclass
class _Inflight:
    replica: FakeReplica
    killed: asyncio.Event
    upstream_keeps_running: bool = False


class FakeVerda:
    """The fake; ``FakeVerda().start()`` (or ``with FakeVerda() as fake``) is listening when it returns."""

    def __init__(
        self,
        *,
        inference_keys: tuple[str, ...] = (INFERENCE_KEY,),
        clients: dict[str, str] | None = None,
        token_ttl: float = 3600.0,
        unauthorized_status: int = 404,
        result_ttl: float = 3600.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.inference_keys = set(inference_keys)
        self.clients = dict(clients or {CLIENT_ID: CLIENT_SECRET})
        self.token_ttl = token_ttl  # seconds; the token endpoint's expires_in
        self.unauthorized_status = unauthorized_status  # what a bad inference key gets (Verda: 404)
        self.result_ttl = result_ttl  # how long async results are kept (Verda's own retention: not documented)
        self.deployments: dict[str, FakeDeployment] = {}
        self.async_requests: dict[str, FakeAsyncRequest] = {}
        self.requests: list[SeenRequest] = []
        self.hook_errors: list[BaseException] = []  # raised by on_replica_death hooks
        self.tokens: dict[str, float] = {}  # access token → expiry (monotonic)
        self.refresh_tokens: set[str] = set()
        self.tokens_issued = 0
        self.lock = threading.RLock()
        self._faults: deque[_Fault] = deque()
        self._api_faults: deque[tuple[int, Any]] = deque()
        self._inflight: list[_Inflight] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._server = AppServer(self._gateway_app(), self._api_app(), host=host)

    # --- lifecycle ---
    def start(self) -> FakeVerda:
        self._server.start()
        return self

    def stop(self) -> None:
        server = self._server
        if server.loop is not None and server.loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._close(), server.loop)
            future.result(timeout=10)
        server.stop()

    async def _close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def __enter__(self) -> FakeVerda:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def gateway_url(self) -> str:
        return self._server.urls[0]

    @property
    def api_url(self) -> str:
        return f"{self._server.urls[1]}/v1"

    def deployment_url(self, name: str) -> str:
        return f"{self.gateway_url}/{name}"

    # --- set-up and knobs (call from the test's thread) ---
    def add_deployment(
        self,
        name: str,
        upstream: str,
        *,
        min_replicas: int = 0,
        max_replicas: int = 1,
        startup_delay: float = 0.0,
        running: bool = False,
        on_replica_death: Callable[[FakeReplica], None] | None = None,
        **scaling: Any,
    ) -> FakeDeployment:
        """A deployment forwarding to ``upstream``; ``running=True`` starts its min replicas already up.

        ``on_replica_death(replica)`` runs in a thread when a replica dies (unless its upstream is to keep
        running), before the client sees its connection drop. ``deployment.upstream`` may be changed at any
        time (e.g. by the hook, to a restarted worker).
        """
        options = {**DEFAULT_SCALING, **scaling, "min_replica_count": min_replicas, "max_replica_count": max_replicas}
        deployment = FakeDeployment(
            name, upstream.rstrip("/"), options, startup_delay=startup_delay, on_replica_death=on_replica_death
        )
        with self.lock:
            self.deployments[name] = deployment
            self._reconcile(deployment)
            if running:
                for replica in deployment.replicas:
                    replica.ready_at = time.monotonic()
        return deployment

    def fail_next(self, status: int, count: int = 1, *, body: Any = None) -> None:
        """The next ``count`` inference requests get ``status`` from the gateway (429 queue full, 500, 503…)."""
        with self.lock:
            for _ in range(count):
                self._faults.append(_Fault("status", status=status, body=body))

    def kill_next(self, count: int = 1, *, after: float = 0.2, upstream_keeps_running: bool = False) -> None:
        """The next ``count`` inference requests are forwarded, then their replica dies ``after`` seconds later.

        The client's connection drops without an answer (an async request becomes ``Failed``). The upstream
        request is cut and the deployment's ``on_replica_death`` hook runs, or, with ``upstream_keeps_running``,
        the request is left to finish unobserved.
        """
        with self.lock:
            for _ in range(count):
                self._faults.append(_Fault("kill", seconds=after, upstream_keeps_running=upstream_keeps_running))

    def delay_next(self, seconds: float, count: int = 1) -> None:
        """The next ``count`` inference requests wait ``seconds`` before being forwarded."""
        with self.lock:
            for _ in range(count):
                self._faults.append(_Fault("delay", seconds=seconds))

    def kill_replicas(self, name: str, *, upstream_keeps_running: bool = False) -> None:
        """Every replica of ``name`` dies now: requests in flight on them drop, and they leave the replica list."""
        deployment = self.deployments[name]

        def kill() -> None:
            with self.lock:
                replicas = list(deployment.replicas)
                for inflight in self._inflight:
                    if inflight.replica in replicas:
                        inflight.upstream_keeps_running = upstream_keeps_running
                        inflight.killed.set()
            for replica in replicas:
                self._replica_died(deployment, replica, upstream_keeps_running)

        self._server.call(kill)

    def fail_api_next(self, status: int, count: int = 1, *, body: Any = None) -> None:
        """The next ``count`` management API calls (token endpoint excluded) answer ``status``."""
        with self.lock:
            for _ in range(count):
                self._api_faults.append((status, body))

    def expire_tokens(self) -> None:
        """Every access token issued so far stops working (as a revoked or expired token does)."""
        with self.lock:
            self.tokens.clear()

    def gateway_requests(self, deployment: str | None = None) -> list[SeenRequest]:
        with self.lock:
            return [
                seen
                for seen in self.requests
                if seen.server == "gateway" and (deployment is None or seen.deployment == deployment)
            ]

    def api_requests(self) -> list[SeenRequest]:
        with self.lock:
            return [seen for seen in self.requests if seen.server == "api"]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            time.sleep(0.01)

    # --- replicas ---
    def _reconcile(self, deployment: FakeDeployment) -> None:
        """Bring the replica list to the minimum; drop idle ones above it. Caller holds the lock."""
        if deployment.paused:
            return
        minimum = int(deployment.scaling["min_replica_count"])
        while len(deployment.replicas) < minimum:
            self._new_replica(deployment)
        for replica in list(deployment.replicas):
            # Verda waits scale_down_policy.delay_seconds before scaling down; the fake does it at once.
            if len(deployment.replicas) > minimum and not replica.busy:
                deployment.replicas.remove(replica)

    def _new_replica(self, deployment: FakeDeployment) -> FakeReplica:
        replica = FakeReplica(
            id=f"{deployment.name}-{next(self._ids):04d}",
            started_at=_now_iso(),
            ready_at=time.monotonic() + deployment.startup_delay,
        )
        deployment.replicas.append(replica)
        return replica

    async def _acquire_replica(self, deployment: FakeDeployment) -> FakeReplica:
        """A running replica for one request: the least busy, starting one (cold start) when there is none."""
        while True:
            with self.lock:
                if deployment.paused:
                    raise _Paused()
                if not deployment.replicas:
                    self._new_replica(deployment)
                replica = min(deployment.replicas, key=lambda r: (r.ready_at, r.busy))
                wait = replica.ready_at - time.monotonic()
                if wait <= 0:
                    replica.busy += 1
                    return replica
            await asyncio.sleep(min(wait, 0.05))

    def _release(self, deployment: FakeDeployment, replica: FakeReplica) -> None:
        with self.lock:
            replica.busy = max(0, replica.busy - 1)

    def _replica_died(
        self, deployment: FakeDeployment, replica: FakeReplica, keeps_running: bool
    ) -> asyncio.Future[None]:
        """(In the loop.) The replica leaves the list (min replicas bring up a new one) and, unless its upstream is
        to keep running, the deployment's hook runs once. Returns when that is done."""
        if replica.death is None:
            with self.lock:
                if replica in deployment.replicas:
                    deployment.replicas.remove(replica)
                self._reconcile(deployment)
            hook = deployment.on_replica_death
            loop = asyncio.get_running_loop()
            if hook is None or keeps_running:
                replica.death = loop.create_future()
                replica.death.set_result(None)
            else:
                replica.death = loop.run_in_executor(None, self._run_hook, hook, replica)
        return replica.death

    def _run_hook(self, hook: Callable[[FakeReplica], None], replica: FakeReplica) -> None:
        try:
            hook(replica)
        except BaseException as exc:  # reported through hook_errors; the fake carries on
            with self.lock:
                self.hook_errors.append(exc)

    # --- the gateway ---
    def _gateway_app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_get("/status/{deployment}", self._async_status)
        app.router.add_get("/result/{deployment}", self._async_result)
        app.router.add_route("*", "/{deployment}", self._inference)
        app.router.add_route("*", "/{deployment}/{path:.*}", self._inference)
        return app

    async def _record(self, request: web.Request, server: str, deployment: str | None = None) -> SeenRequest:
        seen = SeenRequest(
            server, request.method, request.path_qs, dict(request.headers), await request.read(), deployment
        )
        with self.lock:
            self.requests.append(seen)
        return seen

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and key in self.inference_keys

    def _not_found(self) -> web.Response:
        # Verda answers a missing or wrong inference key like an unknown deployment: 404 (body not documented).
        return web.json_response({"message": "Not Found"}, status=self.unauthorized_status)

    @staticmethod
    def _answer(seen: SeenRequest, response: AnswerT) -> AnswerT:
        seen.answered = response.status
        return response

    async def _inference(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["deployment"]
        seen = await self._record(request, "gateway", name)
        deployment = self.deployments.get(name)
        if not self._authorized(request):
            return self._answer(seen, self._not_found())
        if deployment is None:
            return self._answer(seen, web.json_response({"message": "Not Found"}, status=404))
        with self.lock:
            fault = self._faults.popleft() if self._faults else None
        if fault is not None and fault.kind == "status":
            body = fault.body if fault.body is not None else {"message": f"fake Verda: injected {fault.status}"}
            return self._answer(seen, web.json_response(body, status=fault.status))
        if deployment.paused:
            # Not documented: what a paused deployment answers. The fake says 503.
            return self._answer(seen, web.json_response({"message": "deployment is paused"}, status=503))
        path = request.match_info.get("path", "")
        forward = (request.method, path, request.query_string, seen.body, self._forward_headers(request))
        if request.headers.get("Prefer", "").strip().lower() == "respond-async":
            return self._answer(seen, self._accept_async(deployment, forward, fault))
        try:
            replica = await self._acquire_replica(deployment)
        except _Paused:
            return self._answer(seen, web.json_response({"message": "deployment is paused"}, status=503))
        try:
            if fault is not None and fault.kind == "delay":
                await asyncio.sleep(fault.seconds)
            outcome = await self._forward_on(deployment, replica, forward, fault)
        finally:
            self._release(deployment, replica)
        if outcome is None:  # the replica died: no answer at all
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=502)  # never reaches the client
        status, body, content_type = outcome
        return self._answer(seen, web.Response(status=status, body=body, headers={"Content-Type": content_type}))

    @staticmethod
    def _forward_headers(request: web.Request) -> dict[str, str]:
        return {key: value for key, value in request.headers.items() if key.lower() not in HOP_BY_HOP}

    async def _forward_on(
        self,
        deployment: FakeDeployment,
        replica: FakeReplica,
        forward: tuple[str, str, str, bytes, dict[str, str]],
        fault: _Fault | None,
    ) -> tuple[int, bytes, str] | None:
        """Send one request to the upstream on ``replica``; None when the replica dies before it answers."""
        inflight = _Inflight(replica, asyncio.Event())
        with self.lock:
            self._inflight.append(inflight)
        task = asyncio.create_task(self._upstream(deployment, forward))
        if fault is not None and fault.kind == "kill":
            asyncio.get_running_loop().call_later(fault.seconds, inflight.killed.set)
            inflight.upstream_keeps_running = fault.upstream_keeps_running
        killed = asyncio.create_task(inflight.killed.wait())
        try:
            await asyncio.wait({task, killed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            killed.cancel()
            with self.lock:
                self._inflight.remove(inflight)
        if not inflight.killed.is_set():
            return task.result()
        if inflight.upstream_keeps_running:
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        else:
            task.cancel()
        await self._replica_died(deployment, replica, inflight.upstream_keeps_running)
        return None

    async def _upstream(
        self, deployment: FakeDeployment, forward: tuple[str, str, str, bytes, dict[str, str]]
    ) -> tuple[int, bytes, str]:
        method, path, query, body, headers = forward
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        url = f"{deployment.upstream}/{path}" + (f"?{query}" if query else "")
        try:
            async with self._session.request(method, url, data=body, headers=headers) as response:
                data = await response.read()
                return response.status, data, response.headers.get("Content-Type", "application/octet-stream")
        except aiohttp.ClientError as exc:
            # Not documented: what the gateway answers when the container does not answer. The fake says 502.
            return 502, f'{{"message": "upstream failed: {exc.__class__.__name__}"}}'.encode(), "application/json"

    # --- the async layer ---
    def _accept_async(
        self,
        deployment: FakeDeployment,
        forward: tuple[str, str, str, bytes, dict[str, str]],
        fault: _Fault | None,
    ) -> web.Response:
        job = FakeAsyncRequest(str(uuid.uuid4()), deployment.name)
        with self.lock:
            self.async_requests[job.id] = job
        task = asyncio.create_task(self._run_async(deployment, job, forward, fault))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        body = {"Id": job.id, "StatusPath": f"/status/{deployment.name}", "ResultPath": f"/result/{deployment.name}"}
        headers = {"X-Inference-Id": job.id, "Location": body["ResultPath"]}
        return web.json_response(body, status=202, headers=headers)

    async def _run_async(
        self,
        deployment: FakeDeployment,
        job: FakeAsyncRequest,
        forward: tuple[str, str, str, bytes, dict[str, str]],
        fault: _Fault | None,
    ) -> None:
        job.status = "Queue"
        try:
            replica = await self._acquire_replica(deployment)
        except _Paused:
            job.status, job.finished_at = "Failed", time.monotonic()
            return
        try:
            if fault is not None and fault.kind == "delay":
                await asyncio.sleep(fault.seconds)
            job.status = "Inference"
            outcome = await self._forward_on(deployment, replica, forward, fault)
        finally:
            self._release(deployment, replica)
        if outcome is None:
            job.status = "Failed"  # not documented: Verda's word for a request whose replica died
        else:
            job.result_status, job.result_body, job.result_type = outcome
            job.status = "Completed"
        job.finished_at = time.monotonic()

    def _find_async(self, request: web.Request) -> FakeAsyncRequest | None:
        job = self.async_requests.get(request.headers.get("X-Inference-Id", ""))
        if job is None or job.deployment != request.match_info["deployment"]:
            return None
        if job.finished_at is not None and time.monotonic() - job.finished_at > self.result_ttl:
            return None
        return job

    async def _async_status(self, request: web.Request) -> web.StreamResponse:
        seen = await self._record(request, "gateway", request.match_info["deployment"])
        if not self._authorized(request) or request.match_info["deployment"] not in self.deployments:
            return self._answer(seen, self._not_found())
        job = self._find_async(request)
        if job is None:
            return self._answer(seen, web.json_response({"message": "Not Found"}, status=404))
        return self._answer(seen, web.json_response({"Id": job.id, "Status": job.status}))

    async def _async_result(self, request: web.Request) -> web.StreamResponse:
        seen = await self._record(request, "gateway", request.match_info["deployment"])
        if not self._authorized(request) or request.match_info["deployment"] not in self.deployments:
            return self._answer(seen, self._not_found())
        job = self._find_async(request)
        if job is None:
            return self._answer(seen, web.json_response({"message": "Not Found"}, status=404))
        if job.status == "Failed":
            return self._answer(seen, web.json_response({"Id": job.id, "Status": job.status}, status=502))
        if job.status != "Completed" or job.result_status is None:
            # Not documented: the answer before completion. Verda's example checks for 202; the fake sends 202 with
            # the status document.
            return self._answer(seen, web.json_response({"Id": job.id, "Status": job.status}, status=202))
        # Not documented: whether the container's status code is kept. The fake keeps it.
        response = web.Response(
            status=job.result_status, body=job.result_body, headers={"Content-Type": job.result_type}
        )
        return self._answer(seen, response)

    # --- the management API ---
    def _api_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/oauth2/token", self._token)
        app.router.add_get("/v1/container-deployments", self._list_deployments)
        app.router.add_get("/v1/container-deployments/{name}", self._get_deployment)
        app.router.add_get("/v1/container-deployments/{name}/status", self._deployment_status)
        app.router.add_get("/v1/container-deployments/{name}/scaling", self._get_scaling)
        app.router.add_patch("/v1/container-deployments/{name}/scaling", self._patch_scaling)
        app.router.add_get("/v1/container-deployments/{name}/replicas", self._replicas)
        app.router.add_post("/v1/container-deployments/{name}/pause", self._pause)
        app.router.add_post("/v1/container-deployments/{name}/resume", self._resume)
        return app

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        return web.json_response({"code": code, "message": message}, status=status)

    def _issue_token(self) -> dict[str, Any]:
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[access] = time.monotonic() + self.token_ttl
            self.refresh_tokens.add(refresh)
            self.tokens_issued += 1
        return {
            "access_token": access,
            "refresh_token": refresh,
            "scope": "cloud-api-v1",
            "token_type": "Bearer",
            "expires_in": self.token_ttl,
        }

    async def _token(self, request: web.Request) -> web.Response:
        seen = await self._record(request, "api")
        try:
            form: dict[str, Any] = await request.json()
        except ValueError:
            form = dict(await request.post())
        grant = form.get("grant_type")
        if grant == "client_credentials":
            if self.clients.get(str(form.get("client_id"))) != form.get("client_secret") or not form.get("client_id"):
                # Not documented: the exact status for bad credentials (SDKs treat 400 and 401 alike). The fake: 401.
                return self._answer(seen, self._error(401, "unauthorized_request", "Invalid client credentials"))
        elif grant == "refresh_token":
            with self.lock:
                if form.get("refresh_token") not in self.refresh_tokens:
                    return self._answer(seen, self._error(401, "unauthorized_request", "Invalid refresh token"))
        else:
            return self._answer(seen, self._error(400, "invalid_request", "grant_type not specified or unsupported"))
        return self._answer(seen, web.json_response(self._issue_token()))

    async def _api_guard(self, request: web.Request) -> tuple[SeenRequest, web.Response | None]:
        """Record the call; the error answer it gets before any handler logic (auth, faults, unknown name)."""
        seen = await self._record(request, "api", request.match_info.get("name"))
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        with self.lock:
            expiry = self.tokens.get(token) if scheme.lower() == "bearer" else None
            fault = self._api_faults.popleft() if self._api_faults else None
        if expiry is None or time.monotonic() >= expiry:
            return seen, self._answer(seen, self._error(401, "unauthorized_request", "Invalid or expired token"))
        if fault is not None:
            status, body = fault
            answer = body if body is not None else {"code": "server_error", "message": f"injected {status}"}
            return seen, self._answer(seen, web.json_response(answer, status=status))
        name = request.match_info.get("name")
        if name is not None and name not in self.deployments:
            return seen, self._answer(seen, self._error(404, "not_found", f"Deployment {name} not found"))
        return seen, None

    def _deployment_doc(self, deployment: FakeDeployment) -> dict[str, Any]:
        return {
            "name": deployment.name,
            "containers": [{"name": "worker", "image": {"image": "comfyume-gpu-worker:test"}, "exposed_port": 8189}],
            "endpoint_base_url": self.deployment_url(deployment.name),
            "created_at": "2026-01-01T00:00:00Z",
            "compute": {"name": "H200", "size": 1},
            "container_registry_settings": {"is_private": False, "credentials": None},
            "is_spot": True,
            "scaling": dict(deployment.scaling),
        }

    def _status_word(self, deployment: FakeDeployment) -> str:
        if deployment.status_override:
            return deployment.status_override
        if deployment.paused:
            return "paused"
        statuses = {replica.status for replica in deployment.replicas}
        return "initializing" if statuses == {"starting"} else "healthy"

    async def _list_deployments(self, request: web.Request) -> web.Response:
        seen, refused = await self._api_guard(request)
        if refused is not None:
            return refused
        listed = [self._deployment_doc(d) for d in self.deployments.values()]
        return self._answer(seen, web.json_response(listed))

    async def _get_deployment(self, request: web.Request) -> web.Response:
        seen, refused = await self._api_guard(request)
        if refused is not None:
            return refused
        return self._answer(seen, web.json_response(self._deployment_doc(self.deployments[request.match_info["name"]])))

    async def _deployment_status(self, request: web.Request) -> web.Response:
        seen, refused = await self._api_guard(request)
        if refused is not None:
            return refused
        status = self._status_word(self.deployments[request.match_info["name"]])
        return self._answer(seen, web.json_response({"status": status}))

    async def _get_scaling(self, request: web.Request) -> web.Response:
        seen, refused = await self._api_guard(request)
        if refused is not None:
            return refused
        return self._answer(seen, web.json_response(self.deployments[request.match_info["name"]].scaling))

    async def _patch_scaling(self, request: web.Request) -> web.Response:
        seen, refused = await self._api_guard(request)
        if refused is not None:
            return refused
        deployment = self.deployments[request.match_info["name"]]
        try:
            change = await request.json()
        except ValueError:
            return self._answer(seen, self._error(400, "invalid_request", "Body is not valid JSON"))
        if not isinstance(change, dict):
            return self._answer(seen, self._error(400, "invalid_request", "Body must be an object"))
        # Partial bodies are accepted, as Verda's Go SDK integration test relies on.
        merged = {**deployment.scaling, **change}
        low, high = merged.get("min_replica_count"), merged.get("max_replica_count")
        if not isinstance(low, int) or not isinstance(high, int) or low < 0 or high < 1 or low > high:
            message = "min_replica_count must be 0..max_replica_count and max_replica_count at least 1"
            return self._answer(seen, self._error(400, "invalid_request", message))
        with self.lock:
            deployment.scaling = merged
            self._reconcile(deployment)
        return self._answer(seen, web.json_response(merged))

    async def _replicas(self, request: web.Request) -> web.Response:
        seen, refused = await self._api_guard(request)
        if refused is not None:
            return refused
        deployment = self.deployments[request.match_info["name"]]
        with self.lock:
            listed = [{"id": r.id, "status": r.status, "started_at": r.started_at} for r in deployment.replicas]
        return self._answer(seen, web.json_response({"list": listed}))

    async def _pause(self, request: web.Request) -> web.Response:
        seen, refused = await self._api_guard(request)
        if refused is not None:
            return refused
        deployment = self.deployments[request.match_info["name"]]
        with self.lock:
            deployment.paused = True
            deployment.replicas.clear()
        return self._answer(seen, web.Response(status=204))

    async def _resume(self, request: web.Request) -> web.Response:
        seen, refused = await self._api_guard(request)
        if refused is not None:
            return refused
        deployment = self.deployments[request.match_info["name"]]
        with self.lock:
            deployment.paused = False
            self._reconcile(deployment)
        return self._answer(seen, web.Response(status=204))


class _Paused(Exception):
    """The deployment was paused while a request waited for a replica."""


@pytest.fixture
def fake_verda() -> Iterator[FakeVerda]:
    """A fresh fake Verda (gateway + management API) on real ports; no deployments until the test adds them."""
    with FakeVerda() as fake:
        yield fake
