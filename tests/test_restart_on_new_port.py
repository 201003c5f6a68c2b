"""`make run` started again on another PORT, on the same data: the participant's seat follows the hub there.

The seat frontends are the processes most likely to outlive a run (each in its own session; `make run` killed
the supervisor while it still stopped them one by one). A seat left running kept the old run's hub address and
answered every call with 502 hub_unavailable for good; the supervisor now starts it again with the new one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from tests.launched import ROOT, Platform, alive, descendants, free_port, launch


def _seat_frontends(data_dir: Path) -> list[int]:
    """Pids of the seat frontend processes serving seats of this data dir."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if b"workshops.seat_frontend" in cmdline and str(data_dir).encode() in environ:
            found.append(int(entry.name))
    return found


@pytest.fixture
def platform(tmp_path) -> Iterator[Platform]:
    launched = launch(tmp_path, seats=2)
    try:
        yield launched
    finally:
        launched.stop()
        for pid in _seat_frontends(launched.data_dir):  # whatever a failed run left behind
            os.kill(pid, signal.SIGKILL)


def _crash(platform: Platform) -> None:
    """The platform dies at once (kill -9), except its seat frontends, which run on."""
    seats = set(_seat_frontends(platform.data_dir))
    for pid in [platform.proc.pid, *descendants(platform.proc.pid)]:
        if pid not in seats:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    platform.proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in descendants(platform.proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)


def _start_on(platform: Platform, port: int) -> None:
    platform.env["PORT"] = str(port)
    platform.log.write("\n--- restart ---\n")
    platform.log.flush()
    platform.proc = subprocess.Popen(
        [sys.executable, "manage.py", "run_platform"], cwd=ROOT, env=platform.env, stdout=platform.log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while platform.tail().count("ComfyuME is running") < 2:
        assert platform.proc.poll() is None and time.monotonic() < deadline, platform.tail()
        time.sleep(0.2)


def _answer(session: requests.Session, url: str, timeout: float) -> requests.Response:
    """The seat's answer once it gives a 200, or its last answer after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: requests.Response | None = None
    while time.monotonic() < deadline:
        try:
            last = session.get(url, timeout=5)
        except requests.RequestException:
            last = None
        if last is not None and last.status_code == 200:
            return last
        time.sleep(0.5)
    assert last is not None, f"{url} never answered"
    return last


def test_after_a_restart_on_another_port_the_participants_seat_talks_to_the_new_hub(platform):
    seat = json.loads((platform.data_dir / "demo_credentials.json").read_text())[0]
    participant = requests.Session()
    assert participant.get(seat["join_url"], timeout=10).status_code == 200
    comfyui = f"http://127.0.0.1:{platform.seat_base}"
    assert _answer(participant, f"{comfyui}/api/queue", 60).status_code == 200
    workflow = f"{comfyui}/api/userdata/{quote('workflows/mine.json', safe='')}"
    saved = participant.post(workflow, data=b'{"nodes": []}', headers={"Content-Type": "application/json"}, timeout=10)
    assert saved.status_code == 200, saved.text
    left_running = _seat_frontends(platform.data_dir)
    assert left_running

    _crash(platform)
    assert all(alive(pid) for pid in left_running)  # the seats outlived it, still set up for the old port
    new_port = free_port()
    _start_on(platform, new_port)

    # The other seat's link was never used: the banner and the cards give it at the hub's new address.
    unused = json.loads((platform.data_dir / "demo_credentials.json").read_text())[1]["join_url"]
    assert unused.startswith(f"http://127.0.0.1:{new_port}/join/"), unused
    assert unused in platform.tail().split("--- restart ---")[-1]

    # Cookies are per host, not per port: the participant is still signed in, and their seat asks the new hub.
    queue = _answer(participant, f"{comfyui}/api/queue", 60)
    assert queue.status_code == 200, f"{queue.status_code} {queue.text[:300]}"
    assert not any(alive(pid) for pid in left_running)
    assert participant.get(workflow, timeout=10).content == b'{"nodes": []}'  # their saved work is still there
