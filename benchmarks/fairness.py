"""Fairness of the queue policies: 20 seats with unequal demand for 10 simulated minutes.

A discrete-event simulation driving the real policy function (jobs.policy.pick_next): GPU slots free up
as simulated jobs finish, and each free slot goes to whichever head of queue the policy picks. Reports
Jain's index of GPU time among the seats that always had work queued, and every seat's longest wait.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from jobs.policy import FIFO, PRIORITY, ROUND_ROBIN, Candidate, pick_next

SLOTS = 4
SEATS = 20
DURATION = 600.0  # simulated seconds
MAX_QUEUED = 5
MAX_RUNNING = 1


@dataclass
class SeatModel:
    seat_id: int
    kind: str  # heavy: always keeps MAX_QUEUED jobs waiting; medium/light: one job every `period` seconds
    job_seconds: tuple[float, float]
    period: float = 0.0
    queue: list[tuple[int, float]] = field(default_factory=list)  # (job id, submitted at)
    running: int = 0
    gpu: float = 0.0
    longest_wait: float = 0.0
    always_backlogged: bool = True


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if values and any(values) else 1.0


def simulate(policy: str, seed: int = 7) -> tuple[float, list[SeatModel]]:
    rng = random.Random(seed)
    seats = []
    for i in range(SEATS):
        if i < 10:  # heavy users with different job lengths: images, long videos
            seats.append(SeatModel(i, "heavy", (8, 12) if i % 2 else (40, 80)))
        elif i < 15:
            seats.append(SeatModel(i, "medium", (10, 20), period=45))
        else:
            seats.append(SeatModel(i, "light", (10, 20), period=150))
    next_job = 0
    events: list[tuple[float, int, str, int]] = []  # (time, tiebreak, kind, seat)
    tiebreak = 0

    def submit(seat: SeatModel, now: float) -> None:
        nonlocal next_job
        if len(seat.queue) < MAX_QUEUED:
            next_job += 1
            seat.queue.append((next_job, now))

    for seat in seats:
        if seat.kind == "heavy":
            for _ in range(MAX_QUEUED):
                submit(seat, 0.0)
        else:
            tiebreak += 1
            heapq.heappush(events, (rng.uniform(0, seat.period), tiebreak, "submit", seat.seat_id))

    free = SLOTS
    now = 0.0
    while True:
        # Fill free slots with the policy's picks.
        while free:
            candidates = [Candidate(s.queue[0][0], s.seat_id, s.running, s.gpu) for s in seats if s.queue]
            pick = pick_next(policy, candidates, MAX_RUNNING)
            if pick is None:
                break
            seat = seats[pick.seat_id]
            _, submitted = seat.queue.pop(0)
            seat.longest_wait = max(seat.longest_wait, now - submitted)
            seat.running += 1
            free -= 1
            length = rng.uniform(*seat.job_seconds)
            tiebreak += 1
            heapq.heappush(events, (now + length, tiebreak, f"finish:{length}", seat.seat_id))
            if seat.kind == "heavy":
                submit(seat, now)  # a heavy user tops their queue back up at once
        if not events:
            break
        now, _, kind, seat_id = heapq.heappop(events)
        if now > DURATION:
            break
        seat = seats[seat_id]
        if kind.startswith("finish:"):
            seat.running -= 1
            seat.gpu += float(kind.split(":", 1)[1])
            free += 1
        else:
            submit(seat, now)
            tiebreak += 1
            heapq.heappush(events, (now + seat.period, tiebreak, "submit", seat.seat_id))
        if seat.kind == "heavy" and not seat.queue:
            seat.always_backlogged = False
    backlogged = [s.gpu for s in seats if s.kind == "heavy" and s.always_backlogged]
    return jain(backlogged), seats


def run(report) -> None:
    for policy in (ROUND_ROBIN, PRIORITY, FIFO):
        index, seats = simulate(policy)
        heavy = [s for s in seats if s.kind == "heavy"]
        report.line(
            f"fairness ({policy}): Jain's index of GPU time over {len(heavy)} always-backlogged seats = {index:.4f}"
        )
        if policy == ROUND_ROBIN:
            report.bench("fairness_jain", index, "index")
            for s in seats:
                report.line(f"  seat {s.seat_id:2d} {s.kind:6s} gpu={s.gpu:6.1f}s longest_wait={s.longest_wait:6.1f}s")
        else:
            report.bench(f"fairness_jain_{policy}", index, "index")
