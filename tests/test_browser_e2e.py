"""End to end, as a new user would: `run_platform` (what `make run` runs) on embedded defaults, then a
participant in headless Chromium queues a job and sees its image, and the instructor sees it in the admin.

Screenshots are kept in test-artifacts/ (the key ones are copied into docs/).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """`manage.py run_platform` in its own data dir, SQLite and embedded Redis, on free ports."""
    data_dir = Path(tempfile_short())
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    env.update(
        COMFYUME_DATA_DIR=str(data_dir),
        COMFYUME_REDIS_PREFIX=f"cfme-e2e-{os.getpid()}",
        COMFYUME_SIMULATOR_PORT=str(_free_port()),
        COMFYUME_ADMIN_PASSWORD="e2e-admin-password",
        PORT=str(port),
        PYTHONUNBUFFERED="1",
    )
    log = (tmp_path_factory.mktemp("e2e") / "run_platform.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "run_platform"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        log.seek(0)
        if "ComfyuME is running" in log.read():
            break
        assert proc.poll() is None, f"run_platform exited early:\n{_tail(log)}"
        time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail(f"run_platform did not start within 90 s:\n{_tail(log)}")
    yield {"base": base, "proc": proc, "log": log, "data_dir": data_dir}
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    shutil.rmtree(data_dir, ignore_errors=True)


def tempfile_short() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="cfme-e2e-")  # short: it holds the embedded Redis's unix socket


def _tail(log) -> str:
    log.seek(0)
    return log.read()[-3000:]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_banner_prints_where_to_sign_in(platform):
    text = _tail(platform["log"])
    assert f"{platform['base']}/admin/" in text and "password: e2e-admin-password" in text
    assert "the ComfyUI simulator (not a GPU)" in text
    assert requests.get(f"{platform['base']}/health", timeout=5).json()["status"] in ("ok", "degraded")


def test_participant_queues_a_job_and_sees_its_image(platform, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    seats = json.loads((platform["data_dir"] / "demo_credentials.json").read_text())
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.goto(seats[0]["join_url"])
    page.wait_for_selector("text=Your seat: user001")
    page.wait_for_selector("#live.ok", timeout=15000)  # the live socket is open
    page.click("#queue-test")
    page.wait_for_selector("#jobs .status.succeeded", timeout=60000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#jobs .outputs img')].some(i => i.complete && i.naturalWidth > 0)",
        timeout=15000,
    )
    page.screenshot(path=str(ARTIFACTS / "participant-job-done.png"), full_page=True)
    assert "Done" in page.inner_text("#jobs")
    # The join link was spent: following it again does not sign anyone in.
    other = browser.new_page()
    response = other.goto(seats[0]["join_url"])
    assert response.status == 410 and "cannot be used" in other.inner_text("body")
    other.close()
    page.close()


def test_participant_signs_in_with_the_password_on_their_card(platform, browser):
    seats = json.loads((platform["data_dir"] / "demo_credentials.json").read_text())
    page = browser.new_page()
    page.goto(f"{platform['base']}/login/")
    page.fill("#id_username", seats[2]["username"])
    page.fill("#id_password", seats[2]["password"])
    page.click("button[type=submit]")
    page.wait_for_selector("text=Your seat: user003")
    page.wait_for_selector("#live.ok", timeout=15000)
    page.close()


def test_wrong_password_is_refused_with_a_clear_message(platform, browser):
    page = browser.new_page()
    page.goto(f"{platform['base']}/login/")
    page.fill("#id_username", "demo-user002")
    page.fill("#id_password", "not-the-password")
    page.click("button[type=submit]")
    assert "do not match" in page.inner_text("body")
    page.close()


def test_instructor_sees_the_job_in_the_admin(platform, browser):
    page = browser.new_page(viewport={"width": 1300, "height": 800})
    page.goto(f"{platform['base']}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "e2e-admin-password")
    page.click("input[type=submit]")
    page.goto(f"{platform['base']}/admin/jobs/job/")
    page.wait_for_selector("#result_list")
    page.screenshot(path=str(ARTIFACTS / "admin-jobs.png"), full_page=True)
    rows = page.inner_text("#result_list")
    assert "demo/user001" in rows and "Done" in rows
    page.close()


def test_sigterm_stops_every_process_it_started(platform):
    proc = platform["proc"]
    children = _children(proc.pid)
    assert len(children) >= 5  # redis, simulator, workers, reconciler, web
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if _alive(pid)]
    assert "Stopped every process ComfyuME started." in _tail(platform["log"])
