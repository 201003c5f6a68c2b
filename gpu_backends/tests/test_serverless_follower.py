"""The serverless provider's reading of a worker's callbacks: each seq once, in order, only this prompt's
messages, files recorded before the UI hears of them, and a result without its files is not a success."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from gpu_backends.client import BackendError, FileRef
from gpu_backends.mailbox import Mailbox
from gpu_backends.providers import RunSpec
from gpu_backends.serverless import ServerlessProvider, Timing, WorkerCallback

JOB = "job-under-test"


class Sink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.files: list[str] = []
        self.accepted_calls = 0
        self.stop: str | None = None

    def accepted(self, response: dict[str, Any]) -> bool:
        self.accepted_calls += 1
        return True

    def event(self, message: dict[str, Any]) -> None:
        self.events.append(message)

    def store_output(self, *args: Any) -> dict[str, Any]:
        raise AssertionError("a serverless run never fetches files itself")

    def preview(self, preview: Any, running_node: str | None) -> None:
        raise AssertionError("a GPU worker posts its previews to the hub itself")

    def record_file(self, node_id: str, ref: FileRef, stored: dict[str, Any]) -> dict[str, Any]:
        self.files.append(stored["key"])
        return {"filename": ref.filename, "subfolder": f"hub/{ref.subfolder}".rstrip("/"), "type": "output"}

    def note_backend_ref(self, ref: str) -> None:
        pass

    def tick(self) -> str | None:
        return self.stop


class Gateway:
    """Plays a worker: posts the given callback items to the mailbox, then answers ``answer``."""

    def __init__(self, items: list[dict[str, Any]], answer: tuple[int, Any] | BackendError) -> None:
        self.items, self.answer = items, answer

    def run_sync(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        mailbox = Mailbox(body["job"])
        for item in self.items:
            mailbox.post(item)
            time.sleep(0.01)
        if isinstance(self.answer, BackendError):
            raise self.answer
        return self.answer

    def submit_async(self, path: str, body: dict[str, Any]) -> str:
        raise AssertionError("sync only here")

    def async_state(self, inference_id: str) -> str:
        return "unknown"

    def result(self, inference_id: str) -> tuple[int, Any] | None:
        return None

    def get(self, path: str) -> Any:
        return {}


def msg(kind: str, prompt_id: str = JOB, **data: Any) -> dict[str, Any]:
    return {"type": kind, "data": {"prompt_id": prompt_id, **data}}


FILE = {
    "node_id": "9", "filename": "out.png", "subfolder": "", "type": "output", "key": "k/out.png", "size": 3,
    "sha256": "a" * 64, "content_type": "image/png",
}  # fmt: skip
OUTPUT = {"images": [{"filename": "out.png", "subfolder": "", "type": "output"}]}
DONE = {"status": "succeeded", "outputs": {"9": OUTPUT}, "files": [FILE]}


def run(items: list[dict[str, Any]], answer: tuple[int, Any] | BackendError, sink: Sink | None = None):
    sink = sink or Sink()
    spec = RunSpec(
        prompt={"9": {"class_type": "SaveImage", "inputs": {}}},
        backend_prompt_id=JOB,
        callback=WorkerCallback(url="http://hub/cb/", token="t"),
    )
    provider = ServerlessProvider(Gateway(items, answer), mode="sync", timing=Timing(silence=5, cold_start=5))
    return provider.run(spec, sink), sink


@pytest.fixture(autouse=True)
def _empty_mailbox(redis_server):
    Mailbox(JOB).discard()
    yield
    Mailbox(JOB).discard()


def test_each_seq_is_applied_once_and_foreign_prompts_are_ignored():
    executed = msg("executed", node="9", output=OUTPUT, comfyume_files=[FILE])
    items = [
        {"kind": "events", "seq": 1, "messages": [msg("execution_start"), msg("executing", node="9")]},
        {"kind": "events", "seq": 1, "messages": [msg("execution_start"), msg("executing", node="9")]},  # a retry
        {"kind": "events", "seq": 2, "messages": [msg("executing", "someone-else", node="3"), executed]},
        {"kind": "events", "seq": 3, "messages": [msg("execution_success"), msg("executing", node=None)]},
        {"kind": "result", "manifest": {**DONE, "gpu_seconds": 2}},
    ]  # fmt: skip
    outcome, sink = run(items, (200, DONE))
    assert outcome.status == "succeeded" and outcome.gpu_seconds == 2
    assert [m["type"] for m in sink.events] == [
        "execution_start", "executing", "executed", "execution_success", "executing",
    ]  # fmt: skip
    assert all(m["data"]["prompt_id"] == JOB for m in sink.events)
    assert sink.files == ["k/out.png"] and sink.accepted_calls == 1
    executed_seen = sink.events[2]["data"]
    assert "comfyume_files" not in executed_seen  # the hub's own business, not the UI's
    assert executed_seen["output"]["images"][0]["subfolder"] == "hub"
    assert outcome.outputs["9"]["images"][0]["subfolder"] == "hub"


def test_a_result_whose_events_were_lost_still_completes_the_ui():
    manifest = {"status": "succeeded", "outputs": {"9": OUTPUT}, "files": [FILE], "gpu_seconds": 1}
    outcome, sink = run([{"kind": "result", "manifest": manifest}], (200, manifest))
    assert outcome.status == "succeeded"
    assert [m["type"] for m in sink.events] == ["executed", "execution_success", "executing"]
    assert sink.events[-1]["data"]["node"] is None


def test_the_answer_alone_is_enough_when_every_callback_was_lost():
    manifest = {"status": "failed", "outputs": {}, "files": [], "error": {"exception_message": "boom"}}
    outcome, sink = run([], (200, manifest))
    assert outcome.status == "failed" and outcome.error["exception_message"] == "boom"
    assert [m["type"] for m in sink.events] == ["execution_error", "executing"]


def test_a_result_without_its_files_is_a_failure_naming_them():
    manifest = {"status": "succeeded", "outputs": {"9": OUTPUT}, "files": []}
    outcome, _ = run([{"kind": "result", "manifest": manifest}], (200, manifest))
    assert outcome.status == "failed" and "out.png" in outcome.error["exception_message"]


def test_a_broken_request_after_the_worker_started_is_a_lost_job():
    started = [{"kind": "events", "seq": 1, "messages": [msg("execution_start")]}]
    with pytest.raises(BackendError) as caught:
        run(started, BackendError("connection reset"))
    assert caught.value.lost


def test_a_broken_request_before_any_worker_started_is_the_backends_problem():
    with pytest.raises(BackendError) as caught:
        run([], BackendError("connection refused"))
    assert not caught.value.lost and not caught.value.permanent


def test_a_cancel_before_a_replica_took_the_job_ends_it_at_once():
    sink = Sink()
    sink.stop = "cancel"
    never = threading.Event()

    class Waiting(Gateway):
        def run_sync(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
            never.wait(10)  # a cold start that never ends within the test
            return 503, {}

    spec = RunSpec(prompt={}, backend_prompt_id=JOB, callback=WorkerCallback(url="u", token="t"))
    started = time.monotonic()
    outcome = ServerlessProvider(Waiting([], (200, {})), mode="sync").run(spec, sink)
    never.set()
    assert outcome.status == "interrupted" and outcome.stop_reason == "cancel"
    assert time.monotonic() - started < 5
    assert Mailbox(JOB).stop_requested() is None  # the mailbox is cleared when the run ends
