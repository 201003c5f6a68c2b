"""The ComfyUI simulator against what a real ComfyUI 0.3.64 was recorded doing.

The CAPTURED_* constants below are read from this repo's copy of the recordings, tests/data/comfyui-0.3.64/
protocol_capture_1.json (``tiny_post``, ``tiny_ws``, ``tiny_history``, ``cached_ws``, ``runtime_err_ws``,
``invalid``) and protocol_capture_2.json (``upscale``, ``interrupt``), through tests.recorded; the tiny workflow is
workshops/data/tiny_workflow_api.json. Recorded prompt ids and timestamps are normalised away by ``normalized`` where
a test compares whole messages. Each test starts its own simulator on a free port with a temporary output_dir.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import av
import pytest
import requests
import websocket
from PIL import Image

from gpu_backends.simulator import SimulatorConfig, SimulatorThread
from gpu_backends.simulator.config import MAX_FRAMES
from tests.recorded import CAPTURES, TINY_PATH, load, recorded_invalid

TINY_WORKFLOW: dict[str, Any] = load(TINY_PATH)

CAPTURE_1: dict[str, Any] = load(CAPTURES / "protocol_capture_1.json")
CAPTURE_2: dict[str, Any] = load(CAPTURES / "protocol_capture_2.json")


def _kinds(recorded_ws: list[list[Any]]) -> list[str]:
    """The message types of a recorded WebSocket stream ([seconds, type, message] rows)."""
    return [kind for _, kind, _ in recorded_ws]


def _progress_segment(types: list[str]) -> list[str]:
    """What the one node that reports progress ticks sends between its `executing` and the next node's
    `executing` (ticks, its finish, the next node's start)."""
    starts = [i for i, kind in enumerate(types) if kind == "executing"]
    segments = [types[a + 1 : b] for a, b in itertools.pairwise(starts)]
    (segment,) = [s for s in segments if "progress" in s]
    return segment


# protocol_capture_2.json "upscale": its one ticking node reports 16 progress ticks
CAPTURED_PROGRESS_SEGMENT = _progress_segment(CAPTURE_2["upscale"]["types"])

# protocol_capture_1.json tiny_ws, as sent (tests compare after ``normalized``, against CAPTURED_TINY_PROMPT_ID)
CAPTURED_TINY_WS = [message for _, _, message in CAPTURE_1["tiny_ws"]]

CAPTURED_TINY_PROMPT_ID: str = CAPTURE_1["tiny_post"]["body"]["prompt_id"]

CAPTURED_TINY_HISTORY_ENTRY: dict[str, Any] = CAPTURE_1["tiny_history"]["body"][CAPTURED_TINY_PROMPT_ID]

# the client id the tiny run was recorded with (its history entry's extra_data)
CAPTURED_TINY_CLIENT_ID: str = CAPTURED_TINY_HISTORY_ENTRY["prompt"][3]["client_id"]

CAPTURED_CACHED_WS_TYPES = _kinds(CAPTURE_1["cached_ws"])

CAPTURED_RUNTIME_ERROR_WS_TYPES = _kinds(CAPTURE_1["runtime_err_ws"])

CAPTURED_EXECUTION_ERROR_KEYS = next(
    list(message["data"]) for _, kind, message in CAPTURE_1["runtime_err_ws"] if kind == "execution_error"
)

CAPTURED_INTERRUPTED_KEYS = list(CAPTURE_2["interrupt"]["msg"]["data"])

# POST /prompt answers by case name, as (status code, body)
CAPTURED_INVALID = {case: (answer["code"], answer["body"]) for case, answer in recorded_invalid().items()}


# ------------------------------------------------------------------------------------------------- helpers
@pytest.fixture
def sim(tmp_path: Path):
    simulator = SimulatorThread(SimulatorConfig(output_dir=tmp_path / "sim", node_delay=0.01)).start()
    try:
        yield simulator
    finally:
        simulator.stop()


class Socket:
    """A blocking WebSocket client that reads ComfyUI's JSON messages."""

    def __init__(self, sim: SimulatorThread, client_id: str) -> None:
        url = sim.url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
        self.ws = websocket.create_connection(url, timeout=10)
        self.hello = self.next()

    def next(self, timeout: float = 10) -> dict[str, Any]:
        self.ws.settimeout(timeout)
        raw = self.ws.recv()
        if not raw:  # websocket-client answers a close frame with "" before raising on the next recv
            raise websocket.WebSocketConnectionClosedException(f"closed: {self.ws.status}")
        return json.loads(raw)

    def until(self, done, timeout: float = 10) -> list[dict[str, Any]]:
        """Messages up to and including the first one for which ``done(message)`` is true."""
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out; got {[m['type'] for m in seen]}")
            message = self.next(remaining)
            seen.append(message)
            if done(message):
                return seen

    def until_done(self, prompt_id: str, timeout: float = 10) -> list[dict[str, Any]]:
        return self.until(
            lambda m: (
                m["type"] == "executing" and m["data"].get("node") is None and m["data"].get("prompt_id") == prompt_id
            ),
            timeout,
        )

    def drain(self, quiet: float = 0.3) -> list[dict[str, Any]]:
        """Whatever arrives until nothing has for ``quiet`` seconds."""
        seen = []
        while True:
            try:
                seen.append(self.next(quiet))
            except websocket.WebSocketTimeoutException:
                return seen

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def connect(sim: SimulatorThread):
    sockets: list[Socket] = []

    def open_socket(client_id: str) -> Socket:
        sockets.append(Socket(sim, client_id))
        return sockets[-1]

    yield open_socket
    for socket in sockets:
        socket.close()


def submit(
    sim: SimulatorThread, prompt: Any, client_id: str | None = "test-client", **fields: Any
) -> requests.Response:
    body = {"prompt": prompt, **fields}
    if client_id is not None:
        body["client_id"] = client_id
    return requests.post(f"{sim.url}/prompt", json=body, timeout=10)


def accepted(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["prompt_id"]


def history(sim: SimulatorThread, prompt_id: str) -> dict[str, Any] | None:
    return requests.get(f"{sim.url}/history/{prompt_id}", timeout=10).json().get(prompt_id)


def wait_for(check, timeout: float = 10, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")


def normalized(value: Any, prompt_id: str) -> Any:
    """Prompt id -> "PID", timestamps -> 0, so a run compares with a recorded one."""
    if isinstance(value, dict):
        return {k: 0 if k == "timestamp" else normalized(v, prompt_id) for k, v in value.items()}
    if isinstance(value, list):
        return [normalized(v, prompt_id) for v in value]
    return "PID" if value == prompt_id else value


def tiny(**changes: dict[str, Any]) -> dict[str, Any]:
    """The tiny workflow with some nodes' inputs changed."""
    prompt = copy.deepcopy(TINY_WORKFLOW)
    for node_id, inputs in changes.items():
        prompt[node_id]["inputs"].update(inputs)  # type: ignore[attr-defined]
    return prompt


def png_bytes(size=(40, 30), colour=(10, 200, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


# ------------------------------------------------------------------------------------------------- a run
def test_tiny_run_sends_the_captured_message_sequence(sim, connect):
    socket = connect(CAPTURED_TINY_CLIENT_ID)
    assert socket.hello == {
        "type": "status",
        "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": CAPTURED_TINY_CLIENT_ID},
    }
    prompt_id = accepted(submit(sim, TINY_WORKFLOW, CAPTURED_TINY_CLIENT_ID))
    messages = socket.until_done(prompt_id)
    assert [normalized(m, prompt_id) for m in messages] == [
        normalized(m, CAPTURED_TINY_PROMPT_ID) for m in CAPTURED_TINY_WS
    ]


def test_history_entry_has_comfyuis_shape_and_view_serves_the_real_png(sim, connect):
    socket = connect(CAPTURED_TINY_CLIENT_ID)
    prompt_id = accepted(submit(sim, TINY_WORKFLOW, CAPTURED_TINY_CLIENT_ID))
    socket.until_done(prompt_id)
    entry = history(sim, prompt_id)
    assert normalized(entry, prompt_id) == normalized(CAPTURED_TINY_HISTORY_ENTRY, CAPTURED_TINY_PROMPT_ID)
    assert prompt_id in requests.get(f"{sim.url}/history", params={"max_items": 64}, timeout=10).json()

    params = {"filename": "tiny_00001_.png", "subfolder": "harness", "type": "output"}
    response = requests.get(f"{sim.url}/view", params=params, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"
    assert response.content[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (64, 64)  # EmptyImage's width/height
    assert "simulator" in image.text["comfyume_simulator"]
    assert json.loads(image.text["prompt"]) == TINY_WORKFLOW
    assert requests.get(f"{sim.url}/api/view", params=params, timeout=10).content == response.content


# ------------------------------------------------------------------------------------------------- POST /prompt answers
def _invalid_prompt(case: str) -> dict[str, Any]:
    if case == "missing_input":
        prompt = tiny()
        del prompt["3"]["inputs"]["images"]
        return prompt
    if case == "unknown_class":
        prompt = tiny()
        prompt["1"]["class_type"] = "NoSuchNode"
        return prompt
    if case == "no_output_node":
        prompt = tiny()
        del prompt["3"]
        return prompt
    if case == "bad_combo":
        prompt = tiny()
        prompt["2"] = {
            "class_type": "ImageScale",
            "inputs": {"image": ["1", 0], "upscale_method": "magic", "width": 64, "height": 64, "crop": "disabled"},
        }
        return prompt
    if case == "missing_model_file":  # a lone loader: ComfyUI answers "no outputs" before looking at the file
        return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "missing.safetensors"}}}
    return {
        "bad_value": tiny(**{"1": {"width": 999999}}),
        "bad_type": tiny(**{"1": {"width": "abc"}}),
        "bad_link": tiny(**{"3": {"images": ["9", 0]}}),
    }[case]


@pytest.mark.parametrize(
    "case",
    [
        "missing_input",
        "bad_value",
        "bad_type",
        "bad_link",
        "unknown_class",
        "no_output_node",
        "bad_combo",
        "missing_model_file",
    ],
)
def test_invalid_prompt_gets_comfyuis_400_body(sim, case):
    status, body = CAPTURED_INVALID[case]
    if case == "bad_link":  # jobs.preflight documents that it does not reproduce ComfyUI's Python traceback
        body = copy.deepcopy(body)
        body["node_errors"]["3"]["errors"][0]["extra_info"]["traceback"] = []
    response = submit(sim, _invalid_prompt(case))
    assert (response.status_code, response.json()) == (status, body)
    assert requests.get(f"{sim.url}/queue", timeout=10).json() == {"queue_running": [], "queue_pending": []}


def test_missing_prompt_key_gets_400_no_prompt(sim):
    response = requests.post(f"{sim.url}/prompt", json={"client_id": "x"}, timeout=10)
    assert (response.status_code, response.json()) == CAPTURED_INVALID["no_prompt_key"]


def test_malformed_json_and_non_object_prompt_get_comfyuis_plain_text_500(sim):
    for body in (b"{not json", json.dumps({"prompt": "abc", "client_id": "x"}).encode()):
        response = requests.post(
            f"{sim.url}/prompt", data=body, headers={"Content-Type": "application/json"}, timeout=10
        )
        assert response.status_code == 500
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.text == CAPTURED_INVALID["malformed_json"][1] == CAPTURED_INVALID["prompt_not_dict"][1]


def test_caller_prompt_id_is_honoured_and_every_post_uses_up_a_number(sim, connect):
    socket = connect("test-client")
    own_id = "f2ba6cad-1604-4b7e-9114-eef7d7f024c9"
    response = submit(sim, TINY_WORKFLOW, prompt_id=own_id)
    assert response.json() == {"prompt_id": own_id, "number": 0, "node_errors": {}}
    assert submit(sim, _invalid_prompt("bad_value")).status_code == 400  # takes number 1, as in ComfyUI
    second = submit(sim, tiny(**{"3": {"filename_prefix": "other"}})).json()
    assert second["number"] == 2 and str(uuid.UUID(second["prompt_id"])) == second["prompt_id"]
    socket.until_done(own_id)
    assert history(sim, own_id)["prompt"][:2] == [0, own_id]


# ------------------------------------------------------------------------------------------------- who hears what
def test_execution_events_reach_only_the_sockets_of_the_prompts_client(sim, connect):
    mine, mine_again, other = connect("client-a"), connect("client-a"), connect("client-b")
    prompt_id = accepted(submit(sim, TINY_WORKFLOW, "client-a"))
    types = [m["type"] for m in mine.until_done(prompt_id)]
    assert "execution_start" in types and "executed" in types
    assert [m["type"] for m in mine_again.until_done(prompt_id)] == types
    heard = [m["type"] for m in other.drain()]
    assert heard == ["status", "status", "status"]  # queued, started, finished: broadcast to everyone


def test_prompt_without_client_id_broadcasts_only_what_comfyui_broadcasts(sim, connect):
    socket = connect("listener")
    prompt_id = accepted(submit(sim, TINY_WORKFLOW, client_id=None))
    wait_for(lambda: history(sim, prompt_id))
    types = [m["type"] for m in socket.drain()]
    assert set(types) == {"status", "progress_state"}  # no execution_*, executing or executed without a client
    assert history(sim, prompt_id)["status"]["status_str"] == "success"


def test_feature_flags_are_answered_on_the_first_message(sim, connect):
    socket = connect("flags")
    socket.ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
    assert socket.next() == {
        "type": "feature_flags",
        "data": {"supports_preview_metadata": True, "max_upload_size": 104857600},
    }


# ------------------------------------------------------------------------------------------------- interrupt, queue
def test_interrupting_a_hung_node_ends_in_execution_interrupted(sim, connect):
    sim.config.hang_on_class = {"ImageInvert"}
    socket = connect("test-client")
    prompt_id = accepted(submit(sim, TINY_WORKFLOW))
    socket.until(lambda m: m["type"] == "executing" and m["data"].get("node") == "2")
    assert requests.post(f"{sim.url}/interrupt", json={"prompt_id": "not-running"}, timeout=10).status_code == 200
    time.sleep(0.3)
    assert history(sim, prompt_id) is None  # an interrupt for another prompt is ignored
    requests.post(f"{sim.url}/interrupt", json={"prompt_id": prompt_id}, timeout=10)
    rest = socket.until_done(prompt_id)
    assert [m["type"] for m in rest] == ["execution_interrupted", "status", "executing"]
    data = rest[0]["data"]
    assert list(data) == CAPTURED_INTERRUPTED_KEYS
    assert (data["prompt_id"], data["node_id"], data["node_type"], data["executed"]) == (
        prompt_id,
        "2",
        "ImageInvert",
        ["1"],
    )
    entry = history(sim, prompt_id)
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert [event for event, _ in entry["status"]["messages"]] == [
        "execution_start",
        "execution_cached",
        "execution_interrupted",
    ]
    assert entry["outputs"] == {} and entry["meta"] == {}


def test_interrupt_without_a_body_stops_whatever_runs(sim, connect):
    sim.config.hang_on_class = {"SaveImage"}
    socket = connect("test-client")
    prompt_id = accepted(submit(sim, TINY_WORKFLOW))
    socket.until(lambda m: m["type"] == "executing" and m["data"].get("node") == "3")
    assert requests.post(f"{sim.url}/api/interrupt", timeout=10).status_code == 200
    assert "execution_interrupted" in [m["type"] for m in socket.until_done(prompt_id)]


def test_interrupt_lands_at_the_next_progress_tick(sim, connect):
    sim.config.node_delay, sim.config.progress_steps = 5.0, 50
    socket = connect("test-client")
    prompt = {
        "1": {
            "class_type": "KarrasScheduler",
            "inputs": {"steps": 50, "sigma_max": 14.6, "sigma_min": 0.03, "rho": 7.0},
        },
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    prompt_id = accepted(submit(sim, prompt))
    socket.until(lambda m: m["type"] == "progress")
    started = time.monotonic()
    requests.post(f"{sim.url}/interrupt", json={"prompt_id": prompt_id}, timeout=10)
    rest = socket.until_done(prompt_id)
    assert time.monotonic() - started < 2.5  # a tick every 0.1 s lands it long before the node's 5 s
    interrupted = next(m["data"] for m in rest if m["type"] == "execution_interrupted")
    assert (interrupted["node_id"], interrupted["executed"]) == ("1", [])


def test_reconnecting_client_is_told_the_current_node(sim, connect):
    sim.config.hang_on_class = {"ImageInvert"}
    first = connect("test-client")
    prompt_id = accepted(submit(sim, TINY_WORKFLOW))
    first.until(lambda m: m["type"] == "executing" and m["data"].get("node") == "2")
    first.close()
    again = connect("test-client")
    assert again.hello["data"]["sid"] == "test-client"
    assert again.next() == {"type": "executing", "data": {"node": "2"}}
    requests.post(f"{sim.url}/interrupt", timeout=10)
    again.until_done(prompt_id)


def test_queue_delete_removes_a_pending_prompt_and_clear_empties_the_queue(sim, connect):
    sim.config.hang_on_class = {"ImageInvert"}
    socket = connect("test-client")
    running = accepted(submit(sim, TINY_WORKFLOW))
    socket.until(lambda m: m["type"] == "executing" and m["data"].get("node") == "2")
    pending = [accepted(submit(sim, tiny(**{"3": {"filename_prefix": f"p{i}"}}))) for i in range(3)]
    queue = requests.get(f"{sim.url}/queue", timeout=10).json()
    assert [item[1] for item in queue["queue_running"]] == [running]
    assert sorted(item[1] for item in queue["queue_pending"]) == sorted(pending)
    assert queue["queue_pending"][0][3] == {"client_id": "test-client"} and len(queue["queue_pending"][0]) == 5
    assert requests.get(f"{sim.url}/prompt", timeout=10).json() == {"exec_info": {"queue_remaining": 4}}

    requests.post(f"{sim.url}/queue", json={"delete": [pending[0]]}, timeout=10)
    queue = requests.get(f"{sim.url}/queue", timeout=10).json()
    assert sorted(item[1] for item in queue["queue_pending"]) == sorted(pending[1:])
    requests.post(f"{sim.url}/queue", json={"clear": True}, timeout=10)
    assert requests.get(f"{sim.url}/queue", timeout=10).json()["queue_pending"] == []

    requests.post(f"{sim.url}/interrupt", timeout=10)
    socket.until_done(running)
    time.sleep(0.2)
    assert all(history(sim, p) is None for p in pending)
    assert requests.get(f"{sim.url}/queue", timeout=10).json() == {"queue_running": [], "queue_pending": []}


def test_front_puts_a_prompt_at_the_head_of_the_queue(sim, connect):
    sim.config.hang_on_class = {"ImageInvert"}
    socket = connect("test-client")
    first = accepted(submit(sim, TINY_WORKFLOW))
    socket.until(lambda m: m["type"] == "executing" and m["data"].get("node") == "2")
    sim.config.hang_on_class = set()
    later = accepted(submit(sim, tiny(**{"3": {"filename_prefix": "later"}})))
    urgent = submit(sim, tiny(**{"3": {"filename_prefix": "urgent"}}), front=True).json()
    assert urgent["number"] == -2
    requests.post(f"{sim.url}/interrupt", json={"prompt_id": first}, timeout=10)
    socket.until_done(later)
    assert list(requests.get(f"{sim.url}/history", timeout=10).json()) == [first, urgent["prompt_id"], later]


def test_history_listing_and_deletion(sim, connect):
    socket = connect("test-client")
    ids = []
    for i in range(3):
        ids.append(accepted(submit(sim, tiny(**{"3": {"filename_prefix": f"h{i}"}}))))
    socket.until_done(ids[-1])
    assert list(requests.get(f"{sim.url}/history", params={"max_items": 2}, timeout=10).json()) == ids[1:]
    requests.post(f"{sim.url}/history", json={"delete": [ids[0]]}, timeout=10)
    assert list(requests.get(f"{sim.url}/history", timeout=10).json()) == ids[1:]
    assert requests.get(f"{sim.url}/history/{ids[0]}", timeout=10).json() == {}
    requests.post(f"{sim.url}/history", json={"clear": True}, timeout=10)
    assert requests.get(f"{sim.url}/history", timeout=10).json() == {}


# ------------------------------------------------------------------------------------------------- faults
def test_fail_on_class_gives_comfyuis_execution_error(sim, connect):
    sim.config.fail_on_class = {"EmptyImage"}
    socket = connect("test-client")
    prompt_id = accepted(submit(sim, TINY_WORKFLOW))
    messages = socket.until_done(prompt_id)
    assert [m["type"] for m in messages] == CAPTURED_RUNTIME_ERROR_WS_TYPES
    error = next(m["data"] for m in messages if m["type"] == "execution_error")
    assert list(error) == CAPTURED_EXECUTION_ERROR_KEYS
    assert (error["node_id"], error["node_type"], error["executed"], error["exception_type"]) == (
        "1",
        "EmptyImage",
        [],
        "RuntimeError",
    )
    assert "simulator" in error["exception_message"] and error["traceback"]
    assert error["current_inputs"] == {"width": [64], "height": [64], "batch_size": [1], "color": [16711680]}
    assert error["current_outputs"] == ["1", "2", "3"]
    entry = history(sim, prompt_id)
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["status"]["messages"][-1] == ["execution_error", error]
    assert (entry["outputs"], entry["meta"]) == ({}, {})


def test_http_fail_count_answers_503_then_accepts(sim):
    sim.config.http_fail_count = 2
    for _ in range(2):
        response = submit(sim, TINY_WORKFLOW)
        assert response.status_code == 503
        assert response.headers["Content-Type"].startswith("text/plain") and "simulator" in response.text
    accepted(submit(sim, TINY_WORKFLOW))
    assert sim.config.http_fail_count == 0


def test_ws_drop_after_closes_every_socket_but_the_prompt_completes(sim, connect):
    sim.config.node_delay, sim.config.ws_drop_after = 0.05, 3
    mine, other = connect("test-client"), connect("bystander")
    prompt_id = accepted(submit(sim, TINY_WORKFLOW))
    received = []
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        while True:
            received.append(mine.next(5)["type"])
    assert [t for t in received if t != "status"] == ["execution_start", "execution_cached", "progress_state"]
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        while True:
            other.next(5)
    entry = wait_for(lambda: history(sim, prompt_id))
    assert entry["status"]["status_str"] == "success"
    assert sim.config.ws_drop_after == 0  # one shot
    assert connect("test-client").hello["type"] == "status"


def test_history_is_written_history_delay_after_execution_success(sim, connect):
    sim.config.history_delay = 0.5
    socket = connect("test-client")
    prompt_id = accepted(submit(sim, TINY_WORKFLOW))
    socket.until(lambda m: m["type"] == "execution_success")
    succeeded = time.monotonic()
    assert history(sim, prompt_id) is None
    socket.until_done(prompt_id)
    assert time.monotonic() - succeeded >= 0.45
    assert history(sim, prompt_id)["status"]["status_str"] == "success"


def test_runtime_config_endpoint_changes_faults_for_the_next_prompt(sim, connect):
    assert requests.get(f"{sim.url}/simulator/config", timeout=10).json()["fail_on_class"] == []
    response = requests.post(f"{sim.url}/api/simulator/config", json={"fail_on_class": ["ImageInvert"]}, timeout=10)
    assert response.status_code == 200 and response.json()["fail_on_class"] == ["ImageInvert"]
    assert sim.config.fail_on_class == {"ImageInvert"}
    for bad in ({"output_dir": "/"}, {"no_such_setting": 1}, {"concurrency": 0}, {"node_delay": "slow"}):
        assert requests.post(f"{sim.url}/simulator/config", json=bad, timeout=10).status_code == 400
    socket = connect("test-client")
    prompt_id = accepted(submit(sim, TINY_WORKFLOW))
    error = next(m["data"] for m in socket.until_done(prompt_id) if m["type"] == "execution_error")
    assert error["node_id"] == "2"


# ------------------------------------------------------------------------------------------------- files
def test_uploaded_image_is_offered_by_load_image_and_runs(sim, connect):
    def upload(data: bytes, name: str, **form: str) -> dict[str, Any]:
        response = requests.post(
            f"{sim.url}/upload/image", files={"image": (name, data, "image/png")}, data=form, timeout=10
        )
        assert response.status_code == 200, response.text
        return response.json()

    picture = png_bytes()
    assert upload(picture, "upload_test.png", type="input") == {
        "name": "upload_test.png",
        "subfolder": "",
        "type": "input",
    }
    assert upload(picture, "upload_test.png")["name"] == "upload_test.png"  # same bytes: reused
    assert upload(png_bytes(colour=(1, 2, 3)), "upload_test.png")["name"] == "upload_test (1).png"
    assert upload(picture, "image.png", subfolder="pasted") == {
        "name": "image.png",
        "subfolder": "pasted",
        "type": "input",
    }
    options = requests.get(f"{sim.url}/object_info/LoadImage", timeout=10).json()["LoadImage"]["input"]
    assert options["required"]["image"][0] == [
        "example.png",
        "pasted/image.png",
        "upload_test (1).png",
        "upload_test.png",
    ]
    socket = connect("test-client")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "upload_test.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    prompt_id = accepted(submit(sim, prompt))
    executed = next(m["data"] for m in socket.until_done(prompt_id) if m["type"] == "executed")
    saved = executed["output"]["images"][0]
    assert saved["type"] == "temp" and saved["filename"].startswith("ComfyUI_temp_")
    response = requests.get(f"{sim.url}/view", params=saved, timeout=10)
    assert Image.open(io.BytesIO(response.content)).size == (40, 30)  # the uploaded picture's size
    input_view = requests.get(
        f"{sim.url}/view", params={"filename": "image.png", "subfolder": "pasted", "type": "input"}, timeout=10
    )
    assert input_view.content == picture
    pasted = {**prompt, "1": {"class_type": "LoadImage", "inputs": {"image": "pasted/image.png"}}}
    assert accepted(submit(sim, pasted))


def test_load_image_of_a_file_never_uploaded_is_refused_like_comfyui(sim):
    # No capture has this case; the body follows nodes.py LoadImage.VALIDATE_INPUTS and execution.py.
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "nope.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    response = submit(sim, prompt)
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "",
            "extra_info": {},
        },
        "node_errors": {
            "1": {
                "errors": [
                    {
                        "type": "custom_validation_failed",
                        "message": "Custom validation failed for node",
                        "details": "image - Invalid image file: nope.png",
                        "extra_info": {"input_name": "image"},
                    }
                ],
                "dependent_outputs": ["2"],
                "class_type": "LoadImage",
            }
        },
    }
    both = {
        **prompt,
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
    }
    answer = submit(sim, both).json()  # one output is still valid: queued, the other's errors reported
    assert list(answer["node_errors"]) == ["1"] and answer["prompt_id"]


def test_view_never_serves_anything_outside_output_dir(sim, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes())
    output = tmp_path / "sim" / "output"
    (output / "link.png").symlink_to(secret)
    cases = [
        ({"filename": "../secret.png"}, 400),
        ({"filename": "/etc/passwd"}, 400),
        ({"filename": "..%2Fsecret.png"}, 400),
        ({"filename": "secret.png", "subfolder": "../.."}, 403),
        ({"filename": "passwd", "subfolder": "/etc"}, 403),
        ({"filename": "secret.png", "type": "nope"}, 400),
        ({"filename": "link.png"}, 403),
        ({"filename": "missing.png"}, 404),
        ({}, 404),
    ]
    for params, status in cases:
        response = requests.get(f"{sim.url}/view", params=params, timeout=10)
        assert response.status_code == status, (params, response.status_code)
        assert response.content != secret.read_bytes()
    assert (
        requests.get(f"{sim.url}/view", params={"filename": "example.png", "type": "input"}, timeout=10).status_code
        == 200
    )


def test_animated_webp_is_a_real_animation(sim, connect):
    socket = connect("test-client")
    webp = {
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
    prompt_id = accepted(submit(sim, webp))
    executed = next(m["data"] for m in socket.until_done(prompt_id) if m["type"] == "executed")
    assert executed["output"] == {
        "images": [{"filename": "clip_00001_.webp", "subfolder": "anim", "type": "output"}],
        "animated": [True],
    }
    response = requests.get(f"{sim.url}/view", params=executed["output"]["images"][0], timeout=10)
    animation = Image.open(io.BytesIO(response.content))
    assert (animation.format, animation.size, animation.n_frames) == ("WEBP", (64, 48), 4)


# ------------------------------------------------------------------------------------------------- videos
def _frames() -> dict[str, Any]:
    """Twelve 320x240 frames."""
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 320, "height": 240, "batch_size": 12, "color": 0}}}


