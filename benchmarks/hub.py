"""The hub's processes as the benchmarks run them: web servers and RQ workers on the benchmark's database and Redis.

What ``make run`` starts, minus the seat frontends (a benchmark's seats use the hub's seat API and socket): the
web server (``python -m comfyume.server``, daphne) and ``rqworker`` processes. ``BENCH_HUB_CPUS`` (e.g. ``0``)
pins them, and the benchmark process, to those CPUs, so a ComfyUI started under ``taskset -c 1`` has a core to
itself as a GPU server has its own machine (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

BASE = Path(__file__).resolve().parent.parent


def hub_cpus() -> set[int] | None:
    """The CPUs ``BENCH_HUB_CPUS`` names (``0`` or ``0,2-3``), or None for all."""
    value = os.environ.get("BENCH_HUB_CPUS", "").strip()
    if not value:
        return None
    cpus: set[int] = set()
    for part in value.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def pin_to_hub_cpus() -> None:
    cpus = hub_cpus()
    if cpus:
        os.sched_setaffinity(0, cpus)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def step_times(steps: list[tuple[str, float]], **known: float) -> dict[str, float]:
    """One job's timeline: its trace's steps (jobs.trace.read) and the ``known`` times the benchmark saw itself.
    A repeated step counts from its first time for ``output_fetch`` (the first copy starts), its last otherwise."""
    times = dict(known)
    for step, at in steps:
        if step == "output_fetch":
            times.setdefault(step, at)
        else:
            times[step] = at
    return times


def print_split(report: Any, timelines: list[dict[str, float]], split: tuple[tuple[str, str, str], ...]) -> None:
    """One line per ``(label, from, to)`` of ``split``: p50 and p99 over the jobs whose timeline has both."""
    for label, start, end in split:
        spans = [(t[end] - t[start]) * 1000 for t in timelines if start in t and end in t]
        if spans:
            report.line(f"    {label:<50} p50 {pct(spans, 0.5):8.1f} ms   p99 {pct(spans, 0.99):8.1f} ms")


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        args,
        cwd=BASE,
        env={**os.environ, **(env or {})},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=pin_to_hub_cpus if hub_cpus() else None,
    )


def wait_for_workers(count: int, deadline: float) -> None:
    """Until every RQ worker has registered (it has imported Django and listens): 20 processes importing at
    once saturate both cores for several seconds, and jobs measured meanwhile would measure that."""
    from rq import Worker

    from jobs.scheduler import dispatch_queue

    queue = dispatch_queue()
    while Worker.count(queue=queue) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {Worker.count(queue=queue)} of {count} RQ workers started; see the logs")
        time.sleep(0.2)


class Hub:
    """``workers`` RQ workers and a web server of ``web`` processes on one port (``comfyume.server --processes``,
    as a deployment runs it); ``env`` is added to theirs. Use as a context manager. Entering it also pins the
    benchmark's own process (its clients, and what it starts afterwards) to ``BENCH_HUB_CPUS``."""

    def __init__(self, logs: Path, *, workers: int, env: dict[str, str] | None = None, web: int = 1) -> None:
        self.logs, self.workers, self.env, self.web = logs, workers, env or {}, web
        self.port = free_port()
        self.base, self.ws_base = f"http://127.0.0.1:{self.port}", f"ws://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Hub:
        from django.conf import settings

        self.logs.mkdir(parents=True, exist_ok=True)
        pin_to_hub_cpus()
        manage = [sys.executable, str(BASE / "manage.py")]
        try:
            web = [sys.executable, "-m", "comfyume.server", "--processes", str(self.web)]
            web += ["-b", "127.0.0.1", "-p", str(self.port), "comfyume.asgi:application"]
            self.procs.append(spawn(web, self.logs / "web.log", self.env))
            self.procs += [
                spawn(
                    [*manage, "rqworker", settings.RQ_QUEUE_NAME, "--worker-class", "rq.worker.SimpleWorker"],
                    self.logs / f"worker{i}.log",
                    self.env,
                )
                for i in range(self.workers)
            ]
            deadline = time.monotonic() + 60
            while True:
                try:
                    requests.get(f"{self.base}/health", timeout=2)
                    break
                except requests.RequestException:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the hub's web server did not start; see {self.logs}/web.log") from None
                    time.sleep(0.2)
            wait_for_workers(self.workers, time.monotonic() + 120)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def web_pids(self) -> list[int]:
        """The processes that serve requests: the web server's own, or its children when it runs several."""
        parent = self.procs[0].pid
        if self.web == 1:
            return [parent]
        found = []
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                if f"\nPPid:\t{parent}\n" in status.read_text():
                    found.append(int(status.parent.name))
            except OSError:  # ended while we looked
                continue
        return found

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.procs = []
