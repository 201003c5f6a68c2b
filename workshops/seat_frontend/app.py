"""The seat frontend's routes: ComfyUI's server API for one seat, as the pinned web frontend calls it.

See ``../shared/fixtures/comfyui-0.3.64/frontend_SUMMARY.md`` for what the frontend requests and which
answers it depends on. Identity never comes from a URL or a body: the middleware asks the hub about the
browser's session for every request except the frontend package's own public files.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import json
import logging
import os
import platform
import textwrap
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from . import frontend_package
from .config import SeatConfig
from .files import FileProblem, SeatFiles
from .hub import AccessGate, EventRelay, HubClient, HubUnavailable
from .media import HEAD_BYTES, NameProblem, check_name, check_path, serving

log = logging.getLogger("comfyume.seat")

COMFYUI_VERSION = "0.3.64"
OUR_STATIC = Path(__file__).resolve().parent / "static"
EXTENSION_URL = "/extensions/comfyume/status.js"
# Only the supervisor's health check skips the session check; every other request, the frontend package's
# own files included, is verified with the hub (cached briefly, one question per session at a time).
# The icon is asked for by every browser tab, signed in or not; nothing about the seat is in it.
PUBLIC_PATHS = {"/comfyume/health", "/favicon.ico"}
# Settings a new seat starts with: no first-run template browser (the workshop's default template opens
# instead) and no calls to comfy.org from a participant's browser.
INITIAL_SETTINGS = {"Comfy.TutorialCompleted": True}

CONFIG: web.AppKey[SeatConfig] = web.AppKey("config", SeatConfig)
FILES: web.AppKey[SeatFiles] = web.AppKey("files", SeatFiles)
HUB: web.AppKey[HubClient] = web.AppKey("hub", HubClient)
GATE: web.AppKey[AccessGate] = web.AppKey("gate", AccessGate)
EVENTS: web.AppKey[EventRelay] = web.AppKey("events", EventRelay)
WEB_ROOT: web.AppKey[Path] = web.AppKey("web_root", Path)
INDEX: web.AppKey[str] = web.AppKey("index", str)
FRONTEND_VERSION: web.AppKey[str] = web.AppKey("frontend_version", str)
TASKS: web.AppKey[list] = web.AppKey("tasks", list)
SEAT_INFO: web.AppKey[dict[str, Any]] = web.AppKey("seat_info", dict)
# The workshop's templates by the name ComfyUI's Templates browser knows them (their file name's stem).
TEMPLATES: web.AppKey[dict[str, dict[str, Any]]] = web.AppKey("templates", dict)
OBJECT_INFO: web.AppKey[dict[str, Any]] = web.AppKey("object_info", dict)

# What the hub's pages send (Django's X_FRAME_OPTIONS, SECURE_CONTENT_TYPE_NOSNIFF, SECURE_REFERRER_POLICY,
# SECURE_CROSS_ORIGIN_OPENER_POLICY defaults): nothing in the project frames a seat, so no page may.
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
FRAME_ANCESTORS = "frame-ancestors 'none'"
DEFAULT_PORTS = {"http": 80, "https": 443}


def comfy_error(status: int, type_: str, message: str) -> web.Response:
    """An error in the shape ComfyUI's dialogs read (``error.message``, ``node_errors``). The message is the
    reason phrase too: the web frontend's upload and userdata toasts show ``status - statusText``."""
    body = {"error": {"type": type_, "message": message, "details": "", "extra_info": {}}, "node_errors": {}}
    reason = "".join(c if " " <= c <= "~" else "?" for c in message)[:200] or None
    return web.json_response(body, status=status, reason=reason)


def hub_down() -> web.Response:
    return comfy_error(502, "hub_unavailable", "The workshop server did not answer. Try again in a moment.")


def _relative_path(request: web.Request) -> str:
    base = request.app[CONFIG].base_path.rstrip("/")
    path = request.path
    return path[len(base) :] if base and path.startswith(base) else path


def _origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin or URL, the default port filled in; None if it is not one."""
    try:
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    return (scheme, host, port) if host and port else None


def _own_origin(request: web.Request) -> tuple[str, str, int] | None:
    """This server's origin as the browser sees it. Behind nginx that is the scheme and host (with its port)
    nginx forwards; a browser page cannot set those headers (not on a WebSocket, not without a preflight
    this server never grants), so believing them cannot help a forged request."""
    scheme = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    host = (request.headers.get("X-Forwarded-Host") or request.host or "").split(",")[0].strip()
    return _origin_of(f"{scheme}://{host}")


def _same_origin(request: web.Request) -> bool:
    """A state-changing request or socket must come from a page of this very origin: scheme, host and port,
    since every seat of a host is another port of it. Fetch Metadata says so where the browser sends it;
    ``Origin`` is compared where it is sent. A request with neither is not from a browser page (the hub,
    curl, tests) and passes: the session check still applies to it."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site != "same-origin":
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    mine = _own_origin(request)
    return mine is not None and _origin_of(origin) == mine  # "null" (sandboxed pages, file:) never matches


