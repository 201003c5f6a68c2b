"""``GET /api/queue/status``: how busy the queue and the GPUs are, for anyone — a status page, a monitor, the
projector in the room.

Public by design (``COMFYUME_PUBLIC_QUEUE_STATUS`` turns it off for anyone but staff), so it holds nothing
personal and nothing secret: per workshop that is running, how many jobs wait and run; per GPU backend
switched on, its name, kind, state and busy slots. No seat, participant, prompt, error text or URL. It is cheap
to poll: three aggregate queries whatever the number of jobs, and each web process answers from its last
answer for ``CACHE_SECONDS``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from django.conf import settings
from django.db.models import Count
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from gpu_backends.models import GpuBackend
from workshops.models import Workshop

from .models import Job

CACHE_SECONDS = 2.0

_lock = threading.Lock()
_last: tuple[float, dict[str, Any]] = (float("-inf"), {})


def queue_status() -> dict[str, Any]:
    """The queue and the GPUs now: totals, open workshops, backends switched on."""
    counts: dict[tuple[int, str], int] = {}
    by_backend: dict[int, int] = {}
    rows = (
        Job.objects.filter(status__in=(*Job.WAITING, *Job.ACTIVE), workshop__archived_at__isnull=True)
        .values_list("workshop_id", "backend_id", "status")
        .annotate(n=Count("id"))
        .order_by()
    )
    for workshop_id, backend_id, status, n in rows:
        state = "waiting" if status in Job.WAITING else "running"
        counts[workshop_id, state] = counts.get((workshop_id, state), 0) + n
        if state == "running" and backend_id is not None:
            by_backend[backend_id] = by_backend.get(backend_id, 0) + n
    workshops = [
        {
            "slug": slug,
            "title": title,
            "paused": paused,
            "waiting": counts.get((pk, "waiting"), 0),
            "running": counts.get((pk, "running"), 0),
        }
        for pk, slug, title, paused in Workshop.objects.filter(archived_at__isnull=True)
        .order_by("slug")
        .values_list("pk", "slug", "title", "paused")
    ]
    backends = [
        {
            "name": name,
            "kind": kind,
            "state": state,
            "gpu": gpu_type or None,
            "running": by_backend.get(pk, 0),
            "slots": slots,
        }
        for pk, name, kind, state, gpu_type, slots in GpuBackend.objects.filter(enabled=True)
        .order_by("order", "name")
        .values_list("pk", "name", "kind", "state", "gpu_type", "max_concurrency")
    ]
    return {
        "at": timezone.now().isoformat(),
        "waiting": sum(w["waiting"] for w in workshops),
        "running": sum(w["running"] for w in workshops),
        "workshops": workshops,
        "backends": backends,
    }


def cached_queue_status() -> dict[str, Any]:
    """:func:`queue_status`, computed at most once per ``CACHE_SECONDS`` in this process, however many poll."""
    global _last
    with _lock:
        taken, answer = _last
        if time.monotonic() - taken >= CACHE_SECONDS:
            answer = queue_status()
            _last = (time.monotonic(), answer)
        return answer


@require_GET
def queue_status_view(request: HttpRequest) -> JsonResponse:
    public = settings.COMFYUME["PUBLIC_QUEUE_STATUS"]
    if not public and not (getattr(request, "user", None) is not None and request.user.is_staff):
        return JsonResponse({"error": "not_found", "message": "The queue status is not public here."}, status=404)
    response = JsonResponse(cached_queue_status())
    # Anyone may read it, from any page (nothing personal, no cookie needed); a proxy may keep it as long as we do.
    response["Cache-Control"] = f"{'public' if public else 'private'}, max-age={int(CACHE_SECONDS)}"
    if public:
        response["Access-Control-Allow-Origin"] = "*"
    return response
