"""The seat frontend against a live hub: who may use a seat (the isolation matrix), ComfyUI's userdata and
upload semantics, bad input, and a prompt that travels with an uploaded image to the simulator and back."""

from __future__ import annotations

import io
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from django.conf import settings
from django.test import Client
from PIL import Image

from jobs.models import Job
from storage.models import SeatInput
from tests.fixtures import run_worker
from tests.seat_server import SeatServerThread, seat_config
from workshops.models import Seat
from workshops.seat_frontend.tests.test_without_a_hub import assert_framing_headers

TINY = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "seat"}},
}


def png_bytes(color: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(out, format="PNG")
    return out.getvalue()


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


def persona_cookies(personas) -> dict[str, str]:
    """Session cookies of everyone who might knock on seat A (anonymous has none)."""
    return {
        "own": session_cookie(personas.seat_a.participant),
        "same_workshop": session_cookie(personas.seat_b.participant),
        "other_workshop": session_cookie(personas.seat_c.participant),
        "staff": session_cookie(personas.instructor),
        "anonymous": "",
    }


@pytest.fixture
def seat_server(transactional_db, live_server, personas, tmp_path):
    """Seat A's frontend (its data under tmp_path/seat) and the people who may or may not use it."""
    token = personas.seat_a.issue_token()
    server = SeatServerThread(seat_config(live_server.url, token, tmp_path / "seat")).start()
    cookies = persona_cookies(personas)
    yield server, cookies
    server.stop()


def call(server: SeatServerThread, who: str, cookies: dict, method: str, path: str, **kwargs) -> requests.Response:
    headers = {"Cookie": cookies[who]} if cookies[who] else {}
    headers.update(kwargs.pop("headers", {}))
    return requests.request(
        method, server.url.rstrip("/") + path, headers=headers, timeout=10, allow_redirects=False, **kwargs
    )


# Every seat endpoint a browser can reach, with a request that would read or change the seat's data.
ENDPOINTS = [
    ("GET", "/", {"headers": {"Accept": "text/html"}}),
    ("GET", "/api/userdata?dir=workflows&recurse=true&full_info=true", {}),
    ("GET", "/api/userdata/workflows%2Fsecret.json", {}),
    ("POST", "/api/userdata/workflows%2Fintruder.json", {"data": b"{}"}),
    ("DELETE", "/api/userdata/workflows%2Fsecret.json", {}),
    ("POST", "/api/userdata/workflows%2Fsecret.json/move/workflows%2Fmoved.json", {}),
    ("GET", "/api/settings", {}),
    ("POST", "/api/settings/Comfy.Intruder", {"data": b"true"}),
    ("POST", "/api/upload/image", {"files": {"image": ("in.png", png_bytes(), "image/png")}}),
    ("GET", "/api/view?filename=mine.png&type=input", {}),
    ("GET", "/api/view?filename=seat_00001_.png&type=output", {}),
    ("POST", "/api/prompt", {"json": {"prompt": TINY, "client_id": "x"}}),
    ("GET", "/api/queue", {}),
    ("POST", "/api/queue", {"json": {"clear": True}}),
    ("GET", "/api/history?max_items=64", {}),
    ("GET", "/api/jobs?status=completed,failed,cancelled&limit=64&offset=0", {}),
    ("GET", "/api/jobs/6f1c1a3e-0000-4000-8000-000000000000", {}),
    ("POST", "/api/jobs/6f1c1a3e-0000-4000-8000-000000000000/cancel", {}),
    ("POST", "/api/jobs/cancel", {"json": {"job_ids": []}}),
    ("POST", "/api/interrupt", {"json": {}}),
    ("GET", "/api/object_info", {}),
    ("GET", "/api/comfyume/status", {}),
    (
        "GET",
        "/ws",
        {
            "headers": {
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            }
        },
    ),
]


def _seed(server: SeatServerThread) -> Path:
    root = server.config.data_dir
    (root / "user" / "workflows").mkdir(parents=True, exist_ok=True)
    (root / "user" / "workflows" / "secret.json").write_text('{"mine": true}')
    (root / "input" / "mine.png").write_bytes(png_bytes())
    return root


@pytest.mark.parametrize("who", ["same_workshop", "other_workshop", "anonymous"])
def test_nobody_else_reaches_a_seat(seat_server, who):
    server, cookies = seat_server
    root = _seed(server)
    for method, path, kwargs in ENDPOINTS:
        response = call(server, who, cookies, method, path, **kwargs)
        expected = {401, 302} if who == "anonymous" else {403}
        assert response.status_code in expected, (who, method, path, response.status_code, response.text[:200])
        assert "mine" not in response.text
    # Nothing was written, moved or deleted, and no job was queued.
    assert (root / "user" / "workflows" / "secret.json").read_text() == '{"mine": true}'
    assert sorted(p.name for p in (root / "user" / "workflows").iterdir()) == ["secret.json"]
    assert "Comfy.Intruder" not in (root / "user" / "comfy.settings.json").read_text()
    assert sorted(p.name for p in (root / "input").iterdir()) == ["mine.png"]
    assert not Job.objects.exists()


def test_anonymous_page_visit_is_sent_to_sign_in(seat_server):
    server, cookies = seat_server
    response = call(server, "anonymous", cookies, "GET", "/", headers={"Accept": "text/html"})
    assert response.status_code == 302
    assert response.headers["Location"] == f"{server.config.hub_url}/login/"


def test_another_participant_sees_a_page_saying_whose_seat_it_is(seat_server):
    server, cookies = seat_server
    response = call(server, "same_workshop", cookies, "GET", "/", headers={"Accept": "text/html"})
    assert response.status_code == 403
    assert "This is not your seat" in response.text and "ws1-user002" in response.text


@pytest.mark.parametrize("who", ["own", "staff"])
def test_the_participant_and_staff_use_the_seat(seat_server, who):
    server, cookies = seat_server
    _seed(server)
    page = call(server, who, cookies, "GET", "/", headers={"Accept": "text/html"})
    assert page.status_code == 200 and '<div id="vue-app">' in page.text
    listing = call(server, who, cookies, "GET", "/api/userdata?dir=workflows&recurse=true&full_info=true")
    assert [f["path"] for f in listing.json()] == ["secret.json"]
    assert call(server, who, cookies, "GET", "/api/userdata/workflows%2Fsecret.json").json() == {"mine": True}
    assert call(server, who, cookies, "GET", "/api/view?filename=mine.png&type=input").content == png_bytes()
    assert call(server, who, cookies, "GET", "/api/queue").json() == {"queue_running": [], "queue_pending": []}


def test_cross_site_requests_are_refused_even_with_a_valid_session(seat_server):
    server, cookies = seat_server
    response = call(
        server, "own", cookies, "POST", "/api/settings/Comfy.X", data=b"1", headers={"Origin": "https://evil.example"}
    )
    assert response.status_code == 403
    assert "Comfy.X" not in server.config.data_dir.joinpath("user", "comfy.settings.json").read_text()


def test_every_file_needs_a_session_and_a_page_load_asks_the_hub_once(seat_server, personas):
    from workshops.seat_frontend.app import GATE

    server, cookies = seat_server
    page = call(server, "own", cookies, "GET", "/", headers={"Accept": "text/html"})
    assets = re.findall(r'"\./(assets/[^"]+)"', page.text)[:200]
    assert call(server, "anonymous", cookies, "GET", f"/{assets[0]}").status_code == 401
    assert call(server, "same_workshop", cookies, "GET", "/extensions/comfyume/status.js").status_code == 403
    # A fresh session's first page load: a couple of hundred files at once, one question to the hub.
    fresh = {"Cookie": session_cookie(personas.seat_a.participant)}
    gate = server.app[GATE]
    gate.ttl = 60  # the fixture's 0.5 s would expire during the burst
    asked = gate.questions
    with ThreadPoolExecutor(max_workers=32) as pool:
        statuses = list(
            pool.map(lambda path: requests.get(f"{server.url}{path}", headers=fresh, timeout=20).status_code, assets)
        )
    assert statuses == [200] * len(assets)
    assert gate.questions == asked + 1


# --- ComfyUI's userdata semantics, as the web frontend relies on them -------------------------------------


def test_userdata_round_trip_as_the_frontend_does_it(seat_server):
    server, cookies = seat_server

    def req(method: str, path: str, **kwargs) -> requests.Response:
        return call(server, "own", cookies, method, path, **kwargs)

    assert req("GET", "/api/userdata?dir=workflows&recurse=true&split=false&full_info=true").status_code == 404
    saved = req("POST", "/api/userdata/workflows%2Fa.json?overwrite=false&full_info=true", data=b'{"v": 1}')
    assert saved.status_code == 200 and saved.json()["path"] == "workflows/a.json" and saved.json()["size"] == 8
    again = req("POST", "/api/userdata/workflows%2Fa.json?overwrite=false&full_info=true", data=b'{"v": 2}')
    assert again.status_code == 409
    index = req("POST", "/api/userdata/workflows%2F.index.json?overwrite=true&full_info=false", data=b"{}")
    assert index.json() == "workflows/.index.json"
    listing = req("GET", "/api/userdata?dir=workflows&recurse=true&split=false&full_info=true").json()
    assert [f["path"] for f in listing] == ["a.json"]  # hidden files are not listed, as in ComfyUI
    moved = req("POST", "/api/userdata/workflows%2Fa.json/move/workflows%2Fb.json?overwrite=false")
    assert moved.json() == "workflows/b.json"
    assert req("GET", "/api/userdata/workflows%2Fb.json").json() == {"v": 1}
    assert req("DELETE", "/api/userdata/workflows%2Fb.json").status_code == 204
    assert req("DELETE", "/api/userdata/workflows%2Fb.json").status_code == 404
    assert req("POST", "/api/settings/Comfy.Theme", json="dark").status_code == 200
    assert req("GET", "/api/settings").json()["Comfy.Theme"] == "dark"
    assert req("GET", "/api/settings/Comfy.TutorialCompleted").json() is True  # a new seat skips the tour


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/api/userdata/..%2F..%2F..%2Fetc%2Fpasswd"),
        ("GET", "/api/userdata/%2Fetc%2Fpasswd"),
        ("POST", "/api/userdata/..%2Fescape.json"),
        ("POST", "/api/userdata/workflows%2F..%2F..%2Fescape.json"),
        ("POST", "/api/userdata/workflows%2Fa.json/move/..%2F..%2Fescape.json"),
        ("GET", "/api/userdata?dir=..%2F.."),
        ("GET", "/api/view?filename=..%2F..%2Fuser%2Fcomfy.settings.json&type=input"),
        ("GET", "/api/view?filename=x.png&subfolder=..%2F..&type=input"),
        ("GET", "/api/view?filename=x.png&type=../../etc"),
    ],
)
def test_paths_out_of_the_seat_are_refused(seat_server, method, path, tmp_path):
    server, cookies = seat_server
    call(server, "own", cookies, "POST", "/api/userdata/workflows%2Fa.json", data=b"{}")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    response = call(server, "own", cookies, method, path, data=b"{}" if method == "POST" else None)
    assert 400 <= response.status_code < 500
    assert "root:" not in response.text and "TutorialCompleted" not in response.text
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_bad_uploads_get_a_clear_error_and_write_nothing(seat_server):
    server, cookies = seat_server
    inputs = server.config.data_dir / "input"
    oversized = b"\x89PNG\r\n\x1a\n" + os.urandom(server.config.max_upload_bytes + 10)
    cases = [
        ({"image": ("big.png", oversized, "image/png")}, {}, 413),
        ({"image": ("notes.txt", b"just some text", "text/plain")}, {}, 400),
        ({"image": ("evil.png", png_bytes(), "image/png")}, {"type": "output"}, 400),
        ({"image": ("evil.png", png_bytes(), "image/png")}, {"subfolder": "../../user"}, 403),
        ({}, {"type": "input"}, 400),
    ]
    for files, data, status in cases:
        response = call(server, "own", cookies, "POST", "/api/upload/image", files=files or None, data=data)
        assert response.status_code == status, (files.keys(), data, response.status_code, response.text)
    assert list(inputs.iterdir()) == []
    assert not SeatInput.objects.exists()


