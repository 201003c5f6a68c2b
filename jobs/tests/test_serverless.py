"""The serverless path end to end, everything on real ports: hub (live server) → fake Verda gateway → GPU worker
(``python -m gpu_backends.worker``) → ComfyUI simulator, with callbacks back to the hub and outputs in storage."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time

import pytest
import requests
from PIL import Image

from gpu_backends.models import GpuBackend
from jobs.models import Job
from jobs.services import cancel_job
from storage.models import Artifact, SeatInput
from storage.stores import default_store
from tests.fake_verda import INFERENCE_KEY
from tests.fixtures import run_worker
from tests.gpu_worker import gpu_worker
from tests.recorded import TINY_PATH, load

TINY = load(TINY_PATH)
DEPLOYMENT = "comfy-h200"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def worker(sim, tmp_path):
    with gpu_worker(sim.url, log_path=tmp_path / "worker.log") as url:
        yield url


@pytest.fixture
def verda(personas, fake_verda, worker, live_server, settings, monkeypatch):
    """The workshop's backend is a Verda deployment whose replica runs the GPU worker next to the simulator."""
    fake_verda.add_deployment(DEPLOYMENT, worker, running=True)
    monkeypatch.setenv("COMFYUME_VERDA_INFERENCE_KEY", INFERENCE_KEY)
    settings.COMFYUME = {
        **settings.COMFYUME,
        "CALLBACK_BASE_URL": live_server.url,
        "WORKER_HEARTBEAT": 0.5,
        "WORKER_SILENCE": 10.0,
        "ASYNC_POLL_INTERVAL": 0.5,
    }
    backend = personas.backend
    backend.kind = GpuBackend.Kind.VERDA
    backend.url = fake_verda.deployment_url(DEPLOYMENT)
    backend.inference_mode = GpuBackend.InferenceMode.SYNC
    backend.save()
    return backend


def fresh_tiny() -> dict:
    """The tiny prompt with a colour no other test used, so the simulator's cache cannot answer it."""
    prompt = json.loads(json.dumps(TINY))
    prompt["1"]["inputs"]["color"] = int(time.time_ns() % 0xFFFFFF)
    return prompt


