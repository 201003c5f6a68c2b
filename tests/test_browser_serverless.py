"""The serverless GPU path in a real browser, as the instructor and a participant see it.

`run_platform` (what `make run` runs) with a fake Verda in front of the real GPU worker, which runs jobs on the
session's ComfyUI simulator. The instructor adds the Verda backend through the admin's form, gives it to the
demo workshop instead of the simulator and tests its connection. Once that replica has gone, a participant
presses Run in their ComfyUI: their banner counts the cold start ("GPU starting · N s") and the instructor's
dashboard shows the backend warming up, then the image arrives and the backend is ready. One job is one request
to the gateway.
The instructor then sees, on a real template's page, which of its models each GPU backend has.

Screenshots go to test-artifacts/ (participant-gpu-starting.png, instructor-dashboard-warming.png,
admin-template-models.png).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from tests.fake_verda import CLIENT_ID, CLIENT_SECRET, INFERENCE_KEY, FakeVerda
from tests.gpu_worker import gpu_worker
from tests.launched import ARTIFACTS, CHROMIUM, RUN_BUTTON, Platform, check_backend_in_admin, launch, wait_for_comfyui
from tests.test_browser_dashboard import LAPTOP_PROJECTOR, SLOW, sign_in_as_instructor

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)"),
]

DEPLOYMENT = "comfy-h200"
COLD_START = 6.0  # seconds the fake's first replica is "starting": long enough to see, short enough for CI
BACKEND_ROW = f'#backend-rows tr[data-backend="{DEPLOYMENT}"]'
BANNER = "#comfyume-banner .cm-text"


@dataclass
class Serverless:
    platform: Platform
    verda: FakeVerda


@pytest.fixture(scope="module")
def serverless(tmp_path_factory, simulator) -> Iterator[Serverless]:
    """A fake Verda whose one deployment (no replica yet) forwards to a GPU worker next to the session's
    simulator, and `run_platform` holding its inference key and management API credentials.

    With the API credentials the reconciler reads the deployment's replicas and records it *cold*, which is
    what makes a job sent to it show "GPU starting" (docs/OPERATIONS.md, "Serverless GPUs on Verda").
    """
    logs = tmp_path_factory.mktemp("serverless")
    with FakeVerda() as verda, gpu_worker(simulator.url, log_path=logs / "gpu-worker.log") as worker:
        verda.add_deployment(DEPLOYMENT, worker, startup_delay=COLD_START, running=False)
        # The worker calls back to COMFYUME_CALLBACK_URL, which defaults to the public URL launch() sets.
        platform = launch(
            logs,
            seats=1,
            COMFYUME_VERDA_INFERENCE_KEY=INFERENCE_KEY,
            COMFYUME_VERDA_API_URL=verda.api_url,
            COMFYUME_VERDA_CLIENT_ID=CLIENT_ID,
            COMFYUME_VERDA_CLIENT_SECRET=CLIENT_SECRET,
        )
        try:
            yield Serverless(platform, verda)
        finally:
            # Kept for a failure's post-mortem: stop() removes the platform's data dir with its logs.
            shutil.copytree(platform.data_dir / "logs", logs / "platform-logs", dirs_exist_ok=True)
            platform.stop()


@pytest.fixture(scope="module")
def instructor(serverless, browser):
    """A browser context signed in to the admin as the instructor (its pages share the session)."""
    context = browser.new_context(viewport=LAPTOP_PROJECTOR)
    page = context.new_page()
    sign_in_as_instructor(page, serverless.platform, "/admin/")
    page.wait_for_selector("#site-name", timeout=SLOW)
    yield context
    context.close()


@pytest.fixture(scope="module")
def verda_backend(serverless, instructor) -> str:
    """The instructor adds the Verda backend with the admin's form, swaps it for the simulator in the demo
    workshop's change page (its filter_horizontal widget), then, as docs/OPERATIONS.md says, runs *Test
    connection*: it starts a replica and reads the node list, which the participants' ComfyUI needs to load.
    That replica then idles out (Verda scales it down after the deployment's scale-down delay; the fake has no
    such delay, so it is removed here): the participant's job meets a cold start."""
    base = serverless.platform.base
    page = instructor.new_page()
    page.goto(f"{base}/admin/gpu_backends/gpubackend/add/")
    page.fill("#id_name", DEPLOYMENT)
    page.select_option("#id_kind", label="Verda serverless container (GPU worker)")
    page.fill("#id_url", serverless.verda.deployment_url(DEPLOYMENT))
    page.fill("#id_gpu_type", "H200")
    page.fill("#id_max_concurrency", "1")
    page.fill("#id_order", "0")
    page.click("input[name=_save]")  # the Verda fieldset keeps its defaults (key variable, auto mode, …)
    page.wait_for_selector(".messagelist .success", timeout=SLOW)
    assert page.query_selector(".errornote") is None
    assert DEPLOYMENT in page.inner_text(".messagelist")

    page.goto(f"{base}/admin/workshops/workshop/")
    page.click("#result_list a >> text=demo")
    page.wait_for_selector("#id_backends_from", timeout=SLOW)
    page.select_option("#id_backends_from", label=DEPLOYMENT)
    page.click("#id_backends_add")
    page.select_option("#id_backends_to", label="simulator")
    page.click("#id_backends_remove")
    chosen = page.eval_on_selector_all("#id_backends_to option", "options => options.map(o => o.textContent)")
    assert chosen == [DEPLOYMENT]
    page.click("input[name=_save]")
    page.wait_for_selector(".messagelist .success", timeout=SLOW)
    assert page.query_selector(".errornote") is None

    check_backend_in_admin(page, base, DEPLOYMENT, SLOW)
    page.close()
    serverless.verda.kill_replicas(DEPLOYMENT)
    return DEPLOYMENT


