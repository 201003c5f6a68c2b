"""The GPU worker (docs/GPU_WORKER.md) against the ComfyUI simulator and a fake hub, all on real ports.

Each test starts its own simulator (temporary output_dir, small node delays), the worker's own aiohttp app in a
thread (``build_app``, exactly what ``python -m gpu_backends.worker`` serves) and a :class:`FakeHub` that
implements the callback API; the CLI itself is started as a subprocess where the flags, environment and imports
are what is tested. Expected message sequences are the recorded ComfyUI 0.3.64 ones (tests.recorded).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from gpu_backends.simulator import SimulatorConfig, SimulatorThread
from gpu_backends.worker.app import WorkerConfig, build_app
from gpu_backends.worker.tests.fake_hub import FakeHub
from tests.app_server import AppServer
from tests.recorded import CAPTURES, ROOT, TINY_PATH, load

TINY: dict[str, Any] = load(TINY_PATH)
CAPTURE_1: dict[str, Any] = load(CAPTURES / "protocol_capture_1.json")


def _types_without_status(recorded: list[list[Any]]) -> list[str]:
    """A recorded socket's message types, as the worker forwards them: `status` (no prompt_id) left out."""
    return [kind for _, kind, _ in recorded if kind != "status"]


CAPTURED_TINY_TYPES = _types_without_status(CAPTURE_1["tiny_ws"])
CAPTURED_CACHED_TYPES = _types_without_status(CAPTURE_1["cached_ws"])
CAPTURED_ERROR_TYPES = _types_without_status(CAPTURE_1["runtime_err_ws"])


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimulatorThread]:
    simulator = SimulatorThread(SimulatorConfig(output_dir=tmp_path / "sim", node_delay=0.02)).start()
    yield simulator
    simulator.stop()


class Worker:
    """The worker's app on a real port, and requests to it."""

    def __init__(self, config: WorkerConfig) -> None:
        self.server = AppServer(build_app(config)).start()
        self.url = self.server.url

    def wait_ready(self, timeout: float = 10) -> None:
        wait_for(lambda: requests.get(f"{self.url}/ready", timeout=5).status_code == 200, timeout)

    def run(self, body: Any, timeout: float = 30, **kwargs: Any) -> requests.Response:
        if isinstance(body, dict | list):
            kwargs["json"] = body
        else:
            kwargs["data"] = body
        return requests.post(f"{self.url}/run", timeout=timeout, **kwargs)

    def cancel(self, job: str, **kwargs: Any) -> requests.Response:
        return requests.post(f"{self.url}/cancel", json={"job": job}, timeout=10, **kwargs)


def start_worker(sim_url: str, **config: Any) -> Worker:
    return Worker(WorkerConfig(comfyui_url=sim_url, poll_seconds=0.05, watch_seconds=0.2, **config))


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    fake = FakeHub().start()
    yield fake
    fake.stop()


@pytest.fixture
def worker(sim: SimulatorThread) -> Iterator[Worker]:
    started = start_worker(sim.url)
    started.wait_ready()
    yield started
    started.server.stop()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


