"""One Redis client per process for the small best-effort counters (metrics, sign-in limits).

Short timeouts: these callers treat Redis trouble as "no answer" and go on, so they must not hang.
"""

from __future__ import annotations

import functools

import redis
from django.conf import settings


@functools.cache
def counters() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
