"""Where one job's time goes: a per-step trace, on when ``COMFYUME_TRACE_JOBS`` is set.

Each process that touches a job (the web process that queues and claims it, the worker that runs it) notes the
wall-clock time of each step in memory (``mark``) and writes its steps to Redis in one round trip when its part
is over (``save``), so tracing adds no round trip between two steps of a job. ``read`` gathers every process's
steps of one job in time order; ``python -m benchmarks realcomfy`` prints them split step by step, and an
operator can read one slow job's with ``manage.py trace_job``. Off (the default), ``mark`` returns at once.

The steps, in the order a job takes them (``STEPS``), and who notes them:

- web: ``submit`` (the request arrived), ``queued`` (its row committed), ``claimed`` (a slot taken, its dispatch
  handed to RQ);
- worker: ``dispatch`` (an RQ worker took the task), ``run`` (the job handed to its backend's provider: inputs
  uploaded, event socket, ``POST /prompt``), ``accepted`` (the backend took the prompt), ``execution_start``
  (its message arrived), ``output_fetch`` / ``output_stored`` (an output file's copy began, ended), ``executed``
  (that node's message relayed), ``execution_success`` (its message arrived), ``done`` (the backend's
  ``executing {node: null}`` arrived), ``relayed`` (that message handed to the channel layer), ``recorded`` (the
  outcome in the job's row).

A job is named by its id (``Job.pk``). A step noted twice (two outputs, two attempts) keeps each time.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.conf import settings

from comfyume.redis_client import counters

log = logging.getLogger(__name__)

STEPS = (
    "submit",
    "queued",
    "claimed",
    "dispatch",
    "run",
    "accepted",
    "execution_start",
    "output_fetch",
    "output_stored",
    "executed",
    "execution_success",
    "done",
    "relayed",
    "recorded",
)
# A trace is kept this long in Redis: long enough to read after a benchmark or a slow job, short enough to clean up.
TTL_SECONDS = 3600

_pending: dict[str, list[tuple[str, float]]] = {}
_lock = threading.Lock()


def enabled() -> bool:
    return bool(settings.COMFYUME.get("TRACE_JOBS"))


def _key(job_id: str) -> str:
    return f"{settings.REDIS_PREFIX}:trace:{job_id}"


def mark(job_id: Any, step: str, at: float | None = None) -> None:
    """Note that job ``job_id`` reached ``step`` now (or at ``at``, a ``time.time()``)."""
    if not enabled():
        return
    with _lock:
        _pending.setdefault(str(job_id), []).append((step, time.time() if at is None else at))


def save(job_id: Any) -> None:
    """Write this process's steps of the job to Redis (one round trip); best effort, like the metrics."""
    if not enabled():
        return
    with _lock:
        steps = _pending.pop(str(job_id), [])
    if not steps:
        return
    try:
        pipe = counters().pipeline(transaction=False)
        key = _key(str(job_id))
        pipe.rpush(key, *(f"{step} {at:.6f}" for step, at in steps))
        pipe.expire(key, TTL_SECONDS)
        pipe.execute()
    except Exception as exc:  # a trace must never fail a job
        log.warning("Could not save the trace of %s: %s", job_id, exc)


def read(job_id: Any) -> list[tuple[str, float]]:
    """Every step noted for the job, in time order: ``[(step, time.time()), ...]``."""
    raw = counters().lrange(_key(str(job_id)), 0, -1)
    steps = []
    for item in raw:
        step, _, at = (item.decode() if isinstance(item, bytes) else str(item)).partition(" ")
        steps.append((step, float(at)))
    return sorted(steps, key=lambda pair: pair[1])
