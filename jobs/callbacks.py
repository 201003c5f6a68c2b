"""The callback API a GPU worker calls while it runs one job (docs/GPU_WORKER.md, "The hub's callback API").

Each dispatch attempt has its own URL (``/api/gpu/jobs/<prompt_id>/<backend_prompt_id>/``) and its own bearer
token, kept hashed on the job. These views authenticate, check, and hand what the worker posted to the attempt's
mailbox, where the job's dispatch task applies it in order; they never change the job themselves, so a repeated
or late call cannot corrupt it. Uploads are the exception by nature: they say where a file goes (a presigned R2
URL, or this hub for the local store) and, for the local store, receive it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import FileResponse, HttpRequest, HttpResponseBase, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from comfyume import jsonbody
from gpu_backends.client import FileRef
from gpu_backends.mailbox import Mailbox
from storage.stores import StorageError, default_store, safe_key

from .models import Job

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# The most a worker may post as one events call (a batch of ComfyUI messages).
MAX_EVENTS_BYTES = 2 * 1024 * 1024


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _attempt_signature(prompt_id: Any, attempt: str, nonce: str) -> str:
    message = f"gpu-callback:{prompt_id}:{attempt}:{nonce}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()


def issue_token(job: Job) -> str:
    """A fresh token for the job's current attempt; only its hash is kept. The token is a nonce signed with
    the attempt, so a worker of an attempt that has been replaced can still prove it was given that attempt
    (and be told to stop) while the job keeps only its current attempt's hash."""
    nonce = secrets.token_urlsafe(16)
    token = f"{nonce}.{_attempt_signature(job.prompt_id, job.backend_prompt_id, nonce)}"
    job.callback_token_hash = hash_token(token)
    Job.objects.filter(pk=job.pk).update(callback_token_hash=job.callback_token_hash)
    return token


def callback_url(job: Job) -> str:
    base = settings.COMFYUME["CALLBACK_BASE_URL"]
    return f"{base}/api/gpu/jobs/{job.prompt_id}/{job.backend_prompt_id}/"


def output_location(job: Job, ref: FileRef) -> tuple[str, str]:
    """(storage key, subfolder the participant's /view uses) of one output of a job. One place decides it, for
    files the hub fetches itself and files a GPU worker uploads."""
    prompt_id = str(job.prompt_id)
    subfolder = f"{prompt_id}/{ref.subfolder}".rstrip("/") if ref.subfolder else prompt_id
    return safe_key("workshops", job.workshop.slug, job.seat.label, subfolder, ref.filename), subfolder


