"""``manage.py rehearse``: each template queued as N participants would on the workshop's real backends (here the
simulator through the real queue and RQ workers), measured, and nothing left waiting, running or warm."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from io import StringIO
from unittest import mock

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from gpu_backends.models import GpuBackend
from jobs import rehearsal
from jobs.models import Job
from tests.fixtures import run_worker
from tests.recorded import TINY_PATH, load
from workshops.models import AuditEntry, Workshop

pytestmark = pytest.mark.django_db(transaction=True)

TINY = load(TINY_PATH)
UNKNOWN_NODE = {"1": {"class_type": "NoSuchNode", "inputs": {}}}


@pytest.fixture
def workers():
    """RQ workers draining the dispatch queue in the background while the rehearsal waits."""
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            run_worker()
            stop.wait(0.1)

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(30)


def test_a_rehearsal_measures_each_template_and_leaves_nothing_waiting(personas, sim, workers):
    sim.config.node_delay = 0.05
    outcome = rehearsal.rehearse(
        personas.workshop,
        {"tiny": TINY, "broken": UNKNOWN_NODE},
        participants=3,
        timeout=60,
        actor=personas.instructor,
        poll=0.1,
    )
    tiny, broken = outcome.results
    assert (tiny.submitted, tiny.succeeded, tiny.failed) == (3, 3, [])
    assert tiny.first_done_seconds is not None and tiny.first_done_seconds > 0
    assert len(tiny.gpu_seconds) == 3 and tiny.median_gpu_seconds > 0
    assert outcome.first_on_gpu_seconds is not None and outcome.first_on_gpu_seconds <= tiny.first_done_seconds
    assert broken.submitted == 0 and "NoSuchNode" in broken.refused  # preflight refused it: no GPU time spent
    assert outcome.timed_out == 0 and outcome.backends == []  # the simulator does not scale
    # Its own workshop, archived; its seats cannot be signed in to; the real workshop has no job of it.
    own = Workshop.objects.get(pk=outcome.workshop.pk)
    assert own.archived_at is not None and own.slug.startswith("ws1-rehearsal-")
    assert not any(seat.participant.has_usable_password() for seat in own.seats.select_related("participant"))
    assert not Job.objects.filter(workshop=personas.workshop).exists()
    assert not Job.objects.filter(status__in=(*Job.WAITING, *Job.ACTIVE)).exists()
    entry = AuditEntry.objects.get(action="workshop.rehearse")
    assert entry.workshop == personas.workshop and entry.details["templates"]["tiny"] == {"succeeded": 3, "failed": 0}


def test_jobs_still_going_when_time_runs_out_are_cancelled(personas, sim, workers):
    sim.config.hang_on_class = {"ImageInvert"}
    outcome = rehearsal.rehearse(personas.workshop, {"tiny": TINY}, participants=2, timeout=1.5, actor=None, poll=0.1)
    assert outcome.timed_out == 2 and outcome.results[0].succeeded == 0
    assert not Job.objects.filter(workshop=outcome.workshop, status=Job.Status.QUEUED).exists()


def test_a_verda_backend_is_set_back_to_its_schedule_with_verdas_count(fake_verda, settings):
    from tests.fake_verda import CLIENT_ID, CLIENT_SECRET

    settings.VERDA = {"API_URL": fake_verda.api_url, "CLIENT_ID": CLIENT_ID, "CLIENT_SECRET": CLIENT_SECRET}
    deployment = fake_verda.add_deployment("h200", "http://127.0.0.1:9", max_replicas=3)
    backend = GpuBackend.objects.create(
        name="h200", kind=GpuBackend.Kind.VERDA, url=fake_verda.deployment_url("h200"), warm_replicas=1
    )
    deployment.scaling["min_replica_count"] = 2  # left warm by the rehearsal's requests, or by hand
    assert rehearsal._settle_backends([backend]) == ["h200: Verda confirms: minimum 0, no replica running."]
    assert deployment.scaling["min_replica_count"] == 0
    now = timezone.now()
    Workshop.objects.create(slug="on", title="On", starts_at=now - timedelta(hours=1)).backends.add(backend)
    assert rehearsal._settle_backends([backend]) == ["h200: kept at 1 warm replica(s) for a session that is on"]


def run(*args: str) -> str:
    out = StringIO()
    call_command("rehearse", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_the_command_reports_per_template(personas, sim, workers, tmp_path):
    path = tmp_path / "flux.json"
    path.write_text(json.dumps({"prompt": TINY}))
    with mock.patch("workshops.management.commands.rehearse.Command._workers_running", return_value=True):
        out = run("ws1", "--prompt", str(path), "--participants", "2", "--timeout", "60")
    assert "First job on a GPU after" in out and "flux: 2 of 2 done, first after" in out and "Total cost 0.00" in out
    assert AuditEntry.objects.get(action="workshop.rehearse").actor_name.startswith("manage.py rehearse (")


@pytest.mark.parametrize(
    ("args", "content", "message"),
    [
        (("nope",), None, "No open workshop called 'nope'"),
        (("ws1",), None, "Give each template's prompt in API format"),
        (("ws1", "--prompt", "/nonexistent.json"), None, "Cannot read /nonexistent.json"),
        (("ws1", "--prompt", "{file}"), "not json", "is not JSON"),
        (("ws1", "--prompt", "{file}"), json.dumps({"nodes": [], "links": []}), "Workflow → Export (API)"),
        (("ws1", "--prompt", "{file}"), json.dumps({"1": {"inputs": {}}}), "have no class_type"),
        (("ws1", "--prompt", "{file}"), json.dumps([1, 2]), "not an API-format prompt"),
        (("ws1", "--prompt", "{file}", "--participants", "0"), json.dumps(TINY), "--participants must be 1 to 100"),
        (("ws1", "--prompt", "{file}"), json.dumps(TINY), "No RQ worker is running"),
    ],
)
def test_bad_input_is_refused_and_queues_nothing(personas, tmp_path, args, content, message):
    file = tmp_path / "t.json"
    if content is not None:
        file.write_text(content)
    with (
        mock.patch("workshops.management.commands.rehearse.Command._workers_running", return_value=False),
        pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")),
    ):
        run(*(a.replace("{file}", str(file)) for a in args))
    assert not Job.objects.exists() and not Workshop.objects.filter(slug__contains="rehearsal").exists()


def test_the_admin_starts_a_rehearsal_in_a_worker_and_shows_its_report(personas, sim, workers, client):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.urls import reverse

    client.force_login(personas.instructor)
    url = reverse("admin:workshops_workshop_rehearse", args=[personas.workshop.pk])
    change = client.get(reverse("admin:workshops_workshop_change", args=[personas.workshop.pk])).content.decode()
    assert url in change
    upload = SimpleUploadedFile("flux.json", json.dumps(TINY).encode(), content_type="application/json")
    with mock.patch("rq.Worker.count", return_value=2):
        answer = client.post(url, {"prompts": [upload], "participants": "2", "timeout": "60"})
    assert answer.status_code == 302, answer.content.decode()[-2000:]
    deadline = timezone.now() + timedelta(seconds=60)
    while not AuditEntry.objects.filter(action="workshop.rehearse").exists():
        assert timezone.now() < deadline, "the rehearsal did not finish"
        run_worker()
    page = " ".join(client.get(url).content.decode().split())
    assert "flux: 2 of 2 done, first after" in page and "First job on a GPU after" in page
    assert AuditEntry.objects.get(action="workshop.rehearse").actor == personas.instructor


@pytest.mark.parametrize(
    ("name", "content", "workers", "message"),
    [
        ("a.json", b"not json", 2, "a.json is not JSON."),
        ("ui.json", json.dumps({"nodes": [], "links": []}).encode(), 2, "Export it from ComfyUI with Workflow"),
        ("big.json", b" " * (2 * 1024 * 1024 + 1), 2, "big.json is over 2 MB"),
        ("ok.json", json.dumps(TINY).encode(), 1, "needs others to run its jobs: run at least two workers"),
    ],
)
def test_the_admin_refuses_a_rehearsal_it_cannot_run(personas, client, name, content, workers, message):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.urls import reverse

    client.force_login(personas.instructor)
    url = reverse("admin:workshops_workshop_rehearse", args=[personas.workshop.pk])
    with mock.patch("rq.Worker.count", return_value=workers):
        answer = client.post(
            url, {"prompts": [SimpleUploadedFile(name, content)], "participants": "2", "timeout": "60"}
        )
    assert answer.status_code == 200 and message in answer.content.decode().replace("&#x27;", "'")
    assert not Workshop.objects.filter(slug__contains="rehearsal").exists()
    from jobs.scheduler import dispatch_queue

    assert dispatch_queue().count == 0