def _wants_page(request: web.Request) -> bool:
    return request.method == "GET" and "text/html" in request.headers.get("Accept", "")


def _login_redirect(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    target = config.login_url.replace("{host}", request.host.rsplit(":", 1)[0])
    if target.startswith("/"):  # same host (behind nginx): come back here after signing in
        target = f"{target}?next={quote(request.path_qs)}"
    raise web.HTTPFound(target)


FORBIDDEN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Not your seat</title>
<style>body{{font:16px system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#222}}</style>
</head><body><h1>This is not your seat</h1><p>This ComfyUI belongs to seat <strong>{label}</strong>. You are
signed in as <strong>{user}</strong>, which may not open it.</p><p><a href="{home}">Go to your own seat</a></p>
</body></html>"""


@web.middleware
async def access_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    path = _relative_path(request)
    if path in PUBLIC_PATHS:
        return await handler(request)
    changes = request.method not in ("GET", "HEAD", "OPTIONS")
    if (changes or request.headers.get("Upgrade", "").lower() == "websocket") and not _same_origin(request):
        return comfy_error(403, "cross_site", "Requests from another site are not allowed.")
    access = await request.app[GATE].check(request)
    if access.status == 204:
        return await handler(request)
    if access.status == 401:
        if _wants_page(request):
            _login_redirect(request)
        return comfy_error(401, "not_signed_in", "Sign in to your seat first.")
    if access.status == 403:
        if _wants_page(request):
            config = request.app[CONFIG]
            home = config.login_url.replace("{host}", request.host.rsplit(":", 1)[0]).rsplit("/login/", 1)[0] + "/"
            page = FORBIDDEN_PAGE.format(
                label=html.escape(config.label), user=html.escape(access.user), home=html.escape(home)
            )
            return web.Response(status=403, text=page, content_type="text/html")
        return comfy_error(403, "other_seat", "This is not your seat.")
    return hub_down()


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer (pages, API, files, errors, the socket's handshake) refuses framing and sniffing."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    policy = response.headers.get("Content-Security-Policy", "")
    if "frame-ancestors" not in policy:
        response.headers["Content-Security-Policy"] = f"{policy}; {FRAME_ANCESTORS}" if policy else FRAME_ANCESTORS


PROBLEM_TYPES = {400: "invalid_request", 403: "outside_the_seat", 404: "not_found", 409: "exists", 413: "too_large"}


def _problem(exc: FileProblem) -> web.Response:
    return comfy_error(exc.status, PROBLEM_TYPES.get(exc.status, "file_error"), str(exc))


def _read_head(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(HEAD_BYTES)


def _bool(request: web.Request, name: str, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    return raw.lower() not in ("false", "0", "")


# --- Pages and static files --------------------------------------------------------------------------


def index_page(web_root: Path, label: str) -> str:
    """The frontend's index.html with our guard, built once per process (it only depends on the seat)."""
    page = (web_root / "index.html").read_text()
    # Before the app boots: if this browser last showed another seat (staff opening several seats share an
    # origin behind nginx), drop that seat's open tabs so this seat starts from its own saved workflows.
    label = json.dumps(label)
    guard = (
        "<script>(()=>{try{const k='comfyume.seat',s=" + label + ";"
        "if(localStorage.getItem(k)!==s){for(const key of Object.keys(localStorage)){"
        "if(key==='workflow'||key.startsWith('Comfy.')||key.startsWith('workflow:'))localStorage.removeItem(key)}"
        "for(const key of Object.keys(sessionStorage)){if(key.startsWith('workflow')||key.startsWith('Comfy.'))"
        "sessionStorage.removeItem(key)}localStorage.setItem(k,s)}}catch(e){}})()</script>"
    )
    return page.replace("<head>", "<head>" + guard, 1)


async def index(request: web.Request) -> web.StreamResponse:
    return web.Response(text=request.app[INDEX], content_type="text/html", headers={"Cache-Control": "no-cache"})


async def our_static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    path = (OUR_STATIC / name).resolve()
    if OUR_STATIC not in path.parents or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


async def favicon(request: web.Request) -> web.StreamResponse:
    """The platform's icon: ComfyUI's page links none, so the browser asks this seat's origin for it."""
    return web.FileResponse(OUR_STATIC / "favicon.ico", headers={"Cache-Control": "public, max-age=86400"})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "seat": request.app[CONFIG].label})


# --- Fixed answers the frontend needs ----------------------------------------------------------------


async def system_stats(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "system": {
                "os": "posix",
                "python_version": platform.python_version(),
                "embedded_python": False,
                "comfyui_version": COMFYUI_VERSION,
                "pytorch_version": "(runs on the workshop's GPUs)",
                "required_frontend_version": request.app[FRONTEND_VERSION],
                "argv": ["comfyume-seat"],
                "ram_total": 0,
                "ram_free": 0,
            },
            "devices": [
                {
                    "name": "ComfyuME shared GPU queue",
                    "type": "cuda",
                    "index": 0,
                    "vram_total": 0,
                    "vram_free": 0,
                    "torch_vram_total": 0,
                    "torch_vram_free": 0,
                }
            ],
        }
    )


