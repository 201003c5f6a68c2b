"""The instructor creates a workshop with its seats in one admin form (a number, or names pasted or from a
CSV) and can issue new credentials; both end on the printable cards."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import authenticate
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from workshops.models import AuditEntry, JoinLink, Seat, SeatFrontend, WorkflowTemplate, Workshop, hash_token
from workshops.services import WorkshopError, parse_names

URL = "/admin/workshops/workshop/new-with-seats/"


@pytest.fixture
def instructor(personas) -> Client:
    client = Client()
    client.force_login(personas.instructor)
    return client


def cards(html: str) -> list[tuple[str, str]]:
    """(username, password) of every card on a printed sheet."""
    return re.findall(r"<dt>Username</dt><dd>([^<]+)</dd>\s*<dt>Password</dt><dd>([^<]+)</dd>", html)


def test_a_workshop_from_a_list_of_names(instructor, personas):
    template = WorkflowTemplate.objects.create(name="Flux", workflow={"nodes": []})
    response = instructor.post(
        URL,
        {
            "slug": "june",
            "title": "June masterclass",
            "names": "Ada Lovelace\n\nAgnès Varda\nAkira Kurosawa\n",
            "queue_policy": "round_robin",
            "backends": [personas.backend.pk],
            "default_template": template.pk,
        },
    )
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    html = response.content.decode()
    assert "Agnès Varda · seat user002" in html and html.count("<svg") == 3
    workshop = Workshop.objects.get(slug="june")
    assert list(workshop.seats.values_list("label", "display_name")) == [
        ("user001", "Ada Lovelace"),
        ("user002", "Agnès Varda"),
        ("user003", "Akira Kurosawa"),
    ]
    assert workshop.default_template == template and list(workshop.templates.all()) == [template]
    assert list(workshop.backends.all()) == [personas.backend]
    # The cards' passwords work, every seat's ComfyUI is asked to start, and the instructor's action is logged.
    for username, password in cards(html):
        assert authenticate(username=username, password=password) is not None
    assert SeatFrontend.objects.filter(seat__workshop=workshop, desired="running").count() == 3
    assert AuditEntry.objects.filter(action="workshop.create", workshop=workshop, actor=personas.instructor).exists()


def test_a_workshop_from_a_csv_file_with_a_name_column(instructor):
    csv = 'email,name\nada@example.com,Ada Lovelace\nagnes@example.com,"Varda, Agnès"\n'
    response = instructor.post(
        URL,
        {
            "slug": "july",
            "queue_policy": "fifo",
            "names_file": SimpleUploadedFile("people.csv", csv.encode("utf-8-sig"), content_type="text/csv"),
        },
    )
    assert response.status_code == 200
    workshop = Workshop.objects.get(slug="july")
    assert list(workshop.seats.values_list("display_name", flat=True)) == ["Ada Lovelace", "Varda, Agnès"]
    assert workshop.queue_policy == "fifo"


def test_a_workshop_with_a_number_of_seats(instructor):
    response = instructor.post(URL, {"slug": "aug", "seats": 4, "queue_policy": "round_robin"})
    assert response.status_code == 200 and len(cards(response.content.decode())) == 4


@pytest.mark.parametrize(
    "data,field,message",
    [
        ({"slug": "ws1", "seats": 2}, "slug", "exists already"),
        ({"slug": "sep"}, "seats", "Give the number of seats, or the participants' names."),
        ({"slug": "sep", "seats": 3, "names": "A\nB"}, "seats", "2 names were given"),
        ({"slug": "sep", "seats": 501}, "seats", "less than or equal to 500"),
        ({"slug": "sep", "names": "x" * 201}, "names", "at most 200 characters"),
        ({"slug": "not a slug", "seats": 2}, "slug", "Enter a valid"),
    ],
)
def test_bad_input_is_explained_and_nothing_is_created(instructor, data, field, message):
    before = (Workshop.objects.count(), Seat.objects.count())
    response = instructor.post(URL, {"queue_policy": "round_robin", **data})
    assert response.status_code == 200
    assert message in " ".join(response.context["form"].errors[field])
    assert (Workshop.objects.count(), Seat.objects.count()) == before


def test_a_file_that_is_not_text_is_refused(instructor):
    upload = SimpleUploadedFile("names.csv", b"\xff\xfe\x00\x00\x9c", content_type="text/csv")
    response = instructor.post(URL, {"slug": "oct", "queue_policy": "fifo", "names_file": upload})
    assert "not UTF-8 text" in " ".join(response.context["form"].errors["names_file"])
    assert not Workshop.objects.filter(slug="oct").exists()


def test_parse_names_reads_plain_lines_and_csv():
    assert parse_names("Ada\n  \nBob \n") == ["Ada", "Bob"]
    assert parse_names("Name,Seat\nAda,1\nBob,2") == ["Ada", "Bob"]
    with pytest.raises(WorkshopError, match="at most 500 seats"):
        parse_names("\n".join(f"P{i}" for i in range(501)))


def test_participants_cannot_reach_the_form(personas):
    client = Client()
    client.force_login(personas.seat_a.participant)
    response = client.get(URL)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_new_credentials_replace_the_old_ones_after_a_confirmation(instructor, personas):
    seat = personas.seat_a
    old_link = JoinLink.issue(seat)
    url = f"/admin/workshops/workshop/{personas.workshop.pk}/new-credentials/"
    assert url in instructor.get(f"/admin/workshops/workshop/{personas.workshop.pk}/change/").content.decode()
    confirm = instructor.get(url)
    assert confirm.status_code == 200 and "stop working at once" in confirm.content.decode()
    # Cancelling changes nothing.
    instructor.post(url, {"confirm": "no"})
    assert authenticate(username="ws1-user001", password="pw-participant") is not None
    sheet = instructor.post(url, {"confirm": "yes"})
    issued = dict(cards(sheet.content.decode()))
    assert set(issued) == {"ws1-user001", "ws1-user002"}
    assert authenticate(username="ws1-user001", password="pw-participant") is None
    assert authenticate(username="ws1-user001", password=issued["ws1-user001"]) is not None
    assert not JoinLink.objects.get(token_hash=hash_token(old_link)).is_usable()
    assert JoinLink.objects.filter(seat=seat, used_at=None).count() == 2  # the expired one and the new one
    assert AuditEntry.objects.filter(action="workshop.new_credentials", workshop=personas.workshop).count() == 1
