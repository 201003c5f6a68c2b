"""The one rule for uploads and served files (workshops/seat_frontend/media.py): formats by their first bytes,
safe stored names, and how a file may be served. Pure functions: no database, no server."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from workshops.seat_frontend import media


def pillow(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(out, format=fmt)
    return out.getvalue()


HTML = b"<!doctype html><html><script>fetch('/api/prompt',{method:'POST'})</script></html>"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (pillow("PNG"), "image/png"),
        (pillow("JPEG"), "image/jpeg"),
        (pillow("GIF"), "image/gif"),
        (pillow("WEBP"), "image/webp"),
        (pillow("BMP"), "image/bmp"),
        (pillow("TIFF"), "image/tiff"),
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2mp41", "video/mp4"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  ", "video/quicktime"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1", "image/avif"),
        (b"\x00\x00\x00\x1cftypM4A \x00\x00\x00\x00M4A mp42", "audio/mp4"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\x82\x84webm", "video/webm"),
        (b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\xf7\x81\x01\x42\x82\x88matroska", "video/x-matroska"),
        (b"RIFF\x24\x00\x00\x00AVI LIST", "video/x-msvideo"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "audio/wav"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00", "audio/mpeg"),
        (b"\xff\xfb\x90\x64\x00", "audio/mpeg"),
        (b"\xff\xf1\x50\x80\x02\x1f\xfc", "audio/aac"),
        (b"fLaC\x00\x00\x00\x22", "audio/flac"),
        (b"OggS\x00\x02\x00\x00", "audio/ogg"),
    ],
)
def test_formats_comfyui_loads_are_told_by_their_first_bytes(head, expected):
    found = media.detect(head[: media.HEAD_BYTES])

    assert found is not None and found.content_type == expected


@pytest.mark.parametrize(
    "head",
    [
        HTML,
        b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
        b"%PDF-1.7\n",
        b"BMW owners club minutes",  # "BM" without a bitmap header is not a BMP
        b"ID3 is a tag format",
        b"RIFF\x24\x00\x00\x00HTML",
        b"",
    ],
)
def test_anything_else_is_not_media(head):
    assert media.detect(head) is None


@pytest.mark.parametrize(
    ("filename", "fmt", "expected"),
    [
        ("poly.html", "PNG", "poly.png"),  # the attack: PNG bytes, an HTML name
        ("photo.jpg", "PNG", "photo.jpg"),  # a mislabelled image stays an image: its name is kept
        ("photo.PNG", "PNG", "photo.PNG"),
        ("scan", "TIFF", "scan.tiff"),
        ("drawing.svg", "PNG", "drawing.png"),
        ("clip.mp4", "PNG", "clip.png"),  # another family: the bytes' own extension
        (".png", "PNG", ".png.png"),
    ],
)
def test_the_stored_name_carries_an_extension_of_the_detected_family(filename, fmt, expected):
    detected = media.detect(pillow(fmt))
    assert detected is not None

    assert media.stored_name(filename, detected) == expected


@pytest.mark.parametrize(
    "name",
    ["", "   ", "a\x00.png", "a\nb.png", "a\rb.png", "tab\t.png", "del\x7f.png", "rtl\u202egnp.exe", "a/b.png",
     "a\\b.png", "..", "x" * 252 + ".png", "é" * 130 + ".png", "lone\ud800.png", "esc\udcff.png"],
)  # fmt: skip
def test_names_that_cannot_be_stored_are_refused(name):
    with pytest.raises(media.NameProblem):
        media.check_name(name)


def test_paths_are_checked_part_by_part():
    assert media.check_path("workflows/sub/a b.json") == "workflows/sub/a b.json"
    assert media.check_path("../escape.json") == "../escape.json"  # resolving inside the root refuses that
    for bad in ("workflows/\x00.json", "a\\b", "x/" + "y" * 256, "z" * 1025):
        with pytest.raises(media.NameProblem):
            media.check_path(bad)


def test_only_media_is_served_inline_by_its_bytes():
    png = media.serving("poly.html", head=pillow("PNG")[:64])
    html = media.serving("page.png", head=HTML)

    assert (png.content_type, png.inline) == ("image/png", True)
    assert png.headers["Content-Disposition"] == 'inline; filename="poly.html"'
    assert (html.content_type, html.inline) == ("application/octet-stream", False)
    assert html.headers["Content-Disposition"] == 'attachment; filename="page.png"'
    for rule in (png, html):
        assert rule.headers["X-Content-Type-Options"] == "nosniff"
        assert "sandbox" in rule.headers["Content-Security-Policy"]
        assert rule.headers["Content-Type"] == rule.content_type


@pytest.mark.parametrize(
    ("filename", "declared", "expected"),
    [
        ("out.png", "image/png", "image/png"),
        ("out.mp4", "video/mp4; codecs=avc1", "video/mp4"),
        ("out.wav", "audio/x-wav", "audio/wav"),
        ("drawing.svg", "image/svg+xml", "application/octet-stream"),
        ("out.png", "text/html", "application/octet-stream"),  # the recorded type wins over the name
        ("out.png", "application/octet-stream", "application/octet-stream"),
        ("page.html", "", "application/octet-stream"),
        ("out.webm", "", "video/webm"),  # nothing recorded: the extension decides
        ("README", None, "application/octet-stream"),
    ],
)
def test_a_recorded_type_is_served_inline_only_when_it_is_media(filename, declared, expected):
    rule = media.serving(filename, declared=declared)

    assert rule.content_type == expected
    assert rule.inline is (expected != "application/octet-stream")


def test_file_names_in_content_disposition_are_quoted():
    assert media.content_disposition('a"b\\.png', attachment=True) == r'attachment; filename="a\"b\\.png"'
    assert media.content_disposition("café.png", attachment=False) == "inline; filename*=utf-8''caf%C3%A9.png"


def test_the_rule_needs_only_the_standard_library():
    """The seat frontend's image copies only its package, and the hub imports the module: no Django, no aiohttp."""
    code = (
        "import sys, workshops.seat_frontend.media; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'django', 'aiohttp', 'PIL', 'multidict'}))"
    )
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
