"""End to end, as a new user would: `run_platform` (what `make run` runs) on embedded defaults, then a
participant in headless Chromium queues a job and sees its image, and the instructor sees it in the admin.

Screenshots are kept in test-artifacts/ (the key ones are copied into docs/).
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import requests

from tests.launched import (
    ADMIN_PASSWORD,
    ARTIFACTS,
    CHROMIUM,
    alive,
    descendants,
    launch,
    run_until_image,
    wait_for_comfyui,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)"),
]


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """`manage.py run_platform` in its own data dir, SQLite and embedded Redis, on free ports."""
    launched = launch(tmp_path_factory.mktemp("e2e"))
    yield {
        "base": launched.base,
        "proc": launched.proc,
        "log": launched.log,
        "data_dir": launched.data_dir,
        "seat_base": launched.seat_base,
        "launched": launched,
    }
    launched.stop()


def test_banner_prints_where_to_sign_in(platform):
    text = platform["launched"].tail()
    assert f"{platform['base']}/admin/" in text and "password: e2e-admin-password" in text
    assert "the ComfyUI simulator (not a GPU)" in text
    assert requests.get(f"{platform['base']}/health", timeout=5).json()["status"] in ("ok", "degraded")
    # The reconciler starts once the simulator listens: its first health check finds it ready, not failing.
    deadline = time.monotonic() + 30
    while (state := _simulator_state(platform)) == "unknown" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state == "ready"
    reconciler_log = (platform["data_dir"] / "logs" / "reconciler.log").read_text()
    assert "is failing" not in reconciler_log, reconciler_log[-2000:]


def _simulator_state(platform) -> str:
    return requests.get(f"{platform['base']}/health", timeout=5).json()["backends"]["simulator"]["state"]


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
    page.fill("#id_password", ADMIN_PASSWORD)
    page.click("input[type=submit]")
    return page


def test_participant_queues_in_their_comfyui_and_sees_the_image(platform, browser):
    """The join link signs the participant in and lands them in their own ComfyUI with the workshop's default
    template open; Run queues it through the hub and the simulator, and the image and banner appear."""
    ARTIFACTS.mkdir(exist_ok=True)
    seats = json.loads((platform["data_dir"] / "demo_credentials.json").read_text())
    page = browser.new_page(viewport={"width": 1300, "height": 850})
    page.goto(seats[0]["join_url"])
    wait_for_comfyui(page)
    assert page.url == f"http://127.0.0.1:{platform['seat_base']}/"
    # The workshop's default template is open, as a workflow from the seat's own workflow list.
    page.wait_for_function("() => document.body.textContent.includes('Tiny test (invert an image)')", timeout=15000)
    seconds = run_until_image(page)
    print(f"\nBENCH make_run_job_s {seconds:.2f} s (Run to the image: make run's processes, plain HTTP)")
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
    wait_for_comfyui(page)
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
    wait_for_comfyui(page)
    listed = page.evaluate(
        "async () => (await window.comfyAPI.api.api.listUserDataFullInfo('workflows')).map(f => f.path)"
    )
    assert "my-edit.json" in listed
    page.close()


def test_a_participant_cannot_open_another_seat(platform, browser):
    seats = json.loads((platform["data_dir"] / "demo_credentials.json").read_text())
    page = browser.new_page()
    _sign_in(page, platform, seats[2])
    wait_for_comfyui(page)
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
    wait_for_comfyui(participant)
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
    wait_for_comfyui(page)
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
    wait_for_comfyui(page)
    assert page.url.startswith(f"http://127.0.0.1:{platform['seat_base'] + 2}/")
    page.close()


def test_the_templates_browser_offers_the_workshops_templates(platform, browser):
    """ComfyUI's own Templates browser lists the workshop's templates; choosing one opens it in a new tab."""
    seats = json.loads((platform["data_dir"] / "demo_credentials.json").read_text())
    page = browser.new_page(viewport={"width": 1300, "height": 850})
    _sign_in(page, platform, seats[2])
    wait_for_comfyui(page)
    page.evaluate("() => window.comfyAPI.app.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    card = page.get_by_text("Tiny video (24 frames, SaveVideo)", exact=True)
    card.wait_for(timeout=15000)
    assert page.get_by_text("Tiny test (invert an image)", exact=True).count() >= 1
    page.screenshot(path=str(ARTIFACTS / "participant-templates-browser.png"))
    card.click()
    page.wait_for_function(
        "() => window.comfyAPI.app.app.graph._nodes.some(n => n.type === 'SaveVideo')", timeout=15000
    )
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
    children = descendants(proc.pid)
    assert len(children) >= 9  # redis, simulator, workers, reconciler, web, seat supervisor + 3 seat frontends
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if alive(pid)]
    assert "Stopped every process ComfyuME started." in platform["launched"].tail()
