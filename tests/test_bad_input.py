"""A property of the whole hub: no input in the bad-input corpus gets a 5xx, and every answer to one comes in the
format of the API it was sent to (the hub API's ComfyUI error shape, the GPU callbacks' ``{"error"}``, the
dashboard's ``{"ok": false}``).

Each endpoint that takes a body gets every body of the corpus; each that takes a name, an id or a number from
the URL gets every string of the corpus there. The corpus holds what broke this hub or ComfyUI before: lone
surrogates, NUL bytes, invalid UTF-8, deep nesting, numbers no float can hold, wrong types, traversal.
"""

from __future__ import annotations

import itertools
import json
from urllib.parse import quote

import pytest
from django.test import Client

from gpu_backends.models import GpuBackend
from jobs import callbacks
from jobs.models import Job

pytestmark = pytest.mark.django_db

BODIES: list[bytes] = [
    b"",
    b"{",
    b"null",
    b"[]",
    b'"a string"',
    b"1e999",
    b"\xff\xfe\x00",
    b'{"x": "\xed\xa0\x80"}',  # a surrogate's raw UTF-8 bytes
    b'{"x": "\\ud800"}',
    b'{"\\udfff": 1}',
    b'{"x": "\\u0000"}',
    b"[" * 50_000 + b"]" * 50_000,
    b'{"prompt": {"1": {"class_type": "\\ud800", "inputs": {}}}}',
    b'{"prompt": {"1": null}, "client_id": 5}',
    b'{"prompt": [], "extra_data": "x", "front": "yes", "number": "1"}',
    b'{"delete": [1, null, {"a": []}, "\\u0000", "../../x"], "clear": "yes"}',
    b'{"prompt_id": ["x"], "action": 5, "jobs": "all"}',
    b'{"action": "cancel", "jobs": [1e308, -1, "x", null]}',
    b'{"action": "pause", "extra": ' + b"9" * 5000 + b"}",
    b'{"seq": 1e400, "messages": [{"type": "\\u0000", "data": {"\\ud800": 1}}]}',
    b'{"status": "succeeded", "outputs": {"9": 1}, "files": [{"key": "../../etc/passwd"}]}',
    b'{"filename": "a\\u0000.png", "subfolder": "../..", "size": -1, "sha256": "z"}',
    b'{"key": "/etc/passwd", "upload_id": 1, "parts": [{"number": "1"}]}',
]

STRINGS: list[str] = [
    "",
    "\x00",
    "a\x00b",
    "../../../etc/passwd",
    "/etc/passwd",
    "\\..\\..\\windows",
    "%00",
    "\ud800",
    "ü" * 3000,
    "-1",
    "1e999",
    "99999999999999999999999999",
    "not-a-uuid",
    "00000000-0000-0000-0000-000000000000",
]


def _is_hub_error(answer) -> bool:
    data = answer.json()
    return isinstance(data.get("error"), dict) and isinstance(data["error"].get("message"), str)


def _is_comfyui_error(answer) -> bool:
    """ComfyUI's own error body, as its Jobs API answers (jobs/comfy_jobs.py): ``{"error": "…"}``."""
    return isinstance(answer.json().get("error"), str)


def _check(answer, shape, what: str) -> None:
    assert answer.status_code < 500, f"{what}: {answer.status_code} {answer.content[:300]!r}"
    if answer.status_code >= 400:
        assert answer["Content-Type"].startswith("application/json"), f"{what}: {answer['Content-Type']}"
        assert shape(answer), f"{what}: {answer.content[:300]!r}"


@pytest.fixture
def seat_client(personas) -> Client:
    personas.backend.enabled = False  # jobs stay queued: this is about the answers
    personas.backend.save()
    token = personas.seat_a.issue_token()
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}")


def _url_strings() -> list[str]:
    # A lone surrogate cannot be percent-encoded as UTF-8; the browser would send its raw bytes.
    return [quote(s.encode("utf-8", "surrogatepass"), safe="") for s in STRINGS]


def test_the_hub_apis_bodies(seat_client):
    for path, raw in itertools.product(["prompt", "queue", "interrupt", "history"], BODIES):
        answer = seat_client.post(f"/api/hub/{path}", data=raw, content_type="application/json")
        _check(answer, _is_hub_error, f"POST /api/hub/{path} {raw[:60]!r}")
    for raw in BODIES:
        answer = seat_client.post("/api/hub/comfy/jobs/cancel", data=raw, content_type="application/json")
        _check(answer, _is_comfyui_error, f"POST /api/hub/comfy/jobs/cancel {raw[:60]!r}")
    assert Job.objects.count() == 0


