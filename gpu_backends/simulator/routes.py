"""ComfyUI's HTTP + WebSocket routes over a :class:`~.engine.Simulator`, plus /simulator/config."""

from __future__ import annotations

import hashlib
import itertools
import json
import mimetypes
import os
import uuid
from typing import Any

from aiohttp import WSMsgType, web

from .config import DATA_DIR, DEVICE_NAME, SERVER_FEATURES, TEXT_500, log
from .engine import Simulator, _annotated

SIM_KEY = web.AppKey("simulator", Simulator)
routes = web.RouteTableDef()


def _sim(request: web.Request) -> Simulator:
    return request.app[SIM_KEY]


def _text_500() -> web.Response:
    return web.Response(status=500, text=TEXT_500, content_type="text/plain")


@routes.get("/")
async def get_root(request: web.Request) -> web.Response:
    return web.Response(
        text="ComfyuME simulator (not a GPU): ComfyUI 0.3.64's API without its frontend.\n"
        "See /system_stats and /simulator/config.\n"
    )


@routes.get("/ws")
async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    sim = _sim(request)
    ws = web.WebSocketResponse(timeout=2.0)
    await ws.prepare(request)
    sid = request.rel_url.query.get("clientId", "") or uuid.uuid4().hex
    sim.sockets.setdefault(sid, []).append(ws)
    try:
        await ws.send_str(json.dumps({"type": "status", "data": {"status": sim.queue_info(), "sid": sid}}))
        for run in sim.running.values():  # on reconnect, ComfyUI tells its client the current node
            if run.client_id == sid and run.last_node is not None:
                await ws.send_str(json.dumps({"type": "executing", "data": {"node": run.last_node}}))
        first = True
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                data = json.loads(msg.data)
            except ValueError:
                log.warning("ComfyUI simulator: invalid JSON from client %s", sid)
                continue
            if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                if isinstance(data.get("data"), dict) and data["data"].get("supports_preview_metadata") is True:
                    sim.metadata_clients.add(sid)
                await ws.send_str(json.dumps({"type": "feature_flags", "data": SERVER_FEATURES}))
            first = False
    finally:
        group = sim.sockets.get(sid, [])
        if ws in group:
            group.remove(ws)
        if not group:
            sim.sockets.pop(sid, None)
            sim.metadata_clients.discard(sid)
    return ws


@routes.get("/system_stats")
async def system_stats(request: web.Request) -> web.Response:
    stats = json.loads((DATA_DIR / "system_stats.json").read_text())
    stats["system"]["comfyui_version"] = "0.3.64"
    stats["devices"][0]["name"] = DEVICE_NAME
    stats["simulator"] = True
    return web.json_response(stats)


@routes.get("/features")
async def get_features(request: web.Request) -> web.Response:
    return web.json_response(SERVER_FEATURES)


@routes.get("/object_info")
async def get_object_info(request: web.Request) -> web.Response:
    return web.Response(body=_sim(request).object_info()[1], content_type="application/json", charset="utf-8")


@routes.get("/object_info/{node_class}")
async def get_object_info_node(request: web.Request) -> web.Response:
    info = _sim(request).object_info()[0]
    node_class = request.match_info["node_class"]
    return web.json_response({node_class: info[node_class]} if node_class in info else {})


@routes.get("/prompt")
async def get_prompt(request: web.Request) -> web.Response:
    return web.json_response(_sim(request).queue_info())


