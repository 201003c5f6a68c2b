"""`manage.py run_platform` (what `make run` runs) as a subprocess on free ports, for the browser tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ADMIN_PASSWORD = "e2e-admin-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_range(count: int) -> int:
    """The first of ``count`` consecutive free ports (seat frontends take one each)."""
    for _ in range(50):
        base = free_port()
        if all(port_is_free(p) for p in range(base, base + count)):
            return base
    raise RuntimeError("no free port range")


def children(pid: int) -> list[int]:
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


def descendants(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Platform:
    base: str
    port: int
    proc: subprocess.Popen
    log: IO[str]
    data_dir: Path
    seat_base: int
    env: dict[str, str]

    def tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-3000:]

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A management command against this platform's database."""
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        if not os.environ.get("COMFYUME_KEEP_E2E"):  # set it to read a failed run's logs in data_dir/logs
            shutil.rmtree(self.data_dir, ignore_errors=True)


def launch(log_dir: Path, seats: int = 3, **extra_env: str) -> Platform:
    """Start run_platform in its own data dir (SQLite, embedded Redis) and wait for its banner."""
    data_dir = Path(tempfile.mkdtemp(prefix="cfme-e2e-"))  # short: it holds the embedded Redis's unix socket
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    env.update(
        COMFYUME_DATA_DIR=str(data_dir),
        COMFYUME_REDIS_PREFIX=f"cfme-e2e-{os.getpid()}-{port}",
        COMFYUME_SIMULATOR_PORT=str(free_port()),
        COMFYUME_ADMIN_PASSWORD=ADMIN_PASSWORD,
        COMFYUME_SEAT_PORT_BASE=str(free_port_range(seats)),
        COMFYUME_DEMO_SEATS=str(seats),
        PORT=str(port),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra_env)
    log = (log_dir / "run_platform.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "run_platform"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    platform = Platform(f"http://127.0.0.1:{port}", port, proc, log, data_dir, int(env["COMFYUME_SEAT_PORT_BASE"]), env)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if "ComfyuME is running" in platform.tail():
            return platform
        if proc.poll() is not None:
            pytest.fail(f"run_platform exited early:\n{platform.tail()}")
        time.sleep(0.3)
    proc.kill()
    pytest.fail(f"run_platform did not start within 90 s:\n{platform.tail()}")


class WatchedBrowser:
    """The session's Chromium, whose pages remember the requests they are still waiting for, so that a page that
    never loads can say which answer it waits for (``wait_for_comfyui``). Everything else is the browser's own."""

    def __init__(self, browser: Any) -> None:
        self._browser = browser

    def __getattr__(self, name: str) -> Any:
        return getattr(self._browser, name)

    def new_page(self, **options: Any) -> Any:
        page = self._browser.new_page(**options)
        pending: dict[int, str] = {}
        started = time.monotonic()

        def sent(request: Any) -> None:
            pending[id(request)] = f"+{time.monotonic() - started:.1f}s {request.method} {request.url}"

        page.on("request", sent)
        page.on("requestfinished", lambda request: pending.pop(id(request), None))
        page.on("requestfailed", lambda request: pending.pop(id(request), None))
        PENDING[page] = pending
        return page


# Each watched page's unanswered requests (WatchedBrowser).
PENDING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# Generous waits: the CI machine has two cores shared by the whole platform and the browser.
COMFYUI_LOAD_MS = 90_000


def wait_for_comfyui(page) -> None:
    """Until the participant's ComfyUI has loaded and drawn a graph (the workshop's default template).

    If it does not, the failure says what the page had loaded and, on a page of the session's browser, which
    requests it was still waiting for: a first load that stayed on the splash has been seen twice in CI (1.27) and
    once locally under load (1.58.1, its scripts loaded but no /api/ answer), and this is what the next one
    should tell."""
    try:
        page.wait_for_selector("#graph-canvas", timeout=COMFYUI_LOAD_MS)
        page.wait_for_function("() => window.comfyAPI?.app?.app?.graph?._nodes?.length > 0", timeout=COMFYUI_LOAD_MS)
    except Exception as exc:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "comfyui-did-not-load.png"))
        state = page.evaluate(
            """() => ({readyState: document.readyState, title: document.title,
                       resources: performance.getEntriesByType('resource').length,
                       last: performance.getEntriesByType('resource').slice(-25)
                             .map(r => `${Math.round(r.startTime)}+${Math.round(r.duration)}ms ${r.name}`)})"""
        )
        state["waiting_for"] = sorted(PENDING.get(page, {}).values())[:40]
        raise AssertionError(f"ComfyUI did not load at {page.url}: {exc}\n{json.dumps(state, indent=1)}") from exc


# ComfyUI's Run button: 1.27's aria-label, newer frontends' test id.
RUN_BUTTON = "button[aria-label='Run'], [data-testid=queue-button]"


def run_until_image(page, *, click: bool = True) -> float:
    """Press ComfyUI's Run (unless the caller did) and wait for the banner's Done and the image drawn in the
    SaveImage node; the seconds from the click to the image (a ``BENCH`` figure of the path the test runs)."""
    started = time.monotonic()
    if click:
        page.click(RUN_BUTTON)
    page.wait_for_function(
        "() => (document.getElementById('comfyume-banner')?.innerText || '').includes('Done')", timeout=60000
    )
    page.wait_for_function(
        "() => window.comfyAPI.app.app.graph._nodes.some(n => n.type === 'SaveImage' && n.imgs?.length > 0)",
        timeout=15000,
    )
    return time.monotonic() - started


def check_backend_in_admin(page, base: str, backend: str, timeout_ms: int = 60_000) -> None:
    """The instructor's "Test connection" on one GPU backend in the admin's list, until it reports it ready (for a
    serverless one, this also reads its node list)."""
    page.goto(f"{base}/admin/gpu_backends/gpubackend/")
    page.locator("#result_list tr", has_text=backend).locator("input.action-select").check()
    page.select_option("select[name=action]", "test_connection")
    page.click("button[name=index]")
    page.wait_for_selector(f".messagelist .success >> text={backend}: ready,", timeout=timeout_ms)