def test_unknown_endpoints_answer_404_in_comfyuis_error_shape(seat_server):
    server, cookies = seat_server
    response = call(server, "own", cookies, "GET", "/api/no/such/thing")
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found"
    assert call(server, "own", cookies, "POST", "/api/settings", data=b"not json").status_code == 400


def test_what_newer_frontends_ask_on_every_load_is_answered_as_a_stock_comfyui_does(seat_server):
    """Subgraph blueprints of custom nodes and node replacements: none on a seat, as on a ComfyUI without custom
    nodes (upstream's server.py and app/subgraph_manager.py: an unknown blueprint is a 200 ``null``)."""
    server, cookies = seat_server
    for path, expected in [
        ("/api/global_subgraphs", {}),
        ("/api/global_subgraphs/0f3c", None),
        ("/api/node_replacements", {}),
    ]:
        response = call(server, "own", cookies, "GET", path)
        assert (response.status_code, response.json()) == (200, expected), path


# --- A job from the seat's ComfyUI, with an uploaded image, through the hub to the simulator ---------------


def test_an_uploaded_image_travels_with_the_job_to_the_gpu(seat_server, personas, sim):
    server, cookies = seat_server
    upload = call(
        server,
        "own",
        cookies,
        "POST",
        "/api/upload/image",
        files={"image": ("photo.png", png_bytes((1, 2, 3)), "image/png")},
        data={"type": "input", "subfolder": "pasted"},
    )
    assert upload.json() == {"name": "photo.png", "subfolder": "pasted", "type": "input"}
    # The same name with other content becomes "photo (1).png", as in ComfyUI.
    second = call(
        server,
        "own",
        cookies,
        "POST",
        "/api/upload/image",
        files={"image": ("photo.png", png_bytes((9, 9, 9)), "image/png")},
        data={"subfolder": "pasted"},
    )
    assert second.json()["name"] == "photo (1).png"
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "pasted/photo.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "seat"}},
    }
    answer = call(server, "own", cookies, "POST", "/api/prompt", json={"prompt": prompt, "client_id": "tab-1"})
    assert answer.status_code == 200, answer.text
    job = Job.objects.get(prompt_id=answer.json()["prompt_id"])
    assert job.seat == personas.seat_a and job.client_id == "tab-1"
    assert [i["name"] for i in job.inputs] == ["pasted/photo.png"]
    run_worker()
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, (job.status_reason, job.error)
    on_backend = Path(sim.config.output_dir).parent
    copies = list(on_backend.rglob("photo.png"))
    assert any(f"comfyume/{job.backend_prompt_id}/pasted" in str(p) for p in copies)
    assert any(p.read_bytes() == png_bytes((1, 2, 3)) for p in copies)
    history = call(server, "own", cookies, "GET", "/api/history?max_items=64").json()
    image = history[str(job.prompt_id)]["outputs"]["3"]["images"][0]
    query = f"filename={quote(image['filename'])}&subfolder={quote(image['subfolder'])}&type=output"
    view = call(server, "own", cookies, "GET", f"/api/view?{query}")
    assert view.status_code == 200 and view.content.startswith(b"\x89PNG")
    # Ranges pass through the seat frontend (video scrubbing), and a reload revalidates with the ETag.
    part = call(server, "own", cookies, "GET", f"/api/view?{query}", headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == view.content[:10]
    assert part.headers["Content-Range"] == f"bytes 0-9/{len(view.content)}"
    again = call(server, "own", cookies, "GET", f"/api/view?{query}", headers={"If-None-Match": view.headers["ETag"]})
    assert again.status_code == 304
    # Seat B never sees seat A's output, even by its exact name.
    other = call(server, "same_workshop", cookies, "GET", f"/api/view?{query}")
    assert other.status_code == 403
    # Newer frontends' queue panel and job history: ComfyUI's Jobs API, relayed to the hub with its query.
    listed = call(server, "own", cookies, "GET", "/api/jobs?status=completed,failed,cancelled&limit=64&offset=0")
    [entry] = listed.json()["jobs"]
    assert entry["id"] == str(job.prompt_id) and entry["preview_output"]["filename"] == image["filename"]
    detail = call(server, "own", cookies, "GET", f"/api/jobs/{job.prompt_id}").json()
    assert detail["outputs"]["3"]["images"][0] == image
    # A job id with a "?" stays one path part on the way to the hub: not found, not the list.
    odd = call(server, "own", cookies, "GET", "/api/jobs/x%3Fstatus=completed")
    assert (odd.status_code, odd.json()) == (404, {"error": "Job not found"})


def test_templates_fill_the_workflow_list_without_overwriting_edits(seat_server, personas, tmp_path):
    from workshops.models import WorkflowTemplate
    from workshops.seat_frontend.app import sync_templates
    from workshops.seat_frontend.files import SeatFiles

    server, _cookies = seat_server
    template = WorkflowTemplate.objects.create(name="Flux", workflow={"nodes": [], "v": 1})
    personas.workshop.templates.add(template)
    personas.workshop.default_template = template
    personas.workshop.save()
    info = requests.get(
        f"{server.config.hub_url}/api/hub/seat",
        headers={"Authorization": f"Bearer {server.config.token}"},
        timeout=5,
    ).json()
    assert info["default_template"] == "Flux.json"
    # A folder of its own: adding the template tells the running seat, which syncs its own folder meanwhile.
    files = SeatFiles(tmp_path / "synced")
    assert sync_templates(files, info["templates"]) == ["Flux.json"]
    path = files.user_dir / "workflows" / "Flux.json"
    assert json.loads(path.read_text())["v"] == 1
    # A new version replaces an untouched copy…
    info["templates"][0]["workflow"]["v"] = 2
    assert sync_templates(files, info["templates"]) == ["Flux.json"]
    # …but never the participant's own edit.
    path.write_text('{"edited": true}')
    info["templates"][0]["workflow"]["v"] = 3
    assert sync_templates(files, info["templates"]) == []
    assert json.loads(path.read_text()) == {"edited": True}


def test_the_templates_browser_lists_the_workshops_templates_and_opens_them(seat_server, personas):
    """ComfyUI's own Templates browser (``/templates/index.json``, then ``/templates/<name>.json``), filled from the
    workshop's templates, as the comfyui-workflow-templates package fills a stock ComfyUI's."""
    from workshops.models import WorkflowTemplate
    from workshops.seat_frontend.app import refresh_seat

    server, cookies = seat_server
    assert call(server, "own", cookies, "GET", "/templates/index.json").json() == []
    flux = WorkflowTemplate.objects.create(name="Flux (text to image)", description="Fast", workflow={"v": 1})
    ltx = WorkflowTemplate.objects.create(name="ltx video", workflow={"v": 2})
    personas.workshop.templates.add(flux, ltx)
    server.run(refresh_seat(server.app))  # what the hub's "templates changed" message makes the seat do
    [module] = call(server, "own", cookies, "GET", "/templates/index.json").json()
    assert (module["moduleName"], module["title"]) == ("default", personas.workshop.title)
    assert [(t["title"], t["description"], t["mediaType"]) for t in module["templates"]] == [
        ("Flux (text to image)", "Fast", "image"),
        ("ltx video", "", "image"),
    ]
    for entry, workflow in zip(module["templates"], ({"v": 1}, {"v": 2}), strict=True):
        opened = call(server, "own", cookies, "GET", f"/templates/{quote(entry['name'])}.json")
        assert (opened.status_code, opened.json()) == (200, workflow)
    # Each card's picture (the browser asks for "<name>-1.<mediaSubtype>") is drawn from the template, escaped.
    ltx.name = 'ltx <img src=x onerror=alert(1)> & "video"'
    ltx.workflow = {"nodes": [{"id": 1, "type": "SaveVideo"}, {"id": 2, "type": "LTXVConditioning"}]}
    ltx.save()
    server.run(refresh_seat(server.app))
    [module] = call(server, "own", cookies, "GET", "/templates/index.json").json()
    cards = {t["title"]: t for t in module["templates"]}
    card = cards[ltx.name]
    picture = call(server, "own", cookies, "GET", f"/templates/{quote(card['name'])}-1.{card['mediaSubtype']}")
    assert picture.status_code == 200 and picture.headers["Content-Type"].startswith("image/svg+xml")
    assert "default-src 'none'" in picture.headers["Content-Security-Policy"]
    assert "<img" not in picture.text and "&lt;img src=x" in picture.text and "video · 2 nodes" in picture.text
    assert call(server, "own", cookies, "GET", "/templates/index_logo.json").json() == {}
    # The instructor's picture of a template (PNG, JPEG or WebP) is its card instead, fetched from the hub.
    from workshops.services import set_thumbnail

    set_thumbnail(flux, png_bytes())
    server.run(refresh_seat(server.app))
    [module] = call(server, "own", cookies, "GET", "/templates/index.json").json()
    cards = {t["title"]: t for t in module["templates"]}
    assert (cards[flux.name]["mediaSubtype"], cards[ltx.name]["mediaSubtype"]) == ("png", "svg")
    picture = call(server, "own", cookies, "GET", f"/templates/{quote(cards[flux.name]['name'])}-1.png")
    assert (picture.status_code, picture.headers["Content-Type"], picture.content) == (200, "image/png", png_bytes())
    assert call(server, "own", cookies, "GET", f"/templates/{quote(cards[flux.name]['name'])}-1.jpg").status_code == 404
    for missing in (
        "/templates/nothing.json",
        "/templates/index.fr.json",
        "/templates/nothing-1.svg",
        f"/templates/{quote(card['name'])}-2.svg",
    ):
        assert call(server, "own", cookies, "GET", missing).status_code == 404, missing
    # Only the seat's participant (and staff) see them.
    assert call(server, "same_workshop", cookies, "GET", "/templates/index.json").status_code == 403


def test_the_assets_sidebar_lists_the_seats_own_uploads_newest_first(seat_server):
    """``/internal/files/{type}``, as ComfyUI's internal routes answer it (the "Imported" tab of newer frontends)."""
    server, cookies = seat_server
    for name in ("first.png", "second.png"):
        answer = call(
            server, "own", cookies, "POST", "/api/upload/image", files={"image": (name, png_bytes(), "image/png")}
        )
        assert answer.status_code == 200, answer.text
        time.sleep(0.02)
    (server.config.data_dir / "input" / ".hidden.png").write_bytes(png_bytes())
    listed = call(server, "own", cookies, "GET", "/internal/files/input").json()
    assert listed[:2] == ["second.png", "first.png"] and ".hidden.png" not in listed
    assert call(server, "own", cookies, "GET", "/internal/files/output").json() == []
    wrong = call(server, "own", cookies, "GET", "/internal/files/models")
    assert (wrong.status_code, wrong.json()) == (400, {"error": "Invalid directory type"})
    assert call(server, "same_workshop", cookies, "GET", "/internal/files/input").status_code == 403


def test_seat_ids_come_from_the_token_never_from_the_body(seat_server, personas):
    server, cookies = seat_server
    body = {"prompt": TINY, "client_id": "x", "seat": personas.seat_b.label, "seat_id": personas.seat_b.pk}
    answer = call(server, "own", cookies, "POST", "/api/prompt", json=body)
    assert Job.objects.get(prompt_id=answer.json()["prompt_id"]).seat_id == personas.seat_a.pk
    assert not Job.objects.filter(seat=Seat.objects.get(pk=personas.seat_b.pk)).exists()


# --- The same matrix through a real nginx, as production runs it ------------------------------------------


@pytest.fixture
def via_nginx(transactional_db, live_server, personas, tmp_path):
    """nginx (rendered by render_nginx) in front of the live hub and seat A's frontend under /user001/."""
    from tests.real_nginx import RealNginx, free_port, require_nginx
    from workshops.management.commands.render_nginx import write_self_signed_certificate
    from workshops.nginx import NginxSeat, NginxSite, render_nginx

    require_nginx()
    token = personas.seat_a.issue_token()
    server = SeatServerThread(seat_config(live_server.url, token, tmp_path / "seat", base_path="/user001/")).start()
    cert, key = write_self_signed_certificate(tmp_path, "127.0.0.1")
    https = free_port()
    site = NginxSite(
        server_name="localhost",
        workshop="ws1",
        hub=f"127.0.0.1:{live_server.thread.port}",
        seats=[NginxSeat("user001", f"127.0.0.1:{server.config.port}")],
        tls_certificate=str(cert),
        tls_certificate_key=str(key),
        max_upload_mb=1,
        static_root=None,
        acme_webroot=None,
        listen_http=free_port(),
        listen_https=https,
        auth_cache_dir=str(tmp_path / "auth-cache"),
    )
    nginx = RealNginx(tmp_path / "nginx").write(render_nginx(site)).start(https)
    cookies = persona_cookies(personas)

    def through(who: str, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Cookie": cookies[who]} if cookies[who] else {}
        headers.update(kwargs.pop("headers", {}))
        return requests.request(
            method,
            f"https://127.0.0.1:{https}/user001{path}",
            headers=headers,
            verify=False,
            timeout=10,
            allow_redirects=False,
            **kwargs,
        )

    yield server, through, cookies
    nginx.stop()
    server.stop()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
@pytest.mark.parametrize("who", ["same_workshop", "other_workshop", "anonymous"])
def test_nobody_else_reaches_a_seat_through_nginx(via_nginx, who):
    server, through, _cookies = via_nginx
    root = _seed(server)
    for method, path, kwargs in ENDPOINTS:
        response = through(who, method, path, **kwargs)
        expected = {302} if who == "anonymous" else {403}
        assert response.status_code in expected, (who, method, path, response.status_code, response.text[:200])
        assert "mine" not in response.text
        if who == "anonymous":
            assert response.headers["Location"].startswith("/login/?next=/user001")
    assert (root / "user" / "workflows" / "secret.json").read_text() == '{"mine": true}'
    assert sorted(p.name for p in (root / "user" / "workflows").iterdir()) == ["secret.json"]
    assert not Job.objects.exists()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
@pytest.mark.parametrize("who", ["own", "staff"])
def test_the_seat_works_through_nginx_with_encoded_paths_and_its_socket(via_nginx, who):
    import websocket

    server, through, cookies = via_nginx
    page = through(who, "GET", "/", headers={"Accept": "text/html"})
    assert page.status_code == 200 and '<div id="vue-app">' in page.text
    saved = through(
        who, "POST", "/api/userdata/workflows%2Fsub%2Fa%20b.json?overwrite=false&full_info=true", data=b"{}"
    )
    assert saved.status_code == 200 and saved.json()["path"] == "workflows/sub/a b.json"
    assert through(who, "GET", "/api/userdata/workflows%2Fsub%2Fa%20b.json").json() == {}
    assert (server.config.data_dir / "user" / "workflows" / "sub" / "a b.json").exists()
    https = through(who, "GET", "/").url.split("/")[2]
    ws = websocket.create_connection(
        f"wss://{https}/user001/ws?clientId=tab-9",
        header=[f"Cookie: {cookies[who]}"],
        sslopt={"cert_reqs": 0},
        timeout=10,
    )
    try:
        first = json.loads(ws.recv())
        assert first["type"] == "status" and first["data"]["sid"] == "tab-9"
    finally:
        ws.close()


def test_the_model_library_lists_what_the_backend_has(seat_server, sim):
    server, cookies = seat_server
    requests.post(f"{sim.url}/simulator/config", json={"models": ["flux-2-klein-4b.safetensors"]}, timeout=5)
    folders = call(server, "own", cookies, "GET", "/api/experiment/models").json()
    assert {"name": "checkpoints", "folders": []} in folders  # no server paths are shown
    info = requests.get(f"{sim.url}/object_info", timeout=5).json()
    expected = info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    files = call(server, "own", cookies, "GET", "/api/experiment/models/checkpoints").json()
    assert [f["name"] for f in files] == expected and "flux-2-klein-4b.safetensors" in expected
    assert call(server, "own", cookies, "GET", "/api/experiment/models/nonsense").status_code == 404


# --- Uploads and served files never carry active content ----------------------------------------------------

POLYGLOT = png_bytes() + b"<html><script>fetch('/api/prompt', {method: 'POST'})</script></html>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(document.cookie)"><script>alert(1)</script></svg>'
HTML = b"<!doctype html><html><body><script>alert(document.cookie)</script></body></html>"


def upload(server, cookies, name: str, body: bytes, content_type: str = "text/html", **data) -> requests.Response:
    files = {"image": (name, body, content_type)}
    return call(server, "own", cookies, "POST", "/api/upload/image", files=files, data=data or None)


def assert_not_active(response: requests.Response) -> None:
    """What /api/view may answer for a file that is not media: bytes to save, never a page."""
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert "sandbox" in response.headers["Content-Security-Policy"]


def test_a_png_html_polyglot_is_stored_as_the_png_it_is(seat_server):
    server, cookies = seat_server

    answer = upload(server, cookies, "poly.html", POLYGLOT)

    assert answer.status_code == 200, answer.text
    assert answer.json() == {"name": "poly.png", "subfolder": "", "type": "input"}
    assert sorted(p.name for p in (server.config.data_dir / "input").iterdir()) == ["poly.png"]
    kept = SeatInput.objects.get()
    assert (kept.name, kept.content_type) == ("poly.png", "image/png")  # not the browser's text/html
    view = call(server, "own", cookies, "GET", "/api/view?filename=poly.png&type=input")
    assert view.status_code == 200 and view.content == POLYGLOT
    assert view.headers["Content-Type"] == "image/png"
    assert view.headers["X-Content-Type-Options"] == "nosniff"
    assert call(server, "own", cookies, "GET", "/api/view?filename=poly.html&type=input").status_code == 404


@pytest.mark.parametrize(
    ("name", "body"), [("drawing.svg", SVG), ("drawing.png", SVG), ("page.html", HTML), ("page.png", HTML)]
)
def test_svg_and_html_uploads_are_refused_whatever_their_name(seat_server, name, body):
    server, cookies = seat_server

    answer = upload(server, cookies, name, body, content_type="image/png")

    assert answer.status_code == 400
    assert answer.json()["error"]["message"].startswith("This file cannot be uploaded: only images (PNG")
    assert "cannot be uploaded" in answer.reason  # what ComfyUI's upload toast shows
    assert list((server.config.data_dir / "input").iterdir()) == []
    assert not SeatInput.objects.exists()


def test_files_already_on_disk_are_served_by_their_bytes_never_as_pages(seat_server):
    server, cookies = seat_server
    inputs = server.config.data_dir / "input"
    (inputs / "x.html").write_bytes(HTML)
    (inputs / "x.svg").write_bytes(SVG)
    (inputs / "old.html").write_bytes(POLYGLOT)  # an upload from before the check, with its HTML name

    for name in ("x.html", "x.svg"):
        response = call(server, "own", cookies, "GET", f"/api/view?filename={name}&type=input")
        assert response.status_code == 200 and response.content.startswith(b"<")
        assert_not_active(response)
    old = call(server, "own", cookies, "GET", "/api/view?filename=old.html&type=input")
    assert old.headers["Content-Type"] == "image/png" and old.headers["X-Content-Type-Options"] == "nosniff"


def test_userdata_a_participant_wrote_is_never_served_as_a_page(seat_server):
    server, cookies = seat_server
    assert call(server, "own", cookies, "POST", "/api/userdata/workflows%2Fx.html", data=HTML).status_code == 200
    call(server, "own", cookies, "POST", "/api/userdata/workflows%2Fa.json", data=b'{"v": 1}')

    page = call(server, "own", cookies, "GET", "/api/userdata/workflows%2Fx.html")
    workflow = call(server, "own", cookies, "GET", "/api/userdata/workflows%2Fa.json")

    assert page.content == HTML
    assert_not_active(page)
    assert workflow.json() == {"v": 1} and workflow.headers["Content-Type"].startswith("application/json")


def test_the_hubs_refusal_and_its_reason_reach_the_browser(seat_server, settings):
    server, cookies = seat_server
    settings.SEAT_FRONTENDS = {**settings.SEAT_FRONTENDS, "MAX_UPLOAD_MB": 0}  # the hub's limit, not the seat's

    answer = upload(server, cookies, "photo.png", png_bytes(), content_type="image/png")

    assert answer.status_code == 413
    assert answer.json()["error"]["message"] == "The file is larger than 0 MB."
    assert answer.reason == "The file is larger than 0 MB."
    assert list((server.config.data_dir / "input").iterdir()) == []


def test_a_refused_upload_leaves_an_identical_earlier_one_in_place(seat_server, settings):
    """The same file uploaded again while the hub refuses it: the participant's earlier copy, which a workflow
    may already use, stays; only what this upload wrote is taken back."""
    server, cookies = seat_server
    image = png_bytes((1, 2, 3))
    assert upload(server, cookies, "kept.png", image, content_type="image/png").status_code == 200
    settings.SEAT_FRONTENDS = {**settings.SEAT_FRONTENDS, "MAX_UPLOAD_MB": 0}

    assert upload(server, cookies, "kept.png", image, content_type="image/png").status_code == 413
    assert upload(server, cookies, "kept.png", png_bytes((9, 9, 9)), content_type="image/png").status_code == 413

    assert sorted(p.name for p in (server.config.data_dir / "input").iterdir()) == ["kept.png"]
    assert (server.config.data_dir / "input" / "kept.png").read_bytes() == image


# --- Only this very origin may change a seat ----------------------------------------------------------------

CHANGES = [
    ("POST", "/api/settings/Comfy.X", {"data": b"1"}),
    ("POST", "/api/userdata/workflows%2Fx.json", {"data": b"{}"}),
    ("DELETE", "/api/userdata/workflows%2Fsecret.json", {}),
    ("POST", "/api/prompt", {"json": {"prompt": TINY, "client_id": "x"}}),
    ("POST", "/api/upload/image", {"files": {"image": ("in.png", png_bytes(), "image/png")}}),
]


def _origin(server: SeatServerThread) -> str:
    return f"http://127.0.0.1:{server.config.port}"


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://127.0.0.1:8102"},  # another seat: same host, another port
        {"Origin": "https://127.0.0.1:{port}"},  # same host and port, another scheme
        {"Origin": "null"},  # a sandboxed page or a file: URL
        {"Sec-Fetch-Site": "same-site"},  # the browser says: another origin of this site
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-site"},
    ],
)
def test_a_change_from_any_other_origin_is_refused(seat_server, headers):
    server, cookies = seat_server
    root = _seed(server)
    headers = {k: v.format(port=server.config.port) for k, v in headers.items()}

    for method, path, kwargs in CHANGES:
        response = call(server, "own", cookies, method, path, headers=headers, **kwargs)
        assert response.status_code == 403, (method, path, response.status_code)
        assert response.json()["error"]["type"] == "cross_site"
    assert (root / "user" / "workflows" / "secret.json").exists()
    assert sorted(p.name for p in (root / "user" / "workflows").iterdir()) == ["secret.json"]
    assert "Comfy.X" not in (root / "user" / "comfy.settings.json").read_text()
    assert not Job.objects.exists() and not SeatInput.objects.exists()


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"},
        {"Origin": "http://127.0.0.1:{port}"},
        {"Sec-Fetch-Site": "same-origin"},
        {},  # not a browser page: the hub, curl
        # Behind nginx: the origin the browser saw is the one nginx forwards, port included.
        {
            "Origin": "https://workshop.example:8443",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "workshop.example:8443",
        },
        {"Origin": "https://workshop.example", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "workshop.example"},
    ],
)
def test_a_change_from_this_very_origin_passes(seat_server, headers):
    server, cookies = seat_server
    headers = {k: v.format(port=server.config.port) for k, v in headers.items()}

    response = call(server, "own", cookies, "POST", "/api/settings/Comfy.X", data=b"1", headers=headers)

    assert response.status_code == 200
    assert call(server, "own", cookies, "GET", "/api/settings/Comfy.X").json() == 1


