"""A job's per-step trace (jobs.trace) and ``manage.py trace_job``: where a job's time went, step by step."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command

from jobs import trace
from jobs.models import Job
from tests.fixtures import run_worker
from tests.recorded import TINY_PATH, load

TINY = load(TINY_PATH)

pytestmark = pytest.mark.django_db(transaction=True)

# A job that runs to its end passes every step, in the order trace.STEPS documents (one output file here).
ORDER = list(trace.STEPS)


def submit(client, seat) -> Job:
    response = client.post(
        "/api/hub/prompt",
        data=json.dumps({"prompt": TINY}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {seat.issue_token()}",
    )
    assert response.status_code == 200, response.content
    return Job.objects.get(prompt_id=response.json()["prompt_id"])


def test_a_traced_job_notes_every_step_in_order(client, personas, sim, settings):
    settings.COMFYUME = {**settings.COMFYUME, "TRACE_JOBS": True}
    job = submit(client, personas.seat_a)

    run_worker()

    steps = trace.read(job.pk)
    assert [step for step, _ in steps] == ORDER
    times = [at for _, at in steps]
    assert times == sorted(times) and times[-1] - times[0] < 60
    # Written once per process part (the web's request, the worker's dispatch): nothing is left in memory.
    assert str(job.pk) not in trace._pending


def test_tracing_off_notes_nothing(client, personas, sim, settings):
    settings.COMFYUME = {**settings.COMFYUME, "TRACE_JOBS": False}
    job = submit(client, personas.seat_a)
    run_worker()

    assert Job.objects.get(pk=job.pk).status == Job.Status.SUCCEEDED
    assert trace.read(job.pk) == [] and not trace._pending


def test_trace_job_prints_the_steps_by_id_and_prompt_id(client, personas, sim, settings):
    settings.COMFYUME = {**settings.COMFYUME, "TRACE_JOBS": True}
    job = submit(client, personas.seat_a)
    run_worker()

    for name in (str(job.pk), str(job.prompt_id)):
        out = io.StringIO()
        call_command("trace_job", name, stdout=out)
        lines = out.getvalue().splitlines()
        assert lines[0] == f"Job {job.pk} ({job.prompt_id}), succeeded:"
        assert [line.split()[0] for line in lines[1:]] == ORDER
        assert lines[1].split()[1] == "+0.0"


@pytest.mark.parametrize(
    ("given", "error"),
    [
        ("not-a-job", "'not-a-job' is neither a job id nor a prompt id."),
        ("987654", "No job 987654."),
        ("00000000-0000-0000-0000-000000000000", "No job 00000000-0000-0000-0000-000000000000."),
    ],
)
def test_trace_job_says_what_is_wrong_with_its_argument(db, given, error):
    with pytest.raises(CommandError) as raised:
        call_command("trace_job", given)
    assert str(raised.value) == error


def test_trace_job_of_an_untraced_job_says_why(client, personas, sim, settings):
    settings.COMFYUME = {**settings.COMFYUME, "TRACE_JOBS": False}
    job = submit(client, personas.seat_a)

    with pytest.raises(CommandError) as raised:
        call_command("trace_job", str(job.pk))
    assert "COMFYUME_TRACE_JOBS was off" in str(raised.value)


def test_a_trace_that_cannot_be_saved_never_fails_the_job(client, personas, sim, settings, monkeypatch):
    settings.COMFYUME = {**settings.COMFYUME, "TRACE_JOBS": True}

    def refuse() -> None:
        raise ConnectionError("Redis is away")

    monkeypatch.setattr(trace, "counters", refuse)
    job = submit(client, personas.seat_a)
    run_worker()

    assert Job.objects.get(pk=job.pk).status == Job.Status.SUCCEEDED
    assert not trace._pending
