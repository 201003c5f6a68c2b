"""The GPU worker's callback API on the hub: authentication, stale and late calls, uploads to the local store."""

from __future__ import annotations

import hashlib
import json

import pytest

from gpu_backends.mailbox import Mailbox
from gpu_backends.models import GpuBackend
from jobs import callbacks
from jobs.models import Job
from storage.stores import default_store

pytestmark = pytest.mark.django_db


@pytest.fixture
def running(personas):
    """A job dispatched to a serverless backend, with this attempt's token."""
    backend = GpuBackend.objects.create(
        name="verda-h200", kind=GpuBackend.Kind.VERDA, url="https://containers.datacrunch.io/comfy-h200"
    )
    job = Job.objects.create(
        workshop=personas.workshop,
        seat=personas.seat_a,
        backend=backend,
        prompt={"1": {"class_type": "X", "inputs": {}}},
        status=Job.Status.DISPATCHING,
        attempts=1,
    )
    job.backend_prompt_id = str(job.prompt_id)
    job.save(update_fields=["backend_prompt_id"])
    token = callbacks.issue_token(job)
    return job, token


def url(job, tail, attempt=None):
    return f"/api/gpu/jobs/{job.prompt_id}/{attempt or job.backend_prompt_id}/{tail}"


def post(client, job, tail, body, token, attempt=None):
    return client.post(
        url(job, tail, attempt),
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}" if token else "",
    )


def test_events_need_the_attempts_token(client, running):
    job, token = running
    body = {"seq": 1, "messages": []}
    assert post(client, job, "events", body, None).status_code == 401
    assert post(client, job, "events", body, "not-the-token").status_code == 401
    answer = post(client, job, "events", body, token)
    assert answer.status_code == 200 and answer.json() == {"cancel": False}
    # The token is kept hashed, never as issued.
    job.refresh_from_db()
    assert (
        job.callback_token_hash == hashlib.sha256(token.encode()).hexdigest() and token not in job.callback_token_hash
    )


def test_events_go_to_the_attempts_mailbox_in_order(client, running):
    job, token = running
    message = {"type": "executing", "data": {"node": "1", "prompt_id": job.backend_prompt_id}}
    post(client, job, "events", {"seq": 1, "messages": [message]}, token)
    post(client, job, "events", {"seq": 1, "messages": [message]}, token)  # a retried post: passed on, deduped later
    post(client, job, "events", {"seq": 2, "messages": []}, token)
    mailbox = Mailbox(job.backend_prompt_id)
    seen = [mailbox.receive(0.1) for _ in range(3)]
    assert [item["seq"] for item in seen] == [1, 1, 2]
    assert seen[0] == {"kind": "events", "seq": 1, "messages": [message]}
    assert mailbox.receive(0.05) is None


def test_cancel_is_answered_on_the_next_callback(client, running):
    job, token = running
    Mailbox(job.backend_prompt_id).request_stop("timeout")
    assert post(client, job, "events", {"seq": 1, "messages": []}, token).json() == {"cancel": True}
    Mailbox(job.backend_prompt_id).discard()
    Job.objects.filter(pk=job.pk).update(cancel_requested_at="2026-01-01T00:00:00Z")
    assert post(client, job, "events", {"seq": 2, "messages": []}, token).json() == {"cancel": True}


def test_a_late_or_stale_call_changes_nothing(client, running):
    job, token = running
    first_attempt = job.backend_prompt_id
    job.backend_prompt_id = "the-second-attempt"  # the job was sent again: a new attempt with a new token
    job.save(update_fields=["backend_prompt_id"])
    callbacks.issue_token(job)
    stale = post(client, job, "events", {"seq": 1, "messages": []}, token, attempt=first_attempt)
    assert stale.status_code == 409 and stale.json()["cancel"] is True  # its worker is told to stop
    job.backend_prompt_id = first_attempt
    job.save(update_fields=["backend_prompt_id"])
    token = callbacks.issue_token(job)
    job.transition(Job.Status.CANCELLED, reason="test")
    late = post(client, job, "result", {"status": "succeeded", "outputs": {}, "files": []}, token)
    assert late.status_code == 409 and late.json()["cancel"] is True
    assert Mailbox(job.backend_prompt_id).receive(0.05) is None
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED


