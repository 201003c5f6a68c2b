"""Archiving a workshop from the admin: the queue closes, waiting jobs are cancelled, seats stop, outputs stay."""

from __future__ import annotations

import pytest

from jobs.models import Job
from jobs.services import SubmissionRejected, submit_prompt
from workshops import frontends
from workshops.models import AuditEntry, SeatFrontend, Workshop

pytestmark = pytest.mark.django_db

PROMPT = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 1}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "a"}},
}


def test_archive_closes_the_queue_cancels_waiting_jobs_and_stops_the_seats(client, personas):
    Workshop.objects.filter(pk=personas.workshop.pk).update(paused=True)  # so the job waits
    job = submit_prompt(personas.seat_a, {"prompt": PROMPT})
    frontends.start_seats(personas.workshop)
    client.force_login(personas.instructor)
    answer = client.post(
        "/admin/workshops/workshop/",
        {"action": "archive", "_selected_action": [personas.workshop.pk, personas.other_workshop.pk]},
        follow=True,
    )
    said = " ".join(str(m) for m in answer.context["messages"])
    assert "ws1 archived" in said and "ws2 archived" in said, said
    personas.workshop.refresh_from_db()
    job.refresh_from_db()
    assert personas.workshop.archived_at is not None
    assert job.status == Job.Status.CANCELLED and "archived" in job.status_reason
    desired = set(SeatFrontend.objects.filter(seat__workshop=personas.workshop).values_list("desired", flat=True))
    assert desired == {SeatFrontend.Desired.STOPPED}
    with pytest.raises(SubmissionRejected) as refused:
        submit_prompt(personas.seat_b, {"prompt": PROMPT})
    assert refused.value.status == 403
    entry = AuditEntry.objects.get(action="workshop.archive", workshop=personas.workshop)
    assert entry.details["cancelled_jobs"] == 1
    # Archiving again changes nothing and records nothing.
    client.post("/admin/workshops/workshop/", {"action": "archive", "_selected_action": [personas.workshop.pk]})
    assert AuditEntry.objects.filter(action="workshop.archive", workshop=personas.workshop).count() == 1