def _fixed(value: Any) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(value)

    return handler


async def not_here(request: web.Request) -> web.Response:
    return web.Response(status=404)


async def empty_ok(request: web.Request) -> web.Response:
    return web.Response(status=200)


def server_features(app: web.Application) -> dict[str, Any]:
    """ComfyUI's server feature flags (``/api/features`` and the socket's ``feature_flags``), as a stock server
    without the manager or other extensions sends them: live previews with metadata, the upload limit, and
    ComfyUI's own switch for the comfy.org sign-in button (API-node credits) at its default, off."""
    return {
        "supports_preview_metadata": True,
        "max_upload_size": app[CONFIG].max_upload_bytes,
        "show_signin_button": False,
    }


async def features(request: web.Request) -> web.Response:
    return web.json_response(server_features(request.app))


async def unknown_api(request: web.Request) -> web.Response:
    return comfy_error(404, "not_found", f"{request.method} {_relative_path(request)} is not part of this server.")


# --- Userdata and settings ---------------------------------------------------------------------------


async def users(request: web.Request) -> web.Response:
    return web.json_response({"storage": "server", "migrated": True})


async def list_userdata(request: web.Request) -> web.Response:
    files = request.app[FILES]
    try:
        result = files.list_dir(
            request.query.get("dir", ""),
            recurse=_bool(request, "recurse", False),
            full_info=_bool(request, "full_info", False),
            split=_bool(request, "split", False),
        )
    except FileProblem as exc:
        return _problem(exc)
    return web.json_response(result)


async def get_userdata(request: web.Request) -> web.StreamResponse:
    try:
        path = request.app[FILES].read_user_file(request.match_info["file"])
    except FileProblem as exc:
        return web.Response(status=exc.status) if exc.status == 404 else _problem(exc)
    # The frontend fetches userdata (it never opens it as a page): a participant's .html or .svg here must not
    # become a page on the seat's origin, while workflows keep their JSON type.
    headers = dict(serving(path.name, head=_read_head(path)).headers)
    if path.suffix == ".json":
        headers["Content-Type"] = "application/json"
    return web.FileResponse(path, headers={**headers, "Cache-Control": "no-cache"})


async def post_userdata(request: web.Request) -> web.Response:
    files = request.app[FILES]
    body = await request.read()
    try:
        path = files.write_user_file(request.match_info["file"], body, overwrite=_bool(request, "overwrite", True))
    except FileProblem as exc:
        return _problem(exc)
    return _saved_answer(request, files, path)


def _saved_answer(request: web.Request, files: SeatFiles, path: Path) -> web.Response:
    """ComfyUI answers a write or move with the file's info (``full_info=true``) or its path."""
    if _bool(request, "full_info", False):
        return web.json_response(files.file_info(path, files.user_dir))
    return web.json_response(files.relative(path))


async def delete_userdata(request: web.Request) -> web.Response:
    try:
        request.app[FILES].delete_user_file(request.match_info["file"])
    except FileProblem as exc:
        return _problem(exc)
    return web.Response(status=204)


async def move_userdata(request: web.Request) -> web.Response:
    files = request.app[FILES]
    try:
        path = files.move_user_file(
            request.match_info["file"], request.match_info["dest"], overwrite=_bool(request, "overwrite", True)
        )
    except FileProblem as exc:
        return _problem(exc)
    return _saved_answer(request, files, path)


async def get_settings(request: web.Request) -> web.Response:
    return web.json_response(request.app[FILES].settings())


async def get_setting(request: web.Request) -> web.Response:
    return web.json_response(request.app[FILES].settings().get(request.match_info["id"]))


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json(loads=json.loads)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise web.HTTPBadRequest(text="The request body is not valid JSON.") from None


async def post_settings(request: web.Request) -> web.Response:
    body = await _json_body(request)
    if not isinstance(body, dict):
        return web.Response(status=400, text="Settings must be a JSON object.")
    request.app[FILES].update_settings(body)
    return web.Response(status=200)


async def post_setting(request: web.Request) -> web.Response:
    request.app[FILES].update_settings({request.match_info["id"]: await _json_body(request)})
    return web.Response(status=200)


# --- Uploads and files the browser views --------------------------------------------------------------