# ------------------------------------------------------------------------------------------------- helpers
def wait_for(check: Any, timeout: float = 10, step: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")


def run_body(hub: FakeHub, job: str, prompt: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"job": job, "prompt": prompt, "extra_data": {}, "callback": hub.callback(job), **fields}


def view(sim: SimulatorThread, ref: dict[str, Any]) -> bytes:
    params = {"filename": ref["filename"], "subfolder": ref["subfolder"], "type": ref["type"]}
    response = requests.get(f"{sim.url}/view", params=params, timeout=10)
    assert response.status_code == 200
    return response.content


def kinds(messages: list[dict[str, Any]]) -> list[str]:
    return [m["type"] for m in messages]


def png_bytes(size: tuple[int, int], colour: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def load_and_preview(name: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }


def executing(node: str | None):
    return lambda m: m["type"] == "executing" and m["data"].get("node") == node


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def left_in_tmp(job: str) -> list[str]:
    return [name for name in os.listdir(tempfile.gettempdir()) if name.startswith(f"comfyume-{job}")]


# ------------------------------------------------------------------------------------------------- a run
def test_fresh_run_uploads_the_image_forwards_the_events_in_order_and_posts_the_manifest(sim, worker, hub):
    response = worker.run(run_body(hub, "job-fresh", TINY))

    assert response.status_code == 200, response.text
    manifest = response.json()
    image = {"filename": "tiny_00001_.png", "subfolder": "harness", "type": "output"}
    assert manifest["job"] == "job-fresh" and manifest["status"] == "succeeded" and manifest["error"] is None
    assert manifest["outputs"] == {"3": {"images": [image]}}
    served = view(sim, image)
    key = "workshops/demo/user001/job-fresh/harness/tiny_00001_.png"
    assert manifest["files"] == [
        {
            "node_id": "3",
            **image,
            "key": key,
            "size": len(served),
            "sha256": hashlib.sha256(served).hexdigest(),
            "content_type": "image/png",
        }
    ]
    assert hub.files[key] == served
    assert hub.upload_requests == [
        {
            "job": "job-fresh",
            "node_id": "3",
            **image,
            "content_type": "image/png",
            "size": len(served),
            "sha256": hashlib.sha256(served).hexdigest(),
        }
    ]
    (put,) = hub.put_headers  # streamed with its length, as a presigned PUT needs
    assert put["Content-Length"] == str(len(served)) and "Transfer-Encoding" not in put
    assert 0 < manifest["gpu_seconds"] < 5
    assert manifest["worker"] == {"version": "0.1.0", "comfyui_url": sim.url}
    assert hub.results == {"job-fresh": [manifest]}

    messages = hub.messages("job-fresh")
    assert kinds(messages) == CAPTURED_TINY_TYPES
    assert all(m["data"]["prompt_id"] == "job-fresh" for m in messages)
    (executed,) = [m for m in messages if m["type"] == "executed"]
    assert executed["data"]["output"] == {"images": [image]}
    assert executed["data"]["comfyume_files"] == manifest["files"]
    seqs = [post["seq"] for post in hub.posts]
    assert seqs == list(range(1, len(seqs) + 1)) and hub.applied_seqs["job-fresh"] == seqs
    assert left_in_tmp("job-fresh") == []


def test_cached_rerun_still_answers_a_manifest_with_its_outputs_uploaded(sim, worker, hub):
    sim.config.cache = True
    first = worker.run(run_body(hub, "job-first", TINY)).json()
    second = worker.run(run_body(hub, "job-cached", TINY)).json()

    assert kinds(hub.messages("job-cached")) == CAPTURED_CACHED_TYPES
    cached = next(m for m in hub.messages("job-cached") if m["type"] == "execution_cached")
    assert cached["data"]["nodes"] == ["1", "2", "3"]
    assert second["status"] == "succeeded" and second["outputs"] == first["outputs"]
    (file,) = second["files"]
    assert file["key"] == "workshops/demo/user001/job-cached/harness/tiny_00001_.png"
    assert file["sha256"] == first["files"][0]["sha256"]
    assert hub.files[file["key"]] == hub.files[first["files"][0]["key"]]
    assert hub.results["job-cached"] == [second]


def test_prompt_comfyui_rejects_gets_its_400_body_unchanged_and_a_rejected_result(sim, worker, hub):
    prompt = load_and_preview("never-uploaded.png")
    response = worker.run(run_body(hub, "job-rejected", prompt))

    direct = requests.post(f"{sim.url}/prompt", json={"prompt": prompt}, timeout=10)
    assert direct.status_code == 400
    assert response.status_code == 400 and response.json() == direct.json()
    (result,) = hub.results["job-rejected"]
    assert result["status"] == "rejected" and result["error"] == direct.json()
    assert result["outputs"] == {} and result["files"] == []


def test_execution_error_gives_a_failed_manifest_with_comfyuis_error(sim, worker, hub):
    sim.config.fail_on_class = {"EmptyImage"}  # the node the recorded run failed in
    response = worker.run(run_body(hub, "job-error", TINY))

    assert response.status_code == 200
    manifest = response.json()
    messages = hub.messages("job-error")
    assert kinds(messages) == CAPTURED_ERROR_TYPES
    error = next(m["data"] for m in messages if m["type"] == "execution_error")
    assert manifest["status"] == "failed" and manifest["error"] == error
    assert (error["node_id"], error["node_type"], error["exception_type"]) == ("1", "EmptyImage", "RuntimeError")
    assert manifest["outputs"] == {} and manifest["files"] == []
    assert hub.results["job-error"] == [manifest]


def test_animated_webp_output_is_uploaded_like_an_image(sim, worker, hub):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 4, "color": 0}},
        "2": {
            "class_type": "SaveAnimatedWEBP",
            "inputs": {
                "images": ["1", 0],
                "filename_prefix": "anim/clip",
                "fps": 8.0,
                "lossless": False,
                "quality": 80,
                "method": "default",
            },
        },
    }
    manifest = worker.run(run_body(hub, "job-webp", prompt)).json()

    assert manifest["outputs"]["2"]["animated"] == [True]
    (file,) = manifest["files"]
    assert (file["filename"], file["content_type"]) == ("clip_00001_.webp", "image/webp")
    stored = hub.files[file["key"]]
    assert stored == view(sim, manifest["outputs"]["2"]["images"][0])
    assert Image.open(io.BytesIO(stored)).n_frames == 4


