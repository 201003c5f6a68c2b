"""Workshop operations: creating a workshop with its seats and participants' credentials; announcements."""

from __future__ import annotations

import csv
import io
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.template.defaultfilters import pluralize
from django.utils import timezone

from gpu_backends.models import GpuBackend

from . import audit, frontends
from .models import (
    MAX_THUMBNAIL_BYTES,
    THUMBNAIL_EXTENSIONS,
    Announcement,
    JoinLink,
    QueuePolicy,
    Seat,
    WorkflowTemplate,
    Workshop,
)
from .seat_frontend.media import HEAD_BYTES, detect

# No 0/o, 1/l/i: passwords are read off a printed card.
_PASSWORD_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
MAX_SEATS = 500


class WorkshopError(Exception):
    """A workshop request that cannot be carried out as asked (bad slug, too many seats, …)."""


@dataclass(frozen=True)
class SeatCredentials:
    seat: str
    username: str
    password: str
    join_url: str
    name: str = ""  # the participant's name, when the instructor gave one


def new_password() -> str:
    return "-".join("".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(4)) for _ in range(3))


def seat_label(index: int) -> str:
    return f"user{index:03d}"


def username_for(workshop: Workshop, label: str) -> str:
    return f"{workshop.slug}-{label}"


def join_url(raw_token: str) -> str:
    return f"{settings.PUBLIC_URL}/join/{raw_token}/"


@transaction.atomic
def create_workshop(
    slug: str,
    *,
    seats: int,
    title: str = "",
    policy: str = QueuePolicy.ROUND_ROBIN,
    backends: list[GpuBackend] | None = None,
    names: list[str] | None = None,
) -> tuple[Workshop, list[SeatCredentials]]:
    """Create a workshop, its seats ``user001…`` and a participant account per seat.

    Returns the credentials once (passwords and join links are stored only as hashes). With ``names`` (one
    participant per seat, in order) the seats get those display names and ``seats`` must match their number.
    """
    if names is not None and len(names) != seats:
        raise WorkshopError(f"{len(names)} names for {seats} seats: give one name per seat.")
    if not 1 <= seats <= MAX_SEATS:
        raise WorkshopError(f"A workshop has 1 to {MAX_SEATS} seats, not {seats}.")
    if policy not in QueuePolicy.values:
        raise WorkshopError(f"Unknown queue policy {policy!r}; choose one of {', '.join(QueuePolicy.values)}.")
    if Workshop.objects.filter(slug=slug).exists():
        raise WorkshopError(f"A workshop called {slug!r} exists already.")
    workshop = Workshop(slug=slug, title=title or slug.replace("-", " ").title(), queue_policy=policy)
    try:
        workshop.full_clean()
    except ValidationError as exc:
        raise WorkshopError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from exc
    workshop.save()
    if backends:
        workshop.backends.set(backends)
    return workshop, add_seats(workshop, seats, names=names)


def sole_backend() -> GpuBackend | None:
    """The GPU backend a workshop created without naming any gets: the one switched on, when there is exactly
    one (``make run``'s simulator, or a single GPU box). With several, which to use is the instructor's choice;
    with none, nothing can run yet."""
    enabled = list(GpuBackend.objects.filter(enabled=True).order_by("order", "name")[:2])
    return enabled[0] if len(enabled) == 1 else None


def _next_index(workshop: Workshop) -> int:
    """The number after the highest ``userNNN`` label of the workshop (a deleted seat's label is not reused)."""
    numbers = [int(label[4:]) for label in workshop.seats.values_list("label", flat=True) if label[4:].isdigit()]
    return max(numbers, default=0) + 1


