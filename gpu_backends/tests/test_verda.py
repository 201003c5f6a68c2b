"""The Verda clients against the fake Verda (tests/fake_verda.py) and a small worker, all on real ports."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from aiohttp import web

from gpu_backends.client import BackendError
from gpu_backends.verda import (
    ReplicaStatus,
    VerdaInference,
    VerdaManagement,
    deployment_url,
    split_deployment_url,
    summarize_replicas,
)
from tests.app_server import AppServer
from tests.fake_verda import CLIENT_ID, CLIENT_SECRET, INFERENCE_KEY, FakeVerda

DEPLOYMENT = "comfyume-test"


class Worker:
    """A stand-in for the GPU worker: /run answers a manifest (or the status the body asks for) after a delay."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.finished: list[str] = []
        self.run_delay = 0.0
        self.ready = True
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/run", self.run)
        app.router.add_get("/ready", self.ready_view)
        app.router.add_get("/health", self.health)
        return app

    async def run(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append((dict(request.headers), body))
        await asyncio.sleep(self.run_delay)
        self.finished.append(body["job"])
        if "answer" in body:
            return web.json_response(body["answer"]["body"], status=body["answer"]["status"])
        return web.json_response({"job": body["job"], "status": "succeeded", "outputs": {}, "files": []})

    async def ready_view(self, request: web.Request) -> web.Response:
        if self.ready:
            return web.json_response({"ready": True})
        return web.json_response({"ready": False, "reason": "warm-up prompt running"}, status=503)

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "comfyui": True, "running": 0})


@pytest.fixture
def worker() -> Iterator[Worker]:
    worker = Worker()
    # Handlers are cancelled when the client goes away, as a worker notices a dropped request.
    with AppServer(worker.app(), handler_cancellation=True) as server:
        worker.url = server.url
        yield worker


@pytest.fixture
def verda(fake_verda: FakeVerda, worker: Worker) -> FakeVerda:
    fake_verda.add_deployment(DEPLOYMENT, worker.url, max_replicas=2)
    return fake_verda


@pytest.fixture
def inference(verda: FakeVerda) -> VerdaInference:
    return VerdaInference(verda.deployment_url(DEPLOYMENT), INFERENCE_KEY, connect_timeout=2, read_timeout=5)


@pytest.fixture
def management(verda: FakeVerda) -> VerdaManagement:
    return VerdaManagement(CLIENT_ID, CLIENT_SECRET, api_url=verda.api_url)


def job(name: str = "job-1", **extra: Any) -> dict[str, Any]:
    return {"job": name, "prompt": {}, **extra}


# --- URLs ---
def test_deployment_url_is_the_gateway_and_the_name() -> None:
    assert deployment_url("comfyume-vca-h200-spot") == "https://containers.datacrunch.io/comfyume-vca-h200-spot"
    assert split_deployment_url("https://containers.datacrunch.io/comfyume-vca-h200-spot/") == (
        "https://containers.datacrunch.io",
        "comfyume-vca-h200-spot",
    )


@pytest.mark.parametrize("name", ["Upper", "under_score", "-leading", "x" * 64, ""])
def test_deployment_url_refuses_names_verda_cannot_have(name: str) -> None:
    with pytest.raises(BackendError) as caught:
        deployment_url(name)
    assert caught.value.permanent and "deployment name" in str(caught.value)


def test_a_url_without_deployment_names_the_url_setting() -> None:
    with pytest.raises(BackendError) as caught:
        VerdaInference("https://containers.datacrunch.io", INFERENCE_KEY)
    assert caught.value.permanent and "backend's URL" in str(caught.value)


def test_an_empty_inference_key_names_the_api_key_field() -> None:
    with pytest.raises(BackendError) as caught:
        VerdaInference(deployment_url(DEPLOYMENT), "")
    assert caught.value.permanent and "API key field" in str(caught.value)


