"""A ``/history`` entry as each ComfyUI keeps it: 0.3 keeps ``[type, data]`` pairs, 0.12 only the types' names.

A job whose event socket dropped is finished from its history entry (gpu_backends.providers for the ``comfyui``
kind, the GPU worker for Verda). With 0.12's names-only messages that crashed the dispatch ("too many values to
unpack"), and a failure without its data would have been taken for a success.
"""

from __future__ import annotations

from typing import Any

import pytest

from gpu_backends.providers import ComfyUIProvider, _RunState
from gpu_backends.worker.prompts import history_failure, history_messages


def entry(status_str: str, messages: list[Any] | None) -> dict[str, Any]:
    return {
        "outputs": {},
        "status": {"status_str": status_str, "completed": status_str == "success", "messages": messages},
    }


OLD_ERROR = {"prompt_id": "p", "node_id": "3", "exception_message": "CUDA out of memory", "exception_type": "OOM"}


@pytest.mark.parametrize(
    ("given", "failure"),
    [
        (entry("success", [["execution_start", {"timestamp": 1}], ["execution_success", {"timestamp": 9}]]), None),
        (entry("success", ["execution_start", "execution_cached", "execution_success"]), None),
        (entry("error", [["execution_start", {"timestamp": 1}], ["execution_error", OLD_ERROR]]), "CUDA out of memory"),
        (entry("error", ["execution_start", "execution_error"]), "its ComfyUI kept no detail"),
        (entry("error", ["execution_start"]), "its ComfyUI kept no detail"),
        (entry("error", ["execution_start", "execution_interrupted"]), "interrupted"),
        (entry("success", None), None),
        (entry("success", [42, ["x"], ["a", "b", "c"]]), None),
    ],
)
def test_a_history_entry_says_how_its_prompt_ended_whatever_its_shape(given, failure):
    found = history_failure(given, "p")
    if failure is None:
        assert found is None
    elif failure == "interrupted":
        assert found is not None and found[0] == "execution_interrupted" and found[1]["prompt_id"] == "p"
    else:
        assert found is not None and found[0] == "execution_error" and failure in found[1]["exception_message"]


def test_messages_are_read_in_both_shapes_and_junk_is_skipped():
    assert history_messages(entry("success", [["execution_start", {"timestamp": 5}], "execution_success", 7])) == [
        ("execution_start", {"timestamp": 5}),
        ("execution_success", {}),
    ]


class Sink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def event(self, message: dict[str, Any]) -> None:
        self.events.append(message)


@pytest.mark.parametrize(
    ("messages", "status_str", "outcome"),
    [
        (["execution_start", "execution_cached", "execution_success"], "success", "succeeded"),
        (["execution_start", "execution_error"], "error", "failed"),
        (["execution_start", "execution_interrupted"], "error", "interrupted"),
    ],
)
def test_the_comfyui_kind_finishes_a_job_from_a_names_only_history(messages, status_str, outcome):
    provider = ComfyUIProvider("http://127.0.0.1:9")
    sink, state = Sink(), _RunState(prompt_id="p")
    state.started = 0.0

    result = provider._finish_from_history(entry(status_str, messages), sink, state)  # type: ignore[arg-type]

    assert result.status == outcome
    assert sink.events[-1] == {"type": "executing", "data": {"node": None, "prompt_id": "p"}}
    if outcome == "failed":
        assert "kept no detail" in result.error["exception_message"]
