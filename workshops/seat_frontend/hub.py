"""Talking to the hub: its API with the seat's token, the session check, and the seat's live events."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from .config import SeatConfig

log = logging.getLogger("comfyume.seat")

# ComfyUI sends execution events only to the socket whose clientId queued the prompt.
EXECUTION_TYPES = {
    "execution_start",
    "execution_cached",
    "executing",
    "progress",
    "progress_state",
    "executed",
    "execution_success",
    "execution_error",
    "execution_interrupted",
}


class HubUnavailable(Exception):
    """The hub did not answer (down, restarting, network)."""


class HubClient:
    def __init__(self, config: SeatConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._plain: aiohttp.ClientSession | None = None

    @property
    def plain_session(self) -> aiohttp.ClientSession:
        """Without the seat's token: for the session check, where the browser's own credentials count."""
        if self._plain is None:
            # No cookie jar: one browser's cookies must never be kept and sent on behalf of another.
            self._plain = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=10, connect=5), cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._plain

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self.config.token}"},
                timeout=aiohttp.ClientTimeout(total=60, connect=5),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def close(self) -> None:
        for session in (self._session, self._plain):
            if session is not None:
                await session.close()

    def url(self, path: str) -> str:
        return f"{self.config.hub_url}{path}"

    async def call(
        self, method: str, path: str, *, params: Any = None, data: Any = None, json_body: Any = None
    ) -> tuple[int, str, bytes]:
        """One hub API call: (status, content type, body)."""
        try:
            async with self.session.request(method, self.url(path), params=params, data=data, json=json_body) as r:
                return r.status, r.content_type, await r.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HubUnavailable(str(exc) or type(exc).__name__) from exc

    async def json(self, path: str, **kwargs: Any) -> Any:
        status, _, body = await self.call("GET", path, **kwargs)
        if status != 200:
            raise HubUnavailable(f"GET {path} answered {status}")
        return json.loads(body)


@dataclass
class Access:
    status: int  # 204 allowed, 401 sign in, 403 someone else's seat, 502 hub unavailable
    user: str = ""


class AccessGate:
    """Asks the hub whether a browser's session may use this seat; answers are cached briefly per session.

    A first page load fires a few hundred requests at once: concurrent checks of the same session share one
    question to the hub (single flight), so the hub is asked once, not once per file.
    """

    def __init__(self, hub: HubClient, ttl: float) -> None:
        self.hub = hub
        self.ttl = ttl
        self._cache: OrderedDict[str, tuple[float, Access]] = OrderedDict()
        self._asking: dict[str, asyncio.Future[Access]] = {}
        self.questions = 0  # how many times the hub was asked (for tests and curiosity)

    async def check(self, request: web.Request) -> Access:
        cookie = request.headers.get("Cookie", "")
        authorization = request.headers.get("Authorization", "")
        if not cookie and not authorization:
            return Access(401)
        key = hashlib.sha256(f"{cookie}\n{authorization}".encode()).hexdigest()
        cached = self._cache.get(key)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        pending = self._asking.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Access] = asyncio.get_running_loop().create_future()
        self._asking[key] = future
        try:
            access = await self._ask(request, cookie, authorization)
            if access.status != 502:
                # Refusals are cached only for a moment, so signing in works at once.
                ttl = self.ttl if access.status == 204 else 1.0
                self._cache[key] = (time.monotonic() + ttl, access)
                while len(self._cache) > 1000:
                    self._cache.popitem(last=False)
            future.set_result(access)
            return access
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            del self._asking[key]
            if future.done() and not future.cancelled():
                future.exception()  # mark a failure as retrieved when nobody else was waiting

    async def _ask(self, request: web.Request, cookie: str, authorization: str) -> Access:
        self.questions += 1
        headers = {
            "X-Comfyume-Seat-Token": self.hub.config.token,
            "X-Original-URI": request.path_qs,
            "X-Original-Method": request.method,
        }
        if cookie:
            headers["Cookie"] = cookie
        if authorization:
            headers["Authorization"] = authorization
        try:
            async with self.hub.plain_session.get(self.hub.url("/auth/seat"), headers=headers) as r:
                status = r.status if r.status in (204, 401, 403) else 502
                return Access(status, r.headers.get("X-Comfyume-User", ""))
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("Session check failed: %s", exc)
            return Access(502)


PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA = 1, 4  # ComfyUI's binary event types
PREVIEW_TYPES = {"image/jpeg": 1, "image/png": 2}  # PREVIEW_IMAGE's image type numbers


def _preview_parts(frame: bytes) -> tuple[str, int, bytes] | None:
    """(prompt id, PREVIEW_IMAGE image type, image) of a PREVIEW_IMAGE_WITH_METADATA frame, else None."""
    if len(frame) < 8 or int.from_bytes(frame[:4], "big") != PREVIEW_IMAGE_WITH_METADATA:
        return None
    length = int.from_bytes(frame[4:8], "big")
    try:
        metadata = json.loads(frame[8 : 8 + length])
    except ValueError:
        return None
    image = frame[8 + length :]
    if not isinstance(metadata, dict) or not image or not isinstance(metadata.get("prompt_id"), str):
        return None
    image_type = PREVIEW_TYPES.get(metadata.get("image_type"))  # type: ignore[arg-type]
    return (metadata["prompt_id"], image_type, image) if image_type else None


class EventRelay:
    """One socket to the hub for the seat; its messages fan out to the browser sockets of this seat."""

    def __init__(self, hub: HubClient) -> None:
        self.hub = hub
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.prompt_clients: OrderedDict[str, str] = OrderedDict()
        self.queue_remaining = 0
        self.connected = asyncio.Event()
        self.listeners: list[Any] = []  # callables(message) for messages the server itself acts on
        self.metadata_sockets: set[str] = set()  # browser sockets that announced supports_preview_metadata

    def remember_prompt(self, prompt_id: str, client_id: str) -> None:
        self.prompt_clients[prompt_id] = client_id
        while len(self.prompt_clients) > 1000:
            self.prompt_clients.popitem(last=False)

    def status_message(self, sid: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": self.queue_remaining}}}
        if sid is not None:
            data["sid"] = sid
        return {"type": "status", "data": data}

    async def deliver(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        raw = message.get("data")
        data: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if kind == "status":
            with contextlib.suppress(TypeError, ValueError):
                self.queue_remaining = int(data["status"]["exec_info"]["queue_remaining"])
        for listener in self.listeners:
            listener(message)
        targets = list(self.sockets.values())
        if kind in EXECUTION_TYPES:
            owner = self.prompt_clients.get(str(data.get("prompt_id", "")))
            if owner in self.sockets:
                targets = [self.sockets[owner]]
        text = json.dumps(message)
        for ws in targets:
            if not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_str(text)

    async def deliver_preview(self, frame: bytes) -> None:
        """A live preview from the hub, ComfyUI's PREVIEW_IMAGE_WITH_METADATA frame (docs/HUB_API.md): to the
        browser socket that queued the prompt it names, and to no other; as it came to a browser that asked for
        preview metadata, else as the plain PREVIEW_IMAGE older frontends draw. A frame naming a prompt this
        seat does not know (queued before a restart) or of another shape is dropped."""
        parsed = _preview_parts(frame)
        if parsed is None:
            return
        prompt_id, image_type, image = parsed
        sid = self.prompt_clients.get(prompt_id, "")
        ws = self.sockets.get(sid)
        if ws is None or ws.closed:
            return
        if sid not in self.metadata_sockets:
            frame = PREVIEW_IMAGE.to_bytes(4, "big") + image_type.to_bytes(4, "big") + image
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_bytes(frame)

    async def run(self) -> None:
        """Keep the hub socket open for the life of the server, reconnecting with backoff."""
        url = self.hub.url("/ws/hub/seat/").replace("http", "ws", 1)
        delay = 0.5
        while True:
            try:
                async with self.hub.session.ws_connect(url, heartbeat=30) as ws:
                    self.connected.set()
                    delay = 0.5
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            with contextlib.suppress(ValueError):
                                await self.deliver(json.loads(msg.data))
                        elif msg.type == aiohttp.WSMsgType.BINARY:
                            await self.deliver_preview(msg.data)
                        elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                            break
                    if ws.close_code == 4401:
                        log.error("The hub refused this seat's token; the seat needs a restart from the admin.")
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("Hub events unavailable (%s); retrying in %.1f s", exc, delay)
            self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