# --- synchronous requests ---
def test_run_sync_forwards_the_job_and_returns_the_workers_answer(
    verda: FakeVerda, worker: Worker, inference: VerdaInference
) -> None:
    status, answer = inference.run_sync("/run", job())

    assert (status, answer["job"], answer["status"]) == (200, "job-1", "succeeded")
    assert worker.received[0][1] == job()
    (seen,) = verda.gateway_requests(DEPLOYMENT)
    assert (seen.method, seen.path, seen.answered) == ("POST", f"/{DEPLOYMENT}/run", 200)
    assert seen.headers["Authorization"] == f"Bearer {INFERENCE_KEY}"


def test_run_sync_hands_the_workers_own_400_to_the_caller(inference: VerdaInference) -> None:
    rejected = {"error": {"type": "prompt_outputs_failed_validation", "message": "bad"}, "node_errors": {"3": {}}}

    status, answer = inference.run_sync("/run", job(answer={"status": 400, "body": rejected}))

    assert (status, answer) == (400, rejected)


def test_a_wrong_inference_key_is_verdas_404_naming_key_and_deployment(verda: FakeVerda, worker: Worker) -> None:
    client = VerdaInference(verda.deployment_url(DEPLOYMENT), "dc_wrong")

    with pytest.raises(BackendError) as caught:
        client.run_sync("/run", job())

    error = caught.value
    assert (error.permanent, error.lost, error.status) == (True, False, 404)
    assert "wrong inference API key or a wrong deployment name (comfyume-test)" in str(error)
    assert worker.received == []


def test_an_unknown_deployment_is_a_permanent_404(verda: FakeVerda) -> None:
    client = VerdaInference(verda.deployment_url("no-such-deployment"), INFERENCE_KEY)

    with pytest.raises(BackendError) as caught:
        client.get("/ready")

    assert caught.value.permanent and caught.value.status == 404 and "(no-such-deployment)" in str(caught.value)


def test_a_401_says_the_api_key_field_was_refused(worker: Worker) -> None:
    with FakeVerda(unauthorized_status=401) as fake:
        fake.add_deployment(DEPLOYMENT, worker.url)
        client = VerdaInference(fake.deployment_url(DEPLOYMENT), "dc_wrong")
        with pytest.raises(BackendError) as caught:
            client.run_sync("/run", job())

    assert caught.value.permanent and caught.value.status == 401
    assert "the inference API key (backend's API key field) was refused" in str(caught.value)


def test_429_is_worth_a_retry(verda: FakeVerda, inference: VerdaInference) -> None:
    verda.fail_next(429)

    with pytest.raises(BackendError) as caught:
        inference.run_sync("/run", job())

    error = caught.value
    assert (error.permanent, error.lost, error.status) == (False, False, 429)
    assert "rate limiting / deployment queue full" in str(error)
    assert inference.run_sync("/run", job())[0] == 200


@pytest.mark.parametrize(("status", "lost"), [(500, True), (502, True), (504, True), (503, False)])
def test_a_5xx_during_the_jobs_request_means_the_job_was_lost_except_503(
    verda: FakeVerda, inference: VerdaInference, status: int, lost: bool
) -> None:
    verda.fail_next(status)

    with pytest.raises(BackendError) as caught:
        inference.run_sync("/run", job())

    assert (caught.value.permanent, caught.value.lost, caught.value.status) == (False, lost, status)


def test_a_5xx_on_a_small_get_is_only_retryable(verda: FakeVerda, inference: VerdaInference) -> None:
    verda.fail_next(500)

    with pytest.raises(BackendError) as caught:
        inference.get("/health")

    assert (caught.value.permanent, caught.value.lost, caught.value.status) == (False, False, 500)


def test_the_workers_502_comfyui_lost_is_lost_with_its_payload(inference: VerdaInference) -> None:
    lost = {"error": {"type": "comfyui_lost", "message": "ComfyUI died"}}

    with pytest.raises(BackendError) as caught:
        inference.run_sync("/run", job(answer={"status": 502, "body": lost}))

    assert caught.value.lost and caught.value.payload == lost and "ComfyUI died" in str(caught.value)


