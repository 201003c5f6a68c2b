"""Request bodies of known shape are read by one mechanism (comfyume.jsonbody: Body, parse): strict, with one
kind of error whose words name the field, answered by each endpoint in its own format; nothing changes on a
refused body."""

from __future__ import annotations

import json
from typing import Annotated

import pytest
from pydantic import AfterValidator, Field

from comfyume import jsonbody
from jobs.models import Job
from tests.recorded import TINY_PATH, load

TINY = load(TINY_PATH)


def _even(value: int) -> int:
    if value % 2:
        raise ValueError("count must be even.")
    return value


class Sample(jsonbody.Body):
    count: Annotated[int, AfterValidator(_even)] = Field(ge=0, description="an even whole number")
    names: list[str] = Field(default_factory=list)


@pytest.mark.parametrize(
    ("raw", "message", "field"),
    [
        (b'{"count": "2"}', "count must be an even whole number.", "count"),
        (b'{"count": true}', "count must be an even whole number.", "count"),
        (b'{"count": 2.0}', "count must be an even whole number.", "count"),
        (b'{"count": -2}', "count must be an even whole number.", "count"),
        (b"{}", "count must be an even whole number.", "count"),
        (b'{"count": 3}', "count must be even.", "count"),  # a validator speaks for itself
        (b'{"count": 2, "names": ["a", 1]}', "names.1: Input should be a valid string.", "names"),
        (b"[1]", "The request body must be a JSON object.", None),
        (
            b'{"count": "\\ud800"}',
            "The request body holds a string with a lone UTF-16 surrogate (such as \\ud800).",
            None,
        ),
    ],
)
def test_a_body_of_the_wrong_shape_is_refused_in_words_that_name_the_field(raw, message, field):
    with pytest.raises(jsonbody.InvalidJSON) as refused:
        jsonbody.parse(raw, Sample)
    assert str(refused.value) == message
    assert getattr(refused.value, "field", None) == field


def test_a_body_of_the_right_shape_is_read_and_keys_it_does_not_name_are_ignored():
    body = jsonbody.parse(b'{"count": 4, "names": ["x"], "newer_client": {"sends": "more"}}', Sample)
    assert (body.count, body.names) == (4, ["x"])
    assert jsonbody.parse(b"", Sample, empty={"count": 0}).count == 0


@pytest.fixture
def seat_post(client, personas):
    token = personas.seat_a.issue_token()

    def call(path: str, body) -> object:
        return client.post(
            f"/api/hub/{path}",
            data=json.dumps(body),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {token}",
        )

    return call


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("queue", {"delete": "abc"}, "delete must be a list of prompt ids."),
        ("queue", {"delete": [1, 2]}, "delete must be a list of prompt ids."),
        ("queue", {"clear": "yes"}, "clear must be true or false."),
        ("history", {"delete": {"id": 1}}, "delete must be a list of prompt ids."),
        ("interrupt", {"prompt_id": 7}, "prompt_id must be a prompt id."),
    ],
)
def test_a_participants_queue_call_of_the_wrong_shape_is_a_clear_400_and_cancels_nothing(
    seat_post, personas, path, body, words
):
    personas.backend.enabled = False  # keep the job waiting
    personas.backend.save()
    queued = seat_post("prompt", {"prompt": TINY})
    assert queued.status_code == 200
    answer = seat_post(path, body)
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_json" and answer.json()["error"]["message"] == words
    assert Job.objects.get(prompt_id=queued.json()["prompt_id"]).status == Job.Status.QUEUED
    assert seat_post("queue", {"clear": True}).status_code == 200
    assert Job.objects.get(prompt_id=queued.json()["prompt_id"]).status == Job.Status.CANCELLED
