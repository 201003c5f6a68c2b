"""Warm serverless backends before a workshop and scale them to zero after it, through their vendor's API.

The wanted minimum replica count of a backend is its ``warm_replicas`` while any workshop using it is on
(from ``prewarm_minutes`` before its start to its end), or while the admin's "Warm up now" holds
(``warm_until``); zero otherwise. The reconciler applies a change once (``applied_min_replicas`` remembers what
was set) and reads the deployment's replica status to track cold / warming / ready / failing. Which backends
scale, and through which client, their kind says (``scales``, ``scaler()``: gpu_backends.kinds).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from django.utils import timezone

from .client import BackendError
from .kinds import KINDS, kind_of, scaling_kinds
from .models import GpuBackend
from .providers import Scaler
from .services import mark_catalogue_stale

log = logging.getLogger(__name__)

# A workshop with a start but no end is taken to last this long.
DEFAULT_SESSION = timedelta(hours=8)
# How often the reconciler asks the vendors' APIs (its own sweep runs every few seconds).
SWEEP_INTERVAL = 30.0
_last_sweep = 0.0


def wanted_min_replicas(backend: GpuBackend, now: datetime) -> int:
    if not backend.enabled:
        return 0
    if backend.warm_until is not None and now < backend.warm_until:
        return backend.warm_replicas
    lead = timedelta(minutes=backend.prewarm_minutes)
    sessions = backend.workshops.filter(archived_at__isnull=True, starts_at__isnull=False)
    for starts_at, ends_at in sessions.values_list("starts_at", "ends_at"):
        assert starts_at is not None  # filtered above
        if starts_at - lead <= now < (ends_at or starts_at + DEFAULT_SESSION):
            return backend.warm_replicas
    return 0


def apply_min_replicas(backend: GpuBackend, count: int, client: Scaler) -> None:
    client.set_min_replicas(backend.deployment_name, count)
    GpuBackend.objects.filter(pk=backend.pk).update(applied_min_replicas=count)
    backend.applied_min_replicas = count
    log.info("Backend %s: minimum replicas set to %d", backend.name, count, extra={"backend": backend.name})


def warm_now(backend: GpuBackend, *, hours: float = 1.0) -> None:
    """The admin's "Warm up now": keep ``warm_replicas`` running for ``hours`` (or until a workshop ends)."""
    client = _client_or_fail(backend)
    GpuBackend.objects.filter(pk=backend.pk).update(warm_until=timezone.now() + timedelta(hours=hours))
    apply_min_replicas(backend, max(backend.warm_replicas, 1), client)
    backend.mark(GpuBackend.State.WARMING, "Warming up (asked in the admin)")


def scale_to_zero(backend: GpuBackend) -> None:
    client = _client_or_fail(backend)
    GpuBackend.objects.filter(pk=backend.pk).update(warm_until=None)
    backend.warm_until = None
    apply_min_replicas(backend, 0, client)


def _client_or_fail(backend: GpuBackend) -> Scaler:
    kind = kind_of(backend)
    if not kind.scales:
        raise BackendError(f"{backend.name} is a {backend.get_kind_display()}: it does not scale.", permanent=True)
    client = kind.scaler()
    if client is None:
        raise BackendError(f"Scaling needs {kind.scaler_needs}.", permanent=True)
    return client


def observe(backend: GpuBackend, client: Scaler) -> None:
    """Read the deployment's replicas and record cold / warming / ready / failing from them."""
    status = client.replica_status(backend.deployment_name)
    if status.rolling_out:
        # A new image is being rolled out: its nodes and models may differ. Read them again once it is ready.
        mark_catalogue_stale(backend)
    state = {
        "cold": GpuBackend.State.COLD,
        "warming": GpuBackend.State.WARMING,
        "ready": GpuBackend.State.READY,
        "failing": GpuBackend.State.FAILING,
    }.get(status.state)
    if state is None:
        return
    if backend.mark(state, status.reason if state == GpuBackend.State.FAILING else ""):
        log.info("Backend %s is %s (%s)", backend.name, state, status.reason, extra={"backend": backend.name})


def sweep(now: datetime | None = None) -> None:
    """Apply scheduled warm-ups and scale-downs, and refresh serverless backends' states (the reconciler)."""
    global _last_sweep
    if now is None and time.monotonic() - _last_sweep < SWEEP_INTERVAL:
        return
    clients = {kind: client for kind in scaling_kinds() if (client := KINDS[kind].scaler()) is not None}
    if not clients:
        return
    _last_sweep = time.monotonic()
    now = now or timezone.now()
    for backend in GpuBackend.objects.filter(kind__in=list(clients)):
        client = clients[backend.kind]
        try:
            wanted = wanted_min_replicas(backend, now)
            if wanted != backend.applied_min_replicas:
                apply_min_replicas(backend, wanted, client)
            if backend.enabled:
                observe(backend, client)
        except BackendError as exc:
            log.warning("Scaling %s failed: %s", backend.name, exc, extra={"backend": backend.name})
            # The API's trouble, not necessarily the GPUs'.
            backend.mark(backend.state, f"{kind_of(backend).scaling_api}: {exc}")
