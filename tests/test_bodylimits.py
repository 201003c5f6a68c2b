"""Request bodies: refused by size in each API's own format before anything else, and never held whole in memory.

Three layers: the prompt view reads its body as a stream; the ASGI handler refuses an oversized body before
Django reads it; the web server (``python -m comfyume.server``, a real process) refuses it before reading it at
all and hands what it accepts to the application a chunk at a time.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import requests

from comfyume import bodylimits
from comfyume.asgi import application
from jobs.models import Job
from tests.recorded import TINY_PATH, load

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024
TINY = load(TINY_PATH)


def prompt_of(size: int) -> bytes:
    """A valid prompt body of about ``size`` bytes (the padding is the SaveImage node's filename prefix)."""
    prompt = json.loads(json.dumps(TINY))
    prompt["3"]["inputs"]["filename_prefix"] = "x" * size
    return json.dumps({"prompt": prompt}).encode()


# --- the prompt view: its body read as a stream, its 413 in JSON ----------------------------------------------


@pytest.fixture
def post_prompt(client, personas):
    personas.backend.enabled = False  # jobs stay queued: these tests look at the submission alone
    personas.backend.save()
    token = personas.seat_a.issue_token()

    def _post(raw: bytes):
        return client.post(
            "/api/hub/prompt", data=raw, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
        )

    return _post


@pytest.mark.django_db
@pytest.mark.parametrize("size", [int(2.4 * MB), 3 * MB])
def test_a_prompt_under_the_limit_is_read_whatever_django_would_hold_in_memory(post_prompt, size):
    """Above Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB) request.body answered an HTML 400."""
    response = post_prompt(prompt_of(size))
    assert response.status_code == 200, response.content[:200]
    assert Job.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(("size", "limit"), [(3 * MB, 2 * MB), (20 * MB, None)])
def test_a_prompt_over_the_limit_gets_413_prompt_too_large_in_json(post_prompt, settings, size, limit):
    if limit is not None:
        settings.COMFYUME = {**settings.COMFYUME, "MAX_PROMPT_BYTES": limit}
    with mock.patch("jobs.api.submit_prompt", autospec=True) as submit:
        response = post_prompt(prompt_of(size))
    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["type"] == "prompt_too_large"
    assert "the limit is" in response.json()["error"]["message"]
    submit.assert_not_called()


# --- the ASGI handler: refused before Django reads the body ----------------------------------------------------


class Body:
    """A client's body as the server hands it to the application: counts what the application asked for."""

    def __init__(self, chunk: bytes, chunks: int | None) -> None:
        self.chunk, self.chunks = chunk, chunks  # None: a chunked body that never ends
        self.handed = 0
        self.calls = 0

    async def receive(self) -> dict[str, Any]:
        self.calls += 1
        if self.chunks is not None and self.calls > self.chunks:
            return {"type": "http.disconnect"}
        self.handed += len(self.chunk)
        more = self.chunks is None or self.calls < self.chunks
        return {"type": "http.request", "body": self.chunk, "more_body": more}


async def call(path: str, headers: list[tuple[bytes, bytes]], body: Body) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": [(b"host", b"127.0.0.1"), *headers], "client": ["127.0.0.1", 1],
        "server": ["127.0.0.1", 8000], "scheme": "http", "http_version": "1.1", "asgi": {"version": "3.0"},
    }  # fmt: skip
    await application(scope, body.receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), content


async def test_a_150_mb_anonymous_post_is_refused_without_reading_any_of_it():
    body = Body(b"x" * MB, 150)
    status, headers, content = await call("/", [(b"content-length", str(150 * MB).encode())], body)
    assert status == 413 and headers[b"Content-Type"].startswith(b"text/plain")
    assert body.calls == 0  # the application never asked for a byte
    assert b"Content Too Large" in content


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/api/hub/queue", "hub"),
        ("/api/hub/inputs", "hub"),
        ("/api/gpu/jobs/00000000-0000-0000-0000-000000000000/a/events", "gpu"),
    ],
)
async def test_a_12_mb_body_to_an_api_route_gets_413_in_that_apis_json(path, shape):
    body = Body(b"{" * MB, 12)
    # The token is not checked: the size is refused before any authentication.
    headers = [(b"content-length", str(12 * MB).encode()), (b"authorization", b"Bearer not-checked")]
    if path == "/api/hub/inputs":  # an upload may be 50 MB: 60 MB is over
        body, headers[0] = Body(b"{" * MB, 60), (b"content-length", str(60 * MB).encode())
    status, headers_out, content = await call(path, headers, body)
    assert status == 413 and headers_out[b"Content-Type"] == b"application/json"
    error = json.loads(content)["error"]
    if shape == "hub":
        assert error["type"] in ("body_too_large", "upload_too_large") and error["message"]
    else:
        assert isinstance(error, str) and "larger than" in error
    assert body.calls == 0


