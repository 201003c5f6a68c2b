"""The instructor's live dashboard in a real browser against `run_platform`: a participant's job appears,
shows its progress and reaches Done without a reload; the pause button holds the queue; an announcement
posted from the dashboard shows up in the participant's ComfyUI; a waiting job moves to a second backend and
runs there; the queue policy and caps change from the dashboard.

Screenshots go to test-artifacts/ (instructor-dashboard*.png).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.launched import ADMIN_PASSWORD, ARTIFACTS, CHROMIUM, RUN_BUTTON, Platform, launch, wait_for_comfyui

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)"),
]

# Generous: the CI machine has two cores shared by the hub, its workers, three seat servers and Chromium.
SLOW = 60_000
LAPTOP_PROJECTOR = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Iterator[Platform]:
    launched = launch(tmp_path_factory.mktemp("dashboard"), seats=2)
    yield launched
    launched.stop()


def simulator(platform: Platform, **changes: Any) -> None:
    """Change how the platform's ComfyUI simulator behaves (its run-time settings endpoint)."""
    url = f"http://127.0.0.1:{platform.env['COMFYUME_SIMULATOR_PORT']}/simulator/config"
    requests.post(url, json=changes, timeout=5).raise_for_status()


def sign_in_as_instructor(page, platform: Platform, then: str) -> None:
    page.goto(f"{platform.base}/admin/login/?next={then}")
    page.fill("#id_username", "admin")
    page.fill("#id_password", ADMIN_PASSWORD)
    page.click("input[type=submit]")


def open_dashboard(page, platform: Platform) -> None:
    """Sign ``page`` in as the instructor and open the demo workshop's dashboard until it is live."""
    sign_in_as_instructor(page, platform, "/admin/live/demo/")
    page.wait_for_selector("#live-status.live", timeout=SLOW)
    page.evaluate("window.notReloaded = true")


@pytest.fixture(scope="module")
def dashboard(platform, browser):
    """The instructor's dashboard of the demo workshop, signed in and live."""
    page = browser.new_page(viewport=LAPTOP_PROJECTOR)
    open_dashboard(page, platform)
    yield page
    page.close()


@pytest.fixture(scope="module")
def participant(platform, browser):
    """user001 signed in, in their own ComfyUI with the workshop's default template open."""
    seat = json.loads((platform.data_dir / "demo_credentials.json").read_text())[0]
    page = browser.new_page(viewport={"width": 1300, "height": 850})  # its own context: its own session cookie
    page.goto(f"{platform.base}/login/")
    page.fill("#id_username", seat["username"])
    page.fill("#id_password", seat["password"])
    page.click("button[type=submit]")
    wait_for_comfyui(page)
    yield page
    page.close()


def _demo_pk(platform: Platform) -> str:
    """The demo workshop's id, from the platform's own database (shell prints its notes before it)."""
    answer = platform.manage(
        "shell", "-c", "from workshops.models import Workshop as W; print(W.objects.get(slug='demo').pk)"
    )
    return answer.stdout.split()[-1]