@routes.post("/prompt")
async def post_prompt(request: web.Request) -> web.Response:
    sim = _sim(request)
    cfg = sim.config
    if cfg.http_fail_count > 0:
        cfg.http_fail_count -= 1
        log.warning("ComfyUI simulator: injected HTTP %d for POST /prompt", cfg.http_fail_status)
        return web.Response(
            status=cfg.http_fail_status,
            text=f"ComfyuME simulator: injected HTTP {cfg.http_fail_status} (http_fail_count)",
        )
    log.info("ComfyUI simulator: got prompt")
    from jobs.preflight import PromptValidationError, error_body, validate_prompt  # lazy: standalone import

    try:
        body = await request.json()
    except ValueError:
        return _text_500()
    if not isinstance(body, dict):
        return _text_500()
    if "number" in body:
        try:
            number: float | int = float(body["number"])
        except (TypeError, ValueError):
            return _text_500()
    else:
        number = -sim.number if body.get("front") else sim.number
        sim.number += 1
    if "prompt" not in body:
        return web.json_response(error_body("no_prompt", "No prompt provided", "No prompt provided"), status=400)
    prompt = body["prompt"]
    prompt_id = str(body.get("prompt_id", uuid.uuid4()))
    if not isinstance(prompt, dict):  # ComfyUI's validation crashes on it
        return _text_500()
    try:
        validated = validate_prompt(prompt, sim.object_info()[0])
    except PromptValidationError as exc:
        log.warning("ComfyUI simulator: invalid prompt: %s", exc.body.get("error"))
        return web.json_response(exc.body, status=400)
    except Exception:
        log.exception("ComfyUI simulator: validation crashed")
        return _text_500()
    node_errors = dict(getattr(validated, "node_errors", None) or {})  # of outputs that failed next to valid ones
    outputs, file_errors = sim.check_input_files(prompt, list(validated))
    node_errors.update(file_errors)
    if not outputs:  # details: the failed output nodes' own errors, as ComfyUI summarises them
        own = [
            e
            for node_id, entry in node_errors.items()
            if node_id in entry["dependent_outputs"]
            for e in entry["errors"]
        ]
        details = "\n".join(f"{e['message']}: {e['details']}" for e in own)
        body = error_body(
            "prompt_outputs_failed_validation", "Prompt outputs failed validation", details, None, node_errors
        )
        return web.json_response(body, status=400)
    targets = body.get("partial_execution_targets")
    if isinstance(targets, list):
        outputs = [o for o in outputs if o in targets]
        if not outputs:
            return web.json_response(error_body("prompt_no_outputs", "Prompt has no outputs"), status=400)
    raw_extra = body.get("extra_data")
    extra_data: dict[str, Any] = raw_extra if isinstance(raw_extra, dict) else {}
    if "client_id" in body:
        extra_data["client_id"] = body["client_id"]
    sim.put([number, prompt_id, prompt, extra_data, outputs])
    return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})


@routes.get("/queue")
async def get_queue(request: web.Request) -> web.Response:
    sim = _sim(request)
    return web.json_response(
        {"queue_running": [run.item for run in sim.running.values()], "queue_pending": list(sim.queue)}
    )


@routes.post("/queue")
async def post_queue(request: web.Request) -> web.Response:
    sim = _sim(request)
    try:
        body = await request.json()
    except ValueError:
        return _text_500()
    if body.get("clear"):
        sim.queue = []
        sim.queue_updated()
    for prompt_id in body.get("delete", []):
        sim.delete_pending(prompt_id)
    return web.Response(status=200)


@routes.post("/interrupt")
async def post_interrupt(request: web.Request) -> web.Response:
    sim = _sim(request)
    try:
        body = await request.json()
    except ValueError:
        body = {}
    prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
    for run in sim.running.values():
        if not prompt_id or run.prompt_id == prompt_id:
            log.info("ComfyUI simulator: interrupting %s", run.prompt_id)
            run.interrupt.set()
    return web.Response(status=200)


@routes.get("/history")
async def get_history(request: web.Request) -> web.Response:
    sim = _sim(request)
    query = request.rel_url.query
    try:
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query.get("offset", -1))
    except ValueError:
        return _text_500()
    if offset < 0 and max_items is not None:
        offset = len(sim.history) - max_items
    out = {}
    for index, (prompt_id, entry) in enumerate(sim.history.items()):
        if index >= offset:
            out[prompt_id] = entry
            if max_items is not None and len(out) >= max_items:
                break
    return web.json_response(out)


