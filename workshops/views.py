"""Participants' pages: sign in (password or one-time join link), their seat's page, and the seat access
check that nginx and seat frontends ask before serving a seat."""

from __future__ import annotations

import base64
import binascii
import functools
import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate, login, logout
from django.contrib.auth.views import LoginView
from django.core.exceptions import NON_FIELD_ERRORS
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.views.decorators.http import require_GET, require_POST

from jobs.auth import api_error, seat_for_user

from . import frontends, ratelimit
from .models import JoinLink, Seat, SeatFrontend, hash_token

DEMO_WORKFLOW_PATH = Path(__file__).resolve().parent / "data" / "tiny_workflow_api.json"


@functools.cache
def demo_workflow() -> dict:
    """The test workflow the seat page can queue, read once per process."""
    return json.loads(DEMO_WORKFLOW_PATH.read_text())


@method_decorator(ratelimit.answers_429_when_limited, name="post")
class SeatLoginView(LoginView):
    """Username + password; failed attempts are limited per address and per username (workshops.ratelimit)."""

    template_name = "workshops/login.html"
    form_class = ratelimit.SignInForm
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        form = context.get("form")
        if form is not None and form.has_error(NON_FIELD_ERRORS, "rate_limited"):
            context["rate_limited"] = form.non_field_errors()[0]
        return context


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return redirect("login")


def home(request: HttpRequest) -> HttpResponse:
    """Staff go to the admin; a participant goes to their ComfyUI, which their arrival starts (their seat page
    says how far it is while it starts, and forwards them when it answers)."""
    if not request.user.is_authenticated:
        return redirect("login")
    seat = seat_for_user(request.user)
    if seat is None:
        if request.user.is_staff:
            return redirect("admin:index")
        return render(request, "workshops/no_seat.html", status=403)
    progress = frontends.progress(seat, frontends.start_for_participant(seat), request)
    if progress["url"] and "seat" not in request.GET:
        return redirect(progress["url"])
    return seat_page(request, seat, progress=progress)


def seat_page(request: HttpRequest, seat: Seat, *, progress: dict[str, Any]) -> HttpResponse:
    """The hub's page for a seat: its ComfyUI's progress (forwarding there once it answers, unless the
    participant asked for this page with ``?seat``), their jobs live, and a test workflow to queue."""
    context = {
        "seat": seat,
        "workshop": seat.workshop,
        "demo_workflow": demo_workflow(),
        "comfyui_url": progress["url"],
        "progress": progress,
        "forward": "seat" not in request.GET,
    }
    return render(request, "workshops/seat.html", context)


@require_GET
def seat_comfyui(request: HttpRequest) -> JsonResponse:
    """Where the participant's ComfyUI is on its way up (``frontends.progress``), asked by the waiting page on
    load, on every (re)connect of its socket and every few seconds, so it never depends on an event it missed.
    Asking does not start anything: arriving at the home page does."""
    seat = seat_for_user(request.user)
    if seat is None:
        if request.user.is_authenticated:
            return api_error(403, "no_seat", "This account has no seat in a workshop.")
        return api_error(401, "not_signed_in", "Sign in to your seat first.")
    frontend = SeatFrontend.objects.filter(seat=seat).first()
    response = JsonResponse(frontends.progress(seat, frontend, request))
    response["Cache-Control"] = "no-store"
    return response


def join(request: HttpRequest, token: str) -> HttpResponse:
    """Follow a one-time join link: sign in as the seat's participant, and the link is spent."""
    with transaction.atomic():
        # Only the link's row is locked: PostgreSQL refuses FOR UPDATE on the nullable side of the outer join
        # to the participant (every join link answered 500 there).
        link = (
            JoinLink.objects.select_for_update(of=("self",))
            .select_related("seat__participant")
            .filter(token_hash=hash_token(token))
            .first()
        )
        if link is None or not link.is_usable() or link.seat.participant is None:
            return render(request, "workshops/join_invalid.html", {"link": link}, status=410 if link else 404)
        link.used_at = timezone.now()
        link.save(update_fields=["used_at"])
        login(request, link.seat.participant, backend="django.contrib.auth.backends.ModelBackend")
    return redirect("home")


# --- Seat access: nginx's auth_request and every seat frontend ask here --------------------------


def _basic_user(request: HttpRequest) -> Any:
    """The user of an ``Authorization: Basic`` header (when enabled), rate limited like the sign-in form."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic" or not settings.SEAT_HTTP_BASIC:
        return None
    try:
        username, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    # Counted and limited like every password sign-in (workshops.ratelimit): over the limit, no user.
    return authenticate(request, username=username, password=password)


def _access_answer(status: int, reason: str, user: Any = None) -> HttpResponse:
    response = HttpResponse(status=status)
    response["X-Comfyume-Reason"] = reason
    if user is not None:
        response["X-Comfyume-User"] = user.get_username()
    response["Cache-Control"] = "no-store"
    return response


def seat_access(request: HttpRequest) -> HttpResponse:
    """May this browser use this seat? 204 yes, 401 not signed in, 403 someone else's seat, 404 no such seat.

    The seat is named by the asking seat frontend's own token (``X-Comfyume-Seat-Token``) or, for nginx, by
    the ``/userNNN/`` prefix of ``X-Original-URI`` within the workshop in ``X-Comfyume-Workshop``. The
    person comes only from the browser's session cookie (or HTTP Basic, when enabled) — never from a URL.
    """
    seat = frontends.seat_for_access_check(
        token=request.headers.get("X-Comfyume-Seat-Token", ""),
        original_uri=request.headers.get("X-Original-URI", ""),
        workshop_slug=request.headers.get("X-Comfyume-Workshop", ""),
    )
    if seat is None:
        return _access_answer(404, "no-such-seat")
    user = request.user if request.user.is_authenticated else _basic_user(request)
    if user is None:
        return _access_answer(401, "sign-in")
    if user.is_staff or seat.participant_id == user.pk:
        return _access_answer(204, "ok", user)
    return _access_answer(403, "other-seat", user)