def test_behind_nginx_another_port_of_the_same_host_is_another_origin(seat_server):
    server, cookies = seat_server
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "workshop.example:8443"}
    for origin in ("https://workshop.example", "https://workshop.example:8101", "http://workshop.example:8443"):
        response = call(
            server, "own", cookies, "POST", "/api/settings/Comfy.X", data=b"1", headers={**forwarded, "Origin": origin}
        )
        assert response.status_code == 403, origin


def test_the_socket_opens_only_for_this_very_origin(seat_server):
    import websocket

    server, cookies = seat_server
    url = f"ws://127.0.0.1:{server.config.port}/ws?clientId=tab-1"
    cookie = [f"Cookie: {cookies['own']}"]
    for origin in ("http://127.0.0.1:8102", "null", "http://evil.example"):
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(url, header=cookie, origin=origin, timeout=10)
        assert refused.value.status_code == 403, origin
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(url, header=[*cookie, "Sec-Fetch-Site: same-site"], origin=_origin(server))
    ws = websocket.create_connection(
        url, header=[*cookie, "Sec-Fetch-Site: same-origin"], origin=_origin(server), timeout=10
    )
    try:
        assert json.loads(ws.recv())["type"] == "status"
    finally:
        ws.close()


# --- Framing and sniffing headers on every answer -----------------------------------------------------------


