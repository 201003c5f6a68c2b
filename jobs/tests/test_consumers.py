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

    def submit_and_run():
        client = Client()
        response = client.post(
            "/api/hub/prompt",
            data=json.dumps({"prompt": TINY}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {token_a}",
        )
        run_worker()
        events.flush()
        return response.json()["prompt_id"]

    prompt_id = await sync_to_async(submit_and_run, thread_sensitive=False)()
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
