"""Queue policies as pure functions: which waiting job gets the next free GPU slot.

The scheduler hands in one candidate per seat (that seat's head of queue, see ``head_order``, among the
jobs the claiming backend may run, see ``seat_head``) with the seat's current load; the policy picks one.
Keeping this free of the database makes every rule a line in a table test (jobs/tests/test_policy.py).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass

FIFO = "fifo"
ROUND_ROBIN = "round_robin"
PRIORITY = "priority"
POLICIES = (FIFO, ROUND_ROBIN, PRIORITY)


@dataclass(frozen=True)
class Candidate:
    """A seat's next job and what the policy needs to know about that seat."""

    job_id: int  # grows with submission time, so it doubles as "age" (lower = older)
    seat_id: int
    seat_running: int  # the seat's jobs dispatching or running right now
    seat_gpu_seconds: float  # GPU time the seat's finished jobs used in this workshop
    priority: int = 0
    instructor_lane: bool = False


def head_order(policy: str) -> tuple[str, ...]:
    """Order of one seat's own queued jobs: the first is the seat's candidate."""
    if policy == PRIORITY:
        return ("-instructor_lane", "-priority", "id")
    return ("id",)


# The Candidate attribute that holds each Job field ``head_order`` names.
_CANDIDATE_FIELDS = {"id": "job_id", "instructor_lane": "instructor_lane", "priority": "priority"}


@functools.cache
def head_key(policy: str) -> Callable[[Candidate], tuple]:
    """``head_order`` as a sort key on candidates: of one seat's jobs, the smallest key goes first. Derived from
    ``head_order`` (as the scheduler's SQL is), so the order is written once."""
    order = [(name.startswith("-"), _CANDIDATE_FIELDS[name.lstrip("-")]) for name in head_order(policy)]
    if not any(descending for descending, _ in order):
        get = operator.attrgetter(*(attr for _, attr in order))
        return (lambda c: (get(c),)) if len(order) == 1 else get
    return lambda c: tuple(-getattr(c, attr) if descending else getattr(c, attr) for descending, attr in order)


def seat_head(policy: str, heads: Iterable[Candidate | None]) -> Candidate | None:
    """One seat's head of queue for a backend, from the heads of its jobs that backend may run: the unpinned
    ones' and those pinned to it (None where the seat has none). The first of them under ``head_order``."""
    present = [c for c in heads if c is not None]
    return min(present, key=head_key(policy)) if present else None


def _key(policy: str, c: Candidate) -> tuple:
    if policy == FIFO:
        return (c.job_id,)
    fair = (c.seat_running, c.seat_gpu_seconds, c.job_id)
    if policy == ROUND_ROBIN:
        return fair
    if policy == PRIORITY:
        return (not c.instructor_lane, -c.priority, *fair)
    raise ValueError(f"Unknown queue policy {policy!r}; expected one of {', '.join(POLICIES)}")


def pick_next(policy: str, candidates: Iterable[Candidate], max_running_per_seat: int) -> Candidate | None:
    """The candidate to dispatch next, or None when every seat with work is at its running cap.

    - fifo: the oldest job.
    - round_robin: the seat with the fewest running jobs, then the least GPU time used, then the oldest
      job — so a newcomer's first job goes before another seat's backlog.
    - priority: instructor lane first, then higher priority, then round robin.
    The per-seat running cap applies under every policy; under ``priority`` the instructor lane is exempt.
    """
    eligible = [
        c for c in candidates if c.seat_running < max_running_per_seat or (policy == PRIORITY and c.instructor_lane)
    ]
    if not eligible:
        return None
    return min(eligible, key=lambda c: _key(policy, c))
