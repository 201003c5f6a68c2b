"""Video outputs end to end, as people see them: `run_platform` with the ComfyUI simulator, the instructor loads
a small text-to-video-shaped template (EmptyImage frames → CreateVideo → SaveVideo, no model), a participant opens
it from ComfyUI's Workflows sidebar and runs it, the MP4 plays in the SaveVideo node's preview, and the
instructor's gallery plays it too.

Debian's Chromium decodes H.264, so a <video> that reaches readyState 2 and advances when played proves the
whole path: the simulator's encoder, the hub's stored Artifact, the seat frontend's /view with ranges.
Screenshots are kept in test-artifacts/.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.launched import ADMIN_PASSWORD, ARTIFACTS, CHROMIUM, ROOT, RUN_BUTTON, launch, wait_for_comfyui

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)"),
]

VIDEO_TEMPLATE = ROOT / "workshops" / "data" / "templates" / "tiny-video.json"
VIDEO_FILE = "ComfyUI_00001_.mp4"  # SaveVideo's "video/ComfyUI" prefix, as ComfyUI names its first file


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    launched = launch(tmp_path_factory.mktemp("video"), seats=1)
    loaded = launched.manage("load_templates", str(VIDEO_TEMPLATE), "--workshop", "demo")
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    yield launched
    launched.stop()


# The Workflows sidebar tab: 1.27's class, newer frontends' test id.
WORKFLOWS_TAB = "button.workflows-tab-button, [data-testid=workflows-tab-button]"


def _playing(page, selector: str) -> dict:
    """Play the first <video> matching ``selector`` (muted, so no autoplay policy stops it) until it has moved
    on; its source, readyState, size and current time."""
    page.wait_for_function(
        f"() => [...document.querySelectorAll({selector!r})].some(v => v.readyState >= 2)", timeout=30000
    )
    page.evaluate(f"() => {{ const v = document.querySelector({selector!r}); v.muted = true; return v.play(); }}")
    page.wait_for_function(f"() => document.querySelector({selector!r}).currentTime > 0.2", timeout=15000)
    return page.evaluate(
        f"""() => {{
            const v = document.querySelector({selector!r});
            return {{src: v.src, readyState: v.readyState, width: v.videoWidth, height: v.videoHeight,
                     duration: v.duration, error: v.error && v.error.code}};
        }}"""
    )


def test_participant_runs_a_video_workflow_and_it_plays_in_the_save_video_node(platform, browser) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (seat,) = json.loads((platform.data_dir / "demo_credentials.json").read_text())
    page = browser.new_page(viewport={"width": 1300, "height": 850})
    video_responses: list[tuple[int, str]] = []

    def note_video(response) -> None:
        if VIDEO_FILE in response.url:
            video_responses.append((response.status, response.headers.get("content-type", "")))

    page.on("response", note_video)
    page.goto(seat["join_url"])
    wait_for_comfyui(page)
    # load_templates told the seat to fetch its templates; they land in the participant's workflow list.
    deadline = time.monotonic() + 30
    while "tiny-video.json" not in page.evaluate(
        "async () => (await window.comfyAPI.api.api.listUserDataFullInfo('workflows')).map(f => f.path)"
    ):
        assert time.monotonic() < deadline, "the video template never reached the seat's workflow list"
        time.sleep(0.5)
    page.click(WORKFLOWS_TAB)
    page.get_by_text(re.compile(r"^tiny-video(\.json)?$")).first.click()  # newer frontends drop the .json
    page.wait_for_function(
        "() => window.comfyAPI.app.app.graph._nodes.some(n => n.type === 'SaveVideo')", timeout=15000
    )
    page.click(WORKFLOWS_TAB)  # close the sidebar again

    page.click(RUN_BUTTON)
    page.wait_for_function(
        "() => (document.getElementById('comfyume-banner')?.innerText || '').includes('Done')", timeout=60000
    )
    page.wait_for_function(
        "() => window.comfyAPI.app.app.graph._nodes.some(n => n.type === 'SaveVideo' && n.videoContainer)",
        timeout=30000,
    )
    video = _playing(page, ".comfy-img-preview video")
    page.screenshot(path=str(ARTIFACTS / "participant-comfyui-video.png"))
    assert "/view?" in video["src"] and f"filename={VIDEO_FILE}" in video["src"]
    assert (video["width"], video["height"], video["error"]) == (320, 240, None)  # the template's EmptyImage
    assert video["duration"] == pytest.approx(2.0, abs=0.1)  # 24 frames at 12 fps
    assert video_responses and all(status in (200, 206) for status, _ in video_responses), video_responses
    assert {content_type for _, content_type in video_responses} == {"video/mp4"}
    page.close()


def test_the_instructors_gallery_plays_the_participants_video(platform, browser):
    page = browser.new_page(viewport={"width": 1300, "height": 850})
    page.goto(f"{platform.base}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", ADMIN_PASSWORD)
    page.click("input[type=submit]")
    page.goto(f"{platform.base}/admin/outputs/demo/?kind=video")
    page.wait_for_selector(".tile-video video[controls]")
    assert VIDEO_FILE in page.inner_text(".tile-video figcaption")
    video = _playing(page, ".tile-video video")
    page.screenshot(path=str(ARTIFACTS / "instructor-gallery-video.png"), full_page=True)
    assert (video["width"], video["height"], video["error"]) == (320, 240, None)
    start = page.request.get(video["src"], headers={"Range": "bytes=0-99"})
    assert (start.status, start.headers["content-type"], len(start.body())) == (206, "video/mp4", 100)
    page.close()