def add_seats(workshop: Workshop, count: int, *, names: list[str] | None = None) -> list[SeatCredentials]:
    """``count`` more seats (with ``names``, one per seat) after the workshop's last, each with its participant
    account; their credentials, returned once."""
    if names is not None and len(names) != count:
        raise WorkshopError(f"{len(names)} names for {count} seats: give one name per seat.")
    existing = workshop.seats.count()
    if count < 1 or existing + count > MAX_SEATS:
        raise WorkshopError(
            f"A workshop has at most {MAX_SEATS} seats; {workshop.slug} has {existing}, so add 1 to "
            f"{MAX_SEATS - existing}, not {count}."
        )
    User = get_user_model()
    index = _next_index(workshop)
    credentials = []
    for number in range(count):
        # A label whose account outlived its seat (a seat deleted in the admin) is skipped, never taken over.
        while User.objects.filter(username=username_for(workshop, seat_label(index))).exists():
            index += 1
        label, password = seat_label(index), new_password()
        username = username_for(workshop, label)
        index += 1
        name = names[number] if names else ""
        user = User.objects.create_user(username=username, password=password)
        seat = Seat.objects.create(workshop=workshop, label=label, participant=user, display_name=name)
        credentials.append(SeatCredentials(label, username, password, join_url(JoinLink.issue(seat)), name))
    return credentials


@transaction.atomic
def add_seats_to_running(
    workshop: Workshop, count: int, *, names: list[str] | None = None, actor: audit.Actor
) -> list[SeatCredentials]:
    """Seats for late participants of a workshop already under way: created, their ComfyUI asked for (the seat
    supervisor starts them) and the change audited. The other seats and their cards are untouched."""
    if workshop.archived_at is not None:
        raise WorkshopError(f"{workshop.slug} is archived: seats cannot be added to it.")
    credentials = add_seats(workshop, count, names=names)
    new = list(workshop.seats.filter(label__in=[c.seat for c in credentials]))
    transaction.on_commit(lambda: frontends.start_seats(new))
    labels = ", ".join(c.seat for c in credentials)
    audit.record(
        actor,
        "workshop.add_seats",
        f"Added {len(credentials)} seat{pluralize(len(credentials))} to {workshop.slug}: {labels}",
        workshop=workshop,
        target=workshop,
        details={"seats": [c.seat for c in credentials], "named": bool(names)},
    )
    return credentials


def parse_names(text: str) -> list[str]:
    """Participants' names from what an instructor pastes or uploads: one per line, or a CSV whose header has
    a ``name`` column (any other columns are ignored). Blank lines are skipped."""
    rows = list(csv.reader(io.StringIO(text.strip())))
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    column = header.index("name") if "name" in header else None
    body = rows[1:] if column is not None else rows
    names = []
    for number, row in enumerate(body, start=2 if column is not None else 1):
        cell = (row[column] if column is not None and column < len(row) else ",".join(row)).strip()
        if not cell:
            continue
        if len(cell) > 200:
            raise WorkshopError(f"Line {number}: a name has at most 200 characters.")
        names.append(cell)
    if len(names) > MAX_SEATS:
        raise WorkshopError(f"{len(names)} names: a workshop has at most {MAX_SEATS} seats.")
    return names


@transaction.atomic
def reissue_credentials(workshop: Workshop, seats: Iterable[Seat] | None = None) -> list[SeatCredentials]:
    """New passwords and one-time join links for ``seats`` (default: every seat of the workshop), for new cards.
    Their old passwords and unused links stop working at once, and so do the sessions signed in with them
    (Django ties a session to the password it was opened with): a lost card's finder is signed out too. The
    other seats are untouched."""
    chosen = workshop.seats.select_related("participant").order_by("label")
    if seats is not None:
        chosen = chosen.filter(pk__in=[seat.pk for seat in seats])
    credentials = []
    now = timezone.now()
    for seat in chosen:
        if seat.participant is None:
            continue
        password = new_password()
        seat.participant.set_password(password)
        seat.participant.save(update_fields=["password"])
        JoinLink.objects.filter(seat=seat, used_at=None).update(expires_at=now)
        link = join_url(JoinLink.issue(seat))
        credentials.append(
            SeatCredentials(seat.label, seat.participant.get_username(), password, link, seat.display_name)
        )
    return credentials


def check_seats_of(workshop: Workshop, seats: Iterable[Seat]) -> None:
    """WorkshopError naming the seats that are not the workshop's (an action on one workshop's seats)."""
    others = [str(seat) for seat in seats if seat.workshop_id != workshop.pk]
    if others:
        raise WorkshopError(f"{', '.join(others)} {'is' if len(others) == 1 else 'are'} not a seat of {workshop.slug}.")


