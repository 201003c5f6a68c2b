"""Workshop operations: creating a workshop with its seats and participants' credentials."""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction

from gpu_backends.models import GpuBackend

from .models import JoinLink, QueuePolicy, Seat, Workshop

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
) -> tuple[Workshop, list[SeatCredentials]]:
    """Create a workshop, its seats ``user001…`` and a participant account per seat.

    Returns the credentials once (passwords and join links are stored only as hashes).
    """
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
    return workshop, add_seats(workshop, seats)


def add_seats(workshop: Workshop, count: int) -> list[SeatCredentials]:
    User = get_user_model()
    start = Seat.objects.filter(workshop=workshop).count() + 1
    credentials = []
    for index in range(start, start + count):
        label = seat_label(index)
        password = new_password()
        username = username_for(workshop, label)
        if User.objects.filter(username=username).exists():
            raise WorkshopError(f"A user called {username!r} exists already.")
        user = User.objects.create_user(username=username, password=password)
        seat = Seat.objects.create(workshop=workshop, label=label, participant=user)
        credentials.append(SeatCredentials(label, username, password, join_url(JoinLink.issue(seat))))
    return credentials


def credentials_as_dicts(credentials: list[SeatCredentials]) -> list[dict[str, str]]:
    return [asdict(c) for c in credentials]
