"""The hub's per-job callback API, as the worker calls it (docs/GPU_WORKER.md, "The hub's callback API").

:class:`Callback` posts ComfyUI's messages in order, numbered from 1 (``seq``), one post at a time: whatever
queued up while a post was under way goes in the next one. With nothing to say for ``heartbeat_seconds`` it
posts an empty list, the heartbeat. A post that fails (connection, timeout, 5xx, 429) is retried with backoff
for up to a minute, the same seq again, so order holds; the hub applies each seq once. The hub's answers steer
the job: ``{"cancel": true}`` asks for an interrupt, and a 409 (an earlier attempt's token, or the job has
ended) means stop and say nothing more.

If the hub stays unreachable for that minute the callback gives up on events and uploads for the rest of the
job (so a dead hub costs one minute, not one per message); the job still runs to its end and the manifest is
in ``/run``'s answer, and the result is still tried once more.

Uploads: ``POST uploads`` says where a file goes, then one PUT with the given headers, or a multipart upload
(each part PUT to its URL, ``POST uploads/complete`` with the parts' ETags, sent without their quotes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

log = logging.getLogger("comfyume.worker")

RETRY_FOR = 60.0
FIRST_BACKOFF = 0.25
MAX_BACKOFF = 8.0
CALL_TIMEOUT = aiohttp.ClientTimeout(total=30)
PREVIEW_TIMEOUT = aiohttp.ClientTimeout(total=5)  # a late preview is worth nothing: no retries either
# A transfer may take long; what must not happen is a minute without a byte moving.
TRANSFER_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
# The hub refuses an events post above 2 MB; stay well below.
MAX_BATCH_BYTES = 512 * 1024
CHUNK = 256 * 1024
# Statuses worth the same request again: the hub or a proxy in front of it is busy or restarting.
RETRYABLE = {408, 425, 429, 500, 502, 503, 504}
# The hub will never accept this job's calls: wrong token or URL.
FATAL = {401, 403, 404}


class HubError(Exception):
    """A callback call failed for good (after its retries, or at once when retrying cannot help)."""


class HubStopped(HubError):
    """The hub answered 409: this attempt is over, the worker stops and says nothing more."""


def presigned(url: str) -> URL:
    """A URL exactly as given: requoting would break a presigned signature."""
    return URL(url, encoded=True)


async def _file_chunks(path: Path, offset: int, length: int) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        handle.seek(offset)
        left = length
        while left > 0:
            chunk = handle.read(min(CHUNK, left))
            if not chunk:
                raise HubError(f"{path.name} is shorter than announced")
            left -= len(chunk)
            yield chunk


class Callback:
    """One job's callback: ordered event posts with heartbeats, uploads, and the result."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        token: str,
        *,
        heartbeat_seconds: float,
        on_stop: Callable[[str], None],
    ) -> None:
        self.session = session
        self.url = url if url.endswith("/") else url + "/"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.heartbeat_seconds = heartbeat_seconds
        self.on_stop = on_stop
        self.seq = 0
        self.stopped = False  # the hub answered 409
        self.given_up: str | None = None  # why events and uploads are no longer sent
        self._pending: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._preview: bytes | None = None
        self._preview_task: asyncio.Task[None] | None = None

    # --- live previews ---
    def preview(self, frame: bytes) -> None:
        """Post a live preview (ComfyUI's PREVIEW_IMAGE frame) to ``{callback}preview``: one post at a time, and
        of the frames that arrive meanwhile only the newest, so pictures never pile up behind a slow hub."""
        if self.stopped or self.given_up or self._closing:
            return
        self._preview = frame
        if self._preview_task is None or self._preview_task.done():
            self._preview_task = asyncio.create_task(self._post_previews(), name=f"previews {self.url}")

    async def _post_previews(self) -> None:
        headers = {**self.headers, "Content-Type": "application/octet-stream"}
        while (frame := self._preview) is not None and not self._closing:
            self._preview = None
            try:
                url = presigned(self.url + "preview")
                async with self.session.post(url, data=frame, headers=headers, timeout=PREVIEW_TIMEOUT) as response:
                    await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.debug("Dropped a preview for %s: %s", self.url, exc)

    # --- events ---
    def start(self) -> None:
        self._task = asyncio.create_task(self._sender(), name=f"callback {self.url}")

    def send(self, message: dict[str, Any]) -> None:
        """Queue one ComfyUI message; it is posted after every message queued before it."""
        if self.stopped or self.given_up:
            return
        self._pending.append(message)
        self._wake.set()

    async def close(self, result: dict[str, Any] | None) -> None:
        """Post what is still queued, then the result (the manifest), unless the hub said stop."""
        self._closing = True
        self._wake.set()
        if self._preview_task is not None:
            self._preview_task.cancel()  # the result is what the participant waits for now
        if self._task is not None:
            await self._task
        if result is None or self.stopped or self.given_up == "refused":
            return
        try:
            await self._call("result", result, despite_given_up=True)
        except HubError as exc:
            log.warning("Could not post the result to %s: %s", self.url, exc)

    async def _sender(self) -> None:
        last_post = time.monotonic()
        while True:
            if not self._pending and not self._closing:
                wait = self.heartbeat_seconds - (time.monotonic() - last_post)
                if wait > 0:
                    try:
                        await asyncio.wait_for(self._wake.wait(), wait)
                    except TimeoutError:
                        pass
            self._wake.clear()
            if self.stopped or self.given_up:
                self._pending.clear()
                return
            if not self._pending and self._closing:
                return
            if not self._pending and time.monotonic() - last_post < self.heartbeat_seconds:
                continue
            batch = self._take_batch()
            self.seq += 1
            try:
                answer = await self._call("events", {"seq": self.seq, "messages": batch})
            except HubStopped:
                continue
            except HubError as exc:
                if self.given_up is None:
                    log.warning("Dropped events post %d to %s: %s", self.seq, self.url, exc)
                continue
            except Exception:  # a bug here must not leave the job without its sender, silently
                log.exception("Events post %d to %s crashed", self.seq, self.url)
                continue
            finally:
                last_post = time.monotonic()
            if isinstance(answer, dict) and answer.get("cancel") is True:
                self.on_stop("cancel")

    def _take_batch(self) -> list[dict[str, Any]]:
        """The oldest pending messages, up to MAX_BATCH_BYTES (at least one)."""
        size = 0
        for count, message in enumerate(self._pending):
            size += len(json.dumps(message, separators=(",", ":")))
            if size > MAX_BATCH_BYTES and count > 0:
                break
        else:
            count = len(self._pending)
        batch, self._pending = self._pending[:count], self._pending[count:]
        return batch

    # --- calls ---
    async def _call(self, path: str, body: dict[str, Any], *, despite_given_up: bool = False) -> Any:
        """POST ``{callback}path`` with retries; the answer's JSON (None when it has none)."""
        url = presigned(self.url + path)

        async def attempt() -> tuple[int, Any]:
            async with self.session.post(url, json=body, headers=self.headers, timeout=CALL_TIMEOUT) as response:
                text = await response.text()
                try:
                    return response.status, json.loads(text) if text.strip() else None
                except ValueError:
                    return response.status, text[:300]

        return await self._with_retries(f"POST {path}", attempt, to_hub=True, despite_given_up=despite_given_up)

    async def _with_retries(
        self, what: str, attempt: Callable[[], Any], *, to_hub: bool, despite_given_up: bool = False
    ) -> Any:
        """``attempt()`` until it answers 2xx, for up to RETRY_FOR. ``to_hub``: the hub's own endpoint, whose
        409 means stop and whose 401/403/404 mean this job's callbacks are refused (a presigned URL's 4xx is
        only that file's failure)."""
        if self.stopped:
            raise HubStopped("the hub has stopped this job")
        if self.given_up and not despite_given_up:
            why = "refused this job" if self.given_up == "refused" else "is unreachable"
            raise HubError(f"not sent: the hub {why}")
        deadline = time.monotonic() + RETRY_FOR
        backoff = FIRST_BACKOFF
        while True:
            try:
                status, answer = await attempt()
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, answer, problem = 0, None, f"{exc.__class__.__name__}: {exc}"
            else:
                problem = f"answered {status}: {answer}"
                if 200 <= status < 300:
                    return answer
                if status == 409 and to_hub:
                    self.stopped = True
                    log.info("Hub answered 409 to %s for %s: stopping the job", what, self.url)
                    self.on_stop("stopped")
                    raise HubStopped(f"{what} {problem}")
                if status in FATAL and to_hub:
                    self.given_up = "refused"
                    log.error("Hub refused %s for %s (%s): no more callbacks for this job", what, self.url, problem)
                    raise HubError(f"{what} {problem}")
                if status not in RETRYABLE:
                    raise HubError(f"{what} {problem}")
            if time.monotonic() + backoff > deadline:
                if to_hub and not self.given_up:
                    self.given_up = "unreachable"
                    log.error("Hub unreachable for %.0f s (%s %s): no more events or uploads", RETRY_FOR, what, problem)
                raise HubError(f"{what} failed for {RETRY_FOR:.0f} s: {problem}")
            log.warning("%s to %s %s; again in %.2f s", what, self.url, problem, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    # --- uploads ---
    async def store_file(self, path: Path, meta: dict[str, Any]) -> dict[str, Any]:
        """Upload one output file (``meta``: node_id, filename, subfolder, type, content_type, size, sha256);
        its ``comfyume_files`` entry, with the key the hub gave."""
        answer = await self._call("uploads", meta)
        if not isinstance(answer, dict) or not isinstance(answer.get("key"), str):
            raise HubError(f"uploads answered without a key: {answer}")
        size = int(meta["size"])
        if isinstance(answer.get("multipart"), dict):
            await self._put_multipart(path, size, str(meta["sha256"]), answer["key"], answer["multipart"])
        elif isinstance(answer.get("url"), str):
            if str(answer.get("method") or "PUT").upper() != "PUT":
                raise HubError(f"uploads asked for method {answer.get('method')!r}; only PUT is supported")
            headers = {str(k): str(v) for k, v in (answer.get("headers") or {}).items()}
            stored = await self._put(answer["url"], headers, path, 0, size)
            self._check_stored(stored, meta)
        else:
            raise HubError(f"uploads answered neither a url nor a multipart upload: {answer}")
        return {
            "node_id": meta["node_id"],
            "filename": meta["filename"],
            "subfolder": meta["subfolder"],
            "type": meta["type"],
            "key": answer["key"],
            "size": size,
            "sha256": meta["sha256"],
            "content_type": meta["content_type"],
        }

    async def _put(self, url: str, headers: dict[str, str], path: Path, offset: int, length: int) -> tuple[Any, str]:
        """PUT ``length`` bytes of ``path`` from ``offset``, streamed: (answer JSON or None, ETag header)."""
        headers = {**headers, "Content-Length": str(length)}

        async def attempt() -> tuple[int, Any]:
            async with self.session.put(
                presigned(url), data=_file_chunks(path, offset, length), headers=headers, timeout=TRANSFER_TIMEOUT
            ) as response:
                text = await response.text()
                try:
                    answer = json.loads(text) if text.strip() else None
                except ValueError:
                    answer = None
                return response.status, (answer, response.headers.get("ETag", ""))

        return await self._with_retries("PUT", attempt, to_hub=url.startswith(self.url))

    async def _put_multipart(self, path: Path, size: int, sha256: str, key: str, upload: dict[str, Any]) -> None:
        part_size, upload_id = upload.get("part_size"), upload.get("upload_id")
        parts = sorted(
            (p for p in upload.get("parts") or [] if isinstance(p, dict) and isinstance(p.get("number"), int)),
            key=lambda p: p["number"],
        )
        if not isinstance(part_size, int) or part_size <= 0 or not isinstance(upload_id, str):
            raise HubError(f"multipart upload without part_size or upload_id: {upload}")
        needed = max(1, math.ceil(size / part_size))
        if [p["number"] for p in parts[:needed]] != list(range(1, needed + 1)):
            raise HubError(f"multipart upload of {size} bytes needs parts 1..{needed}, got {len(parts)}")
        done = []
        for part in parts[:needed]:
            offset = (part["number"] - 1) * part_size
            _, etag = await self._put(str(part["url"]), {}, path, offset, min(part_size, size - offset))
            if not etag:
                raise HubError(f"part {part['number']} of {key} was answered without an ETag")
            done.append({"number": part["number"], "etag": etag.strip().strip('"')})
        answer = await self._call("uploads/complete", {"key": key, "upload_id": upload_id, "parts": done})
        self._check_stored((answer, ""), {"size": size, "sha256": sha256})

    @staticmethod
    def _check_stored(stored: tuple[Any, str], meta: dict[str, Any]) -> None:
        """When the store says what it kept (the hub's local store does; R2 answers nothing), it must match."""
        answer = stored[0]
        if not isinstance(answer, dict):
            return
        if "size" in answer and answer["size"] != meta["size"]:
            raise HubError(f"the store kept {answer['size']} bytes, not {meta['size']}")
        if meta.get("sha256") and "sha256" in answer and answer["sha256"] != meta["sha256"]:
            raise HubError("the store kept a file with another sha256")
