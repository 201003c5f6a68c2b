"""A small stand-in for the hub's callback API (docs/GPU_WORKER.md), on a real port, for the GPU worker's tests.

It records what a worker sends and answers as the hub does: events applied once per seq, in order; uploads
answered with a PUT to itself (like the local store) or, at or above ``multipart_threshold`` bytes, with a
multipart upload whose part URLs point at itself (like presigned R2 parts, ETags quoted as S3 sends them);
files checked against their announced size and sha256; the result kept. Tests steer it: ``cancel`` (answer
``{"cancel": true}``), ``conflict`` (answer 409, as for an ended job), ``fail_events`` (answer 500 that many
times). ``inputs`` are served by plain GET, as presigned URLs are.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.app_server import AppServer

TOKEN = "hub-test-token"


class FakeHub:
    """The hub's side of one or more jobs' callbacks."""

    def __init__(self, *, multipart_threshold: int | None = None, part_size: int = 1024) -> None:
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.lock = threading.Lock()
        # every events call as it came: {"job", "seq", "messages", "status"} (status: what we answered)
        self.posts: list[dict[str, Any]] = []
        self.applied: dict[str, list[dict[str, Any]]] = {}  # job -> messages, each seq applied once
        self.applied_seqs: dict[str, list[int]] = {}
        self.results: dict[str, list[dict[str, Any]]] = {}
        self.upload_requests: list[dict[str, Any]] = []
        self.files: dict[str, bytes] = {}
        self.put_headers: list[dict[str, str]] = []
        self.parts: dict[str, dict[int, bytes]] = {}
        self.multipart_keys: dict[str, str] = {}
        self.completed: list[dict[str, Any]] = []
        self.inputs: dict[str, bytes] = {}
        self.cancel: set[str] = set()
        self.conflict: set[str] = set()
        self.fail_events = 0
        self.previews: dict[str, list[bytes]] = {}  # job -> preview frames as posted
        self.preview_delay = 0.0  # seconds each preview post takes to answer
        self.server = AppServer(self._app())

    # --- for tests ---
    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> FakeHub:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def callback(self, job: str) -> dict[str, str]:
        return {"url": f"{self.url}/jobs/{job}/", "token": TOKEN}

    def add_input(self, name: str, data: bytes, content_type: str = "image/png") -> dict[str, Any]:
        """Serve ``data`` and return the ``inputs`` item of a /run body naming it."""
        self.inputs[name] = data
        return {
            "name": name,
            "url": f"{self.url}/inputs/{name}",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "content_type": content_type,
        }

    def messages(self, job: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.applied.get(job, []))

    def wait_for_message(self, job: str, check: Callable[[dict[str, Any]], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(check(m) for m in self.messages(job)):
                return
            time.sleep(0.02)
        raise AssertionError(f"no such message for {job}: {[m['type'] for m in self.messages(job)]}")

    # --- the callback API ---
    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes(
            [
                web.post("/jobs/{job}/events", self._events),
                web.post("/jobs/{job}/uploads", self._uploads),
                web.post("/jobs/{job}/uploads/complete", self._complete),
                web.put("/jobs/{job}/files/{key:.+}", self._file_put),
                web.post("/jobs/{job}/result", self._result),
                web.post("/jobs/{job}/preview", self._preview),
                web.put("/parts/{upload_id}/{number}", self._part_put),
                web.get("/inputs/{name:.+}", self._input),
            ]
        )
        return app

    def _refusal(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "A valid job token is required."}, status=401)
        if request.match_info["job"] in self.conflict:
            return web.json_response({"error": "The job has already ended.", "cancel": True}, status=409)
        return None

    async def _events(self, request: web.Request) -> web.Response:
        job = request.match_info["job"]
        body = await request.json()
        refusal = self._refusal(request)
        with self.lock:
            post = {"job": job, "seq": body["seq"], "messages": body["messages"]}
            self.posts.append(post)
            if refusal is not None:
                post["status"] = refusal.status
                return refusal
            if self.fail_events > 0:
                self.fail_events -= 1
                post["status"] = 500
                return web.Response(status=500, text="hub failure (test)")
            post["status"] = 200
            seqs = self.applied_seqs.setdefault(job, [])
            if not seqs or body["seq"] > seqs[-1]:
                seqs.append(body["seq"])
                self.applied.setdefault(job, []).extend(body["messages"])
        return web.json_response({"cancel": job in self.cancel})

    async def _preview(self, request: web.Request) -> web.Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        assert request.content_type == "application/octet-stream"
        body = await request.read()
        await asyncio.sleep(self.preview_delay)
        with self.lock:
            self.previews.setdefault(request.match_info["job"], []).append(body)
        return web.json_response({"cancel": False})

    async def _uploads(self, request: web.Request) -> web.Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        job = request.match_info["job"]
        body = await request.json()
        self.upload_requests.append({"job": job, **body})
        key = "/".join(p for p in ("workshops/demo/user001", job, body["subfolder"], body["filename"]) if p)
        if self.multipart_threshold is not None and body["size"] >= self.multipart_threshold:
            upload_id = uuid.uuid4().hex
            self.multipart_keys[upload_id] = key
            count = max(1, math.ceil(body["size"] / self.part_size))
            parts = [{"number": n, "url": f"{self.url}/parts/{upload_id}/{n}"} for n in range(1, count + 1)]
            return web.json_response(
                {"key": key, "multipart": {"upload_id": upload_id, "part_size": self.part_size, "parts": parts}}
            )
        headers = {
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": body["content_type"],
            "X-Comfyume-Sha256": body["sha256"],
            "X-Comfyume-Size": str(body["size"]),
        }
        return web.json_response(
            {"key": key, "method": "PUT", "url": f"{self.url}/jobs/{job}/files/{key}", "headers": headers}
        )

    async def _file_put(self, request: web.Request) -> web.Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        data = await request.read()
        self.put_headers.append(dict(request.headers))
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 != request.headers.get("X-Comfyume-Sha256") or str(len(data)) != request.headers.get(
            "X-Comfyume-Size"
        ):
            return web.json_response({"error": "The file does not match its announced checksum or size."}, status=400)
        key = request.match_info["key"]
        self.files[key] = data
        return web.json_response({"key": key, "size": len(data), "sha256": sha256}, status=201)

    async def _part_put(self, request: web.Request) -> web.Response:
        data = await request.read()
        self.put_headers.append(dict(request.headers))
        self.parts.setdefault(request.match_info["upload_id"], {})[int(request.match_info["number"])] = data
        return web.Response(status=200, headers={"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    async def _complete(self, request: web.Request) -> web.Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        body = await request.json()
        self.completed.append(body)
        parts = self.parts.get(body["upload_id"], {})
        if self.multipart_keys.get(body["upload_id"]) != body["key"]:
            return web.json_response({"error": "unknown upload"}, status=400)
        for part in body["parts"]:
            if hashlib.md5(parts.get(part["number"], b"")).hexdigest() != part["etag"]:
                return web.json_response({"error": f"part {part['number']}: wrong etag"}, status=400)
        data = b"".join(parts[p["number"]] for p in sorted(body["parts"], key=lambda p: p["number"]))
        self.files[body["key"]] = data
        return web.json_response({"key": body["key"], "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})

    async def _result(self, request: web.Request) -> web.Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        self.results.setdefault(request.match_info["job"], []).append(await request.json())
        return web.json_response({"ok": True})

    async def _input(self, request: web.Request) -> web.Response:
        data = self.inputs.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/octet-stream")
