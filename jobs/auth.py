"""Who is asking: a seat, identified by its frontend's token or by its participant's session.

Identity never comes from a URL or a body. Every hub endpoint and socket resolves the seat here, so
isolation between seats is enforced in one place.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.security.websocket import AllowedHostsOriginValidator
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware

from workshops.models import Seat, hash_token


class SeatRequest(HttpRequest):
    """A request that ``seat_required`` has resolved to a seat."""

    seat: Seat


def _seat_where(**lookup: Any) -> Seat | None:
    # get(), not filter().first(): first() would order by Seat's default ordering, through the workshop's.
    try:
        return Seat.objects.select_related("workshop").get(**lookup)
    except Seat.DoesNotExist:
        return None


def seat_from_token(raw: str) -> Seat | None:
    return _seat_where(token_hash=hash_token(raw)) if raw else None


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def seat_for_user(user: Any) -> Seat | None:
    if not getattr(user, "is_authenticated", False):
        return None
    return _seat_where(participant=user)


def _csrf_failure(request: HttpRequest) -> HttpResponse | None:
    checker = CsrfViewMiddleware(lambda r: HttpResponse())
    checker.process_request(request)
    return checker.process_view(request, lambda r: HttpResponse(), (), {})


def api_error(status: int, type_: str, message: str) -> JsonResponse:
    return JsonResponse(
        {"error": {"type": type_, "message": message, "details": "", "extra_info": {}}, "node_errors": {}},
        status=status,
    )


def seat_required(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Resolve ``request.seat`` from ``Authorization: Bearer <seat token>`` or the session.

    Token requests are not subject to CSRF (no cookie is involved); session requests that change
    something are, like any Django form.
    """

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        token = _bearer(request.headers.get("Authorization", ""))
        if token is not None:
            seat = seat_from_token(token)
            if seat is None:
                return api_error(401, "invalid_token", "The seat token is not valid.")
        else:
            seat = seat_for_user(request.user)
            if seat is None:
                if getattr(request.user, "is_authenticated", False):
                    return api_error(403, "no_seat", "This account has no seat in a workshop.")
                return api_error(401, "not_signed_in", "Sign in to your seat first.")
            if request.method not in ("GET", "HEAD", "OPTIONS") and _csrf_failure(request) is not None:
                return api_error(403, "csrf_failed", "The request lacks a valid CSRF token.")
        request.seat = seat  # type: ignore[attr-defined]  # see SeatRequest
        return view(request, *args, **kwargs)

    wrapper.csrf_exempt = True  # type: ignore[attr-defined]
    return wrapper


class SeatAuthMiddleware:
    """Channels middleware: ``scope['seat']`` from a Bearer token header, else from the session user."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        headers = dict(scope.get("headers") or [])
        token = _bearer(headers.get(b"authorization", b"").decode("latin-1"))
        if token is not None:
            scope["seat"] = await database_sync_to_async(seat_from_token)(token)
        else:
            scope["seat"] = await database_sync_to_async(seat_for_user)(scope.get("user"))
        return await self.app(scope, receive, send)


class BrowserOriginValidator:
    """Cookie-authenticated sockets must come from our own origin (no cross-site socket hijacking);
    token-authenticated ones (a seat frontend's server, no cookie involved) carry no Origin at all."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.browser_app = AllowedHostsOriginValidator(app)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        headers = dict(scope.get("headers") or [])
        if _bearer(headers.get(b"authorization", b"").decode("latin-1")) is not None:
            return await self.app(scope, receive, send)
        return await self.browser_app(scope, receive, send)


def SeatAuthStack(app: Any) -> Any:  # noqa: N802 - named like Channels' AuthMiddlewareStack
    return BrowserOriginValidator(AuthMiddlewareStack(SeatAuthMiddleware(app)))
