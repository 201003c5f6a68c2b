"""Sign-in attempt limits, counted in Redis so every web process shares them.

Failed attempts are counted per username and per client address in a fixed window; either counter over its
limit refuses further attempts until the window ends. A guessing script is slowed to a crawl while a
participant who mistypes a few times is never locked out for long. The address's limit is the higher one: a
workshop room signs in from one address behind its NAT, and thirty people typing passwords off cards make
typos that must not lock the room out.

The limit holds for every way of signing in with a password, because it sits where they all meet: Django's
``authenticate()``. :class:`SignInLimitBackend` (first in ``AUTHENTICATION_BACKENDS``) refuses while a
counter is over its limit, and the ``user_login_failed`` / ``user_logged_in`` signals count and forget. The
sign-in pages (the participant's and the admin's) only turn a refusal into a 429 that says how long to wait
(:class:`SignInForm`, :func:`answers_429_when_limited`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.exceptions import PermissionDenied, ValidationError
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponseBase
from django.template.defaultfilters import pluralize

from comfyume.redis_client import counters

log = logging.getLogger(__name__)

# INCR, then give the counter its window if it has none. One atomic script, because `EXPIRE … NX` needs
# Redis 7 (the embedded server is 6.2, where it fails and left every counter without an expiry: a lockout
# that never ended), and INCR followed by a separate EXPIRE could leave a counter without one between them.
_COUNT_FAILURE = """
local n = redis.call('INCR', KEYS[1])
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""


def client_address(request: HttpRequest) -> str:
    """The browser's address: nginx's X-Real-IP when behind our proxy, else the socket's peer."""
    if settings.SEAT_FRONTENDS["ROUTING"] == "path":
        forwarded = request.headers.get("X-Real-IP", "").strip()
        if forwarded:
            return forwarded
    return request.META.get("REMOTE_ADDR", "") or "unknown"


def _counters(address: str, username: str) -> list[tuple[str, int]]:
    """Each counter's key and its limit: the address's, and the username's when there is one."""
    prefix = f"{settings.REDIS_PREFIX}:login"
    keys = [(f"{prefix}:addr:{address}", settings.LOGIN_RATE_LIMIT_PER_ADDRESS)]
    if username:
        keys.append((f"{prefix}:user:{username.strip().lower()[:150]}", settings.LOGIN_RATE_LIMIT))
    return keys


def retry_after(address: str, username: str) -> int:
    """Seconds until another attempt is allowed (0: go ahead). Redis trouble never locks anyone out."""
    counted = _counters(address, username)
    try:
        pipe = counters().pipeline(transaction=False)
        for key, _ in counted:
            pipe.get(key)
            pipe.ttl(key)
        values = pipe.execute()
        wait = 0
        for (key, limit), count, ttl in zip(counted, values[::2], values[1::2], strict=True):
            if count is None or int(count) < limit:
                continue
            if ttl is None or ttl < 0:
                # A counter left without an expiry (by the version before the script above) would lock out
                # for good: give it its window now.
                counters().expire(key, settings.LOGIN_RATE_WINDOW)
                ttl = settings.LOGIN_RATE_WINDOW
            wait = max(wait, ttl)
    except redis.RedisError as exc:
        log.warning("Sign-in limiter unavailable: %s", exc)
        return 0
    return wait


def record_failure(address: str, username: str) -> None:
    try:
        script = counters().register_script(_COUNT_FAILURE)
        for key, _ in _counters(address, username):
            script(keys=[key], args=[settings.LOGIN_RATE_WINDOW])
    except redis.RedisError as exc:
        log.warning("Sign-in limiter unavailable: %s", exc)


def clear(address: str, username: str) -> None:
    """A successful sign-in forgets that username's failures (the address keeps its count)."""
    try:
        if username:
            counters().delete(_counters(address, username)[1][0])
    except redis.RedisError as exc:
        log.warning("Sign-in limiter unavailable: %s", exc)


class SignInLimitBackend(ModelBackend):
    """First of the authentication backends: while the address or the username is over its limit, no
    backend after it is asked, so even the right password waits out the window. It never signs anyone in
    itself (the ModelBackend after it checks the password); it finds a session's user as ModelBackend does,
    so a session that names it (``login()`` without a backend picks the first) still works."""

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> None:
        if request is not None and retry_after(client_address(request), username or ""):
            raise PermissionDenied("Too many sign-in attempts.")
        return None


@receiver(user_login_failed, dispatch_uid="comfyume-sign-in-failed")
def _count_failure(sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **_: Any) -> None:
    if request is not None:
        record_failure(client_address(request), str(credentials.get("username") or ""))


@receiver(user_logged_in, dispatch_uid="comfyume-signed-in")
def _forget_failures(sender: Any, request: HttpRequest | None, user: Any, **_: Any) -> None:
    if request is not None:
        clear(client_address(request), user.get_username())


class SignInForm(AuthenticationForm):
    """The sign-in form, refusing up front (code ``rate_limited``, with how long to wait) while over the limit."""

    def clean(self) -> dict[str, Any]:
        wait = retry_after(client_address(self.request), self.data.get("username", "")) if self.request else 0
        if wait:
            minutes = wait_minutes(wait)
            raise ValidationError(
                f"Too many sign-in attempts. Try again in {minutes} minute{pluralize(minutes)}.", code="rate_limited"
            )
        return super().clean()


class AdminSignInForm(SignInForm, AdminAuthenticationForm):
    """The admin's sign-in form with the same limit."""


def wait_minutes(wait: int) -> int:
    return max(1, -(-wait // 60))


def answers_429_when_limited(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """A sign-in view whose POST arrives over the limit answers 429 with ``Retry-After`` (its form, built on
    :class:`SignInForm`, says how long to wait)."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        wait = retry_after(client_address(request), request.POST.get("username", "")) if request.method == "POST" else 0
        response = view(request, *args, **kwargs)
        if wait and response.status_code == 200:
            response.status_code = 429
            response["Retry-After"] = str(wait)
        return response

    return wrapped
