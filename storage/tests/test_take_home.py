"""Participants take their work home: their own outputs page (one file or all as a ZIP), a personal link that
works without signing in until it expires or is revoked, the workshop's retention, and one participant's data
deleted on request — from the participant's side, the admin and ``manage.py``."""

from __future__ import annotations

import io
import json
import re
import zipfile
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone

from storage.models import Artifact, OutputLink, SeatInput
from storage.stores import StorageError, default_store
from storage.take_home import expire_outputs
from storage.tests.test_gallery import MP4, PNG, body, make_artifact
from workshops.models import AuditEntry, SeatFrontend, Workshop

pytestmark = pytest.mark.django_db


@pytest.fixture
def outputs(personas):
    """Two outputs of seat A, one of seat B, one of the other workshop's seat."""
    return {
        "a_png": make_artifact(personas.seat_a, "portrait_00001_.png", PNG, "image/png"),
        "a_mp4": make_artifact(personas.seat_a, "clip_00001_.mp4", MP4, "video/mp4"),
        "b_png": make_artifact(personas.seat_b, "b_00001_.png", PNG, "image/png"),
        "c_png": make_artifact(personas.seat_c, "c_00001_.png", PNG, "image/png"),
    }


@pytest.fixture
def participant(personas) -> Client:
    client = Client()
    assert client.login(username="ws1-user001", password="pw-participant")
    return client


def zip_names(data: bytes) -> list[str]:
    return sorted(zipfile.ZipFile(io.BytesIO(data)).namelist())


# --- signed in ------------------------------------------------------------------------------------------------


def test_a_participant_sees_and_downloads_only_their_own_outputs(participant, outputs):
    page = participant.get("/outputs/")
    html = page.content.decode()
    assert page.status_code == 200 and page["Cache-Control"] == "private, no-store"
    assert page["Referrer-Policy"] == "same-origin"  # "no-referrer" would make its form post Origin: null
    assert "portrait_00001_.png" in html and "clip_00001_.mp4" in html
    assert "b_00001_.png" not in html and "c_00001_.png" not in html
    assert f"/outputs/file/{outputs['a_png'].pk}?download=1" in html and "/outputs/all.zip" in html
    one = participant.get(f"/outputs/file/{outputs['a_png'].pk}?download=1")
    assert body(one) == PNG and one["Content-Disposition"].startswith("attachment;")
    assert 'filename="portrait_00001_.png"' in one["Content-Disposition"]
    inline = participant.get(f"/outputs/file/{outputs['a_png'].pk}")
    assert body(inline) == PNG and "attachment" not in inline.get("Content-Disposition", "")
    for other in ("b_png", "c_png"):
        assert participant.get(f"/outputs/file/{outputs[other].pk}").status_code == 404
    archive = participant.get("/outputs/all.zip")
    assert archive["Content-Disposition"] == 'attachment; filename="ws1-user001-outputs.zip"'
    names = zip_names(body(archive))
    assert len(names) == 2 and all(name.startswith("user001/") for name in names)


def test_without_a_seat_there_is_nothing_to_see(client, personas, outputs):
    assert client.get("/outputs/")["Location"].startswith("/login/?next=/outputs/")
    assert client.get(f"/outputs/file/{outputs['a_png'].pk}").status_code == 404
    assert client.get("/outputs/all.zip").status_code == 404


# --- the personal link ------------------------------------------------------------------------------------------


