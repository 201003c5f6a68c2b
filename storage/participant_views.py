"""A participant's own outputs: ``/outputs/`` while signed in, ``/take-home/<token>/`` with a personal link.

Both pages list only that seat's outputs, newest first, each viewable and downloadable, and offer them all as
one ZIP. A personal link needs no sign-in, so its pages are never cached or indexed and send no referrer (the
token is in the address). See storage/take_home.py for the links and the retention.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST, require_safe

from jobs.auth import seat_for_user
from workshops.models import Seat
from workshops.services import WorkshopError

from .models import Artifact, OutputLink
from .take_home import link_expiry, take_home_url, usable_link
from .views import artifact_response, zip_response

PRIVATE_HEADERS = {"Cache-Control": "private, no-store", "X-Robots-Tag": "noindex, nofollow"}
# The link's pages carry the token in their address: no referrer ever leaves them. The signed-in page keeps the
# same-origin referrer, because a browser sends "Origin: null" with a form posted from a no-referrer page, and
# Django's CSRF check refuses that (its "Make a personal link" form).
REFERRER = {True: "no-referrer", False: "same-origin"}


def _signed_in_seat(request: HttpRequest) -> Seat | None:
    return seat_for_user(request.user) if request.user.is_authenticated else None


def _link_seat(token: str) -> Seat:
    link = usable_link(token)
    if link is None:
        raise Http404("This take-home link has expired or was revoked. Ask your instructor for a new one.")
    return link.seat


def _outputs(seat: Seat) -> QuerySet[Artifact]:
    return Artifact.objects.filter(job__seat=seat).select_related("job").order_by("-created_at", "-id")


def _private(response: HttpResponseBase, *, via_link: bool) -> HttpResponseBase:
    for name, value in PRIVATE_HEADERS.items():
        response[name] = value
    response["Referrer-Policy"] = REFERRER[via_link]
    return response


def _page(
    request: HttpRequest, seat: Seat, *, base: str, via_link: bool, new_link: str = "", new_link_expires: Any = None
) -> HttpResponse:
    outputs = list(_outputs(seat))
    workshop = seat.workshop
    context = {
        "seat": seat,
        "workshop": workshop,
        "outputs": outputs,
        "total_bytes": sum(a.size for a in outputs),
        "base": base,
        "via_link": via_link,
        "kept_until": workshop.outputs_expire_at,
        "new_link": new_link,
        "new_link_expires": new_link_expires,
        "links": OutputLink.objects.filter(seat=seat, revoked_at=None, expires_at__gt=timezone.now()).count(),
    }
    return _private(render(request, "storage/my_outputs.html", context), via_link=via_link)  # type: ignore[return-value]


def _file(request: HttpRequest, seat: Seat, artifact_id: int, *, via_link: bool) -> HttpResponseBase:
    artifact = get_object_or_404(Artifact, pk=artifact_id, job__seat=seat)
    response = artifact_response(request, artifact, download=request.GET.get("download") == "1")
    return _private(response, via_link=via_link)


def _zip(request: HttpRequest, seat: Seat, *, via_link: bool) -> StreamingHttpResponse:
    response = zip_response(request, _outputs(seat), f"{seat.workshop.slug}-{seat.label}-outputs.zip")
    _private(response, via_link=via_link)
    return response


# --- signed in ------------------------------------------------------------------------------------------


@require_safe
def my_outputs(request: HttpRequest) -> HttpResponseBase:
    seat = _signed_in_seat(request)
    if seat is None:
        return redirect(f"{reverse('login')}?next={reverse('my-outputs')}")
    return _page(request, seat, base=reverse("my-outputs"), via_link=False)


@require_safe
def my_output_file(request: HttpRequest, artifact_id: int) -> HttpResponseBase:
    seat = _signed_in_seat(request)
    if seat is None:
        raise Http404("Sign in to your seat first.")
    return _file(request, seat, artifact_id, via_link=False)


@require_safe
def my_outputs_zip(request: HttpRequest) -> HttpResponseBase:
    seat = _signed_in_seat(request)
    if seat is None:
        raise Http404("Sign in to your seat first.")
    return _zip(request, seat, via_link=False)


@require_POST
def my_take_home_link(request: HttpRequest) -> HttpResponseBase:
    """The participant makes their own personal link, shown once on the page that answers."""
    seat = _signed_in_seat(request)
    if seat is None:
        return redirect("login")
    try:
        expires_at = link_expiry(seat.workshop)
    except WorkshopError as exc:
        raise Http404(str(exc)) from exc
    raw = OutputLink.issue(seat, expires_at, created_by="participant")
    url = take_home_url(raw)
    return _page(request, seat, base=reverse("my-outputs"), via_link=False, new_link=url, new_link_expires=expires_at)


# --- with a personal link -------------------------------------------------------------------------------


@require_safe
def take_home(request: HttpRequest, token: str) -> HttpResponseBase:
    seat = _link_seat(token)
    return _page(request, seat, base=reverse("take-home", args=[token]), via_link=True)


@require_safe
def take_home_file(request: HttpRequest, token: str, artifact_id: int) -> HttpResponseBase:
    return _file(request, _link_seat(token), artifact_id, via_link=True)


@require_safe
def take_home_zip(request: HttpRequest, token: str) -> HttpResponseBase:
    return _zip(request, _link_seat(token), via_link=True)
