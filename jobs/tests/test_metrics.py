"""``/metrics``: every series that answers "is the workshop healthy?", on a small fixture, at a bounded cost."""

from __future__ import annotations

import sys
import types
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from gpu_backends.models import GpuBackend
from jobs.metrics import observe
from jobs.models import Job
from workshops.models import Seat, SeatFrontend, Workshop

pytestmark = pytest.mark.django_db

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client) -> Series:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    series: Series = {}
    for family in text_string_to_metric_families(answer.content.decode()):
        for sample in family.samples:
            series[sample.name, frozenset(sample.labels.items())] = sample.value
    return series


def value(series: Series, name: str, **labels: str) -> float:
    return series[name, frozenset(labels.items())]


def names(series: Series) -> set[str]:
    return {name for name, _ in series}


@pytest.fixture
def no_backup_module(monkeypatch):
    """As before storage.backup exists: importing it fails."""
    monkeypatch.setitem(sys.modules, "storage.backup", None)


def fake_backup(monkeypatch, health) -> None:
    module = types.ModuleType("storage.backup")
    module.health = health  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "storage.backup", module)


class Fixture:
    """Two workshops (one paused), an archived one, two backends, seats with frontends, jobs in every state."""

    def __init__(self) -> None:
        now = timezone.now()
        self.now = now
        self.h200 = GpuBackend.objects.create(
            name="h200", kind=GpuBackend.Kind.SIMULATOR, url="http://127.0.0.1:9", max_concurrency=3,
            price_per_hour=Decimal("3.60"), state=GpuBackend.State.READY,
        )  # fmt: skip
        self.b300 = GpuBackend.objects.create(
            name="b300", kind=GpuBackend.Kind.SIMULATOR, url="http://127.0.0.1:9", max_concurrency=2,
            price_per_hour=Decimal("7.20"), state=GpuBackend.State.FAILING, enabled=False,
        )  # fmt: skip
        self.ws1 = Workshop.objects.create(slug="ws1", title="One")
        self.ws2 = Workshop.objects.create(slug="ws2", title="Two", paused=True)
        self.old = Workshop.objects.create(slug="old", title="Archived", archived_at=now)
        self.seats = {
            (ws.slug, label): Seat.objects.create(workshop=ws, label=label)
            for ws in (self.ws1, self.ws2, self.old)
            for label in ("user001", "user002", "user003")
        }
        for key, state in ((("ws1", "user001"), "running"), (("ws1", "user002"), "running"),
                           (("ws1", "user003"), "failed"), (("ws2", "user001"), "running")):  # fmt: skip
            SeatFrontend.objects.create(seat=self.seats[key], state=state)

    def job(self, ws: str, label: str, status: str, *, age: float, **fields) -> Job:
        seat = self.seats[ws, label]
        return Job.objects.create(
            workshop=seat.workshop, seat=seat, prompt={}, status=status,
            created_at=self.now - timedelta(seconds=age), **fields,
        )  # fmt: skip

    def populate(self) -> None:
        now = self.now
        # ws1: two waiting (the oldest 10 minutes), one running on h200, two done on each backend.
        self.job("ws1", "user001", Job.Status.QUEUED, age=600)
        self.job("ws1", "user002", Job.Status.QUEUED, age=30)
        self.job("ws1", "user002", Job.Status.RUNNING, age=100, backend=self.h200,
                 dispatched_at=now - timedelta(seconds=90), started_at=now - timedelta(seconds=89))  # fmt: skip
        self.job("ws1", "user001", Job.Status.SUCCEEDED, age=3600, backend=self.h200, gpu_seconds=100.0,
                 dispatched_at=now - timedelta(seconds=3500), finished_at=now - timedelta(seconds=3400))  # fmt: skip
        self.job("ws1", "user003", Job.Status.FAILED, age=3600, backend=self.b300, gpu_seconds=50.0,
                 dispatched_at=now - timedelta(seconds=3550), finished_at=now - timedelta(seconds=3500))  # fmt: skip
        # ws2: one finished 5 minutes ago (its seat is active), one cancelled while waiting.
        self.job("ws2", "user001", Job.Status.SUCCEEDED, age=400, backend=self.h200, gpu_seconds=10.0,
                 dispatched_at=now - timedelta(seconds=390), finished_at=now - timedelta(seconds=300))  # fmt: skip
        self.job("ws2", "user002", Job.Status.CANCELLED, age=7200, finished_at=now - timedelta(seconds=7000))
        # The archived workshop's history is not scraped.
        self.job("old", "user001", Job.Status.SUCCEEDED, age=90000, backend=self.h200, gpu_seconds=999.0)
        self.job("old", "user001", Job.Status.QUEUED, age=90000)