def test_every_answer_of_a_seat_refuses_framing_and_sniffing(seat_server):
    server, cookies = seat_server
    _seed(server)
    page = call(server, "own", cookies, "GET", "/", headers={"Accept": "text/html"})
    asset = re.findall(r'"\./(assets/[^"]+)"', page.text)[0]
    answers = [
        page,
        call(server, "own", cookies, "GET", f"/{asset}"),
        call(server, "own", cookies, "GET", "/extensions/comfyume/status.js"),
        call(server, "own", cookies, "GET", "/api/settings"),
        call(server, "own", cookies, "GET", "/api/view?filename=mine.png&type=input"),
        call(server, "own", cookies, "GET", "/api/no/such/thing"),  # 404
        call(server, "own", cookies, "GET", "/api/userdata/workflows%2F%00.json"),  # 400
        call(server, "anonymous", cookies, "GET", "/api/settings"),  # 401
        call(server, "same_workshop", cookies, "GET", "/", headers={"Accept": "text/html"}),  # 403 page
        call(server, "own", cookies, "POST", "/api/settings/X", data=b"1", headers={"Origin": "null"}),  # 403
        call(server, "own", cookies, "GET", "/comfyume/health"),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 200, 404, 400, 401, 403, 403, 200]
    for answer in answers:
        assert_framing_headers(answer)
    # The file view keeps its own sandbox and still refuses framing.
    assert "sandbox" in answers[4].headers["Content-Security-Policy"]


