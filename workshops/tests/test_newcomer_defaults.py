"""What a newcomer meets on the two-command path: a workshop created from the command line gets the only GPU
backend there is (and is refused, or warned about loudly, when that is not one); a workshop without a backend
says so on its dashboard and in ``seat_frontends status``; the hub serves the icon a seat serves too
(workshops/seat_frontend/tests/test_without_a_hub.py)."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from gpu_backends.models import GpuBackend
from workshops.models import Workshop
from workshops.seat_frontend.app import OUR_STATIC

ICON = OUR_STATIC / "favicon.ico"


def create(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("create_workshop", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def backend(name: str, **fields) -> GpuBackend:
    return GpuBackend.objects.create(name=name, kind=GpuBackend.Kind.SIMULATOR, url="http://127.0.0.1:9", **fields)


def backends_of(slug: str) -> list[str]:
    return list(Workshop.objects.get(slug=slug).backends.values_list("name", flat=True))


# --- create_workshop without --backend ---------------------------------------------------------------


@pytest.mark.django_db
def test_with_one_backend_a_new_workshop_gets_it():
    backend("simulator")
    out, err = create("demo2", "--seats", "3")
    assert backends_of("demo2") == ["simulator"]
    assert "GPU backend: simulator" in out and not err


@pytest.mark.django_db
def test_a_switched_off_backend_is_not_taken_by_default():
    backend("simulator")
    backend("old-box", enabled=False)
    create("demo2", "--seats", "1")
    assert backends_of("demo2") == ["simulator"]


@pytest.mark.django_db
def test_with_two_backends_the_command_asks_which_and_creates_nothing():
    backend("h200-spot", order=0)
    backend("h200-on-demand", order=1)
    with pytest.raises(CommandError) as refused:
        create("demo2", "--seats", "3")
    message = str(refused.value)
    assert "h200-spot" in message and "h200-on-demand" in message and "--backend NAME" in message
    assert not Workshop.objects.filter(slug="demo2").exists()

    create("demo2", "--seats", "3", "--backend", "h200-on-demand", "--backend", "h200-spot")
    assert sorted(backends_of("demo2")) == ["h200-on-demand", "h200-spot"]


@pytest.mark.django_db
def test_an_unknown_backend_is_refused_naming_the_ones_there_are():
    backend("simulator")
    with pytest.raises(CommandError, match=r"No GPU backend called 'gpu'.*simulator"):
        create("demo2", "--seats", "1", "--backend", "gpu")
    assert not Workshop.objects.exists()


@pytest.mark.django_db
def test_with_no_backend_at_all_the_workshop_is_created_with_a_loud_warning():
    _, err = create("demo2", "--seats", "2")
    assert backends_of("demo2") == []
    assert "No GPU backend exists" in err and "add_backend" in err and "--workshop demo2" in err


# --- where a workshop without a backend says so ------------------------------------------------------


@pytest.mark.django_db
def test_the_status_command_says_a_workshop_has_no_gpu_backend():
    create("demo2", "--seats", "1")
    out = StringIO()
    call_command("seat_frontends", "status", "--workshop", "demo2", stdout=out)
    assert "No GPU backend: jobs cannot run" in out.getvalue()

    backend("simulator")
    Workshop.objects.get(slug="demo2").backends.add(GpuBackend.objects.get(name="simulator"))
    out = StringIO()
    call_command("seat_frontends", "status", "--workshop", "demo2", stdout=out)
    assert "GPU backends: simulator" in out.getvalue() and "No GPU backend" not in out.getvalue()


def _banner_hidden(html: str) -> bool:
    start = html.index('id="no-backend-banner"')
    return " hidden" in html[start : html.index(">", start)]


def test_the_dashboard_of_a_workshop_without_backend_says_so(personas):
    client = Client()
    client.force_login(personas.instructor)
    url = reverse("dashboard:page", args=["ws1"])
    assert _banner_hidden(client.get(url).content.decode())  # ws1 has the simulator

    personas.workshop.backends.clear()
    page = client.get(url).content.decode()
    assert not _banner_hidden(page) and "none is attached to this workshop" in page
    # The page's script shows or hides it from each snapshot, by the same list.
    assert client.get(reverse("dashboard:snapshot", args=["ws1"])).json()["backends"] == []


# --- the icon ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_hub_serves_an_icon_to_anyone():
    response = Client().get("/favicon.ico")
    assert response.status_code == 200 and response["Content-Type"] == "image/x-icon"
    assert response.content == ICON.read_bytes() and response.content[:4] == b"\x00\x00\x01\x00"