@pytest.fixture
def fixture(db) -> Fixture:
    f = Fixture()
    f.populate()
    return f


def test_queue_depth_oldest_waiting_job_and_last_dispatch_per_workshop(client, fixture, no_backup_module):
    s = scrape(client)
    assert value(s, "comfyume_queue_depth", workshop="ws1") == 2
    assert value(s, "comfyume_queue_depth", workshop="ws2") == 0
    assert value(s, "comfyume_queue_oldest_age_seconds", workshop="ws1") == pytest.approx(600, abs=30)
    assert value(s, "comfyume_queue_oldest_age_seconds", workshop="ws2") == 0
    last = value(s, "comfyume_last_dispatch_timestamp_seconds", workshop="ws1")
    assert last == pytest.approx((fixture.now - timedelta(seconds=90)).timestamp(), abs=1)
    assert value(s, "comfyume_workshop_paused", workshop="ws1") == 0
    assert value(s, "comfyume_workshop_paused", workshop="ws2") == 1


def test_jobs_by_status_include_zeros_for_every_status(client, fixture, no_backup_module):
    s = scrape(client)
    assert value(s, "comfyume_jobs", workshop="ws1", status="queued") == 2
    assert value(s, "comfyume_jobs", workshop="ws1", status="running") == 1
    assert value(s, "comfyume_jobs", workshop="ws1", status="succeeded") == 1
    assert value(s, "comfyume_jobs", workshop="ws1", status="failed") == 1
    assert value(s, "comfyume_jobs", workshop="ws1", status="timed_out") == 0
    assert value(s, "comfyume_jobs", workshop="ws2", status="cancelled") == 1


def test_gpu_seconds_and_cost_per_workshop_and_backend(client, fixture, no_backup_module):
    s = scrape(client)
    assert value(s, "comfyume_gpu_seconds", workshop="ws1", backend="h200") == 100
    assert value(s, "comfyume_gpu_seconds", workshop="ws1", backend="b300") == 50
    assert value(s, "comfyume_gpu_seconds", workshop="ws2", backend="h200") == 10
    # 100 s at 3.60/h = 0.10; 50 s at 7.20/h = 0.10; 10 s at 3.60/h = 0.01
    assert value(s, "comfyume_gpu_cost", workshop="ws1", backend="h200") == pytest.approx(0.10)
    assert value(s, "comfyume_gpu_cost", workshop="ws1", backend="b300") == pytest.approx(0.10)
    assert value(s, "comfyume_gpu_cost", workshop="ws2", backend="h200") == pytest.approx(0.01)


def test_seats_online_and_active_in_the_last_ten_minutes(client, fixture, no_backup_module):
    s = scrape(client)
    assert value(s, "comfyume_seats", workshop="ws1") == 3
    assert value(s, "comfyume_seats_online", workshop="ws1") == 2  # user003's frontend failed
    assert value(s, "comfyume_seats_online", workshop="ws2") == 1
    # ws1: user001 and user002 have waiting/running jobs; user003's job ended an hour ago.
    assert value(s, "comfyume_seats_active", workshop="ws1") == 2
    # ws2: user001's job finished 5 minutes ago; user002's was cancelled two hours ago.
    assert value(s, "comfyume_seats_active", workshop="ws2") == 1


def test_backend_state_concurrency_and_enabled(client, fixture, no_backup_module):
    s = scrape(client)
    assert value(s, "comfyume_backend_state", backend="h200", state="ready") == 1
    assert value(s, "comfyume_backend_state", backend="h200", state="failing") == 0
    assert value(s, "comfyume_backend_state", backend="b300", state="failing") == 1
    assert (
        sum(v for (n, labels), v in s.items() if n == "comfyume_backend_state" and ("backend", "b300") in labels) == 1
    )
    assert value(s, "comfyume_backend_up", backend="h200", state="ready") == 1
    assert value(s, "comfyume_backend_up", backend="b300", state="failing") == 0
    assert value(s, "comfyume_backend_enabled", backend="b300") == 0
    assert value(s, "comfyume_backend_active_jobs", backend="h200") == 1
    assert value(s, "comfyume_backend_active_jobs", backend="b300") == 0
    assert value(s, "comfyume_backend_max_concurrency", backend="h200") == 3