async def test_a_20_mb_prompt_is_refused_as_prompt_too_large_before_it_is_read():
    body = Body(b"x" * MB, 20)
    headers = [(b"content-length", str(20 * MB).encode()), (b"authorization", b"Bearer not-checked")]
    status, _, content = await call("/api/hub/prompt", headers, body)
    assert status == 413 and json.loads(content)["error"]["type"] == "prompt_too_large"
    assert body.calls == 0


async def test_a_chunked_body_is_cut_off_at_the_limit():
    body = Body(b"x" * 64 * 1024, None)  # no Content-Length, and it never ends
    status, _, _ = await call("/login/", [(b"cookie", b"csrftoken=x")], body)
    assert status == 413
    limit = bodylimits.path_limit("/login/")
    assert limit < body.handed <= limit + len(body.chunk)


async def test_an_anonymous_request_gets_the_small_limit_everywhere():
    """No cookie and no Authorization: refused by size before authentication would have refused it."""
    body = Body(b"x" * 100 * 1024, 1)
    with mock.patch("jobs.auth.seat_from_token", autospec=True) as seat_from_token:
        status, _, content = await call(
            "/api/hub/inputs", [(b"content-length", str(100 * 1024).encode())], body
        )  # fmt: skip
    assert status == 413 and json.loads(content)["error"]["type"] == "upload_too_large"
    seat_from_token.assert_not_called()


# --- the web server: refused before it is read, and streamed when accepted ---------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def web_server() -> Iterator[str]:
    """``python -m comfyume.server`` in front of tests/body_echo.py, which has no size check of its own."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "comfyume.server", "-b", "127.0.0.1", "-p", str(port), "tests.body_echo:application"],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.post(base, data=b"", timeout=2)
                break
            except requests.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    errors = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                    raise RuntimeError(f"the web server did not start: {errors}") from None
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def _raw_exchange(base: str, head: bytes, body_pieces: Iterator[bytes]) -> tuple[bytes, int]:
    """Send ``head`` and then the pieces until the server answers or closes; (its answer, body bytes sent)."""
    host, port = base.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        for piece in body_pieces:
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break
            except BlockingIOError:
                pass
            try:
                sock.sendall(piece)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        sock.setblocking(True)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer, sent


def test_the_web_server_answers_413_from_the_headers_without_reading_the_body(web_server):
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (150 * MB)
    answer, sent = _raw_exchange(web_server, head, iter([]))
    assert answer.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in answer
    assert b"Content-Type: text/plain" in answer and answer.endswith(b"MB.\n")
    assert sent == 0


def test_the_web_server_cuts_a_chunked_body_off_at_the_limit(web_server):
    head = b"POST /api/hub/prompt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nCookie: a=b\r\n\r\n"
    piece = b"%x\r\n%s\r\n" % (64 * 1024, b"x" * 64 * 1024)

    def pieces() -> Iterator[bytes]:
        for _ in range(1000):  # 64 MB, if nothing stopped it
            yield piece
            time.sleep(0.002)

    answer, sent = _raw_exchange(web_server, head, pieces())
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "prompt_too_large"
    assert sent < 20 * MB  # the limit is 10 MB; the rest of the 64 MB was never taken


def test_an_accepted_40_mb_upload_reaches_the_application_in_chunks_and_costs_little_memory(web_server):
    """Twisted parsed a multipart body into memory whole and daphne queued all of it for the application at once:
    a 49 MB upload grew the web server by ~540 MB."""
    boundary = "b0undary"
    file_bytes = os.urandom(MB) * 40
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="clip.mp4"\r\n'
            "Content-Type: video/mp4\r\n\r\n"
        ).encode()
        + file_bytes
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = requests.post(
        f"{web_server}/api/hub/inputs",
        data=form,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}", "Authorization": "Bearer x"},
        timeout=60,
    )
    del form, file_bytes
    assert response.status_code == 200
    seen = response.json()
    assert seen["total"] > 40 * MB
    assert seen["largest"] <= 64 * 1024
    assert seen["grew_kb"] < 20 * 1024, seen
