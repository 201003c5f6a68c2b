"""Prometheus metrics for the job pipeline.

Gauges (queue depth, jobs by status, GPU seconds) are read from the database at scrape time: the Job
rows are the truth. Latency histograms are observed by whichever process sees the moment (web, worker)
and kept as counters in Redis, so every web process answers ``/metrics`` with the same totals.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from django.conf import settings
from django.db.models import Count, Sum
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from comfyume.redis_client import counters

log = logging.getLogger(__name__)

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
HISTOGRAMS = {
    "dispatch_latency_seconds": "Submit to the backend accepting the prompt.",
    "end_to_end_seconds": "Submit to the job's final state.",
    "finish_to_record_seconds": "The backend's final event to the job row recording the outcome.",
}


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


class PipelineCollector:
    """Collects the job pipeline's metrics on each scrape."""

    def collect(self) -> Iterator[Metric]:
        from gpu_backends.models import GpuBackend
        from jobs.models import Job

        by_status = GaugeMetricFamily("comfyume_jobs", "Jobs by status.", labels=["workshop", "status"])
        for row in Job.objects.values("workshop__slug", "status").annotate(n=Count("pk")).order_by():
            by_status.add_metric([row["workshop__slug"], row["status"]], row["n"])
        yield by_status

        depth = GaugeMetricFamily("comfyume_queue_depth", "Jobs waiting for a GPU.", labels=["workshop"])
        queued = Job.objects.filter(status=Job.Status.QUEUED)
        for slug, n in queued.values_list("workshop__slug").annotate(n=Count("pk")).order_by():
            depth.add_metric([slug], n)
        yield depth

        gpu = GaugeMetricFamily(
            "comfyume_gpu_seconds", "GPU seconds used by finished jobs.", labels=["workshop", "seat", "backend"]
        )
        used = (
            Job.objects.filter(gpu_seconds__gt=0)
            .values_list("workshop__slug", "seat__label", "backend__name")
            .annotate(s=Sum("gpu_seconds"))
            .order_by()
        )
        for slug, seat, backend_name, seconds in used:
            gpu.add_metric([slug, seat, backend_name or ""], seconds)
        yield gpu

        backends = GaugeMetricFamily(
            "comfyume_backend_up", "1 when the backend takes jobs.", labels=["backend", "state"]
        )
        active = GaugeMetricFamily("comfyume_backend_active_jobs", "Jobs on the backend now.", labels=["backend"])
        counts = dict(
            Job.objects.filter(status__in=Job.ACTIVE, backend__isnull=False)
            .values_list("backend__name")
            .annotate(n=Count("pk"))
            .order_by()
        )
        for backend in GpuBackend.objects.all():
            up = backend.enabled and backend.state in GpuBackend.DISPATCHABLE
            backends.add_metric([backend.name, backend.state], 1 if up else 0)
            active.add_metric([backend.name], counts.get(backend.name, 0))
        yield backends
        yield active

        yield from self._histograms()

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
