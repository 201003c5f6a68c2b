"""A backend kind answers for itself: a fake serverless vendor registered in gpu_backends.kinds.KINDS, and nowhere
else, is dispatched with a worker callback, left alone by the health sweep and the submit path, scaled by the
reconciler, and warmed and scaled to zero by the admin and the live dashboard, which record one audit entry and
refresh the live view alike."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from django.test import Client
from django.utils import timezone

from gpu_backends import scaling
from gpu_backends.client import BackendError
from gpu_backends.kinds import KINDS
from gpu_backends.mailbox import Mailbox
from gpu_backends.models import GpuBackend
from gpu_backends.serverless import ServerlessProvider, Timing
from jobs import events
from jobs.models import Job
from jobs.reconciler import sweep_backends
from tests.fixtures import run_worker
from tests.recorded import TINY_PATH, load
from workshops.models import AuditEntry, Workshop
from workshops.tests.test_dashboard import post, snapshot_url

KIND = "fakeless"
DEPLOYMENT = "deploy-x"
DONE = {"status": "succeeded", "outputs": {}, "files": [], "gpu_seconds": 1.5}


@dataclass(frozen=True)
class Replicas:
    state: str
    reason: str = "as the fake vendor says"
    rolling_out: bool = False
    min_replicas: int = 0
    running: int = 0
    starting: int = 0
    scale_down_delay: int = 60


@dataclass
class FakeScaler:
    """The vendor's scaling API: remembers the minimum replicas set, reports ``state``."""

    state: str = "unknown"
    fail: BackendError | None = None
    min_replicas: dict[str, int] = field(default_factory=dict)

    def set_min_replicas(self, name: str, count: int) -> None:
        if self.fail is not None:
            raise self.fail
        self.min_replicas[name] = count

    def replica_status(self, name: str) -> Replicas:
        return Replicas(self.state, min_replicas=self.min_replicas.get(name, 0))


@dataclass
class WorkerGateway:
    """The vendor's gateway and its GPU worker in one: each request's worker posts its result to the job's mailbox
    (as the callback views would) and answers it too."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)

    def run_sync(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        self.requests.append(body)
        Mailbox(body["job"]).post({"kind": "result", "manifest": DONE})
        return 200, DONE

    def submit_async(self, path: str, body: dict[str, Any]) -> str:
        raise AssertionError("the fake vendor runs synchronous requests")

    def async_state(self, inference_id: str) -> str:
        return "unknown"

    def result(self, inference_id: str) -> tuple[int, Any] | None:
        return None

    def get(self, path: str) -> Any:
        self.asked.append(path)  # /ready or /object_info: a request that would start a replica
        return {}


class FakeVendorProvider(ServerlessProvider):
    """A second serverless vendor as a new one would be written: a provider class and its registry line."""

    scales = True
    scaling_api = "Fake API"
    scaler_needs = "FAKE_VENDOR_KEY"
    gateway = WorkerGateway()
    scaler_client: FakeScaler | None = FakeScaler()

    @classmethod
    def for_backend(cls, backend: Any, cfg: dict[str, Any]) -> FakeVendorProvider:
        return cls(cls.gateway, mode="sync", timing=Timing(silence=5, cold_start=5))

    @classmethod
    def scaler(cls) -> FakeScaler | None:
        return cls.scaler_client


@pytest.fixture
def vendor(monkeypatch) -> SimpleNamespace:
    gateway, scaler = WorkerGateway(), FakeScaler()
    monkeypatch.setattr(FakeVendorProvider, "gateway", gateway)
    monkeypatch.setattr(FakeVendorProvider, "scaler_client", scaler)
    monkeypatch.setitem(KINDS, KIND, FakeVendorProvider)
    return SimpleNamespace(gateway=gateway, scaler=scaler)


@pytest.fixture
def backend(personas, vendor) -> GpuBackend:
    """The personas' backend (of both workshops), now a deployment of the fake vendor with no replica running."""
    backend = personas.backend
    backend.kind = KIND
    backend.url = f"https://gpus.example/{DEPLOYMENT}"
    backend.state = GpuBackend.State.COLD
    backend.save()
    return backend


@pytest.fixture
def instructor(personas) -> Client:
    client = Client()
    client.force_login(personas.instructor)
    return client


