"""The hub API's ComfyUI-shaped endpoints, /health and /metrics."""

from __future__ import annotations

import json

import pytest

from jobs.models import Job
from tests.fixtures import run_worker
from tests.recorded import TINY_PATH, load

TINY = load(TINY_PATH)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def api(client, personas):
    token = personas.seat_a.issue_token()

    def call(method: str, path: str, body=None, token: str = token):
        kwargs = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
        if body is not None:
            kwargs.update(data=json.dumps(body), content_type="application/json")
        return getattr(client, method)(f"/api/hub/{path}", **kwargs)

    return call


def test_queue_lists_only_this_seats_jobs_in_comfyui_shape(api, personas):
    personas.backend.enabled = False  # keep everything waiting
    personas.backend.save()
    mine = api("post", "prompt", {"prompt": TINY, "client_id": "tab-1"}).json()["prompt_id"]
    other_token = personas.seat_b.issue_token()
    api("post", "prompt", {"prompt": TINY}, token=other_token)
    queue = api("get", "queue").json()
    assert queue["queue_running"] == []
    assert [item[1] for item in queue["queue_pending"]] == [mine]
    number, prompt_id, prompt, extra, outputs = queue["queue_pending"][0]
    assert prompt_id == mine and number == Job.objects.get(prompt_id=mine).pk
    assert prompt == TINY and extra == {"client_id": "tab-1"} and outputs == ["3"]
    detail = api("get", f"jobs/{mine}").json()
    assert detail["status"] == "queued" and detail["queued_ahead"] == 0


def test_queue_delete_cancels_own_waiting_jobs_only(api, personas):
    personas.backend.enabled = False
    personas.backend.save()
    mine = api("post", "prompt", {"prompt": TINY}).json()["prompt_id"]
    theirs = api("post", "prompt", {"prompt": TINY}, token=personas.seat_b.issue_token()).json()["prompt_id"]
    assert api("post", "queue", {"delete": [mine, theirs, "not-a-uuid"]}).status_code == 200
    assert Job.objects.get(prompt_id=mine).status == Job.Status.CANCELLED
    assert Job.objects.get(prompt_id=theirs).status == Job.Status.QUEUED
    assert api("post", "queue", "not json").status_code == 400  # a JSON string, not an object


