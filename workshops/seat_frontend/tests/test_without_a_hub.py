"""The seat frontend on its own, with no hub behind it: what it answers outside its base path (health, framing
headers, the icon), what it needs to start and what it imports. Its tests against a live hub are in
workshops/tests/test_seat_frontend.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests

from tests.seat_server import SeatServerThread, seat_config
from workshops.seat_frontend.app import OUR_STATIC

ROOT = Path(__file__).resolve().parents[3]
ICON = OUR_STATIC / "favicon.ico"


def assert_framing_headers(response: requests.Response) -> None:
    assert response.headers.get("X-Frame-Options") == "DENY", response.url
    assert response.headers.get("X-Content-Type-Options") == "nosniff", response.url
    assert "frame-ancestors 'none'" in response.headers.get("Content-Security-Policy", ""), response.url


def test_a_seat_under_a_path_still_answers_health_at_the_root(tmp_path):
    """The supervisor checks ``/comfyume/health`` whatever the seat's base path (nginx routing)."""
    server = SeatServerThread(
        seat_config("http://127.0.0.1:9", "seat_x", tmp_path / "seat", base_path="/user007/")
    ).start()
    try:
        root = f"http://127.0.0.1:{server.config.port}"
        assert requests.get(f"{root}/comfyume/health", timeout=5).json()["seat"] == "user001"
        assert requests.get(f"{root}/user007/comfyume/health", timeout=5).status_code == 200
        assert requests.get(f"{root}/api/settings", timeout=5).status_code == 404  # the API lives under the path
    finally:
        server.stop()


def test_a_seat_under_a_path_sends_the_headers_outside_its_path_too(tmp_path):
    server = SeatServerThread(
        seat_config("http://127.0.0.1:9", "seat_x", tmp_path / "seat", base_path="/user007/")
    ).start()
    try:
        root = f"http://127.0.0.1:{server.config.port}"
        for url in (f"{root}/comfyume/health", f"{root}/nothing/here", f"{root}/user007/comfyume/health"):
            assert_framing_headers(requests.get(url, timeout=5))
    finally:
        server.stop()


def test_a_seat_serves_the_same_icon_without_asking_the_hub(tmp_path):
    # The hub address answers nothing: a signed-out tab's icon request does not depend on it.
    server = SeatServerThread(seat_config("http://127.0.0.1:9", "seat_x", tmp_path / "seat")).start()
    try:
        response = requests.get(f"http://127.0.0.1:{server.config.port}/favicon.ico", timeout=5)
    finally:
        server.stop()
    assert response.status_code == 200 and response.content == ICON.read_bytes()


def test_the_seat_frontend_needs_only_its_own_requirements():
    """Its image installs workshops/seat_frontend/requirements.txt only: importing it must not pull in Django,
    and the pins must match the project's."""
    code = (
        "import sys, workshops.seat_frontend.app, workshops.seat_frontend.__main__; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'django', 'channels', 'redis', 'rq', 'psycopg'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    project = set((ROOT / "requirements.txt").read_text().split())
    own = [line for line in (ROOT / "workshops/seat_frontend/requirements.txt").read_text().split() if "==" in line]
    assert own and all(pin in project for pin in own)


def test_the_seat_frontend_refuses_to_start_without_its_settings(tmp_path):
    env = {
        "PATH": os.environ.get("PATH", ""),
        "COMFYUME_HUB_URL": "http://hub:8000",
        "COMFYUME_SEAT_DATA_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "workshops.seat_frontend"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "COMFYUME_SEAT_TOKEN is not set" in result.stderr