def test_a_participants_own_link_works_signed_out_until_revoked(participant, personas, outputs):
    page = participant.post("/outputs/link").content.decode()
    (url,) = re.findall(r'id="take-home-link" type="text" readonly value="([^"]+)"', page)
    expires = (timezone.now() + timedelta(days=30)).strftime("%-d %B %Y")
    assert f"until {expires}. Anyone who has it" in " ".join(page.split())  # no end set: 30 days
    path = url.split("testserver", 1)[-1] if "testserver" in url else "/" + url.split("/", 3)[3]
    anonymous = Client()
    shown = anonymous.get(path)
    assert shown.status_code == 200 and "portrait_00001_.png" in shown.content.decode()
    assert shown["Referrer-Policy"] == "no-referrer" and "noindex" in shown["X-Robots-Tag"]
    assert body(anonymous.get(f"{path}file/{outputs['a_mp4'].pk}?download=1")) == MP4
    assert anonymous.get(f"{path}file/{outputs['b_png'].pk}").status_code == 404  # only that seat's
    assert len(zip_names(body(anonymous.get(f"{path}all.zip")))) == 2
    link = OutputLink.objects.get(seat=personas.seat_a)
    assert link.created_by == "participant" and url.split("/")[-2] not in link.token_hash
    OutputLink.objects.filter(pk=link.pk).update(revoked_at=timezone.now())
    assert anonymous.get(path).status_code == 404
    assert anonymous.get(f"{path}file/{outputs['a_png'].pk}").status_code == 404


def test_a_link_ends_with_its_expiry_and_with_the_workshops_retention(personas, outputs):
    raw = OutputLink.issue(personas.seat_a, timezone.now() + timedelta(days=3))
    client = Client()
    assert client.get(f"/take-home/{raw}/").status_code == 200
    # The workshop ended 10 days ago and keeps outputs 7 days: the link is dead, whatever its own expiry.
    Workshop.objects.filter(pk=personas.workshop.pk).update(
        ends_at=timezone.now() - timedelta(days=10), outputs_kept_days=7
    )
    assert client.get(f"/take-home/{raw}/").status_code == 404
    Workshop.objects.filter(pk=personas.workshop.pk).update(outputs_kept_days=30)
    assert client.get(f"/take-home/{raw}/").status_code == 200
    OutputLink.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert client.get(f"/take-home/{raw}/").status_code == 404
    assert client.get("/take-home/not-a-token/").status_code == 404


def test_the_instructor_issues_and_revokes_links_from_the_seat_list(personas, outputs):
    instructor = Client()
    instructor.force_login(personas.instructor)
    Workshop.objects.filter(pk=personas.workshop.pk).update(ends_at=timezone.now(), outputs_kept_days=14)
    seats = [personas.seat_a.pk, personas.seat_b.pk]
    sheet = instructor.post(
        "/admin/workshops/seat/", {"action": "take_home_links", "_selected_action": seats}
    ).content.decode()
    urls = re.findall(r'<a href="(http[^"]+/take-home/[^"]+/)">', sheet)
    assert len(urls) == 2 and sheet.count('class="segno"') == 2  # a QR code per link
    link = OutputLink.objects.get(seat=personas.seat_a)
    assert abs((link.expires_at - (timezone.now() + timedelta(days=14))).total_seconds()) < 60  # the retention
    assert AuditEntry.objects.get(action="seat.take_home_link").details["seats"] == ["user001", "user002"]
    instructor.post("/admin/workshops/seat/", {"action": "revoke_take_home_links", "_selected_action": seats[:1]})
    assert not OutputLink.objects.get(seat=personas.seat_a).is_usable()
    assert OutputLink.objects.get(seat=personas.seat_b).is_usable()


# --- deleted on request -----------------------------------------------------------------------------------------


def test_one_participants_data_is_deleted_on_request_and_nobody_elses(personas, outputs):
    instructor = Client()
    instructor.force_login(personas.instructor)
    default_store().put("inputs/ws1/user001/photo.png", [PNG])
    SeatInput.objects.create(
        seat=personas.seat_a, name="photo.png", key="inputs/ws1/user001/photo.png", size=len(PNG),
        sha256="0" * 64, content_type="image/png",
    )  # fmt: skip
    OutputLink.issue(personas.seat_a, timezone.now() + timedelta(days=3))
    SeatFrontend.objects.create(seat=personas.seat_a, desired=SeatFrontend.Desired.STOPPED)
    action = {"action": "delete_participant_data", "_selected_action": [personas.seat_a.pk]}
    confirm = instructor.post("/admin/workshops/seat/", action).content.decode()
    assert "for good" in confirm and Artifact.objects.filter(job__seat=personas.seat_a).count() == 2
    instructor.post("/admin/workshops/seat/", {**action, "confirm": "yes"})
    store = default_store()
    assert not Artifact.objects.filter(job__seat=personas.seat_a).exists()
    for key in (outputs["a_png"].key, outputs["a_mp4"].key, "inputs/ws1/user001/photo.png"):
        with pytest.raises(StorageError):
            store.open(key)
    assert not SeatInput.objects.filter(seat=personas.seat_a).exists()
    assert not OutputLink.objects.filter(seat=personas.seat_a).exists()
    frontend = SeatFrontend.objects.get(seat=personas.seat_a)
    assert frontend.reset_requested == 1 and frontend.desired == SeatFrontend.Desired.STOPPED  # wiped, not started
    assert personas.seat_a.jobs.count() == 2  # the jobs' history stays, without files
    assert body(instructor.get(f"/admin/outputs/file/{outputs['b_png'].pk}")) == PNG  # the neighbour's stays
    entry = AuditEntry.objects.get(action="seat.delete_data")
    assert entry.actor == personas.instructor and entry.details["outputs"] == 2 and entry.details["uploads"] == 1