async def upload_image(request: web.Request) -> web.Response:
    """ComfyUI's ``/upload/image``: an image, video or audio file for a loader node, kept here and at the
    hub. The answer names the file as stored, which may differ from the upload's (see media.stored_name)."""
    config, files = request.app[CONFIG], request.app[FILES]
    try:
        form = await request.post()
    except (ValueError, HttpProcessingError):  # not multipart, or a part header with a NUL or control character
        return comfy_error(400, "invalid_upload", "Expected a multipart form with an image and a usable file name.")
    image = form.get("image")
    if not isinstance(image, web.FileField):
        return comfy_error(400, "invalid_upload", "The form has no image file.")
    if str(form.get("type") or "input") != "input":
        return comfy_error(400, "invalid_upload", "Images can only be uploaded as inputs.")
    # aiohttp has spooled the file to a temporary file: it is measured and copied from there, never read whole.
    if image.file.seek(0, os.SEEK_END) > config.max_upload_bytes:
        return comfy_error(413, "too_large", f"The file is larger than {config.max_upload_bytes // 2**20} MB.")
    image.file.seek(0)
    overwrite = str(form.get("overwrite") or "").lower() in ("true", "1")
    try:
        name, path, media, written = files.save_upload(
            image.filename or "", str(form.get("subfolder") or ""), image.file, overwrite=overwrite
        )
    except FileProblem as exc:
        return _problem(exc)
    folder = path.parent.relative_to(files.input_dir).as_posix()  # as resolved: "a/../b" is "b"
    subfolder = "" if folder == "." else folder
    refused = await _keep_at_hub(request, f"{subfolder}/{name}" if subfolder else name, path, media.content_type)
    if refused is not None:
        if written:  # an identical file that was there before stays: a workflow may use it
            path.unlink(missing_ok=True)
        return refused
    return web.json_response({"name": name, "subfolder": subfolder, "type": "input"})


async def _keep_at_hub(request: web.Request, full_name: str, path: Path, content_type: str) -> web.Response | None:
    """The hub keeps a copy so the file travels with the job to whichever GPU runs it (streamed from the seat's
    own copy). It checks the upload again (it never trusts a seat): its refusal, with its reason, is the
    participant's answer."""
    with path.open("rb") as handle:
        data = aiohttp.FormData()
        data.add_field("name", full_name)
        data.add_field("image", handle, filename=full_name.rsplit("/", 1)[-1], content_type=content_type)
        try:
            status, _, answer = await request.app[HUB].call("POST", "/api/hub/inputs", data=data)
        except HubUnavailable:
            status, answer = 502, b""
    if status == 200:
        return None
    log.warning("Hub refused upload %s: %s %s", full_name, status, answer[:200])
    if status in (400, 413):
        with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError):
            return comfy_error(status, "upload_refused", str(json.loads(answer)["error"]["message"]))
    return comfy_error(502 if status >= 500 else status, "hub_refused", "The workshop server could not keep the file.")


def _passed(headers: Any, names: tuple[str, ...]) -> dict[str, str]:
    return {name: headers[name] for name in names if name in headers}


async def view(request: web.Request) -> web.StreamResponse:
    filename = request.query.get("filename", "")
    subfolder = request.query.get("subfolder", "")
    kind = request.query.get("type", "output")
    if kind == "input":
        try:
            path = request.app[FILES].input_file(filename, subfolder)
        except FileProblem as exc:
            return _problem(exc)
        if not path.is_file():
            return web.Response(status=404)
        # The bytes on disk decide, whatever the name (a file may predate the upload check).
        return web.FileResponse(path, headers=serving(path.name, head=_read_head(path)).headers)
    if kind not in ("output", "temp"):
        return comfy_error(400, "invalid_request", "Unknown type.")
    try:
        check_name(filename)
        check_path(subfolder)
    except NameProblem as exc:
        return comfy_error(400, "invalid_request", str(exc))
    hub = request.app[HUB]
    params = {"filename": filename, "subfolder": subfolder, "type": kind}
    # Ranges and revalidation pass through, so videos can be scrubbed and a reload reuses cached images.
    forwarded = {k: v for k, v in request.headers.items() if k in ("Range", "If-Range", "If-None-Match")}
    try:
        async with hub.session.get(
            hub.url("/api/hub/view"), params=params, headers=forwarded, allow_redirects=False
        ) as upstream:
            if upstream.status in (302, 307) and upstream.headers.get("Location"):
                # Outputs kept in R2: the browser fetches them from a short-lived presigned URL, not through us.
                return web.Response(
                    status=upstream.status,
                    headers={"Location": upstream.headers["Location"], "Cache-Control": "private, max-age=300"},
                )
            if upstream.status not in (200, 206):
                return web.Response(status=upstream.status, headers=_passed(upstream.headers, ("ETag",)))
            # The hub applies the same rule; applied again here so this answer is safe on its own.
            rule = serving(filename, declared=upstream.headers.get("Content-Type"))
            response = web.StreamResponse(status=upstream.status, headers=rule.headers)
            response.headers.update(_passed(upstream.headers, ("Content-Range", "Accept-Ranges", "ETag")))
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            response.headers["Cache-Control"] = "private, max-age=3600"
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(256 * 1024):
                await response.write(chunk)
            await response.write_eof()
            return response
    except (aiohttp.ClientError, TimeoutError):
        return web.Response(status=502)


# --- The queue: everything goes through the hub -------------------------------------------------------


async def _relay(request: web.Request, method: str, path: str, *, body: bytes | None = None) -> web.Response:
    hub = request.app[HUB]
    try:
        status, content_type, answer = await hub.call(
            method,
            path,
            params=dict(request.query),
            data=body,
        )
    except HubUnavailable:
        return hub_down()
    if status == 401:  # our token was refused: the seat was restarted elsewhere or reset
        return comfy_error(503, "seat_restarting", "This seat is restarting. Reload the page in a moment.")
    return web.Response(status=status, body=answer, content_type=content_type or "application/json")


