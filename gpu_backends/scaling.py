"""Warm serverless backends before a workshop and scale them to zero after it, through their vendor's API.

The wanted minimum replica count of a backend is its ``warm_replicas`` while any workshop using it is on
(from ``prewarm_minutes`` before its start to its end), or while the admin's "Warm up now" holds
(``warm_until``); zero otherwise. "Scale to zero now" holds for the sessions already under way (a day that
ends early is not warmed again by its own schedule); a later session's pre-warm still applies.

Every sweep reads each deployment's replica status from the vendor, switched-off backends included, and sets
the minimum again wherever the vendor's differs from the wanted one: a minimum raised by hand in Verda's
console, or a write that never arrived, is put right within a sweep, not left running and billed. Replicas
running while nothing wants them (a "Test connection" the day before, a job that ended) are named in the
backend's state with when Verda stops them (its scale-down delay). Which backends scale, and through which
client, their kind says (``scales``, ``scaler()``: gpu_backends.kinds).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from django.utils import timezone

from .client import BackendError
from .kinds import KINDS, kind_of, scaling_kinds
from .models import GpuBackend
from .providers import ReplicaState, Scaler
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
        if backend.held_cold_at is not None and starts_at - lead <= backend.held_cold_at:
            continue  # under way when the instructor scaled it to zero: that holds
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
    GpuBackend.objects.filter(pk=backend.pk).update(
        warm_until=timezone.now() + timedelta(hours=hours), held_cold_at=None
    )
    apply_min_replicas(backend, max(backend.warm_replicas, 1), client)
    backend.mark(GpuBackend.State.WARMING, "Warming up (asked in the admin)")


def scale_to_zero(backend: GpuBackend) -> ReplicaState:
    """Minimum replicas 0 now, held for the sessions under way; returns what the vendor reports afterwards (its
    own count of the replicas still running, which stop after its scale-down delay)."""
    client = _client_or_fail(backend)
    now = timezone.now()
    GpuBackend.objects.filter(pk=backend.pk).update(warm_until=None, held_cold_at=now)
    backend.warm_until, backend.held_cold_at = None, now
    apply_min_replicas(backend, 0, client)
    return client.replica_status(backend.deployment_name)


def confirmation(status: ReplicaState) -> str:
    """What the vendor says after a scale-down, for the instructor: its minimum and its running replicas."""
    running = status.running + status.starting
    if status.min_replicas == 0 and running == 0:
        return "Verda confirms: minimum 0, no replica running."
    if status.min_replicas == 0:
        return (
            f"Verda confirms minimum 0; {running} replica(s) still running stop after the deployment's scale-down "
            f"delay ({status.scale_down_delay} s) once idle."
        )
    return f"Verda still reports a minimum of {status.min_replicas}: the next sweep sets it again."


def _client_or_fail(backend: GpuBackend) -> Scaler:
    kind = kind_of(backend)
    if not kind.scales:
        raise BackendError(f"{backend.name} is a {backend.get_kind_display()}: it does not scale.", permanent=True)
    client = kind.scaler()
    if client is None:
        raise BackendError(f"Scaling needs {kind.scaler_needs}.", permanent=True)
    return client


def idle_replicas(backend: GpuBackend, status: ReplicaState, wanted: int) -> str:
    """Why replicas run that nothing wants (none wanted warm, no job of the hub on them), or ""."""
    from jobs.models import Job

    running = status.running + status.starting
    if wanted or not running or Job.objects.filter(backend=backend, status__in=Job.ACTIVE).exists():
        return ""
    return (
        f"{running} replica(s) running with no job and none wanted warm (a test connection, or the last job): "
        f"Verda stops them {status.scale_down_delay} s after their last request (the deployment's scale-down delay)"
    )


def observe(backend: GpuBackend, status: ReplicaState, *, idle: str = "") -> None:
    """Record cold / warming / ready / failing from the deployment's replica status."""
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
    reason = status.reason if state == GpuBackend.State.FAILING else idle
    if backend.mark(state, reason):
        log.info("Backend %s is %s (%s)", backend.name, state, reason or status.reason, extra={"backend": backend.name})


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
            # The vendor's own minimum, not what we last wrote: a change made in its console is put right too.
            status = client.replica_status(backend.deployment_name)
            if status.min_replicas != wanted:
                if status.min_replicas != backend.applied_min_replicas:  # not ours: changed in the console, or lost
                    log.warning(
                        "Backend %s: Verda's minimum is %d, not the %s last set; the schedule wants %d: setting it",
                        backend.name, status.min_replicas, backend.applied_min_replicas, wanted,
                        extra={"backend": backend.name},
                    )  # fmt: skip
                apply_min_replicas(backend, wanted, client)
                status = client.replica_status(backend.deployment_name)
            elif backend.applied_min_replicas != wanted:
                GpuBackend.objects.filter(pk=backend.pk).update(applied_min_replicas=wanted)
            if backend.enabled:
                observe(backend, status, idle=idle_replicas(backend, status, wanted))
        except BackendError as exc:
            log.warning("Scaling %s failed: %s", backend.name, exc, extra={"backend": backend.name})
            # The API's trouble, not necessarily the GPUs'.
            backend.mark(backend.state, f"{kind_of(backend).scaling_api}: {exc}")