@pytest.mark.django_db(transaction=True)
def test_a_registered_serverless_kind_runs_a_job_with_a_worker_callback(personas, backend, vendor, instructor):
    token = personas.seat_a.issue_token()
    submitted = instructor.post(
        "/api/hub/prompt",
        data=json.dumps({"prompt": load(TINY_PATH), "client_id": "tab-1"}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert submitted.status_code == 200, submitted.content

    run_worker()

    job = Job.objects.get(prompt_id=submitted.json()["prompt_id"])
    backend.refresh_from_db()
    assert (job.status, job.gpu_seconds) == (Job.Status.SUCCEEDED, 1.5), job.status_reason
    (request,) = vendor.gateway.requests
    assert request["callback"]["url"].endswith(f"/api/gpu/jobs/{job.prompt_id}/{job.backend_prompt_id}/")
    assert request["callback"]["token"]
    assert backend.state == GpuBackend.State.READY  # the job it accepted says a replica runs
    assert vendor.gateway.asked == []  # the submit's preflight did not wait out a cold start


def test_the_health_sweep_never_asks_a_cold_starting_kind_and_retries_a_failing_one(personas, backend, vendor):
    GpuBackend.objects.filter(pk=backend.pk).update(
        state=GpuBackend.State.FAILING, state_changed_at=timezone.now() - timedelta(minutes=2)
    )
    fresh = GpuBackend.objects.create(name="fresh", kind=KIND, url="https://gpus.example/other")

    sweep_backends()

    assert GpuBackend.objects.get(pk=backend.pk).state == GpuBackend.State.UNKNOWN  # its next job is the probe
    assert GpuBackend.objects.get(pk=fresh.pk).state == GpuBackend.State.UNKNOWN
    assert vendor.gateway.asked == []


def test_the_scaling_sweep_warms_a_registered_kind_for_its_workshop_and_names_its_api(personas, backend, vendor):
    GpuBackend.objects.filter(pk=backend.pk).update(warm_replicas=2)
    start = timezone.now() + timedelta(minutes=10)
    Workshop.objects.filter(pk=personas.workshop.pk).update(starts_at=start)
    vendor.scaler.state = "warming"

    scaling.sweep(now=timezone.now())
    backend.refresh_from_db()
    warmed = (vendor.scaler.min_replicas, backend.applied_min_replicas, backend.state)
    vendor.scaler.fail = BackendError("the vendor's API is down")
    scaling.sweep(now=start + timedelta(hours=9))  # after the session: it should go to zero
    backend.refresh_from_db()

    assert warmed == ({DEPLOYMENT: 2}, 2, GpuBackend.State.WARMING)
    assert backend.last_error == "Fake API: the vendor's API is down"


def test_a_kind_without_its_scaling_settings_says_what_to_set(personas, backend, vendor, monkeypatch):
    monkeypatch.setattr(FakeVendorProvider, "scaler_client", None)

    with pytest.raises(BackendError, match="Scaling needs FAKE_VENDOR_KEY"):
        scaling.warm_now(backend)


def test_the_dashboard_offers_scaling_for_a_kind_that_scales_only(personas, backend, second_backend, instructor):
    rows = {row["name"]: row for row in instructor.get(snapshot_url()).json()["backends"]}

    assert (rows["sim"]["serverless"], rows["sim-2"]["serverless"]) == (True, False)


def _told_the_live_views(publish: mock.MagicMock) -> set[str]:
    """The groups told that a backend changed (comfyume.queue), as the dashboard refreshes its backend row."""
    return {
        group
        for call in publish.call_args_list
        if call.args[1]["message"] == {"type": "comfyume.queue", "data": {"change": "backend", "backend": "sim"}}
        for group in call.args[0]
    }


@pytest.mark.parametrize(
    ("in_the_admin", "on_the_dashboard", "summary"),
    [
        ("warm_up_now", "warm", "Warmed up GPU backend sim (1 replica for an hour)"),
        (
            "scale_to_zero_now",
            "scale_to_zero",
            "Scaled GPU backend sim to zero. Verda confirms: minimum 0, no replica running.",
        ),
    ],
)
def test_the_admin_and_the_dashboard_record_one_entry_and_refresh_the_live_views(
    personas, backend, vendor, instructor, django_capture_on_commit_callbacks, in_the_admin, on_the_dashboard, summary
):
    with (
        mock.patch.object(events, "publish", autospec=True) as from_admin,
        django_capture_on_commit_callbacks(execute=True),
    ):
        said = instructor.post(
            "/admin/gpu_backends/gpubackend/", {"action": in_the_admin, "_selected_action": [backend.pk]}, follow=True
        )
    with (
        mock.patch.object(events, "publish", autospec=True) as from_dashboard,
        django_capture_on_commit_callbacks(execute=True),
    ):
        answered = post(instructor, {"action": on_the_dashboard, "backend": backend.pk}, csrf=False)

    assert [m.level_tag for m in said.context["messages"]] == ["success"]
    assert answered.status_code == 200, answered.content
    admin_entry, dashboard_entry = AuditEntry.objects.order_by("id")
    for entry in (admin_entry, dashboard_entry):
        assert (entry.action, entry.summary, entry.target_id) == (
            f"backend.{on_the_dashboard}",
            summary,
            str(backend.pk),
        )
    # A scale-down records what the vendor reported afterwards.
    reported = {"min_replicas": 0, "running": 0, "verda": summary.split(". ", 1)[1]} if "zero" in summary else {}
    assert (admin_entry.workshop_id, admin_entry.details) == (None, reported)
    assert (dashboard_entry.workshop_id, dashboard_entry.details) == (
        personas.workshop.pk,
        {"via": "dashboard", **reported},
    )
    both_workshops = {events.workshop_group(personas.workshop.pk), events.workshop_group(personas.other_workshop.pk)}
    assert _told_the_live_views(from_admin) == _told_the_live_views(from_dashboard) == both_workshops
