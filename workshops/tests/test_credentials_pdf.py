"""The credential cards as a PDF: from the admin's sheet page (a download link carrying the file), from
``create_workshop --credentials-pdf``, read back with pypdf."""

from __future__ import annotations

import base64
import io
import json
import re
from io import StringIO
from typing import Any, cast

import pytest
import segno
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone
from pypdf import PageObject, PdfReader
from pypdf.generic import ContentStream, DictionaryObject

from workshops import credentials_pdf
from workshops.credentials_pdf import credential_pdf, drawable, qr_form_name
from workshops.models import JoinLink
from workshops.services import create_workshop

NAMES = ["Zoë Łukasik", "José", "Agnès Varda", "Ada Lovelace", "Akira Kurosawa", "Nam June Paik", "Hito Steyerl",
         "Ștefan Ţiriac", "Chris Marker"]  # fmt: skip
dejavu = pytest.mark.skipif(
    not (credentials_pdf.FONT_DIR / "DejaVuSans.ttf").is_file(), reason="Debian's fonts-dejavu-core is not installed"
)


def page_texts(pdf: bytes) -> list[str]:
    return [page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages]


def resources(page: PageObject, kind: str) -> dict[str, Any]:
    """A page's ``/Font`` or ``/XObject`` resources, by name."""
    entries = cast(DictionaryObject, cast(DictionaryObject, page["/Resources"].get_object())[kind].get_object())
    return {name: value.get_object() for name, value in entries.items()}


def font_names(pdf: bytes) -> set[str]:
    return {
        str(font["/BaseFont"]).lstrip("/").split("+")[-1]
        for page in PdfReader(io.BytesIO(pdf)).pages
        for font in resources(page, "/Font").values()
    }


def drawn_qr(reader: PdfReader, page_number: int, seat: str) -> list[list[int]]:
    """The module grid a seat's QR code form draws on that page: each ``x y w h re`` is a run of dark modules
    in module units, row 0 at the bottom."""
    forms = resources(reader.pages[page_number], "/XObject")
    (form,) = [xobject for name, xobject in forms.items() if name.endswith(qr_form_name(seat))]
    size = int(form["/BBox"][2])
    grid = [[0] * size for _ in range(size)]
    for operands, operator in ContentStream(form, reader).operations:
        if operator == b"re":
            x, y, width, height = (int(value) for value in operands)
            assert height == 1
            for column in range(x, x + width):
                grid[size - 1 - y][column] = 1
    return grid


def qr_matrix(url: str) -> list[list[int]]:
    return [list(row) for row in segno.make(url, error="m").matrix]


@pytest.fixture
def nine(db):
    return create_workshop("june", seats=9, title="June masterclass", names=NAMES)


def test_cards_are_sorted_by_seat_eight_to_a_page_with_name_username_and_password_in_order(nine):
    workshop, credentials = nine
    pdf = credential_pdf(workshop, list(reversed(credentials)))
    assert pdf.startswith(b"%PDF-")
    pages = page_texts(pdf)
    assert len(pages) == 2
    for page_number, cards in ((0, credentials[:8]), (1, credentials[8:])):
        text, position = pages[page_number], 0
        for card in cards:
            for shown in (card.name, f"Seat {card.seat}", card.username, card.password):
                found = text.find(shown, position)
                assert found >= position, f"{shown!r} is not after the card before it on page {page_number + 1}"
                position = found + len(shown)
        assert f"Page {page_number + 1} of 2" in text and "Cut along the dashed lines" in text
    assert credentials[8].password not in pages[0]


def test_each_qr_code_is_drawn_as_vectors_and_reads_as_its_cards_join_link(nine):
    workshop, credentials = nine
    reader = PdfReader(io.BytesIO(credential_pdf(workshop, credentials)))
    for page_number, card in [(0, c) for c in credentials[:8]] + [(1, credentials[8])]:
        drawn = drawn_qr(reader, page_number, card.seat)
        assert drawn == qr_matrix(card.join_url)
        assert drawn != qr_matrix(credentials[(credentials.index(card) + 1) % 9].join_url)
    for page in reader.pages:
        xobjects = resources(page, "/XObject").values()
        assert {str(xobject["/Subtype"]) for xobject in xobjects} == {"/Form"}  # no raster image