def test_a_replica_killed_mid_request_loses_the_job_and_cuts_the_worker(
    verda: FakeVerda, worker: Worker, inference: VerdaInference
) -> None:
    worker.run_delay = 1.0
    verda.kill_next(after=0.2)

    with pytest.raises(BackendError) as caught:
        inference.run_sync("/run", job())

    assert caught.value.lost and not caught.value.permanent and "replica died" in str(caught.value)
    assert len(worker.received) == 1
    time.sleep(1.1)
    assert worker.finished == []  # the request was cut with the replica
    assert verda.gateway_requests(DEPLOYMENT)[0].answered is None
    assert verda.deployments[DEPLOYMENT].replicas == []  # min 0: nothing replaces it


def test_a_killed_replicas_request_can_keep_running_upstream(
    verda: FakeVerda, worker: Worker, inference: VerdaInference
) -> None:
    worker.run_delay = 0.5
    verda.kill_next(after=0.1, upstream_keeps_running=True)

    with pytest.raises(BackendError) as caught:
        inference.run_sync("/run", job())

    assert caught.value.lost
    verda.wait_for(lambda: worker.finished == ["job-1"])


def test_killing_replicas_now_drops_the_request_in_flight_and_starts_a_new_replica(
    fake_verda: FakeVerda, worker: Worker
) -> None:
    fake_verda.add_deployment(DEPLOYMENT, worker.url, min_replicas=1, startup_delay=5.0, running=True)
    client = VerdaInference(fake_verda.deployment_url(DEPLOYMENT), INFERENCE_KEY)
    worker.run_delay = 5.0
    with ThreadPoolExecutor(1) as pool:
        request = pool.submit(client.run_sync, "/run", job())
        fake_verda.wait_for(lambda: len(worker.received) == 1)
        fake_verda.kill_replicas(DEPLOYMENT)
        with pytest.raises(BackendError) as caught:
            request.result(timeout=5)

    assert caught.value.lost
    (replica,) = fake_verda.deployments[DEPLOYMENT].replicas
    assert replica.status == "starting"  # min replicas 1: Verda brings up a new one


def test_a_dying_replica_runs_the_death_hook_before_the_caller_hears(fake_verda: FakeVerda, worker: Worker) -> None:
    died: list[tuple[str, int]] = []
    deployment = fake_verda.add_deployment(
        DEPLOYMENT, worker.url, on_replica_death=lambda replica: died.append((replica.id, len(worker.received)))
    )
    client = VerdaInference(fake_verda.deployment_url(DEPLOYMENT), INFERENCE_KEY)
    worker.run_delay = 1.0
    fake_verda.kill_next(after=0.2)
    fake_verda.kill_next(after=0.2, upstream_keeps_running=True)

    for _ in range(2):
        with pytest.raises(BackendError):
            client.run_sync("/run", job())
        first_death = list(died)

    assert len(first_death) == 1 and first_death[0][1] == 1  # once, after forwarding, before the caller heard
    assert died == first_death  # a replica whose upstream keeps running does not run the hook
    assert fake_verda.hook_errors == [] and deployment.replicas == []


def test_killing_idle_replicas_runs_the_hook_for_each(fake_verda: FakeVerda, worker: Worker) -> None:
    died: list[str] = []
    fake_verda.add_deployment(
        DEPLOYMENT,
        worker.url,
        min_replicas=2,
        max_replicas=2,
        running=True,
        on_replica_death=lambda r: died.append(r.id),
    )
    before = [replica.id for replica in fake_verda.deployments[DEPLOYMENT].replicas]

    fake_verda.kill_replicas(DEPLOYMENT)

    fake_verda.wait_for(lambda: len(died) == 2)
    assert sorted(died) == sorted(before)
    assert len(fake_verda.deployments[DEPLOYMENT].replicas) == 2  # min replicas: two new ones start
    assert not {replica.id for replica in fake_verda.deployments[DEPLOYMENT].replicas} & set(before)


def test_no_answer_within_the_run_timeout_is_lost(worker: Worker, inference: VerdaInference) -> None:
    worker.run_delay = 2.0

    with pytest.raises(BackendError) as caught:
        inference.run_sync("/run", job(), timeout=0.3)

    assert caught.value.lost and "0 s" in str(caught.value)


