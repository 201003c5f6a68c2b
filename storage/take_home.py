"""Participants take their work home: their own outputs on a page of their own, one file or all as a ZIP; a
personal link that still shows them after the workshop (expiring, revocable); the workshop's retention, after
which its outputs are deleted; and one participant's data deleted on request.

The pages: ``/outputs/`` for a signed-in participant, ``/take-home/<token>/`` for whoever holds a personal
link. Both show only that seat's outputs. The instructor issues links and deletes data from the admin's seat
list or ``manage.py seats``; ``manage.py expire_outputs`` (run by the reconciler once an hour) deletes what a
workshop's retention no longer keeps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from workshops import audit, frontends
from workshops.models import Seat, Workshop, hash_token
from workshops.services import WorkshopError, check_seats_of

from .models import Artifact, OutputLink, SeatInput
from .stores import StorageError, default_store

log = logging.getLogger(__name__)

# How long a personal link works when the workshop's retention end is not known yet (no end time, not archived).
DEFAULT_LINK_DAYS = 30


def take_home_url(raw_token: str) -> str:
    return f"{settings.PUBLIC_URL}/take-home/{raw_token}/"


def link_expiry(workshop: Workshop, now: datetime | None = None) -> datetime:
    """When a link issued now expires: when the workshop's outputs are deleted, or in DEFAULT_LINK_DAYS days
    while that is not known. Refused once the outputs are gone."""
    now = now or timezone.now()
    kept_until = workshop.outputs_expire_at
    if kept_until is not None and kept_until <= now:
        raise WorkshopError(
            f"{workshop.slug}'s outputs were kept until {kept_until:%Y-%m-%d}: there is nothing to link to."
        )
    return kept_until or now + timedelta(days=DEFAULT_LINK_DAYS)


@dataclass(frozen=True)
class IssuedLink:
    seat: str
    name: str
    url: str
    expires_at: datetime


def issue_links(workshop: Workshop, seats: list[Seat], *, actor: audit.Actor) -> list[IssuedLink]:
    """A new personal link for each seat (older links keep working until they expire or are revoked)."""
    if not seats:
        raise WorkshopError("Choose at least one seat to issue a take-home link for.")
    check_seats_of(workshop, seats)
    expires_at = link_expiry(workshop)
    by = actor.get_username() if actor is not None and hasattr(actor, "get_username") else ""
    issued = []
    with transaction.atomic():
        for seat in sorted(seats, key=lambda s: s.label):
            raw = OutputLink.issue(seat, expires_at, created_by=by)
            issued.append(IssuedLink(seat.label, seat.display_name, take_home_url(raw), expires_at))
        audit.record(
            actor,
            "seat.take_home_link",
            f"Issued take-home links for {', '.join(link.seat for link in issued)} of {workshop.slug}, "
            f"valid until {expires_at:%Y-%m-%d %H:%M}",
            workshop=workshop,
            target=seats[0] if len(seats) == 1 else workshop,
            details={"seats": [link.seat for link in issued], "expires_at": expires_at.isoformat()},
        )
    return issued


def revoke_links(seats: list[Seat], *, actor: audit.Actor) -> int:
    """End every working personal link of these seats now; how many were ended."""
    now = timezone.now()
    with transaction.atomic():
        ended = OutputLink.objects.filter(seat__in=seats, revoked_at=None, expires_at__gt=now).update(revoked_at=now)
        audit.record_all(
            audit.build(
                actor,
                "seat.take_home_revoke",
                f"Revoked the take-home links of {seat}",
                workshop=seat.workshop,
                target=seat,
            )
            for seat in seats
        )
    return ended


def usable_link(raw_token: str) -> OutputLink | None:
    link = OutputLink.objects.select_related("seat__workshop").filter(token_hash=hash_token(raw_token)).first()
    return link if link is not None and link.is_usable() else None


# --- deleting ---------------------------------------------------------------------------------------------


def _delete_objects(keys: list[str]) -> list[str]:
    """Delete these keys from the store; the keys that could not be deleted (kept for another try)."""
    store, failed = default_store(), []
    for key in keys:
        try:
            store.delete(key)
        except StorageError as exc:
            log.warning("Could not delete %s: %s", key, exc)
            failed.append(key)
    return failed


@dataclass(frozen=True)
class Deleted:
    outputs: int
    uploads: int
    links: int
    failed: list[str]


def delete_participant_data(seat: Seat, *, actor: audit.Actor) -> Deleted:
    """On a participant's request: their outputs and uploads (files and rows), their take-home links, and their
    ComfyUI's saved workflows, settings and uploads (the seat's files are wiped; it keeps running or stays
    stopped as it was). Their jobs' history (times, statuses) stays for the workshop's accounting, without
    the files. Audited."""
    artifacts = list(Artifact.objects.filter(job__seat=seat).values_list("pk", "key"))
    inputs = list(SeatInput.objects.filter(seat=seat).values_list("pk", "key"))
    failed = _delete_objects([key for _, key in artifacts] + [key for _, key in inputs])
    with transaction.atomic():
        Artifact.objects.filter(pk__in=[pk for pk, key in artifacts if key not in failed]).delete()
        SeatInput.objects.filter(pk__in=[pk for pk, key in inputs if key not in failed]).delete()
        links = OutputLink.objects.filter(seat=seat).delete()[0]
        frontends.wipe_seats([seat])
        audit.record(
            actor,
            "seat.delete_data",
            f"Deleted the outputs, uploads and saved workflows of {seat} on request",
            workshop=seat.workshop,
            target=seat,
            details={"outputs": len(artifacts), "uploads": len(inputs), "links": links, "failed": failed},
        )
    return Deleted(len(artifacts) - sum(k in failed for _, k in artifacts), len(inputs), links, failed)


def expire_outputs(now: datetime | None = None, *, dry_run: bool = False) -> dict[str, int]:
    """Delete the outputs of every workshop whose retention has run out: {workshop slug: outputs deleted}."""
    now = now or timezone.now()
    candidates = Workshop.objects.filter(outputs_kept_days__isnull=False).filter(
        Q(ends_at__isnull=False) | Q(archived_at__isnull=False)
    )
    done: dict[str, int] = {}
    for workshop in candidates:
        kept_until = workshop.outputs_expire_at
        if kept_until is None or kept_until > now:
            continue
        artifacts = list(Artifact.objects.filter(job__workshop=workshop).values_list("pk", "key"))
        if not artifacts:
            continue
        if dry_run:
            done[workshop.slug] = len(artifacts)
            continue
        failed = set(_delete_objects([key for _, key in artifacts]))
        deleted = Artifact.objects.filter(pk__in=[pk for pk, key in artifacts if key not in failed]).delete()[0]
        done[workshop.slug] = deleted
        audit.record(
            None,
            "workshop.outputs_expired",
            f"Deleted {deleted} outputs of {workshop.slug}: kept {workshop.outputs_kept_days} days after its end",
            workshop=workshop,
            target=workshop,
            details={"deleted": deleted, "failed": len(failed), "kept_until": kept_until.isoformat()},
        )
        log.info("Deleted %d outputs of %s (retention ended %s)", deleted, workshop.slug, kept_until)
    return done
