"""Hub overhead per job: 20 seats submitting through the real web server and RQ workers to the simulator.

Two figures per job, with the simulator at zero node delay (so whatever time passes is ours):
- submit → the backend receives the prompt (HTTP submit, preflight, the row, the claim on commit, RQ,
  the worker's WebSocket and ``POST /prompt``);
- the backend sends its final ``executing {node: null}`` → the participant's socket receives it (the
  worker's event loop, the Redis channel layer, daphne).
``hub_overhead_p50_ms`` / ``_p99_ms`` take both figures' samples together; each direction is also printed on
its own, and the two of each job added up (``hub_per_job_total_*``). Measuring starts once all 20 RQ workers
have registered. Then the same "finish → noticed" figure for the design we replace: a loop polling
``/history`` every 2 s.

Load model: each seat submits a job, waits for its final event, "looks at the result" for a random 1–5 s
(BENCH_THINK_S=lo,hi) and submits the next — about 5 jobs a second over 20 seats, far more than a real
class produces. With zero think time every seat hammers the hub in a closed loop and the figure measures
the 2-core machine's saturation, not the hub's overhead; BENCH_THINK_S=0,0 shows that too.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from typing import Any

import requests
import websocket

from benchmarks.hub import Hub, pct

SEATS = int(os.environ.get("BENCH_SEATS", "20"))
JOBS_PER_SEAT = int(os.environ.get("BENCH_JOBS_PER_SEAT", "6"))  # the first of each is a warm-up, not counted
THINK = tuple(float(x) for x in os.environ.get("BENCH_THINK_S", "1,5").split(","))
POLL_INTERVAL = 2.0


def _prompt(seat: int, n: int) -> dict:
    # A different colour each time: ComfyUI (and the simulator) would serve an identical graph from cache.
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": seat * 1000 + n},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": f"bench/s{seat}"}},
    }


class Clock:
    """Times the simulator saw each prompt arrive and sent each prompt's final event (wall clock)."""

    def __init__(self, simulator) -> None:
        self.received: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        original_put, original_send = simulator.put, simulator.send

        def put(item):
            self.received[item[1]] = time.time()
            return original_put(item)

        def send(event, data, sid=None):
            if event == "executing" and isinstance(data, dict) and data.get("node") is None and data.get("prompt_id"):
                self.finished.setdefault(data["prompt_id"], time.time())
            return original_send(event, data, sid)

        simulator.put, simulator.send = put, send


def _seat_loop(base: str, ws_base: str, token: str, seat: int, results: list, errors: list) -> None:
    ws = websocket.create_connection(f"{ws_base}/ws/hub/seat/", header=[f"Authorization: Bearer {token}"], timeout=30)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    rng = random.Random(seat)
    try:
        for n in range(JOBS_PER_SEAT):
            time.sleep(rng.uniform(*THINK))
            t0 = time.time()
            response = session.post(f"{base}/api/hub/prompt", json={"prompt": _prompt(seat, n)}, timeout=30)
            if response.status_code != 200:
                errors.append(f"seat {seat}: {response.status_code} {response.text[:200]}")
                return
            prompt_id = response.json()["prompt_id"]
            while True:
                message = json.loads(ws.recv())
                data = message.get("data") or {}
                if (
                    message.get("type") == "executing"
                    and data.get("node") is None
                    and data.get("prompt_id") == prompt_id
                ):
                    results.append((n, prompt_id, t0, time.time()))
                    break
    except Exception as exc:  # a benchmark reports what went wrong instead of hanging
        errors.append(f"seat {seat}: {exc.__class__.__name__}: {exc}")
    finally:
        ws.close()