def test_nothing_listening_is_retryable_and_not_lost() -> None:
    client = VerdaInference("http://127.0.0.1:9/comfyume-test", INFERENCE_KEY, connect_timeout=1)

    with pytest.raises(BackendError) as caught:
        client.run_sync("/run", job())

    assert (caught.value.permanent, caught.value.lost) == (False, False)


def test_a_cold_deployment_holds_the_request_until_its_replica_is_up(fake_verda: FakeVerda, worker: Worker) -> None:
    fake_verda.add_deployment(DEPLOYMENT, worker.url, startup_delay=0.5)
    client = VerdaInference(fake_verda.deployment_url(DEPLOYMENT), INFERENCE_KEY)

    started = time.monotonic()
    status, _ = client.run_sync("/run", job())

    assert status == 200 and time.monotonic() - started >= 0.5


def test_a_delayed_request_still_arrives(verda: FakeVerda, worker: Worker, inference: VerdaInference) -> None:
    verda.delay_next(0.3)

    started = time.monotonic()
    assert inference.get("/health")["status"] == "ok"
    assert time.monotonic() - started >= 0.3


def test_get_returns_the_workers_not_ready_answer(worker: Worker, inference: VerdaInference) -> None:
    worker.ready = False

    assert inference.get("/ready") == {"ready": False, "reason": "warm-up prompt running"}


# --- asynchronous requests ---
def test_async_request_goes_queued_running_done_and_keeps_its_result(fake_verda: FakeVerda, worker: Worker) -> None:
    fake_verda.add_deployment(DEPLOYMENT, worker.url, startup_delay=1.0)
    client = VerdaInference(fake_verda.deployment_url(DEPLOYMENT), INFERENCE_KEY)
    worker.run_delay = 0.5

    inference_id = client.submit_async("/run", job())

    submitted = fake_verda.gateway_requests(DEPLOYMENT)[0]
    assert submitted.headers["Prefer"] == "respond-async" and submitted.answered == 202
    assert client.status(inference_id).state == "queued"
    assert client.result(inference_id) is None
    seen = []
    while (state := client.status(inference_id)).state != "done":
        seen.append(state.state)
        time.sleep(0.02)
    assert seen[0] == "queued" and "running" in seen and seen.index("running") > seen.index("queued")
    assert state.verda_status == "Completed" and state.raw["Id"] == inference_id
    status, answer = client.result(inference_id)  # type: ignore[misc]
    assert (status, answer["job"], answer["status"]) == (200, "job-1", "succeeded")
    assert worker.received[0][1] == job()


def test_async_result_keeps_the_containers_status(verda: FakeVerda, inference: VerdaInference) -> None:
    rejected = {"error": {"message": "bad"}, "node_errors": {}}
    inference_id = inference.submit_async("/run", job(answer={"status": 400, "body": rejected}))

    verda.wait_for(lambda: inference.async_state(inference_id) == "done")

    assert inference.result(inference_id) == (400, rejected)


def test_an_async_request_whose_replica_died_fails_and_is_lost(
    verda: FakeVerda, worker: Worker, inference: VerdaInference
) -> None:
    worker.run_delay = 1.0
    verda.kill_next(after=0.1)
    inference_id = inference.submit_async("/run", job())

    verda.wait_for(lambda: inference.async_state(inference_id) == "failed")

    with pytest.raises(BackendError) as caught:
        inference.result(inference_id)
    assert caught.value.lost


def test_an_unknown_inference_id_is_lost(inference: VerdaInference) -> None:
    with pytest.raises(BackendError) as caught:
        inference.status("not-an-id")

    assert caught.value.lost and caught.value.status == 404 and "not-an-id" in str(caught.value)


def test_async_submit_refused_with_429_is_retryable(verda: FakeVerda, inference: VerdaInference) -> None:
    verda.fail_next(429)

    with pytest.raises(BackendError) as caught:
        inference.submit_async("/run", job())

    assert (caught.value.permanent, caught.value.lost, caught.value.status) == (False, False, 429)


def test_async_status_with_a_wrong_key_is_a_permanent_404(verda: FakeVerda, inference: VerdaInference) -> None:
    inference_id = inference.submit_async("/run", job())
    wrong = VerdaInference(verda.deployment_url(DEPLOYMENT), "dc_wrong")

    with pytest.raises(BackendError) as caught:
        wrong.status(inference_id)

    assert caught.value.status == 404 and "inference API key" in str(caught.value)


