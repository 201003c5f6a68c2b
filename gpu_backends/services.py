"""Backend operations: health checks and the cached node catalogue (object_info) used by preflight."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from .client import BackendError
from .kinds import kind_of, provider_for
from .models import GpuBackend, NodeCatalogue

log = logging.getLogger(__name__)


# A failing backend of a kind that cold-starts is tried again after this long (its next job is the probe).
SERVERLESS_RETRY = timedelta(seconds=60)


def check_health(backend: GpuBackend, *, wake: bool = False) -> bool:
    """Ask the backend whether it is up; record ready/failing. Returns True when it became dispatchable.

    A backend whose kind cold-starts (a serverless deployment) is not asked: a request would start a replica
    (and its bill). Its state comes from its replica status (gpu_backends.scaling) and from its jobs; a failing
    one is given another chance after a minute. ``wake`` asks it all the same (the admin's "Test connection").
    """
    if kind_of(backend).cold_starts and not wake:
        if backend.state == GpuBackend.State.FAILING and timezone.now() - backend.state_changed_at > SERVERLESS_RETRY:
            return backend.mark(GpuBackend.State.UNKNOWN, backend.last_error)
        return False
    try:
        provider_for(backend).health()
    except BackendError as exc:
        if backend.mark(GpuBackend.State.FAILING, str(exc)):
            log.warning("Backend %s is failing: %s", backend.name, exc, extra={"backend": backend.name})
        return False
    changed = backend.mark(GpuBackend.State.READY)
    if changed:
        log.info("Backend %s is ready", backend.name, extra={"backend": backend.name})
    return changed


# Parsed catalogues by backend id, with the fetched_at they were read at: a catalogue is parsed once
# per process and per refresh, not on every submit.
_catalogues: dict[int, tuple[datetime, dict[str, Any]]] = {}


def refresh_object_info(backend: GpuBackend) -> dict[str, Any]:
    """Fetch and cache the backend's node catalogue (which also lists the model files it has)."""
    info = provider_for(backend).fetch_object_info()
    store_object_info(backend, info)
    return info


def store_object_info(backend: GpuBackend, info: dict[str, Any]) -> None:
    now = timezone.now()
    # Not update_or_create: it reads the old catalogue (half a megabyte of JSON, parsed) only to overwrite it.
    if not NodeCatalogue.objects.filter(backend=backend).update(object_info=info, fetched_at=now):
        try:
            with transaction.atomic():
                NodeCatalogue.objects.create(backend=backend, object_info=info, fetched_at=now)
        except IntegrityError:  # another process stored it first: this one is as fresh
            NodeCatalogue.objects.filter(backend=backend).update(object_info=info, fetched_at=now)
    GpuBackend.objects.filter(pk=backend.pk).update(object_info_fetched_at=now)
    backend.object_info_fetched_at = now
    _catalogues[backend.pk] = (now, info)


def cached_object_info(backend: GpuBackend) -> dict[str, Any] | None:
    """The stored catalogue, parsed at most once per refresh in this process; None if never read."""
    fetched = backend.object_info_fetched_at
    if fetched is None:
        return None
    cached = _catalogues.get(backend.pk)
    if cached and cached[0] == fetched:
        return cached[1]
    row = NodeCatalogue.objects.filter(backend=backend).values_list("object_info", "fetched_at").first()
    if row is None:
        return None
    _catalogues[backend.pk] = (row[1], row[0])
    return row[0]


def object_info_for(backend: GpuBackend) -> dict[str, Any] | None:
    """The catalogue to preflight against, without waiting on a slow backend in the submit path.

    The reconciler keeps the stored copy fresh (``OBJECT_INFO_TTL``); only a backend that has never been
    read is asked here. None when it cannot answer: the job is still accepted (the backend validates it
    again when it arrives), so a backend that is down keeps jobs queued instead of refusing them.
    """
    info = cached_object_info(backend)
    if info is not None:
        return info
    if kind_of(backend).cold_starts:
        # Never asked in the submit path: that could wait out a cold start.
        return None
    # Never read: asked even when marked failing (a server that just came up answers before the next health
    # check; one that is down refuses the connection at once). One request of this process asks; the others
    # submitted meanwhile (a class pressing Run at once) wait for its answer instead of asking too.
    with _first_read_lock(backend.pk):
        cached = _catalogues.get(backend.pk)
        if cached is not None:
            return cached[1]
        try:
            return refresh_object_info(backend)
        except BackendError as exc:
            log.warning("Could not read object_info of %s: %s", backend.name, exc, extra={"backend": backend.name})
            return None


_first_reads: dict[int, threading.Lock] = {}
_first_reads_guard = threading.Lock()


def _first_read_lock(backend_id: int) -> threading.Lock:
    with _first_reads_guard:
        return _first_reads.setdefault(backend_id, threading.Lock())


def object_info_is_stale(backend: GpuBackend) -> bool:
    ttl = timedelta(seconds=settings.COMFYUME["OBJECT_INFO_TTL"])
    fetched = backend.object_info_fetched_at
    return fetched is None or timezone.now() - fetched >= ttl


def mark_catalogue_stale(backend: GpuBackend) -> None:
    """Keep using the stored catalogue, but have the reconciler read it again as soon as the backend is ready
    (after a deploy of a new image, say)."""
    if backend.object_info_fetched_at is None:
        return
    old = backend.object_info_fetched_at - timedelta(seconds=settings.COMFYUME["OBJECT_INFO_TTL"] + 1)
    GpuBackend.objects.filter(pk=backend.pk).update(object_info_fetched_at=old)
    NodeCatalogue.objects.filter(backend=backend).update(fetched_at=old)
    backend.object_info_fetched_at = old


def read_catalogue_task(backend_id: int) -> str:
    """RQ task: read a backend's node list in the background (a serverless deployment may take a cold start to
    answer). Records the failure on the backend instead of raising."""
    backend = GpuBackend.objects.filter(pk=backend_id).first()
    if backend is None:
        return "missing"
    try:
        info = refresh_object_info(backend)
    except BackendError as exc:
        backend.mark(backend.state, f"Could not read the node list: {exc}")
        return "failed"
    if kind_of(backend).cold_starts:
        backend.mark(GpuBackend.State.READY)  # a replica answered
    return f"{len(info)} node types"


def read_catalogue_soon(backend: GpuBackend) -> None:
    """Queue :func:`read_catalogue_task` (after the current transaction commits)."""
    import django_rq
    from django.db import transaction

    def enqueue() -> None:
        queue = django_rq.get_queue(settings.RQ_QUEUE_NAME)
        timeout = int(settings.COMFYUME["COLD_START_TIMEOUT"]) + 600
        queue.enqueue(read_catalogue_task, backend.pk, job_timeout=timeout, result_ttl=3600)

    transaction.on_commit(enqueue)
