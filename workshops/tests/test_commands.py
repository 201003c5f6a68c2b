"""Management commands a script drives: create_workshop, add_backend — and their bad input."""

import io
import json
from io import StringIO

import pytest
from django.contrib.auth import authenticate
from django.core.management import CommandError, call_command

from gpu_backends.models import GpuBackend
from workshops.models import JoinLink, Seat, Workshop, hash_token


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_create_workshop_writes_working_credentials(tmp_path):
    run("add_backend", "gpu-1", "--kind", "comfyui", "--url", "http://10.0.0.5:8188", "--max-concurrency", "2")
    path = tmp_path / "creds.json"
    out = run("create_workshop", "may", "--seats", "3", "--policy", "priority", "--backend", "gpu-1",
              "--credentials-json", str(path))  # fmt: skip
    assert "Created may with 3 seats" in out and str(path) in out
    data = json.loads(path.read_text())
    assert [s["seat"] for s in data["seats"]] == ["user001", "user002", "user003"]
    assert oct(path.stat().st_mode)[-3:] == "600"
    workshop = Workshop.objects.get(slug="may")
    assert workshop.queue_policy == "priority" and list(workshop.backends.values_list("name", flat=True)) == ["gpu-1"]
    first = data["seats"][0]
    user = authenticate(username=first["username"], password=first["password"])
    assert user is not None and user.seat.label == "user001"
    token = first["join_url"].rstrip("/").rsplit("/", 1)[1]
    assert JoinLink.objects.get(token_hash=hash_token(token)).seat == user.seat
    assert first["password"] not in path.read_text().replace(first["password"], "", 1)  # each password once


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create_workshop", "w", "--seats", "0"], "1 to 500 seats"),
        (["create_workshop", "w", "--seats", "501"], "1 to 500 seats"),
        (["create_workshop", "w", "--seats", "2", "--backend", "nope"], "No GPU backend called 'nope'"),
        (["create_workshop", "not a slug!", "--seats", "2"], "slug"),
        (["add_backend", "b", "--kind", "comfyui", "--url", "not-a-url"], "url"),
        (["add_backend", "b", "--kind", "comfyui", "--url", "http://x:1", "--max-concurrency", "0"], "at least 1"),
        (["add_backend", "b", "--kind", "comfyui", "--url", "http://x:1", "--price-per-hour", "cheap"], "number"),
        (["add_backend", "b", "--kind", "comfyui", "--url", "http://x:1", "--workshop", "nope"], "No workshop"),
    ],
)
def test_bad_input_is_a_clear_error_and_creates_nothing(args, message):
    with pytest.raises((CommandError, SystemExit)) as excinfo:
        call_command(*args, stdout=StringIO(), stderr=StringIO())
    if isinstance(excinfo.value, CommandError):
        assert message.lower() in str(excinfo.value).lower()
    assert Workshop.objects.count() == 0 and Seat.objects.count() == 0
    if args[0] == "add_backend" and "--workshop" not in args:
        assert GpuBackend.objects.count() == 0


@pytest.mark.django_db
def test_create_workshop_refuses_an_existing_slug_or_credentials_file(tmp_path):
    run("create_workshop", "dup", "--seats", "1")
    with pytest.raises(CommandError, match="exists already"):
        call_command("create_workshop", "dup", "--seats", "1", stdout=StringIO())
    existing = tmp_path / "c.json"
    existing.write_text("keep me")
    with pytest.raises(CommandError, match="refusing to overwrite"):
        call_command("create_workshop", "other", "--seats", "1", "--credentials-json", str(existing), stdout=StringIO())
    assert existing.read_text() == "keep me" and not Workshop.objects.filter(slug="other").exists()


@pytest.mark.django_db
def test_add_backend_updates_an_existing_one():
    run("add_backend", "b", "--kind", "simulator", "--url", "http://127.0.0.1:8188")
    out = run("add_backend", "b", "--kind", "comfyui", "--url", "http://gpu:8188", "--max-concurrency", "4",
              "--gpu-type", "H200", "--price-per-hour", "3.50")  # fmt: skip
    backend = GpuBackend.objects.get(name="b")
    assert "Updated backend b" in out
    assert (backend.kind, backend.max_concurrency, backend.gpu_type, str(backend.price_per_hour)) == (
        "comfyui",
        4,
        "H200",
        "3.50",
    )


