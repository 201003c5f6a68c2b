"""Faults of the real platform: ``manage.py run_platform`` as a subprocess, its embedded Redis killed or paused,
the whole platform stopped and started again. Each test counts what a fault cost: jobs lost (not succeeded),
jobs duplicated (run twice on the GPU, or an attempt spent) and the seconds until work moves again.

The figures are printed (``pytest tests/test_faults.py -s``) and kept in docs/BENCHMARKS.md ("Faults").
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.launched import ROOT, Platform, alive, descendants, launch

SUBMIT = """
import json, sys
from jobs.services import submit_prompt
from workshops.models import Seat, Workshop
Workshop.objects.filter(slug="demo").update(max_queued_per_seat=100, max_running_per_seat=2)
seats = list(Seat.objects.filter(workshop__slug="demo").select_related("workshop").order_by("label"))
prompt = json.load(open("workshops/data/tiny_workflow_api.json"))
for i in range({count}):
    submit_prompt(seats[i % len(seats)], {{"prompt": prompt, "client_id": "faults"}})
"""


def _db(platform: Platform) -> sqlite3.Connection:
    return sqlite3.connect(platform.data_dir / "comfyume.sqlite3", timeout=30)


def _statuses(platform: Platform) -> dict[str, int]:
    with _db(platform) as conn:
        return dict(conn.execute("SELECT status, COUNT(*) FROM jobs_job GROUP BY status").fetchall())


def _jobs(platform: Platform) -> list[tuple[int, str, int]]:
    with _db(platform) as conn:
        return conn.execute("SELECT id, status, attempts FROM jobs_job ORDER BY id").fetchall()


def _events(platform: Platform) -> list[tuple[int, str, str, str]]:
    with _db(platform) as conn:
        return conn.execute("SELECT job_id, from_status, to_status, reason FROM jobs_jobevent ORDER BY id").fetchall()


def _submit(platform: Platform, count: int) -> None:
    done = platform.manage("shell", "-c", SUBMIT.format(count=count))
    assert done.returncode == 0, done.stderr[-3000:]


def _redis_pid(platform: Platform) -> int:
    for pid in descendants(platform.proc.pid):
        try:
            if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    raise AssertionError(f"no embedded Redis under the platform:\n{platform.tail()}")


def _wait(predicate, timeout: float, what: str, platform: Platform) -> float:
    """Seconds until ``predicate()`` holds; fails naming ``what`` after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"{what} not within {timeout} s; statuses {_statuses(platform)}"
        time.sleep(0.2)
    return time.monotonic() - start


def _all_succeeded(platform: Platform, count: int):
    return lambda: _statuses(platform).get("succeeded", 0) == count


def _report(name: str, **figures: object) -> None:
    print(f"\nFAULT {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def _assert_once_each(platform: Platform, count: int) -> None:
    """Every job succeeded with one attempt and ran once: one ``succeeded``, and one start on the GPU besides
    those a clean stop interrupted and handed back."""
    jobs = _jobs(platform)
    assert len(jobs) == count
    assert [(status, attempts) for _, status, attempts in jobs] == [("succeeded", 1)] * count, jobs
    events = _events(platform)
    for job_id, *_ in jobs:
        mine = [(f, t) for j, f, t, _ in events if j == job_id]
        handed_back = sum(1 for j, f, t, reason in events if j == job_id and "platform was stopped" in reason)
        assert mine.count(("dispatching", "running")) == 1 + handed_back, (job_id, mine)
        assert mine.count(("running", "succeeded")) == 1, (job_id, mine)
    reasons = " ".join(reason for *_, reason in events)
    assert "stopped responding" not in reasons and "lost the job" not in reasons, reasons


@pytest.fixture
def platform(tmp_path) -> Iterator[Platform]:
    launched = launch(tmp_path, seats=2)
    launched.env["SIMULATOR_URL"] = f"http://127.0.0.1:{launched.env['COMFYUME_SIMULATOR_PORT']}"
    try:
        yield launched
    finally:
        for pid in descendants(launched.proc.pid):  # a paused Redis would hold the stop up
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        try:
            launched.stop()
        finally:
            if launched.proc.poll() is None:
                launched.proc.kill()


def test_a_killed_redis_is_restarted_and_the_jobs_accepted_meanwhile_run_once(platform):
    old = _redis_pid(platform)
    # Killed, and four jobs accepted before the supervisor could notice: their enqueues are refused.
    kill_then_submit = f"import os, signal; os.kill({old}, signal.SIGKILL)\n" + SUBMIT.format(count=4)
    killed_at = time.monotonic()
    done = platform.manage("shell", "-c", kill_then_submit)
    assert done.returncode == 0, done.stderr[-3000:]
    back = _wait(lambda: requests.get(f"{platform.base}/health", timeout=5).status_code == 200, 20, "/health", platform)
    redis_back = time.monotonic() - killed_at
    assert _redis_pid(platform) != old and not alive(old)  # a new server; the old one reaped, not a zombie
    ran = _wait(_all_succeeded(platform, 4), 30, "the jobs accepted while Redis was away", platform)
    _assert_once_each(platform, 4)
    assert "The embedded Redis is back" in platform.tail()
    _report(
        "redis killed",
        redis_back_s=round(redis_back, 1),
        health_ok_s=round(back, 1),
        jobs_done_s=round(time.monotonic() - killed_at, 1),
        waited_after_health_s=round(ran, 1),
        lost=4 - _statuses(platform).get("succeeded", 0),
        duplicated=sum(attempts - 1 for *_, attempts in _jobs(platform)),
    )


def test_a_paused_redis_costs_no_attempt_and_jobs_move_on_within_seconds(platform):
    pid = _redis_pid(platform)
    os.kill(pid, signal.SIGSTOP)
    paused_at = time.monotonic()
    try:
        _submit(platform, 3)  # their enqueues time out against the paused server
        time.sleep(max(0.0, 20 - (time.monotonic() - paused_at)))
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed_at = time.monotonic()
    moved = _wait(_all_succeeded(platform, 3), 30, "the jobs accepted while Redis was paused", platform)
    _assert_once_each(platform, 3)
    assert moved < 15, f"{moved:.1f} s after Redis came back"
    _report(
        "redis paused 20 s",
        all_done_after_resume_s=round(time.monotonic() - resumed_at, 1),
        lost=0,
        duplicated=sum(attempts - 1 for *_, attempts in _jobs(platform)),
    )


def _restart(platform: Platform) -> tuple[subprocess.Popen, float]:
    """``make run`` again on the same data dir and ports; the time it was started."""
    platform.log.seek(0, os.SEEK_END)
    platform.log.write("\n--- restart ---\n")
    platform.log.flush()
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "run_platform"], cwd=ROOT, env=platform.env, stdout=platform.log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    platform.proc = proc
    deadline = time.monotonic() + 90
    while platform.tail().count("ComfyuME is running") < 2:
        assert proc.poll() is None and time.monotonic() < deadline, platform.tail()
        time.sleep(0.2)
    return proc, started