def test_a_card_says_the_code_works_once_and_when_it_expires(nine):
    workshop, credentials = nine
    expires = timezone.localtime(JoinLink.objects.filter(seat__workshop=workshop).latest("expires_at").expires_at)
    text = page_texts(credential_pdf(workshop, credentials[:1]))[0]
    assert f"The code works once and expires on {expires.day} {expires:%B %Y}." in text
    assert "Scan the code, or sign in at http" in text


@dejavu
def test_unicode_names_are_drawn_with_dejavu(nine):
    workshop, credentials = nine
    pdf = credential_pdf(workshop, credentials)
    text = page_texts(pdf)[0]
    assert "Zoë Łukasik" in text and "José" in text and "Ștefan Ţiriac" in text
    assert {"DejaVuSans", "DejaVuSans-Bold", "DejaVuSansMono"} <= font_names(pdf)


def test_without_dejavu_the_built_in_fonts_draw_what_they_can_and_the_closest_ascii_for_the_rest(
    nine, monkeypatch, tmp_path
):
    workshop, credentials = nine
    monkeypatch.setattr(credentials_pdf, "FONT_DIR", tmp_path)
    pdf = credential_pdf(workshop, credentials)
    text = page_texts(pdf)[0]
    # ë and é are in the built-in fonts' WinAnsi encoding; Ł, Ș and Ţ are not.
    assert "Zoë Lukasik" in text and "José" in text and "Stefan Tiriac" in text
    assert "Ł" not in text and "Ș" not in text
    assert font_names(pdf) == {"Helvetica", "Helvetica-Bold", "Courier"}
    assert drawable("Øyvind · 李 · Ærø", "Helvetica") == "Øyvind · ? · Ærø"
    assert drawable("Đorđe Ľudovít Yıldız", "Courier") == "Dorde Ludovít Yildiz"


def test_a_long_name_or_title_is_cut_but_a_username_and_password_are_whole(db):
    workshop, credentials = create_workshop(
        "a-fifty-character-slug-which-is-the-longest-there-", seats=1, title="T " * 80, names=["Name " * 30]
    )
    assert len(workshop.slug) == 50
    text = page_texts(credential_pdf(workshop, credentials))[0]
    assert credentials[0].username in text and credentials[0].password in text
    assert "…" in text and ("Name " * 30).strip() not in text


def test_the_admin_sheet_page_carries_the_same_cards_as_a_pdf_download(personas):
    instructor = Client()
    instructor.force_login(personas.instructor)
    response = instructor.post(
        "/admin/workshops/workshop/new-with-seats/",
        {"slug": "june", "title": "June masterclass", "names": "Zoë Łukasik\nJosé\n", "queue_policy": "round_robin"},
    )
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    html = response.content.decode()
    link = re.search(r'<a [^>]*href="data:application/pdf;base64,([A-Za-z0-9+/=]+)" download="([^"]+)"', html)
    assert link is not None and link[2] == "june-credentials.pdf"
    pdf = base64.b64decode(link[1], validate=True)
    shown = re.findall(r"<dt>Username</dt><dd>([^<]+)</dd>\s*<dt>Password</dt><dd>([^<]+)</dd>", html)
    assert len(shown) == 2
    (text,) = page_texts(pdf)
    for username, password in shown:
        assert username in text and password in text


def test_create_workshop_writes_the_cards_as_a_private_pdf(db, tmp_path):
    cards, data = tmp_path / "cards" / "june.pdf", tmp_path / "june.json"
    out = StringIO()
    call_command("create_workshop", "june", "--seats", "3", "--credentials-pdf", str(cards),
                 "--credentials-json", str(data), stdout=out)  # fmt: skip
    assert oct(cards.stat().st_mode)[-3:] == "600"
    assert f"Credential cards as PDF: {cards}" in out.getvalue()
    (text,) = page_texts(cards.read_bytes())
    for seat in json.loads(data.read_text())["seats"]:
        assert seat["username"] in text and seat["password"] in text
    with pytest.raises(CommandError, match="exists already"):
        call_command("create_workshop", "july", "--seats", "1", "--credentials-pdf", str(cards), stdout=StringIO())
