"""A change made in the admin's forms reaches the live views as the dashboard's own buttons do: pausing a
workshop in its change form tells its dashboard and its seats' banners; editing a GPU backend (its change form or
the list's enabled column) tells the dashboard of every workshop using it."""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import pytest
from django.contrib import admin
from django.test import RequestFactory

from gpu_backends.models import GpuBackend
from jobs import events
from workshops.models import Workshop

pytestmark = pytest.mark.django_db


def _save(model, obj, changed: list[str], personas, capture) -> list:
    request = RequestFactory().post("/admin/")
    request.user = personas.instructor
    request._messages = mock.MagicMock()  # type: ignore[attr-defined]
    model_admin = admin.site._registry[model]
    with mock.patch.object(events, "publish", autospec=True) as publish, capture(execute=True):
        model_admin.save_model(request, obj, SimpleNamespace(changed_data=changed), change=True)
    return [(set(call.args[0]), call.args[1]["message"]) for call in publish.call_args_list]


def test_a_pause_saved_in_the_workshop_form_reaches_the_dashboard_and_every_seat(
    personas, django_capture_on_commit_callbacks
):
    workshop = personas.workshop
    workshop.paused = True
    sent = _save(Workshop, workshop, ["paused", "title"], personas, django_capture_on_commit_callbacks)
    groups = {events.workshop_group(workshop.pk)} | {events.seat_group(s.pk) for s in workshop.seats.all()}
    assert (groups, {"type": "comfyume.queue", "data": {"change": "pause", "paused": True}}) in sent
    assert Workshop.objects.get(pk=workshop.pk).paused is True


def test_queue_settings_saved_in_the_workshop_form_reach_the_dashboard_only(
    personas, django_capture_on_commit_callbacks
):
    workshop = personas.workshop
    workshop.max_running_per_seat = 3
    sent = _save(Workshop, workshop, ["max_running_per_seat"], personas, django_capture_on_commit_callbacks)
    message = {"type": "comfyume.queue", "data": {"change": "settings", "max_running_per_seat": 3}}
    assert sent == [({events.workshop_group(workshop.pk)}, message)]


def test_a_title_change_tells_no_one(personas, django_capture_on_commit_callbacks):
    personas.workshop.title = "New title"
    assert _save(Workshop, personas.workshop, ["title"], personas, django_capture_on_commit_callbacks) == []


def test_a_backend_switched_off_in_the_admin_reaches_every_dashboard_using_it(
    personas, django_capture_on_commit_callbacks
):
    backend = personas.backend
    backend.enabled = False
    sent = _save(GpuBackend, backend, ["enabled"], personas, django_capture_on_commit_callbacks)
    groups = {events.workshop_group(personas.workshop.pk), events.workshop_group(personas.other_workshop.pk)}
    assert sent == [(groups, {"type": "comfyume.queue", "data": {"change": "backend", "backend": "sim"}})]
