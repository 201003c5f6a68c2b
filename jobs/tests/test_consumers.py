"""Live events through the full ASGI app (Channels' WebsocketCommunicator) with the real Redis layer."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from comfyume.asgi import application
from jobs import events
from tests.fixtures import run_worker
from tests.recorded import TINY_PATH, load

TINY = load(TINY_PATH)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("close_sync_thread_connections")]


def _session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def _receive_until(comm, predicate, timeout=10.0):
    seen = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        assert remaining > 0, f"timed out; saw {[m['type'] for m in seen]}"
        message = await comm.receive_json_from(timeout=remaining)
        seen.append(message)
        if predicate(message):
            return seen


async def test_seat_socket_gets_comfyui_events_of_its_own_job_only(personas):
    token_a = await database_sync_to_async(personas.seat_a.issue_token)()
    token_b = await database_sync_to_async(personas.seat_b.issue_token)()
    comm_a = WebsocketCommunicator(
        application, "/ws/hub/seat/", headers=[(b"authorization", f"Bearer {token_a}".encode())]
    )
    comm_b = WebsocketCommunicator(
        application, "/ws/hub/seat/", headers=[(b"authorization", f"Bearer {token_b}".encode())]
    )
    assert (await comm_a.connect())[0] and (await comm_b.connect())[0]
    first = await comm_a.receive_json_from()
    assert first == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}}
    await comm_b.receive_json_from()

    prompt_id = await _submit_and_run(token_a)
    seen = await _receive_until(
        comm_a,
        lambda m: (
            m["type"] == "executing" and m["data"].get("node") is None and m["data"].get("prompt_id") == prompt_id
        ),
    )
    types = [m["type"] for m in seen if m["data"].get("prompt_id") == prompt_id]
    # ComfyUI's own order, under the job's prompt id.
    for expected in ("execution_start", "executing", "executed", "execution_success"):
        assert expected in types
    assert types.index("execution_start") < types.index("executed") < types.index("execution_success")
    executed = next(m for m in seen if m["type"] == "executed")
    assert executed["data"]["output"]["images"][0]["subfolder"].startswith(prompt_id)
    statuses = [m["data"]["status"] for m in seen if m["type"] == "comfyume.job"]
    assert statuses[:2] == ["queued", "dispatching"] or "running" in statuses
    # Seat B heard nothing about A's job.
    assert await comm_b.receive_nothing(timeout=0.3)
    await comm_a.disconnect()
    await comm_b.disconnect()


async def test_instructor_socket_sees_every_seat_and_participants_are_refused(personas):
    instructor_cookie = await database_sync_to_async(_session_cookie)(personas.instructor)
    participant_cookie = await database_sync_to_async(_session_cookie)(personas.seat_a.participant)
    origin = (b"origin", b"http://127.0.0.1")
    path = f"/ws/hub/workshops/{personas.workshop.slug}/"

    refused = WebsocketCommunicator(application, path, headers=[(b"cookie", participant_cookie), origin])
    connected, code = await refused.connect()
    assert not connected and code == 4403
    anonymous = WebsocketCommunicator(application, path, headers=[origin])
    connected, code = await anonymous.connect()
    assert not connected and code == 4401

    comm = WebsocketCommunicator(application, path, headers=[(b"cookie", instructor_cookie), origin])
    assert (await comm.connect())[0]
    await sync_to_async(events.comfy_message)(
        personas.seat_b.pk, personas.workshop.pk, {"type": "progress", "data": {"value": 1, "max": 2}}, "user002"
    )
    message = await comm.receive_json_from(timeout=5)
    assert message == {"type": "progress", "data": {"value": 1, "max": 2}, "seat": "user002"}
    await comm.disconnect()


async def test_cookie_socket_from_another_origin_is_refused(personas):
    cookie = await database_sync_to_async(_session_cookie)(personas.seat_a.participant)
    comm = WebsocketCommunicator(
        application, "/ws/hub/seat/", headers=[(b"cookie", cookie), (b"origin", b"https://evil.example")]
    )
    connected, _ = await comm.connect()
    assert not connected
    ok = WebsocketCommunicator(
        application, "/ws/hub/seat/", headers=[(b"cookie", cookie), (b"origin", b"http://127.0.0.1")]
    )
    assert (await ok.connect())[0]
    await ok.disconnect()


async def test_bad_token_socket_is_refused(personas):
    comm = WebsocketCommunicator(application, "/ws/hub/seat/", headers=[(b"authorization", b"Bearer wrong")])
    connected, code = await comm.connect()
    assert not connected and code == 4401


def test_group_names_are_valid_channels_names():
    assert events.seat_group(12) == "seat.12" and events.workshop_group(3) == "workshop.3"


async def _submit_and_run(token: str) -> str:
    """The tiny workflow submitted by a seat and run to its end by an in-process worker; its prompt id."""

    def submit_and_run():
        response = Client().post(
            "/api/hub/prompt",
            data=json.dumps({"prompt": TINY}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {token}",
        )
        run_worker()
        events.flush()
        return response.json()["prompt_id"]

    return await sync_to_async(submit_and_run, thread_sensitive=False)()


async def _frames_until_done(comm, prompt_id: str, timeout: float = 15.0) -> tuple[list[bytes], list[dict]]:
    """Binary and JSON messages of a hub seat socket until the prompt's final ``executing``."""
    binary: list[bytes] = []
    texts: list[dict] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        assert remaining > 0, f"timed out; saw {[m['type'] for m in texts]} and {len(binary)} previews"
        output = await comm.receive_output(timeout=remaining)
        if output.get("bytes") is not None:
            binary.append(output["bytes"])
            continue
        message = json.loads(output["text"])
        texts.append(message)
        data = message.get("data") or {}
        if message["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return binary, texts


async def test_live_previews_reach_the_seat_whose_job_it_is_and_no_other(personas, sim, settings):
    """The simulator sends a preview per progress step, as ComfyUI's latent previewer does; the hub relays them
    to the seat's socket only (not the other seat's, not the instructor's), throttled to COMFYUME_PREVIEW_FPS,
    as ComfyUI's PREVIEW_IMAGE frames behind the prompt id (docs/HUB_API.md)."""
    settings.COMFYUME = {**settings.COMFYUME, "PREVIEW_FPS": 4.0}
    sim.config.update({"progress_steps": 10, "progress_all": True, "node_delay": 0.5})  # 30 previews in 1.5 s
    token_a = await database_sync_to_async(personas.seat_a.issue_token)()
    token_b = await database_sync_to_async(personas.seat_b.issue_token)()
    comms = [
        WebsocketCommunicator(application, "/ws/hub/seat/", headers=[(b"authorization", f"Bearer {t}".encode())])
        for t in (token_a, token_b)
    ]
    instructor = WebsocketCommunicator(
        application,
        f"/ws/hub/workshops/{personas.workshop.slug}/",
        headers=[
            (b"cookie", await database_sync_to_async(_session_cookie)(personas.instructor)),
            (b"origin", b"http://127.0.0.1"),
        ],
    )
    for comm in (*comms, instructor):
        assert (await comm.connect())[0]
    for comm in comms:
        await comm.receive_json_from()

    prompt_id = await _submit_and_run(token_a)
    previews, _ = await _frames_until_done(comms[0], prompt_id)
    # 30 were made over about 1.5 s; at 4 per second a handful pass, each ComfyUI's PREVIEW_IMAGE_WITH_METADATA
    # naming the job's own prompt id (not the backend's) and the node that made it.
    assert 3 <= len(previews) <= 9, len(previews)
    nodes = set()
    for frame in previews:
        assert int.from_bytes(frame[:4], "big") == 4
        length = int.from_bytes(frame[4:8], "big")
        metadata = json.loads(frame[8 : 8 + length])
        assert metadata["prompt_id"] == prompt_id and metadata["image_type"] == "image/jpeg"
        assert frame[8 + length : 8 + length + 2] == b"\xff\xd8"
        nodes.add(metadata["display_node_id"])
    assert nodes <= set(TINY) and len(nodes) >= 2  # every node of the tiny graph ticks here
    assert len(set(previews)) == len(previews)  # every step looks different
    assert await comms[1].receive_nothing(timeout=0.3)
    while not await instructor.receive_nothing(timeout=0.3):
        assert (await instructor.receive_output()).get("bytes") is None, "a preview reached the instructor's view"
    for comm in (*comms, instructor):
        await comm.disconnect()


async def test_no_previews_when_the_workshops_preview_method_is_none(personas, sim):
    await database_sync_to_async(type(personas.workshop).objects.filter(pk=personas.workshop.pk).update)(
        preview_method="none"
    )
    sim.config.update({"progress_steps": 4, "progress_all": True, "node_delay": 0.2})
    token = await database_sync_to_async(personas.seat_a.issue_token)()
    comm = WebsocketCommunicator(application, "/ws/hub/seat/", headers=[(b"authorization", f"Bearer {token}".encode())])
    assert (await comm.connect())[0]
    await comm.receive_json_from()

    prompt_id = await _submit_and_run(token)
    previews, texts = await _frames_until_done(comm, prompt_id)
    assert previews == [] and any(m["type"] == "progress" for m in texts)  # it ticked, and showed no picture
    await comm.disconnect()


async def test_relayed_events_go_out_without_a_trip_to_a_thread(personas, monkeypatch):
    """Channels closes old database connections in its shared thread before every message it dispatches; the
    relay handlers touch no database, so an event goes from the channel layer to the socket directly."""
    import channels.consumer

    token = await database_sync_to_async(personas.seat_a.issue_token)()
    comm = WebsocketCommunicator(application, "/ws/hub/seat/", headers=[(b"authorization", f"Bearer {token}".encode())])
    assert (await comm.connect())[0]
    await comm.receive_json_from()
    trips = []
    original = channels.consumer.aclose_old_connections

    async def counted() -> None:
        trips.append(1)
        await original()

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counted)
    message = {"type": "progress", "data": {"value": 1, "max": 2, "prompt_id": "p", "node": "3"}}
    events.comfy_message(personas.seat_a.pk, personas.workshop.pk, message, "user001")
    assert await comm.receive_json_from(timeout=5) == message
    assert trips == []
    await comm.disconnect()
    assert trips == [1]  # what is not a relayed event (the disconnect) is dispatched as Channels does
