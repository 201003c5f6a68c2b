"""Pre-warm before a workshop, scale to zero after it, and backend states from Verda's replica status — against
the fake Verda management API on a real port."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from gpu_backends import scaling
from gpu_backends.client import BackendError
from gpu_backends.models import GpuBackend
from tests.fake_verda import CLIENT_ID, CLIENT_SECRET
from workshops.models import AuditEntry, Workshop

pytestmark = pytest.mark.django_db

NAME = "comfy-h200-spot"


@pytest.fixture
def verda(fake_verda, settings):
    settings.VERDA = {"API_URL": fake_verda.api_url, "CLIENT_ID": CLIENT_ID, "CLIENT_SECRET": CLIENT_SECRET}
    deployment = fake_verda.add_deployment(NAME, "http://127.0.0.1:9", max_replicas=3, startup_delay=0.3)
    backend = GpuBackend.objects.create(
        name="h200-spot", kind=GpuBackend.Kind.VERDA, url=fake_verda.deployment_url(NAME), warm_replicas=2,
        prewarm_minutes=20,
    )  # fmt: skip
    return backend, deployment


def min_replicas(deployment) -> int:
    return deployment.scaling["min_replica_count"]


def test_a_backend_is_warm_from_before_its_workshop_until_its_end(verda):
    backend, _ = verda
    start = timezone.now().replace(microsecond=0) + timedelta(hours=2)
    ends = start + timedelta(hours=3)
    workshop = Workshop.objects.create(slug="masterclass", title="M", starts_at=start, ends_at=ends)
    workshop.backends.add(backend)
    assert scaling.wanted_min_replicas(backend, start - timedelta(minutes=21)) == 0
    assert scaling.wanted_min_replicas(backend, start - timedelta(minutes=20)) == 2
    assert scaling.wanted_min_replicas(backend, start + timedelta(hours=2, minutes=59)) == 2
    assert scaling.wanted_min_replicas(backend, start + timedelta(hours=3)) == 0
    backend.enabled = False
    assert scaling.wanted_min_replicas(backend, start) == 0
    Workshop.objects.filter(pk=workshop.pk).update(ends_at=None)
    backend.enabled = True
    assert scaling.wanted_min_replicas(backend, start + timedelta(hours=7, minutes=59)) == 2  # 8 h by default
    Workshop.objects.filter(pk=workshop.pk).update(archived_at=timezone.now())
    assert scaling.wanted_min_replicas(backend, start) == 0


def test_the_sweep_applies_the_schedule_once_and_tracks_the_replicas(verda, fake_verda):
    backend, deployment = verda
    start = timezone.now() + timedelta(minutes=10)
    Workshop.objects.create(slug="today", title="T", starts_at=start).backends.add(backend)
    scaling.sweep(now=timezone.now())
    backend.refresh_from_db()
    assert min_replicas(deployment) == 2 and backend.applied_min_replicas == 2
    assert backend.state == GpuBackend.State.WARMING  # replicas starting
    patches = len([r for r in fake_verda.api_requests() if r.method == "PATCH"])
    fake_verda.wait_for(lambda: all(r.status == "running" for r in deployment.replicas), timeout=5)
    scaling.sweep(now=timezone.now())
    backend.refresh_from_db()
    assert backend.state == GpuBackend.State.READY
    assert len([r for r in fake_verda.api_requests() if r.method == "PATCH"]) == patches  # nothing re-applied
    # After the session: scaled to zero, and cold once the replicas are gone.
    scaling.sweep(now=start + timedelta(hours=9))
    backend.refresh_from_db()
    assert min_replicas(deployment) == 0 and backend.applied_min_replicas == 0


def test_warm_up_now_and_scale_to_zero_from_the_admin(verda, client):
    backend, deployment = verda
    admin = get_user_model().objects.create_user("boss", password="pw", is_staff=True, is_superuser=True)
    client.force_login(admin)
    changelist = "/admin/gpu_backends/gpubackend/"
    answer = client.post(changelist, {"action": "warm_up_now", "_selected_action": [backend.pk]}, follow=True)
    said = [str(m) for m in answer.context["messages"]]
    assert said == ["h200-spot: Warming up."], said
    backend.refresh_from_db()
    assert min_replicas(deployment) == 2 and backend.state == GpuBackend.State.WARMING
    assert backend.warm_until and backend.warm_until > timezone.now() + timedelta(minutes=59)
    assert scaling.wanted_min_replicas(backend, timezone.now()) == 2  # the sweep keeps it warm
    client.post(changelist, {"action": "scale_to_zero_now", "_selected_action": [backend.pk]})
    backend.refresh_from_db()
    assert min_replicas(deployment) == 0 and backend.warm_until is None
    assert list(AuditEntry.objects.values_list("action", flat=True).order_by("id")) == [
        "backend.warm",
        "backend.scale_to_zero",
    ]


def test_without_api_credentials_scaling_says_what_to_set(verda, settings):
    backend, _ = verda
    settings.VERDA = {**settings.VERDA, "CLIENT_SECRET": ""}
    with pytest.raises(BackendError, match="COMFYUME_VERDA_CLIENT_ID and COMFYUME_VERDA_CLIENT_SECRET"):
        scaling.warm_now(backend)
    scaling.sweep(now=timezone.now())  # nothing to do, nothing raised


def test_an_api_failure_is_recorded_without_stopping_the_gpus(verda, fake_verda):
    backend, _ = verda
    backend.mark(GpuBackend.State.READY)
    fake_verda.fail_api_next(500, count=3)
    scaling.sweep(now=timezone.now())
    backend.refresh_from_db()
    assert backend.state == GpuBackend.State.READY and "Verda API" in backend.last_error


def test_a_failing_deployment_is_marked_failing(verda):
    backend, deployment = verda
    deployment.status_override = "quota_reached"
    scaling.sweep(now=timezone.now())
    backend.refresh_from_db()
    assert backend.state == GpuBackend.State.FAILING and backend.last_error


def test_a_warm_count_above_the_deployments_maximum_is_refused_with_the_reason(verda, fake_verda):
    backend, deployment = verda
    deployment.scaling["max_replica_count"] = 1
    with pytest.raises(BackendError, match="at most 1 replica"):
        scaling.warm_now(backend)
    assert min_replicas(deployment) == 0


def test_a_new_image_rolling_out_gets_its_node_list_read_again(verda):
    from gpu_backends.services import cached_object_info, object_info_is_stale, store_object_info

    backend, deployment = verda
    store_object_info(backend, {"KSampler": {"input": {}}})
    assert not object_info_is_stale(backend)
    deployment.status_override = "version_updating"
    scaling.sweep(now=timezone.now())
    backend.refresh_from_db()
    assert object_info_is_stale(backend)  # the reconciler refreshes it once the backend is ready
    assert cached_object_info(backend) == {"KSampler": {"input": {}}}  # preflight keeps the old one meanwhile


def test_a_minimum_changed_in_verdas_console_is_put_right_even_on_a_switched_off_backend(verda, fake_verda):
    """Nothing wants the backend warm, but someone raised its minimum by hand (or our write was lost): billed
    replicas until someone notices. The sweep reads Verda's own minimum every time."""
    backend, deployment = verda
    GpuBackend.objects.filter(pk=backend.pk).update(enabled=False, applied_min_replicas=0)
    deployment.scaling["min_replica_count"] = 2
    scaling.sweep(now=timezone.now())
    assert min_replicas(deployment) == 0
    backend.refresh_from_db()
    assert backend.applied_min_replicas == 0