def reissue_seat_cards(workshop: Workshop, seats: Iterable[Seat], *, actor: audit.Actor) -> list[SeatCredentials]:
    """New cards for some seats of a workshop (a lost card, a participant who swapped places), audited."""
    seats = list(seats)
    if not seats:
        raise WorkshopError("Choose at least one seat to issue a new card for.")
    check_seats_of(workshop, seats)
    credentials = reissue_credentials(workshop, seats)
    labels = [c.seat for c in credentials]
    without = sorted({seat.label for seat in seats} - set(labels))
    if not credentials:
        raise WorkshopError(f"{', '.join(without)} {'has' if len(without) == 1 else 'have'} no participant account.")
    audit.record(
        actor,
        "seat.new_card",
        f"Issued a new password and join link for {', '.join(labels)} of {workshop.slug}",
        workshop=workshop,
        target=seats[0] if len(seats) == 1 else workshop,
        details={"seats": labels, **({"without_account": without} if without else {})},
    )
    return credentials


# What a seat's extra budget can hold (the fields' sizes): more is refused with a message, not a database error.
MAX_EXTRA_GPU_SECONDS = 10_000_000
MAX_EXTRA_COST = Decimal("999999.99")


@transaction.atomic
def raise_seat_budget(
    seats: Iterable[Seat],
    *,
    gpu_seconds: int = 0,
    cost: Decimal = Decimal("0"),
    actor: audit.Actor,
) -> list[Seat]:
    """Give each seat ``gpu_seconds`` more GPU time and/or ``cost`` more money than the workshop's per-seat
    budget, on top of any extra it has: one participant gets more without raising everyone's. Audited per seat;
    the seats, as they are now, are returned."""
    seats = list(seats)
    if not seats:
        raise WorkshopError("Choose at least one seat to give more budget to.")
    if gpu_seconds < 0 or cost < 0:
        raise WorkshopError("A budget can be raised here, not lowered: give a positive amount.")
    if not gpu_seconds and not cost:
        raise WorkshopError("Give more GPU time, more money, or both.")
    if cost != cost.quantize(Decimal("0.01")):
        raise WorkshopError(f"Money is given in whole cents, not {cost}.")
    rows = list(Seat.objects.select_for_update().select_related("workshop").filter(pk__in=[s.pk for s in seats]))
    entries = []
    for seat in rows:
        workshop = seat.workshop
        if gpu_seconds and workshop.seat_gpu_budget_seconds is None:
            raise WorkshopError(
                f"{workshop.slug} sets no GPU time per seat, so {seat.label} has no limit to raise: set the "
                "workshop's per-seat GPU seconds first, or give money instead."
            )
        if cost and workshop.seat_cost_budget is None:
            raise WorkshopError(
                f"{workshop.slug} sets no money per seat, so {seat.label} has no limit to raise: set the "
                "workshop's per-seat cost budget first, or give GPU time instead."
            )
        old = (seat.extra_gpu_seconds, seat.extra_cost)
        seat.extra_gpu_seconds += gpu_seconds
        seat.extra_cost += cost
        if seat.extra_gpu_seconds > MAX_EXTRA_GPU_SECONDS or seat.extra_cost > MAX_EXTRA_COST:
            raise WorkshopError(
                f"{seat.label}'s extra budget would be {seat.extra_gpu_seconds} s and {seat.extra_cost}; the most "
                f"a seat can have is {MAX_EXTRA_GPU_SECONDS} s and {MAX_EXTRA_COST}."
            )
        seat.save(update_fields=["extra_gpu_seconds", "extra_cost"])
        given = " and ".join(
            part for part in (f"{gpu_seconds} GPU seconds" if gpu_seconds else "", f"{cost}" if cost else "") if part
        )
        entries.append(
            audit.build(
                actor,
                "seat.budget",
                f"Gave {seat} {given} more (extra now {seat.extra_gpu_seconds} s, {seat.extra_cost})",
                workshop=workshop,
                target=seat,
                details={
                    "extra_gpu_seconds": [old[0], seat.extra_gpu_seconds],
                    "extra_cost": [str(old[1]), str(seat.extra_cost)],
                },
            )
        )
    audit.record_all(entries)
    return rows


def credentials_as_dicts(credentials: list[SeatCredentials]) -> list[dict[str, str]]:
    return [asdict(c) for c in credentials]


