"""The credential sheet as a PDF: A4 pages of cut-out cards, two across and four down, one per seat, with the
same content as the printable HTML sheet (workshops/credentials.py). Like the HTML it is rendered at the moment
the passwords are issued and handed over at once; the platform never stores it."""

from __future__ import annotations

import io
import math
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import segno
from django.conf import settings
from django.db.models import Max
from django.utils import timezone
from reportlab.lib.colors import Color, black
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.lib.utils import simpleSplit
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas

from .models import JoinLink, Workshop
from .services import SeatCredentials

# Debian's fonts-dejavu-core: DejaVu Sans covers Latin Extended (Zoë Łukasik), and DejaVu Sans Mono has a
# dotted zero and a serifed 1, so 0/O and 1/l differ on the card.
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
_DEJAVU = {"regular": "DejaVuSans", "bold": "DejaVuSans-Bold", "mono": "DejaVuSansMono"}

COLUMNS, ROWS = 2, 4
CARDS_PER_PAGE = COLUMNS * ROWS
PAGE_WIDTH, PAGE_HEIGHT = A4
MARGIN_X, MARGIN_TOP, MARGIN_BOTTOM = 10 * mm, 12 * mm, 16 * mm
CARD_WIDTH = (PAGE_WIDTH - 2 * MARGIN_X) / COLUMNS
CARD_HEIGHT = (PAGE_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM) / ROWS
PADDING = 5 * mm
QR_SIZE = 32 * mm  # a phone reads 0.8 mm modules from a hand's length away
QR_BORDER = 2  # modules of quiet zone, as on the HTML card; the card's padding adds more white around it
GREY = Color(0.33, 0.33, 0.33)
GUIDE = Color(0.55, 0.55, 0.55)


@dataclass(frozen=True)
class _Fonts:
    regular: str
    bold: str
    mono: str


def credential_pdf(workshop: Workshop, credentials: list[SeatCredentials]) -> bytes:
    """A4 pages of cards sorted by seat: name (or seat), seat, workshop, username, password, sign-in address and a
    vector QR code of the seat's one-time join link. Page numbers and dashed cut lines on every page."""
    fonts = _fonts()
    cards = sorted(credentials, key=lambda c: c.seat)
    pages = max(1, math.ceil(len(cards) / CARDS_PER_PAGE))
    expires = _join_links_expire(workshop)
    buffer = io.BytesIO()
    canvas = Canvas(buffer, pagesize=A4, pageCompression=1)
    canvas.setTitle(f"Credentials · {workshop.title}")
    canvas.setSubject("Seat credentials: one card per participant")
    canvas.setCreator("ComfyuME")
    for page in range(pages):
        _cut_guides(canvas)
        for slot, card in enumerate(cards[page * CARDS_PER_PAGE : (page + 1) * CARDS_PER_PAGE]):
            column, row = slot % COLUMNS, slot // COLUMNS
            x = MARGIN_X + column * CARD_WIDTH
            y = PAGE_HEIGHT - MARGIN_TOP - (row + 1) * CARD_HEIGHT
            _card(canvas, fonts, workshop, card, x, y, expires)
        _footer(canvas, fonts, workshop, page + 1, pages)
        canvas.showPage()
    canvas.save()
    return buffer.getvalue()


