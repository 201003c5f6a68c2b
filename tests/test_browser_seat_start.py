"""A participant whose seat's ComfyUI is stopped signs in, in headless Chromium: signing in starts it, the
waiting page says so, and forwards them into their ComfyUI by itself once it answers (no push event exists for
that moment: the page asks the hub on load, on reconnect and every 2 s)."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.launched import CHROMIUM, launch

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)"),
]


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    launched = launch(tmp_path_factory.mktemp("seat-start"), seats=2)
    yield launched
    launched.stop()


def _answers(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/comfyume/health", timeout=1).ok
    except requests.RequestException:
        return False


def _until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def stopped_seats(platform):
    """The demo's seats, started by run_platform, then stopped by the instructor before anyone signs in."""
    ports = [platform.seat_base, platform.seat_base + 1]
    _until(lambda: all(_answers(p) for p in ports))
    result = platform.manage("seat_frontends", "stop", "--workshop", "demo")
    assert result.returncode == 0, result.stderr
    _until(lambda: not any(_answers(p) for p in ports))
    return json.loads((platform.data_dir / "demo_credentials.json").read_text())


def _waits_then_forwards(page, platform, seat_port: int) -> None:
    assert page.url == f"{platform.base}/"  # the waiting page, not yet the seat
    assert page.get_attribute("#comfyui", "data-phase") in ("starting", "answering")
    assert "Your ComfyUI" in page.inner_text("#comfyui-message")
    page.wait_for_url(f"http://127.0.0.1:{seat_port}/**", timeout=60_000)


def test_a_join_link_starts_a_stopped_seat_and_the_page_forwards_into_it(platform, browser, stopped_seats):
    page = browser.new_page()
    page.goto(stopped_seats[0]["join_url"])
    _waits_then_forwards(page, platform, platform.seat_base)
    page.close()


def test_a_password_sign_in_starts_a_stopped_seat_even_with_the_pages_socket_down(platform, browser, stopped_seats):
    page = browser.new_page()
    # A socket that never connects (so no event, no reconnect): only the page's own questions tell it.
    page.add_init_script("window.WebSocket = class { close() {} };")
    page.goto(f"{platform.base}/login/")
    page.fill("#id_username", stopped_seats[1]["username"])
    page.fill("#id_password", stopped_seats[1]["password"])
    page.click("button[type=submit]")
    page.wait_for_load_state()
    _waits_then_forwards(page, platform, platform.seat_base + 1)
    page.close()