# ------------------------------------------------------------------------------------------------- uploads
def test_large_files_go_through_a_multipart_upload_with_unquoted_etags(sim, worker):
    hub = FakeHub(multipart_threshold=1, part_size=1024).start()
    try:
        prompt = copy.deepcopy(TINY)
        prompt["1"]["inputs"].update(width=256, height=256)  # a PNG of several KB: several parts
        manifest = worker.run(run_body(hub, "job-multipart", prompt)).json()
    finally:
        hub.stop()

    (file,) = manifest["files"]
    served = view(sim, manifest["outputs"]["3"]["images"][0])
    assert hub.files[file["key"]] == served and file["sha256"] == hashlib.sha256(served).hexdigest()
    (complete,) = hub.completed
    assert len(complete["parts"]) == -(-len(served) // 1024) > 1
    assert [p["number"] for p in complete["parts"]] == list(range(1, len(complete["parts"]) + 1))
    assert all(not p["etag"].startswith('"') for p in complete["parts"])
    assert all(h["Content-Length"] and "Transfer-Encoding" not in h for h in hub.put_headers)


def test_video_output_is_streamed_to_the_store(sim, worker):
    hub = FakeHub(multipart_threshold=4096, part_size=4096).start()
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 8, "color": 0}},
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 8.0}},
        "3": {
            "class_type": "SaveVideo",
            "inputs": {"video": ["2", 0], "filename_prefix": "video/clip", "format": "auto", "codec": "auto"},
        },
    }
    try:
        response = worker.run(run_body(hub, "job-video", prompt))
    finally:
        hub.stop()

    manifest = response.json()
    assert manifest["status"] == "succeeded", manifest["error"]
    (file,) = manifest["files"]
    assert file["content_type"] == "video/mp4" and file["filename"].endswith(".mp4")
    assert hub.files[file["key"]] == view(sim, manifest["outputs"]["3"]["images"][0])


# ------------------------------------------------------------------------------------------------- inputs
def test_input_image_reaches_load_image_in_the_jobs_own_subfolder(sim, worker, hub):
    picture = png_bytes((40, 30))
    item = hub.add_input("pasted/photo.png", picture)
    manifest = worker.run(run_body(hub, "job-input", load_and_preview("pasted/photo.png"), inputs=[item])).json()

    assert manifest["status"] == "succeeded", manifest
    uploaded = sim.simulator.dirs["input"] / "comfyume" / "job-input" / "pasted" / "photo.png"
    assert uploaded.read_bytes() == picture
    (file,) = manifest["files"]
    assert file["type"] == "temp"
    assert Image.open(io.BytesIO(hub.files[file["key"]])).size == (40, 30)  # LoadImage read the uploaded picture
    entry = requests.get(f"{sim.url}/history/job-input", timeout=10).json()["job-input"]
    assert entry["prompt"][2]["1"]["inputs"]["image"] == "comfyume/job-input/pasted/photo.png"
    assert left_in_tmp("job-input") == []