# --- Names from a request: a clear 400, never a 500 ----------------------------------------------------------


@pytest.mark.parametrize(
    # (requests sends a newline in a file name as %0A, as browsers do: the paths below test raw ones)
    "name",
    ["a\x00b.png", "tab\tbed.png", "esc\x1b.png", "bell\x07.png", "x" * 300 + ".png", "sub/x.png"],
)
def test_an_upload_with_an_unusable_name_gets_a_clear_400(seat_server, name):
    server, cookies = seat_server

    answer = upload(server, cookies, name, png_bytes(), content_type="image/png")

    assert answer.status_code == 400, answer.text
    assert set(answer.json()) == {"error", "node_errors"} and answer.json()["error"]["message"]
    assert list((server.config.data_dir / "input").iterdir()) == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/userdata/workflows%2Fa%00b.json"),
        ("POST", "/api/userdata/workflows%2Fa%01b.json"),
        ("POST", "/api/userdata/workflows%2F" + "x" * 300 + ".json"),
        ("GET", "/api/userdata/workflows%2F" + "x" * 300 + ".json"),
        ("DELETE", "/api/userdata/workflows%2F" + "x" * 300 + ".json"),
        ("POST", "/api/userdata/workflows%2Fa.json/move/workflows%2F" + "y" * 300 + ".json"),
        ("GET", "/api/userdata?dir=workflows%2F%00"),
        ("GET", "/api/view?filename=a%00.png&type=input"),
        ("GET", "/api/view?filename=" + "x" * 300 + ".png&type=input"),
        ("GET", "/api/view?filename=a.png&subfolder=sub%0Adir&type=input"),
        ("GET", "/api/view?filename=&type=input"),
        ("GET", "/api/view?filename=a%00.png&type=output"),
    ],
)
def test_unusable_names_anywhere_get_a_clear_400(seat_server, method, path):
    server, cookies = seat_server
    call(server, "own", cookies, "POST", "/api/userdata/workflows%2Fa.json", data=b"{}")

    response = call(server, "own", cookies, method, path, data=b"{}" if method == "POST" else None)

    assert response.status_code == 400, (path, response.status_code, response.text[:200])
    assert response.json()["error"]["message"]