def _save_video(prefix: str = "video/ComfyUI", fps: float = 12.0) -> dict[str, Any]:
    """EmptyImage frames -> CreateVideo -> SaveVideo (mp4 / h264), as ComfyUI's own video templates end."""
    return {
        **_frames(),
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": fps}},
        "3": {
            "class_type": "SaveVideo",
            "inputs": {"video": ["2", 0], "filename_prefix": prefix, "format": "mp4", "codec": "h264"},
        },
    }


def _save_webm(codec: str) -> dict[str, Any]:
    return {
        **_frames(),
        "2": {
            "class_type": "SaveWEBM",
            "inputs": {"images": ["1", 0], "filename_prefix": "ComfyUI", "codec": codec, "fps": 24.0, "crf": 32.0},
        },
    }


def _run_for_output(sim, socket, prompt: dict[str, Any], node_id: str) -> dict[str, Any]:
    """Run ``prompt``; the ``executed`` output of ``node_id``, checked against its /history entry."""
    prompt_id = accepted(submit(sim, prompt))
    messages = socket.until_done(prompt_id, timeout=30)
    assert "execution_error" not in [m["type"] for m in messages], messages
    executed = next(m["data"] for m in messages if m["type"] == "executed" and m["data"]["node"] == node_id)
    entry = wait_for(lambda: history(sim, prompt_id))
    assert entry["outputs"][node_id] == executed["output"]
    return executed["output"]


