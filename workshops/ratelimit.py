"""Sign-in attempt limits, counted in Redis so every web process shares them.

Failed attempts are counted per client address and per username in a fixed window; either counter over the
limit refuses further attempts until the window ends. A guessing script is slowed to a crawl while a
participant who mistypes a few times is never locked out for long.
"""

from __future__ import annotations

import logging

import redis
from django.conf import settings
from django.http import HttpRequest

from comfyume.redis_client import counters

log = logging.getLogger(__name__)


def client_address(request: HttpRequest) -> str:
    """The browser's address: nginx's X-Real-IP when behind our proxy, else the socket's peer."""
    if settings.SEAT_FRONTENDS["ROUTING"] == "path":
        forwarded = request.headers.get("X-Real-IP", "").strip()
        if forwarded:
            return forwarded
    return request.META.get("REMOTE_ADDR", "") or "unknown"


def _keys(address: str, username: str) -> list[str]:
    prefix = f"{settings.REDIS_PREFIX}:login"
    keys = [f"{prefix}:addr:{address}"]
    if username:
        keys.append(f"{prefix}:user:{username.strip().lower()[:150]}")
    return keys


def retry_after(address: str, username: str) -> int:
    """Seconds until another attempt is allowed (0: go ahead). Redis trouble never locks anyone out."""
    try:
        pipe = counters().pipeline(transaction=False)
        keys = _keys(address, username)
        for key in keys:
            pipe.get(key)
            pipe.ttl(key)
        values = pipe.execute()
    except redis.RedisError as exc:
        log.warning("Sign-in limiter unavailable: %s", exc)
        return 0
    wait = 0
    for count, ttl in zip(values[::2], values[1::2], strict=True):
        if count is not None and int(count) >= settings.LOGIN_RATE_LIMIT:
            wait = max(wait, ttl if ttl and ttl > 0 else settings.LOGIN_RATE_WINDOW)
    return wait


def record_failure(address: str, username: str) -> None:
    try:
        pipe = counters().pipeline(transaction=False)
        for key in _keys(address, username):
            pipe.incr(key)
            pipe.expire(key, settings.LOGIN_RATE_WINDOW, nx=True)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("Sign-in limiter unavailable: %s", exc)


def clear(address: str, username: str) -> None:
    """A successful sign-in forgets that username's failures (the address keeps its count)."""
    try:
        if username:
            counters().delete(_keys(address, username)[1])
    except redis.RedisError as exc:
        log.warning("Sign-in limiter unavailable: %s", exc)