def test_the_hub_apis_names_and_numbers(seat_client):
    for value in _url_strings():
        for url in [
            f"/api/hub/view?filename={value}&subfolder={value}&type=output",
            f"/api/hub/view?filename=a.png&type={value}",
            f"/api/hub/history?max_items={value}",
            f"/api/hub/jobs?limit={value}",
        ]:
            _check(seat_client.get(url), _is_hub_error, f"GET {url[:80]}")
        for name in ("status", "limit", "offset", "sort_by", "sort_order", "workflow_id"):
            url = f"/api/hub/comfy/jobs?{name}={value}"
            _check(seat_client.get(url), _is_comfyui_error, f"GET {url[:80]}")
        if value and "%2F" not in value:  # a path segment
            for method, url in [
                ("get", f"/api/hub/comfy/jobs/{value}"),
                ("post", f"/api/hub/comfy/jobs/{value}/cancel"),
            ]:
                _check(getattr(seat_client, method)(url), _is_comfyui_error, f"{method.upper()} {url[:80]}")
            for method, url in [
                ("get", f"/api/hub/history/{value}"),
                ("get", f"/api/hub/jobs/{value}"),
                ("post", f"/api/hub/jobs/{value}/cancel"),
            ]:
                _check(getattr(seat_client, method)(url), _is_hub_error, f"{method.upper()} {url[:80]}")


@pytest.fixture
def attempt(personas):
    backend = GpuBackend.objects.create(name="verda", kind=GpuBackend.Kind.VERDA, url="https://example.invalid/x")
    job = Job.objects.create(
        workshop=personas.workshop,
        seat=personas.seat_a,
        backend=backend,
        prompt={"1": {"class_type": "X", "inputs": {}}},
        status=Job.Status.RUNNING,
        attempts=1,
    )
    job.backend_prompt_id = str(job.prompt_id)
    job.save(update_fields=["backend_prompt_id"])
    return job, callbacks.issue_token(job)


def _is_callback_error(answer) -> bool:
    return isinstance(answer.json().get("error"), str)


def test_the_gpu_callbacks_bodies(client, attempt):
    job, token = attempt
    base = f"/api/gpu/jobs/{job.prompt_id}/{job.backend_prompt_id}/"
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    for tail, raw in itertools.product(["events", "result", "uploads", "uploads/complete"], BODIES):
        answer = client.post(base + tail, data=raw, content_type="application/json", **auth)
        _check(answer, _is_callback_error, f"POST {tail} {raw[:60]!r}")
    for value in _url_strings():
        if value and "%2F" not in value:
            _check(client.put(base + f"files/{value}", data=b"x", **auth), _is_callback_error, f"PUT files/{value}")
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING  # the views never change the job


def test_the_dashboards_actions(admin_client, personas):
    url = f"/admin/live/{personas.workshop.slug}/act"
    for raw in BODIES:
        answer = admin_client.post(url, data=raw, content_type="application/json")
        _check(
            answer, lambda a: a.json().get("ok") is False and isinstance(a.json().get("message"), str), repr(raw[:60])
        )


def test_the_sign_in_forms(client, personas):
    for value in STRINGS:
        username = value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        for url in ["/login/", "/admin/login/"]:
            answer = client.post(url, {"username": username, "password": username})
            assert answer.status_code < 500, (url, value)
        assert client.get(f"/join/{quote(value.encode('utf-8', 'surrogatepass'), safe='')}/").status_code < 500
    assert json.loads(client.get("/health").content)["status"] in ("ok", "degraded")


@pytest.fixture
def seat(transactional_db, live_server, personas, tmp_path):
    """Seat A's frontend against a live hub, and its participant's session cookie."""
    from tests.seat_server import SeatServerThread, seat_config
    from workshops.tests.test_seat_frontend import session_cookie

    personas.backend.enabled = False
    personas.backend.save()
    server = SeatServerThread(seat_config(live_server.url, personas.seat_a.issue_token(), tmp_path / "seat")).start()
    yield server, session_cookie(personas.seat_a.participant)
    server.stop()


def test_the_seat_frontends_bodies_and_names(seat):
    """The participant's own ComfyUI API: a clear 4xx with a reason, never a 5xx, for every body and name."""
    import requests

    server, cookie = seat
    base = server.url.rstrip("/")

    def send(method: str, path: str, headers: dict | None = None, **kwargs) -> requests.Response:
        headers = {"Cookie": cookie, **(headers or {})}
        return requests.request(method, base + path, headers=headers, timeout=10, **kwargs)

    posts = ["/api/prompt", "/api/queue", "/api/interrupt", "/api/history", "/api/settings", "/api/settings/Comfy.X"]
    for path, raw in itertools.product(posts, BODIES):
        answer = send("POST", path, data=raw, headers={"Content-Type": "application/json"})
        assert answer.status_code < 500 and (answer.ok or answer.content), (path, raw[:60], answer.status_code)
    for value in _url_strings():
        for method, path in [
            ("GET", f"/api/view?filename={value}&subfolder={value}&type=input"),
            ("GET", f"/api/view?filename={value}&type=output"),
            ("GET", f"/api/userdata/{value}"),
            ("POST", f"/api/userdata/workflows%2F{value}"),
            ("DELETE", f"/api/userdata/{value}"),
            ("GET", f"/api/userdata?dir={value}"),
        ]:
            answer = send(method, path, data=b"{}")
            assert answer.status_code < 500, (method, path[:80], answer.status_code, answer.text[:200])
        for text in STRINGS:
            name = text.encode("utf-8", "surrogatepass").decode("latin-1")  # the bytes as they would arrive
            files = {"image": (name, b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image/png")}
            answer = send("POST", "/api/upload/image", files=files, data={"subfolder": name})
            assert answer.status_code < 500, ("upload", name[:40], answer.status_code, answer.text[:200])