def _probe(content: bytes) -> dict[str, Any]:
    """What PyAV makes of a video file: codec, fps, size, frames decoded, metadata, first and last frame."""
    with av.open(io.BytesIO(content), mode="r") as container:
        stream = container.streams.video[0]
        frames = [frame.to_image() for frame in container.decode(stream)]
        return {
            "codec": stream.codec.canonical_name,
            "fps": stream.average_rate,
            "size": (stream.width, stream.height),
            "frames": len(frames),
            "metadata": {key.lower(): value for key, value in container.metadata.items()},
            "first": frames[0],
            "last": frames[-1],
        }


def test_save_video_writes_a_playable_h264_mp4_named_and_answered_like_comfyui(sim, connect):
    """ComfyUI 0.3.64's SaveVideo answers ui.PreviewVideo: ``images`` + ``animated: [true]``, the file
    ``<prefix>_00001_.mp4`` under the prefix's subfolder (comfy_extras/nodes_video.py, comfy_api/latest/_ui.py)."""
    socket = connect("test-client")
    prompt = _save_video()
    output = _run_for_output(sim, socket, prompt, "3")
    assert output == {
        "images": [{"filename": "ComfyUI_00001_.mp4", "subfolder": "video", "type": "output"}],
        "animated": [True],
    }
    response = requests.get(f"{sim.url}/view", params=output["images"][0], timeout=10)
    assert (response.status_code, response.headers["Content-Type"]) == (200, "video/mp4")
    video = _probe(response.content)
    assert (video["codec"], video["fps"], video["size"], video["frames"]) == ("h264", 12, (320, 240), 12)
    assert video["metadata"]["title"] == "ComfyuME simulator"
    assert json.loads(video["metadata"]["prompt"]) == prompt  # ComfyUI's use_metadata_tags
    assert video["first"].tobytes() != video["last"].tobytes()  # the band moves, the counter counts
    again = _run_for_output(sim, socket, prompt, "3")
    assert again["images"][0]["filename"] == "ComfyUI_00002_.mp4"


