"""A ComfyUI that answers as a recorded one did: it replays a WebSocket capture of ComfyUI 0.12.1
(tests/data/comfyui-0.12.1/ws_capture*.json) for every prompt posted to it, under that prompt's id, to the
posting client's sockets, with the capture's own pacing (shortened). Only what a run needs: /ws, /prompt, /view,
/history, /queue, /interrupt, and the recorded /system_stats. It checks the platform against a newer ComfyUI's
messages (progress_state, execution_success before the final executing, a node error's shape), not against the
simulator's."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import WSMsgType, web

from tests.app_server import AppServer
from tests.recorded import NEWER, load

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e2e5a4a80000000049454e44ae426082"
)


def _answer(body: Any):
    async def handler(request: web.Request) -> web.Response:
        return web.Response() if body is None else web.json_response(body)

    return handler


class RecordedComfyUI:
    def __init__(self, capture: str, *, pace: float = 0.1) -> None:
        self.capture = load(NEWER / capture)
        self.features = load(NEWER / "ws_capture_feature_flags.json")["messages"][1]["data"]
        self.pace = pace  # the recorded gaps are multiplied by this
        self.sockets: dict[str, list[web.WebSocketResponse]] = {}
        self.flags_from: list[dict[str, Any]] = []  # what clients announced
        self.prompts: list[dict[str, Any]] = []
        app = web.Application()
        app.add_routes(
            [
                web.get("/ws", self._ws),
                web.post("/prompt", self._prompt),
                web.get("/view", self._view),
                web.get("/system_stats", _answer(load(NEWER / "system_stats.json"))),
                web.get("/history/{prompt_id}", _answer({})),
                web.get("/queue", _answer({"queue_running": [], "queue_pending": []})),
                web.post("/interrupt", _answer(None)),
                web.post("/queue", _answer(None)),
            ]
        )
        self.server = AppServer(app)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> RecordedComfyUI:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def recorded_types(self) -> list[str]:
        """The capture's message types about its prompt, in order (``status`` is about the queue, not it)."""
        return [m["type"] for m in self.capture["messages"] if "type" in m and m["type"] != "status"]

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId", "")
        self.sockets.setdefault(sid, []).append(ws)
        await ws.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": sid}})
        first = True
        async for msg in ws:
            if msg.type == WSMsgType.TEXT and first:
                data = json.loads(msg.data)
                if data.get("type") == "feature_flags":
                    self.flags_from.append(data.get("data") or {})
                    await ws.send_json({"type": "feature_flags", "data": self.features})
            first = False
        self.sockets[sid].remove(ws)
        return ws

    async def _prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.prompts.append(body)
        prompt_id = body["prompt_id"]
        asyncio.get_running_loop().create_task(self._replay(prompt_id, body.get("client_id", "")))
        return web.json_response({"prompt_id": prompt_id, "number": len(self.prompts), "node_errors": {}})

    async def _replay(self, prompt_id: str, client_id: str) -> None:
        recorded = self.capture["prompt_id"]
        posted = next(i for i, m in enumerate(self.capture["messages"]) if m.get("http") == "POST /prompt")
        last_t = self.capture["messages"][posted]["t"]
        for message in self.capture["messages"][posted + 1 :]:
            await asyncio.sleep(max(0.0, message["t"] - last_t) * self.pace)
            last_t = message["t"]
            text = json.dumps({"type": message["type"], "data": message["data"]}).replace(recorded, prompt_id)
            targets = [ws for group in self.sockets.values() for ws in group]
            if message["type"] != "status":  # ComfyUI sends a prompt's events to its client only
                targets = list(self.sockets.get(client_id, []))
            for ws in targets:
                await ws.send_str(text)

    async def _view(self, request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")


def recorded_outputs(capture: dict[str, Any]) -> list[str]:
    return [
        image["filename"]
        for m in capture["messages"]
        if m.get("type") == "executed"
        for image in m["data"]["output"].get("images", [])
    ]
