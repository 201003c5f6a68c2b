"""ComfyUI's Jobs API on the hub (jobs/comfy_jobs.py), checked against upstream's contract and the 0.12.1 recording."""

from __future__ import annotations

import pytest

from jobs.comfy_jobs import counts_and_preview
from jobs.models import Job
from jobs.tests.test_hub_api import api  # noqa: F401 (the fixture)
from tests.fixtures import run_worker
from tests.recorded import NEWER, TINY_PATH, load

TINY = load(TINY_PATH)
WORKFLOW_ID = "0c7e5b7a-5f3e-4e0c-9a51-3f1d2a6b9e11"

pytestmark = pytest.mark.django_db(transaction=True)


def _submit(api, **extra) -> str:  # noqa: F811
    return api("post", "prompt", {"prompt": TINY, "client_id": "tab-1", **extra}).json()["prompt_id"]


def test_a_finished_job_is_listed_as_comfyui_lists_it(api, personas, sim):  # noqa: F811
    prompt_id = _submit(api, extra_data={"extra_pnginfo": {"workflow": {"id": WORKFLOW_ID}}})
    run_worker()
    answer = api("get", "comfy/jobs?status=completed,failed,cancelled&limit=64&offset=0")
    assert answer.status_code == 200
    body = answer.json()
    assert body["pagination"] == {"offset": 0, "limit": 64, "total": 1, "has_more": False}
    [job] = body["jobs"]
    assert job["id"] == prompt_id and job["status"] == "completed" and job["workflow_id"] == WORKFLOW_ID
    assert job["priority"] == Job.objects.get(prompt_id=prompt_id).number
    assert [j["id"] for j in api("get", f"comfy/jobs?workflow_id={WORKFLOW_ID}").json()["jobs"]] == [prompt_id]
    assert api("get", f"comfy/jobs?workflow_id={WORKFLOW_ID[:-1]}").json()["jobs"] == []
    assert job["execution_start_time"] <= job["execution_end_time"] and job["create_time"] <= job["execution_end_time"]
    assert (job["outputs_count"], job["previewable_outputs_count"]) == (1, 1)
    preview = job["preview_output"]
    assert (preview["type"], preview["nodeId"], preview["mediaType"]) == ("output", "3", "images")
    assert preview["filename"].endswith(".png") and preview["subfolder"].startswith(prompt_id)
    # Every field the recorded ComfyUI gives a finished job, and its preview's, but its host path.
    recorded = load(NEWER / "jobs_sample.json")["jobs"]
    theirs = next(j for j in recorded if j["status"] == "completed")
    assert set(theirs) <= set(job) and set(theirs["preview_output"]) - {"abs_path"} <= set(preview)
    assert "abs_path" not in preview
    # The detail adds the outputs, the execution status and the workflow; nothing is null.
    detail = api("get", f"comfy/jobs/{prompt_id}").json()
    assert detail["outputs"] == Job.objects.get(prompt_id=prompt_id).outputs
    assert detail["execution_status"] == {"status_str": "success", "completed": True, "messages": []}
    assert detail["workflow"]["prompt"] == TINY
    assert None not in detail.values()
    assert set(load(NEWER / "jobs_detail_sample.json")) <= set(detail)


def test_waiting_jobs_filter_page_and_sort(api, personas):  # noqa: F811
    personas.backend.enabled = False  # everything stays waiting
    personas.backend.save()
    ids = [_submit(api) for _ in range(3)]
    _submit_other = api("post", "prompt", {"prompt": TINY}, token=personas.seat_b.issue_token())
    assert _submit_other.status_code == 200
    page = api("get", "comfy/jobs?status=in_progress,pending&limit=2&offset=0").json()
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:2]  # newest first, this seat's only
    assert page["pagination"] == {"offset": 0, "limit": 2, "total": 3, "has_more": True}
    assert {j["status"] for j in page["jobs"]} == {"pending"}
    assert "preview_output" not in page["jobs"][0] and "execution_start_time" not in page["jobs"][0]
    rest = api("get", "comfy/jobs?status=pending&limit=2&offset=2").json()
    assert [j["id"] for j in rest["jobs"]] == [ids[0]] and rest["pagination"]["has_more"] is False
    oldest_first = api("get", "comfy/jobs?sort_order=asc").json()
    assert [j["id"] for j in oldest_first["jobs"]] == ids and oldest_first["pagination"]["limit"] is None
    by_duration = api("get", "comfy/jobs?sort_by=execution_duration&offset=-4").json()
    assert len(by_duration["jobs"]) == 3 and by_duration["pagination"]["offset"] == 0
    assert api("get", "comfy/jobs?status=completed").json()["jobs"] == []
    far = api("get", "comfy/jobs?offset=99999999999999999999&limit=99999999999999999999").json()
    assert far["jobs"] == [] and far["pagination"]["total"] == 3 and far["pagination"]["has_more"] is False


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            "status=done",
            "Invalid status value(s): done. Valid values: pending, in_progress, completed, failed, cancelled",
        ),
        ("sort_by=name", "sort_by must be 'created_at' or 'execution_duration'"),
        ("sort_order=up", "sort_order must be 'asc' or 'desc'"),
        ("limit=many", "limit must be an integer"),
        ("limit=0", "limit must be a positive integer"),
        ("offset=x", "offset must be an integer"),
    ],
)
def test_bad_queries_get_comfyuis_answers(api, personas, query, message):  # noqa: F811
    answer = api("get", f"comfy/jobs?{query}")
    assert (answer.status_code, answer.json()) == (400, {"error": message})


