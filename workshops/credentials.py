"""The printable credential sheet: one card per seat with its username, password and a QR code of its
one-time join link. Passwords exist only when they are issued, so the sheet is written at that moment."""

from __future__ import annotations

import base64

import segno
from django.conf import settings
from django.template.loader import render_to_string
from django.utils.safestring import mark_safe

from .models import Workshop
from .services import SeatCredentials


def qr_svg(url: str) -> str:
    """An inline SVG QR code (medium error correction: a card survives a crease or a thumb)."""
    return segno.make(url, error="m").svg_inline(scale=3, border=2)


def credential_sheet(workshop: Workshop, credentials: list[SeatCredentials], *, pdf: bytes | None = None) -> str:
    """The sheet as HTML; with ``pdf`` (the same cards from credentials_pdf) it carries a "Download as PDF" link
    holding the whole file as a data: URL, since the passwords exist only in this one response."""
    # The SVG is segno's own output for a URL we built; safe to embed as markup.
    cards = [{"credentials": c, "qr": mark_safe(qr_svg(c.join_url))} for c in credentials]
    pdf_url = f"data:application/pdf;base64,{base64.b64encode(pdf).decode()}" if pdf else ""
    return render_to_string(
        "workshops/credential_sheet.html",
        {"workshop": workshop, "cards": cards, "sign_in_url": f"{settings.PUBLIC_URL}/login/", "pdf_url": pdf_url},
    )