@pytest.mark.parametrize("codec", ["vp9", "av1"])
def test_save_webm_writes_a_playable_webm_at_its_fps(sim, connect, codec):
    socket = connect("test-client")
    output = _run_for_output(sim, socket, _save_webm(codec), "2")
    assert output == {
        "images": [{"filename": "ComfyUI_00001_.webm", "subfolder": "", "type": "output"}],
        "animated": [True],
    }
    response = requests.get(f"{sim.url}/view", params=output["images"][0], timeout=10)
    assert (response.status_code, response.headers["Content-Type"]) == (200, "video/webm")
    video = _probe(response.content)
    assert (video["codec"], video["fps"], video["size"], video["frames"]) == (codec, 24, (320, 240), 12)
    assert video["metadata"]["title"] == "ComfyuME simulator"


def test_view_answers_byte_ranges_so_a_video_can_seek(sim, connect):
    socket = connect("test-client")
    ref = _run_for_output(sim, socket, _save_video(), "3")["images"][0]
    whole = requests.get(f"{sim.url}/view", params=ref, timeout=10)
    assert whole.headers["Accept-Ranges"] == "bytes"
    size = len(whole.content)
    for asked, first, last in (("bytes=100-299", 100, 299), (f"bytes={size - 64}-", size - 64, size - 1)):
        part = requests.get(f"{sim.url}/view", params=ref, headers={"Range": asked}, timeout=10)
        assert part.status_code == 206
        assert part.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert part.content == whole.content[first : last + 1]


