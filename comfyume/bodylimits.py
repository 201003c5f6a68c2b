"""How large a request body the hub accepts, by path, and the 413 each API answers in its own format.

Two layers apply it: ``comfyume.server`` (the web server: daphne's request, refused from its headers before a
byte of the body is read, or cut off as a chunked body passes the limit) and ``comfyume.handlers`` (the same
check at the ASGI boundary, for any server in front). Both decide from the path and the headers alone: no
authentication and no database, so an anonymous request costs nothing more than its headers.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings

MB = 1024 * 1024
# A request with neither a session cookie nor an Authorization header cannot be anyone's: the largest thing it
# may legitimately carry is a form without a CSRF cookie (refused anyway), so 64 KB is generous.
ANONYMOUS_BODY_BYTES = 64 * 1024
# An upload is a multipart form: the file plus its boundaries, its part headers and the 'name' field.
FORM_OVERHEAD_BYTES = 64 * 1024

PROMPT_PATH = "/api/hub/prompt"
INPUTS_PATH = "/api/hub/inputs"
GPU_PREFIX = "/api/gpu/"


@dataclass(frozen=True)
class Refusal:
    """A complete HTTP answer: status, headers and body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def _is_gpu_file_put(path: str) -> bool:
    # /api/gpu/jobs/<prompt_id>/<attempt>/files/<key> (comfyume/urls.py)
    parts = path.split("/", 7)
    return path.startswith(GPU_PREFIX) and len(parts) == 8 and parts[6] == "files"


def path_limit(path: str) -> int:
    """The largest body (bytes) a request to ``path`` may carry, once it has credentials."""
    upload = settings.SEAT_FRONTENDS["MAX_UPLOAD_MB"] * MB
    if path == PROMPT_PATH:
        return settings.COMFYUME["MAX_PROMPT_BYTES"]
    if path == INPUTS_PATH:
        return upload + FORM_OVERHEAD_BYTES
    if _is_gpu_file_put(path):
        return upload
    return settings.COMFYUME["MAX_BODY_BYTES"]


def has_credentials(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether the request carries a cookie or an Authorization header (valid or not: that is checked later)."""
    return any(name.lower() in (b"cookie", b"authorization") for name, _ in headers)


def body_limit(path: str, headers: Iterable[tuple[bytes, bytes]]) -> int:
    """The largest body (bytes) this request may carry: its path's limit, or a small one without credentials."""
    limit = path_limit(path)
    return limit if has_credentials(headers) else min(limit, ANONYMOUS_BODY_BYTES)


def declared_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length header as a number, or None (absent, chunked, or not a number: counted as it comes)."""
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value) if value.strip().isdigit() else None
    return None


def _json(status: int, body: dict) -> Refusal:
    return Refusal(status, [(b"Content-Type", b"application/json")], json.dumps(body).encode())


def refusal(path: str, limit: int, size: int | None) -> Refusal:
    """The 413 for a body over ``limit`` (``size`` bytes, when it was declared) in the format of ``path``'s API:
    the GPU callbacks' ``{"error": ...}``, the hub API's ComfyUI-shaped error, or plain text for pages."""
    if path.startswith(GPU_PREFIX):
        return _json(413, {"error": f"The body is larger than {limit} bytes."})
    if path == PROMPT_PATH:
        from jobs.services import prompt_too_large  # needs Django's apps, which the web server loads later

        rejected = prompt_too_large(size, limit)
        return _json(rejected.status, rejected.body)
    if path.startswith("/api/"):
        from jobs.preflight import error_body

        kind = "upload_too_large" if path == INPUTS_PATH else "body_too_large"
        message = f"The request body is larger than the limit of {limit / MB:.1f} MB."
        return _json(413, error_body(kind, message))
    text = f"413 Content Too Large: this request's body is over the limit of {limit / MB:.1f} MB.\n"
    return Refusal(413, [(b"Content-Type", b"text/plain; charset=utf-8")], text.encode())


async def send_refusal(send: Callable[[Mapping[str, Any]], Awaitable[None]], answer: Refusal) -> None:
    headers = [*answer.headers, (b"Content-Length", str(len(answer.body)).encode()), (b"Connection", b"close")]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})
