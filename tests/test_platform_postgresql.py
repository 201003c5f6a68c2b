"""`make run` on PostgreSQL and a real Redis, as production runs: a participant's path and the instructor's pages.

The browser tests run the platform on its embedded defaults (SQLite). PostgreSQL refuses things SQLite lets
pass (a join link's locking read once answered 500 there), so this test walks the main path over HTTP on the
database CI and production use, in a database of its own on the server ``DATABASE_URL`` names: the join link,
the seat's ComfyUI server (its page, node list and ``/api/prompt`` as the browser calls them), the job to its
image, and the instructor's pages.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import requests
from psycopg import sql

from tests.launched import ADMIN_PASSWORD, launch
from tests.recorded import TINY_PATH, load

DATABASE_URL = os.environ.get("DATABASE_URL", "")
pytestmark = pytest.mark.skipif(
    not DATABASE_URL.startswith(("postgres://", "postgresql://")) or not os.environ.get("REDIS_URL"),
    reason="needs DATABASE_URL (PostgreSQL) and REDIS_URL, as CI sets them",
)


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    name = f"comfyume_e2e_{uuid.uuid4().hex[:8]}"
    server = urlsplit(DATABASE_URL)
    maintenance = urlunsplit(server._replace(path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    launched = launch(
        tmp_path_factory.mktemp("platform-pg"),
        seats=2,
        DATABASE_URL=urlunsplit(server._replace(path=f"/{name}")),
        REDIS_URL=os.environ["REDIS_URL"],
    )
    try:
        yield launched
    finally:
        launched.stop()
        with psycopg.connect(maintenance, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _admin(platform) -> requests.Session:
    admin = requests.Session()
    admin.get(f"{platform.base}/admin/login/", timeout=10)
    response = admin.post(
        f"{platform.base}/admin/login/",
        data={"username": "admin", "password": ADMIN_PASSWORD, "csrfmiddlewaretoken": admin.cookies["csrftoken"]},
        headers={"Referer": f"{platform.base}/admin/login/"},
        timeout=10,
    )
    assert response.status_code == 200 and "Log out" in response.text
    return admin


def test_a_participant_joins_and_runs_and_the_instructor_sees_it(platform):
    seats = json.loads((platform.data_dir / "demo_credentials.json").read_text())
    participant = requests.Session()
    landing = participant.get(seats[0]["join_url"], timeout=30)  # signs in, lands on the seat's page
    assert landing.status_code == 200
    deadline = time.monotonic() + 60
    while landing.url != f"http://127.0.0.1:{platform.seat_base}/":  # its ComfyUI is still starting
        assert time.monotonic() < deadline, f"still at {landing.url}"
        time.sleep(0.5)
        landing = participant.get(f"{platform.base}/", timeout=30)
        assert landing.status_code == 200
    comfyui = landing.url.rstrip("/")
    assert "EmptyImage" in participant.get(f"{comfyui}/api/object_info", timeout=60).json()
    queued = participant.post(f"{comfyui}/api/prompt", json={"prompt": load(TINY_PATH), "client_id": "t"}, timeout=30)
    assert queued.status_code == 200, queued.text
    prompt_id = queued.json()["prompt_id"]
    deadline = time.monotonic() + 60
    while not (history := participant.get(f"{comfyui}/api/history/{prompt_id}", timeout=10).json()):
        assert time.monotonic() < deadline, "the job did not finish within 60 s"
        time.sleep(0.3)
    outputs = history[prompt_id]["outputs"]
    image = next(image for output in outputs.values() for image in output.get("images", []))
    picture = participant.get(f"{comfyui}/api/view", params=image, timeout=10)
    assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
    # The link was spent.
    assert requests.get(seats[0]["join_url"], timeout=10).status_code == 410

    admin = _admin(platform)
    for path in ("/admin/live/demo/", "/admin/live/demo/snapshot", "/admin/outputs/demo/", "/metrics"):
        assert admin.get(f"{platform.base}{path}", timeout=30).status_code == 200, path
    jobs = admin.get(f"{platform.base}/admin/jobs/job/", timeout=30).text
    assert re.search(r"user001.*?Done", jobs, re.S)
    logs = "".join(p.read_text() for p in (platform.data_dir / "logs").glob("*.log"))
    assert "Traceback" not in logs, logs[-3000:]
