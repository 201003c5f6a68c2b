"""Workshop operations: creating a workshop with its seats and participants' credentials; announcements."""

from __future__ import annotations

import csv
import io
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from gpu_backends.models import GpuBackend

from . import audit
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


def add_seats(workshop: Workshop, count: int, *, names: list[str] | None = None) -> list[SeatCredentials]:
    User = get_user_model()
    start = Seat.objects.filter(workshop=workshop).count() + 1
    credentials = []
    for index in range(start, start + count):
        label = seat_label(index)
        password = new_password()
        username = username_for(workshop, label)
        if User.objects.filter(username=username).exists():
            raise WorkshopError(f"A user called {username!r} exists already.")
        name = names[index - start] if names else ""
        user = User.objects.create_user(username=username, password=password)
        seat = Seat.objects.create(workshop=workshop, label=label, participant=user, display_name=name)
        credentials.append(SeatCredentials(label, username, password, join_url(JoinLink.issue(seat)), name))
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
def reissue_credentials(workshop: Workshop) -> list[SeatCredentials]:
    """New passwords and one-time join links for every seat (the old ones stop working at once), for a new
    credential sheet. Participants already signed in stay signed in until their session ends."""
    credentials = []
    now = timezone.now()
    for seat in workshop.seats.select_related("participant").order_by("label"):
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
