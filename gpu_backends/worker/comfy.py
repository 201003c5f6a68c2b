"""An asyncio client for the local ComfyUI (HTTP + WebSocket), as the GPU worker uses it.

The hub's ComfyUI client (``gpu_backends.client``) is synchronous and uses requests; the worker runs several jobs
at once on one event loop, so it has its own, on aiohttp. Every failure is :class:`ComfyError`; a prompt ComfyUI
refused is :class:`ComfyRejected`, carrying ComfyUI's own 400 body unchanged.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from .prompts import PREVIEW_METADATA_FLAGS, FileRef

CHUNK = 256 * 1024
# ComfyUI answers quickly on its own loop even while a node runs; a minute of silence means it is stuck.
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60)
# aiohttp's client pings on this interval, so a ComfyUI that vanished without closing the socket is noticed.
WS_HEARTBEAT = 20.0


class ComfyError(Exception):
    """The local ComfyUI did not do what was asked. ``status``: its HTTP status, when it answered."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ComfyRejected(ComfyError):
    """ComfyUI refused the prompt (400 from ``POST /prompt``); ``payload`` is its body, unchanged."""

    def __init__(self, message: str, payload: Any) -> None:
        super().__init__(message, status=400)
        self.payload = payload


class ComfyClient:
    """Requests to the one ComfyUI next to the worker."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        url = self._url(path)
        try:
            async with self.session.request(method, url, timeout=HTTP_TIMEOUT, **kwargs) as response:
                text = await response.text()
                if response.status >= 400:
                    problem = f"{method} {path} answered {response.status}: {text[:300]}"
                    raise ComfyError(problem, status=response.status)
                return json.loads(text) if text.strip() else None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ComfyError(f"{method} {url} failed: {exc.__class__.__name__}: {exc}") from exc
        except ValueError as exc:
            raise ComfyError(f"{method} {path} answered something that is not JSON") from exc

    async def system_stats(self) -> dict[str, Any]:
        stats = await self._json("GET", "/system_stats")
        if not isinstance(stats, dict):
            raise ComfyError("/system_stats is not a JSON object")
        return stats

    async def relay(self, path: str) -> tuple[int, bytes, str]:
        """A GET passed through unchanged: (status, body, content type)."""
        url = self._url(path)
        try:
            async with self.session.get(url, timeout=HTTP_TIMEOUT) as response:
                return response.status, await response.read(), response.content_type
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ComfyError(f"GET {url} failed: {exc.__class__.__name__}: {exc}") from exc

    async def submit(
        self, prompt: dict[str, Any], *, client_id: str, prompt_id: str, extra_data: dict[str, Any]
    ) -> dict[str, Any]:
        """POST /prompt with our own prompt_id. A 400 is :class:`ComfyRejected` with ComfyUI's body."""
        body = {"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id, "extra_data": extra_data}
        url = self._url("/prompt")
        try:
            async with self.session.post(url, json=body, timeout=HTTP_TIMEOUT) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ComfyError(f"POST {url} failed: {exc.__class__.__name__}: {exc}") from exc
        try:
            answer = json.loads(text)
        except ValueError:
            answer = None
        if status == 400 and answer is not None:
            message = answer.get("error", {}).get("message") if isinstance(answer, dict) else None
            raise ComfyRejected(f"ComfyUI rejected the prompt: {message or text[:200]}", answer)
        if status != 200 or not isinstance(answer, dict):
            raise ComfyError(f"POST /prompt answered {status}: {text[:300]}", status=status)
        return answer

    async def upload_image(self, path: Path, *, filename: str, subfolder: str, content_type: str) -> dict[str, Any]:
        """POST /upload/image (type input, overwrite): ``{name, subfolder, type}`` as ComfyUI stored it."""
        with path.open("rb") as handle:
            form = aiohttp.FormData()
            form.add_field("image", handle, filename=filename, content_type=content_type)
            form.add_field("subfolder", subfolder)
            form.add_field("type", "input")
            form.add_field("overwrite", "true")
            answer = await self._json("POST", "/upload/image", data=form)
        return answer if isinstance(answer, dict) else {}

    async def queue(self) -> dict[str, Any]:
        answer = await self._json("GET", "/queue")
        return answer if isinstance(answer, dict) else {}

    async def is_queued(self, prompt_id: str) -> bool:
        """Running or waiting in ComfyUI's queue (items are ``[number, prompt_id, prompt, extra, outputs]``)."""
        queue = await self.queue()
        return any(
            isinstance(item, list) and len(item) > 1 and item[1] == prompt_id
            for key in ("queue_running", "queue_pending")
            for item in queue.get(key) or []
        )

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of one prompt, or None while ComfyUI has not written it."""
        answer = await self._json("GET", f"/history/{prompt_id}")
        entry = answer.get(prompt_id) if isinstance(answer, dict) else None
        return entry if isinstance(entry, dict) else None

    async def delete_from_queue(self, prompt_id: str) -> None:
        await self._json("POST", "/queue", json={"delete": [prompt_id]})

    async def interrupt(self, prompt_id: str) -> None:
        """Interrupt ``prompt_id`` only if it is the one running (ComfyUI ≥ 0.3.6x reads the body; never
        send an empty body, which interrupts whatever runs, another job included)."""
        await self._json("POST", "/interrupt", json={"prompt_id": prompt_id})

    async def download(self, ref: FileRef, destination: Path) -> tuple[int, str, str]:
        """Stream one file from /view into ``destination``, hashing it on the way: (size, sha256, content type)."""
        params = {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}
        url = self._url("/view")
        digest, size = hashlib.sha256(), 0
        try:
            async with self.session.get(url, params=params, timeout=HTTP_TIMEOUT) as response:
                if response.status != 200:
                    raise ComfyError(f"GET /view {ref.filename} answered {response.status}", status=response.status)
                content_type = response.content_type
                with destination.open("wb") as out:
                    async for chunk in response.content.iter_chunked(CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ComfyError(f"GET /view {ref.filename} failed: {exc.__class__.__name__}: {exc}") from exc
        if content_type in ("", "application/octet-stream"):
            content_type = mimetypes.guess_type(ref.filename)[0] or "application/octet-stream"
        return size, digest.hexdigest(), content_type

    def ws_url(self, client_id: str) -> URL:
        url = URL(self.base_url)
        return (
            url.with_scheme("wss" if url.scheme == "https" else "ws")
            .with_path(url.path.rstrip("/") + "/ws")
            .with_query(clientId=client_id)
        )

    async def connect_ws(self, client_id: str) -> aiohttp.ClientWebSocketResponse:
        """The event socket of ``client_id``: ComfyUI sends a prompt's events only to its client's sockets."""
        try:
            ws = await self.session.ws_connect(
                self.ws_url(client_id),
                heartbeat=WS_HEARTBEAT,
                max_msg_size=0,
                timeout=aiohttp.ClientWSTimeout(ws_close=5),
            )
            # Previews with the node they belong to, as ComfyUI's web frontend asks for them (first message).
            await ws.send_json(PREVIEW_METADATA_FLAGS)
            return ws
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise ComfyError(f"WebSocket to {self.base_url} failed: {exc.__class__.__name__}: {exc}") from exc
