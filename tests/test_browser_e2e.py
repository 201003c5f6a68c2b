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


def _descendants(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        found += [child, *_descendants(child)]
    return found


def _free_port_range(count: int) -> int:
    """The first of ``count`` consecutive free ports (seat frontends take one each)."""
    for _ in range(50):
        base = _free_port()
        ports = range(base, base + count)
        if all(_port_is_free(p) for p in ports):
            return base
    raise RuntimeError("no free port range")


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


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
        COMFYUME_SEAT_PORT_BASE=str(_free_port_range(3)),
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
    yield {
        "base": base,
        "proc": proc,
        "log": log,
        "data_dir": data_dir,
        "seat_base": int(env["COMFYUME_SEAT_PORT_BASE"]),
    }
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


def _sign_in(page, platform, seat: dict) -> None:
    page.goto(f"{platform['base']}/login/")
    page.fill("#id_username", seat["username"])
    page.fill("#id_password", seat["password"])
    page.click("button[type=submit]")


def _instructor(browser, platform):
    """A page signed in to the admin as the instructor."""
    page = browser.new_page(viewport={"width": 1300, "height": 800})
    page.goto(f"{platform['base']}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "e2e-admin-password")
    page.click("input[type=submit]")
    return page


def _wait_for_comfyui(page) -> None:
    page.wait_for_selector("#graph-canvas", timeout=30000)
    page.wait_for_function("() => window.comfyAPI?.app?.app?.graph?._nodes?.length > 0", timeout=30000)


def test_participant_queues_in_their_comfyui_and_sees_the_image(platform, browser):
    """The join link signs the participant in and lands them in their own ComfyUI with the workshop's default
    template open; Run queues it through the hub and the simulator, and the image and banner appear."""
    ARTIFACTS.mkdir(exist_ok=True)
    seats = json.loads((platform["data_dir"] / "demo_credentials.json").read_text())
    page = browser.new_page(viewport={"width": 1300, "height": 850})
    page.goto(seats[0]["join_url"])
    _wait_for_comfyui(page)
    assert page.url == f"http://127.0.0.1:{platform['seat_base']}/"
    # The workshop's default template is open, as a workflow from the seat's own workflow list.
    page.wait_for_function("() => document.body.textContent.includes('Tiny test (invert an image)')", timeout=15000)
    page.click("button[aria-label='Run']")
    page.wait_for_function(
        "() => (document.getElementById('comfyume-banner')?.innerText || '').includes('Done')", timeout=60000
    )
    page.wait_for_function(
        "() => window.comfyAPI.app.app.graph._nodes.some(n => n.type === 'SaveImage' && n.imgs?.length > 0)",
        timeout=15000,
    )
    page.screenshot(path=str(ARTIFACTS / "participant-comfyui-done.png"))
    # The join link was spent: following it again does not sign anyone in.
    other = browser.new_page()
    response = other.goto(seats[0]["join_url"])
    assert response.status == 410 and "cannot be used" in other.inner_text("body")
    other.close()
    page.close()


def test_saved_workflow_survives_a_crash_of_the_seat_frontend(platform, browser):
    seats = json.loads((platform["data_dir"] / "demo_credentials.json").read_text())
    page = browser.new_page(viewport={"width": 1300, "height": 850})
    _sign_in(page, platform, seats[1])
    _wait_for_comfyui(page)
    # What the frontend's "Save" does: its own userdata call.
    page.evaluate(
        """async () => {
            const api = window.comfyAPI.api.api;
            const graph = window.comfyAPI.app.app.graph.serialize();
            const res = await api.storeUserData('workflows/my-edit.json', JSON.stringify(graph), {overwrite: true});
            if (!res.ok) throw new Error('save failed ' + res.status);
        }"""
    )
    pid_file = platform["data_dir"] / "seats" / "demo" / "user002" / "frontend.pid"
    old_pid = int(pid_file.read_text())
    os.kill(old_pid, signal.SIGKILL)  # the seat's frontend dies
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if (
                int(pid_file.read_text()) != old_pid
                and requests.get(f"http://127.0.0.1:{platform['seat_base'] + 1}/comfyume/health", timeout=1).ok
            ):
                break
        except (OSError, ValueError, requests.RequestException):
            pass
        time.sleep(0.3)
    else:
        pytest.fail("the supervisor did not restart the seat frontend")
    page.reload()
    _wait_for_comfyui(page)
    listed = page.evaluate(
        "async () => (await window.comfyAPI.api.api.listUserDataFullInfo('workflows')).map(f => f.path)"
    )
    assert "my-edit.json" in listed
    page.close()


def test_a_participant_cannot_open_another_seat(platform, browser):
    seats = json.loads((platform["data_dir"] / "demo_credentials.json").read_text())
    page = browser.new_page()
    _sign_in(page, platform, seats[2])
    _wait_for_comfyui(page)
    response = page.goto(f"http://127.0.0.1:{platform['seat_base']}/")  # user001's ComfyUI
    assert response.status == 403
    assert "This is not your seat" in page.inner_text("body")
    api = page.request.get(f"http://127.0.0.1:{platform['seat_base']}/api/userdata?dir=workflows")
    assert api.status == 403
    page.close()


def test_an_announcement_appears_at_once_in_the_participants_comfyui(platform, browser):
    seats = json.loads((platform["data_dir"] / "demo_credentials.json").read_text())
    participant = browser.new_page(viewport={"width": 1300, "height": 850})
    _sign_in(participant, platform, seats[1])
    _wait_for_comfyui(participant)
    instructor = _instructor(browser, platform)
    instructor.goto(f"{platform['base']}/admin/workshops/announcement/add/")
    instructor.select_option("#id_workshop", label="Demo workshop")
    instructor.fill("#id_message", "Coffee break until 14:30 — your queued jobs keep running.")
    instructor.click("input[name=_save]")
    # No reload: the note arrives over the seat's socket.
    participant.wait_for_selector("#comfyume-banner .cm-note >> text=Coffee break until 14:30", timeout=15000)
    participant.screenshot(path=str(ARTIFACTS / "participant-announcement.png"))
    participant.click("#comfyume-banner .cm-note button")
    assert participant.query_selector("#comfyume-banner .cm-note") is None
    instructor.close()
    participant.close()


def test_seat_page_still_queues_a_test_workflow(platform, browser):
    """The hub's own seat page (``/?seat``) remains a fallback with a live job list."""
    seats = json.loads((platform["data_dir"] / "demo_credentials.json").read_text())
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    _sign_in(page, platform, seats[2])
    _wait_for_comfyui(page)
    page.goto(f"{platform['base']}/?seat")
    page.wait_for_selector("text=Your seat: user003")
    page.wait_for_selector("#live.ok", timeout=15000)
    page.click("#queue-test")
    page.wait_for_selector("#jobs .status.succeeded", timeout=60000)
    page.screenshot(path=str(ARTIFACTS / "participant-job-done.png"), full_page=True)
    assert "Done" in page.inner_text("#jobs")
    page.close()


def test_participant_signs_in_with_the_password_on_their_card(platform, browser):
    seats = json.loads((platform["data_dir"] / "demo_credentials.json").read_text())
    page = browser.new_page()
    _sign_in(page, platform, seats[2])
    _wait_for_comfyui(page)
    assert page.url.startswith(f"http://127.0.0.1:{platform['seat_base'] + 2}/")
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
    page = _instructor(browser, platform)
    page.goto(f"{platform['base']}/admin/jobs/job/")
    page.wait_for_selector("#result_list")
    page.screenshot(path=str(ARTIFACTS / "admin-jobs.png"), full_page=True)
    rows = page.inner_text("#result_list")
    assert "demo/user001" in rows and "demo/user003" in rows and "Done" in rows
    page.close()


def test_sigterm_stops_every_process_it_started(platform):
    proc = platform["proc"]
    children = _descendants(proc.pid)
    assert len(children) >= 9  # redis, simulator, workers, reconciler, web, seat supervisor + 3 seat frontends
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if _alive(pid)]
    assert "Stopped every process ComfyuME started." in _tail(platform["log"])
