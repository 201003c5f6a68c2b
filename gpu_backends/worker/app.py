"""The GPU worker's HTTP service (docs/GPU_WORKER.md, "The worker's endpoints").

``/health`` says the process is up; ``/ready`` turns 200 once ComfyUI answers ``/system_stats`` and the warm-up
prompt (if any) has run, and back to 503 if ComfyUI stops answering; ``/run`` runs one job and answers with its
manifest; ``/cancel`` stops one; ``/object_info`` and ``/system_stats`` are the local ComfyUI's.
Several ``/run`` at once are fine: ComfyUI queues them, and each job has its own socket, temp dir and input
subfolder.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from . import VERSION
from .comfy import HTTP_TIMEOUT, ComfyClient, ComfyError
from .job import JobRunner
from .request import BadRequest, RunRequest, parse_run_request

log = logging.getLogger("comfyume.worker")

# Prompts in API format reach a few MB with big workflows; ComfyUI itself accepts 100 MB.
MAX_BODY = 32 * 1024 * 1024


@dataclass
class WorkerConfig:
    """How the worker runs (``__main__`` builds it from flags and the environment)."""

    comfyui_url: str = "http://127.0.0.1:8188"
    token: str | None = None
    warmup_prompt: dict[str, Any] | None = None
    poll_seconds: float = 0.5  # how often ComfyUI is asked until it answers
    watch_seconds: float = 5.0  # and then, to notice it died


@dataclass
class Worker:
    """The state behind the routes."""

    config: WorkerConfig
    comfy: ComfyClient
    http: aiohttp.ClientSession
    jobs: dict[str, JobRunner] = field(default_factory=dict)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    comfyui_up: bool = False
    warmup: str | None = None  # None (no warm-up prompt), pending, or how it ended
    reason: str = "starting: ComfyUI has not answered yet"

    @property
    def ready(self) -> bool:
        return self.comfyui_up and self.warmup != "pending"

    @property
    def info(self) -> dict[str, Any]:
        return {"version": VERSION, "comfyui_url": self.config.comfyui_url}

    async def watch(self) -> None:
        """Ask ComfyUI for /system_stats until it answers, run the warm-up once, then keep asking."""
        while True:
            try:
                await self._look()
            except Exception:  # the watch must outlive any surprise, or /ready would freeze
                log.exception("Watching ComfyUI failed")
            await asyncio.sleep(self.config.watch_seconds if self.ready else self.config.poll_seconds)

    async def _look(self) -> None:
        try:
            await self.comfy.system_stats()
        except ComfyError as exc:
            if self.comfyui_up:
                log.error("ComfyUI stopped answering: %s", exc)
            self.comfyui_up = False
            self.reason = f"ComfyUI at {self.config.comfyui_url} does not answer: {exc}"
            return
        if not self.comfyui_up:
            log.info("ComfyUI answers at %s", self.config.comfyui_url)
        self.comfyui_up = True
        if self.warmup == "pending":
            self.reason = "running the warm-up prompt"
            await self._warm_up()

    async def _warm_up(self) -> None:
        """The warm-up prompt, without a callback. Any end counts as done (a rejected or failed warm-up is
        logged as an error: the deployment's models or nodes are wrong); losing ComfyUI means try again."""
        assert self.config.warmup_prompt is not None
        request = RunRequest(job=f"warmup-{uuid.uuid4().hex}", prompt=self.config.warmup_prompt)
        answer = await JobRunner(request, comfy=self.comfy, http=self.http, worker_info=self.info).run()
        if answer.status in (502, 503):
            log.warning("Warm-up prompt did not run (%s); trying again", answer.body)
            return
        status = answer.body.get("status") if answer.status == 200 else "rejected" if answer.status == 400 else "failed"
        self.warmup = str(status)
        if status == "succeeded":
            log.info("Warm-up prompt succeeded in %.1f s of GPU", answer.body.get("gpu_seconds", 0.0))
        else:
            log.error("Warm-up prompt %s: %s", status, answer.body.get("error") or answer.body)


WORKER = web.AppKey("worker", Worker)
CONFIG = web.AppKey("config", WorkerConfig)
routes = web.RouteTableDef()


def _worker(request: web.Request) -> Worker:
    return request.app[WORKER]


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message}}, status=status)


