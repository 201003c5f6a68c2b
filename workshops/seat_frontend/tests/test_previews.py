"""Live previews in the seat frontend: a frame from the hub (ComfyUI's PREVIEW_IMAGE_WITH_METADATA) goes to the
browser socket that queued its prompt and to no other; as it came if that browser asked for preview metadata
(newer frontends draw it on the node it names), else as the plain PREVIEW_IMAGE 1.27 draws on its running node."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from workshops.seat_frontend.hub import EventRelay

JPEG = b"\xff\xd8 a jpeg"


class Socket:
    def __init__(self) -> None:
        self.closed = False
        self.sent: list[bytes] = []

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)


def hub_frame(prompt_id: str, image: bytes = JPEG, image_type: str = "image/jpeg") -> bytes:
    metadata = {"node_id": "5", "display_node_id": "5", "parent_node_id": None, "real_node_id": "5"}
    header = json.dumps({**metadata, "prompt_id": prompt_id, "image_type": image_type}).encode()
    return (4).to_bytes(4, "big") + len(header).to_bytes(4, "big") + header + image


def relay_with(*tabs: str) -> tuple[EventRelay, dict[str, Any]]:
    relay = EventRelay(hub=None)  # type: ignore[arg-type]  # previews never call the hub
    sockets: dict[str, Any] = {tab: Socket() for tab in tabs}
    relay.sockets.update(sockets)
    return relay, sockets


def test_a_preview_reaches_only_the_browser_that_queued_the_prompt_in_the_form_it_draws():
    relay, sockets = relay_with("new-frontend", "old-frontend", "bystander")
    relay.metadata_sockets.add("new-frontend")
    relay.remember_prompt("prompt-new", "new-frontend")
    relay.remember_prompt("prompt-old", "old-frontend")

    async def deliver() -> None:
        await relay.deliver_preview(hub_frame("prompt-new"))
        await relay.deliver_preview(hub_frame("prompt-old", b"\x89PNG", "image/png"))
        await relay.deliver_preview(hub_frame("queued-before-a-restart"))  # nobody known: dropped
        for junk in (b"", b"\x00\x00\x00\x04\x00\x00\x00\xff{", (1).to_bytes(4, "big") + JPEG, hub_frame("p", b"")):
            await relay.deliver_preview(junk)

    asyncio.run(deliver())
    assert sockets["new-frontend"].sent == [hub_frame("prompt-new")]
    assert sockets["old-frontend"].sent == [(1).to_bytes(4, "big") + (2).to_bytes(4, "big") + b"\x89PNG"]
    assert sockets["bystander"].sent == []


def test_a_closed_socket_gets_nothing_and_breaks_nothing():
    relay, sockets = relay_with("tab")
    sockets["tab"].closed = True
    relay.remember_prompt("p", "tab")
    asyncio.run(relay.deliver_preview(hub_frame("p")))
    assert sockets["tab"].sent == []