def _backend_state(platform: Platform, name: str) -> str | None:
    backends = requests.get(f"{platform.base}/health", timeout=5).json()["backends"]
    return backends.get(name, {}).get("state")


def _wait_until_cold(serverless: Serverless, name: str) -> None:
    """Until the reconciler has read Verda's replica list (every 30 s): no replica and a minimum of 0 is cold."""
    platform, verda = serverless.platform, serverless.verda
    deadline = time.monotonic() + 45
    while _backend_state(platform, name) != "cold":
        if time.monotonic() > deadline:
            reconciler = (platform.data_dir / "logs" / "reconciler.log").read_text()[-2000:]
            seen = [(r.method, r.path, r.answered) for r in verda.requests]
            pytest.fail(f"{name} never became cold ({_backend_state(platform, name)}).\n{reconciler}\n{seen}")
        time.sleep(0.5)
    assert not verda.deployments[name].replicas


def _banner_seconds(page) -> int | None:
    match = re.search(r"GPU starting · (\d+) s", page.inner_text(BANNER) if page.query_selector(BANNER) else "")
    return int(match.group(1)) if match else None


def test_a_participants_job_waits_out_the_cold_start_and_its_image_arrives(
    serverless, instructor, verda_backend, browser
):
    platform, verda = serverless.platform, serverless.verda
    ARTIFACTS.mkdir(exist_ok=True)
    (seat,) = json.loads((platform.data_dir / "demo_credentials.json").read_text())
    participant = browser.new_page(viewport={"width": 1300, "height": 850})  # its own context and session
    participant.goto(seat["join_url"])
    wait_for_comfyui(participant)
    participant.wait_for_function(
        "() => document.body.textContent.includes('Tiny test (invert an image)')", timeout=SLOW
    )

    _wait_until_cold(serverless, verda_backend)

    dashboard = instructor.new_page()
    dashboard.goto(f"{platform.base}/admin/live/demo/")
    dashboard.wait_for_selector("#live-status.live", timeout=SLOW)
    dashboard.evaluate("window.notReloaded = true")
    assert "Cold" in dashboard.inner_text(BACKEND_ROW)

    started = time.monotonic()
    participant.click(RUN_BUTTON)
    # The banner names the wait and counts it; the dashboard shows the backend warming up, both without a reload.
    participant.wait_for_selector(f"{BANNER} >> text=/GPU starting · \\d+ s/", timeout=SLOW)
    dashboard.wait_for_selector(f"{BACKEND_ROW} >> text=Warming up", timeout=COLD_START * 1000)
    first = _banner_seconds(participant)
    assert first is not None
    participant.wait_for_function(
        f"""() => {{
            const m = (document.querySelector({BANNER!r})?.innerText || '').match(/GPU starting · (\\d+) s/);
            return m && Number(m[1]) > {first};
        }}""",
        timeout=5000,
    )
    participant.screenshot(path=str(ARTIFACTS / "participant-gpu-starting.png"))
    assert "starting for" in dashboard.inner_text(BACKEND_ROW)
    assert verda_backend in dashboard.inner_text("#queue-rows")
    starting_words = dashboard.inner_text("#queue-rows .progress")  # checked at the end (see there)
    dashboard.screenshot(path=str(ARTIFACTS / "instructor-dashboard-warming.png"), full_page=True)

    # The replica is up: the worker runs the job and calls back; Done and the image, as on any other GPU.
    participant.wait_for_function(
        f"() => (document.querySelector({BANNER!r})?.innerText || '').startsWith('Done')", timeout=SLOW
    )
    assert time.monotonic() - started >= COLD_START - 0.5  # the job did wait for the replica to start
    participant.wait_for_function(
        "() => window.comfyAPI.app.app.graph._nodes.some(n => n.type === 'SaveImage' && n.imgs?.length > 0)",
        timeout=15000,
    )
    dashboard.wait_for_selector(f"{BACKEND_ROW} >> text=Ready", timeout=SLOW)
    dashboard.wait_for_selector("#ended-rows tr[data-status=succeeded]", timeout=SLOW)
    assert dashboard.evaluate("window.notReloaded") is True

    runs = [r for r in verda.gateway_requests(DEPLOYMENT) if r.method == "POST" and r.path.endswith("/run")]
    assert [(r.path, r.answered) for r in runs] == [(f"/{DEPLOYMENT}/run", 200)], platform.tail()
    # A job waiting for its replica shows only these words under its progress bar (a cold start lasts minutes).
    assert starting_words.strip() == "starting on the GPU…", starting_words
    dashboard.close()
    participant.close()


def test_a_templates_page_shows_which_models_each_gpu_backend_has(serverless, instructor, verda_backend):
    page = instructor.new_page()
    page.goto(f"{serverless.platform.base}/admin/workshops/workflowtemplate/")
    page.click("#result_list a >> text=Flux.2 Klein 4B — text to image")
    page.wait_for_selector("text=Models on each GPU backend", timeout=SLOW)
    table = page.locator(".field-model_inventory table")
    headers = table.locator("thead th").all_text_contents()  # not inner text: the admin's CSS capitalises it
    assert headers[:2] == ["Model file", "Folder"] and {verda_backend, "simulator"} <= set(headers[2:])
    text = table.inner_text()
    assert "flux-2-klein-base-4b.safetensors" in text and "diffusion_models" in text
    # Neither backend has Flux.2: the simulator's catalogue, and the worker's that Test connection read.
    assert re.search(r"✘ missing|✘ node type missing|not read yet", text)
    page.locator(".field-model_inventory").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "admin-template-models.png"), full_page=True)
    page.close()
