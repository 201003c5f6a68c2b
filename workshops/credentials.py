"""The printable credential sheet: one card per seat with its username, password and a QR code of its
one-time join link. Passwords exist only when they are issued, so the sheet is written at that moment."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import segno
from django.conf import settings
from django.template.loader import render_to_string
from django.utils.safestring import mark_safe

from .credentials_pdf import credential_pdf
from .models import Workshop
from .services import SeatCredentials, credentials_as_dicts


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


def print_credentials(out: Any, credentials: list[SeatCredentials]) -> None:
    """One line per seat (username, password, join link) on a command's output, when no file was asked for."""
    for row in credentials_as_dicts(credentials):
        out.write(f"  {row['username']}  {row['password']}  {row['join_url']}")


class CredentialFiles:
    """Where a command writes the cards it issues: JSON, a printable HTML sheet and/or an A4 PDF.

    The passwords exist only now, so the files are written at once, readable by their owner only, and an
    existing file is never overwritten (:meth:`refuse_existing` is checked before anything is issued).
    """

    def __init__(self, *, json_path: Path | None, html_path: Path | None, pdf_path: Path | None) -> None:
        self.json_path, self.html_path, self.pdf_path = json_path, html_path, pdf_path

    def any(self) -> bool:
        return any((self.json_path, self.html_path, self.pdf_path))

    def refuse_existing(self) -> str | None:
        """Why the files cannot be written (one exists already), or None."""
        for target in (self.json_path, self.html_path, self.pdf_path):
            if target and target.exists():
                return f"{target} exists already; refusing to overwrite credentials."
        return None

    def write(self, workshop: Workshop, credentials: list[SeatCredentials]) -> list[str]:
        """Write every file asked for; one line per file written, for the command's output."""
        written = []
        if self.html_path:
            self._write(self.html_path, credential_sheet(workshop, credentials).encode())
            written.append(f"Printable credential cards: {self.html_path}")
        if self.pdf_path:
            self._write(self.pdf_path, credential_pdf(workshop, credentials))
            written.append(f"Credential cards as PDF: {self.pdf_path}")
        if self.json_path:
            rows = credentials_as_dicts(credentials)
            self._write(self.json_path, json.dumps({"workshop": workshop.slug, "seats": rows}, indent=2).encode())
            written.append(f"Usernames, passwords and join links: {self.json_path}")
        return written

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_bytes(data)