def test_the_command_line_deletes_only_with_yes(personas, outputs):
    with pytest.raises(CommandError, match="Run it again with --yes"):
        call_command("seats", "ws1", "delete-data", "user001", stdout=StringIO())
    assert Artifact.objects.filter(job__seat=personas.seat_a).count() == 2
    out = StringIO()
    call_command("seats", "ws1", "delete-data", "user001", "--yes", stdout=out)
    assert "ws1/user001: deleted 2 outputs, 0 uploads and 0 take-home link(s)" in out.getvalue()
    assert AuditEntry.objects.get(action="seat.delete_data").actor_name.startswith("manage.py seats delete-data")


def test_the_command_line_writes_every_seats_link_to_a_private_file(personas, outputs, tmp_path):
    target = tmp_path / "links.json"
    out = StringIO()
    call_command("seats", "ws1", "take-home", "--json", str(target), stdout=out)
    rows = json.loads(target.read_text())["links"]
    assert [row["seat"] for row in rows] == ["user001", "user002"] and oct(target.stat().st_mode)[-3:] == "600"
    assert Client().get("/" + rows[1]["url"].split("/", 3)[3]).status_code == 200
    with pytest.raises(CommandError, match="exists already"):
        call_command("seats", "ws1", "take-home", "--json", str(target), stdout=StringIO())
    call_command("seats", "ws1", "revoke-links", "user002", stdout=StringIO())
    assert Client().get("/" + rows[1]["url"].split("/", 3)[3]).status_code == 404


def test_no_link_is_issued_once_the_outputs_are_gone(personas):
    Workshop.objects.filter(pk=personas.workshop.pk).update(
        archived_at=timezone.now() - timedelta(days=31), outputs_kept_days=30
    )
    with pytest.raises(CommandError, match="were kept until"):
        call_command("seats", "ws1", "take-home", "user001", stdout=StringIO())


# --- retention ------------------------------------------------------------------------------------------------


def test_outputs_are_deleted_when_the_workshops_retention_runs_out(personas, outputs):
    now = timezone.now()
    Workshop.objects.filter(pk=personas.workshop.pk).update(ends_at=now - timedelta(days=8), outputs_kept_days=7)
    # The other workshop has no end yet: its outputs stay whatever its retention.
    Workshop.objects.filter(pk=personas.other_workshop.pk).update(outputs_kept_days=1)
    assert expire_outputs(now, dry_run=True) == {"ws1": 3} and Artifact.objects.count() == 4
    assert expire_outputs(now - timedelta(days=2)) == {}  # a day before the retention ended: nothing
    assert expire_outputs(now) == {"ws1": 3}
    assert list(Artifact.objects.values_list("filename", flat=True)) == ["c_00001_.png"]
    with pytest.raises(StorageError):
        default_store().open(outputs["a_png"].key)
    entry = AuditEntry.objects.get(action="workshop.outputs_expired")
    assert entry.actor_name == "" and entry.details["deleted"] == 3
    assert expire_outputs(now) == {}  # nothing left to delete
    out = StringIO()
    call_command("expire_outputs", "--dry-run", stdout=out)
    assert "No workshop's outputs are past their retention." in out.getvalue()
