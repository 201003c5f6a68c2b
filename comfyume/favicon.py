"""``/favicon.ico``: browsers ask every site for it whatever a page links, so without one each page a
participant opened left a ``Not Found: /favicon.ico`` line in the log. The seat frontend serves the same icon
(``workshops/seat_frontend/static/favicon.ico``) for seats on their own port."""

from __future__ import annotations

from functools import cache

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

ICON = settings.BASE_DIR / "static" / "comfyume" / "favicon.ico"


@cache
def _icon() -> bytes:
    return ICON.read_bytes()


@require_safe
def favicon(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(_icon(), content_type="image/x-icon")
    response["Cache-Control"] = "public, max-age=86400"
    return response