async def prompt(request: web.Request) -> web.Response:
    body = await request.read()
    response = await _relay(request, "POST", "/api/hub/prompt", body=body)
    if response.status == 200:
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            client_id = json.loads(body).get("client_id")
            prompt_id = json.loads(response.body).get("prompt_id")  # type: ignore[arg-type]
            if client_id and prompt_id:
                request.app[EVENTS].remember_prompt(str(prompt_id), str(client_id))
    return response


async def prompt_info(request: web.Request) -> web.Response:
    return web.json_response({"exec_info": {"queue_remaining": request.app[EVENTS].queue_remaining}})


def _passthrough(method: str, hub_path: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        body = await request.read() if method == "POST" else None
        # A path part is the participant's text: quoted whole, so that a "?" or "%2F" in it stays in its part.
        parts = {key: quote(value, safe="") for key, value in request.match_info.items()}
        return await _relay(request, method, hub_path.format(**parts), body=body)

    return handler


OBJECT_INFO_TTL = 60.0
# How long a page load waits for a node list the hub does not have yet (a backend still starting).
OBJECT_INFO_WAIT = 45.0


async def object_info(request: web.Request) -> web.Response:
    """The active backend's node catalogue (cached here for a minute: the frontend asks on every load)."""
    cache = request.app[OBJECT_INFO]
    now = asyncio.get_running_loop().time()
    if cache.get("expires", 0) < now:
        # ComfyUI's frontend cannot start without the node list (an error body here breaks it for good), so
        # while the hub has none yet (its GPU still starting) the request waits a while rather than fail.
        deadline = now + OBJECT_INFO_WAIT
        while True:
            response = await _relay(request, "GET", "/api/hub/object_info")
            if response.status != 503 or asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(1.0)
        if response.status != 200:
            return response
        cache.update(body=response.body, expires=asyncio.get_running_loop().time() + OBJECT_INFO_TTL)
    body = cache["body"]
    node = request.match_info.get("node")
    if node:
        info = json.loads(body)
        return web.json_response({node: info[node]} if node in info else {})
    return web.Response(body=body, content_type="application/json")


# --- The model library: what the GPU backend has, read from its node catalogue --------------------------

# ComfyUI's model folders and the loader inputs that list each one's files (the backend's object_info is
# the only inventory a seat sees; real paths on the GPU server are never shown).
MODEL_FOLDERS: dict[str, tuple[tuple[str, str], ...]] = {
    "checkpoints": (("CheckpointLoaderSimple", "ckpt_name"),),
    "loras": (("LoraLoader", "lora_name"),),
    "vae": (("VAELoader", "vae_name"),),
    "text_encoders": (("CLIPLoader", "clip_name"), ("DualCLIPLoader", "clip_name1")),
    "diffusion_models": (("UNETLoader", "unet_name"),),
    "clip_vision": (("CLIPVisionLoader", "clip_name"),),
    "controlnet": (("ControlNetLoader", "control_net_name"),),
    "upscale_models": (("UpscaleModelLoader", "model_name"),),
    "latent_upscale_models": (("LatentUpscaleModelLoader", "model_name"),),
    "style_models": (("StyleModelLoader", "style_model_name"),),
    "gligen": (("GLIGENLoader", "gligen_name"),),
    "hypernetworks": (("HypernetworkLoader", "hypernetwork_name"),),
    "photomaker": (("PhotoMakerLoader", "photomaker_model_name"),),
    "embeddings": (),
}


def models_in(info: dict[str, Any], folder: str) -> list[str]:
    names: list[str] = []
    for node, field in MODEL_FOLDERS[folder]:
        spec = info.get(node, {}).get("input", {}).get("required", {}).get(field)
        if isinstance(spec, list) and spec:
            options = spec[0] if isinstance(spec[0], list) else (spec[1] or {}).get("options", [])
            names.extend(str(o) for o in options if str(o) not in names)
    return names


async def model_folders(request: web.Request) -> web.Response:
    return web.json_response([{"name": name, "folders": []} for name in MODEL_FOLDERS])


async def model_files(request: web.Request) -> web.Response:
    folder = request.match_info["folder"]
    if folder not in MODEL_FOLDERS:
        return web.Response(status=404)
    catalogue = await object_info(request)  # its match_info names a folder, not a node: the whole catalogue
    if catalogue.status != 200:
        return catalogue
    info = json.loads(catalogue.body)  # type: ignore[arg-type]
    return web.json_response([{"name": name, "pathIndex": 0} for name in models_in(info, folder)])


# --- Our own endpoints for the status banner -----------------------------------------------------------


async def comfyume_status(request: web.Request) -> web.Response:
    return await _relay(request, "GET", "/api/hub/status")


async def comfyume_seat(request: web.Request) -> web.Response:
    seat_info = request.app[SEAT_INFO]
    return web.json_response({"label": request.app[CONFIG].label, **seat_info})


# --- The browser's WebSocket ----------------------------------------------------------------------------


async def websocket(request: web.Request) -> web.WebSocketResponse:
    events = request.app[EVENTS]
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=1024 * 1024)
    await ws.prepare(request)
    sid = request.query.get("clientId", "")[:128] or uuid.uuid4().hex
    previous = events.sockets.get(sid)
    if previous is not None:
        await previous.close()
    events.sockets[sid] = ws
    try:
        await ws.send_json(events.status_message(sid))
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            with contextlib.suppress(ValueError, AttributeError):
                message = json.loads(msg.data)
                if message.get("type") == "feature_flags":
                    if (message.get("data") or {}).get("supports_preview_metadata") is True:
                        events.metadata_sockets.add(sid)
                    await ws.send_json({"type": "feature_flags", "data": server_features(request.app)})
    finally:
        if events.sockets.get(sid) is ws:
            del events.sockets[sid]
            events.metadata_sockets.discard(sid)
    return ws


