"""The hub's ``POST /api/hub/inputs`` checks every upload itself (it never trusts a seat frontend), and its
``GET /api/hub/view`` serves nothing active inline: the rule of workshops/seat_frontend/media.py."""

from __future__ import annotations

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image

from storage.models import SeatInput
from storage.tests.test_gallery import make_artifact

HTML = b"<!doctype html><html><script>alert(document.cookie)</script></html>"


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (5, 6, 7)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def seat_client(personas) -> Client:
    """The seat frontend of seat A, as the hub sees it: its token, no session."""
    return Client(headers={"Authorization": f"Bearer {personas.seat_a.issue_token()}"})


def send(client: Client, name: str, body: bytes, content_type: str = "image/png"):
    image = SimpleUploadedFile(name.rsplit("/", 1)[-1], body, content_type=content_type)
    return client.post("/api/hub/inputs", {"name": name, "image": image})


def test_a_good_png_is_kept_with_the_type_of_its_bytes(seat_client):
    response = send(seat_client, "pasted/photo.png", png_bytes(), content_type="text/html")

    assert response.status_code == 200
    assert response.json()["name"] == "pasted/photo.png"
    kept = SeatInput.objects.get()
    assert (kept.name, kept.content_type, kept.size) == ("pasted/photo.png", "image/png", len(png_bytes()))


def test_a_polyglot_named_html_is_kept_under_a_png_name(seat_client):
    response = send(seat_client, "pasted/poly.html", png_bytes() + HTML)

    assert response.status_code == 200
    assert response.json()["name"] == "pasted/poly.png"
    assert SeatInput.objects.get().name == "pasted/poly.png"


@pytest.mark.parametrize("body", [HTML, b"<svg onload='alert(1)'/>", b"just text"])
def test_anything_but_media_is_refused_with_400_saying_what_is_accepted(seat_client, body):
    response = send(seat_client, "page.png", body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "unsupported_type"
    assert "PNG" in error["message"] and "MP4" in error["message"] and "WAV" in error["message"]
    assert not SeatInput.objects.exists()


def test_a_file_over_the_upload_limit_is_413(seat_client, settings):
    assert settings.SEAT_FRONTENDS["MAX_UPLOAD_MB"] == 50
    big = png_bytes() + bytes(60 * 1024 * 1024)

    response = send(seat_client, "big.png", big)

    assert response.status_code == 413
    assert response.json()["error"] == {
        "type": "upload_too_large",
        "message": "The file is larger than 50 MB.",
        "details": "",
        "extra_info": {},
    }
    assert not SeatInput.objects.exists()


def test_the_limit_holds_for_the_file_itself_not_only_the_request(seat_client, settings):
    """Just over the limit by the file's size, within the envelope's slack by the request's length."""
    settings.SEAT_FRONTENDS = {**settings.SEAT_FRONTENDS, "MAX_UPLOAD_MB": 1}

    response = send(seat_client, "big.png", png_bytes() + bytes(1024 * 1024))

    assert response.status_code == 413
    assert not SeatInput.objects.exists()


@pytest.mark.parametrize("name", ["a\x00b.png", "sub\x01dir/a.png", "a\nb.png", "x" * 256 + ".png", "sub\\a.png"])
def test_an_unusable_name_is_a_400_in_the_apis_shape(seat_client, name):
    response = send(seat_client, name, png_bytes())

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "bad_upload"
    assert not SeatInput.objects.exists()


# --- GET /api/hub/view ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "content_type"), [("page.html", "text/html"), ("drawing.svg", "image/svg+xml"), ("x.png", "")]
)
def test_an_output_that_is_not_media_is_never_served_inline(seat_client, personas, filename, content_type):
    make_artifact(personas.seat_a, filename, HTML, content_type)
    if not content_type:  # nothing recorded and a media name: the name decides, and nosniff keeps it an image
        filename = "x.png"

    response = seat_client.get("/api/hub/view", {"filename": filename, "type": "output"})

    assert response.status_code == 200
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in response["Content-Security-Policy"]
    if content_type:
        assert response["Content-Type"] == "application/octet-stream"
        assert response["Content-Disposition"].startswith("attachment;")
    else:
        assert response["Content-Type"] == "image/png"


@pytest.mark.parametrize(
    "query", [{"filename": "a\x00.png"}, {"filename": "a.png", "subfolder": "x\ny"}, {"filename": "y" * 300}]
)
def test_an_unusable_output_name_is_a_400_not_a_database_error(seat_client, query):
    response = seat_client.get("/api/hub/view", {**query, "type": "output"})

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "bad_filename"
