"""One participant at a time: a new card for one seat (the others' cards keep working), seats added to a
running workshop (cards for the new ones only), more budget for one seat (everyone else's stays), from the
admin and from ``manage.py seats``, every change audited."""

from __future__ import annotations

import json
from decimal import Decimal
from io import StringIO

import pytest
from django.contrib.auth import authenticate, get_user, get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone

from workshops.instructor.dashboard import build_snapshot
from workshops.models import AuditEntry, JoinLink, Seat, SeatFrontend, Workshop, hash_token
from workshops.services import (
    MAX_SEATS,
    WorkshopError,
    add_seats_to_running,
    raise_seat_budget,
    reissue_seat_cards,
)
from workshops.tests.test_new_workshop import cards as sheet_cards

SEATS = "/admin/workshops/seat/"


@pytest.fixture
def instructor(personas) -> Client:
    client = Client()
    client.force_login(personas.instructor)
    return client


def signed_in(username: str) -> Client:
    client = Client()
    assert client.login(username=username, password="pw-participant")
    return client


def cards(html: str) -> dict[str, str]:
    """{username: password} of every card on a printed sheet."""
    return dict(sheet_cards(html))


def action(client: Client, name: str, seats: list[Seat], **extra: str):
    return client.post(SEATS, {"action": name, "_selected_action": [s.pk for s in seats], **extra})


# --- a new card for one seat ---------------------------------------------------------------------------------


def test_a_new_card_for_one_seat_leaves_every_other_card_and_session_alone(instructor, personas):
    lost, other = personas.seat_a, personas.seat_b
    old_link = JoinLink.issue(lost)
    finder, neighbour = signed_in("ws1-user001"), signed_in("ws1-user002")

    confirm = action(instructor, "new_cards", [lost])
    page = " ".join(confirm.content.decode().split())
    assert confirm.status_code == 200 and "user001" in page and "user002" not in page
    assert "whoever signed in with them is signed out" in page
    assert authenticate(username="ws1-user001", password="pw-participant") is not None  # nothing changed yet

    sheet = action(instructor, "new_cards", [lost], confirm="yes")
    assert sheet.status_code == 200 and "no-store" in sheet["Cache-Control"]
    issued = cards(sheet.content.decode())
    assert list(issued) == ["ws1-user001"]  # the sheet holds the one new card
    assert authenticate(username="ws1-user001", password="pw-participant") is None
    assert authenticate(username="ws1-user001", password=issued["ws1-user001"]) is not None
    assert not JoinLink.objects.get(token_hash=hash_token(old_link)).is_usable()
    assert JoinLink.objects.filter(seat=lost, used_at=None, expires_at__gt=timezone.now()).count() == 1
    # Whoever signed in with the lost card is out; the neighbour is still in, with the same password.
    assert get_user(finder).is_anonymous
    assert get_user(neighbour).get_username() == "ws1-user002"
    assert authenticate(username="ws1-user002", password="pw-participant") is not None
    entry = AuditEntry.objects.get(action="seat.new_card")
    assert entry.actor == personas.instructor and entry.workshop == personas.workshop
    assert entry.target_id == str(lost.pk) and entry.details == {"seats": ["user001"]}
    assert issued["ws1-user001"] not in entry.summary + json.dumps(entry.details)
    other.refresh_from_db()
    assert other.participant.check_password("pw-participant")


def test_new_cards_for_seats_of_two_workshops_are_refused_and_change_nothing(instructor, personas):
    response = action(instructor, "new_cards", [personas.seat_a, personas.seat_c], confirm="yes")
    assert response.status_code == 302
    messages = [m.message for m in response.wsgi_request._messages]
    assert any("one workshop at a time" in m for m in messages)
    assert authenticate(username="ws1-user001", password="pw-participant") is not None
    assert authenticate(username="ws2-user001", password="pw-participant") is not None
    assert not AuditEntry.objects.filter(action="seat.new_card").exists()


def test_a_seat_without_an_account_gets_no_card_and_says_so(personas):
    seat = Seat.objects.create(workshop=personas.workshop, label="user009")
    with pytest.raises(WorkshopError, match="user009 has no participant account"):
        reissue_seat_cards(personas.workshop, [seat], actor=personas.instructor)


# --- seats for late participants -----------------------------------------------------------------------------