@pytest.mark.parametrize(
    ("change", "words"),
    [({"sha256": "0" * 64}, "sha256"), ({"size": 12}, "announced"), ({"url": "/inputs/missing.png"}, "404")],
)
def test_input_that_is_not_as_announced_is_refused_naming_it(sim, worker, hub, change, words):
    item = hub.add_input("photo.png", png_bytes((40, 30)))
    if "url" in change:
        change = {"url": hub.url + change["url"]}
    response = worker.run(run_body(hub, "job-bad-input", load_and_preview("photo.png"), inputs=[{**item, **change}]))

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "bad_request" and "inputs[0] (photo.png)" in error["message"] and words in error["message"]
    assert requests.get(f"{sim.url}/history", timeout=10).json() == {}  # nothing reached ComfyUI's queue
    assert hub.results["job-bad-input"][0]["status"] == "rejected"


def test_two_jobs_at_once_keep_their_files_and_events_apart(sim, worker, hub, pool):
    sim.config.node_delay = 0.1
    sizes = {"job-a": (40, 30), "job-b": (24, 16)}
    futures = {}
    for job, size in sizes.items():
        item = hub.add_input(f"{job}.png", png_bytes(size))
        item = {**item, "name": "photo.png"}  # both prompts name the same file
        futures[job] = pool.submit(worker.run, run_body(hub, job, load_and_preview("photo.png"), inputs=[item]))

    for job, size in sizes.items():
        manifest = futures[job].result(timeout=30).json()
        assert manifest["status"] == "succeeded", manifest
        (file,) = manifest["files"]
        assert file["key"].startswith(f"workshops/demo/user001/{job}/")
        assert Image.open(io.BytesIO(hub.files[file["key"]])).size == size
        messages = hub.messages(job)
        assert kinds(messages)[0] == "execution_start" and kinds(messages)[-1] == "executing"
        assert all(m["data"]["prompt_id"] == job for m in messages)
        uploaded = sim.simulator.dirs["input"] / "comfyume" / job / "photo.png"
        assert Image.open(uploaded).size == size


# ------------------------------------------------------------------------------------------------- stopping
def test_cancel_in_a_callback_answer_interrupts_the_job(sim, worker, hub, pool):
    sim.config.hang_on_class = {"ImageInvert"}
    future = pool.submit(worker.run, run_body(hub, "job-cancel", TINY, heartbeat_seconds=0.1))
    hub.wait_for_message("job-cancel", executing("2"))
    wait_for(lambda: any(p["messages"] == [] for p in hub.posts))  # heartbeats while the node hangs
    hub.cancel.add("job-cancel")

    manifest = future.result(timeout=30).json()
    interrupted = next(m["data"] for m in hub.messages("job-cancel") if m["type"] == "execution_interrupted")
    assert manifest["status"] == "interrupted" and manifest["error"] == interrupted
    assert interrupted["node_id"] == "2"
    assert kinds(hub.messages("job-cancel"))[-1] == "executing"
    assert hub.results["job-cancel"] == [manifest]
    history = requests.get(f"{sim.url}/history/job-cancel", timeout=10).json()["job-cancel"]
    assert history["status"]["status_str"] == "error"
    seqs = [post["seq"] for post in hub.posts]
    assert seqs == list(range(1, len(seqs) + 1))


def test_cancel_endpoint_interrupts_a_running_job_and_takes_a_waiting_one_out_of_the_queue(sim, worker, hub, pool):
    sim.config.hang_on_class = {"ImageInvert"}
    running = pool.submit(worker.run, run_body(hub, "job-running", TINY))
    hub.wait_for_message("job-running", executing("2"))
    waiting = pool.submit(worker.run, run_body(hub, "job-waiting", TINY, heartbeat_seconds=0.1))
    wait_for(lambda: requests.get(f"{sim.url}/queue", timeout=5).json()["queue_pending"])

    assert worker.cancel("job-waiting").json() == {"cancelled": True}
    manifest = waiting.result(timeout=30).json()
    assert manifest["status"] == "interrupted" and manifest["error"] is None and manifest["gpu_seconds"] == 0
    assert "execution_start" not in kinds(hub.messages("job-waiting"))
    assert requests.get(f"{sim.url}/queue", timeout=5).json()["queue_pending"] == []
    assert not running.done()

    assert worker.cancel("job-running").json() == {"cancelled": True}
    assert running.result(timeout=30).json()["status"] == "interrupted"
    assert worker.cancel("job-running").json() == {"cancelled": False}  # over: nothing to cancel
    assert requests.post(f"{worker.url}/cancel", json={}, timeout=5).status_code == 400


