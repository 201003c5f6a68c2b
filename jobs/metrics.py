"""Prometheus metrics: is the workshop healthy?

Gauges are read from the database at scrape time (the rows are the truth) with a fixed number of aggregate
queries, whatever the number of jobs and seats: one scan of the open workshops' jobs grouped by workshop and
status gives the job counts, the queue's depth and oldest waiting job, and the last dispatch; GPU seconds and
cost are summed per workshop and backend in SQL. Archived workshops drop out, so a long-lived installation
does not scrape its whole history. Latency histograms are observed by whichever process sees the moment (web,
worker) and kept as counters in Redis, so every web process answers ``/metrics`` with the same totals.

The series and the alerts built on them are listed in docs/OPERATIONS.md ("Health and metrics").
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.db.models import Count, F, FloatField, Max, Min, Q, Sum
from django.db.models.functions import Cast
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from comfyume.redis_client import counters

log = logging.getLogger(__name__)

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
HISTOGRAMS = {
    "dispatch_latency_seconds": "Submit to the backend accepting the prompt.",
    "end_to_end_seconds": "Submit to the job's final state.",
    "finish_to_record_seconds": "The backend's final event to the job row recording the outcome.",
}
# A seat counts as active when it had a job waiting, running or finishing within this window.
ACTIVE_SEAT_WINDOW = timedelta(minutes=10)
# Keys under which storage.backup.health() may report its last success, in the order they are tried.
BACKUP_SUCCESS_KEYS = ("last_success_timestamp", "last_success_at", "last_success", "last_success_time")


def _key(name: str) -> str:
    return f"{settings.REDIS_PREFIX}:metrics:{name}"


def observe(name: str, seconds: float) -> None:
    """Add one observation to a histogram. Metrics are best effort: Redis trouble never fails a job."""
    try:
        pipe = counters().pipeline(transaction=False)
        key = _key(name)
        # Only the smallest bucket that holds the value; the scrape adds them up into Prometheus's
        # cumulative buckets. Three commands per observation instead of one per bucket.
        bound = next((b for b in BUCKETS if seconds <= b), None)
        if bound is not None:
            pipe.hincrby(key, f"le:{bound}", 1)
        pipe.hincrby(key, "count", 1)
        pipe.hincrbyfloat(key, "sum", seconds)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("Could not record metric %s: %s", name, exc)


def _timestamp(value: datetime | None) -> float:
    """Seconds since the epoch, 0 for "never" (Prometheus has no null; alerts treat 0 as long ago)."""
    return value.timestamp() if value is not None else 0.0


class PipelineCollector:
    """Collects the workshops', the queue's, the backends' and the backups' metrics on each scrape."""

    def collect(self) -> Iterator[Metric]:
        from workshops.models import Workshop

        now = timezone.now()
        workshops: dict[int, str] = {}
        gauge = GaugeMetricFamily("comfyume_workshop_paused", "1 while the workshop is paused.", labels=["workshop"])
        for pk, slug, paused in Workshop.objects.filter(archived_at=None).values_list("pk", "slug", "paused"):
            workshops[pk] = slug
            gauge.add_metric([slug], 1 if paused else 0)
        yield gauge
        yield from self._jobs(workshops, now)
        yield from self._gpu_usage(workshops)
        yield from self._seats(workshops, now)
        yield from self._backends()
        yield from self._backup()
        yield from self._histograms()

    def _jobs(self, workshops: dict[int, str], now: datetime) -> Iterator[Metric]:
        from jobs.models import Job

        by_status = GaugeMetricFamily("comfyume_jobs", "Jobs by status.", labels=["workshop", "status"])
        depth = GaugeMetricFamily("comfyume_queue_depth", "Jobs waiting for a GPU.", labels=["workshop"])
        oldest = GaugeMetricFamily(
            "comfyume_queue_oldest_age_seconds", "Age of the oldest waiting job (0: none waits).", labels=["workshop"]
        )
        last = GaugeMetricFamily(
            "comfyume_last_dispatch_timestamp_seconds",
            "When a job of the workshop last left the queue for a GPU (0: never).",
            labels=["workshop"],
        )
        counts: dict[tuple[int, str], int] = {}
        oldest_at: dict[int, datetime] = {}
        last_at: dict[int, datetime] = {}
        rows = (
            Job.objects.filter(workshop__archived_at=None)
            .values("workshop_id", "status")
            .annotate(n=Count("pk"), oldest=Min("created_at"), last=Max("dispatched_at"))
            .order_by()
        )
        for row in rows:
            ws = row["workshop_id"]
            counts[ws, row["status"]] = row["n"]
            if row["status"] == Job.Status.QUEUED and row["oldest"] is not None:
                oldest_at[ws] = row["oldest"]
            if row["last"] is not None and (ws not in last_at or row["last"] > last_at[ws]):
                last_at[ws] = row["last"]
        for ws, slug in workshops.items():
            for status in Job.Status.values:
                by_status.add_metric([slug, status], counts.get((ws, status), 0))
            depth.add_metric([slug], counts.get((ws, Job.Status.QUEUED), 0))
            waited = (now - oldest_at[ws]).total_seconds() if ws in oldest_at else 0.0
            oldest.add_metric([slug], max(waited, 0.0))
            last.add_metric([slug], _timestamp(last_at.get(ws)))
        yield from (by_status, depth, oldest, last)

    def _gpu_usage(self, workshops: dict[int, str]) -> Iterator[Metric]:
        from jobs.models import Job

        seconds = GaugeMetricFamily(
            "comfyume_gpu_seconds", "GPU seconds used by finished jobs.", labels=["workshop", "backend"]
        )
        cost = GaugeMetricFamily(
            "comfyume_gpu_cost",
            "GPU cost of finished jobs: GPU seconds × the backend's price per hour / 3600 (the price's currency).",
            labels=["workshop", "backend"],
        )
        price = Cast("backend__price_per_hour", FloatField())
        rows = (
            Job.objects.filter(workshop__archived_at=None, gpu_seconds__gt=0)
            .values("workshop_id", "backend__name")
            .annotate(s=Sum("gpu_seconds"), c=Sum(F("gpu_seconds") * price / 3600.0, output_field=FloatField()))
            .order_by()
        )
        for row in rows:
            slug = workshops.get(row["workshop_id"])
            if slug is None:
                continue
            labels = [slug, row["backend__name"] or ""]  # "": the backend was deleted since
            seconds.add_metric(labels, row["s"] or 0.0)
            cost.add_metric(labels, row["c"] or 0.0)
        yield from (seconds, cost)

    def _seats(self, workshops: dict[int, str], now: datetime) -> Iterator[Metric]:
        from jobs.models import Job
        from workshops.models import Seat, SeatFrontend

        total = GaugeMetricFamily("comfyume_seats", "Seats of the workshop.", labels=["workshop"])
        online = GaugeMetricFamily(
            "comfyume_seats_online", "Seats whose ComfyUI frontend is running.", labels=["workshop"]
        )
        active = GaugeMetricFamily(
            "comfyume_seats_active",
            f"Seats with a job waiting, running or finished in the last {ACTIVE_SEAT_WINDOW.seconds // 60} minutes.",
            labels=["workshop"],
        )
        seat_rows = {
            row["workshop_id"]: (row["n"], row["up"])
            for row in Seat.objects.filter(workshop__archived_at=None)
            .values("workshop_id")
            .annotate(n=Count("pk"), up=Count("pk", filter=Q(frontend__state=SeatFrontend.State.RUNNING)))
            .order_by()
        }
        # Every job submitted in the window is still waiting or active, or has finished since: both sides of
        # the OR are served by an index ((status, …) and (workshop, finished_at)), not a scan of the history.
        recent = dict(
            Job.objects.filter(workshop__archived_at=None)
            .filter(Q(status__in=(*Job.WAITING, *Job.ACTIVE)) | Q(finished_at__gte=now - ACTIVE_SEAT_WINDOW))
            .values_list("workshop_id")
            .annotate(n=Count("seat_id", distinct=True))
            .order_by()
        )
        for ws, slug in workshops.items():
            n, up = seat_rows.get(ws, (0, 0))
            total.add_metric([slug], n)
            online.add_metric([slug], up)
            active.add_metric([slug], recent.get(ws, 0))
        yield from (total, online, active)

    def _backends(self) -> Iterator[Metric]:
        from gpu_backends.models import GpuBackend
        from jobs.models import Job

        up = GaugeMetricFamily("comfyume_backend_up", "1 when the backend takes jobs.", labels=["backend", "state"])
        state = GaugeMetricFamily(
            "comfyume_backend_state", "1 for the backend's current state, 0 the others.", labels=["backend", "state"]
        )
        enabled = GaugeMetricFamily("comfyume_backend_enabled", "1 when the backend is enabled.", labels=["backend"])
        active = GaugeMetricFamily("comfyume_backend_active_jobs", "Jobs on the backend now.", labels=["backend"])
        capacity = GaugeMetricFamily(
            "comfyume_backend_max_concurrency", "Jobs the backend runs at once.", labels=["backend"]
        )
        counts = dict(
            Job.objects.filter(status__in=Job.ACTIVE, backend__isnull=False)
            .values_list("backend_id")
            .annotate(n=Count("pk"))
            .order_by()
        )
        for backend in GpuBackend.objects.only("name", "state", "enabled", "max_concurrency"):
            takes_jobs = backend.enabled and backend.state in GpuBackend.DISPATCHABLE
            up.add_metric([backend.name, backend.state], 1 if takes_jobs else 0)
            for value in GpuBackend.State.values:
                state.add_metric([backend.name, value], 1 if backend.state == value else 0)
            enabled.add_metric([backend.name], 1 if backend.enabled else 0)
            active.add_metric([backend.name], counts.get(backend.pk, 0))
            capacity.add_metric([backend.name], backend.max_concurrency)
        yield from (up, state, enabled, active, capacity)

    def _backup(self) -> Iterator[Metric]:
        """The last successful backup, from ``storage.backup.health()`` when that module provides it."""
        stamp = backup_last_success()
        if stamp is None:
            return
        gauge = GaugeMetricFamily(
            "comfyume_backup_last_success_timestamp_seconds", "When the last backup succeeded (0: never)."
        )
        gauge.add_metric([], stamp)
        yield gauge

    def _histograms(self) -> Iterator[Metric]:
        try:
            pipe = counters().pipeline(transaction=False)
            for name in HISTOGRAMS:
                pipe.hgetall(_key(name))
            stored = pipe.execute()
        except redis.RedisError as exc:
            log.warning("Could not read histograms: %s", exc)
            return
        for (name, doc), raw in zip(HISTOGRAMS.items(), stored, strict=True):
            data = {k.decode(): float(v) for k, v in raw.items()}
            buckets, running = [], 0.0
            for b in BUCKETS:
                running += data.get(f"le:{b}", 0.0)
                buckets.append((str(b), running))
            buckets.append(("+Inf", data.get("count", 0.0)))
            yield HistogramMetricFamily(f"comfyume_{name}", doc, buckets=buckets, sum_value=data.get("sum", 0.0))


def backup_last_success() -> float | None:
    """Epoch seconds of the last successful backup, 0.0 for never, None when backups are not there to ask.

    ``storage.backup`` is optional here: before it exists, or when its ``health()`` says backups are not
    configured or cannot answer, the series is left out rather than reported as a failure of the scrape.
    """
    try:
        module = importlib.import_module("storage.backup")
    except ModuleNotFoundError as exc:
        if exc.name not in ("storage.backup", "storage"):
            log.warning("storage.backup cannot be imported: %s", exc)
        return None
    health = getattr(module, "health", None)
    if not callable(health):
        return None
    try:
        report: Any = health()
    except Exception as exc:  # a broken backup check must not break the scrape of everything else
        log.warning("storage.backup.health() failed: %s", exc)
        return None
    # "off": no destination or no schedule; the operator chose no backups, which is not a stale backup.
    if not isinstance(report, dict) or report.get("status") == "off" or report.get("enabled") is False:
        return None
    for key in BACKUP_SUCCESS_KEYS:
        if key in report:
            return _as_timestamp(report[key])
    return 0.0


def _as_timestamp(value: object) -> float:
    if value is None or value == "":
        return 0.0
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            pass
    log.warning("storage.backup.health() gave a last success of %r, not a time", value)
    return 0.0