def test_the_shape_of_the_ltx2_text_to_video_template_runs_to_a_capped_video(sim, connect):
    """LTX-2's graph (shared/fixtures/upstream-workflows/ltx2_text_to_video.json) minus the LTX-2-only nodes that
    0.3.64 does not list: a 768x512x97 latent, a PrimitiveFloat fps into CreateVideo, SaveVideo "video/LTX-2"."""
    sim.config.models = ["ltx-2-19b-dev.safetensors"]
    socket = connect("test-client")
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "ltx-2-19b-dev.safetensors"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox in the snow", "clip": ["1", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "22": {
            "class_type": "LTXVConditioning",
            "inputs": {"positive": ["3", 0], "negative": ["4", 0], "frame_rate": ["102", 0]},
        },
        "43": {
            "class_type": "EmptyLTXVLatentVideo",
            "inputs": {"width": 768, "height": 512, "length": 97, "batch_size": 1},
        },
        "41": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": 42,
                "steps": 20,
                "cfg": 4.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "positive": ["22", 0],
                "negative": ["22", 1],
                "latent_image": ["43", 0],
                "denoise": 1.0,
            },
        },
        "95": {"class_type": "VAEDecode", "inputs": {"samples": ["41", 0], "vae": ["1", 2]}},
        "102": {"class_type": "PrimitiveFloat", "inputs": {"value": 25.0}},
        "97": {"class_type": "CreateVideo", "inputs": {"images": ["95", 0], "fps": ["102", 0]}},
        "75": {
            "class_type": "SaveVideo",
            "inputs": {"video": ["97", 0], "filename_prefix": "video/LTX-2", "format": "auto", "codec": "auto"},
        },
    }
    output = _run_for_output(sim, socket, prompt, "75")
    assert output["images"] == [{"filename": "LTX-2_00001_.mp4", "subfolder": "video", "type": "output"}]
    video = _probe(requests.get(f"{sim.url}/view", params=output["images"][0], timeout=10).content)
    # 97 frames capped at MAX_FRAMES, 768x512 scaled to MAX_FRAME_SIDE with even sides.
    assert (video["fps"], video["size"], video["frames"]) == (25, (512, 340), MAX_FRAMES)