def test_queue_post_with_malformed_json_is_a_clear_400(client, api, personas):
    token = personas.seat_a.issue_token()
    response = client.post(
        "/api/hub/queue", data="{oops", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_json"


def test_history_and_job_list_after_a_run(api, personas, sim):
    prompt_id = api("post", "prompt", {"prompt": TINY}).json()["prompt_id"]
    run_worker()
    history = api("get", "history").json()
    entry = history[prompt_id]
    assert entry["status"] == {"status_str": "success", "completed": True, "messages": []}
    assert entry["outputs"]["3"]["images"][0]["subfolder"].startswith(prompt_id)
    assert list(api("get", f"history/{prompt_id}").json()) == [prompt_id]
    assert api("get", "history/not-a-uuid").json() == {}
    jobs = api("get", "jobs?limit=5").json()["jobs"]
    assert [j["prompt_id"] for j in jobs] == [prompt_id] and jobs[0]["status"] == "succeeded"
    assert api("get", "jobs?limit=many").status_code == 400
    detail = api("get", f"jobs/{prompt_id}").json()
    assert detail["artifacts"][0]["kind"] == "image" and len(detail["artifacts"][0]["sha256"]) == 64
    assert api("post", f"jobs/{prompt_id}/cancel").status_code == 409


def test_object_info_is_the_backends_catalogue(api, personas, sim):
    info = api("get", "object_info").json()
    assert "KSampler" in info and info["SaveImage"]["output_node"] is True


def test_interrupt_stops_only_this_seats_running_job(api, personas, sim):
    import threading
    import time

    sim.config.hang_on_class = {"ImageInvert"}
    prompt_id = api("post", "prompt", {"prompt": TINY}).json()["prompt_id"]
    worker = threading.Thread(target=run_worker)
    worker.start()
    deadline = time.monotonic() + 10
    while Job.objects.get(prompt_id=prompt_id).status != Job.Status.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    other = api("post", "interrupt", {}, token=personas.seat_b.issue_token())
    assert other.status_code == 200
    time.sleep(0.3)
    assert Job.objects.get(prompt_id=prompt_id).status == Job.Status.RUNNING  # another seat cannot stop it
    assert api("post", "interrupt", {"prompt_id": prompt_id}).status_code == 200
    worker.join(timeout=30)
    assert Job.objects.get(prompt_id=prompt_id).status == Job.Status.INTERRUPTED


def test_health_reports_database_redis_and_backends(admin_client, personas):
    data = admin_client.get("/health").json()
    assert data["database"] == "ok" and data["redis"] == "ok"
    assert data["backends"]["sim"]["kind"] == "simulator"
    personas.backend.state = "failing"
    personas.backend.last_error = "connection refused"
    personas.backend.save()
    data = admin_client.get("/health").json()
    assert data["status"] == "degraded" and data["backends"]["sim"]["last_error"] == "connection refused"


def test_health_tells_anyone_what_works_but_only_staff_and_monitoring_why_not(client, personas, settings):
    """Error texts name internal addresses (a backend's URL, the database's host, a bucket): not for anyone."""
    personas.backend.state = "failing"
    personas.backend.last_error = f"Connection refused: {personas.backend.url}/system_stats"
    personas.backend.save()
    answer = client.get("/health")
    data = answer.json()
    assert answer.status_code == 200 and data["status"] == "degraded"
    assert data["backends"] == {"sim": {"kind": "simulator", "state": "failing"}}
    assert data["database"] == "ok" and set(data["backup"]) == {"status"}
    assert personas.backend.url not in answer.content.decode()
    settings.METRICS_TOKEN = "s3cret"
    assert "last_error" not in client.get("/health", HTTP_AUTHORIZATION="Bearer wrong").json()["backends"]["sim"]
    monitored = client.get("/health", HTTP_AUTHORIZATION="Bearer s3cret").json()
    assert personas.backend.url in monitored["backends"]["sim"]["last_error"]


def test_metrics_expose_queue_jobs_and_latency(client, api, personas, sim, settings):
    api("post", "prompt", {"prompt": TINY})
    run_worker()
    text = client.get("/metrics").content.decode()
    assert 'comfyume_jobs{status="succeeded",workshop="ws1"} 1.0' in text
    assert "comfyume_dispatch_latency_seconds_count 1.0" in text
    assert (
        'comfyume_backend_up{backend="sim",state="ready"}' in text
        or 'comfyume_backend_up{backend="sim",state="unknown"}' in text
    )
    settings.METRICS_TOKEN = "s3cret"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200


def test_health_shows_a_broken_object_store_by_the_setting_to_fix(
    admin_client, personas, r2_store, settings, monkeypatch
):
    from comfyume import health

    client = admin_client
    monkeypatch.setattr(health, "_storage_checked", (0.0, ""))
    data = client.get("/health").json()
    assert data["storage"] == "ok" and data["status"] == "ok"
    settings.OBJECT_STORE = {**settings.OBJECT_STORE, "BUCKET": "no-such-bucket"}
    monkeypatch.setattr(health, "_storage_checked", (0.0, ""))
    answer = client.get("/health")
    data = answer.json()
    assert answer.status_code == 200  # the hub still answers; outputs cannot be kept: degraded, and why
    assert data["status"] == "degraded" and "COMFYUME_R2_BUCKET" in data["storage"]


def test_health_shows_a_failed_backup(admin_client, personas):
    from django.utils import timezone

    client = admin_client
    from storage.models import BackupRun

    assert client.get("/health").json()["backup"]["status"] == "off"  # no destination, never run: a choice
    now = timezone.now()
    BackupRun.objects.create(
        status=BackupRun.Status.FAILED, destination="s3://backups/ws", started_at=now, heartbeat_at=now,
        finished_at=now, error="s3://backups/ws: the bucket does not exist (COMFYUME_BACKUP_URL)",
    )  # fmt: skip
    data = client.get("/health").json()
    assert data["status"] == "degraded" and data["backup"]["status"] == "failing"
    assert "COMFYUME_BACKUP_URL" in str(data["backup"]["last_failure"])


def test_health_shows_an_empty_backup(client, personas):
    from django.utils import timezone

    from storage.backup import EMPTY_WARNING
    from storage.models import BackupRun

    now = timezone.now()
    BackupRun.objects.create(
        status=BackupRun.Status.SUCCEEDED, destination="file:///backups", started_at=now, heartbeat_at=now,
        finished_at=now, backup_id="20261129T000000Z", warnings=EMPTY_WARNING,
    )  # fmt: skip
    data = client.get("/health").json()
    assert data["status"] == "degraded" and data["backup"]["status"] == "empty"