@pytest.mark.django_db
def test_create_workshop_writes_printable_cards_with_a_qr_code_per_seat(tmp_path):
    from workshops.credentials import qr_svg

    sheet, data = tmp_path / "cards.html", tmp_path / "creds.json"
    run("create_workshop", "june", "--seats", "2", "--title", "June <b>masterclass</b>",
        "--credentials-html", str(sheet), "--credentials-json", str(data))  # fmt: skip
    html = sheet.read_text()
    assert oct(sheet.stat().st_mode)[-3:] == "600"
    assert "June &lt;b&gt;masterclass&lt;/b&gt;" in html  # the title is escaped
    seats = json.loads(data.read_text())["seats"]
    assert html.count("<svg") == 2
    for seat in seats:
        assert seat["username"] in html and seat["password"] in html
        assert qr_svg(seat["join_url"]) in html
    with pytest.raises(CommandError, match="exists already"):
        run("create_workshop", "july", "--seats", "1", "--credentials-html", str(sheet))


FLUX_LIKE = {
    "nodes": [{"id": 1, "type": "EmptyImage", "inputs": [], "outputs": [], "widgets_values": [64, 64, 1, 0]}],
    "links": [],
    "version": 0.4,
}


@pytest.mark.django_db
def test_load_templates_puts_workflows_in_a_workshop_with_a_default(tmp_path):
    from workshops.models import WorkflowTemplate

    run("create_workshop", "aug", "--seats", "1")
    (tmp_path / "Flux Klein.json").write_text(json.dumps(FLUX_LIKE))
    out = run("load_templates", str(tmp_path / "Flux Klein.json"), "--workshop", "aug", "--default", "Flux Klein")
    assert "Added template 'Flux Klein'" in out
    workshop = Workshop.objects.get(slug="aug")
    assert workshop.default_template.name == "Flux Klein"
    assert list(workshop.templates.values_list("name", flat=True)) == ["Flux Klein"]
    assert WorkflowTemplate.objects.get().workflow == FLUX_LIKE


@pytest.mark.django_db
def test_load_templates_refuses_api_format_and_broken_files_and_saves_nothing(tmp_path):
    from workshops.models import WorkflowTemplate

    good, api, broken = tmp_path / "good.json", tmp_path / "api.json", tmp_path / "broken.json"
    good.write_text(json.dumps(FLUX_LIKE))
    api.write_text(json.dumps({"1": {"class_type": "EmptyImage", "inputs": {}}}))
    broken.write_text("{not json")
    with pytest.raises(CommandError, match="API format"):
        run("load_templates", str(good), str(api))
    with pytest.raises(CommandError, match="not a JSON file"):
        run("load_templates", str(broken))
    with pytest.raises(CommandError, match="no such file"):
        run("load_templates", str(tmp_path / "missing.json"))
    assert not WorkflowTemplate.objects.exists()


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 48), (20, 120, 200)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.django_db
def test_load_templates_takes_the_picture_beside_a_workflow_as_its_card(tmp_path):
    from workshops.models import WorkflowTemplate

    (tmp_path / "flux.json").write_text(json.dumps(FLUX_LIKE))
    (tmp_path / "flux.png").write_bytes(_png())
    (tmp_path / "plain.json").write_text(json.dumps(FLUX_LIKE))
    out = run("load_templates", str(tmp_path / "flux.json"), str(tmp_path / "plain.json"))
    assert "Added template 'flux' with its picture flux.png" in out and "Added template 'plain'\n" in out
    flux, plain = WorkflowTemplate.objects.get(name="flux"), WorkflowTemplate.objects.get(name="plain")
    assert (bytes(flux.thumbnail), flux.thumbnail_type) == (_png(), "image/png")
    assert (bytes(plain.thumbnail), plain.thumbnail_type) == (b"", "")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "name, body, says",
    [
        ("flux.png", b"<html><script>alert(1)</script></html>", "must be a PNG, JPEG or WebP image"),
        ("flux.jpg", b'<svg xmlns="http://www.w3.org/2000/svg"/>', "must be a PNG, JPEG or WebP image"),
        ("flux.webp", b"GIF89a" + b"\x00" * 40, "must be a PNG, JPEG or WebP image"),
        ("flux.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * (2 * 1024 * 1024), "at most 2 MB"),
    ],
)
def test_a_picture_that_is_not_one_is_refused_naming_the_file_and_nothing_is_saved(tmp_path, name, body, says):
    from workshops.models import WorkflowTemplate

    (tmp_path / "flux.json").write_text(json.dumps(FLUX_LIKE))
    (tmp_path / name).write_bytes(body)
    with pytest.raises(CommandError, match=f"{tmp_path / name}: .*{says}"):
        run("load_templates", str(tmp_path / "flux.json"))
    assert not WorkflowTemplate.objects.exists()