def test_hub_answering_409_stops_the_job_and_nothing_more_is_posted(sim, worker, hub, pool):
    sim.config.hang_on_class = {"ImageInvert"}
    future = pool.submit(worker.run, run_body(hub, "job-409", TINY, heartbeat_seconds=0.1))
    hub.wait_for_message("job-409", executing("2"))
    hub.conflict.add("job-409")

    manifest = future.result(timeout=30).json()
    assert manifest["status"] == "interrupted"
    statuses = [post["status"] for post in hub.posts]
    assert statuses.count(409) == 1 and statuses[-1] == 409  # nothing after the 409
    assert "job-409" not in hub.results
    history = requests.get(f"{sim.url}/history/job-409", timeout=10).json()["job-409"]
    assert history["status"]["messages"][-1][0] == "execution_interrupted"


def test_failed_callback_posts_are_retried_and_arrive_once_each_in_order(sim, worker, hub):
    hub.fail_events = 2
    manifest = worker.run(run_body(hub, "job-retry", TINY)).json()

    assert manifest["status"] == "succeeded"
    assert [(p["seq"], p["status"]) for p in hub.posts[:3]] == [(1, 500), (1, 500), (1, 200)]
    assert hub.posts[0]["messages"] == hub.posts[2]["messages"]
    applied = hub.applied_seqs["job-retry"]
    assert applied == list(range(1, len(applied) + 1))
    assert kinds(hub.messages("job-retry")) == CAPTURED_TINY_TYPES
    assert hub.results["job-retry"] == [manifest]


# ------------------------------------------------------------------------------------------------- ComfyUI trouble
def test_dropped_socket_is_reconnected_and_the_job_completes(sim, worker, hub, caplog):
    sim.config.node_delay, sim.config.ws_drop_after = 0.1, 3
    manifest = worker.run(run_body(hub, "job-drop", TINY)).json()

    assert "job job-drop: ComfyUI's socket closed; recovering" in caplog.messages

    assert manifest["status"] == "succeeded"
    (file,) = manifest["files"]
    assert hub.files[file["key"]] == view(sim, manifest["outputs"]["3"]["images"][0])
    messages = hub.messages("job-drop")
    assert kinds(messages)[:2] == ["execution_start", "execution_cached"] and executing(None)(messages[-1])
    (executed,) = [m for m in messages if m["type"] == "executed"]
    assert executed["data"]["comfyume_files"] == [file]


def test_output_sent_while_the_socket_was_down_is_replayed_from_history(sim, worker, hub, caplog):
    # The socket drops after `executing 3` (the 10th message), so the file's `executed` goes to nobody; the
    # prompt stays in the queue a second longer (history_delay), so the worker finds it there and goes on.
    sim.config.ws_drop_after, sim.config.history_delay = 10, 1.0
    manifest = worker.run(run_body(hub, "job-missed", TINY)).json()

    assert "job job-missed: ComfyUI's socket closed; recovering" in caplog.messages
    assert manifest["status"] == "succeeded"
    (file,) = manifest["files"]
    assert hub.files[file["key"]] == view(sim, manifest["outputs"]["3"]["images"][0])
    messages = hub.messages("job-missed")
    assert kinds(messages)[-2:] == ["executed", "executing"]  # replayed before the end
    assert messages[-2]["data"]["comfyume_files"] == [file]


def test_job_that_ends_while_the_socket_is_down_is_finished_from_history(sim, worker, hub, caplog):
    # The socket drops right after execution_success (the 13th message): `executing null` goes to nobody.
    sim.config.ws_drop_after = 13
    manifest = worker.run(run_body(hub, "job-history", TINY)).json()

    assert "job job-history: ComfyUI's socket closed; recovering" in caplog.messages
    assert manifest["status"] == "succeeded" and manifest["gpu_seconds"] > 0
    (file,) = manifest["files"]
    assert hub.files[file["key"]] == view(sim, manifest["outputs"]["3"]["images"][0])
    assert kinds(hub.messages("job-history")) == CAPTURED_TINY_TYPES  # the end completed, nothing twice
    assert hub.results["job-history"] == [manifest]