# --- management: tokens ---
def test_the_token_is_fetched_once_and_reused(verda: FakeVerda, management: VerdaManagement) -> None:
    for _ in range(3):
        assert management.deployment(DEPLOYMENT)["name"] == DEPLOYMENT

    assert verda.tokens_issued == 1
    token_calls = [seen for seen in verda.api_requests() if seen.path == "/v1/oauth2/token"]
    assert len(token_calls) == 1 and b'"client_credentials"' in token_calls[0].body


def test_a_token_about_to_expire_is_replaced(verda: FakeVerda, management: VerdaManagement) -> None:
    verda.token_ttl = 31  # expires_in; the client renews 30 s early

    management.deployment(DEPLOYMENT)
    management.deployment(DEPLOYMENT)
    time.sleep(1.1)
    management.deployment(DEPLOYMENT)

    assert verda.tokens_issued == 2


def test_a_revoked_token_is_replaced_once_on_401(verda: FakeVerda, management: VerdaManagement) -> None:
    management.deployment(DEPLOYMENT)
    verda.expire_tokens()

    assert management.deployment(DEPLOYMENT)["name"] == DEPLOYMENT

    assert verda.tokens_issued == 2
    answers = [seen.answered for seen in verda.api_requests() if "container-deployments" in seen.path]
    assert answers == [200, 401, 200]


def test_a_401_with_a_fresh_token_is_permanent(verda: FakeVerda, management: VerdaManagement) -> None:
    verda.fail_api_next(401, count=2)

    with pytest.raises(BackendError) as caught:
        management.deployment(DEPLOYMENT)

    assert caught.value.permanent and "client id and client secret" in str(caught.value)
    assert verda.tokens_issued == 2


def test_bad_client_credentials_name_the_settings(verda: FakeVerda) -> None:
    management = VerdaManagement(CLIENT_ID, "wrong-secret", api_url=verda.api_url)

    with pytest.raises(BackendError) as caught:
        management.replica_status(DEPLOYMENT)

    error = caught.value
    assert (error.permanent, error.status) == (True, 401)
    assert "client id and client secret" in str(error) and "Invalid client credentials" in str(error)


def test_missing_client_credentials_are_a_settings_error() -> None:
    with pytest.raises(BackendError) as caught:
        VerdaManagement("", "")

    assert caught.value.permanent and "client id and client secret" in str(caught.value)


def test_an_unknown_deployment_names_the_deployment_setting(management: VerdaManagement) -> None:
    with pytest.raises(BackendError) as caught:
        management.replica_status("no-such-deployment")

    assert caught.value.permanent and caught.value.status == 404
    assert "no container deployment named 'no-such-deployment'" in str(caught.value)


def test_a_5xx_from_the_api_is_retryable(verda: FakeVerda, management: VerdaManagement) -> None:
    verda.fail_api_next(503)

    with pytest.raises(BackendError) as caught:
        management.deployment(DEPLOYMENT)

    assert (caught.value.permanent, caught.value.status) == (False, 503)
    assert management.deployment(DEPLOYMENT)["name"] == DEPLOYMENT


# --- management: scaling ---
def test_raising_min_replicas_warms_the_deployment_then_it_is_ready(fake_verda: FakeVerda, worker: Worker) -> None:
    fake_verda.add_deployment(DEPLOYMENT, worker.url, max_replicas=2, startup_delay=1.0)
    management = VerdaManagement(CLIENT_ID, CLIENT_SECRET, api_url=fake_verda.api_url)
    assert management.replica_status(DEPLOYMENT).state == "cold"

    management.set_min_replicas(DEPLOYMENT, 1)

    warming = management.replica_status(DEPLOYMENT)
    assert (warming.state, warming.min_replicas, warming.starting, warming.running) == ("warming", 1, 1, 0)
    fake_verda.wait_for(lambda: management.replica_status(DEPLOYMENT).state == "ready")
    ready = management.replica_status(DEPLOYMENT)
    assert (ready.running, ready.desired, ready.max_replicas, ready.deployment_status) == (1, 1, 2, "healthy")

    management.scale_to_zero(DEPLOYMENT)

    cold = management.replica_status(DEPLOYMENT)
    assert (cold.state, cold.min_replicas, cold.running) == ("cold", 0, 0)
    assert "scaled to zero" in cold.reason