def test_a_stopping_seat_closes_its_browser_sockets_at_once(transactional_db, live_server, personas, tmp_path):
    """A seat restarted (new hub address, an instructor's restart) tells open tabs it is going away instead of
    waiting for each socket to end by itself (aiohttp's shutdown waits up to a minute)."""
    import websocket

    server = SeatServerThread(seat_config(live_server.url, personas.seat_a.issue_token(), tmp_path / "seat")).start()
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{server.config.port}/ws?clientId=tab1",
        cookie=session_cookie(personas.seat_a.participant),
        timeout=15,
    )
    assert json.loads(ws.recv())["type"] == "status"
    server.stop()  # waits 10 s at most for the server's cleanup
    opcode, frame = ws.recv_data_frame(True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(frame.data[:2], "big") == 1001  # going away
    ws.close()


def test_the_seats_feature_flags_are_a_stock_servers_without_extensions(seat_server):
    """``/api/features`` and the socket's answer to the frontend's ``feature_flags``: previews with metadata, the
    upload limit, no manager, and ComfyUI's sign-in switch at its default (off): no comfy.org sign-in in a seat."""
    server, cookies = seat_server
    limit = server.config.max_upload_bytes
    expected = {"supports_preview_metadata": True, "max_upload_size": limit, "show_signin_button": False}
    assert call(server, "own", cookies, "GET", "/api/features").json() == expected
    import websocket

    from workshops.seat_frontend.app import EVENTS

    url = f"ws://127.0.0.1:{server.config.port}/ws?clientId=tab-1"
    socket = websocket.create_connection(url, header=[f"Cookie: {cookies['own']}"], timeout=10)
    try:
        assert json.loads(socket.recv())["type"] == "status"
        socket.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        assert json.loads(socket.recv()) == {"type": "feature_flags", "data": expected}
        assert "tab-1" in server.app[EVENTS].metadata_sockets
    finally:
        socket.close()


def test_a_models_metadata_is_not_here_as_in_a_comfyui_without_the_file(seat_server):
    """``/api/view_metadata/{folder}``: the models are on the GPUs, so a bare 404, as a stock ComfyUI answers for a
    file it does not have (the model library then shows no details)."""
    server, cookies = seat_server
    missing = call(server, "own", cookies, "GET", "/api/view_metadata/checkpoints?filename=flux.safetensors")
    assert (missing.status_code, missing.content) == (404, b"")


def test_a_template_picture_is_only_for_seats_of_its_workshops(client, personas):
    """``GET /api/hub/templates/<id>/thumbnail``: a seat's token, and only a template of its own workshop."""
    from workshops.models import WorkflowTemplate
    from workshops.services import set_thumbnail

    mine, theirs = (
        WorkflowTemplate.objects.create(name="mine", workflow={}),
        WorkflowTemplate.objects.create(name="theirs", workflow={}),
    )
    personas.workshop.templates.add(mine)
    personas.other_workshop.templates.add(theirs)
    for template in (mine, theirs):
        set_thumbnail(template, png_bytes())
    token = personas.seat_a.issue_token()

    def get(template, bearer=token):
        return client.get(f"/api/hub/templates/{template.pk}/thumbnail", HTTP_AUTHORIZATION=f"Bearer {bearer}")

    answer = get(mine)
    assert (answer.status_code, answer["Content-Type"], answer["X-Content-Type-Options"]) == (
        200,
        "image/png",
        "nosniff",
    )
    assert answer.content == png_bytes()
    assert get(theirs).status_code == 404
    assert get(mine, "not-a-token").status_code == 401
    set_thumbnail(mine, None)
    assert get(mine).status_code == 404