# --- Workshop templates in the workflow list -------------------------------------------------------------


def usable_filename(template: dict[str, Any]) -> str | None:
    """A template's file name if it can be one in ``workflows/`` (``*.json``, no folder, not hidden), else None."""
    filename = str(template.get("filename", ""))
    return filename if filename.endswith(".json") and "/" not in filename and not filename.startswith(".") else None


def sync_templates(files: SeatFiles, templates: list[dict[str, Any]]) -> list[str]:
    """Write the workshop's templates into ``workflows/``. A template the participant has changed is left
    alone (we remember what we wrote); a new version replaces an untouched copy. Returns what was written."""
    state_path = files.state_dir / "templates.json"
    try:
        written: dict[str, str] = json.loads(state_path.read_text())
    except (FileNotFoundError, ValueError):
        written = {}
    changed = []
    for template in templates:
        filename = usable_filename(template)
        if filename is None:
            continue
        body = json.dumps(template.get("workflow", {}), indent=2).encode()
        digest = hashlib.sha256(body).hexdigest()
        try:
            path = files.user_file(f"workflows/{filename}")
        except FileProblem:
            continue
        if path.exists():
            current = hashlib.sha256(path.read_bytes()).hexdigest()
            if current == digest or written.get(filename) != current:
                continue  # already there, or the participant's own edit
        files.write_user_file(f"workflows/{filename}", body, overwrite=True)
        written[filename] = digest
        changed.append(filename)
    state_path.write_text(json.dumps(written))
    return changed


CARD_SUFFIX = "-1.svg"  # the Templates browser asks for "<name>-1.<mediaSubtype>"; "svg": a card drawn here
VIDEO_OUTPUTS = {"SaveVideo", "SaveWEBM", "SaveAnimatedWEBP", "SaveAnimatedPNG", "VHS_VideoCombine"}


async def templates_index(request: web.Request) -> web.Response:
    """ComfyUI's Templates browser (``/templates/index.json``, as the comfyui-workflow-templates package serves it):
    the workshop's templates as one module, each by its file name's stem, with the instructor's picture of it
    (PNG, JPEG or WebP) or else a card drawn from the template (``template_card``)."""
    templates = request.app[TEMPLATES]
    if not templates:
        return web.json_response([])
    workshop = request.app[SEAT_INFO].get("workshop") or {}
    entries = [
        {
            "name": name,
            "title": str(template.get("name") or name),
            "description": str(template.get("description") or ""),
            "mediaType": "image",
            "mediaSubtype": template.get("thumbnail") or CARD_SUFFIX.rsplit(".", 1)[1],
        }
        for name, template in sorted(templates.items(), key=lambda item: str(item[1].get("name") or item[0]).lower())
    ]
    title = str(workshop.get("title") or "Workshop templates")
    return web.json_response([{"moduleName": "default", "title": title, "type": "image", "templates": entries}])


def template_card(template: dict[str, Any]) -> str:
    """A card for the Templates browser: the template's name, what it makes and how many nodes it has. Drawn here
    because a workshop template has no picture of its own; the text is escaped, so the SVG holds no markup but
    ours (and it is served with a CSP that runs nothing)."""
    nodes = [n for n in (template.get("workflow") or {}).get("nodes") or [] if isinstance(n, dict)]
    makes = "video" if any(n.get("type") in VIDEO_OUTPUTS for n in nodes) else "image"
    title = str(template.get("name") or "Template")
    lines = textwrap.wrap(title, 16, max_lines=4, placeholder="…") or ["Template"]
    text = "".join(
        f'<text x="32" y="{150 + 56 * i}" font-size="44" font-weight="bold" fill="#f0f0f0">{html.escape(line)}</text>'
        for i, line in enumerate(lines)
    )
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="512" height="512" viewBox="0 0 512 512">'
        '<rect width="512" height="512" fill="#202225"/><rect x="0" y="412" width="512" height="100" fill="#2b6cb0"/>'
        f'<g font-family="sans-serif">{text}'
        f'<text x="32" y="476" font-size="36" fill="#ffffff">{makes} · {len(nodes)} nodes</text></g></svg>'
    )