# --- Messages to every seat's ComfyUI ----------------------------------------------------------------


def _tell_seats(workshop: Workshop, message: dict) -> None:
    """Send a ComfyUI-format message to every seat of the workshop (and the instructor's view), after commit."""
    from jobs import events

    seat_ids = list(workshop.seats.values_list("pk", flat=True))
    groups = [events.seat_group(pk) for pk in seat_ids] + [events.workshop_group(workshop.pk)]
    transaction.on_commit(lambda: events.publish(groups, {"type": "comfy.message", "message": message}))


def post_announcement(workshop: Workshop, message: str, *, by=None) -> Announcement:
    """Show ``message`` at once in every participant's ComfyUI (the status banner's yellow note)."""
    message = message.strip()
    if not message:
        raise WorkshopError("An announcement needs some text.")
    note = Announcement.objects.create(workshop=workshop, message=message[:500], created_by=by)
    announcement_changed(note)
    return note


def do_post_announcement(
    workshop: Workshop, message: str, *, actor: audit.Actor, details: dict[str, Any] | None = None
) -> Announcement:
    """:func:`post_announcement` by the instructor, with an ``announcement.post`` entry quoting it."""
    with transaction.atomic():
        note = post_announcement(workshop, message, by=actor)
        audit.record(
            actor,
            "announcement.post",
            f"Posted an announcement to {workshop.slug}: “{audit.clip(note.message, 80)}”",
            workshop=workshop,
            target=note,
            details={"message": note.message, **(details or {})},
        )
    return note


def do_withdraw_announcement(note: Announcement, *, actor: audit.Actor, details: dict[str, Any] | None = None) -> bool:
    """Take an announcement off every participant's banner, with an ``announcement.withdraw`` entry; False, with
    nothing recorded, when it was withdrawn already."""
    with transaction.atomic():
        if Announcement.objects.filter(pk=note.pk, active=True).update(active=False) != 1:
            return False
        note.active = False
        announcement_changed(note)
        audit.record(
            actor,
            "announcement.withdraw",
            f"Withdrew the announcement “{audit.clip(note.message, 80)}” from {note.workshop.slug}",
            workshop=note.workshop,
            target=note,
            details=details,
        )
    return True


def announcement_changed(note: Announcement) -> None:
    """A new, edited or withdrawn announcement: seats refresh their banner."""
    _tell_seats(
        note.workshop,
        {"type": "comfyume.announcement", "data": {"id": note.pk, "message": note.message, "active": note.active}},
    )


def push_templates(workshop: Workshop) -> None:
    """Seat frontends fetch the workshop's templates again and put new ones in the workflow list."""
    _tell_seats(workshop, {"type": "comfyume.templates", "data": {}})


PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def picture_beside(path: Path) -> Path | None:
    """The template's picture: a file of the same stem beside it (the first of PICTURE_SUFFIXES found)."""
    for suffix in PICTURE_SUFFIXES:
        for candidate in (path.with_suffix(suffix), path.with_suffix(suffix.upper())):
            if candidate.is_file():
                return candidate
    return None


class ThumbnailProblem(ValueError):
    """A template picture that is not one; the message says why."""


def thumbnail_type(data: bytes) -> str:
    """The content type of a template picture: PNG, JPEG or WebP, told by the bytes, not a name, up to 2 MB;
    anything else raises ThumbnailProblem saying why."""
    if len(data) > MAX_THUMBNAIL_BYTES:
        raise ThumbnailProblem(f"A template picture is at most {MAX_THUMBNAIL_BYTES // 1024 // 1024} MB.")
    kind = detect(data[:HEAD_BYTES])
    if kind is None or kind.content_type not in THUMBNAIL_EXTENSIONS:
        raise ThumbnailProblem("A template picture must be a PNG, JPEG or WebP image.")
    return kind.content_type


def set_thumbnail(template: WorkflowTemplate, data: bytes | None) -> None:
    """Give a template its picture for ComfyUI's Templates browser (None or empty: remove it, back to a drawn
    card), checked by ``thumbnail_type``; the template is saved."""
    template.thumbnail, template.thumbnail_type = (data, thumbnail_type(data)) if data else (b"", "")
    template.save(update_fields=["thumbnail", "thumbnail_type", "updated_at"])
