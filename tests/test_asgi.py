"""The hub's ASGI handler (comfyume.handlers): one hand-over to the sync thread per request, middleware intact."""

from __future__ import annotations

import json
import threading
from unittest import mock

import pytest
from asgiref.sync import SyncToAsync, sync_to_async
from channels.testing import HttpCommunicator
from django.core.handlers.asgi import ASGIHandler
from django.db import connection

from comfyume.asgi import application
from comfyume.handlers import SyncChainASGIHandler
from tests.recorded import TINY_PATH, load

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("close_sync_thread_connections")]


async def _request(app, method: str, path: str, body: bytes = b"", headers=()) -> tuple[dict, int]:
    """Send one request through ``app``; the response and how many times it handed work to a thread."""
    original = SyncToAsync.__call__
    calls = 0

    async def counting(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        return await original(self, *args, **kwargs)

    communicator = HttpCommunicator(app, method, path, body=body, headers=[(b"host", b"127.0.0.1"), *headers])
    with mock.patch.object(SyncToAsync, "__call__", counting):
        response = await communicator.get_response()
        # As daphne does: let the handler finish (it closes the response, which hands the request's database
        # connection back to the pool).
        await communicator.wait()
    return response, calls


async def test_a_request_reaches_its_view_and_leaves_it_in_one_hand_over(personas):
    token = await sync_to_async(personas.seat_a.issue_token)()
    auth = [(b"authorization", f"Bearer {token}".encode())]
    ours, hand_overs = await _request(application, "GET", "/api/hub/queue", headers=auth)
    assert ours["status"] == 200
    assert json.loads(ours["body"]) == {"queue_running": [], "queue_pending": []}
    # request_started's receivers, the middleware chain with the view, the response's close.
    assert hand_overs == 3
    # Django's own handler for the same request: each middleware's request and response hooks separately.
    stock, stock_hand_overs = await _request(ASGIHandler(), "GET", "/api/hub/queue", headers=auth)
    assert stock["status"] == 200 and stock["body"] == ours["body"]
    assert stock_hand_overs > 10, stock_hand_overs  # 14 with our eight middleware


async def test_the_middleware_still_applies(personas):
    token = await sync_to_async(personas.seat_a.issue_token)()
    response, _ = await _request(
        application, "POST", "/api/hub/prompt", body=json.dumps({"prompt": load(TINY_PATH)}).encode(),
        headers=[(b"authorization", f"Bearer {token}".encode()), (b"content-type", b"application/json")],
    )  # fmt: skip
    assert response["status"] == 200
    headers = dict(response["headers"])
    assert headers[b"X-Frame-Options"] == b"DENY" and headers[b"X-Content-Type-Options"] == b"nosniff"
    # A session-cookie POST without a CSRF token is refused by the CSRF machinery, as under Django's handler.
    refused, _ = await _request(SyncChainASGIHandler(), "POST", "/admin/login/", body=b"username=x&password=y",
                                headers=[(b"content-type", b"application/x-www-form-urlencoded")])  # fmt: skip
    assert refused["status"] == 403


async def test_an_unknown_path_is_a_404_page():
    response, _ = await _request(application, "GET", "/no/such/page/")
    assert response["status"] == 404


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the pool is PostgreSQL's (Django's, on psycopg_pool)")
def test_request_threads_take_pooled_postgresql_connections_instead_of_opening_them():
    """Under ASGI each request runs in a thread of its own, whose connection ends with it: without the pool every
    request started a new PostgreSQL server process (~5 ms, more under load)."""

    def like_a_request() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        connection.close()  # as Django does at the end of a request: back to the pool

    def in_a_thread_of_its_own() -> None:
        thread = threading.Thread(target=like_a_request)
        thread.start()
        thread.join()

    in_a_thread_of_its_own()
    pool = connection.pool
    assert pool is not None
    opened = pool.get_stats()["connections_num"]
    for _ in range(5):
        in_a_thread_of_its_own()
    stats = pool.get_stats()
    assert stats["connections_num"] == opened  # not one more server connection for five more requests
    assert stats["requests_num"] >= 6


async def test_requests_borrow_lasting_threads_instead_of_starting_one_each(personas):
    """Django starts a thread for every request (and one more to join it); ours lends one of a few that last."""
    token = await sync_to_async(personas.seat_a.issue_token)()
    auth = [(b"authorization", f"Bearer {token}".encode())]
    seen: list[str] = []
    original = SyncChainASGIHandler._get_response

    def noting(self, request):
        seen.append(threading.current_thread().name)
        return original(self, request)

    with mock.patch.object(SyncChainASGIHandler, "_get_response", noting):
        handler = SyncChainASGIHandler()  # the chain takes the view's caller when it is built
        started = threading.active_count()
        for _ in range(6):
            response, _ = await _request(handler, "GET", "/api/hub/queue", headers=auth)
            assert response["status"] == 200
    assert len(seen) == 6 and all(name.startswith("hub-request") for name in seen), seen
    assert len(set(seen)) == 1  # one request after another: the same thread, its database connection kept
    assert threading.active_count() <= started + 1


async def test_at_most_web_concurrency_requests_run_their_view_at_once(personas, settings):
    """A class pressing Run at once: the views run WEB_CONCURRENCY at a time, the rest wait on the event loop
    (not as a hundred threads fighting the event loop for the GIL)."""
    import asyncio
    import time

    settings.WEB_CONCURRENCY = 2
    token = await sync_to_async(personas.seat_a.issue_token)()
    auth = [(b"authorization", f"Bearer {token}".encode())]
    running, most = 0, 0
    guard = threading.Lock()
    original = SyncChainASGIHandler._get_response

    def slow(self, request):
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.1)
            return original(self, request)
        finally:
            with guard:
                running -= 1

    with mock.patch.object(SyncChainASGIHandler, "_get_response", slow):
        handler = SyncChainASGIHandler()  # its limit is read when it is built
        answers = await asyncio.gather(*(_request(handler, "GET", "/api/hub/queue", headers=auth) for _ in range(6)))
    assert [response["status"] for response, _ in answers] == [200] * 6
    assert most == 2


@pytest.mark.parametrize("value", ["0", "-3", "four"])
def test_a_web_concurrency_that_is_not_a_positive_number_stops_the_start(value):
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; settings.WEB_CONCURRENCY"],
        env={**os.environ, "COMFYUME_WEB_CONCURRENCY": value, "DJANGO_SETTINGS_MODULE": "comfyume.settings"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0, result.stderr[-500:]
    assert f"COMFYUME_WEB_CONCURRENCY must be a whole number of at least 1, not {value!r}." in result.stderr