async def template_file(request: web.Request) -> web.Response:
    """One template's workflow (``/templates/<name>.json``) or its picture (``<name>-1.<ext>``: the instructor's,
    from the hub, or the card drawn here), as the browser asks for them; ``index_logo.json`` (the model makers'
    logos of ComfyUI's own templates) is empty; anything else is not here."""
    requested = request.match_info["name"]
    templates = request.app[TEMPLATES]
    if requested == "index_logo.json":
        return web.json_response({})
    stem, _, extension = requested.rpartition("-1.")
    template = templates.get(stem) if stem else None
    if template is not None and extension and extension == template.get("thumbnail"):
        try:
            status, content_type, body = await request.app[HUB].call(
                "GET", f"/api/hub/templates/{int(template['id'])}/thumbnail"
            )
        except HubUnavailable:
            return hub_down()
        if status != 200:
            return web.Response(status=404)
        return web.Response(body=body, content_type=content_type, headers={"Cache-Control": "private, max-age=60"})
    if requested.endswith(CARD_SUFFIX) and (template := templates.get(requested.removesuffix(CARD_SUFFIX))):
        return web.Response(
            text=template_card(template),
            content_type="image/svg+xml",
            headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"},
        )
    template = templates.get(requested.removesuffix(".json")) if requested.endswith(".json") else None
    if template is None:
        return web.Response(status=404)
    return web.json_response(template.get("workflow", {}))


async def internal_files(request: web.Request) -> web.Response:
    """``/internal/files/{input,output,temp}`` as ComfyUI's internal routes answer it (the Assets sidebar's
    "Imported" tab): the visible files at the top of that folder, newest first. Only ``input/`` is the seat's own
    folder; its outputs live with the hub, one folder per job, so the top of "output" holds no file, as in a
    ComfyUI whose SaveImage nodes all write into subfolders."""
    kind = request.match_info["directory_type"]
    if kind not in ("output", "input", "temp"):
        return web.json_response({"error": "Invalid directory type"}, status=400)
    if kind != "input":
        return web.json_response([])
    folder = request.app[FILES].input_dir

    def newest_first() -> list[str]:
        entries = [e for e in os.scandir(folder) if e.is_file(follow_symlinks=False) and not e.name.startswith(".")]
        return [e.name for e in sorted(entries, key=lambda e: -e.stat().st_mtime)]

    return web.json_response(await asyncio.get_running_loop().run_in_executor(None, newest_first))


async def refresh_seat(app: web.Application) -> None:
    """Fetch the seat's workshop settings and templates from the hub (at start and when told to)."""
    info = await app[HUB].json("/api/hub/seat")
    loop = asyncio.get_running_loop()
    changed = await loop.run_in_executor(None, sync_templates, app[FILES], info.get("templates", []))
    if changed:
        log.info("Workshop templates written: %s", ", ".join(changed))
    # The dict is mutated, not replaced: aiohttp freezes the application's own keys once it runs.
    seat_info = app[SEAT_INFO]
    seat_info.clear()
    seat_info.update({k: v for k, v in info.items() if k != "templates"})
    templates = app[TEMPLATES]
    templates.clear()
    for template in info.get("templates", []):
        if filename := usable_filename(template):
            templates[filename.removesuffix(".json")] = template


async def _startup(app: web.Application) -> None:
    files = app[FILES]
    if not (files.user_dir / "comfy.settings.json").exists():
        files.update_settings(INITIAL_SETTINGS)
    events = app[EVENTS]

    def on_message(message: dict[str, Any]) -> None:
        if message.get("type") == "comfyume.templates":
            app[TASKS].append(asyncio.ensure_future(refresh_seat(app)))

    events.listeners.append(on_message)

    async def first_refresh() -> None:
        delay = 0.5
        while True:
            try:
                await refresh_seat(app)
                return
            except (HubUnavailable, ValueError) as exc:
                log.warning("Could not read the seat's workshop settings (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    app[TASKS].extend([asyncio.ensure_future(events.run()), asyncio.ensure_future(first_refresh())])


async def _close_sockets(app: web.Application) -> None:
    """On shutdown, tell every open browser tab we are going away: aiohttp would otherwise wait for each socket
    to end on its own (up to a minute), and a seat being restarted (a new hub address, an instructor's restart)
    must stop at once. The frontend reconnects by itself."""
    for ws in list(app[EVENTS].sockets.values()):
        await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"The seat is restarting")


async def _cleanup(app: web.Application) -> None:
    for task in app[TASKS]:
        task.cancel()
    for ws in list(app[EVENTS].sockets.values()):
        await ws.close()
    await app[HUB].close()