def test_scaling_to_zero_holds_for_the_day_and_verdas_count_confirms_it(verda, fake_verda):
    """The day ended early: the workshop is still "on" until its end time, which used to warm it again at the
    next sweep. The hold lasts for the sessions under way; tomorrow's pre-warm still applies."""
    backend, deployment = verda
    now = timezone.now()
    today = Workshop.objects.create(
        slug="today", title="T", starts_at=now - timedelta(hours=3), ends_at=now + timedelta(hours=2)
    )
    today.backends.add(backend)
    scaling.sweep(now=now)
    assert min_replicas(deployment) == 2
    fake_verda.wait_for(lambda: all(r.status == "running" for r in deployment.replicas), timeout=5)
    status = scaling.scale_to_zero(backend)
    assert status.min_replicas == 0 and status.running + status.starting == 0  # the fake stops idle ones at once
    assert scaling.confirmation(status) == "Verda confirms: minimum 0, no replica running."
    scaling.sweep(now=now + timedelta(minutes=5))
    assert min_replicas(deployment) == 0  # not warmed again by today's session
    tomorrow = now + timedelta(days=1)
    Workshop.objects.create(slug="tomorrow", title="T2", starts_at=tomorrow).backends.add(backend)
    backend.refresh_from_db()
    assert scaling.wanted_min_replicas(backend, tomorrow - timedelta(minutes=10)) == 2  # its pre-warm applies
    scaling.warm_now(backend)  # warming by hand lifts the hold
    backend.refresh_from_db()
    assert (
        backend.held_cold_at is None and scaling.wanted_min_replicas(backend, now + timedelta(hours=1, minutes=30)) == 2
    )


def test_replicas_that_nothing_wants_are_named_with_when_verda_stops_them(verda):
    from gpu_backends.verda import summarize_replicas

    backend, _ = verda
    scaling_options = {"min_replica_count": 0, "max_replica_count": 3, "scale_down_policy": {"delay_seconds": 300}}
    status = summarize_replicas("d", scaling_options, [{"status": "running"}], "healthy")
    assert status.scale_down_delay == 300
    note = scaling.idle_replicas(backend, status, wanted=0)
    assert note.startswith("1 replica(s) running with no job and none wanted warm") and "300 s" in note
    assert scaling.idle_replicas(backend, status, wanted=1) == ""  # wanted warm: not idle
    scaling.observe(backend, status, idle=note)
    backend.refresh_from_db()
    assert backend.state == GpuBackend.State.READY and backend.last_error == note
    assert scaling.confirmation(status).startswith("Verda confirms minimum 0; 1 replica(s) still running stop after")