def test_identical_resubmission_runs_again_by_default_and_comes_from_cache_when_enabled(sim, connect):
    socket = connect("test-client")
    for expected_file in ("tiny_00001_.png", "tiny_00002_.png"):
        prompt_id = accepted(submit(sim, TINY_WORKFLOW))
        executed = next(m for m in socket.until_done(prompt_id) if m["type"] == "executed")
        assert executed["data"]["output"]["images"][0]["filename"] == expected_file
    sim.config.cache = True
    socket.until_done(accepted(submit(sim, TINY_WORKFLOW)))  # fills the cache: tiny_00003_.png
    prompt_id = accepted(submit(sim, TINY_WORKFLOW))
    messages = socket.until_done(prompt_id)
    assert [m["type"] for m in messages] == CAPTURED_CACHED_WS_TYPES
    assert messages[3]["data"]["nodes"] == ["1", "2", "3"]
    assert messages[4]["data"]["output"]["images"][0]["filename"] == "tiny_00003_.png"
    assert messages[5]["data"]["nodes"]["3"]["value"] == 1 and messages[5]["data"]["nodes"]["3"]["state"] == "finished"
    assert sorted(os.listdir(sim.simulator.dirs["output"] / "harness")) == [
        "tiny_00001_.png",
        "tiny_00002_.png",
        "tiny_00003_.png",
    ]