def test_cancel_a_waiting_job_and_the_list_says_cancelled(api, personas):  # noqa: F811
    personas.backend.enabled = False
    personas.backend.save()
    mine, second = _submit(api), _submit(api)
    theirs = api("post", "prompt", {"prompt": TINY}, token=personas.seat_b.issue_token()).json()["prompt_id"]
    assert api("post", f"comfy/jobs/{mine}/cancel").json() == {"cancelled": True}
    assert api("post", f"comfy/jobs/{mine}/cancel").json() == {"cancelled": False}  # already ended
    assert api("post", f"comfy/jobs/{theirs}/cancel").json() == {"cancelled": False}  # another seat's
    assert api("post", "comfy/jobs/not-a-uuid/cancel").json() == {"cancelled": False}
    assert Job.objects.get(prompt_id=theirs).status == Job.Status.QUEUED
    listed = api("get", "comfy/jobs?status=cancelled").json()["jobs"]
    assert [j["id"] for j in listed] == [mine]
    # Several at once; an id that is not a canonical UUID refuses the whole request.
    refused = api("post", "comfy/jobs/cancel", {"job_ids": [second, "nope", 7]})
    assert (refused.status_code, refused.json()) == (
        400,
        {"error": "job_ids contains invalid id(s)", "invalid_ids": ["nope", "7"]},
    )
    assert Job.objects.get(prompt_id=second).status == Job.Status.QUEUED
    assert api("post", "comfy/jobs/cancel", {"job_ids": [second, theirs]}).json() == {"cancelled": True}
    assert Job.objects.get(prompt_id=second).status == Job.Status.CANCELLED
    assert api("post", "comfy/jobs/cancel", {"job_ids": []}).json() == {"cancelled": False}
    assert api("post", "comfy/jobs/cancel", {"ids": []}).json() == {"error": "job_ids must be a list"}
    assert api("post", "comfy/jobs/cancel", "[1").json() == {"error": "job_ids must be a list"}  # a JSON string


def test_unknown_other_seats_and_removed_jobs_are_not_found(api, personas, sim, client):  # noqa: F811
    mine = _submit(api)
    theirs = api("post", "prompt", {"prompt": TINY}, token=personas.seat_b.issue_token()).json()["prompt_id"]
    run_worker()
    for job_id in (theirs, "6f1c1a3e-0000-4000-8000-000000000000", "not-a-uuid", "cancel"):
        answer = api("get", f"comfy/jobs/{job_id}")
        assert (answer.status_code, answer.json()) == (404, {"error": "Job not found"}), job_id
    assert api("post", "history", {"delete": [mine]}).status_code == 200  # removed from the history list
    assert api("get", f"comfy/jobs/{mine}").status_code == 404
    assert api("get", "comfy/jobs").json()["pagination"]["total"] == 0
    token = personas.seat_a.issue_token()
    malformed = client.post(
        "/api/hub/comfy/jobs/cancel",
        data="{oops",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert (malformed.status_code, malformed.json()) == (400, {"error": "Request body must be valid JSON"})


def test_the_preview_is_chosen_as_comfyui_chooses_it():
    outputs = {
        "9": {"text": ["a caption " * 200]},
        "7": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}], "animated": [True]},
        "8": {"video": [{"filename": "v.mp4", "subfolder": "", "type": "output", "format": "video/h264-mp4"}]},
        "6": {"latents": [{"filename": "l.latent", "subfolder": "", "type": "output"}]},
    }
    total, previewable, preview = counts_and_preview(outputs)
    assert (total, previewable) == (3, 2)  # the raw caption is not counted; the latent is counted, not shown
    assert preview == {**outputs["8"]["video"][0], "nodeId": "8", "mediaType": "video"}
    assert counts_and_preview({"7": outputs["7"]})[2]["type"] == "temp"  # no saved output: the preview image
    text = counts_and_preview({"9": outputs["9"]})[2]
    assert text["mediaType"] == "text" and len(text["content"]) == 1024 and text["truncated"] is True
    assert counts_and_preview({})[2] is None


def test_only_a_nodes_error_is_an_execution_error(api, personas):  # noqa: F811
    """Newer frontends check ``execution_error`` against ComfyUI's message (node_id, node_type, exception_message,
    exception_type, traceback): the platform's own failures carry none, so one cannot empty their job history."""
    personas.backend.enabled = False
    personas.backend.save()
    node_failed, platform_failed = _submit(api), _submit(api)
    message = {
        "prompt_id": node_failed, "node_id": "2", "node_type": "ImageInvert", "executed": ["1"],
        "exception_message": "boom", "exception_type": "RuntimeError", "traceback": ["line 1"],
    }  # fmt: skip
    Job.objects.filter(prompt_id=node_failed).update(status=Job.Status.FAILED, error=message)
    envelope = {"type": "gpu_lost", "message": "The GPU stopped answering twice.", "details": "", "extra_info": {}}
    Job.objects.filter(prompt_id=platform_failed).update(status=Job.Status.TIMED_OUT, error=envelope)
    listed = {j["id"]: j for j in api("get", "comfy/jobs?status=failed").json()["jobs"]}
    assert listed[node_failed]["execution_error"] == message
    assert listed[platform_failed]["status"] == "failed" and "execution_error" not in listed[platform_failed]
