"""The ``/run`` body (docs/GPU_WORKER.md, "POST /run request"), checked field by field.

:func:`parse_run_request` gives a :class:`RunRequest` or raises :class:`BadRequest`, whose 400 body names the
first bad field, so the hub's log says what it sent wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_HEARTBEAT = 5.0


class BadRequest(Exception):
    """A ``/run`` that cannot run as given: 400, the message naming the field."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.body = {"error": {"type": "bad_request", "message": message}}


@dataclass
class InputSpec:
    """One image the prompt names, fetched by a presigned GET."""

    name: str
    url: str
    size: int
    sha256: str
    content_type: str = "application/octet-stream"


@dataclass
class RunRequest:
    """A checked ``/run`` body."""

    job: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any] = field(default_factory=dict)
    inputs: list[InputSpec] = field(default_factory=list)
    callback_url: str | None = None
    callback_token: str = ""
    heartbeat_seconds: float = DEFAULT_HEARTBEAT
    preview_fps: float = 0.0  # live previews posted to the hub per second, at most (0: none)


def _http_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://")) and len(value) > 8


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _input(index: int, item: Any) -> InputSpec:
    where = f"inputs[{index}]"
    if not isinstance(item, dict):
        raise BadRequest(f"{where} must be an object")
    name = item.get("name")
    if not isinstance(name, str) or any(p in ("", ".", "..") for p in name.split("/")) or set(name) & {"\\", "\x00"}:
        raise BadRequest(f"{where}.name must be a relative file name such as 'photo.png' or 'pasted/photo.png'")
    if not _http_url(item.get("url")):
        raise BadRequest(f"{where}.url must be an http(s) URL")
    if not _whole(item.get("size")) or item["size"] < 0:
        raise BadRequest(f"{where}.size must be a whole number of bytes")
    if not isinstance(item.get("sha256"), str) or not SHA256_HEX.match(item["sha256"].lower()):
        raise BadRequest(f"{where}.sha256 must be 64 hex digits")
    content_type = item.get("content_type", "application/octet-stream")
    if not isinstance(content_type, str) or not content_type:
        raise BadRequest(f"{where}.content_type must be a string")
    return InputSpec(name, item["url"], item["size"], item["sha256"].lower(), content_type)


def parse_run_request(body: Any) -> RunRequest:
    """The ``/run`` body checked field by field; :class:`BadRequest` names the first bad one."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    job = body.get("job")
    if not isinstance(job, str) or not JOB_ID.match(job):
        raise BadRequest("job must be an id of letters, digits, '.', '_' or '-' (at most 128)")
    prompt = body.get("prompt")
    if not isinstance(prompt, dict) or not prompt:
        raise BadRequest("prompt must be a non-empty object (ComfyUI's API format)")
    for node_id, node in prompt.items():
        if not isinstance(node, dict):
            raise BadRequest(f"prompt[{node_id!r}] must be an object")
    extra_data = body.get("extra_data", {})
    if extra_data is None:
        extra_data = {}
    if not isinstance(extra_data, dict):
        raise BadRequest("extra_data must be an object")
    raw_inputs = body.get("inputs", [])
    if raw_inputs is None:
        raw_inputs = []
    if not isinstance(raw_inputs, list):
        raise BadRequest("inputs must be a list")
    inputs = [_input(index, item) for index, item in enumerate(raw_inputs)]
    if len({item.name for item in inputs}) != len(inputs):
        raise BadRequest("inputs name the same file twice")
    request = RunRequest(job=job, prompt=prompt, extra_data=extra_data, inputs=inputs)
    callback = body.get("callback")
    if callback is not None:
        if not isinstance(callback, dict):
            raise BadRequest("callback must be an object {url, token}")
        if not _http_url(callback.get("url")):
            raise BadRequest("callback.url must be an http(s) URL")
        if not isinstance(callback.get("token"), str) or not callback["token"]:
            raise BadRequest("callback.token must be a non-empty string")
        request.callback_url, request.callback_token = callback["url"], callback["token"]
    heartbeat = body.get("heartbeat_seconds", DEFAULT_HEARTBEAT)
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int | float) or not 0.05 <= heartbeat <= 300:
        raise BadRequest("heartbeat_seconds must be a number of seconds between 0.05 and 300")
    request.heartbeat_seconds = float(heartbeat)
    fps = body.get("preview_fps", 0)
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 <= fps <= 30:
        raise BadRequest("preview_fps must be a number of previews per second between 0 and 30")
    request.preview_fps = float(fps)
    return request