def test_progress_ticks_follow_the_captured_pattern(sim, connect):
    sim.config.progress_steps = 16
    socket = connect("test-client")
    prompt = {
        "1": {
            "class_type": "KarrasScheduler",
            "inputs": {"steps": 16, "sigma_max": 14.6, "sigma_min": 0.03, "rho": 7.0},
        },
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    prompt_id = accepted(submit(sim, prompt))
    messages = socket.until_done(prompt_id)
    types = [m["type"] for m in messages]
    first, second = [i for i, t in enumerate(types) if t == "executing"][:2]
    assert types[first + 1 : second] == CAPTURED_PROGRESS_SEGMENT
    ticks = [m["data"] for m in messages if m["type"] == "progress"]
    assert ticks == [{"value": v, "max": 16, "prompt_id": prompt_id, "node": "1"} for v in range(1, 17)]
    preview = next(m["data"]["output"] for m in messages if m["type"] == "executed")
    assert "simulator" in preview["text"][0]


def test_two_prompts_run_at_once_with_concurrency_2(sim, connect):
    sim.config.concurrency, sim.config.node_delay = 2, 0.3
    socket = connect("test-client")
    first = accepted(submit(sim, tiny(**{"3": {"filename_prefix": "a"}})))
    second = accepted(submit(sim, tiny(**{"3": {"filename_prefix": "b"}})))
    running = wait_for(lambda: len(requests.get(f"{sim.url}/queue", timeout=10).json()["queue_running"]) == 2, 5)
    assert running
    seen = socket.until(lambda m: m["type"] == "execution_success")
    starts = [m["data"]["prompt_id"] for m in seen if m["type"] == "execution_start"]
    assert sorted(starts) == sorted([first, second])  # both began before either finished
    wait_for(lambda: history(sim, first) and history(sim, second))


def test_one_prompt_at_a_time_by_default(sim, connect):
    sim.config.node_delay = 0.1
    socket = connect("test-client")
    first = accepted(submit(sim, tiny(**{"3": {"filename_prefix": "a"}})))
    accepted(submit(sim, tiny(**{"3": {"filename_prefix": "b"}})))
    seen = socket.until(lambda m: m["type"] == "execution_success")
    assert [m["data"]["prompt_id"] for m in seen if m["type"] == "execution_start"] == [first]


# ------------------------------------------------------------------------------------------------- catalogue, labels
def test_models_are_offered_in_loader_combos(sim, connect):
    model = "flux-2-klein-4b.safetensors"
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": model}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    assert submit(sim, prompt).json()["node_errors"]["1"]["errors"][0]["type"] == "value_not_in_list"
    sim.config.models = [model]
    info = requests.get(f"{sim.url}/object_info", timeout=10).json()
    assert info["UNETLoader"]["input"]["required"]["unet_name"][0] == [model]
    assert info["VAELoader"]["input"]["required"]["vae_name"][0][-1] == model
    assert model in info["TripleCLIPLoader"]["input"]["required"]["clip_name3"][1]["options"]
    assert model in info["CreateHookLora"]["input"]["required"]["lora_name"][0]
    assert model not in info["KSampler"]["input"]["required"]["sampler_name"][0]
    assert model not in info["CheckpointLoader"]["input"]["required"]["config_name"][0]
    socket = connect("test-client")
    prompt_id = accepted(submit(sim, prompt))
    socket.until_done(prompt_id)
    assert history(sim, prompt_id)["status"]["status_str"] == "success"


def test_simulator_labels_itself(sim):
    for prefix in ("", "/api"):
        stats = requests.get(f"{sim.url}{prefix}/system_stats", timeout=10).json()
        assert stats["simulator"] is True
        assert stats["devices"][0]["name"] == "ComfyuME simulator (no GPU)"
        assert stats["system"]["comfyui_version"] == "0.3.64"
    assert "simulator" in requests.get(sim.url, timeout=10).text
    info = requests.get(f"{sim.url}/api/object_info", timeout=10).json()
    assert len(info) == 477 and info["SaveImage"]["output_node"] is True
    assert requests.get(f"{sim.url}/object_info/NoSuchNode", timeout=10).json() == {}


def test_simulator_thread_stops_and_frees_its_port(tmp_path):
    simulator = SimulatorThread(SimulatorConfig(output_dir=tmp_path)).start()
    url = simulator.url
    assert requests.get(f"{url}/prompt", timeout=5).status_code == 200
    thread = simulator._thread
    simulator.stop()
    assert thread is not None and not thread.is_alive()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/prompt", timeout=2)


# ------------------------------------------------------------------------------------------------- live previews
def _preview_frames(socket: Socket, prompt_id: str, timeout: float = 10) -> tuple[list[bytes], list[str]]:
    """Binary frames and message types a socket gets until the prompt's final ``executing``."""
    binary: list[bytes] = []
    types: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        socket.ws.settimeout(max(0.01, deadline - time.monotonic()))
        raw = socket.ws.recv()
        if isinstance(raw, bytes):
            binary.append(raw)
            continue
        message = json.loads(raw)
        types.append(message["type"])
        data = message["data"]
        if message["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return binary, types


def test_a_ticking_node_sends_a_preview_per_step_to_its_client_only(sim, connect):
    """ComfyUI's latent previewer: a PREVIEW_IMAGE frame (type 1, JPEG) per progress step, to the prompt's client;
    with ``supports_preview_metadata`` announced, PREVIEW_IMAGE_WITH_METADATA (type 4) naming prompt and node."""
    sim.config.update({"progress_steps": 3, "progress_all": True, "preview_method": "auto"})
    plain, flagged, other = connect("plain"), connect("flagged"), connect("other")
    flagged.ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
    assert flagged.next()["type"] == "feature_flags"

    prompt_id = accepted(submit(sim, TINY_WORKFLOW, "plain"))
    frames, types = _preview_frames(plain, prompt_id)
    assert len(frames) == 3 * len(TINY_WORKFLOW) == types.count("progress")  # every node ticks 3 times here
    for frame in frames:
        assert frame[:8] == (1).to_bytes(4, "big") + (1).to_bytes(4, "big") and frame[8:10] == b"\xff\xd8"
    assert len(set(frames)) == len(frames)  # each step is another picture
    assert [m for m in other.drain() if m["type"] != "status"] == []  # (drain reads text; bytes would fail it)

    prompt_id = accepted(submit(sim, tiny(**{"1": {"color": 0x123456}}), "flagged"))
    frames, _ = _preview_frames(flagged, prompt_id)
    assert frames and all(int.from_bytes(f[:4], "big") == 4 for f in frames)
    length = int.from_bytes(frames[0][4:8], "big")
    metadata = json.loads(frames[0][8 : 8 + length])
    assert metadata["prompt_id"] == prompt_id and metadata["image_type"] == "image/jpeg"
    assert metadata["node_id"] in TINY_WORKFLOW and frames[0][8 + length : 8 + length + 2] == b"\xff\xd8"


@pytest.mark.parametrize("where", ["extra_data", "config"])
def test_no_previews_with_preview_method_none(sim, connect, where):
    sim.config.update({"progress_steps": 2, "progress_all": True, "preview_method": "auto"})
    extra: dict[str, Any] = {}
    if where == "config":
        sim.config.update({"preview_method": "none"})
    else:
        extra = {"preview_method": "none"}
    socket = connect("quiet")
    response = requests.post(
        f"{sim.url}/prompt", json={"prompt": TINY_WORKFLOW, "client_id": "quiet", "extra_data": extra}, timeout=10
    )
    prompt_id = accepted(response)
    frames, types = _preview_frames(socket, prompt_id)
    assert frames == [] and "progress" in types


def test_an_unknown_preview_method_is_refused_by_the_runtime_config(sim):
    answer = requests.post(f"{sim.url}/simulator/config", json={"preview_method": "fancy"}, timeout=5)
    assert answer.status_code == 400 and "preview_method must be one of none, auto, latent2rgb, taesd" in answer.text