def _card(
    canvas: Canvas,
    fonts: _Fonts,
    workshop: Workshop,
    card: SeatCredentials,
    x: float,
    y: float,
    expires: datetime | None,
) -> None:
    left, top = x + PADDING, y + CARD_HEIGHT - PADDING
    inner_width = CARD_WIDTH - 2 * PADDING
    _qr(canvas, card, left, top - QR_SIZE)

    text_left = left + QR_SIZE + 3 * mm
    text_width = x + CARD_WIDTH - PADDING - text_left
    baseline = top - 4.5 * mm
    for line in _wrapped(card.name or f"Seat {card.seat}", fonts.bold, 13, text_width, max_lines=2):
        _line(canvas, fonts.bold, 13, line, text_left, baseline, text_width, truncate=True)
        baseline -= 5.5 * mm
    canvas.setFillColor(GREY)
    if card.name:
        _line(canvas, fonts.regular, 10, f"Seat {card.seat}", text_left, baseline, text_width)
        baseline -= 5 * mm
    for line in _wrapped(workshop.title, fonts.regular, 9, text_width, max_lines=2):
        _line(canvas, fonts.regular, 9, line, text_left, baseline, text_width, truncate=True)
        baseline -= 4 * mm

    label_width = 19 * mm
    baseline = top - QR_SIZE - 6 * mm
    for label, value in (("Username", card.username), ("Password", card.password)):
        canvas.setFillColor(GREY)
        _line(canvas, fonts.regular, 9, label, left, baseline, label_width)
        canvas.setFillColor(black)
        _line(canvas, fonts.mono, 12.5, value, left + label_width, baseline, inner_width - label_width)
        baseline -= 6 * mm
    canvas.setFillColor(GREY)
    baseline += 0.5 * mm
    sign_in = f"Scan the code, or sign in at {settings.PUBLIC_URL}/login/"
    _line(canvas, fonts.regular, 8, sign_in, left, baseline, inner_width)
    baseline -= 4 * mm
    once = "The code works once"
    if expires is not None:
        day = timezone.localtime(expires)
        once += f" and expires on {day.day} {day:%B %Y}"
    _line(canvas, fonts.regular, 7.5, f"{once}.", left, baseline, inner_width)
    canvas.setFillColor(black)


def _qr(canvas: Canvas, card: SeatCredentials, x: float, y: float) -> None:
    """The join link's QR code as filled rectangles in a form XObject named after the seat, in module units:
    one rectangle per horizontal run of dark modules, filled as one path (no seams between rows on screen)."""
    matrix = segno.make(card.join_url, error="m").matrix
    size = len(matrix)
    name = qr_form_name(card.seat)
    canvas.beginForm(name, lowerx=0, lowery=0, upperx=size, uppery=size)
    path = canvas.beginPath()
    for row_index, row in enumerate(matrix):
        for start, length in _dark_runs(row):
            path.rect(start, size - 1 - row_index, length, 1)
    canvas.drawPath(path, stroke=0, fill=1)
    canvas.endForm()
    module = QR_SIZE / (size + 2 * QR_BORDER)
    canvas.saveState()
    canvas.translate(x + QR_BORDER * module, y + QR_BORDER * module)
    canvas.scale(module, module)
    canvas.doForm(name)
    canvas.restoreState()


def qr_form_name(seat: str) -> str:
    return f"qr-{seat}"


def _dark_runs(row: bytearray) -> Iterator[tuple[int, int]]:
    start = None
    for column, dark in enumerate([*row, 0]):
        if dark and start is None:
            start = column
        elif not dark and start is not None:
            yield start, column - start
            start = None


def _cut_guides(canvas: Canvas) -> None:
    """Dashed lines along the cards' edges, from the paper's edge to the paper's edge: one cut per line."""
    canvas.saveState()
    canvas.setStrokeColor(GUIDE)
    canvas.setLineWidth(0.5)
    canvas.setDash(4, 3)
    for column in range(COLUMNS + 1):
        x = MARGIN_X + column * CARD_WIDTH
        canvas.line(x, MARGIN_BOTTOM - 6 * mm, x, PAGE_HEIGHT)
    for row in range(ROWS + 1):
        y = MARGIN_BOTTOM + row * CARD_HEIGHT
        canvas.line(0, y, PAGE_WIDTH, y)
    canvas.restoreState()


def _footer(canvas: Canvas, fonts: _Fonts, workshop: Workshop, page: int, pages: int) -> None:
    canvas.setFillColor(GREY)
    baseline = MARGIN_BOTTOM - 10 * mm
    number = f"Page {page} of {pages}"
    number_width = pdfmetrics.stringWidth(number, fonts.regular, 8)
    canvas.setFont(fonts.regular, 8)
    canvas.drawRightString(PAGE_WIDTH - MARGIN_X, baseline, number)
    note = f"{workshop.title} — seat credentials. Cut along the dashed lines: one card per participant."
    _line(canvas, fonts.regular, 8, note, MARGIN_X, baseline, PAGE_WIDTH - 2 * MARGIN_X - number_width - 5 * mm)
    canvas.setFillColor(black)


