"""A participant's walk through their seat on every supported ComfyUI web frontend (issue 17): `make run` with
``COMFYUME_FRONTEND_VERSION`` set, then in headless Chromium: load the seat, open the queue panel and run the
template (the panel shows the job while it runs), the history / assets (the seat's own output, never another
seat's), the Templates browser (the workshop's templates, with pictures), a subgraph saved and reopened, and
Run again through the subgraph. No request of the walk may fail but those a stock ComfyUI of that version also
answers with 404 (a user file that does not exist yet). Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.launched import ARTIFACTS, CHROMIUM, RUN_BUTTON, launch, run_until_image, wait_for_comfyui
from workshops.seat_frontend.frontend_package import SUPPORTED_VERSIONS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)"),
]

ROOT = Path(__file__).resolve().parent.parent
# Versions other than the installed one are installed here once (pip, from PyPI) and kept between runs.
FRONTENDS_CACHE = ROOT / ".cache" / "frontends"

# What a stock ComfyUI of these versions answers with 404 too: user files that do not exist yet (the user's
# stylesheet, the templates' custom index, the subgraphs folder before the first subgraph is published).
STOCK_404 = re.compile(r"/(user\.css|api/userdata/(user\.css|comfy\.templates\.json)|api/userdata\?dir=subgraphs)")


def _stock(status: int, url: str) -> bool:
    return status == 404 and STOCK_404.search(url) is not None


def _view_subfolders(page) -> set[str]:
    """The job folders of every output image the page shows in its panels (``/api/view?...&subfolder=<prompt>``)."""
    sources = page.evaluate("() => [...document.querySelectorAll('img')].map(i => i.src)")
    found = set()
    for src in sources:
        query = parse_qs(urlsplit(src).query)
        if "/view" in src and query.get("type") == ["output"]:
            found.update(query.get("subfolder", []))
    return found


def _open_queue_panel(page) -> None:
    """The queue: newer frontends' job queue overlay, or 1.27's Queue sidebar tab."""
    overlay = page.locator("[data-testid=queue-overlay-toggle]")
    if overlay.count():
        overlay.click()
    else:
        page.click("button[aria-label='Queue (q)']")


QUEUE_SHOWS_A_JOB = """() => {
    const overlay = document.querySelector('[data-testid=queue-overlay-toggle]');
    if (overlay) return /[1-9]\\d* active/.test(overlay.innerText);
    return [...document.querySelectorAll('.task-item')].some(t => /Running|Pending/.test(t.innerText));
}"""

CONVERT_AND_SAVE = """async () => {
    const app = window.comfyAPI.app.app;
    const node = app.graph._nodes.find(n => n.type === 'ImageInvert');
    app.canvas.deselectAll();
    app.canvas.select(node);
    await app.extensionManager.command.execute('Comfy.Graph.ConvertToSubgraph');
    // A change made by a script, not by the pointer: tell the workflow's change tracker, as a click would.
    app.extensionManager.workflow.activeWorkflow.changeTracker.checkState();
    await app.extensionManager.command.execute('Comfy.SaveWorkflow');
    return app.graph.subgraphs.size;
}"""


# The SaveImage node shows an image of a job other than the ones given (after a reload, the banner may still
# say the previous job's "Done").
NEW_IMAGE_IN_SAVE_NODE = """(known) => window.comfyAPI.app.app.graph._nodes.some(n => n.type === 'SaveImage'
    && (n.imgs || []).some(i => i.naturalWidth > 0 && i.src.includes('view?')
                               && !known.some(p => i.src.includes(p))))"""


# Every distinct picture drawn as a node's live preview (a blob: URL in the app's preview images, or in a node's
# own images), as the frontend keeps them: 1.27 under the running node, newer ones under the node named.
WATCH_PREVIEWS = """() => {
    window.__previewsSeen = [];
    setInterval(() => {
        const app = window.comfyAPI.app.app;
        const urls = Object.values(app.nodePreviewImages || {}).flat();
        for (const node of app.graph._nodes) urls.push(...(node.imgs || []).map(i => i.src));
        const seen = window.__previewsSeen;
        for (const url of urls) if (String(url).startsWith('blob:') && !seen.includes(url)) seen.push(url);
    }, 30);
}"""


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_a_participants_walk_on_each_supported_frontend(version, tmp_path, browser):
    launched = launch(tmp_path, seats=2, COMFYUME_FRONTEND_VERSION=version, COMFYUME_FRONTENDS_DIR=str(FRONTENDS_CACHE))
    try:
        _walk(version, launched, browser)
    finally:
        launched.stop()


def _walk(version: str, launched, browser) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = f"frontend-{version}"
    seats = json.loads((launched.data_dir / "demo_credentials.json").read_text())

    # Another participant's job first: nothing of it may show up in this participant's panels.
    other = browser.new_page(viewport={"width": 1300, "height": 850})
    other.goto(seats[1]["join_url"])
    wait_for_comfyui(other)
    run_until_image(other)
    [other_prompt] = other.evaluate("async () => Object.keys(await (await fetch('api/history')).json())")
    other.close()

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    failures: list[str] = []
    pictures: list[str] = []

    def note(response) -> None:
        if response.status >= 400 and not _stock(response.status, response.url):
            failures.append(f"{response.status} {response.request.method} {response.url}")
        if response.status == 200 and response.url.endswith(("-1.svg", "-1.png")):
            pictures.append(response.url.rsplit(".", 1)[1])

    page.on("response", note)
    page.goto(seats[0]["join_url"])
    wait_for_comfyui(page)
    assert page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__") == version
    stats = page.evaluate("async () => (await (await fetch('api/system_stats')).json()).system")
    assert stats["required_frontend_version"] == version
    # No comfy.org sign-in (API-node credits) in a seat (the seat's extension hides the newer frontends' button).
    assert not page.locator("[data-testid=login-button]").is_visible()

    # The queue panel shows the job while it runs, then the image comes back.
    _open_queue_panel(page)
    page.click(RUN_BUTTON)
    page.wait_for_function(QUEUE_SHOWS_A_JOB, timeout=30000, polling=50)
    page.screenshot(path=str(ARTIFACTS / f"{shot}-queue-running.png"))
    run_until_image(page, click=False)
    [own_prompt] = page.evaluate("async () => Object.keys(await (await fetch('api/history')).json())")

    # History / assets: the seat's own output, not the other seat's.
    history = page.locator("[data-testid=assets-tab-button]")
    if history.count():
        history.click()
    page.wait_for_function(
        f"() => [...document.querySelectorAll('img')].some(i => i.src.includes('{own_prompt}') && i.naturalWidth > 0)",
        timeout=30000,
    )
    page.screenshot(path=str(ARTIFACTS / f"{shot}-history.png"))
    assert _view_subfolders(page) == {own_prompt} != {other_prompt}

    # The Templates browser offers the workshop's templates, each with its picture; one opens.
    page.evaluate("() => window.comfyAPI.app.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    card = page.get_by_text("Tiny video (24 frames, SaveVideo)", exact=True)
    card.wait_for(timeout=15000)
    # Newer frontends draw the pictures from blobs of the fetched files: count the fetches and the drawn images.
    page.wait_for_function(
        "() => [...document.querySelectorAll('[role=dialog] img')].filter(i => i.naturalWidth > 0).length >= 2",
        timeout=15000,
    )
    # The demo's video template has its own picture (a PNG from the hub), the other a card drawn by the seat.
    assert {"png", "svg"} <= set(pictures), pictures
    page.screenshot(path=str(ARTIFACTS / f"{shot}-templates.png"))
    card.click()
    page.wait_for_function(
        "() => window.comfyAPI.app.app.graph._nodes.some(n => n.type === 'SaveVideo')", timeout=15000
    )

    # A subgraph, saved into the participant's own copy of the template and there again after a reload; Run
    # sends the graph inside it.
    page.evaluate("() => window.comfyAPI.app.app.extensionManager.command.execute('Workspace.PreviousOpenedWorkflow')")
    page.wait_for_function(
        "() => window.comfyAPI.app.app.graph._nodes.some(n => n.type === 'ImageInvert')", timeout=15000
    )
    assert page.evaluate(CONVERT_AND_SAVE) == 1
    saved = page.evaluate(
        "async (name) => (await (await fetch('api/userdata/' + encodeURIComponent(name))).json())",
        "workflows/Tiny test (invert an image).json",
    )
    assert [n["type"] for n in saved["definitions"]["subgraphs"][0]["nodes"]] == ["ImageInvert"]
    page.reload()
    wait_for_comfyui(page)
    page.wait_for_function("() => window.comfyAPI.app.app.graph.subgraphs?.size === 1", timeout=15000)
    page.click(RUN_BUTTON)
    page.wait_for_function(NEW_IMAGE_IN_SAVE_NODE, arg=[own_prompt, other_prompt], timeout=60000)
    page.screenshot(path=str(ARTIFACTS / f"{shot}-subgraph-ran.png"))

    # Live previews: every node now ticks 6 steps of 1.5 s and the simulator sends a preview per step, as
    # ComfyUI's latent previewer does; the participant sees pictures change on the running node before the
    # saved image arrives.
    simulator = f"http://127.0.0.1:{launched.env['COMFYUME_SIMULATOR_PORT']}"
    tuned = requests.post(
        f"{simulator}/simulator/config", json={"progress_steps": 6, "progress_all": True, "node_delay": 1.5}, timeout=5
    )
    assert tuned.status_code == 200, tuned.text
    page.evaluate(WATCH_PREVIEWS)
    page.click(RUN_BUTTON)
    page.wait_for_function("() => window.__previewsSeen.length >= 3", timeout=30000)
    page.screenshot(path=str(ARTIFACTS / f"{shot}-live-preview.png"))
    previews_before_image = page.evaluate("() => window.__previewsSeen.length")
    page.wait_for_function(NEW_IMAGE_IN_SAVE_NODE, arg=[own_prompt, other_prompt], timeout=60000)
    assert previews_before_image >= 3
    assert failures == [], failures
    page.close()