def submit(client, seat, prompt=None):
    token = getattr(seat, "_raw_token", None) or seat.issue_token()
    seat._raw_token = token
    response = client.post(
        "/api/hub/prompt",
        data=json.dumps({"prompt": prompt or TINY, "client_id": "tab-1"}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert response.status_code == 200, response.content
    return Job.objects.get(prompt_id=response.json()["prompt_id"])


def finished(job: Job) -> Job:
    run_worker()
    job.refresh_from_db()
    return job


def run_requests(fake_verda):
    return [r for r in fake_verda.gateway_requests(DEPLOYMENT) if r.method == "POST" and r.path.endswith("/run")]


def test_a_job_is_one_request_and_its_outputs_land_in_storage(client, personas, verda, fake_verda):
    job = finished(submit(client, personas.seat_a))
    assert job.status == Job.Status.SUCCEEDED, (job.status_reason, job.error)
    assert len(run_requests(fake_verda)) == 1  # one job, one request: nothing asked of "the" replica later
    assert job.gpu_seconds > 0 and job.started_at is not None
    artifact = Artifact.objects.get(job=job)
    assert artifact.key.startswith(f"workshops/ws1/user001/{job.prompt_id}/")
    data = default_store().open(artifact.key).read()
    assert hashlib.sha256(data).hexdigest() == artifact.sha256 and len(data) == artifact.size
    assert Image.open(io.BytesIO(data)).format == "PNG"
    # The participant's history names the hub's copy, and /view serves it.
    image = next(iter(job.outputs.values()))["images"][0]
    assert image["subfolder"].startswith(str(job.prompt_id))
    view = client.get(
        "/api/hub/view",
        {"filename": image["filename"], "subfolder": image["subfolder"], "type": "output"},
        HTTP_AUTHORIZATION=f"Bearer {personas.seat_a._raw_token}",
    )
    assert view.status_code == 200 and view.getvalue() == data
    verda.refresh_from_db()
    assert verda.state == GpuBackend.State.READY


def test_an_asynchronous_request_reports_through_callbacks(client, personas, verda, fake_verda):
    verda.inference_mode = GpuBackend.InferenceMode.ASYNC
    verda.save()
    job = finished(submit(client, personas.seat_a))
    assert job.status == Job.Status.SUCCEEDED, (job.status_reason, job.error)
    [request] = run_requests(fake_verda)
    assert request.headers.get("Prefer") == "respond-async"
    assert job.backend_ref  # Verda's X-Inference-Id, kept for operators
    assert Artifact.objects.filter(job=job).count() == 1


def test_a_prompt_the_gpu_rejects_fails_with_comfyuis_own_error(client, personas, verda):
    bad = {**TINY, "99": {"class_type": "NoSuchNode", "inputs": {}}}
    job = finished(submit(client, personas.seat_a, bad))
    assert job.status == Job.Status.FAILED
    assert "node_errors" in job.error or job.error.get("error", {}).get("type"), job.error
    assert job.attempts == 1


def test_a_failing_node_fails_the_job_with_the_execution_error(client, personas, verda, sim):
    sim.config.fail_on_class = {"SaveImage"}
    job = finished(submit(client, personas.seat_a, fresh_tiny()))
    assert job.status == Job.Status.FAILED
    assert job.error and job.error.get("node_type") == "SaveImage"


def test_a_replica_dying_mid_job_is_retried_once_on_a_new_request(client, personas, verda, fake_verda, sim):
    sim.config.node_delay = 1.0  # the replica dies while the job runs, before its result is posted
    fake_verda.kill_next(1, after=0.8)
    job = finished(submit(client, personas.seat_a, fresh_tiny()))
    # The first attempt was lost with its replica and queued again; the second ran on a new request.
    if job.status == Job.Status.QUEUED or job.status == Job.Status.DISPATCHING:
        job = finished(job)
    assert job.status == Job.Status.SUCCEEDED, (job.status_reason, job.error)
    assert job.attempts == 2 and len(run_requests(fake_verda)) == 2
    assert job.events.filter(to_status=Job.Status.QUEUED, reason__icontains="lost").exists()


def test_cancel_reaches_the_gpu_through_the_callback(client, personas, verda, sim):
    sim.config.hang_on_class = {"SaveImage"}
    job = submit(client, personas.seat_a, fresh_tiny())

    def cancel_when_running() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            job.refresh_from_db()
            if job.status == Job.Status.RUNNING:
                cancel_job(job)
                return
            time.sleep(0.1)

    thread = threading.Thread(target=cancel_when_running)
    thread.start()
    job = finished(job)
    thread.join()
    assert job.status == Job.Status.INTERRUPTED, job.status_reason
    assert "Cancelled" in job.status_reason


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (404, "wrong inference API key or a wrong deployment name"),
        (429, "rate limiting"),
        (503, "503"),
    ],
)
def test_gateway_refusals_keep_the_job_queued_and_say_why(client, personas, verda, fake_verda, status, says):
    fake_verda.fail_next(status)
    job = finished(submit(client, personas.seat_a))
    assert job.status == Job.Status.QUEUED and job.attempts == 0  # not counted: the job never reached a GPU
    verda.refresh_from_db()
    assert verda.state == GpuBackend.State.FAILING and says in verda.last_error


def test_a_missing_inference_key_names_the_variable(client, personas, verda, monkeypatch):
    monkeypatch.delenv("COMFYUME_VERDA_INFERENCE_KEY")
    job = finished(submit(client, personas.seat_a))
    assert job.status == Job.Status.QUEUED
    verda.refresh_from_db()
    assert verda.state == GpuBackend.State.FAILING and "API key" in verda.last_error


def test_an_uploaded_image_reaches_the_gpu_with_the_job(client, personas, verda, sim):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buffer, "PNG")
    photo = buffer.getvalue()
    stored = default_store().put("inputs/ws1/user001/photo.png", [photo])
    SeatInput.objects.create(
        seat=personas.seat_a, name="photo.png", key=stored.key, size=stored.size, sha256=stored.sha256,
        content_type="image/png",
    )  # fmt: skip
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "i2i"}},
    }
    job = finished(submit(client, personas.seat_a, prompt))
    assert job.status == Job.Status.SUCCEEDED, (job.status_reason, job.error)
    copies = [p for p in sim.config.output_dir.parent.rglob("photo.png") if p.read_bytes() == photo]
    assert any(f"comfyume/{job.backend_prompt_id}" in str(p) for p in copies)


