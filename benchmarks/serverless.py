"""The serverless path's own cost: the GPU worker + R2 against running the same prompt directly on ComfyUI.

1. Worker overhead. The simulator runs at zero node delay, so whatever time passes is the path's. The same
   small prompt is run with a new colour each time (no cache), measured from submit to outputs in hand:
   - directly: open ``/ws``, ``POST /prompt``, wait for ``executing {node: null}``, read each output via
     ``/view`` (what any client of a ComfyUI must do);
   - through the worker: ``POST /run`` to ``python -m gpu_backends.worker`` next to the same simulator. The
     worker posts its events to a callback and uploads its outputs to an S3 server (moto in server mode) through
     presigned PUTs that the real R2 store signs. The callback is a small stub that answers at once: the hub's
     own share is what the ``overhead`` benchmark measures.
2. Time to first byte of a 200 MB video: from a presigned GET on the S3 server, versus through the hub
   (``/api/hub/view`` streaming the object out of the same bucket, as it does when it cannot redirect).

BENCH_SERVERLESS_JOBS (default 60) sets the number of jobs per path; BENCH_VIDEO_MB (default 200) sets the video size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from typing import Any

import requests
import websocket

JOBS = int(os.environ.get("BENCH_SERVERLESS_JOBS", "60"))
VIDEO_MB = int(os.environ.get("BENCH_VIDEO_MB", "200"))


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


def _prompt(n: int) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 256, "height": 256, "batch_size": 1, "color": n}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench/serverless"}},
    }


def run_direct(base: str, prompt: dict[str, Any]) -> float:
    started = time.perf_counter()
    client_id = uuid.uuid4().hex
    ws = websocket.create_connection(f"{base.replace('http', 'ws', 1)}/ws?clientId={client_id}", timeout=30)
    try:
        prompt_id = str(uuid.uuid4())
        answer = requests.post(
            f"{base}/prompt", json={"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id}, timeout=30
        )
        answer.raise_for_status()
        files: list[dict[str, Any]] = []
        while True:
            raw = ws.recv()
            if not isinstance(raw, str):
                continue
            message = json.loads(raw)
            data = message.get("data") or {}
            if data.get("prompt_id") != prompt_id:
                continue
            if message["type"] == "executed":
                for items in (data.get("output") or {}).values():
                    files += (
                        [i for i in items if isinstance(i, dict) and "filename" in i] if isinstance(items, list) else []
                    )
            if message["type"] == "executing" and data.get("node") is None:
                break
        for item in files:
            body = requests.get(f"{base}/view", params=item, timeout=30).content
            hashlib.sha256(body).hexdigest()  # the worker hashes what it uploads; so does this side
    finally:
        ws.close()
    return time.perf_counter() - started


def _callback_stub(store: Any, prefix: str) -> tuple[str, Any]:
    """A callback that answers at once and hands out presigned PUTs of the real R2 store."""
    from aiohttp import web

    from tests.app_server import AppServer

    async def events(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"cancel": False})

    async def uploads(request: web.Request) -> web.Response:
        body = await request.json()
        key = f"{prefix}/{uuid.uuid4().hex}/{body['filename']}"
        target = store.upload_target(
            key, size=body["size"], sha256_hex=body["sha256"], content_type=body.get("content_type") or "image/png"
        )
        return web.json_response({"key": key, **target})

    async def result(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/cb/events", events)
    app.router.add_post("/cb/uploads", uploads)
    app.router.add_post("/cb/result", result)
    server = AppServer(app).start()
    return f"{server.url}/cb/", server


def run_through_worker(worker: str, callback: str, prompt: dict[str, Any]) -> float:
    started = time.perf_counter()
    body: dict[str, Any] = {
        "job": str(uuid.uuid4()),
        "prompt": prompt,
        "extra_data": {},
        "inputs": [],
        "callback": {"url": callback, "token": "bench"},
        "heartbeat_seconds": 5,
    }
    answer = requests.post(f"{worker}/run", json=body, timeout=60)
    manifest = answer.json()
    if answer.status_code != 200 or manifest.get("status") != "succeeded" or not manifest.get("files"):
        raise RuntimeError(f"The worker answered {answer.status_code}: {str(manifest)[:300]}")
    return time.perf_counter() - started


def _ttfb(url: str, headers: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    with requests.get(url, headers=headers or {}, stream=True, timeout=60) as response:
        response.raise_for_status()
        next(response.iter_content(64 * 1024))
        return time.perf_counter() - started


def run(report: Any) -> None:
    from django.conf import settings
    from moto.server import ThreadedMotoServer

    from gpu_backends.simulator import SimulatorConfig, SimulatorThread
    from storage.r2 import R2Store
    from tests.gpu_worker import gpu_worker
    from tests.s3_server import admin_client, free_port, object_store_settings

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request
    report.line(f"\n## Serverless path: GPU worker + R2 vs. ComfyUI directly ({JOBS} jobs each, simulator at 0 s/node)")
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    admin_client(endpoint).create_bucket(Bucket="bench")
    settings.OBJECT_STORE = object_store_settings(endpoint, "bench")
    store = R2Store.from_settings()
    sim = SimulatorThread(SimulatorConfig(output_dir=settings.DATA_DIR / "bench-sim", node_delay=0.0)).start()
    callback, stub = _callback_stub(store, "bench")
    try:
        with gpu_worker(sim.url, log_path=settings.DATA_DIR / "bench-worker.log") as worker:
            for n in range(3):  # warm both paths up
                run_direct(sim.url, _prompt(10_000 + n))
                run_through_worker(worker, callback, _prompt(20_000 + n))
            direct, through = [], []
            for n in range(JOBS):  # interleaved, so machine noise hits both alike
                direct.append(run_direct(sim.url, _prompt(30_000 + n)))
                through.append(run_through_worker(worker, callback, _prompt(40_000 + n)))
        for name, values in (("direct", direct), ("worker_r2", through)):
            p50, p99 = _pct(values, 0.5) * 1000, _pct(values, 0.99) * 1000
            report.line(f"{name:>10}: p50 {p50:7.1f} ms  p99 {p99:7.1f} ms")
            report.bench(f"serverless.{name}.p50", p50, "ms")
            report.bench(f"serverless.{name}.p99", p99, "ms")
        added = sorted(t - d for t, d in zip(sorted(through), sorted(direct), strict=True))
        report.line(
            f"  added by worker + R2: p50 {_pct(added, 0.5) * 1000:.1f} ms  p99 {_pct(added, 0.99) * 1000:.1f} ms"
        )
        report.bench("serverless.overhead.p50", _pct(added, 0.5) * 1000, "ms")
        report.bench("serverless.overhead.p99", _pct(added, 0.99) * 1000, "ms")

        _video_ttfb(report, store)
    finally:
        stub.stop()
        sim.stop()
        moto.stop()


def _video_ttfb(report: Any, store: Any) -> None:
    """Time to first byte of a big video: presigned GET straight from the bucket vs. streamed by the hub."""
    from django.test import Client

    from jobs.models import Job
    from storage.models import Artifact
    from workshops.models import Seat, Workshop

    report.line(f"\n## Time to first byte of a {VIDEO_MB} MB video")
    key = "bench/video/big.mp4"
    chunk = os.urandom(1024 * 1024)
    stored = store.put(key, (chunk for _ in range(VIDEO_MB)), content_type="video/mp4")
    workshop, _ = Workshop.objects.get_or_create(slug="bench-video", defaults={"title": "bench"})
    seat, _ = Seat.objects.get_or_create(workshop=workshop, label="user001")
    token = seat.issue_token()
    job = Job.objects.create(workshop=workshop, seat=seat, prompt={}, status=Job.Status.SUCCEEDED)
    Artifact.objects.create(
        job=job, key=key, filename="big.mp4", subfolder=str(job.prompt_id), kind=Artifact.Kind.VIDEO,
        size=stored.size, sha256=stored.sha256, content_type="video/mp4",
    )  # fmt: skip
    presigned, hub, presigned_all, hub_all = [], [], [], []
    client = Client(HTTP_HOST="127.0.0.1")
    params = {"filename": "big.mp4", "subfolder": str(job.prompt_id), "type": "output"}
    original = type(store).presigned_get
    for _ in range(5):
        url = store.presigned_get(key, content_type="video/mp4")
        presigned.append(_ttfb(url))
        started = time.perf_counter()
        with requests.get(url, stream=True, timeout=120) as download:
            size = sum(len(c) for c in download.iter_content(1024 * 1024))
        presigned_all.append(time.perf_counter() - started)
        type(store).presigned_get = lambda *a, **k: None  # the hub streams it itself
        try:
            started = time.perf_counter()
            response = client.get("/api/hub/view", params, HTTP_AUTHORIZATION=f"Bearer {token}")
            chunks = iter(response.streaming_content)  # type: ignore[attr-defined]
            got = len(next(chunks))
            hub.append(time.perf_counter() - started)
            got += sum(len(c) for c in chunks)
            hub_all.append(time.perf_counter() - started)
            response.close()
        finally:
            type(store).presigned_get = original
        assert size == got == stored.size, (size, got, stored.size)
    for name, first, whole in (("presigned", presigned, presigned_all), ("via_hub", hub, hub_all)):
        p50, p50_all = _pct(first, 0.5) * 1000, _pct(whole, 0.5)
        report.line(f"{name:>10}: first byte p50 {p50:7.1f} ms, whole file p50 {p50_all:5.2f} s (of 5)")
        report.bench(f"video_ttfb.{name}.p50", p50, "ms")
        report.bench(f"video_download.{name}.p50", p50_all, "s")
    threading.Thread(target=store.delete, args=(key,), daemon=True).start()