def token_required(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """``Authorization: Bearer <token>`` when the worker was started with ``--token``."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        token = request.app[CONFIG].token
        if token:
            header = request.headers.get("Authorization", "")
            given = header[7:].strip() if header[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                return _error(401, "unauthorized", "Authorization: Bearer <the worker's --token> is required")
        return await handler(request)

    return wrapper


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    worker = _worker(request)
    return web.json_response(
        {
            "status": "ok",
            "comfyui": worker.comfyui_up,
            "running": len(worker.jobs),
            "version": VERSION,
            "warmup": worker.warmup,
        }
    )


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    worker = _worker(request)
    if worker.ready:
        return web.json_response({"ready": True})
    return web.json_response({"ready": False, "reason": worker.reason}, status=503)


async def _relay(request: web.Request, path: str) -> web.Response:
    try:
        status, body, content_type = await _worker(request).comfy.relay(path)
    except ComfyError as exc:
        return _error(503, "not_ready", str(exc))
    return web.Response(status=status, body=body, content_type=content_type)


@routes.get("/object_info")
async def object_info(request: web.Request) -> web.Response:
    return await _relay(request, "/object_info")


@routes.get("/system_stats")
async def system_stats(request: web.Request) -> web.Response:
    return await _relay(request, "/system_stats")


@routes.post("/run")
@token_required
async def run(request: web.Request) -> web.Response:
    worker = _worker(request)
    if not worker.ready:
        return _error(503, "not_ready", worker.reason)
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "bad_request", "the body must be JSON")
    try:
        run_request = parse_run_request(body)
    except BadRequest as exc:
        return web.json_response(exc.body, status=400)
    if run_request.job in worker.jobs:
        return _error(409, "conflict", f"job {run_request.job} is already running on this worker")
    runner = JobRunner(run_request, comfy=worker.comfy, http=worker.http, worker_info=worker.info)
    worker.jobs[run_request.job] = runner
    task = asyncio.create_task(runner.run(), name=f"job {run_request.job}")
    worker.tasks.add(task)

    def done(_: asyncio.Task[Any]) -> None:
        worker.tasks.discard(task)
        worker.jobs.pop(run_request.job, None)

    task.add_done_callback(done)
    # Shielded: if the caller goes away (a gateway timeout), the job still ends and posts its result.
    answer = await asyncio.shield(task)
    return web.json_response(answer.body, status=answer.status)


@routes.post("/cancel")
@token_required
async def cancel(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        body = None
    job = body.get("job") if isinstance(body, dict) else None
    if not isinstance(job, str) or not job:
        return _error(400, "bad_request", "job must be the id of a job")
    runner = _worker(request).jobs.get(job)
    if runner is None:
        return web.json_response({"cancelled": False})
    runner.request_stop("cancel")
    return web.json_response({"cancelled": True})


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    async with (
        aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as comfy_session,
        aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http,
    ):
        worker = Worker(config, ComfyClient(comfy_session, config.comfyui_url), http)
        worker.warmup = "pending" if config.warmup_prompt is not None else None
        app[WORKER] = worker
        watcher = asyncio.create_task(worker.watch(), name="watch ComfyUI")
        yield
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def _stop_jobs(app: web.Application) -> None:
    """On SIGTERM: interrupt the running jobs in ComfyUI now rather than wait for them (their requests are
    about to break anyway; the hub runs such a job once more)."""
    worker = app[WORKER]
    for task in list(worker.tasks):
        task.cancel()
    await asyncio.gather(*worker.tasks, return_exceptions=True)


def build_app(config: WorkerConfig) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[CONFIG] = config
    app.add_routes(routes)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_stop_jobs)
    return app


def serve(config: WorkerConfig, host: str, port: int) -> None:
    """Serve until SIGTERM / SIGINT."""
    log.info("GPU worker %s on http://%s:%d, ComfyUI at %s", VERSION, host, port, config.comfyui_url)
    web.run_app(build_app(config), host=host, port=port, access_log=None, print=None, shutdown_timeout=3)
