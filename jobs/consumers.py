"""WebSocket consumers: authenticate, join the right group, forward events. Nothing else."""

from __future__ import annotations

from typing import Any

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from workshops.models import Workshop

from .events import seat_group, workshop_group
from .models import Job

# Close codes in the 4000 range carry HTTP's meaning: the browser sees why it was refused.
UNAUTHORIZED, FORBIDDEN, NOT_FOUND = 4401, 4403, 4404


class RelayConsumer(AsyncJsonWebsocketConsumer):
    """A socket that relays the hub's events: each one is sent as it comes, with no thread hand-over.

    Channels runs Django's ``close_old_connections`` in a worker thread before every message it dispatches to a
    consumer (``AsyncConsumer.dispatch``), for handlers that use the ORM. Every consumer of the process shares
    that one thread, so each relayed event waited for two hand-overs of the GIL between it and the event loop,
    in line behind every other socket's events. (What made events late at 100 seats was the GIL's switch
    interval: docs/BENCHMARKS.md, "One hub, many seats"; this trip is the part of it that every event paid.)
    The relay handlers touch no database; the rest (connect, disconnect, what a client sends) is dispatched as
    Channels does, and ``database_sync_to_async`` closes old connections around its own calls anyway.
    """

    RELAYED = frozenset({"comfy.message", "comfy.preview"})

    async def dispatch(self, message: dict[str, Any]) -> None:
        if message["type"] in self.RELAYED:
            await getattr(self, get_handler_name(message))(message)
        else:
            await super().dispatch(message)


class SeatEventsConsumer(RelayConsumer):
    """A seat's live events in ComfyUI's message format (its frontend relays them to the browser)."""

    async def connect(self) -> None:
        seat = self.scope.get("seat")
        if seat is None:
            await self.close(code=UNAUTHORIZED)
            return
        self.group = seat_group(seat.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        remaining = await database_sync_to_async(Job.queue_remaining)(seat.pk)
        await self.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining}}}})

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def comfy_message(self, event: dict[str, Any]) -> None:
        await self.send_json(event["message"])

    async def comfy_preview(self, event: dict[str, Any]) -> None:
        await self.send(bytes_data=event["frame"])


class WorkshopEventsConsumer(RelayConsumer):
    """Every seat's events of one workshop, for the instructor's live view (staff only)."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if not getattr(user, "is_authenticated", False):
            await self.close(code=UNAUTHORIZED)
            return
        if not user.is_staff:
            await self.close(code=FORBIDDEN)
            return
        slug = self.scope["url_route"]["kwargs"]["slug"]
        workshop_id = await database_sync_to_async(
            lambda: Workshop.objects.filter(slug=slug).values_list("pk", flat=True).first()
        )()
        if workshop_id is None:
            await self.close(code=NOT_FOUND)
            return
        self.group = workshop_group(workshop_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def comfy_message(self, event: dict[str, Any]) -> None:
        await self.send_json({**event["message"], "seat": event.get("seat", "")})