def _polling_baseline(simulator_url: str, clock: Clock) -> list[float]:
    """The design we replace: submit to ComfyUI, then GET /history every 2 s until the prompt is there."""
    delays: list[float] = []
    lock = threading.Lock()

    def one(seat: int) -> None:
        rng = random.Random(seat)
        for n in range(2):
            body: dict[str, Any] = {"prompt": _prompt(seat + 500, n), "client_id": f"poller-{seat}"}
            prompt_id = requests.post(f"{simulator_url}/prompt", json=body, timeout=10).json()["prompt_id"]
            wait = rng.uniform(0, POLL_INTERVAL)  # the loop's phase is unrelated to when a job ends
            while True:
                time.sleep(wait)
                wait = POLL_INTERVAL
                if prompt_id in requests.get(f"{simulator_url}/history/{prompt_id}", timeout=10).json():
                    noticed = time.time()
                    break
            with lock:
                delays.append((noticed - clock.finished[prompt_id]) * 1000)

    threads = [threading.Thread(target=one, args=(s,)) for s in range(SEATS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return delays


def run(report) -> None:
    from django.conf import settings

    from gpu_backends.models import GpuBackend
    from gpu_backends.simulator import SimulatorConfig, SimulatorThread
    from workshops.services import create_workshop

    logs = settings.DATA_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    sim = SimulatorThread(
        SimulatorConfig(output_dir=settings.DATA_DIR / "sim", node_delay=0.0, concurrency=SEATS)
    ).start()
    clock = Clock(sim.simulator)
    backend = GpuBackend.objects.create(name="bench-overhead", kind="simulator", url=sim.url, max_concurrency=SEATS)
    workshop, _ = create_workshop("bench-overhead", seats=SEATS, backends=[backend])
    workshop.max_running_per_seat = 1
    workshop.save()
    tokens = [seat.issue_token() for seat in workshop.seats.order_by("label")]

    with Hub(logs, workers=SEATS) as hub:
        base, ws_base = hub.base, hub.ws_base
        results: list = []
        errors: list[str] = []
        threads = [
            threading.Thread(target=_seat_loop, args=(base, ws_base, tokens[i], i, results, errors))
            for i in range(SEATS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        for error in errors[:5]:
            report.line(f"  error: {error}")
        counted = [r for r in results if r[0] > 0]
        submit = [(clock.received[pid] - t0) * 1000 for _, pid, t0, _ in counted if pid in clock.received]
        finish = [(t_end - clock.finished[pid]) * 1000 for _, pid, _, t_end in counted if pid in clock.finished]
        report.line(
            f"hub overhead, {SEATS} seats x {JOBS_PER_SEAT - 1} jobs (+1 warm-up each), "
            f"think time {THINK[0]:g}–{THINK[1]:g} s, simulator at zero node delay:"
        )
        report.line(
            f"  submit → backend receives prompt: p50 {pct(submit, 0.5):.1f} ms, p90 {pct(submit, 0.9):.1f} ms, "
            f"p99 {pct(submit, 0.99):.1f} ms (n={len(submit)})"
        )
        report.line(
            f"  backend final event → participant socket: p50 {pct(finish, 0.5):.1f} ms, "
            f"p90 {pct(finish, 0.9):.1f} ms, p99 {pct(finish, 0.99):.1f} ms (n={len(finish)})"
        )
        # Both directions of the same job added up: what the hub adds to one job's round trip.
        per_job = [
            (clock.received[pid] - t0 + t_end - clock.finished[pid]) * 1000
            for _, pid, t0, t_end in counted
            if pid in clock.received and pid in clock.finished
        ]
        report.line(
            f"  both directions of a job added up: p50 {pct(per_job, 0.5):.1f} ms, p90 {pct(per_job, 0.9):.1f} ms, "
            f"p99 {pct(per_job, 0.99):.1f} ms (n={len(per_job)})"
        )
        both = submit + finish
        report.bench("hub_overhead_p50_ms", pct(both, 0.5), "ms")
        report.bench("hub_overhead_p99_ms", pct(both, 0.99), "ms")
        report.bench("hub_submit_to_backend_p50_ms", pct(submit, 0.5), "ms")
        report.bench("hub_submit_to_backend_p99_ms", pct(submit, 0.99), "ms")
        report.bench("hub_finish_to_socket_p50_ms", pct(finish, 0.5), "ms")
        report.bench("hub_finish_to_socket_p99_ms", pct(finish, 0.99), "ms")
        report.bench("hub_per_job_total_p50_ms", pct(per_job, 0.5), "ms")
        report.bench("hub_per_job_total_p99_ms", pct(per_job, 0.99), "ms")
        report.bench("hub_jobs_failed", len(errors), "jobs")

    polled = _polling_baseline(sim.url, clock)
    report.line(
        f"polling baseline (GET /history every {POLL_INTERVAL:.0f} s): finish → noticed "
        f"p50 {pct(polled, 0.5):.0f} ms, p99 {pct(polled, 0.99):.0f} ms (n={len(polled)})"
    )
    report.bench("polling_baseline_p50_ms", pct(polled, 0.5), "ms")
    report.bench("polling_baseline_p99_ms", pct(polled, 0.99), "ms")
    sim.stop()