def test_comfyui_failing_before_it_takes_the_prompt_answers_503_not_ready(sim, worker, hub):
    sim.config.http_fail_count = 1  # POST /prompt answers 503 once
    response = worker.run(run_body(hub, "job-503", TINY))

    assert response.status_code == 503 and response.json()["error"]["type"] == "not_ready"
    assert "job-503" not in hub.results
    assert requests.get(f"{sim.url}/queue", timeout=5).json() == {"queue_running": [], "queue_pending": []}
    assert worker.run(run_body(hub, "job-503", TINY)).json()["status"] == "succeeded"  # the hub's next try


def test_comfyui_dying_mid_job_answers_502_comfyui_lost(tmp_path, hub, pool):
    sim = SimulatorThread(SimulatorConfig(output_dir=tmp_path / "sim", node_delay=0.02)).start()
    sim.config.hang_on_class = {"ImageInvert"}
    worker = start_worker(sim.url)
    try:
        worker.wait_ready()
        future = pool.submit(worker.run, run_body(hub, "job-lost", TINY))
        hub.wait_for_message("job-lost", executing("2"))
        sim.stop()
        response = future.result(timeout=30)
        assert response.status_code == 502
        assert response.json()["error"]["type"] == "comfyui_lost"
        assert "job-lost" not in hub.results
        wait_for(lambda: requests.get(f"{worker.url}/ready", timeout=5).status_code == 503)
    finally:
        worker.server.stop()
        sim.stop()


def test_stopping_the_worker_interrupts_its_running_job_in_comfyui(sim, hub, pool):
    sim.config.hang_on_class = {"ImageInvert"}
    worker = start_worker(sim.url)
    worker.wait_ready()
    future = pool.submit(worker.run, run_body(hub, "job-shutdown", TINY))
    hub.wait_for_message("job-shutdown", executing("2"))
    worker.server.stop()  # what SIGTERM does: the app's shutdown

    with pytest.raises(requests.ConnectionError):
        future.result(timeout=30)
    entry = wait_for(lambda: requests.get(f"{sim.url}/history/job-shutdown", timeout=5).json().get("job-shutdown"))
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"