def test_outputs_go_straight_to_r2_and_view_redirects_there(client, personas, verda, r2_store):
    job = finished(submit(client, personas.seat_a))
    assert job.status == Job.Status.SUCCEEDED, (job.status_reason, job.error)
    artifact = Artifact.objects.get(job=job)
    head = r2_store.head(artifact.key)
    assert head.size == artifact.size
    image = next(iter(job.outputs.values()))["images"][0]
    view = client.get(
        "/api/hub/view",
        {"filename": image["filename"], "subfolder": image["subfolder"], "type": "output"},
        HTTP_AUTHORIZATION=f"Bearer {personas.seat_a._raw_token}",
    )
    assert view.status_code == 302
    body = requests.get(view["Location"], timeout=10).content
    assert hashlib.sha256(body).hexdigest() == artifact.sha256


def test_an_input_that_does_not_arrive_intact_fails_the_job_not_the_gpu(client, personas, verda, sim):
    stored = default_store().put("inputs/ws1/user001/broken.png", [b"the bytes the worker will get"])
    SeatInput.objects.create(
        seat=personas.seat_a, name="broken.png", key=stored.key, size=stored.size, sha256="0" * 64,
        content_type="image/png",
    )  # fmt: skip
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "broken.png"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "broken"}},
    }
    job = finished(submit(client, personas.seat_a, prompt))
    assert job.status == Job.Status.FAILED and "broken.png" in job.status_reason, job.status_reason
    assert job.error["node_errors"] == {} and job.error["error"]["type"] == "bad_request"
    verda.refresh_from_db()
    assert verda.state == GpuBackend.State.READY  # the GPU is fine; the job was refused


def test_storage_refusing_the_outputs_fails_the_job_and_says_so(client, personas, verda, r2_store, settings):
    # Presigning needs no server, so the worker gets its URLs; the bucket then refuses every PUT.
    settings.OBJECT_STORE = {**settings.OBJECT_STORE, "BUCKET": "a-bucket-that-does-not-exist"}
    job = finished(submit(client, personas.seat_a, fresh_tiny()))
    assert job.status == Job.Status.FAILED
    assert "could not be stored" in job.status_reason and job.error["exception_type"] == "output_not_stored"
    assert not Artifact.objects.filter(job=job).exists()
    verda.refresh_from_db()
    assert verda.state == GpuBackend.State.READY


def test_adding_a_verda_backend_in_the_admin_reads_its_node_list(client, personas, fake_verda, worker, monkeypatch):
    from django.contrib.auth import get_user_model

    fake_verda.add_deployment("comfy-b300", worker, running=True)
    monkeypatch.setenv("COMFYUME_VERDA_INFERENCE_KEY", INFERENCE_KEY)
    admin = get_user_model().objects.create_user("ops", password="pw", is_staff=True, is_superuser=True)
    client.force_login(admin)
    form = {
        "name": "b300", "kind": "verda", "url": fake_verda.deployment_url("comfy-b300"), "gpu_type": "B300",
        "price_per_hour": "4.90", "max_concurrency": 2, "enabled": "on", "order": 2,
        "api_key_env": "COMFYUME_VERDA_INFERENCE_KEY", "inference_mode": "auto", "warm_replicas": 1,
        "prewarm_minutes": 20,
    }  # fmt: skip
    answer = client.post("/admin/gpu_backends/gpubackend/add/", form, follow=True)
    assert answer.status_code == 200 and "reading its node list in the background" in answer.content.decode()
    run_worker()  # the queued read
    backend = GpuBackend.objects.get(name="b300")
    assert backend.object_info_fetched_at is not None and backend.state == GpuBackend.State.READY
    assert len(fake_verda.gateway_requests("comfy-b300")) == 1  # GET /object_info through the gateway


def test_a_seat_gets_another_backends_node_list_while_its_gpu_has_not_reported(client, personas, verda, sim):
    from gpu_backends.services import refresh_object_info

    other = GpuBackend.objects.create(name="box", kind=GpuBackend.Kind.COMFYUI, url=sim.url, order=5)
    refresh_object_info(other)
    personas.workshop.backends.add(other)
    token = personas.seat_a.issue_token()
    answer = client.get("/api/hub/object_info", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert answer.status_code == 200 and "KSampler" in answer.json()
    personas.workshop.backends.remove(other)
    answer = client.get("/api/hub/object_info", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert answer.status_code == 503 and "reload" in answer.json()["error"]["message"]
