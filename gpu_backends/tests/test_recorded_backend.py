"""The comfyui kind against a newer ComfyUI's recorded messages (0.12.1: progress_state, execution_success, a
node error's shape), replayed by tests/recorded_comfyui.py, not against the simulator: the run ends as the
recording did, every message of the prompt reaches the participant in ComfyUI's order, outputs are stored."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gpu_backends.providers import ComfyUIProvider, RunSpec
from gpu_backends.tests.test_event_sockets import Sink
from gpu_backends.worker.prompts import PREVIEW_METADATA_FLAGS
from tests.recorded import TINY_PATH, load
from tests.recorded_comfyui import PNG, RecordedComfyUI, recorded_outputs

TINY = load(TINY_PATH)


@pytest.fixture
def recorded(request) -> Iterator[RecordedComfyUI]:
    server = RecordedComfyUI(request.param).start()
    yield server
    server.stop()


@pytest.mark.parametrize("recorded", ["ws_capture.json"], indirect=True)
def test_a_run_on_comfyui_0_12_1_succeeds_with_its_messages_in_order_and_its_image_stored(recorded, pool):
    sink = Sink()
    outcome = ComfyUIProvider(recorded.url).run(RunSpec(prompt=TINY, backend_prompt_id="job-0121"), sink)
    assert outcome.status == "succeeded", outcome.error
    assert [m["type"] for m in sink.events] == recorded.recorded_types()
    assert {m["data"]["prompt_id"] for m in sink.events} == {"job-0121"}
    # progress_state nests the prompt id in every node: all of them are this job's.
    states = [m["data"] for m in sink.events if m["type"] == "progress_state"]
    assert states and all(node["prompt_id"] == "job-0121" for state in states for node in state["nodes"].values())
    assert [name for name, _ in sink.stored] == recorded_outputs(recorded.capture)
    assert all(size == len(PNG) for _, size in sink.stored)
    # The platform asks for previews with metadata, as ComfyUI's own frontend does.
    assert recorded.flags_from == [PREVIEW_METADATA_FLAGS["data"]]


@pytest.mark.parametrize("recorded", ["ws_capture_failed.json"], indirect=True)
def test_a_node_error_on_comfyui_0_12_1_fails_the_run_with_its_own_error(recorded, pool):
    sink = Sink()
    outcome = ComfyUIProvider(recorded.url).run(RunSpec(prompt=TINY, backend_prompt_id="job-0121-bad"), sink)
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error["node_type"] == "ImageToMask"
    assert "index 3 is out of bou" in outcome.error["exception_message"]
    assert [m["type"] for m in sink.events] == recorded.recorded_types()