def test_set_min_replicas_keeps_every_other_scaling_option(fake_verda: FakeVerda, worker: Worker) -> None:
    fake_verda.add_deployment(DEPLOYMENT, worker.url, max_replicas=3, queue_message_ttl_seconds=7200)
    before = dict(fake_verda.deployments[DEPLOYMENT].scaling)
    management = VerdaManagement(CLIENT_ID, CLIENT_SECRET, api_url=fake_verda.api_url)

    answer = management.set_min_replicas(DEPLOYMENT, 2)

    assert answer == fake_verda.deployments[DEPLOYMENT].scaling == {**before, "min_replica_count": 2}
    (patch,) = [seen for seen in fake_verda.api_requests() if seen.method == "PATCH"]
    assert patch.path == f"/v1/container-deployments/{DEPLOYMENT}/scaling"
    assert json.loads(patch.body) == {**before, "min_replica_count": 2}  # the whole object, as Verda's SDK sends it


def test_min_replicas_above_the_maximum_is_refused_before_any_change(
    verda: FakeVerda, management: VerdaManagement
) -> None:
    with pytest.raises(BackendError) as caught:
        management.set_min_replicas(DEPLOYMENT, 5)

    assert caught.value.permanent and "at most 2" in str(caught.value)
    assert not [seen for seen in verda.api_requests() if seen.method == "PATCH"]


def test_a_paused_deployment_is_failing_until_resumed(verda: FakeVerda, management: VerdaManagement) -> None:
    management.pause(DEPLOYMENT)

    paused = management.replica_status(DEPLOYMENT)
    assert (paused.state, paused.deployment_status) == ("failing", "paused") and "resume" in paused.reason

    management.resume(DEPLOYMENT)
    assert management.replica_status(DEPLOYMENT).state == "cold"


def test_a_reached_gpu_quota_is_failing(verda: FakeVerda, management: VerdaManagement) -> None:
    verda.deployments[DEPLOYMENT].status_override = "quota_reached"

    status = management.replica_status(DEPLOYMENT)

    assert status.state == "failing" and "quota" in status.reason


def test_a_request_to_a_cold_deployment_shows_it_warming_then_ready(fake_verda: FakeVerda, worker: Worker) -> None:
    fake_verda.add_deployment(DEPLOYMENT, worker.url, startup_delay=1.0)
    client = VerdaInference(fake_verda.deployment_url(DEPLOYMENT), INFERENCE_KEY)
    management = VerdaManagement(CLIENT_ID, CLIENT_SECRET, api_url=fake_verda.api_url)
    with ThreadPoolExecutor(1) as pool:
        request = pool.submit(client.get, "/health")
        fake_verda.wait_for(lambda: bool(fake_verda.deployments[DEPLOYMENT].replicas))
        assert management.replica_status(DEPLOYMENT).state == "warming"
        assert request.result(timeout=5)["status"] == "ok"

    assert management.replica_status(DEPLOYMENT).state == "ready"


@pytest.mark.parametrize(
    ("replicas", "verda_status", "state"),
    [
        ([{"status": "running"}, {"status": "pending"}], "healthy", "ready"),
        ([{"status": "image_pulling"}], "initializing", "warming"),
        ([{"status": "CrashLoopBackOff"}], "unhealthy", "failing"),
        ([], "unhealthy", "failing"),
        ([{"status": "sleeping"}], "healthy", "unknown"),
    ],
)
def test_replica_words_are_read_leniently(replicas: list[dict[str, Any]], verda_status: str, state: str) -> None:
    scaling = {"min_replica_count": 1, "max_replica_count": 2}

    status = summarize_replicas(DEPLOYMENT, scaling, replicas, verda_status)

    assert isinstance(status, ReplicaStatus) and status.state == state and status.reason
