"""``/health`` (database, Redis, each backend) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

import hmac
import time
from typing import Any

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gpu_backends.models import GpuBackend
from jobs.metrics import PipelineCollector
from storage import backup
from storage.stores import StorageError, default_store

# A storage check is a request to R2: answered from this cache for a while, so frequent probes stay cheap.
STORAGE_CHECK_SECONDS = 60.0
_storage_checked: tuple[float, str] = (0.0, "")


def _check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return "ok"
    except Exception as exc:  # any driver error means "down" here
        return f"error: {exc.__class__.__name__}: {exc}"[:300]


def _check_redis() -> str:
    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1).ping()
        return "ok"
    except (redis.RedisError, OSError) as exc:
        return f"error: {exc}"[:300]


def _check_storage() -> str:
    """'ok', or what is wrong with the object store (a wrong bucket or key names the setting)."""
    global _storage_checked
    checked_at, answer = _storage_checked
    if answer and time.monotonic() - checked_at < STORAGE_CHECK_SECONDS:
        return answer
    try:
        default_store().check()
        answer = "ok"
    except StorageError as exc:
        answer = f"error: {exc}"[:300]
    _storage_checked = (time.monotonic(), answer)
    return answer


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """200 while the database and Redis answer (backends may be failing: that is shown, not fatal)."""
    database, redis_state = _check_database(), _check_redis()
    backends = {}
    if database == "ok":
        for b in GpuBackend.objects.filter(enabled=True):
            backends[b.name] = {"kind": b.kind, "state": b.state, "last_error": b.last_error or None}
    storage = _check_storage()
    backups = backup.health() if database == "ok" else {"status": "unknown"}
    healthy = database == "ok" and redis_state == "ok"
    degraded = (
        any(b["state"] == GpuBackend.State.FAILING for b in backends.values())
        or not backends
        or storage != "ok"
        or backups.get("status") in ("failing", "stale", "empty")
    )
    status = "down" if not healthy else ("degraded" if degraded else "ok")
    report = {
        "status": status,
        "database": database,
        "redis": redis_state,
        "storage": storage,
        "backup": backups,
        "backends": backends,
    }
    return JsonResponse(
        report if _may_see_details(request) else _without_details(report), status=200 if healthy else 503
    )


def _may_see_details(request: HttpRequest) -> bool:
    """Staff, and monitoring with the metrics token: error texts name hosts, buckets and backends' URLs."""
    if getattr(request, "user", None) is not None and request.user.is_staff:
        return True
    return bool(settings.METRICS_TOKEN) and _has_metrics_token(request)


def _without_details(report: dict[str, Any]) -> dict[str, Any]:
    """What anyone may know: whether each part works (``ok`` / ``error``), each backend's state, the backups'."""
    return {
        **report,
        **{part: "ok" if report[part] == "ok" else "error" for part in ("database", "redis", "storage")},
        "backup": {"status": report["backup"].get("status")},
        "backends": {name: {"kind": b["kind"], "state": b["state"]} for name, b in report["backends"].items()},
    }


def _has_metrics_token(request: HttpRequest) -> bool:
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), settings.METRICS_TOKEN.encode())


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if settings.METRICS_TOKEN and not _has_metrics_token(request):
        return HttpResponse("metrics token required\n", status=401, content_type="text/plain")
    registry = CollectorRegistry()
    registry.register(PipelineCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
