"""The whole job pipeline against the simulator on a real port: submit → claim → RQ dispatch → outputs."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from datetime import timedelta

import pytest
import requests
from django.utils import timezone
from PIL import Image

from gpu_backends.models import GpuBackend
from gpu_backends.services import store_object_info
from jobs import reconciler
from jobs.models import Job
from jobs.services import cancel_job
from storage.models import Artifact
from storage.stores import default_store
from tests.fixtures import run_worker
from tests.recorded import TINY_PATH, load

TINY = load(TINY_PATH)

pytestmark = pytest.mark.django_db(transaction=True)


def submit(client, seat, prompt=None, **extra):
    token = seat.issue_token() if not getattr(seat, "_raw_token", None) else seat._raw_token
    seat._raw_token = token
    body = {"prompt": prompt or TINY, "client_id": "browser-1", **extra}
    return client.post(
        "/api/hub/prompt", data=json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )


def sim_history(sim) -> dict:
    return requests.get(f"{sim.url}/history", timeout=5).json()


def test_job_runs_end_to_end_and_its_png_is_stored(client, personas, sim):
    response = submit(client, personas.seat_a)
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"prompt_id", "number", "node_errors"} and body["node_errors"] == {}
    job = Job.objects.get(prompt_id=body["prompt_id"])
    assert job.status == Job.Status.DISPATCHING  # claimed on commit, before any worker ran
    run_worker()
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.status_reason
    assert job.started_at and job.finished_at and job.gpu_seconds > 0
    artifact = Artifact.objects.get(job=job)
    assert artifact.key == f"workshops/ws1/user001/{job.prompt_id}/harness/{artifact.filename}"
    data = default_store().open(artifact.key).read()
    assert hashlib.sha256(data).hexdigest() == artifact.sha256 and len(data) == artifact.size
    assert Image.open(io.BytesIO(data)).format == "PNG"
    assert artifact.kind == Artifact.Kind.IMAGE
    # The participant's UI sees the output under its job, not the backend's shared folder.
    assert job.outputs["3"]["images"] == [
        {"filename": artifact.filename, "subfolder": f"{job.prompt_id}/harness", "type": "output"}
    ]
    assert [e.to_status for e in job.events.all()] == ["dispatching", "running", "succeeded"]
    # The backend ran it exactly once, under the job's own prompt id.
    assert str(job.prompt_id) in sim_history(sim)


def test_view_serves_own_output_and_hides_it_from_another_seat(client, personas, sim):
    prompt_id = submit(client, personas.seat_a).json()["prompt_id"]
    run_worker()
    artifact = Artifact.objects.get(job__prompt_id=prompt_id)
    params = {"filename": artifact.filename, "subfolder": artifact.subfolder, "type": "output"}
    own = client.get("/api/hub/view", params, HTTP_AUTHORIZATION=f"Bearer {personas.seat_a._raw_token}")
    assert own.status_code == 200 and own.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    other_token = personas.seat_b.issue_token()
    other = client.get("/api/hub/view", params, HTTP_AUTHORIZATION=f"Bearer {other_token}")
    assert other.status_code == 404
    assert client.get(f"/api/hub/jobs/{prompt_id}", HTTP_AUTHORIZATION=f"Bearer {other_token}").status_code == 404


def test_round_robin_dispatches_a_newcomer_before_another_seats_backlog(client, personas, sim):
    personas.workshop.max_queued_per_seat = 20
    personas.workshop.save()
    a_jobs = [submit(client, personas.seat_a).json()["prompt_id"] for _ in range(10)]
    b_job = submit(client, personas.seat_b).json()["prompt_id"]
    assert Job.objects.get(prompt_id=a_jobs[0]).status == Job.Status.DISPATCHING  # A's first took the one slot
    run_worker(max_jobs=1)
    # A's first finished; the freed slot went to B, not to A's second job.
    assert Job.objects.get(prompt_id=a_jobs[0]).status == Job.Status.SUCCEEDED
    assert Job.objects.get(prompt_id=b_job).status == Job.Status.DISPATCHING
    assert Job.objects.get(prompt_id=a_jobs[1]).status == Job.Status.QUEUED


def test_backend_down_keeps_jobs_queued_until_it_returns(client, personas, sim):
    real_url = personas.backend.url
    GpuBackend.objects.filter(pk=personas.backend.pk).update(url="http://127.0.0.1:9", object_info_fetched_at=None)
    response = submit(client, personas.seat_a)
    assert response.status_code == 200  # accepted: the backend will validate it when it is back
    run_worker()
    job = Job.objects.get(prompt_id=response.json()["prompt_id"])
    assert job.status == Job.Status.QUEUED and job.attempts == 0
    assert "did not answer" in job.status_reason
    backend = GpuBackend.objects.get(pk=personas.backend.pk)
    assert backend.state == GpuBackend.State.FAILING
    reconciler.sweep()  # still down: nothing happens to the job
    assert Job.objects.get(pk=job.pk).status == Job.Status.QUEUED
    GpuBackend.objects.filter(pk=backend.pk).update(url=real_url)
    report = reconciler.sweep()  # health check passes → ready → the job is claimed
    assert report.claimed == [job.pk]
    run_worker()
    assert Job.objects.get(pk=job.pk).status == Job.Status.SUCCEEDED


def test_backend_down_past_the_deadline_fails_the_job_with_a_reason(client, personas, sim, settings):
    GpuBackend.objects.filter(pk=personas.backend.pk).update(url="http://127.0.0.1:9", state=GpuBackend.State.FAILING)
    job = Job.objects.get(prompt_id=submit(client, personas.seat_a).json()["prompt_id"])
    Job.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(hours=1))
    report = reconciler.sweep()
    job.refresh_from_db()
    assert report.failed == [job.pk]
    assert job.status == Job.Status.FAILED and "No GPU backend was available" in job.status_reason


def test_backend_5xx_requeues_without_losing_or_duplicating(client, personas, sim):
    sim.config.http_fail_count = 1
    job = Job.objects.get(prompt_id=submit(client, personas.seat_a).json()["prompt_id"])
    run_worker()
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED and job.attempts == 0 and "503" in job.status_reason
    reconciler.sweep()
    run_worker()
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert list(sim_history(sim)).count(str(job.prompt_id)) == 1


def test_websocket_dropped_mid_job_recovers_from_history(client, personas, sim):
    sim.config.node_delay = 0.2
    sim.config.ws_drop_after = 3
    job = Job.objects.get(prompt_id=submit(client, personas.seat_a).json()["prompt_id"])
    run_worker()
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.status_reason
    assert Artifact.objects.filter(job=job).count() == 1
    assert job.attempts == 1  # recovered, not re-run


def test_an_output_sent_while_the_socket_was_down_is_taken_from_history(client, personas, sim):
    # The socket drops after `executing 3`, so the file's `executed` goes to nobody; the prompt stays queued a
    # second longer (history_delay), so the provider reconnects, keeps listening, and must not lose the file.
    sim.config.ws_drop_after, sim.config.history_delay = 10, 1.0
    prompt = json.loads(json.dumps(TINY))
    prompt["1"]["inputs"]["color"] = 0x123456  # not in the simulator's cache: every node runs
    job = Job.objects.get(prompt_id=submit(client, personas.seat_a, prompt).json()["prompt_id"])
    run_worker()
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.status_reason
    assert job.attempts == 1
    artifact = Artifact.objects.get(job=job)
    assert job.outputs["3"]["images"][0]["filename"] == artifact.filename


def test_runtime_error_fails_with_comfyui_error(client, personas, sim):
    sim.config.fail_on_class = {"ImageInvert"}
    job = Job.objects.get(prompt_id=submit(client, personas.seat_a).json()["prompt_id"])
    run_worker()
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error["node_type"] == "ImageInvert" and job.error["prompt_id"] == str(job.prompt_id)
    assert job.status_reason


def test_timeout_interrupts_the_backend(client, personas, sim):
    personas.workshop.job_timeout_seconds = 1
    personas.workshop.save()
    sim.config.hang_on_class = {"ImageInvert"}
    job = Job.objects.get(prompt_id=submit(client, personas.seat_a).json()["prompt_id"])
    run_worker()
    job.refresh_from_db()
    assert job.status == Job.Status.TIMED_OUT and "time limit" in job.status_reason
    entry = sim_history(sim)[str(job.prompt_id)]
    assert entry["status"]["status_str"] == "error"  # the backend really stopped it


def test_cancel_while_queued_never_reaches_the_backend(client, personas, sim):
    personas.backend.enabled = False
    personas.backend.save()
    job = Job.objects.get(prompt_id=submit(client, personas.seat_a).json()["prompt_id"])
    assert job.status == Job.Status.QUEUED
    assert cancel_job(job)
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED and job.finished_at
    assert str(job.prompt_id) not in sim_history(sim)
    assert not cancel_job(job)  # a second cancel changes nothing


def test_cancel_while_running_interrupts_on_the_gpu(client, personas, sim):
    sim.config.hang_on_class = {"ImageInvert"}
    job = Job.objects.get(prompt_id=submit(client, personas.seat_a).json()["prompt_id"])
    worker = threading.Thread(target=run_worker)
    worker.start()
    deadline = time.monotonic() + 10
    while Job.objects.get(pk=job.pk).status != Job.Status.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    response = client.post(
        f"/api/hub/jobs/{job.prompt_id}/cancel", HTTP_AUTHORIZATION=f"Bearer {personas.seat_a._raw_token}"
    )
    assert response.status_code == 200
    worker.join(timeout=30)
    job.refresh_from_db()
    assert job.status == Job.Status.INTERRUPTED and "Cancelled" in job.status_reason
    assert sim_history(sim)[str(job.prompt_id)]["status"]["status_str"] == "error"


def test_worker_killed_mid_job_is_requeued_once_then_failed(client, personas, sim, settings):
    job = Job.objects.get(prompt_id=submit(client, personas.seat_a).json()["prompt_id"])
    # As if a worker took the job to the backend and died: running, no heartbeat for a long time.
    stale = timezone.now() - timedelta(minutes=10)
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, heartbeat_at=stale, backend_prompt_id="gone")
    report = reconciler.sweep(check_backends=False)
    job.refresh_from_db()
    assert job.pk in report.requeued or job.status == Job.Status.DISPATCHING  # requeued, then claimed again
    assert job.status in (Job.Status.QUEUED, Job.Status.DISPATCHING)
    assert "stopped responding" in job.events.filter(to_status="queued").get().reason
    # Its second worker dies too: now it fails with the reason.
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, heartbeat_at=stale, attempts=2)
    report = reconciler.sweep(check_backends=False)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "twice" in job.status_reason
    django_rq_queue_is_drained_without_running_it_again(job)


def django_rq_queue_is_drained_without_running_it_again(job):
    run_worker()  # the stale dispatch task finds the job no longer dispatching and leaves it alone
    assert Job.objects.get(pk=job.pk).status == Job.Status.FAILED


def test_backend_rejection_at_dispatch_fails_with_its_node_errors(client, personas, sim):
    # The cached catalogue says the model exists; the backend has since lost it.
    info = requests.get(f"{sim.url}/object_info", timeout=5).json()
    info["EmptyImage"]["input"]["required"]["width"][1]["max"] = 10**6
    store_object_info(personas.backend, info)
    prompt = json.loads(json.dumps(TINY))
    prompt["1"]["inputs"]["width"] = 999999
    job = Job.objects.get(prompt_id=submit(client, personas.seat_a, prompt=prompt).json()["prompt_id"])
    run_worker()
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error["node_errors"]["1"]["errors"][0]["type"] == "value_bigger_than_max"


def test_job_lost_by_a_restarted_backend_is_retried_once_under_a_new_prompt_id(client, personas, tmp_path):
    from gpu_backends.simulator import SimulatorConfig, SimulatorThread

    first = SimulatorThread(SimulatorConfig(output_dir=tmp_path / "a", node_delay=0.01, hang_on_class={"ImageInvert"}))
    first.start()
    port = int(first.url.rsplit(":", 1)[1])
    GpuBackend.objects.filter(pk=personas.backend.pk).update(url=first.url)
    job = Job.objects.get(prompt_id=submit(client, personas.seat_a).json()["prompt_id"])
    worker = threading.Thread(target=run_worker, kwargs={"max_jobs": 1})
    worker.start()
    deadline = time.monotonic() + 10
    while Job.objects.get(pk=job.pk).status != Job.Status.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    # The backend restarts on the same address and knows nothing of the job.
    first.stop()
    second = SimulatorThread(SimulatorConfig(output_dir=tmp_path / "b", node_delay=0.01), port=port).start()
    try:
        worker.join(timeout=30)
        job.refresh_from_db()
        # Requeued with its attempt counted, and claimed again at once (the slot is free).
        assert (job.status, job.attempts) == (Job.Status.DISPATCHING, 2)
        assert "lost the job" in job.events.filter(to_status="queued").get().reason
        run_worker()
        job.refresh_from_db()
        assert job.status == Job.Status.SUCCEEDED and job.attempts == 2
        assert job.backend_prompt_id != str(job.prompt_id)  # the retry did not reuse the lost prompt's id
        assert list(requests.get(f"{second.url}/history", timeout=5).json()) == [job.backend_prompt_id]
        assert Artifact.objects.filter(job=job).count() == 1
    finally:
        second.stop()


def test_the_seat_hears_its_queue_counter_only_when_it_changes_and_the_instructor_never(
    client, personas, sim, monkeypatch
):
    from jobs import events

    sent: list[tuple[list[str], dict]] = []
    original = events.publish
    monkeypatch.setattr(
        events, "publish", lambda groups, message: (sent.append((groups, message)), original(groups, message))
    )
    job = Job.objects.get(prompt_id=submit(client, personas.seat_a).json()["prompt_id"])
    run_worker()
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    seat, workshop = events.seat_group(job.seat_id), events.workshop_group(job.workshop_id)
    counters = [(groups, m["message"]["data"]) for groups, m in sent if m["message"]["type"] == "status"]
    # Queued (then claimed at once), and finished: claiming and starting do not change the seat's count.
    assert counters == [
        ([seat], {"status": {"exec_info": {"queue_remaining": 1}}}),
        ([seat], {"status": {"exec_info": {"queue_remaining": 0}}}),
    ]
    jobs = [(groups, m["message"]["data"]["status"]) for groups, m in sent if m["message"]["type"] == "comfyume.job"]
    assert jobs == [([seat, workshop], "dispatching"), ([seat, workshop], "running"), ([seat, workshop], "succeeded")]