def _error(status: int, message: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": message, **extra}, status=status)


def worker_callback(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Authenticate a GPU worker's call; the view gets the job as its second argument.

    401: no token or a wrong one. 409 ``{"cancel": true}``: an earlier attempt's call, or the job has ended —
    the worker should stop, and nothing about the job changes.
    """

    @functools.wraps(view)
    def wrapper(request: HttpRequest, prompt_id: Any, attempt: str, *args: Any, **kwargs: Any) -> HttpResponseBase:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not token and request.method == "GET":  # an input's URL, fetched like a presigned one
            token = request.GET.get("token", "")
        job = Job.objects.select_related("seat", "workshop").filter(prompt_id=prompt_id).first()
        # Nothing is said about a job, not even that it exists, to a caller without a token for it.
        if job is None or not token:
            return _error(401, "A valid job token is required.")
        if attempt != job.backend_prompt_id:
            if not _signed_for_attempt(token, prompt_id, attempt):
                return _error(401, "A valid job token is required.")
            return _error(409, "This attempt of the job is over; another one has replaced it.", cancel=True)
        if not job.callback_token_hash or not hmac.compare_digest(hash_token(token), job.callback_token_hash):
            return _error(401, "A valid job token is required.")
        if job.status not in Job.ACTIVE:
            return _error(409, f"The job has already ended ({job.status}).", cancel=True)
        return view(request, job, *args, **kwargs)

    return csrf_exempt(wrapper)


def _signed_for_attempt(token: str, prompt_id: Any, attempt: str) -> bool:
    """Whether ``token`` was issued for this attempt of this job (which need not be its current one)."""
    nonce, _, signature = token.partition(".")
    return bool(nonce and signature) and hmac.compare_digest(signature, _attempt_signature(prompt_id, attempt, nonce))


def _json_body(request: HttpRequest, limit: int = 64 * 1024) -> dict[str, Any] | JsonResponse:
    if len(request.body) > limit:
        return _error(413, f"The body is larger than {limit} bytes.")
    try:
        return jsonbody.loads_object(request.body)
    except jsonbody.InvalidJSON as exc:
        return _error(400, str(exc))


@require_POST
@worker_callback
def events(request: HttpRequest, job: Job) -> JsonResponse:
    body = _json_body(request, MAX_EVENTS_BYTES)
    if isinstance(body, JsonResponse):
        return body
    seq, messages = body.get("seq"), body.get("messages")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return _error(400, "seq must be a whole number from 1.")
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("type"), str) and isinstance(m.get("data"), dict) for m in messages
    ):
        return _error(400, "messages must be a list of {type, data} objects.")
    mailbox = Mailbox(job.backend_prompt_id)
    mailbox.post({"kind": "events", "seq": seq, "messages": messages})
    return JsonResponse({"cancel": job.cancel_requested_at is not None or mailbox.stop_requested() is not None})


@require_POST
@worker_callback
def result(request: HttpRequest, job: Job) -> JsonResponse:
    body = _json_body(request, MAX_EVENTS_BYTES)
    if isinstance(body, JsonResponse):
        return body
    if body.get("status") not in ("succeeded", "failed", "interrupted", "rejected"):
        return _error(400, "status must be succeeded, failed, interrupted or rejected.")
    if not isinstance(body.get("outputs", {}), dict) or not isinstance(body.get("files", []), list):
        return _error(400, "outputs must be an object and files a list.")
    Mailbox(job.backend_prompt_id).post({"kind": "result", "manifest": body})
    return JsonResponse({"ok": True})


def _file_ref(body: dict[str, Any]) -> FileRef | JsonResponse:
    """The output a worker names, checked so its key stays inside the job's folder (400 otherwise)."""
    filename, subfolder, type_ = body.get("filename"), body.get("subfolder", ""), body.get("type", "output")
    if not isinstance(filename, str) or filename in ("", ".", "..") or any(c in filename for c in "/\\\x00"):
        return _error(400, "filename must be a plain file name.")
    if not isinstance(subfolder, str) or not isinstance(type_, str):
        return _error(400, "subfolder and type must be strings.")
    if subfolder and not _relative_folder(subfolder):
        return _error(400, "subfolder must be a relative folder inside the job's outputs (no '..').")
    return FileRef(filename, subfolder, type_)


def _relative_folder(path: str) -> bool:
    if path.startswith(("/", "\\")):
        return False
    try:
        safe_key(path)
    except StorageError:
        return False
    return True


def _in_job(job: Job, key: Any) -> bool:
    prefix = safe_key("workshops", job.workshop.slug, job.seat.label, str(job.prompt_id)) + "/"
    try:
        return isinstance(key, str) and safe_key(key) == key and key.startswith(prefix)
    except StorageError:
        return False


@require_POST
@worker_callback
def uploads(request: HttpRequest, job: Job) -> JsonResponse:
    body = _json_body(request)
    if isinstance(body, JsonResponse):
        return body
    ref = _file_ref(body)
    if isinstance(ref, JsonResponse):
        return ref
    size, sha256 = body.get("size"), body.get("sha256")
    content_type = body.get("content_type") or "application/octet-stream"
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return _error(400, "size must be a whole number of bytes.")
    if not isinstance(sha256, str) or not SHA256_HEX.match(sha256):
        return _error(400, "sha256 must be 64 lowercase hex digits.")
    key, _ = output_location(job, ref)  # the name and subfolder were checked: the key stays in the job's folder
    try:
        target = default_store().upload_target(key, size=size, sha256_hex=sha256, content_type=str(content_type))
    except StorageError as exc:
        return _error(503, f"Storage is not available: {exc}")
    if target is None:  # the local store: the file comes here
        token = request.headers["Authorization"][7:].strip()
        target = {
            "method": "PUT",
            "url": f"{callback_url(job)}files/{key}",
            "headers": {
                "Authorization": f"Bearer {token}",
                "Content-Type": str(content_type),
                "X-Comfyume-Sha256": sha256,
                "X-Comfyume-Size": str(size),
            },
        }
    return JsonResponse({"key": key, **target})


@require_POST
@worker_callback
def uploads_complete(request: HttpRequest, job: Job) -> JsonResponse:
    body = _json_body(request, 1024 * 1024)
    if isinstance(body, JsonResponse):
        return body
    key, upload_id, parts = body.get("key"), body.get("upload_id"), body.get("parts")
    if not isinstance(key, str) or not _in_job(job, key):
        return _error(400, "key is not one of this job's outputs.")
    if not isinstance(upload_id, str) or not isinstance(parts, list) or not parts:
        return _error(400, "upload_id and a non-empty parts list are required.")
    if not all(
        isinstance(p, dict) and isinstance(p.get("number"), int) and isinstance(p.get("etag"), str) for p in parts
    ):
        return _error(400, "each part needs a number and an etag.")
    try:
        stored = default_store().complete_multipart(key, upload_id, parts)
    except StorageError as exc:
        return _error(400, f"The upload could not be completed: {exc}")
    return JsonResponse({"key": stored.key, "size": stored.size, "sha256": stored.sha256})


@csrf_exempt
@require_http_methods(["PUT"])
@worker_callback
def file_put(request: HttpRequest, job: Job, key: str) -> JsonResponse:
    """The local store's upload: streamed to disk, hashed as it arrives, dropped if it is not what was announced."""
    if not _in_job(job, key):
        return _error(400, "key is not one of this job's outputs.")
    store = default_store()
    expected = request.headers.get("X-Comfyume-Sha256", "")
    if not SHA256_HEX.match(expected):
        return _error(400, "X-Comfyume-Sha256 (the file's sha256, as the upload answer gave it) is required.")
    chunks = iter(functools.partial(request.read, 1024 * 1024), b"")
    try:
        stored = store.put(key, chunks, content_type=request.content_type or None)
    except StorageError as exc:
        return _error(400, str(exc))
    announced = request.headers.get("X-Comfyume-Size")
    if stored.sha256 != expected or (announced is not None and announced != str(stored.size)):
        store.delete(key)
        return _error(400, f"The file does not match its announced checksum or size ({stored.size} bytes received).")
    return JsonResponse({"key": stored.key, "size": stored.size, "sha256": stored.sha256}, status=201)


@require_GET
@worker_callback
def input_file(request: HttpRequest, job: Job, index: int) -> HttpResponseBase:
    """One of the job's uploaded images, for a worker that cannot be given a presigned URL (the local store)."""
    if index >= len(job.inputs):
        return _error(404, "No such input.")
    item = job.inputs[index]
    try:
        handle = default_store().open(item["key"])
    except StorageError:
        return _error(404, "The input file is missing from storage.")
    return FileResponse(handle, content_type=item.get("content_type") or "application/octet-stream")


def input_urls(job: Job, token: str) -> list[dict[str, Any]]:
    """The job's inputs as the worker fetches them: presigned GETs (R2) or this hub's own URL."""
    store = default_store()
    urls = []
    for index, item in enumerate(job.inputs):
        url = store.presigned_get(item["key"])
        if url is None:
            url = f"{callback_url(job)}inputs/{index}?token={token}"
        urls.append(
            {
                "name": item["name"],
                "url": url,
                "size": item.get("size"),
                "sha256": item.get("sha256"),
                "content_type": item.get("content_type") or "application/octet-stream",
            }
        )
    return urls
