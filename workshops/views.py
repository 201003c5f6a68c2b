"""Participants' pages: sign in (password or one-time join link) and their seat's page."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from django.contrib.auth import login, logout
from django.contrib.auth.views import LoginView
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from jobs.auth import seat_for_user

from .models import JoinLink, hash_token

DEMO_WORKFLOW_PATH = Path(__file__).resolve().parent / "data" / "tiny_workflow_api.json"


@functools.cache
def demo_workflow() -> dict:
    """The test workflow the seat page can queue, read once per process."""
    return json.loads(DEMO_WORKFLOW_PATH.read_text())


class SeatLoginView(LoginView):
    template_name = "workshops/login.html"
    redirect_authenticated_user = True


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return redirect("login")


def home(request: HttpRequest) -> HttpResponse:
    """Staff go to the admin; a participant sees their seat; anyone else signs in."""
    if not request.user.is_authenticated:
        return redirect("login")
    seat = seat_for_user(request.user)
    if seat is None:
        if request.user.is_staff:
            return redirect("admin:index")
        return render(request, "workshops/no_seat.html", status=403)
    return render(
        request,
        "workshops/seat.html",
        {"seat": seat, "workshop": seat.workshop, "demo_workflow": demo_workflow()},
    )


def join(request: HttpRequest, token: str) -> HttpResponse:
    """Follow a one-time join link: sign in as the seat's participant, and the link is spent."""
    with transaction.atomic():
        link = (
            JoinLink.objects.select_for_update()
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