@pytest.mark.parametrize(
    "body",
    [
        {"seq": 0, "messages": []},
        {"seq": "1", "messages": []},
        {"seq": True, "messages": []},
        {"seq": 1, "messages": {"type": "x"}},
        {"seq": 1, "messages": [{"type": "x", "data": "not an object"}]},
        {"seq": 1},
        ["not", "an", "object"],
    ],
)
def test_malformed_events_are_refused_with_a_reason(client, running, body):
    job, token = running
    answer = post(client, job, "events", body, token)
    assert answer.status_code == 400 and answer.json()["error"]
    assert Mailbox(job.backend_prompt_id).receive(0.05) is None


def test_result_is_checked_then_handed_on(client, running):
    job, token = running
    assert post(client, job, "result", {"status": "done"}, token).status_code == 400
    manifest = {"status": "succeeded", "outputs": {}, "files": [], "gpu_seconds": 1.5}
    assert post(client, job, "result", manifest, token).json() == {"ok": True}
    assert Mailbox(job.backend_prompt_id).receive(0.1) == {"kind": "result", "manifest": manifest}


def _announce(client, job, token, data, filename="out.png"):
    body = {
        "node_id": "9",
        "filename": filename,
        "subfolder": "",
        "type": "output",
        "content_type": "image/png",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return post(client, job, "uploads", body, token)


def test_local_store_upload_round_trip(client, running):
    job, token = running
    data = b"\x89PNG fake image bytes" * 100
    target = _announce(client, job, token, data).json()
    assert target["method"] == "PUT" and target["key"] == f"workshops/ws1/user001/{job.prompt_id}/out.png"
    assert target["url"].endswith(f"/files/{target['key']}")
    headers = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in target["headers"].items() if k != "Content-Type"}
    put = client.put(
        "/" + target["url"].split("/", 3)[3],
        data=data,
        content_type="image/png",
        **headers,
    )
    assert put.status_code == 201, put.content
    assert put.json() == {"key": target["key"], "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert default_store().open(target["key"]).read() == data


def test_a_corrupted_upload_is_dropped(client, running):
    job, token = running
    data = b"the real bytes"
    target = _announce(client, job, token, data).json()
    path = "/" + target["url"].split("/", 3)[3]
    put = client.put(
        path,
        data=b"other bytes!!!",
        content_type="image/png",
        HTTP_AUTHORIZATION=f"Bearer {token}",
        HTTP_X_COMFYUME_SHA256=target["headers"]["X-Comfyume-Sha256"],
        HTTP_X_COMFYUME_SIZE=target["headers"]["X-Comfyume-Size"],
    )
    assert put.status_code == 400 and "checksum" in put.json()["error"]
    assert not default_store().exists(target["key"])


def test_uploads_stay_inside_the_job(client, running):
    job, token = running
    escape = client.put(
        url(job, "files/workshops/ws1/user002/secret.png"),
        data=b"x",
        content_type="image/png",
        HTTP_AUTHORIZATION=f"Bearer {token}",
        HTTP_X_COMFYUME_SHA256=hashlib.sha256(b"x").hexdigest(),
    )
    assert escape.status_code == 400
    bad_names = ["../up.png", "a/b.png", ""]
    for name in bad_names:
        answer = _announce(client, job, token, b"x", filename=name)
        assert answer.status_code == 400, name
    bad_hash = post(client, job, "uploads", {"filename": "a.png", "size": 1, "sha256": "XYZ"}, token)
    assert bad_hash.status_code == 400 and "sha256" in bad_hash.json()["error"]


def test_inputs_are_served_to_the_workers_token_only(client, running):
    job, token = running
    stored = default_store().put("inputs/ws1/user001/abc/photo.png", [b"photo bytes"])
    job.inputs = [{"name": "photo.png", "key": stored.key, "sha256": stored.sha256, "size": stored.size}]
    job.save(update_fields=["inputs"])
    [item] = callbacks.input_urls(job, token)
    assert item["name"] == "photo.png" and item["sha256"] == stored.sha256
    path = "/" + item["url"].split("/", 3)[3]
    answer = client.get(path)
    assert answer.status_code == 200 and answer.getvalue() == b"photo bytes"
    assert client.get(path.replace(token, "wrong")).status_code == 401
    assert client.get(url(job, f"inputs/5?token={token}")).status_code == 404


def test_nothing_about_a_job_is_said_without_its_token(client, running):
    """A caller without a valid token learns nothing, not even whether the job or the attempt exists."""
    job, token = running
    body = {"seq": 1, "messages": []}
    unknown_job = f"/api/gpu/jobs/00000000-0000-4000-8000-000000000000/{job.backend_prompt_id}/events"
    answers = [
        client.post(unknown_job, data=json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION="Bearer x"),
        post(client, job, "events", body, "x", attempt="a-guessed-attempt"),
        post(client, job, "events", body, token, attempt="a-guessed-attempt"),  # this attempt's token, not that one's
        post(client, job, "events", body, "x"),
        post(client, job, "events", body, None, attempt="a-guessed-attempt"),
    ]
    assert [a.status_code for a in answers] == [401] * 5
    assert len({a.content for a in answers}) == 1


@pytest.mark.parametrize("subfolder", ["../../other-seat", "a/../../..", "/etc", "x/\x00/y"])
def test_an_upload_outside_the_jobs_folder_is_refused_as_bad_input(client, running, subfolder):
    job, token = running
    body = {"filename": "out.png", "subfolder": subfolder, "size": 3, "sha256": "0" * 64, "node_id": "9"}
    answer = post(client, job, "uploads", body, token)
    assert answer.status_code == 400 and "subfolder" in answer.json()["error"]


@pytest.mark.parametrize("filename", ["..", ".", "a\x00.png", "../x.png", "a\\b.png", ""])
def test_an_upload_with_a_bad_file_name_is_refused_as_bad_input(client, running, filename):
    job, token = running
    body = {"filename": filename, "subfolder": "", "size": 3, "sha256": "0" * 64, "node_id": "9"}
    answer = post(client, job, "uploads", body, token)
    assert answer.status_code == 400 and "filename" in answer.json()["error"]


def test_a_lone_surrogate_in_a_callback_is_refused_as_bad_input(client, running):
    job, token = running
    raw = b'{"seq": 1, "messages": [{"type": "progress", "data": {"x": "\\ud800"}}]}'
    answer = client.post(
        url(job, "events"), data=raw, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    assert answer.status_code == 400 and "surrogate" in answer.json()["error"]
    assert Mailbox(job.backend_prompt_id).receive(0.05) is None


@pytest.mark.parametrize(
    ("tail", "body", "words"),
    [
        ("events", {"seq": "1", "messages": []}, "seq must be a whole number from 1."),
        ("events", {"seq": 1, "messages": [{"type": 3, "data": {}}]}, "messages must be a list of {type, data}"),
        ("result", {"status": "done"}, "status must be succeeded, failed, interrupted or rejected."),
        ("result", {"status": "failed", "files": {}}, "files must be a list."),
        ("uploads", {"filename": "a.png", "size": -1, "sha256": "0" * 64}, "size must be a whole number of bytes."),
        ("uploads", {"filename": "a.png", "size": 1, "sha256": "A" * 64}, "sha256 must be 64 lowercase hex digits."),
        ("uploads", {"filename": "../a.png", "size": 1, "sha256": "0" * 64}, "filename must be a plain file name."),
        ("uploads/complete", {"key": "k", "upload_id": "u", "parts": []}, "parts must be a non-empty list"),
    ],
)
def test_a_workers_call_of_the_wrong_shape_gets_the_fields_words_and_changes_nothing(
    client, running, tail, body, words
):
    job, token = running
    answer = post(client, job, tail, body, token)
    assert answer.status_code == 400 and answer.json()["error"].startswith(words)
    assert Mailbox(job.backend_prompt_id).receive(0.05) is None


def test_a_workers_events_are_passed_on_as_posted(client, running):
    job, token = running
    message = {"type": "progress", "data": {"value": 1, "max": 2}, "sid": "kept"}
    assert post(client, job, "events", {"seq": 1, "messages": [message]}, token).status_code == 200
    assert Mailbox(job.backend_prompt_id).receive(0.5) == {"kind": "events", "seq": 1, "messages": [message]}


JPEG_FRAME = (1).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\xff\xd8\xff\xe0 a small jpeg"


def post_preview(client, job, body: bytes, token):
    return client.post(
        url(job, "preview"), data=body, content_type="application/octet-stream", HTTP_AUTHORIZATION=f"Bearer {token}"
    )


def test_a_workers_preview_goes_to_the_jobs_seat_only_while_it_runs(client, running, monkeypatch):
    job, token = running
    published: list[tuple] = []
    monkeypatch.setattr(callbacks, "publish_preview", lambda *args: published.append(args))
    assert post_preview(client, job, JPEG_FRAME, "not-the-token").status_code == 401
    # Dispatching, not running yet: accepted, and nothing shown.
    assert post_preview(client, job, JPEG_FRAME, token).json() == {"cancel": False}
    assert published == []
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
    # A plain frame names no node: there is nowhere to draw it, so nothing is shown.
    assert post_preview(client, job, JPEG_FRAME, token).status_code == 200 and published == []
    # With metadata (what the worker posts): passed on under the job's own prompt id, the node kept.
    metadata = json.dumps({"prompt_id": job.backend_prompt_id, "node_id": "3", "image_type": "image/png"}).encode()
    with_metadata = (4).to_bytes(4, "big") + len(metadata).to_bytes(4, "big") + metadata + b"\x89PNG..."
    assert post_preview(client, job, with_metadata, token).status_code == 200
    [(seat_id, prompt_id, frame)] = published
    assert (seat_id, prompt_id) == (job.seat_id, str(job.prompt_id))
    length = int.from_bytes(frame[4:8], "big")
    assert json.loads(frame[8 : 8 + length]) == {
        "node_id": "3",
        "display_node_id": "3",
        "parent_node_id": None,
        "real_node_id": None,
        "prompt_id": str(job.prompt_id),
        "image_type": "image/png",
    }
    assert frame[8 + length :] == b"\x89PNG..."
    # The workshop's preview method "none": nothing shown, whatever a worker posts.
    job.workshop.preview_method = "none"
    job.workshop.save(update_fields=["preview_method"])
    assert post_preview(client, job, with_metadata, token).status_code == 200 and len(published) == 1


@pytest.mark.parametrize(
    "body, status, says",
    [
        (b"", 400, "not a ComfyUI preview frame"),
        (b"\x00\x00\x00\x03text frame", 400, "not a ComfyUI preview frame"),
        ((1).to_bytes(4, "big") + (9).to_bytes(4, "big") + b"?", 400, "not a ComfyUI preview frame"),
        (
            (4).to_bytes(4, "big")
            + (40).to_bytes(4, "big")
            + b'{"prompt_id": "someone-else", "image_type": "image/png"}',
            400,
            "not a ComfyUI preview frame",
        ),
        (JPEG_FRAME + b"x" * (2 * 1024 * 1024 + 65 * 1024), 413, "A preview is at most"),
    ],
)
def test_a_bad_preview_is_refused_with_a_reason_and_shows_nothing(client, running, monkeypatch, body, status, says):
    job, token = running
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
    published: list[tuple] = []
    monkeypatch.setattr(callbacks, "publish_preview", lambda *args: published.append(args))
    answer = post_preview(client, job, body, token)
    assert answer.status_code == status and says in answer.json()["error"]
    assert published == []


def test_a_preview_naming_another_prompt_is_refused(client, running, monkeypatch):
    job, token = running
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
    monkeypatch.setattr(callbacks, "publish_preview", lambda *args: pytest.fail("published"))
    metadata = json.dumps({"prompt_id": "someone-else", "node_id": "3", "image_type": "image/jpeg"}).encode()
    frame = (4).to_bytes(4, "big") + len(metadata).to_bytes(4, "big") + metadata + b"\xff\xd8"
    answer = post_preview(client, job, frame, token)
    assert answer.status_code == 400 and "another prompt" in answer.json()["error"]