def _line(
    canvas: Canvas, font: str, size: float, text: str, x: float, y: float, width: float, *, truncate: bool = False
) -> None:
    """One line of text within ``width``: cut with an ellipsis if ``truncate`` (names and titles), else shrunk
    to fit, down to 5 pt (a username, a password or an address must be whole: the longest username, a
    50-character slug and its seat, fits at that size)."""
    text = drawable(text, font)
    if truncate:
        while len(text) > 1 and pdfmetrics.stringWidth(text, font, size) > width:
            text = text[:-2].rstrip() + "…"
    else:
        natural = pdfmetrics.stringWidth(text, font, size)
        if natural > width:
            size = max(5, size * width / natural)
    canvas.setFont(font, size)
    canvas.drawString(x, y, text)


def _wrapped(text: str, font: str, size: float, width: float, *, max_lines: int) -> list[str]:
    """``text`` broken at spaces into lines of ``width``; past ``max_lines`` the rest joins the last line, which
    ``_line`` then shrinks or cuts."""
    lines = simpleSplit(drawable(text, font), font, size, width) or [""]
    if len(lines) <= max_lines:
        return lines
    return [*lines[: max_lines - 1], " ".join(lines[max_lines - 1 :])]


def _fonts() -> _Fonts:
    """DejaVu when Debian's fonts-dejavu-core is installed. Without it, reportlab's built-in Helvetica and
    Courier: they need no file but draw only the WinAnsi (cp1252) characters, so ``drawable`` replaces the rest
    (Ł, ő, Cyrillic…) with their closest ASCII, and Courier tells 0/O and 1/l apart less clearly (the passwords'
    alphabet has none of those; usernames may)."""
    files = {name: FONT_DIR / f"{name}.ttf" for name in _DEJAVU.values()}
    if all(path.is_file() for path in files.values()):
        registered = pdfmetrics.getRegisteredFontNames()
        for name, path in files.items():
            if name not in registered:
                pdfmetrics.registerFont(TTFont(name, str(path)))
        return _Fonts(**_DEJAVU)
    return _Fonts(regular="Helvetica", bold="Helvetica-Bold", mono="Courier")


def drawable(text: str, font: str) -> str:
    """``text`` with each character ``font`` has no glyph for replaced by its closest ASCII (see _closest_ascii)."""
    found = pdfmetrics.getFont(font)
    if isinstance(found, TTFont):
        glyphs = found.face.charToGlyph

        def has(char: str) -> bool:
            return ord(char) in glyphs
    else:

        def has(char: str) -> bool:
            try:
                char.encode("cp1252")
            except UnicodeEncodeError:
                return False
            return True

    return "".join(char if has(char) else _closest_ascii(char) for char in text)


_LATIN_LETTER = re.compile(r"LATIN (CAPITAL|SMALL) LETTER (?:DOTLESS )?([A-Z]{1,2})(?: WITH .*)?")


def _closest_ascii(char: str) -> str:
    """é → e (Unicode decomposition); Ł → L, ı → i (no decomposition, but the name says "LETTER L WITH STROKE",
    "LETTER DOTLESS I"); anything else → ?."""
    decomposed = unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode()
    if decomposed:
        return decomposed
    if unicodedata.combining(char):
        return ""
    named = _LATIN_LETTER.fullmatch(unicodedata.name(char, ""))
    if named:
        return named[2] if named[1] == "CAPITAL" else named[2].lower()
    return "?"


def _join_links_expire(workshop: Workshop) -> datetime | None:
    """When the links on these cards stop working: they were issued together, just now (JoinLink.issue)."""
    links = JoinLink.objects.filter(seat__workshop=workshop, used_at=None)
    return links.aggregate(latest=Max("expires_at"))["latest"]
