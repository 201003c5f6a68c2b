"""Seat frontend: start time and memory (targets: starts in under 2 s, holds under 100 MB).

Starts real seat frontend processes (``python -m workshops.seat_frontend``) against a small stand-in hub
that answers the session check, the seat's settings, the node catalogue (the recorded 496 KB
``object_info``) and the event socket. For each run: the time from process start to ``/comfyume/health``
answering; then a page load as the browser makes it (index.html, every ES module of the import map, the
stylesheets, object_info) and the process's resident memory after it.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
RUNS = 5
OBJECT_INFO = ROOT / "gpu_backends" / "data" / "object_info.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandInHub:
    def __init__(self) -> None:
        self.port = _free_port()
        self.object_info = OBJECT_INFO.read_bytes()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def allowed(request: web.Request) -> web.Response:
            return web.Response(status=204, headers={"X-Comfyume-User": "bench"})

        async def seat(request: web.Request) -> web.Response:
            return web.json_response({"label": "user001", "templates": [], "default_template": None})

        async def object_info(request: web.Request) -> web.Response:
            return web.Response(body=self.object_info, content_type="application/json")

        async def events(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}})
            async for _ in ws:
                pass
            return ws

        app = web.Application()
        app.router.add_get("/auth/seat", allowed)
        app.router.add_get("/api/hub/seat", seat)
        app.router.add_get("/api/hub/object_info", object_info)
        app.router.add_get("/ws/hub/seat/", events)
        runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self.loop.run_forever()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _page_load(base: str) -> int:
    """What the browser fetches on a first visit; returns the number of requests."""
    session = requests.Session()
    session.headers["Cookie"] = "sessionid=bench"
    index = session.get(base, headers={"Accept": "text/html"}, timeout=10)
    index.raise_for_status()
    urls = re.findall(r'"\./(assets/[^"]+)"', index.text) + re.findall(
        r'(?:href|src)="\.?/?([^"]+\.(?:css|js))"', index.text
    )
    count = 1
    for path in dict.fromkeys(urls):
        session.get(base + path, timeout=10)
        count += 1
    for api in ("api/system_stats", "api/users", "api/settings", "api/extensions", "api/object_info", "api/queue"):
        session.get(base + api, timeout=10)
        count += 1
    return count


def run(report) -> None:
    hub = StandInHub()
    time.sleep(0.3)
    starts, rss, loads = [], [], []
    requests_per_load = 0
    for i in range(RUNS):
        port = _free_port()
        with tempfile.TemporaryDirectory(prefix="cfme-seat-bench-") as data_dir:
            env = {
                "PATH": os.environ.get("PATH", ""),
                "COMFYUME_HUB_URL": f"http://127.0.0.1:{hub.port}",
                "COMFYUME_SEAT_TOKEN": "seat_bench",
                "COMFYUME_SEAT_LABEL": f"bench{i}",
                "COMFYUME_SEAT_DATA_DIR": data_dir,
                "COMFYUME_SEAT_PORT": str(port),
            }
            began = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "workshops.seat_frontend"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                base = f"http://127.0.0.1:{port}/"
                while True:
                    try:
                        if requests.get(base + "comfyume/health", timeout=0.5).ok:
                            break
                    except requests.RequestException:
                        pass
                    if time.perf_counter() - began > 30:
                        raise RuntimeError("the seat frontend did not start within 30 s")
                    time.sleep(0.01)
                starts.append(time.perf_counter() - began)
                t0 = time.perf_counter()
                requests_per_load = _page_load(base)
                loads.append(time.perf_counter() - t0)
                rss.append(_rss_mb(proc.pid))
            finally:
                proc.terminate()
                proc.wait(10)
    report.line(f"\n## Seat frontend ({RUNS} runs, stand-in hub)")
    report.line(
        f"start to first answer: median {statistics.median(starts) * 1000:.0f} ms, worst {max(starts) * 1000:.0f} ms"
    )
    load_ms = statistics.median(loads) * 1000
    report.line(f"first page load ({requests_per_load} requests, one at a time): median {load_ms:.0f} ms")
    report.line(f"resident memory after the page load: median {statistics.median(rss):.1f} MB, worst {max(rss):.1f} MB")
    report.bench("seat_frontend_start_ms", max(starts) * 1000, "ms")
    report.bench("seat_frontend_rss_mb", max(rss), "MB")
    report.bench("seat_frontend_page_load_ms", statistics.median(loads) * 1000, "ms")