def test_a_clean_stop_hands_jobs_back_and_a_start_runs_them_all_printing_only_usable_links(platform):
    seats = json.loads((platform.data_dir / "demo_credentials.json").read_text())
    spent = seats[0]["join_url"]
    assert requests.get(spent, timeout=10, allow_redirects=False).status_code == 302  # signed in: the link is spent
    # The GPU never finishes a job: the two running when the stop comes are still running (the restarted simulator
    # is a fresh one, without this fault).
    config = requests.post(
        f"{platform.env['SIMULATOR_URL']}/simulator/config", json={"hang_on_class": ["ImageInvert"]}, timeout=5
    )
    assert config.status_code == 200, config.text
    _submit(platform, 17)
    _wait(lambda: _statuses(platform).get("running", 0) == 2, 20, "two jobs running", platform)
    platform.proc.send_signal(signal.SIGTERM)
    stop_started = time.monotonic()
    platform.proc.wait(timeout=45)
    stop_took = time.monotonic() - stop_started
    statuses = _statuses(platform)
    assert "running" not in statuses, statuses
    handed_back = [e for e in _events(platform) if e[1] == "running" and e[2] == "queued"]
    assert len(handed_back) == 2 and all("platform was stopped" in e[3] for e in handed_back), handed_back

    _, started = _restart(platform)
    banner = platform.tail().rsplit("--- restart ---", 1)[1]
    first_run = _wait(lambda: _statuses(platform).get("running", 0) + _statuses(platform).get("succeeded", 0) > 0,
                      30, "a first job running after the restart", platform)  # fmt: skip
    restart_to_first_run = time.monotonic() - started
    all_done = _wait(_all_succeeded(platform, 17), 60, "every job after the restart", platform)
    _assert_once_each(platform, 17)

    links = re.findall(r"one-time link: (\S+)", banner)
    assert links and spent not in links, banner
    assert all(requests.get(link, timeout=10, allow_redirects=False).status_code == 302 for link in links)
    _report(
        "clean stop (2 running, 15 queued) and start",
        stop_s=round(stop_took, 1),
        restart_to_first_run_s=round(restart_to_first_run, 1),
        first_run_after_banner_s=round(first_run, 1),
        all_done_after_banner_s=round(first_run + all_done, 1),
        lost=17 - _statuses(platform).get("succeeded", 0),
        duplicated=sum(attempts - 1 for *_, attempts in _jobs(platform)),
    )


def test_closing_the_terminal_stops_every_process(tmp_path):
    """SIGHUP (the terminal of `make run` closed) stops the platform as Ctrl-C does: every child runs in a
    session of its own, so nothing else would stop them."""
    platform = launch(tmp_path, seats=1)
    children = descendants(platform.proc.pid)
    try:
        assert children
        platform.proc.send_signal(signal.SIGHUP)
        platform.proc.wait(timeout=60)
        _wait(lambda: not any(alive(pid) for pid in children), 15, "every child gone", platform)
        assert "Stopped every process ComfyuME started." in platform.tail()
    finally:
        for pid in children:  # whatever the signal left behind
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        platform.stop()