@routes.get("/history/{prompt_id}")
async def get_history_prompt(request: web.Request) -> web.Response:
    sim = _sim(request)
    prompt_id = request.match_info["prompt_id"]
    return web.json_response({prompt_id: sim.history[prompt_id]} if prompt_id in sim.history else {})


@routes.post("/history")
async def post_history(request: web.Request) -> web.Response:
    sim = _sim(request)
    try:
        body = await request.json()
    except ValueError:
        return _text_500()
    if body.get("clear"):
        sim.history.clear()
    for prompt_id in body.get("delete", []):
        sim.history.pop(prompt_id, None)
    return web.Response(status=200)


@routes.get("/view")
async def view(request: web.Request) -> web.StreamResponse:
    """ComfyUI's /view path rules (400 for ``..`` or absolute names, 403 for escaping subfolders), and
    nothing outside output_dir ever, symlinks included."""
    sim = _sim(request)
    query = request.rel_url.query
    if "filename" not in query:
        return web.Response(status=404)
    filename, base = _annotated(query["filename"], sim.dirs)
    if not filename or filename[0] == "/" or ".." in filename:
        return web.Response(status=400)
    if base is None:
        base = sim.dirs.get(query.get("type", "output"))
        if base is None:
            return web.Response(status=400)
    root = str(base)
    folder = root
    if "subfolder" in query:
        folder = os.path.abspath(os.path.join(root, query["subfolder"]))
        if os.path.commonpath((folder, root)) != root:
            return web.Response(status=403)
    path = os.path.join(folder, os.path.basename(filename))
    if os.path.commonpath((os.path.realpath(path), root)) != root:
        return web.Response(status=403)
    if not os.path.isfile(path):
        return web.Response(status=404)
    content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    if content_type in {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}:
        content_type = "application/octet-stream"
    name = os.path.basename(filename)
    return web.FileResponse(path, headers={"Content-Disposition": f'filename="{name}"', "Content-Type": content_type})


@routes.post("/upload/image")
async def upload_image(request: web.Request) -> web.Response:
    """ComfyUI's image_upload: same answer, same ``name (1).png`` renaming, same-content files reused."""
    sim = _sim(request)
    post = await request.post()
    image = post.get("image")
    kind = str(post.get("type") or "input")
    if kind not in sim.dirs or not isinstance(image, web.FileField) or not image.filename:
        return web.Response(status=400)
    base = str(sim.dirs[kind])
    subfolder = str(post.get("subfolder", ""))
    folder = os.path.join(base, os.path.normpath(subfolder))
    filename = image.filename
    path = os.path.abspath(os.path.join(folder, filename))
    if os.path.commonpath((base, path)) != base or os.path.commonpath((base, os.path.abspath(folder))) != base:
        return web.Response(status=400)
    data = image.file.read()
    os.makedirs(folder, exist_ok=True)
    duplicate = False
    if str(post.get("overwrite")) not in ("true", "1"):
        stem, suffix = os.path.splitext(filename)
        for i in itertools.count(1):
            if not os.path.exists(path):
                break
            with open(path, "rb") as existing:
                if hashlib.sha256(existing.read()).digest() == hashlib.sha256(data).digest():
                    duplicate = True
                    break
            filename = f"{stem} ({i}){suffix}"
            path = os.path.join(folder, filename)
    if not duplicate:
        with open(path, "wb") as out:
            out.write(data)
    return web.json_response({"name": filename, "subfolder": subfolder, "type": kind})


@routes.get("/simulator/config")
async def get_simulator_config(request: web.Request) -> web.Response:
    return web.json_response(_sim(request).config.to_json())


@routes.post("/simulator/config")
async def post_simulator_config(request: web.Request) -> web.Response:
    """Fault injection at run time: POST a JSON object of SimulatorConfig fields to change."""
    sim = _sim(request)
    try:
        changes = await request.json()
        if not isinstance(changes, dict):
            raise ValueError("send a JSON object")
        sim.config.update(changes)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    sim.wakeup.set()
    return web.json_response(sim.config.to_json())
