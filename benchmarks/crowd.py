"""One hub, many seats: 20, 100 and 300 participants with their sockets open, a burst, then a steady rate.

For each size (``BENCH_CROWD_SEATS``, default ``20,100,300``) a workshop of that many seats is made, every seat
opens the hub's seat socket (``/ws/hub/seat/``) and stays connected, and then:

1. **the burst**: every seat submits at once (the moment a class presses Run after the instructor's demo);
2. **the steady part**: each seat submits again after a random pause, at ``BENCH_CROWD_RATE`` jobs per seat per
   minute (default 6: far more than a real class, where a Flux image or a video takes seconds to minutes of GPU
   time and a participant looks at it), for ``BENCH_CROWD_SECONDS`` (default 30).

The simulator runs every job at zero node delay with a few progress steps, its slots as many as the hub's RQ
workers (``BENCH_CROWD_WORKERS``, default 16): the GPUs are never the bottleneck, the hub is. Printed per size:

- hub overhead: submit → the simulator receives the prompt, and the simulator's final event → the seat's socket
  (p50 / p99 of both together, as the ``overhead`` benchmark);
- event to socket: every ComfyUI message of the job (``executing``, ``progress``, ``executed``…) from the moment
  the simulator sends it to the moment the seat's socket has it (p50 / p99);
- jobs lost (submitted and never finished on the seat's socket within a minute), jobs refused;
- the hub's memory (the web server's and the RQ workers' resident memory, and Redis's) and CPU (seconds of CPU per
  process kind over the run, and as a share of the machine's cores).

The seats are asyncio clients in the benchmark's own process (one event loop for all of them), so they cost the
2-core machine too: on a real day they are the participants' own machines.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.hub import Hub, free_port, pct, print_split, spawn, step_times
from benchmarks.simclock import message_key

SIZES = [int(x) for x in os.environ.get("BENCH_CROWD_SEATS", "20,100,300").split(",") if x.strip()]
WORKERS = int(os.environ.get("BENCH_CROWD_WORKERS", "16"))
RATE = float(os.environ.get("BENCH_CROWD_RATE", "2"))  # jobs per seat per minute in the steady part
SECONDS = float(os.environ.get("BENCH_CROWD_SECONDS", "45"))
LOST_AFTER = 60.0
STEPS = 4


def _prompt(seat: int, n: int) -> dict[str, Any]:
    # A different colour each time (no cache); the simulator sends STEPS progress messages for each node.
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": n}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": f"crowd/s{seat}"}},
    }


class Clock:
    """What the simulator noted (benchmarks.simclock): when each prompt arrived, when each message left."""

    def __init__(self, path: Path) -> None:
        noted = json.loads(path.read_text())
        self.received: dict[str, float] = noted["received"]
        self.sent = {(p, event, detail): at for p, event, detail, at in noted["sent"]}


@dataclass
class Outcome:
    submitted: dict[str, float] = field(default_factory=dict)  # prompt id → submit left the client
    finished: dict[str, float] = field(default_factory=dict)  # prompt id → final event on the seat's socket
    seen: dict[tuple[str, str, str], float] = field(default_factory=dict)
    burst: set[str] = field(default_factory=set)  # the first job of every seat, all submitted at once
    refused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def _seat(
    session: aiohttp.ClientSession,
    base: str,
    token: str,
    seat: int,
    start: asyncio.Event,
    end_at: list[float],
    out: Outcome,
    connected: list[int],
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    rng = random.Random(seat)
    try:
        async with session.ws_connect(f"{base.replace('http', 'ws', 1)}/ws/hub/seat/", headers=headers) as ws:
            connected[0] += 1
            waiting: dict[str, asyncio.Future[None]] = {}

            async def read() -> None:
                async for frame in ws:
                    if frame.type != aiohttp.WSMsgType.TEXT:
                        continue
                    now = time.time()
                    message = json.loads(frame.data)
                    data = message.get("data") or {}
                    key = message_key(message.get("type", ""), data)
                    if key is not None:
                        out.seen.setdefault(key, now)
                    if message.get("type") == "executing" and data.get("node") is None:
                        prompt_id = str(data.get("prompt_id"))
                        out.finished.setdefault(prompt_id, now)
                        future = waiting.pop(prompt_id, None)
                        if future is not None and not future.done():
                            future.set_result(None)

            reader = asyncio.create_task(read())
            await start.wait()
            n = 0
            while True:
                sent = time.time()
                async with session.post(
                    f"{base}/api/hub/prompt", json={"prompt": _prompt(seat, n)}, headers=headers
                ) as answer:
                    body = await answer.json(content_type=None)
                if answer.status != 200:
                    out.refused.append(f"seat {seat}: {answer.status} {str(body)[:200]}")
                else:
                    prompt_id = body["prompt_id"]
                    out.submitted[prompt_id] = sent
                    if n == 0:
                        out.burst.add(prompt_id)
                    future = asyncio.get_running_loop().create_future()
                    waiting[prompt_id] = future
                    if prompt_id not in out.finished:
                        try:
                            await asyncio.wait_for(future, LOST_AFTER)
                        except TimeoutError:
                            pass
                n += 1
                # The steady part: the next job after a random pause around the seat's rate.
                pause = rng.expovariate(RATE / 60.0)
                if time.time() + pause > end_at[0]:
                    break
                await asyncio.sleep(pause)
            await asyncio.sleep(1.0)  # the last events
            reader.cancel()
    except Exception as exc:  # a benchmark reports what went wrong instead of hanging
        out.errors.append(f"seat {seat}: {exc.__class__.__name__}: {exc}")


async def _crowd(base: str, tokens: list[str], out: Outcome) -> None:
    start = asyncio.Event()
    end_at = [float("inf")]
    connected = [0]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        tasks = [
            asyncio.create_task(_seat(session, base, token, i, start, end_at, out, connected))
            for i, token in enumerate(tokens)
        ]
        deadline = time.monotonic() + 60
        while connected[0] + len(out.errors) < len(tokens) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        end_at[0] = time.time() + SECONDS
        start.set()  # the burst: every seat at once
        await asyncio.gather(*tasks)


def _proc_stat(pid: int) -> tuple[float, float]:
    """(CPU seconds, resident MB) of one process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        return cpu, rss
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0


