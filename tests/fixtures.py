"""Fixtures shared by every app's tests (loaded from the root conftest)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import django_rq
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections
from rq import SimpleWorker
from rq.timeouts import TimerDeathPenalty

from comfyume import embedded_redis
from gpu_backends.models import GpuBackend
from gpu_backends.simulator import SimulatorConfig, SimulatorThread
from workshops.models import Seat, Workshop


@pytest.fixture(scope="session", autouse=True)
def redis_server() -> Iterator[str]:
    """The embedded Redis when REDIS_URL is unset; the real one otherwise."""
    proc = embedded_redis.start(settings.EMBEDDED_REDIS_DIR) if settings.EMBEDDED_REDIS else None
    yield settings.REDIS_URL
    embedded_redis.stop(proc)


@pytest.fixture(autouse=True)
def _clean_redis(redis_server: str) -> Iterator[None]:
    """Each test starts with an empty dispatch queue and no leftover metrics or channel messages."""
    conn = django_rq.get_connection(settings.RQ_QUEUE_NAME)
    keys = list(conn.scan_iter(f"{settings.REDIS_PREFIX}*")) + list(conn.scan_iter(f"rq:*{settings.RQ_QUEUE_NAME}*"))
    if keys:
        conn.delete(*keys)
    django_rq.get_queue(settings.RQ_QUEUE_NAME).empty()
    yield


@pytest.fixture(autouse=True)
def _test_settings(tmp_path, settings) -> None:
    settings.STORAGE_DIR = tmp_path / "storage"
    # Real hashing costs ~0.5 s per account; the tests create many and never attack them.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
async def close_sync_thread_connections() -> AsyncIterator[None]:
    """For tests driving the ASGI app: after the test, close the connection of asgiref's shared sync thread (where
    Channels' consumers and these tests' own ``sync_to_async`` calls run), so PostgreSQL lets the test database be
    dropped at the end."""
    from asgiref.sync import sync_to_async

    yield
    await sync_to_async(connections.close_all)()


@pytest.fixture(scope="session")
def simulator(tmp_path_factory) -> Iterator[SimulatorThread]:
    sim = SimulatorThread(SimulatorConfig(output_dir=tmp_path_factory.mktemp("sim"), node_delay=0.01)).start()
    yield sim
    sim.stop()


@pytest.fixture
def sim(simulator: SimulatorThread) -> Iterator[SimulatorThread]:
    """The session simulator with its fault injection reset before and after the test."""
    defaults = SimulatorConfig(output_dir=simulator.config.output_dir, node_delay=0.01)
    for name in ("node_delay", "progress_steps", "progress_all", "preview_method", "fail_on_class",
                 "http_fail_count", "http_fail_status", "ws_drop_after", "hang_on_class", "history_delay",
                 "models"):  # fmt: skip
        setattr(simulator.config, name, getattr(defaults, name))
    yield simulator
    simulator.config.hang_on_class = set()
    simulator.config.node_delay = 0.01


class _InProcessWorker(SimpleWorker):
    """RQ's SimpleWorker, runnable from a test's helper thread (signal handlers need the main thread)."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            super()._install_signal_handlers()


def run_worker(max_jobs: int | None = None) -> None:
    """Run queued dispatches in this process, as a worker would (burst mode: until the queue is empty)."""
    queue = django_rq.get_queue(settings.RQ_QUEUE_NAME)
    try:
        _InProcessWorker([queue], connection=queue.connection).work(burst=True, max_jobs=max_jobs)
    finally:
        if threading.current_thread() is not threading.main_thread():
            connections.close_all()  # a helper thread's connection would block dropping the test database


@dataclass
class Personas:
    instructor: object
    workshop: Workshop
    other_workshop: Workshop
    seat_a: Seat
    seat_b: Seat
    seat_c: Seat  # in other_workshop
    backend: GpuBackend


@pytest.fixture
def personas(db, sim) -> Personas:
    User = get_user_model()
    instructor = User.objects.create_user("instructor", password="pw-instructor", is_staff=True, is_superuser=True)
    backend = GpuBackend.objects.create(name="sim", kind=GpuBackend.Kind.SIMULATOR, url=sim.url, max_concurrency=1)
    workshop = Workshop.objects.create(slug="ws1", title="Workshop one")
    other = Workshop.objects.create(slug="ws2", title="Workshop two")
    workshop.backends.add(backend)
    other.backends.add(backend)
    seats = []
    for ws, label in ((workshop, "user001"), (workshop, "user002"), (other, "user001")):
        user = User.objects.create_user(f"{ws.slug}-{label}", password="pw-participant")
        seats.append(Seat.objects.create(workshop=ws, label=label, participant=user))
    return Personas(instructor, workshop, other, seats[0], seats[1], seats[2], backend)


@pytest.fixture
def second_backend(personas) -> GpuBackend:
    """A second simulator-kind backend of ws1 (not of ws2), after the personas' one in failover order."""
    backend = GpuBackend.objects.create(
        name="sim-2", kind=GpuBackend.Kind.SIMULATOR, url=personas.backend.url, max_concurrency=1, order=1
    )
    personas.workshop.backends.add(backend)
    return backend


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium through Playwright (never Playwright's own browser download)."""
    from playwright.sync_api import sync_playwright

    from tests.launched import CHROMIUM, CHROMIUM_ARGS, WatchedBrowser

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield WatchedBrowser(chromium)
        chromium.close()
