"""Which backups to keep: the newest of each of the last N days, weeks and months (UTC), and pruning the rest.

Each rule walks the backups newest first and keeps the first one it meets in each new period until it has N
periods; the rules are independent and a backup any of them keeps is kept (restic's ``forget`` works the
same way). Periods with no backup do not count, so a pause in backups never empties the history.
:func:`backups_to_keep` is the pure policy; :func:`prune` applies it to a destination.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone

from .backup_destinations import Destination, time_of

log = logging.getLogger(__name__)

# An unfinished backup folder (no manifest) older than this is debris of a failed run; pruning removes it.
INCOMPLETE_GRACE = timedelta(days=1)


@dataclass(frozen=True)
class Retention:
    daily: int = 5
    weekly: int = 3
    monthly: int = 3

    def __post_init__(self) -> None:
        for name in ("daily", "weekly", "monthly"):
            if getattr(self, name) < 0:
                raise ValueError(f"keep-{name} cannot be negative.")


def _day(moment: datetime) -> tuple[int, ...]:
    return (moment.year, moment.month, moment.day)


def _week(moment: datetime) -> tuple[int, ...]:
    iso = moment.isocalendar()
    return (iso.year, iso.week)


def _month(moment: datetime) -> tuple[int, ...]:
    return (moment.year, moment.month)


def _newest_per_period(
    backups: list[tuple[str, datetime]], period: Callable[[datetime], tuple[int, ...]], count: int
) -> set[str]:
    kept: set[str] = set()
    seen: set[tuple[int, ...]] = set()
    for backup_id, moment in backups:
        if len(seen) >= count:
            break
        key = period(moment)
        if key not in seen:
            seen.add(key)
            kept.add(backup_id)
    return kept


def backups_to_keep(
    backups: Iterable[tuple[str, datetime]], policy: Retention, *, protect: Iterable[str] = ()
) -> set[str]:
    """The ids to keep out of ``(id, started_at)`` pairs; ``protect`` (the backup just made) is always kept."""
    newest_first = sorted(backups, key=lambda item: (item[1], item[0]), reverse=True)
    keep = set(protect)
    keep |= _newest_per_period(newest_first, _day, policy.daily)
    keep |= _newest_per_period(newest_first, _week, policy.weekly)
    keep |= _newest_per_period(newest_first, _month, policy.monthly)
    return keep


def prune(
    destination: Destination,
    policy: Retention,
    *,
    protect: set[str] | frozenset[str] = frozenset(),
    now: datetime | None = None,
) -> list[str]:
    """Delete the finished backups the policy does not keep, and unfinished ones older than a day.

    ``protect`` (the backup just made) is never deleted, nor is the newest finished backup, whatever the
    policy says: pruning never leaves a destination without a backup. Returns the deleted ids.
    """
    now = now or timezone.now()
    finished: list[tuple[str, datetime]] = []
    debris: list[str] = []
    for backup_id in destination.backup_ids():
        moment = time_of(backup_id)
        if moment is None:
            continue
        if destination.is_complete(backup_id):
            finished.append((backup_id, moment))
        elif now - moment > INCOMPLETE_GRACE and backup_id not in protect:
            debris.append(backup_id)
    newest = {max(finished, key=lambda item: (item[1], item[0]))[0]} if finished else set()
    keep = backups_to_keep(finished, policy, protect={*protect, *newest})
    doomed = sorted([backup_id for backup_id, _ in finished if backup_id not in keep] + debris)
    for backup_id in doomed:
        destination.delete_backup(backup_id)
        log.info("Backup %s at %s pruned", backup_id, destination.url)
    return doomed
