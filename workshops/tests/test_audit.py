"""The audit log: every instructor action in the admin leaves one entry saying who, what, when and on what;
the log itself cannot be changed through the admin, and its page costs the same queries however long it is."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django import forms
from django.contrib.auth import get_user_model
from django.db import connection
from django.forms.widgets import CheckboxInput, MultiWidget
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from gpu_backends.models import GpuBackend
from jobs.models import Job
from workshops import audit
from workshops.models import Announcement, AuditEntry, SeatFrontend, WorkflowTemplate, Workshop

TINY = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}


@pytest.fixture
def instructor(personas) -> Client:
    """The instructor signed in to the admin, as in the browser."""
    client = Client()
    assert client.login(username="instructor", password="pw-instructor")
    return client


def form_data(*forms_: forms.BaseForm) -> dict[str, Any]:
    """What a browser sends back for these rendered admin forms when nothing is edited."""
    data: dict[str, Any] = {}
    for form in forms_:
        for bound in form:
            value = bound.value()
            widget = bound.field.widget
            if isinstance(widget, MultiWidget):  # the admin's split date and time
                for i, part in enumerate(widget.decompress(value) or []):
                    data[f"{bound.html_name}_{i}"] = "" if part is None else str(part)
            elif isinstance(widget, CheckboxInput):
                if value:
                    data[bound.html_name] = "on"
            elif isinstance(bound.field, forms.ModelMultipleChoiceField | forms.MultipleChoiceField):
                data[bound.html_name] = [str(v) for v in value or []]
            else:
                data[bound.html_name] = "" if value is None else str(value)
    return data


def change_form_data(client: Client, url: str) -> dict[str, Any]:
    """The admin add/change form at ``url`` (with its inlines) as the browser would submit it unedited."""
    response = client.get(url)
    assert response.status_code == 200
    found = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        found += [inline.formset.management_form, *inline.formset.forms]
    return form_data(*found)


def run_action(client: Client, model: str, action: str, objects: list, **extra: str):
    response = client.post(
        reverse(f"admin:{model}_changelist"),
        {"action": action, "_selected_action": [o.pk for o in objects], **extra},
    )
    assert response.status_code == 302, response.content[:500]
    return response


def entries(action: str) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(action=action).order_by("id"))


def assert_by_instructor(entry: AuditEntry, personas) -> None:
    assert entry.actor == personas.instructor
    assert entry.actor_name == "instructor"


# --- Actions -----------------------------------------------------------------------------------------


def test_cancel_action_records_each_job_with_what_came_of_it(instructor, personas):
    seat = personas.seat_a
    queued = Job.objects.create(workshop=personas.workshop, seat=seat, prompt=TINY)
    running = Job.objects.create(workshop=personas.workshop, seat=seat, prompt=TINY, status=Job.Status.RUNNING)
    done = Job.objects.create(workshop=personas.workshop, seat=seat, prompt=TINY, status=Job.Status.SUCCEEDED)

    run_action(instructor, "jobs_job", "cancel_selected", [queued, running, done])

    by_job = {e.target_id: e for e in entries("job.cancel")}
    assert set(by_job) == {str(queued.pk), str(running.pk), str(done.pk)}
    for job in (queued, running, done):
        entry = by_job[str(job.pk)]
        assert_by_instructor(entry, personas)
        assert entry.workshop == personas.workshop
        assert entry.target_type == "jobs.job"
    assert by_job[str(queued.pk)].summary == f"Cancelled job #{queued.pk} of ws1/user001"
    assert by_job[str(queued.pk)].details == {"result": "cancelled", "status": "cancelled"}
    assert by_job[str(running.pk)].details == {"result": "stop_requested", "status": "running"}
    assert by_job[str(done.pk)].details == {"result": "already_finished", "status": "succeeded"}
    assert by_job[str(done.pk)].summary == f"Did not cancel job #{done.pk} of ws1/user001: it had already ended (Done)"
    # The action still does its work.
    queued.refresh_from_db()
    running.refresh_from_db()
    assert queued.status == Job.Status.CANCELLED
    assert running.cancel_requested_at is not None


@pytest.mark.parametrize(
    ("action", "code", "summary", "desired"),
    [
        ("frontend_start_seats", "seat.start", "Started the ComfyUI of {seat}", SeatFrontend.Desired.RUNNING),
        ("frontend_stop_seats", "seat.stop", "Stopped the ComfyUI of {seat}", SeatFrontend.Desired.STOPPED),
        ("frontend_restart_seats", "seat.restart", "Restarted the ComfyUI of {seat}", SeatFrontend.Desired.RUNNING),
        ("frontend_reset_seats", "seat.reset", "Reset the ComfyUI of {seat} (", SeatFrontend.Desired.RUNNING),
    ],
)
def test_seat_frontend_actions_record_one_entry_per_seat(instructor, personas, action, code, summary, desired):
    seats = [personas.seat_a, personas.seat_b]
    SeatFrontend.objects.create(seat=personas.seat_a, port=47001, desired=SeatFrontend.Desired.STOPPED)
    SeatFrontend.objects.create(seat=personas.seat_b, port=47002, desired=SeatFrontend.Desired.RUNNING)

    run_action(instructor, "workshops_seat", action, seats)

    found = entries(code)
    assert [e.target_id for e in found] == [str(s.pk) for s in seats]
    for entry, seat in zip(found, seats, strict=True):
        assert_by_instructor(entry, personas)
        assert entry.summary.startswith(summary.format(seat=seat))
        assert entry.workshop == personas.workshop
        assert (entry.target_type, entry.target_repr) == ("workshops.seat", str(seat))
    assert set(SeatFrontend.objects.values_list("desired", flat=True)) == {desired}
    assert AuditEntry.objects.count() == 2  # nothing else was recorded for the action


def test_start_comfyuis_records_each_workshop(instructor, personas):
    run_action(instructor, "workshops_workshop", "start_comfyuis", [personas.workshop])

    [entry] = AuditEntry.objects.all()
    assert_by_instructor(entry, personas)
    assert entry.action == "workshop.start_comfyuis"
    assert entry.summary == "Started the ComfyUI of every seat of ws1 (2 seats)"
    assert entry.workshop == personas.workshop
    assert (entry.target_type, entry.target_id) == ("workshops.workshop", str(personas.workshop.pk))
    assert SeatFrontend.objects.filter(seat__workshop=personas.workshop).count() == 2


def test_push_templates_records_each_workshop_with_its_templates(instructor, personas):
    template = WorkflowTemplate.objects.create(name="txt2img", workflow={"nodes": []})
    personas.workshop.templates.add(template)

    run_action(
        instructor, "workshops_workshop", "push_workflow_templates", [personas.workshop, personas.other_workshop]
    )

    found = entries("template.push")
    assert {e.workshop for e in found} == {personas.workshop, personas.other_workshop}
    by_slug = {e.workshop.slug: e for e in found}
    assert by_slug["ws1"].summary == "Sent the workflow templates of ws1 to every seat (1 template)"
    assert by_slug["ws1"].details == {"templates": ["txt2img"]}
    assert by_slug["ws2"].details == {"templates": []}
    assert_by_instructor(by_slug["ws1"], personas)


def test_test_connection_records_whether_each_backend_answered(instructor, personas):
    dead = GpuBackend.objects.create(name="dead", kind=GpuBackend.Kind.SIMULATOR, url="http://127.0.0.1:9")

    run_action(instructor, "gpu_backends_gpubackend", "test_connection", [personas.backend, dead])

    by_name = {e.target_repr: e for e in entries("backend.test")}
    assert set(by_name) == {"sim", "dead"}
    ok, failed = by_name["sim"], by_name["dead"]
    assert_by_instructor(ok, personas)
    assert ok.details["reachable"] is True
    assert ok.details["node_types"] > 0
    assert ok.summary == f"Tested GPU backend sim: ready, {ok.details['node_types']} node types"
    assert failed.details["reachable"] is False
    assert failed.details["state"] == GpuBackend.State.FAILING
    assert failed.summary.startswith("Tested GPU backend dead: not reachable — ")
    assert ok.workshop is None  # a backend serves several workshops


# --- Saves -------------------------------------------------------------------------------------------


def test_workshop_change_records_old_and_new_of_the_changed_fields_only(instructor, personas):
    second = GpuBackend.objects.create(name="sim2", kind=GpuBackend.Kind.SIMULATOR, url="http://127.0.0.1:9")
    url = reverse("admin:workshops_workshop_change", args=[personas.workshop.pk])
    data = change_form_data(instructor, url)
    data.update(paused="on", max_queued_per_seat="3", backends=[str(personas.backend.pk), str(second.pk)])

    response = instructor.post(url, data)

    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    [entry] = AuditEntry.objects.all()
    assert_by_instructor(entry, personas)
    assert entry.action == "workshop.change"
    assert entry.workshop == personas.workshop
    assert (entry.target_type, entry.target_id) == ("workshops.workshop", str(personas.workshop.pk))
    assert entry.details == {
        "changes": {
            "paused": {"old": False, "new": True},
            "max_queued_per_seat": {"old": 5, "new": 3},
            "backends": {"old": ["sim"], "new": ["sim", "sim2"]},
        }
    }
    assert entry.summary.startswith("Changed workshop ws1: ")
    assert "paused: no → yes" in entry.summary
    assert "max queued per seat: 5 → 3" in entry.summary
    personas.workshop.refresh_from_db()
    assert personas.workshop.paused


def test_workshop_change_records_its_seats_edited_inline(instructor, personas):
    url = reverse("admin:workshops_workshop_change", args=[personas.workshop.pk])
    data = change_form_data(instructor, url)
    index = next(i for i in range(2) if data[f"seats-{i}-id"] == str(personas.seat_a.pk))
    data[f"seats-{index}-display_name"] = "Ada"

    assert instructor.post(url, data).status_code == 302

    [entry] = AuditEntry.objects.all()
    assert entry.details == {
        "changes": {},
        "inlines": {"seats": {"changed": {"ws1/user001": {"display_name": {"old": "", "new": "Ada"}}}}},
    }
    assert entry.summary == "Changed workshop ws1; seats: 1 changed"


def test_saving_an_unchanged_workshop_records_nothing(instructor, personas):
    url = reverse("admin:workshops_workshop_change", args=[personas.workshop.pk])
    assert instructor.post(url, change_form_data(instructor, url)).status_code == 302
    assert not AuditEntry.objects.exists()


def test_adding_a_workshop_is_recorded(instructor, personas):
    url = reverse("admin:workshops_workshop_add")
    data = change_form_data(instructor, url)
    data.update(slug="ws3", title="Workshop three", queue_policy="fifo")

    assert instructor.post(url, data).status_code == 302

    [entry] = AuditEntry.objects.all()
    workshop = Workshop.objects.get(slug="ws3")
    assert (entry.action, entry.summary, entry.workshop) == ("workshop.add", "Added workshop ws3", workshop)
    assert entry.details["changes"]["queue_policy"] == {"old": "round_robin", "new": "fifo"}
    assert_by_instructor(entry, personas)


def test_announcements_are_recorded_as_posted_edited_and_withdrawn(instructor, personas):
    add_url = reverse("admin:workshops_announcement_add")
    data = {"workshop": personas.workshop.pk, "message": "Break until 14:00", "active": "on"}
    assert instructor.post(add_url, data).status_code == 302
    note = Announcement.objects.get()
    change_url = reverse("admin:workshops_announcement_change", args=[note.pk])
    assert instructor.post(change_url, {**data, "message": "Break until 14:15"}).status_code == 302
    unticked = {"workshop": personas.workshop.pk, "message": "Break until 14:15"}  # "active" left out
    assert instructor.post(change_url, unticked).status_code == 302

    posted, edited, withdrawn = AuditEntry.objects.order_by("id")
    assert posted.action == "announcement.post"
    assert posted.summary == "Posted an announcement to ws1: “Break until 14:00”"
    assert edited.action == "announcement.edit"
    assert edited.details == {"changes": {"message": {"old": "Break until 14:00", "new": "Break until 14:15"}}}
    assert withdrawn.action == "announcement.withdraw"
    assert withdrawn.summary == "Withdrew the announcement “Break until 14:15” from ws1"
    assert withdrawn.details == {"changes": {"active": {"old": True, "new": False}}}
    for entry in (posted, edited, withdrawn):
        assert_by_instructor(entry, personas)
        assert entry.workshop == personas.workshop
        assert (entry.target_type, entry.target_id) == ("workshops.announcement", str(note.pk))


def test_template_change_records_the_workshops_it_was_sent_to(instructor, personas):
    template = WorkflowTemplate.objects.create(name="txt2img", workflow={"nodes": []})
    personas.workshop.templates.add(template)
    url = reverse("admin:workshops_workflowtemplate_change", args=[template.pk])
    big = {"nodes": [{"id": i, "type": "KSampler"} for i in range(100)]}
    data = {"name": "txt2img", "description": "Text to image", "workflow": json.dumps(big)}

    assert instructor.post(url, data).status_code == 302

    [entry] = AuditEntry.objects.all()
    assert entry.action == "template.change"
    assert entry.summary.endswith("; sent to the seats of ws1")
    assert entry.details["sent_to"] == ["ws1"]
    assert entry.details["changes"]["description"] == {"old": "", "new": "Text to image"}
    # A workflow is logged by its size, not copied into the log.
    assert entry.details["changes"]["workflow"]["old"] == {"nodes": []}
    assert entry.details["changes"]["workflow"]["new"].endswith("characters of JSON)")
    assert_by_instructor(entry, personas)


def test_backend_changes_are_recorded_from_the_form_and_the_list(instructor, personas):
    backend = personas.backend
    url = reverse("admin:gpu_backends_gpubackend_change", args=[backend.pk])
    data = change_form_data(instructor, url)
    data.update(max_concurrency="3", url="http://gpu:s3cret-pass@gpu-box:8188")
    assert instructor.post(url, data).status_code == 302

    changelist = instructor.get(reverse("admin:gpu_backends_gpubackend_changelist"))
    formset = changelist.context["cl"].formset
    data = form_data(formset.management_form, *formset.forms)
    data.update({"form-0-enabled": "", "_save": "Save"})
    assert instructor.post(reverse("admin:gpu_backends_gpubackend_changelist"), data).status_code == 302

    from_form, from_list = entries("backend.change")
    assert from_form.details["changes"]["max_concurrency"] == {"old": 1, "new": 3}
    assert from_form.details["changes"]["url"] == {"old": backend.url, "new": "http://gpu:***@gpu-box:8188"}
    assert "s3cret-pass" not in json.dumps(from_form.details) + from_form.summary
    assert from_list.details == {"changes": {"enabled": {"old": True, "new": False}}}
    assert from_list.summary == "Changed GPU backend sim: enabled: yes → no"
    assert_by_instructor(from_list, personas)


def test_changes_never_records_passwords_or_tokens():
    class AccountForm(forms.Form):
        username = forms.CharField()
        password = forms.CharField()
        seat_token = forms.CharField()

    form = AccountForm(
        {"username": "ada", "password": "new-secret", "seat_token": "tok-new"},
        initial={"username": "bob", "password": "old-secret", "seat_token": "tok-old"},
    )
    assert form.is_valid()

    found = audit.changes(form)

    assert found == {
        "username": {"old": "bob", "new": "ada"},
        "password": {"old": audit.HIDDEN, "new": audit.HIDDEN},
        "seat_token": {"old": audit.HIDDEN, "new": audit.HIDDEN},
    }


# --- Deletions ---------------------------------------------------------------------------------------


def test_deleting_through_the_admin_is_recorded_one_entry_per_object(instructor, personas):
    job = Job.objects.create(workshop=personas.workshop, seat=personas.seat_a, prompt=TINY)
    job_pk, seats = job.pk, [personas.seat_a, personas.seat_b]
    note = Announcement.objects.create(workshop=personas.workshop, message="Lunch")

    run_action(instructor, "jobs_job", "delete_selected", [job], post="yes")
    run_action(instructor, "workshops_seat", "delete_selected", seats, post="yes")
    delete_url = reverse("admin:workshops_announcement_delete", args=[note.pk])
    assert instructor.post(delete_url, {"post": "yes"}).status_code == 302

    [job_entry] = entries("job.delete")
    assert job_entry.summary == f"Deleted job #{job_pk} of ws1/user001"
    assert (job_entry.target_type, job_entry.target_id) == ("jobs.job", str(job_pk))
    seat_entries = entries("seat.delete")
    assert [e.target_repr for e in seat_entries] == ["ws1/user001", "ws1/user002"]
    [note_entry] = entries("announcement.delete")
    assert note_entry.summary == "Deleted announcement “Lunch”"
    for entry in (job_entry, *seat_entries, note_entry):
        assert_by_instructor(entry, personas)
        assert entry.workshop == personas.workshop
    assert not Job.objects.exists()
    assert not Announcement.objects.exists()


def test_deleting_a_workshop_keeps_its_entries_and_names_it(instructor, personas):
    earlier = audit.record(personas.instructor, "workshop.change", "Paused ws2", workshop=personas.other_workshop)
    pk = personas.other_workshop.pk

    response = instructor.post(reverse("admin:workshops_workshop_delete", args=[pk]), {"post": "yes"})

    assert response.status_code == 302
    assert not Workshop.objects.filter(pk=pk).exists()
    [entry] = entries("workshop.delete")
    assert entry.summary == "Deleted workshop ws2"
    assert (entry.target_type, entry.target_id, entry.target_repr) == ("workshops.workshop", str(pk), "Workshop two")
    assert entry.workshop is None
    earlier.refresh_from_db()
    assert earlier.workshop is None
    assert earlier.summary == "Paused ws2"


def test_an_entry_keeps_the_actor_name_after_the_account_is_deleted(personas):
    entry = audit.record(personas.instructor, "backend.test", "Tested GPU backend sim", target=personas.backend)
    get_user_model().objects.filter(pk=personas.instructor.pk).delete()

    entry.refresh_from_db()
    assert entry.actor is None
    assert entry.actor_name == "instructor"


# --- The log in the admin ----------------------------------------------------------------------------


def test_the_log_cannot_be_added_changed_or_deleted_through_the_admin(instructor, personas):
    entry = audit.record(personas.instructor, "workshop.change", "Paused ws1", workshop=personas.workshop)
    change_url = reverse("admin:workshops_auditentry_change", args=[entry.pk])

    assert instructor.get(change_url).status_code == 200  # readable
    assert instructor.post(change_url, {"summary": "Nothing happened"}).status_code == 403
    assert instructor.get(reverse("admin:workshops_auditentry_add")).status_code == 403
    delete_url = reverse("admin:workshops_auditentry_delete", args=[entry.pk])
    assert instructor.post(delete_url, {"post": "yes"}).status_code == 403
    instructor.post(
        reverse("admin:workshops_auditentry_changelist"),
        {"action": "delete_selected", "_selected_action": [entry.pk], "post": "yes"},
    )

    entry.refresh_from_db()
    assert entry.summary == "Paused ws1"
    assert AuditEntry.objects.count() == 1


def _fill_log(personas, count: int) -> None:
    User = get_user_model()
    actors = [personas.instructor, User.objects.create_user(f"assistant{count}", is_staff=True)]
    workshops = [personas.workshop, personas.other_workshop]
    audit.record_all(
        audit.build(
            actors[i % 2], "seat.restart", f"Restarted seat {i}", workshop=workshops[i % 2], target=personas.seat_a
        )
        for i in range(count)
    )


def test_the_log_page_costs_the_same_queries_for_5_and_50_entries(instructor, personas):
    url = reverse("admin:workshops_auditentry_changelist")

    def queries_for(count: int) -> int:
        AuditEntry.objects.all().delete()
        _fill_log(personas, count)
        with CaptureQueriesContext(connection) as captured:
            response = instructor.get(url)
        assert response.status_code == 200
        assert response.context["cl"].result_count == count
        assert b"Restarted seat 0" in response.content
        return len(captured)

    assert queries_for(5) == queries_for(50)


def test_a_template_picture_is_uploaded_checked_shown_and_removed_in_the_admin(instructor, personas):
    """The template's card in ComfyUI's Templates browser: uploaded in the admin, refused unless it is a picture,
    shown on the change page, removed with a tick; each change is logged without the bytes."""
    from io import BytesIO

    from django.core.files.uploadedfile import SimpleUploadedFile
    from PIL import Image

    template = WorkflowTemplate.objects.create(name="txt2img", workflow={"nodes": []})
    url = reverse("admin:workshops_workflowtemplate_change", args=[template.pk])
    data = {"name": "txt2img", "description": "", "workflow": json.dumps({"nodes": []})}
    webp = BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(webp, format="WEBP")

    refused = instructor.post(url, {**data, "picture": SimpleUploadedFile("card.webp", b"<svg onload=alert(1)>")})
    assert refused.status_code == 200 and "must be a PNG, JPEG or WebP image" in refused.content.decode()
    template.refresh_from_db()
    assert template.thumbnail_type == ""

    answer = instructor.post(url, {**data, "picture": SimpleUploadedFile("card.png", webp.getvalue())})
    assert answer.status_code == 302
    template.refresh_from_db()
    assert (bytes(template.thumbnail), template.thumbnail_type) == (webp.getvalue(), "image/webp")  # by content
    page = instructor.get(url).content.decode()
    picture_url = reverse("admin:workshops_workflowtemplate_picture", args=[template.pk])
    assert f'<img src="{picture_url}?v=' in page
    shown = instructor.get(picture_url)
    assert (shown["Content-Type"], shown.content) == ("image/webp", webp.getvalue())

    assert instructor.post(url, {**data, "remove_picture": "on"}).status_code == 302
    template.refresh_from_db()
    assert template.thumbnail_type == "" and instructor.get(picture_url).status_code == 404
    uploaded, removed = AuditEntry.objects.filter(action="template.change").order_by("pk")
    assert uploaded.details["changes"]["picture"] == {"old": None, "new": f"({len(webp.getvalue()):,} bytes)"}
    assert removed.details["changes"]["remove_picture"]["new"] is True
    assert "RIFF" not in json.dumps(uploaded.details)  # the bytes never reach the log
