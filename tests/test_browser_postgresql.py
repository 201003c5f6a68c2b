"""`make run` on PostgreSQL and a real Redis, as production runs: a participant's day and the instructor's pages.

The other browser tests run the platform on its embedded defaults (SQLite). PostgreSQL refuses things SQLite
lets pass (a join link's locking read once answered 500 there), so this one walks the main path on the
database CI and production use, in a database of its own on the server ``DATABASE_URL`` names.
"""

from __future__ import annotations

import json
import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from tests.launched import ADMIN_PASSWORD, ARTIFACTS, CHROMIUM, launch, run_until_image, wait_for_comfyui

DATABASE_URL = os.environ.get("DATABASE_URL", "")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)"),
    pytest.mark.skipif(
        not DATABASE_URL.startswith(("postgres://", "postgresql://")) or not os.environ.get("REDIS_URL"),
        reason="needs DATABASE_URL (PostgreSQL) and REDIS_URL, as CI sets them",
    ),
]


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    name = f"comfyume_e2e_{uuid.uuid4().hex[:8]}"
    server = urlsplit(DATABASE_URL)
    maintenance = urlunsplit(server._replace(path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    launched = launch(
        tmp_path_factory.mktemp("e2e-pg"),
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


def test_a_participant_joins_and_runs_and_the_instructor_sees_it(platform, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    seats = json.loads((platform.data_dir / "demo_credentials.json").read_text())
    page = browser.new_page(viewport={"width": 1300, "height": 850})
    response = page.goto(seats[0]["join_url"])
    assert response is not None and response.status == 200, f"the join link answered {response and response.status}"
    wait_for_comfyui(page)
    assert page.url == f"http://127.0.0.1:{platform.seat_base}/"
    run_until_image(page)
    page.screenshot(path=str(ARTIFACTS / "postgresql-participant-done.png"))
    page.close()

    admin = browser.new_page(viewport={"width": 1300, "height": 850})
    admin.goto(f"{platform.base}/admin/login/")
    admin.fill("#id_username", "admin")
    admin.fill("#id_password", ADMIN_PASSWORD)
    admin.click("input[type=submit]")
    for path in ("/admin/live/demo/", "/admin/live/demo/snapshot", "/admin/jobs/job/", "/admin/outputs/demo/"):
        assert admin.goto(f"{platform.base}{path}").status == 200, path
    admin.goto(f"{platform.base}/admin/jobs/job/")
    assert "Done" in admin.inner_text("#result_list")
    admin.close()
    logs = "".join(p.read_text() for p in (platform.data_dir / "logs").glob("*.log"))
    assert "Traceback" not in logs, logs[-3000:]