def _card_signs_in(browser, platform: Platform, workshop: str, label: str, username: str, password: str) -> Any:
    """Once the seat's ComfyUI runs, its card's username and password lead into it: the signed-in page."""
    import time

    deadline = time.monotonic() + 60
    status = ("seat_frontends", "status", "--workshop", workshop, "--seat", label)
    while "running" not in platform.manage(*status).stdout.split("wanted")[0]:
        assert time.monotonic() < deadline, f"{workshop}/{label}'s ComfyUI did not start"
        time.sleep(0.5)
    page = browser.new_page(viewport={"width": 1300, "height": 850})
    page.goto(f"{platform.base}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_selector("#graph-canvas", timeout=SLOW)
    assert page.evaluate("fetch('api/comfyume/seat').then(r => r.json()).then(s => s.label)") == label
    return page


def _first_row(page, selector: str) -> str:
    """The job number of the first row matching ``selector``, waiting for it to appear."""
    page.wait_for_selector(selector, timeout=SLOW)
    return page.get_attribute(selector, "data-job") or ""


def test_a_participants_job_shows_its_progress_and_reaches_done_without_a_reload(dashboard, participant, platform):
    ARTIFACTS.mkdir(exist_ok=True)
    # Slow enough (three nodes of 2.5 s, in steps) for the dashboard to show the job while it runs.
    simulator(platform, node_delay=2.5, progress_steps=5, progress_all=True)
    try:
        participant.click(RUN_BUTTON)
        job = _first_row(dashboard, "#queue-rows tr[data-status=running]")
        row = f'#queue-rows tr[data-job="{job}"]'
        assert "user001" in dashboard.inner_text(row)
        # Progress from the ComfyUI events on the workshop's socket: the bar moves and names the node.
        dashboard.wait_for_function(
            f"() => document.querySelector('{row} progress')?.value > 0", timeout=SLOW
        )  # fmt: skip
        dashboard.wait_for_selector(f"{row} .progress .node >> text=/executing .+ nodes/", timeout=SLOW)
        dashboard.screenshot(path=str(ARTIFACTS / "instructor-dashboard-running.png"), full_page=True)
    finally:
        simulator(platform, node_delay=0.5, progress_steps=8, progress_all=False)

    dashboard.wait_for_selector(f'#ended-rows tr[data-job="{job}"][data-status=succeeded]', timeout=SLOW)
    assert dashboard.query_selector(row) is None  # it left the queue
    seat = dashboard.wait_for_selector("#seat-rows tr[data-seat=user001] img.thumb", timeout=SLOW)
    assert seat is not None
    assert "Done" in dashboard.inner_text("#seat-rows tr[data-seat=user001]")
    assert dashboard.evaluate("window.notReloaded") is True
    dashboard.screenshot(path=str(ARTIFACTS / "instructor-dashboard.png"), full_page=True)


def test_the_pause_button_holds_the_queue_until_resumed(dashboard, participant):
    dashboard.click("#pause-toggle >> text=Pause the queue")
    dashboard.wait_for_selector("#paused-banner", state="visible", timeout=SLOW)
    dashboard.wait_for_selector("#pause-toggle >> text=Resume the queue", timeout=SLOW)
    assert "Paused the queue" in dashboard.inner_text("#dashboard-messages")

    participant.click(RUN_BUTTON)
    job = _first_row(dashboard, "#queue-rows tr[data-status=queued]")
    row = f'#queue-rows tr[data-job="{job}"]'
    assert dashboard.inner_text(f"{row} td.num") == "1"  # first place in the queue
    # The participant's banner says why their job waits.
    participant.wait_for_selector("#comfyume-banner >> text=paused the queue", timeout=SLOW)
    dashboard.wait_for_timeout(3000)  # a reconciler sweep later, it still waits
    assert dashboard.get_attribute(row, "data-status") == "queued"
    dashboard.screenshot(path=str(ARTIFACTS / "instructor-dashboard-paused.png"), full_page=True)

    dashboard.click("#pause-toggle >> text=Resume the queue")
    dashboard.wait_for_selector("#paused-banner", state="hidden", timeout=SLOW)
    dashboard.wait_for_selector(f'#ended-rows tr[data-job="{job}"][data-status=succeeded]', timeout=SLOW)
    actions = dashboard.inner_text("#actions")
    assert "Paused the queue of demo" in actions and "Resumed the queue of demo" in actions
    assert dashboard.evaluate("window.notReloaded") is True


def test_an_announcement_from_the_dashboard_appears_in_the_participants_comfyui(dashboard, participant):
    text = "Look at the projector: we start the video part in 5 minutes."
    dashboard.fill("#announce-text", text)
    dashboard.click("#announce-send")

    participant.wait_for_selector(f"#comfyume-banner .cm-note >> text={text}", timeout=SLOW)
    dashboard.wait_for_selector(f"#announcements >> text={text}", timeout=SLOW)
    assert "Posted" in dashboard.inner_text("#dashboard-messages")
    assert dashboard.input_value("#announce-text") == ""
    participant.screenshot(path=str(ARTIFACTS / "participant-dashboard-announcement.png"))
    dashboard.screenshot(path=str(ARTIFACTS / "instructor-dashboard-announcement.png"), full_page=True)

    dashboard.click("#announcements button >> text=Withdraw")
    participant.wait_for_selector("#comfyume-banner .cm-note", state="detached", timeout=SLOW)
    assert dashboard.query_selector("#announcements li") is None or text not in dashboard.inner_text("#announcements")
    assert dashboard.evaluate("window.notReloaded") is True


def test_a_waiting_job_moves_to_another_backend_and_the_policy_changes_from_the_dashboard(
    platform, browser, participant
):
    """A second simulator-kind backend joins the demo workshop; with the queue paused, the participant's job is
    moved to it from its row and shows the pin; the policy form switches to fifo with two running jobs per seat;
    resumed, the job runs on the second backend."""
    sim_url = f"http://127.0.0.1:{platform.env['COMFYUME_SIMULATOR_PORT']}"
    added = platform.manage(
        "add_backend", "simulator-2", "--kind", "simulator", "--url", sim_url, "--order", "1", "--workshop", "demo"
    )
    assert added.returncode == 0, added.stderr
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    open_dashboard(page, platform)  # fresh: its first snapshot lists the new backend
    page.wait_for_selector("#backend-rows tr[data-backend=simulator-2]", timeout=SLOW)
    page.click("#pause-toggle >> text=Pause the queue")
    page.wait_for_selector("#paused-banner", state="visible", timeout=SLOW)
    try:
        participant.click(RUN_BUTTON)
        job = _first_row(page, "#queue-rows tr[data-status=queued]")
        row = f'#queue-rows tr[data-job="{job}"]'
        assert "any" in page.inner_text(f"{row} td:nth-child(6)")

        page.select_option(f"{row} select.move", label="simulator-2")
        page.wait_for_selector(f"{row} .tag.pin >> text=simulator-2", timeout=SLOW)
        assert "Moved 1 waiting job to simulator-2." in page.inner_text("#dashboard-messages")
        assert "1 pinned" in page.inner_text("#backend-rows tr[data-backend=simulator-2]")

        page.select_option("#qs-queue_policy", "fifo")
        page.fill("#qs-max_running_per_seat", "0")
        page.click("#settings-save")
        page.wait_for_selector("#dashboard-messages li.error >> text=greater than or equal to 1", timeout=SLOW)
        page.fill("#qs-max_running_per_seat", "2")
        page.click("#settings-save")
        page.wait_for_selector("#dashboard-messages >> text=Saved: First in, first out", timeout=SLOW)
        page.wait_for_selector("#policy >> text=First in, first out · up to 5 waiting and 2 running", timeout=SLOW)
        actions = page.inner_text("#actions")
        assert f"Moved waiting job #{job}" in actions and "queue policy: round_robin → fifo" in actions
        page.wait_for_selector("#charts figure.chart svg", timeout=SLOW)  # the earlier tests' jobs
        page.screenshot(path=str(ARTIFACTS / "instructor-dashboard-controls.png"), full_page=True)
    finally:
        page.click("#pause-toggle >> text=Resume the queue")
    page.wait_for_selector(f'#ended-rows tr[data-job="{job}"][data-status=succeeded]', timeout=SLOW)
    ran_on = platform.manage("shell", "-c", f"from jobs.models import Job; print(Job.objects.get(pk={job}).backend)")
    assert ran_on.stdout.strip().splitlines()[-1] == "simulator-2", ran_on.stderr
    assert page.evaluate("window.notReloaded") is True
    page.close()


def test_the_dashboard_reconnects_and_catches_up_with_what_it_missed(platform, browser):
    """The socket drops; while it cannot reconnect the queue is paused from elsewhere (its event is lost);
    once the socket is back the dashboard shows the pause without a reload."""
    blocked = False
    routes = []

    def socket(route) -> None:
        if blocked:
            route.close(code=4000, reason="test: the network is down")
            return
        route.connect_to_server()
        routes.append(route)

    page = browser.new_page(viewport=LAPTOP_PROJECTOR)
    page.route_web_socket("**/ws/hub/workshops/demo/", socket)
    open_dashboard(page, platform)
    assert page.is_hidden("#paused-banner")

    blocked = True
    routes[-1].close(code=4000, reason="test: the network drops")
    page.wait_for_selector("#live-status.reconnecting", timeout=SLOW)
    act = f"{platform.base}/admin/live/demo/act"
    headers = {"Content-Type": "application/json", "X-CSRFToken": page.input_value("[name=csrfmiddlewaretoken]")}
    paused = page.request.post(act, data=json.dumps({"action": "pause"}), headers=headers)
    assert paused.status == 200, paused.text()
    try:
        blocked = False
        page.wait_for_selector("#live-status.live", timeout=SLOW)
        # Well before the 30 s safety refresh: the reconnect itself fetched the snapshot.
        page.wait_for_selector("#paused-banner", state="visible", timeout=15_000)
        assert page.evaluate("window.notReloaded") is True
    finally:
        resumed = page.request.post(act, data=json.dumps({"action": "resume"}), headers=headers)
        assert resumed.status == 200, resumed.text()
    page.wait_for_selector("#paused-banner", state="hidden", timeout=SLOW)  # live again: the resume's event
    page.close()


def test_the_instructor_creates_a_workshop_from_names_and_a_card_signs_a_participant_in(dashboard, platform, browser):
    """Before a session: the admin form makes a workshop from a list of names and shows the printable cards;
    a card's username and password lead its participant into their own, freshly started ComfyUI."""
    import re

    page = browser.new_page(viewport=LAPTOP_PROJECTOR)
    sign_in_as_instructor(page, platform, "/admin/workshops/workshop/")
    page.click("text=New workshop with seats")
    page.fill("#id_slug", "evening")
    page.fill("#id_title", "Evening class")
    page.fill("#id_names", "Ada Lovelace\nAgnès Varda\n")
    page.select_option("#id_backends", label="simulator")
    page.click("input[type=submit]")
    page.wait_for_selector("text=Evening class — seat credentials", timeout=SLOW)
    html = page.content()
    cards = re.findall(r"<dt>Username</dt><dd>([^<]+)</dd>\s*<dt>Password</dt><dd>([^<]+)</dd>", html)
    assert [u for u, _ in cards] == ["evening-user001", "evening-user002"]
    assert "Agnès Varda · seat user002" in page.inner_text("body")
    assert page.locator(".card svg").count() == 2  # a QR code per card
    page.screenshot(path=str(ARTIFACTS / "instructor-credential-cards.png"), full_page=True)
    page.close()
    # This workshop has no default template: its canvas stays empty, so only the canvas is waited for.
    _card_signs_in(browser, platform, "evening", "user002", *cards[1]).close()


def _seat_action(page, platform: Platform, username: str, action: str) -> None:
    """In admin → Seats, tick the seat of ``username`` and run ``action`` on it."""
    page.goto(f"{platform.base}/admin/workshops/seat/?q={username}")
    page.check("input.action-select")
    page.select_option("select[name=action]", action)
    page.click("button[name=index]")


def test_the_instructor_handles_one_participant_at_a_time(dashboard, platform, browser):
    """During a session: one lost card replaced (the other seats' cards and sessions untouched), a late
    participant added to the running workshop and signed in with their new card, one seat given more time."""
    import re

    page = browser.new_page(viewport=LAPTOP_PROJECTOR)
    sign_in_as_instructor(page, platform, "/admin/workshops/seat/")
    _seat_action(page, platform, "demo-user002", "new_cards")
    page.wait_for_selector("text=whoever signed in with them is signed out", timeout=SLOW)
    page.screenshot(path=str(ARTIFACTS / "instructor-new-card-confirm.png"), full_page=True)
    page.click("button[name=confirm]")
    page.wait_for_selector(".card svg", timeout=SLOW)
    cards = re.findall(r"<dt>Username</dt><dd>([^<]+)</dd>\s*<dt>Password</dt><dd>([^<]+)</dd>", page.content())
    assert [u for u, _ in cards] == ["demo-user002"]  # only the lost card is reprinted

    demo = _demo_pk(platform)
    page.goto(f"{platform.base}/admin/workshops/workshop/{demo}/change/")  # after shell's own notes
    page.click(".object-tools a:text-is('Add seats')")
    page.fill("#id_names", "Late Larry\n")
    page.screenshot(path=str(ARTIFACTS / "instructor-add-seats.png"), full_page=True)
    page.click("input[type=submit]")
    page.wait_for_selector("text=Late Larry · seat user003", timeout=SLOW)
    late = re.findall(r"<dt>Username</dt><dd>([^<]+)</dd>\s*<dt>Password</dt><dd>([^<]+)</dd>", page.content())
    assert [u for u, _ in late] == ["demo-user003"]
    page.screenshot(path=str(ARTIFACTS / "instructor-late-participant-card.png"), full_page=True)

    platform.manage(
        "shell",
        "-c",
        "from workshops.models import Workshop as W; W.objects.filter(slug='demo').update(seat_gpu_budget_seconds=600)",
    )
    _seat_action(page, platform, "demo-user003", "more_budget")
    page.fill("#id_gpu_minutes", "15")
    page.click("input[name=apply]")
    page.wait_for_selector("text=Raised the budget of user003 of demo", timeout=SLOW)
    assert "0 s of 1500 s (raised)" in page.inner_text("#result_list")
    page.screenshot(path=str(ARTIFACTS / "instructor-more-budget.png"), full_page=True)
    page.close()

    participant = _card_signs_in(browser, platform, "demo", "user003", *late[0])
    participant.screenshot(path=str(ARTIFACTS / "participant-late-seat.png"))
    participant.close()


def test_a_participant_takes_their_work_home_and_the_instructor_sizes_the_day(
    dashboard, participant, platform, browser
):
    """After the first test's job: user001's outputs page lists it with its downloads, a personal link opens the same
    page signed out, and the workshop's GPUs and cost page answers from the jobs that ran."""
    page = browser.new_page(viewport=LAPTOP_PROJECTOR, storage_state=participant.context.storage_state())
    page.goto(f"{platform.base}/outputs/")
    page.wait_for_selector(".tile img", timeout=SLOW)
    assert "Download all (ZIP)" in page.inner_text("body")
    zip_answer = page.request.get(f"{platform.base}/outputs/all.zip")
    assert zip_answer.status == 200 and zip_answer.body()[:2] == b"PK"
    page.click("text=Make a personal link")
    link = page.input_value("#take-home-link")
    page.screenshot(path=str(ARTIFACTS / "participant-outputs.png"), full_page=True)
    page.close()
    stranger = browser.new_page(viewport=LAPTOP_PROJECTOR)  # a fresh context: no session at all
    stranger.goto(link)
    stranger.wait_for_selector(".tile img", timeout=SLOW)
    assert "Back to your ComfyUI" not in stranger.inner_text("body")
    stranger.screenshot(path=str(ARTIFACTS / "participant-take-home-link.png"), full_page=True)
    stranger.close()

    demo = _demo_pk(platform)
    page = browser.new_page(viewport=LAPTOP_PROJECTOR)
    sign_in_as_instructor(page, platform, f"/admin/workshops/workshop/{demo}/change/")
    page.click(".object-tools a:text-is('GPUs and cost')")
    page.wait_for_selector("#estimate", timeout=SLOW)
    assert "the median of" in page.inner_text("body")  # measured from the jobs that ran
    page.fill("#id_jobs_per_hour", "12")
    page.click("input[type=submit]")
    page.wait_for_selector("#estimate", timeout=SLOW)
    page.screenshot(path=str(ARTIFACTS / "instructor-gpus-and-cost.png"), full_page=True)
    page.close()


def _set_spending_cap(page, platform: Platform, value: str) -> None:
    """The instructor types the workshop's spending cap in its admin page and saves it."""
    demo = _demo_pk(platform)
    page.goto(f"{platform.base}/admin/workshops/workshop/{demo}/change/")
    page.fill("#id_spending_cap", value)
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist .success", timeout=SLOW)


def test_a_spending_cap_holds_the_queue_with_a_banner_for_everyone_until_it_is_raised(dashboard, participant, platform,
                                                                                         browser):  # fmt: skip
    admin_page = browser.new_page(viewport=LAPTOP_PROJECTOR)
    sign_in_as_instructor(admin_page, platform, "/admin/")
    _set_spending_cap(admin_page, platform, "0")  # the simulator costs nothing: a cap of 0 is reached at once
    dashboard.wait_for_selector("#capped-banner", state="visible", timeout=SLOW)
    assert "0.00 of 0.00" in dashboard.inner_text("#capped-banner")
    participant.click(RUN_BUTTON)
    job = _first_row(dashboard, "#queue-rows tr[data-status=queued]")
    participant.wait_for_selector("#comfyume-banner >> text=GPU budget is spent", timeout=SLOW)
    dashboard.wait_for_timeout(3000)  # a reconciler sweep later, it still waits
    assert dashboard.get_attribute(f'#queue-rows tr[data-job="{job}"]', "data-status") == "queued"
    dashboard.screenshot(path=str(ARTIFACTS / "instructor-dashboard-spending-cap.png"), full_page=True)
    participant.screenshot(path=str(ARTIFACTS / "participant-spending-cap.png"))

    _set_spending_cap(admin_page, platform, "")  # no cap: the queue goes on at once
    dashboard.wait_for_selector("#capped-banner", state="hidden", timeout=SLOW)
    dashboard.wait_for_selector(f'#ended-rows tr[data-job="{job}"][data-status=succeeded]', timeout=SLOW)
    admin_page.close()


def test_the_instructor_rehearses_and_hands_out_take_home_links_from_the_admin(dashboard, platform, browser, tmp_path):
    """The Rehearse page runs the uploaded template as two simulated participants in a worker and shows the report;
    the seat list's action prints each seat's take-home link with its QR code."""
    import time

    from tests.recorded import TINY_PATH

    prompt = tmp_path / "tiny_invert.json"
    prompt.write_text(TINY_PATH.read_text())
    demo = _demo_pk(platform)
    page = browser.new_page(viewport=LAPTOP_PROJECTOR)
    sign_in_as_instructor(page, platform, f"/admin/workshops/workshop/{demo}/change/")
    page.click(".object-tools a:text-is('Rehearse')")
    page.set_input_files("#id_prompts", str(prompt))
    page.fill("#id_participants", "2")
    page.fill("#id_timeout", "120")
    page.click("input[type=submit]")
    page.wait_for_selector("text=Rehearsal of demo started", timeout=SLOW)
    deadline = time.monotonic() + 90
    while "tiny_invert: 2 of 2 done" not in page.inner_text("body"):
        assert time.monotonic() < deadline, page.inner_text("body")[-1500:]
        page.wait_for_timeout(2000)
        page.reload()
    assert "First job on a GPU after" in page.inner_text("body")
    page.screenshot(path=str(ARTIFACTS / "instructor-rehearsal.png"), full_page=True)

    page.goto(f"{platform.base}/admin/workshops/seat/?workshop__id__exact={demo}")
    page.check("#action-toggle")
    page.select_option("select[name=action]", "take_home_links")
    page.click("button[name=index]")
    page.wait_for_selector("table.take-home svg", timeout=SLOW)
    assert page.locator("table.take-home a[href*='/take-home/']").count() >= 2
    page.screenshot(path=str(ARTIFACTS / "instructor-take-home-links.png"), full_page=True)
    page.close()
