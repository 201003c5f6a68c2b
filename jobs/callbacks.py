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
from typing import Annotated, Any, Literal

from django.conf import settings
from django.http import FileResponse, HttpRequest, HttpResponseBase, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from pydantic import AfterValidator, Field

from comfyume import jsonbody
from gpu_backends.client import FileRef
from gpu_backends.mailbox import Mailbox
from gpu_backends.worker.prompts import MAX_PREVIEW_BYTES, decode_preview
from storage.stores import StorageError, default_store, safe_key

from .events import preview as publish_preview
from .models import Job

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# The most a worker may post as one events call (a batch of ComfyUI messages).
MAX_EVENTS_BYTES = 2 * 1024 * 1024


# --- What a worker posts (docs/GPU_WORKER.md): one schema per call --------------------------------------


def _plain_name(name: str) -> str:
    if name in ("", ".", "..") or any(c in name for c in "/\\\x00"):
        raise ValueError("filename must be a plain file name.")
    return name


def _relative_folder(path: str) -> str:
    if path and (path.startswith(("/", "\\")) or not _safe(path)):
        raise ValueError("subfolder must be a relative folder inside the job's outputs (no '..').")
    return path


def _safe(path: str) -> bool:
    try:
        safe_key(path)
    except StorageError:
        return False
    return True


class Message(jsonbody.Body):
    """One ComfyUI message (passed on as posted)."""

    type: str
    data: dict[str, Any]


class EventBatch(jsonbody.Body):
    seq: int = Field(ge=1, description="a whole number from 1")
    messages: list[Message] = Field(description="a list of {type, data} objects")


class Manifest(jsonbody.Body):
    """The job's end (docs/GPU_WORKER.md), passed on as posted: the dispatch reads what it knows of it."""

    status: Literal["succeeded", "failed", "interrupted", "rejected"] = Field(
        description="succeeded, failed, interrupted or rejected"
    )
    outputs: dict[str, Any] = Field(default_factory=dict, description="an object")
    files: list[Any] = Field(default_factory=list, description="a list")


class OutputFile(jsonbody.Body):
    """An output the worker is about to upload: where it goes is checked so its key stays in the job's folder."""

    filename: Annotated[str, AfterValidator(_plain_name)] = Field(description="a plain file name")
    subfolder: Annotated[str, AfterValidator(_relative_folder)] = Field(default="", description="a string")
    type: str = Field(default="output", description="a string")
    size: int = Field(ge=0, description="a whole number of bytes")
    sha256: str = Field(pattern=SHA256_HEX.pattern, description="64 lowercase hex digits")
    content_type: str | None = Field(default=None, description="a string")


class Part(jsonbody.Body):
    number: int
    etag: str


class CompletedUpload(jsonbody.Body):
    key: str = Field(description="one of this job's outputs")
    upload_id: str = Field(description="a string")
    parts: list[Part] = Field(min_length=1, description="a non-empty list of {number, etag} objects")


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


def _body(
    request: HttpRequest, schema: type[jsonbody.B], limit: int = 64 * 1024
) -> tuple[jsonbody.B, dict[str, Any]] | JsonResponse:
    """The body checked as ``schema``, and as decoded: what the worker posted is handed on as it came, not
    copied back out of the model."""
    if len(request.body) > limit:
        return _error(413, f"The body is larger than {limit} bytes.")
    try:
        posted = jsonbody.loads_object(request.body)
        return jsonbody.validate(posted, schema), posted
    except jsonbody.InvalidJSON as exc:
        return _error(400, str(exc))


@require_POST
@worker_callback
def events(request: HttpRequest, job: Job) -> JsonResponse:
    checked = _body(request, EventBatch, MAX_EVENTS_BYTES)
    if isinstance(checked, JsonResponse):
        return checked
    batch, posted = checked
    mailbox = Mailbox(job.backend_prompt_id)
    mailbox.post({"kind": "events", "seq": batch.seq, "messages": posted["messages"]})
    return JsonResponse({"cancel": job.cancel_requested_at is not None or mailbox.stop_requested() is not None})


@require_POST
@worker_callback
def preview(request: HttpRequest, job: Job) -> JsonResponse:
    """A live preview of the running job (ComfyUI's binary frame as the body): straight to the job's seat, never
    through the mailbox (nothing waits for it, and a lost one is replaced by the next)."""
    if len(request.body) > MAX_PREVIEW_BYTES + 64 * 1024:
        return _error(413, f"A preview is at most {MAX_PREVIEW_BYTES} bytes.")
    frame = decode_preview(request.body)
    if frame is None:
        return _error(400, "The body is not a ComfyUI preview frame (PREVIEW_IMAGE or PREVIEW_IMAGE_WITH_METADATA).")
    if frame.prompt_id not in (None, job.backend_prompt_id):
        return _error(400, "The preview names another prompt than this job's.")
    shown = frame.frame(str(job.prompt_id))  # None: no node named, nowhere to draw it
    if shown is not None and job.status == Job.Status.RUNNING and job.workshop.preview_method != "none":
        publish_preview(job.seat_id, str(job.prompt_id), shown)
    return JsonResponse({"cancel": job.cancel_requested_at is not None})


@require_POST
@worker_callback
def result(request: HttpRequest, job: Job) -> JsonResponse:
    checked = _body(request, Manifest, MAX_EVENTS_BYTES)
    if isinstance(checked, JsonResponse):
        return checked
    Mailbox(job.backend_prompt_id).post({"kind": "result", "manifest": checked[1]})
    return JsonResponse({"ok": True})


def _in_job(job: Job, key: Any) -> bool:
    prefix = safe_key("workshops", job.workshop.slug, job.seat.label, str(job.prompt_id)) + "/"
    try:
        return isinstance(key, str) and safe_key(key) == key and key.startswith(prefix)
    except StorageError:
        return False


@require_POST
@worker_callback
def uploads(request: HttpRequest, job: Job) -> JsonResponse:
    checked = _body(request, OutputFile)
    if isinstance(checked, JsonResponse):
        return checked
    output, _ = checked
    content_type = output.content_type or "application/octet-stream"
    # The name and subfolder were checked: the key stays in the job's folder.
    key, _ = output_location(job, FileRef(output.filename, output.subfolder, output.type))
    try:
        target = default_store().upload_target(
            key, size=output.size, sha256_hex=output.sha256, content_type=content_type
        )
    except StorageError as exc:
        return _error(503, f"Storage is not available: {exc}")
    if target is None:  # the local store: the file comes here
        token = request.headers["Authorization"][7:].strip()
        target = {
            "method": "PUT",
            "url": f"{callback_url(job)}files/{key}",
            "headers": {
                "Authorization": f"Bearer {token}",
                "Content-Type": content_type,
                "X-Comfyume-Sha256": output.sha256,
                "X-Comfyume-Size": str(output.size),
            },
        }
    return JsonResponse({"key": key, **target})


@require_POST
@worker_callback
def uploads_complete(request: HttpRequest, job: Job) -> JsonResponse:
    checked = _body(request, CompletedUpload, 1024 * 1024)
    if isinstance(checked, JsonResponse):
        return checked
    done, _ = checked
    if not _in_job(job, done.key):
        return _error(400, "key is not one of this job's outputs.")
    parts = [part.model_dump() for part in done.parts]
    try:
        stored = default_store().complete_multipart(done.key, done.upload_id, parts)
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