# ------------------------------------------------------------------------------------------------- the service
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("not json", "JSON"),
        ([], "body"),
        ({"prompt": TINY}, "job"),
        ({"job": "../etc", "prompt": TINY}, "job"),
        ({"job": "j", "prompt": []}, "prompt"),
        ({"job": "j", "prompt": {"1": "x"}}, "prompt['1']"),
        ({"job": "j", "prompt": TINY, "extra_data": []}, "extra_data"),
        ({"job": "j", "prompt": TINY, "inputs": {}}, "inputs"),
        ({"job": "j", "prompt": TINY, "inputs": [{"name": "../a.png"}]}, "inputs[0].name"),
        (
            {"job": "j", "prompt": TINY, "inputs": [{"name": "a.png", "url": "http://x/a", "size": 1, "sha256": "z"}]},
            "inputs[0].sha256",
        ),
        ({"job": "j", "prompt": TINY, "callback": {"url": "ftp://hub/", "token": "t"}}, "callback.url"),
        ({"job": "j", "prompt": TINY, "callback": {"url": "http://hub/"}}, "callback.token"),
        ({"job": "j", "prompt": TINY, "heartbeat_seconds": -1}, "heartbeat_seconds"),
        ({"job": "j", "prompt": TINY, "preview_fps": 99}, "preview_fps"),
        ({"job": "j", "prompt": TINY, "preview_fps": True}, "preview_fps"),
    ],
)
def test_bad_run_bodies_are_refused_naming_the_field(worker, body, field):
    response = worker.run(body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "bad_request" and field in error["message"]


def test_token_guards_run_and_cancel_but_not_health(sim, hub):
    worker = start_worker(sim.url, token="s3cret")
    try:
        worker.wait_ready()
        assert worker.run(run_body(hub, "job-token", TINY)).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert worker.run(run_body(hub, "job-token", TINY), headers=wrong).status_code == 401
        assert worker.cancel("job-token").status_code == 401
        right = {"Authorization": "Bearer s3cret"}
        response = worker.run(run_body(hub, "job-token", TINY), headers=right)
        assert response.status_code == 200 and response.json()["status"] == "succeeded"
        assert requests.get(f"{worker.url}/health", timeout=5).json()["status"] == "ok"
    finally:
        worker.server.stop()


def test_health_object_info_and_system_stats(sim, worker):
    health = requests.get(f"{worker.url}/health", timeout=5).json()
    assert health == {"status": "ok", "comfyui": True, "running": 0, "version": "0.1.0", "warmup": None}
    for path in ("/object_info", "/system_stats"):
        relayed = requests.get(f"{worker.url}{path}", timeout=10)
        assert relayed.status_code == 200 and relayed.json() == requests.get(f"{sim.url}{path}", timeout=10).json()


def _worker_process(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    full_env.update(env, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "gpu_backends.worker", *args],
        env=full_env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_cli_ready_is_503_until_comfyui_answers_and_the_warmup_has_run(tmp_path, hub):
    """The real CLI, configured through its environment variables, started before ComfyUI."""
    comfyui_port, worker_port = free_port(), free_port()
    warmup = copy.deepcopy(TINY)
    warmup["3"]["inputs"]["filename_prefix"] = "warmup/w"
    (tmp_path / "warmup.json").write_text(json.dumps(warmup))
    env = {
        "COMFYUME_WORKER_COMFYUI_URL": f"http://127.0.0.1:{comfyui_port}",
        "COMFYUME_WORKER_HOST": "127.0.0.1",
        "COMFYUME_WORKER_PORT": str(worker_port),
        "COMFYUME_WORKER_WARMUP_PROMPT": str(tmp_path / "warmup.json"),
    }
    process = _worker_process(env)
    url = f"http://127.0.0.1:{worker_port}"
    sim = None
    try:

        def health() -> dict[str, Any] | None:
            try:
                return requests.get(f"{url}/health", timeout=2).json()
            except requests.ConnectionError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                return None

        assert wait_for(health, 20)["comfyui"] is False
        ready = requests.get(f"{url}/ready", timeout=5)
        assert ready.status_code == 503 and "does not answer" in ready.json()["reason"]
        refused = requests.post(f"{url}/run", json=run_body(hub, "job-early", TINY), timeout=5)
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "not_ready"

        sim = SimulatorThread(SimulatorConfig(output_dir=tmp_path / "sim", node_delay=0.3), port=comfyui_port).start()
        reasons = []
        while (ready := requests.get(f"{url}/ready", timeout=5)).status_code == 503:
            reasons.append(ready.json()["reason"])
            time.sleep(0.05)
        history = requests.get(f"{sim.url}/history", timeout=5).json()
        assert ready.json() == {"ready": True} and "running the warm-up prompt" in reasons
        (entry,) = history.values()  # the warm-up had run, once, before /ready said yes
        assert entry["status"]["status_str"] == "success"
        assert entry["outputs"]["3"]["images"][0]["subfolder"] == "warmup"
        assert requests.get(f"{url}/health", timeout=5).json()["warmup"] == "succeeded"
        assert hub.posts == [] and hub.results == {}  # the warm-up has no callback
    finally:
        process.terminate()
        output = process.communicate(timeout=15)[0]
        if sim is not None:
            sim.stop()
    assert process.returncode is not None
    assert "Warm-up prompt succeeded" in output and "warmup-" in output


def test_cli_refuses_a_bad_environment_naming_the_variable(tmp_path):
    process = _worker_process({"COMFYUME_WORKER_PORT": "eighty"}, "--help")
    assert process.wait(timeout=30) == 2 and "COMFYUME_WORKER_PORT" in (process.stdout.read() if process.stdout else "")
    process = _worker_process({"COMFYUME_WORKER_WARMUP_PROMPT": str(tmp_path / "missing.json")})
    assert process.wait(timeout=30) == 2 and "COMFYUME_WORKER_WARMUP_PROMPT" in (process.stdout.read() or "")


def test_worker_imports_neither_django_nor_the_hub():
    """The container has ComfyUI and aiohttp only: importing the worker must not need anything else."""
    blocked = ["django", "requests", "websocket", "PIL", "jobs", "storage", "workshops", "comfyume", "redis"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import gpu_backends.worker.app, gpu_backends.worker.__main__\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{blocked!r} and sys.modules[m] is not None)\n"
        "assert not loaded, loaded\n"
        "ours = sorted(m for m in sys.modules if m.startswith('gpu_backends.'))\n"
        "assert ours == ['gpu_backends.worker', 'gpu_backends.worker.__main__', "
        "'gpu_backends.worker.app', 'gpu_backends.worker.callback', 'gpu_backends.worker.comfy', "
        "'gpu_backends.worker.job', 'gpu_backends.worker.prompts', 'gpu_backends.worker.request'], ours\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        [sys.executable, "-c", code], env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_same_job_twice_at_once_is_refused(sim, worker, hub, pool):
    sim.config.hang_on_class = {"ImageInvert"}
    first = pool.submit(worker.run, run_body(hub, "job-twice", TINY))
    hub.wait_for_message("job-twice", executing("2"))
    second = worker.run(run_body(hub, "job-twice", TINY))
    assert second.status_code == 409 and second.json()["error"]["type"] == "conflict"
    assert requests.get(f"{worker.url}/health", timeout=5).json()["running"] == 1
    worker.cancel("job-twice")
    assert first.result(timeout=30).json()["status"] == "interrupted"


def test_live_previews_go_to_the_hub_throttled_and_never_after_the_result(sim, worker, hub):
    """Each progress step's preview (the simulator sends one, as ComfyUI's latent previewer) is posted to
    ``{callback}preview`` as ComfyUI's PREVIEW_IMAGE frame, at most ``preview_fps`` a second."""
    sim.config.update({"progress_steps": 10, "progress_all": True, "node_delay": 0.5})  # 30 previews in 1.5 s
    live = {"preview_method": "auto"}  # as the hub sends the workshop's setting
    response = worker.run(run_body(hub, "job-previews", TINY, preview_fps=4, extra_data=live))
    assert response.status_code == 200 and response.json()["status"] == "succeeded", response.text
    frames = hub.previews["job-previews"]
    assert 3 <= len(frames) <= 8, len(frames)
    for frame in frames:  # PREVIEW_IMAGE_WITH_METADATA naming the job and the node (the worker asked ComfyUI)
        assert int.from_bytes(frame[:4], "big") == 4
        length = int.from_bytes(frame[4:8], "big")
        metadata = json.loads(frame[8 : 8 + length])
        assert metadata["prompt_id"] == "job-previews" and metadata["node_id"] in TINY
        assert frame[8 + length : 8 + length + 2] == b"\xff\xd8"
    # Without preview_fps (a hub that does not ask for them): none.
    sim.config.update({"node_delay": 0.1})
    assert worker.run(run_body(hub, "job-no-previews", TINY, extra_data=live)).status_code == 200
    assert "job-no-previews" not in hub.previews


def test_a_slow_hub_gets_only_the_newest_preview_not_a_backlog(sim, worker, hub):
    """One preview post at a time: while the hub takes 0.6 s to answer, the frames in between are replaced."""
    sim.config.update({"progress_steps": 10, "progress_all": True, "node_delay": 0.5})
    hub.preview_delay = 0.6
    body = run_body(hub, "job-slow-previews", TINY, preview_fps=30, extra_data={"preview_method": "auto"})
    response = worker.run(body)
    assert response.status_code == 200, response.text
    assert 1 <= len(hub.previews["job-slow-previews"]) <= 4  # 30 offered over 1.5 s, 0.6 s per post


@pytest.mark.parametrize("capture, status", [("ws_capture.json", "succeeded"), ("ws_capture_failed.json", "failed")])
def test_the_worker_beside_a_recorded_comfyui_0_12_1_forwards_its_messages_and_ends_as_it_did(hub, capture, status):
    """The worker against a newer ComfyUI's own messages (tests/recorded_comfyui.py replays them), not the
    simulator's: every message of the prompt reaches the hub in ComfyUI's order, and the run ends as recorded."""
    from tests.recorded_comfyui import RecordedComfyUI, recorded_outputs

    comfy = RecordedComfyUI(capture).start()
    worker = start_worker(comfy.url)
    try:
        worker.wait_ready()
        response = worker.run(run_body(hub, "job-recorded", TINY))
        assert response.status_code == 200, response.text
        manifest = response.json()
        assert manifest["status"] == status
        assert kinds(hub.messages("job-recorded")) == comfy.recorded_types()
        assert [f["filename"] for f in manifest["files"]] == (
            recorded_outputs(comfy.capture) if status == "succeeded" else []
        )
        if status == "failed":
            assert manifest["error"]["node_type"] == "ImageToMask"
        assert comfy.flags_from == [{"supports_preview_metadata": True}]
    finally:
        worker.server.stop()
        comfy.stop()