def test_seats_added_to_a_running_workshop_get_cards_and_their_comfyui_the_rest_untouched(
    instructor, personas, django_capture_on_commit_callbacks
):
    url = f"/admin/workshops/workshop/{personas.workshop.pk}/add-seats/"
    assert url in instructor.get(f"/admin/workshops/workshop/{personas.workshop.pk}/change/").content.decode()
    assert "has <strong>2</strong> seats" in " ".join(instructor.get(url).content.decode().split())
    with django_capture_on_commit_callbacks(execute=True):
        sheet = instructor.post(url, {"names": "Late Larry\nAgnès Varda\n"})
    assert sheet.status_code == 200, sheet.content[:300]
    issued = cards(sheet.content.decode())
    assert list(issued) == ["ws1-user003", "ws1-user004"]
    assert "Agnès Varda · seat user004" in sheet.content.decode()
    for username, password in issued.items():
        assert authenticate(username=username, password=password) is not None
    assert authenticate(username="ws1-user001", password="pw-participant") is not None  # the others' cards work
    new = Seat.objects.filter(workshop=personas.workshop, label__in=["user003", "user004"])
    assert sorted(new.values_list("display_name", flat=True)) == ["Agnès Varda", "Late Larry"]
    # Only the new seats' ComfyUI is asked for; the running seats' frontends are not touched.
    assert set(SeatFrontend.objects.filter(desired="running").values_list("seat__label", flat=True)) == {
        "user003",
        "user004",
    }
    entry = AuditEntry.objects.get(action="workshop.add_seats")
    assert entry.actor == personas.instructor and entry.details == {"seats": ["user003", "user004"], "named": True}


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({}, "Give the number of seats, or the participants"),
        ({"seats": "0"}, "Ensure this value is greater than or equal to 1."),
        ({"seats": "3", "names": "A\nB"}, "2 names were given"),
        ({"seats": str(MAX_SEATS)}, f"A workshop has at most {MAX_SEATS} seats; ws1 has 2, so add 1 to"),
    ],
)
def test_adding_seats_refuses_bad_input_and_adds_nothing(instructor, personas, form, message):
    response = instructor.post(f"/admin/workshops/workshop/{personas.workshop.pk}/add-seats/", form)
    assert response.status_code == 200 and message in response.content.decode()
    assert personas.workshop.seats.count() == 2 and not AuditEntry.objects.filter(action="workshop.add_seats")


def test_an_archived_workshop_takes_no_new_seats(instructor, personas):
    Workshop.objects.filter(pk=personas.workshop.pk).update(archived_at=timezone.now())
    response = instructor.post(f"/admin/workshops/workshop/{personas.workshop.pk}/add-seats/", {"seats": "1"})
    assert response.status_code == 302 and personas.workshop.seats.count() == 2
    personas.workshop.refresh_from_db()
    with pytest.raises(WorkshopError, match="archived"):
        add_seats_to_running(personas.workshop, 1, actor=personas.instructor)


def test_a_deleted_seats_label_and_account_are_never_taken_over(personas):
    personas.seat_b.delete()  # its account ws1-user002 stays (it owns nothing but its sign-in)
    (added,) = add_seats_to_running(personas.workshop, 1, actor=personas.instructor)
    assert added.seat == "user003" and added.username == "ws1-user003"
    assert authenticate(username="ws1-user002", password="pw-participant") is not None


# --- more budget for one seat --------------------------------------------------------------------------------


@pytest.fixture
def budgeted(personas):
    Workshop.objects.filter(pk=personas.workshop.pk).update(seat_gpu_budget_seconds=600, seat_cost_budget=Decimal("2"))
    Seat.objects.filter(pk=personas.seat_a.pk).update(gpu_seconds_used=650, cost_used=Decimal("1.5"))
    return personas


def test_more_budget_for_one_seat_lets_it_queue_again_and_leaves_the_others(instructor, budgeted):
    seat = Seat.objects.get(pk=budgeted.seat_a.pk)
    assert "You have used your GPU time" in seat.budget_exhausted()
    form = action(instructor, "more_budget", [seat])
    assert form.status_code == 200 and "650 / 600" in form.content.decode()
    done = action(instructor, "more_budget", [seat], apply="1", gpu_minutes="10", cost="0.50")
    assert done.status_code == 302
    seat.refresh_from_db()
    assert (seat.extra_gpu_seconds, seat.extra_cost) == (600, Decimal("0.50"))
    assert (seat.gpu_seconds_limit, seat.cost_limit) == (1200, Decimal("2.50"))
    assert seat.budget_exhausted() is None and seat.budget_used() == pytest.approx(1.5 / 2.5)
    other = Seat.objects.get(pk=budgeted.seat_b.pk)
    assert (other.gpu_seconds_limit, other.cost_limit) == (600, Decimal("2"))
    entry = AuditEntry.objects.get(action="seat.budget")
    assert entry.actor == budgeted.instructor and entry.details["extra_gpu_seconds"] == [0, 600]
    # The participant's own status shows the raised limit.
    token = seat.issue_token()
    status = Client().get("/api/hub/status", HTTP_AUTHORIZATION=f"Bearer {token}").json()
    assert status["budget"]["gpu_seconds_limit"] == 1200 and status["budget"]["exhausted"] is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"gpu_minutes": "0", "cost": "0"}, "Give more GPU time, more money, or both."),
        ({"gpu_minutes": "-5"}, "Ensure this value is greater than or equal to 0."),
        ({"cost": "abc"}, "Enter a number."),
        ({"cost": "0.001"}, "Ensure that there are no more than 2 decimal places."),
    ],
)
def test_more_budget_refuses_bad_amounts_and_changes_nothing(instructor, budgeted, fields, message):
    response = action(instructor, "more_budget", [budgeted.seat_a], apply="1", **fields)
    assert response.status_code == 200 and message in response.content.decode()
    assert Seat.objects.get(pk=budgeted.seat_a.pk).extra_gpu_seconds == 0
    assert not AuditEntry.objects.filter(action="seat.budget").exists()