def build_app(config: SeatConfig, *, web_root: Path | None = None) -> web.Application:
    """The seat frontend; under ``config.base_path`` (behind nginx) or at the root of its port."""
    app = web.Application(middlewares=[access_middleware], client_max_size=config.max_upload_bytes + 2**20)
    app.on_response_prepare.append(_security_headers)
    app[CONFIG] = config
    app[FILES] = SeatFiles(config.data_dir)
    app[HUB] = HubClient(config)
    app[GATE] = AccessGate(app[HUB], config.auth_cache_seconds)
    app[EVENTS] = EventRelay(app[HUB])
    app[WEB_ROOT] = web_root or frontend_package.web_root(config.frontend_version, config.frontends_dir)
    app[FRONTEND_VERSION] = frontend_package.served_version(app[WEB_ROOT])
    app[INDEX] = index_page(app[WEB_ROOT], config.label)
    app[TASKS] = []
    app[SEAT_INFO] = {}
    app[TEMPLATES] = {}
    app[OBJECT_INFO] = {}
    app.on_startup.append(_startup)
    app.on_shutdown.append(_close_sockets)
    app.on_cleanup.append(_cleanup)

    r = app.router
    r.add_get("/", index)
    r.add_get("/index.html", index)
    r.add_get("/comfyume/health", health)
    r.add_get("/favicon.ico", favicon)
    r.add_get("/extensions/comfyume/{name}", our_static)
    r.add_get("/ws", websocket)
    api: list[tuple[str, str, Any]] = [
        ("GET", "/users", users),
        ("GET", "/system_stats", system_stats),
        ("GET", "/extensions", _fixed([EXTENSION_URL])),
        ("GET", "/embeddings", _fixed([])),
        ("GET", "/features", features),
        ("GET", "/i18n", _fixed({})),
        ("GET", "/workflow_templates", _fixed({})),
        # Newer frontends ask for these on every load; a stock ComfyUI without custom nodes answers them empty
        # (an unknown subgraph id is a 200 null there, not a 404).
        ("GET", "/global_subgraphs", _fixed({})),
        ("GET", "/global_subgraphs/{id}", _fixed(None)),
        ("GET", "/node_replacements", _fixed({})),
        # A model file's safetensors header: the models are on the GPUs, not here, so this answers as a stock
        # ComfyUI does for a file it does not have (a bare 404; the model library shows no details).
        ("GET", "/view_metadata/{folder_name}", not_here),
        ("GET", "/experiment/models", model_folders),
        ("GET", "/experiment/models/{folder}", model_files),
        ("GET", "/settings", get_settings),
        ("POST", "/settings", post_settings),
        ("GET", "/settings/{id}", get_setting),
        ("POST", "/settings/{id}", post_setting),
        ("GET", "/userdata", list_userdata),
        ("GET", "/userdata/{file}", get_userdata),
        ("POST", "/userdata/{file}", post_userdata),
        ("DELETE", "/userdata/{file}", delete_userdata),
        ("POST", "/userdata/{file}/move/{dest}", move_userdata),
        ("POST", "/upload/image", upload_image),
        ("GET", "/view", view),
        ("GET", "/object_info", object_info),
        ("GET", "/object_info/{node}", object_info),
        ("POST", "/prompt", prompt),
        ("GET", "/prompt", prompt_info),
        ("GET", "/queue", _passthrough("GET", "/api/hub/queue")),
        ("POST", "/queue", _passthrough("POST", "/api/hub/queue")),
        ("GET", "/history", _passthrough("GET", "/api/hub/history")),
        ("POST", "/history", _passthrough("POST", "/api/hub/history")),
        ("GET", "/history/{prompt_id}", _passthrough("GET", "/api/hub/history/{prompt_id}")),
        ("POST", "/interrupt", _passthrough("POST", "/api/hub/interrupt")),
        # ComfyUI's Jobs API (newer frontends' queue panel and job history): jobs/comfy_jobs.py.
        ("GET", "/jobs", _passthrough("GET", "/api/hub/comfy/jobs")),
        ("POST", "/jobs/cancel", _passthrough("POST", "/api/hub/comfy/jobs/cancel")),
        ("GET", "/jobs/{job_id}", _passthrough("GET", "/api/hub/comfy/jobs/{job_id}")),
        ("POST", "/jobs/{job_id}/cancel", _passthrough("POST", "/api/hub/comfy/jobs/{job_id}/cancel")),
        ("POST", "/free", empty_ok),
        ("GET", "/comfyume/status", comfyume_status),
        ("GET", "/comfyume/seat", comfyume_seat),
    ]
    for method, path, handler in api:
        r.add_route(method, f"/api{path}", handler)
    r.add_get("/internal/logs", _fixed(""))
    r.add_get("/internal/logs/raw", _fixed({"entries": [], "size": {"cols": 80, "rows": 24}}))
    r.add_route("PATCH", "/internal/logs/subscribe", empty_ok)
    r.add_get("/internal/folder_paths", _fixed({}))
    r.add_get("/internal/files/{directory_type}", internal_files)
    r.add_get("/templates/index.json", templates_index)
    r.add_get("/templates/{name}", template_file)
    r.add_route("*", "/api/{tail:.*}", unknown_api)
    r.add_static("/", app[WEB_ROOT], show_index=False, follow_symlinks=False)

    if config.base_path == "/":
        return app
    outer = web.Application(client_max_size=config.max_upload_bytes + 2**20)
    outer.on_response_prepare.append(_security_headers)  # answers outside the base path (404s, health) too
    outer[CONFIG] = config
    outer.router.add_get("/comfyume/health", health)  # the supervisor checks the root, whatever the path
    outer.add_subapp(config.base_path.rstrip("/"), app)
    return outer
