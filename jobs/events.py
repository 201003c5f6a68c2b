"""Live events: Channels group names and the per-process publisher.

Every ComfyUI message about a job goes to two groups, the seat's and the workshop's (instructor view), in
ComfyUI's own format (``{"type": ..., "data": ...}``), so a participant's ComfyUI shows highlighting,
progress and outputs as if ComfyUI ran locally. Our own additions use the type ``comfyume.job``.

Publishing happens from synchronous code (views, the RQ worker). One background event loop per process
sends messages in order through the Redis channel layer, so a slow send never blocks the dispatch loop
and messages for one job are never reordered.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys
import threading
from typing import Any

from channels.layers import get_channel_layer

from .models import Job

log = logging.getLogger(__name__)


def seat_group(seat_id: int) -> str:
    return f"seat.{seat_id}"


def workshop_group(workshop_id: int) -> str:
    return f"workshop.{workshop_id}"


class _Publisher:
    """A daemon thread running an event loop that drains an ordered queue of group messages."""

    def __init__(self) -> None:
        # The publisher thread must get the GIL promptly while the dispatch loop stores a file: at Python's
        # default switch interval (5 ms) every forwarded event waited for it. Never raised: the web server
        # sets a shorter one (comfyume.server).
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.queue: asyncio.Queue[tuple[list[str], dict[str, Any]] | None] = asyncio.Queue()
        self.idle = threading.Event()
        self.idle.set()
        self.pending = 0
        self.lock = threading.Lock()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), name="comfyume-publisher", daemon=True)
        self.thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_until_complete(self._drain())

    async def _drain(self) -> None:
        layer = get_channel_layer()
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            items = [item for item in batch if item is not None]
            for groups, message in coalesce(items):
                # One message's groups are independent of each other; each group's order is kept because
                # the next message waits for this one.
                await asyncio.gather(*(self._send(layer, group, message) for group in groups))
            with self.lock:
                self.pending -= len(items)
                if self.pending == 0:
                    self.idle.set()
            if len(items) != len(batch):
                return

    @staticmethod
    async def _send(layer: Any, group: str, message: dict[str, Any]) -> None:
        try:
            await layer.group_send(group, message)
        except Exception:  # a lost event must never take the dispatch loop down with it
            log.exception("Could not publish %s to %s", message.get("type"), group)

    def put(self, groups: list[str], message: dict[str, Any]) -> None:
        with self.lock:
            self.pending += 1
            self.idle.clear()
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (groups, message))


def coalesce(items: list[tuple[list[str], dict[str, Any]]]) -> list[tuple[list[str], dict[str, Any]]]:
    """Drop ``progress_state`` messages and live previews that a later one of the same prompt to the same groups
    supersedes.

    Each progress_state is a snapshot of every node's state, and each preview a picture of the latest step, so
    only the newest waiting one matters; when the channel layer falls behind, skipping the stale ones lets the
    events after them (the final ``executing {node: null}`` above all) through sooner. Every other message is
    kept, in order.
    """
    seen: set[tuple[Any, ...]] = set()
    kept = []
    for groups, message in reversed(items):
        inner = message.get("message") or {}
        key: tuple[Any, ...] | None = None
        if inner.get("type") == "progress_state":
            key = (tuple(groups), "state", (inner.get("data") or {}).get("prompt_id"))
        elif message.get("type") == "comfy.preview":
            key = (tuple(groups), "preview", message.get("prompt_id"))
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        kept.append((groups, message))
    kept.reverse()
    return kept


_publisher: _Publisher | None = None
_publisher_lock = threading.Lock()


def _get_publisher() -> _Publisher:
    global _publisher
    with _publisher_lock:
        # A forked child (RQ's default worker) inherits the object but not the thread: start a new one.
        if _publisher is None or _publisher.pid != os.getpid() or not _publisher.thread.is_alive():
            if _publisher is None:
                # A short-lived process (a management command) must not exit with messages still queued.
                atexit.register(flush, 3.0)
            _publisher = _Publisher()
        return _publisher


def publish(groups: list[str], message: dict[str, Any]) -> None:
    """Send ``message`` (a Channels event with a ``type`` handler name) to ``groups``, in order, soon."""
    _get_publisher().put(groups, message)


def flush(timeout: float = 5.0) -> bool:
    """Wait until everything published so far has been handed to the channel layer."""
    if _publisher is None or _publisher.pid != os.getpid():
        return True
    return _publisher.idle.wait(timeout)


def announce_job(job: Job, *, queue_changed: bool = True) -> None:
    """Tell the seat and the instructor view that a job changed state, and ComfyUI's queue counter when the
    seat's count of waiting and running jobs changed (a submit, an end; not a claim or a start)."""
    publish(
        [seat_group(job.seat_id), workshop_group(job.workshop_id)],
        {"type": "comfy.message", "seat": job.seat.label, "message": {"type": "comfyume.job", "data": job.summary()}},
    )
    if queue_changed:
        announce_queue(job)


def announce_queue(job: Job) -> None:
    """ComfyUI's queue counter for the job's seat (``status.exec_info.queue_remaining``); only the seat's own
    ComfyUI shows it, so the instructor view does not get it."""
    remaining = Job.queue_remaining(job.seat_id)
    publish(
        [seat_group(job.seat_id)],
        {
            "type": "comfy.message",
            "seat": job.seat.label,
            "message": {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining}}}},
        },
    )


def comfy_message(seat_id: int, workshop_id: int, message: dict[str, Any], seat_label: str = "") -> None:
    """Forward one ComfyUI-format message about a seat's job to the seat and to the instructor view."""
    publish(
        [seat_group(seat_id), workshop_group(workshop_id)],
        {"type": "comfy.message", "message": message, "seat": seat_label},
    )


def preview(seat_id: int, prompt_id: str, frame: bytes) -> None:
    """A live preview of a seat's running job to that seat only, as ComfyUI's PREVIEW_IMAGE_WITH_METADATA frame
    naming the job's prompt id and node: the seat frontend hands it to the browser that queued the prompt."""
    publish([seat_group(seat_id)], {"type": "comfy.preview", "prompt_id": prompt_id, "frame": frame})


def backend_changed(sender: Any, backend: Any, **kwargs: Any) -> None:
    """A GPU backend's state changed: the live views and the seats of every workshop using it hear at once
    (the seats' banners say "GPU starting"; the dashboard's backend row changes), after commit."""
    from django.db import transaction

    from workshops.models import Seat

    workshop_ids = list(backend.workshops.values_list("pk", flat=True))
    if not workshop_ids:
        return
    groups = [workshop_group(pk) for pk in workshop_ids]
    groups += [seat_group(pk) for pk in Seat.objects.filter(workshop_id__in=workshop_ids).values_list("pk", flat=True)]
    message = {
        "type": "comfyume.backend",
        "data": {"backend": backend.name, "state": backend.state, "since": backend.state_changed_at.isoformat()},
    }
    transaction.on_commit(lambda: publish(groups, {"type": "comfy.message", "message": message}))