def _redis_pid() -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "redis-server":
                    return int(entry.name)
            except OSError:
                continue
    return None


def run(report: Any) -> None:
    import signal
    import sys

    import requests
    from django.conf import settings

    from gpu_backends.models import GpuBackend
    from gpu_backends.services import refresh_object_info
    from workshops.services import create_workshop

    report.line(
        f"\n## One hub, many seats: {WORKERS} RQ workers, the simulator at zero delay with {WORKERS} slots; "
        f"a burst, then {RATE:g} jobs per seat per minute for {SECONDS:g} s"
    )
    redis_pid = _redis_pid()
    for size in SIZES:
        port, noted = free_port(), settings.DATA_DIR / f"crowd-{size}-clock.json"
        simulator = spawn(
            [
                sys.executable, "-m", "benchmarks.simclock", "--port", str(port), "--out", str(noted),
                "--output-dir", str(settings.DATA_DIR / "crowd-sim"), "--concurrency", str(WORKERS),
                "--progress-steps", str(STEPS),
            ],
            settings.DATA_DIR / f"crowd-{size}-simulator.log",
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(100):
                try:
                    requests.get(f"{url}/system_stats", timeout=1)
                    break
                except requests.RequestException:
                    time.sleep(0.1)
            backend = GpuBackend.objects.create(
                name=f"bench-crowd-{size}", kind="simulator", url=url, max_concurrency=WORKERS
            )
            refresh_object_info(backend)  # as the instructor's "Test connection" does before the day
            workshop, _ = create_workshop(f"bench-crowd-{size}", seats=size, backends=[backend])
            if os.environ.get("BENCH_CROWD_PREVIEWS") == "none":
                workshop.preview_method = "none"
                workshop.save()
            tokens = [seat.issue_token() for seat in workshop.seats.order_by("label")]
            hub = Hub(
                settings.DATA_DIR / f"logs-crowd-{size}",
                workers=WORKERS,
                env={"COMFYUME_TRACE_JOBS": "true"},
                web=int(os.environ.get("BENCH_CROWD_WEB", "1")),
            )
            with hub:
                pids = {
                    "web": hub.web_pids(),
                    "workers": [p.pid for p in hub.procs[1:]],
                    "simulator": [simulator.pid],
                }
                if redis_pid:
                    pids["redis"] = [redis_pid]
                pids["benchmark's seats"] = [os.getpid()]
                before = {kind: sum(_proc_stat(pid)[0] for pid in group) for kind, group in pids.items()}
                started = time.monotonic()
                out = Outcome()
                asyncio.run(_crowd(hub.base, tokens, out))
                elapsed = time.monotonic() - started
                after = {kind: [_proc_stat(pid) for pid in group] for kind, group in pids.items()}
        finally:
            simulator.send_signal(signal.SIGTERM)
            simulator.wait(timeout=30)
        _report(report, size, out, Clock(noted), before, after, elapsed)
        _split(report, out)
        workshop.archived_at = workshop.created_at  # out of the next size's way (metrics, schedule)
        workshop.save(update_fields=["archived_at"])


SPLIT = (
    ("submit → request in the web server", "client_submit", "submit"),
    ("request → row queued", "submit", "queued"),
    ("queued → claimed (waiting for a free slot)", "queued", "claimed"),
    ("claimed → an RQ worker runs it", "claimed", "dispatch"),
    ("worker → job handed to the provider", "dispatch", "run"),
    ("provider → backend accepted the prompt", "run", "accepted"),
    ("backend's final event → handed to Redis", "done", "relayed"),
    ("Redis → the seat's socket", "relayed", "client_done"),
    ("final event → job recorded", "done", "recorded"),
)


def _split(report: Any, out: Outcome) -> None:
    """Where the jobs' time went (jobs.trace), step by step."""
    from jobs import trace
    from jobs.models import Job

    ids = dict(Job.objects.filter(prompt_id__in=list(out.submitted)).values_list("prompt_id", "pk"))
    timelines = [
        step_times(
            trace.read(ids[key]),
            client_submit=out.submitted[str(key)],
            **({"client_done": out.finished[str(key)]} if str(key) in out.finished else {}),
        )
        for key in ids
    ]
    print_split(report, timelines, SPLIT)


def _report(
    report: Any,
    size: int,
    out: Outcome,
    clock: Clock,
    before: dict[str, float],
    after: dict[str, list[tuple[float, float]]],
    elapsed: float,
) -> None:
    lost = [p for p in out.submitted if p not in out.finished]
    report.line(
        f"{size:>4} seats: {len(out.submitted)} jobs in {elapsed:.0f} s ({len(out.submitted) / elapsed:.1f}/s), "
        f"lost {len(lost)}, refused {len(out.refused)}, errors {len(out.errors)}"
    )
    # The burst: every seat's first job at once. What counts is how soon the last one is on a GPU and done.
    burst_start = min((out.submitted[p] for p in out.burst), default=0.0)
    on_gpu = [clock.received[p] - burst_start for p in out.burst if p in clock.received]
    done = [out.finished[p] - burst_start for p in out.burst if p in out.finished]
    burst_over = burst_start + max(done, default=0.0)
    report.line(
        f"      burst of {len(out.burst)}: all on the GPU {max(on_gpu, default=float('nan')):.2f} s after, "
        f"all done on their sockets {max(done, default=float('nan')):.2f} s after"
    )
    # The steady part: jobs submitted once the burst was over (before, they waited for the burst's slots).
    steady = [p for p, t in out.submitted.items() if t > burst_over]
    submit = [(clock.received[p] - out.submitted[p]) * 1000 for p in steady if p in clock.received]
    finish = [
        (out.finished[p] - clock.sent[(p, "executing", "None")]) * 1000
        for p in steady
        if p in out.finished and (p, "executing", "None") in clock.sent
    ]
    both = submit + finish
    events = [(at - clock.sent[key]) * 1000 for key, at in out.seen.items() if key in clock.sent and key[0] in steady]
    during = [
        (at - clock.sent[key]) * 1000 for key, at in out.seen.items() if key in clock.sent and key[0] in out.burst
    ]
    report.line(
        f"      steady ({len(steady)} jobs): hub overhead p50 {pct(both, 0.5):.1f} ms, p99 {pct(both, 0.99):.1f} ms "
        f"(submit → GPU p50 {pct(submit, 0.5):.1f} / p99 {pct(submit, 0.99):.1f}; "
        f"final event → socket p50 {pct(finish, 0.5):.1f} / p99 {pct(finish, 0.99):.1f}); "
        f"event to socket p50 {pct(events, 0.5):.1f} ms, p99 {pct(events, 0.99):.1f} ms"
    )
    report.line(
        f"      during the burst: event to socket p50 {pct(during, 0.5):.1f} ms, p99 {pct(during, 0.99):.1f} ms"
    )
    usage = []
    for kind, stats in after.items():
        cpu = sum(s[0] for s in stats) - before[kind]
        rss = sum(s[1] for s in stats)
        usage.append(f"{kind} {rss:.0f} MB, {cpu:.1f} CPU s ({cpu / elapsed / (os.cpu_count() or 1) * 100:.0f}%)")
    report.line("      " + "; ".join(usage))
    for problem in (out.errors + out.refused)[:3]:
        report.line(f"      e.g. {problem}")
    report.bench(f"crowd.{size}.burst_all_done", max(done, default=float("nan")), "s")
    report.bench(f"crowd.{size}.hub_overhead_p50", pct(both, 0.5), "ms")
    report.bench(f"crowd.{size}.hub_overhead_p99", pct(both, 0.99), "ms")
    report.bench(f"crowd.{size}.event_to_socket_p99", pct(events, 0.99), "ms")
    report.bench(f"crowd.{size}.jobs_lost", len(lost), "jobs")
    web = after.get("web") or [(0.0, 0.0)]
    report.bench(f"crowd.{size}.web_rss", web[0][1], "MB")