def test_archived_workshops_are_left_out(client, fixture, no_backup_module):
    s = scrape(client)
    workshops = {dict(labels).get("workshop") for _, labels in s}
    assert "old" not in workshops
    assert {"ws1", "ws2"} <= workshops


def test_latency_histograms_come_from_redis(client, fixture, no_backup_module):
    observe("dispatch_latency_seconds", 0.2)
    observe("dispatch_latency_seconds", 4.0)
    observe("end_to_end_seconds", 42.0)
    s = scrape(client)
    assert value(s, "comfyume_dispatch_latency_seconds_count") == 2
    assert value(s, "comfyume_dispatch_latency_seconds_bucket", le="0.25") == 1
    assert value(s, "comfyume_dispatch_latency_seconds_bucket", le="5") == 2
    assert value(s, "comfyume_end_to_end_seconds_sum") == pytest.approx(42.0)


def test_backup_age_comes_from_storage_backup_health(client, db, monkeypatch):
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    fake_backup(monkeypatch, lambda: {"status": "ok", "last_success_timestamp": at.timestamp()})
    assert value(scrape(client), "comfyume_backup_last_success_timestamp_seconds") == at.timestamp()
    fake_backup(monkeypatch, lambda: {"last_success": at})
    assert value(scrape(client), "comfyume_backup_last_success_timestamp_seconds") == at.timestamp()
    fake_backup(monkeypatch, lambda: {"last_success_at": at.isoformat()})
    assert value(scrape(client), "comfyume_backup_last_success_timestamp_seconds") == at.timestamp()


def test_a_backup_that_never_succeeded_reads_as_zero(client, db, monkeypatch):
    fake_backup(monkeypatch, lambda: {"status": "never", "last_success": None, "last_success_timestamp": None})
    assert value(scrape(client), "comfyume_backup_last_success_timestamp_seconds") == 0


def test_no_backup_series_when_backups_are_off(client, db, monkeypatch):
    fake_backup(monkeypatch, lambda: {"status": "off", "last_success": None, "last_success_timestamp": None})
    assert "comfyume_backup_last_success_timestamp_seconds" not in names(scrape(client))


def test_backup_age_from_the_real_storage_backup_module_when_it_exists(client, db):
    backup = pytest.importorskip("storage.backup")
    if not callable(getattr(backup, "health", None)):
        pytest.skip("storage.backup has no health() yet")
    report = backup.health()
    series = names(scrape(client))
    assert ("comfyume_backup_last_success_timestamp_seconds" in series) == (report.get("status") != "off")


@pytest.mark.parametrize(
    "module",
    [None, types.ModuleType("storage.backup")],
    ids=["module absent", "module without health()"],
)
def test_no_backup_series_before_storage_backup_exists(client, db, monkeypatch, module):
    monkeypatch.setitem(sys.modules, "storage.backup", module)
    assert "comfyume_backup_last_success_timestamp_seconds" not in names(scrape(client))


def test_a_failing_backup_check_leaves_the_rest_of_the_scrape_intact(client, fixture, monkeypatch):
    def broken() -> dict:
        raise RuntimeError("bucket unreachable")

    fake_backup(monkeypatch, broken)
    s = scrape(client)
    assert "comfyume_backup_last_success_timestamp_seconds" not in names(s)
    assert value(s, "comfyume_queue_depth", workshop="ws1") == 2


def test_scrape_cost_does_not_grow_with_jobs_or_seats(client, fixture, monkeypatch):
    fake_backup(monkeypatch, lambda: {"last_success": fixture.now})
    with CaptureQueriesContext(connection) as small:
        scrape(client)
    for i in range(40):
        label = f"extra{i:03d}"
        seat = Seat.objects.create(workshop=fixture.ws1 if i % 2 else fixture.ws2, label=label)
        SeatFrontend.objects.create(seat=seat, state="running")
        fixture.seats[seat.workshop.slug, label] = seat
        for status in (Job.Status.QUEUED, Job.Status.SUCCEEDED):
            fixture.job(seat.workshop.slug, label, status, age=i, backend=fixture.h200, gpu_seconds=1.0,
                        finished_at=fixture.now if status == Job.Status.SUCCEEDED else None)  # fmt: skip
    with CaptureQueriesContext(connection) as large:
        s = scrape(client)
    assert value(s, "comfyume_seats", workshop="ws1") == 23
    assert len(large.captured_queries) == len(small.captured_queries)
    assert len(large.captured_queries) <= 7, [q["sql"] for q in large.captured_queries]