def test_more_gpu_time_where_the_workshop_sets_none_is_refused(personas):
    with pytest.raises(WorkshopError, match="ws1 sets no GPU time per seat"):
        raise_seat_budget([personas.seat_a], gpu_seconds=60, actor=personas.instructor)
    with pytest.raises(WorkshopError, match="not lowered"):
        raise_seat_budget([personas.seat_a], gpu_seconds=-60, actor=personas.instructor)


def test_the_dashboard_totals_add_each_seats_extra(instructor, budgeted):
    raise_seat_budget([budgeted.seat_a], gpu_seconds=300, actor=budgeted.instructor)
    totals = build_snapshot(Workshop.objects.get(pk=budgeted.workshop.pk))["totals"]
    assert totals["gpu_budget_seconds"] == 600 + 900 and totals["cost_budget"] == 4.0


# --- the same from the command line --------------------------------------------------------------------------


def run(*args: str) -> str:
    out = StringIO()
    call_command("seats", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_the_command_line_issues_one_new_card_into_a_private_file(personas, tmp_path):
    target = tmp_path / "card.json"
    out = run("ws1", "new-card", "ws1-user002", "--credentials-json", str(target))
    assert "New card for user002 of ws1" in out and str(target) in out
    assert oct(target.stat().st_mode)[-3:] == "600"
    (row,) = json.loads(target.read_text())["seats"]
    assert row["username"] == "ws1-user002"
    assert authenticate(username="ws1-user002", password=row["password"]) is not None
    assert authenticate(username="ws1-user001", password="pw-participant") is not None
    entry = AuditEntry.objects.get(action="seat.new_card")
    assert entry.actor is None and entry.actor_name.startswith("manage.py seats new-card (")
    with pytest.raises(CommandError, match="exists already; refusing to overwrite"):
        run("ws1", "new-card", "user001", "--credentials-json", str(target))
    assert authenticate(username="ws1-user001", password="pw-participant") is not None


def test_the_command_line_adds_seats_and_raises_a_budget(personas, tmp_path, django_capture_on_commit_callbacks):
    names = tmp_path / "late.csv"
    names.write_text("name,email\nLate Larry,l@example.com\n")
    with django_capture_on_commit_callbacks(execute=True):
        out = run("ws1", "add", "--names", str(names))
    assert "Added 1 seats to ws1: user003" in out and "ws1-user003" in out
    assert Seat.objects.get(workshop=personas.workshop, label="user003").display_name == "Late Larry"
    assert SeatFrontend.objects.get(seat__label="user003", seat__workshop=personas.workshop).desired == "running"
    Workshop.objects.filter(pk=personas.workshop.pk).update(seat_gpu_budget_seconds=60)
    out = run("ws1", "budget", "user003", "--gpu-minutes", "1.5")
    assert "ws1/user003: 0 of 150 GPU seconds used" in out
    assert AuditEntry.objects.get(action="seat.budget").actor_name.startswith("manage.py seats budget")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope", "add", "1"), "No workshop called 'nope'; the open ones are: ws1, ws2"),
        (("ws1", "new-card", "user042"), "ws1 has no seat 'user042'"),
        (("ws1", "add"), "Say how many seats to add"),
        (("ws1", "add", "0"), "add 1 to 498, not 0"),
        (("ws1", "add", "2", "--names", "/nonexistent/names.txt"), "Cannot read the names in /nonexistent/names.txt"),
        (("ws1", "budget", "user001"), "Give more GPU time, more money, or both."),
        (("ws1", "budget", "user001", "--gpu-minutes", "-1"), "not lowered"),
        (("ws1", "budget", "user001", "--cost", "abc"), "--cost must be an amount of money such as 5 or 2.50"),
        (("ws1", "budget", "user001", "--cost", "NaN"), "--cost must be an amount of money"),
        (("ws1", "budget", "user001", "--cost", "0.001"), "Money is given in whole cents"),
        (("ws1", "budget", "user001", "--cost", "5"), "ws1 sets no money per seat"),
    ],
)
def test_the_command_line_refuses_bad_input_and_changes_nothing(personas, args, message):
    before = list(get_user_model().objects.values_list("username", "password"))
    with pytest.raises(CommandError) as excinfo:
        run(*args)
    assert message in str(excinfo.value)
    assert list(get_user_model().objects.values_list("username", "password")) == before
    assert Seat.objects.count() == 3 and not AuditEntry.objects.exists()
