"""Claim cost: how long one atomic claim takes with 100, 1,000 and 10,000 jobs queued over 200 seats.

The scheduler reads one head of queue per seat through an index, so the cost should follow the number of
seats, not the number of waiting jobs. Reports the median of 40 claims at each size and the growth from
100 to 10,000 (``claim_cost_growth``; target ≤ 1.5×). At 100 queued only 100 of the 200 seats have work, so that
growth mixes two things: twice the seats to weigh, and a queue a hundred times longer. ``claim_queue_growth``
(200 → 10,000 queued, every seat with work at both) is the queue's part alone.
"""

from __future__ import annotations

import statistics
import time
from unittest import mock

SEATS = 200
SIZES = (100, 200, 1_000, 10_000)
CLAIMS = 40
TINY = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}},
}


def _fill(workshop, seats, size: int) -> None:
    from jobs.models import Job

    Job.objects.filter(workshop=workshop).delete()
    Job.objects.bulk_create(
        [
            Job(workshop=workshop, seat=seats[i % len(seats)], prompt=TINY, outputs_to_execute=["2"])
            for i in range(size)
        ],
        batch_size=2000,
    )


def _median_claim_ms(backend_id: int) -> float:
    from jobs import scheduler

    timings = []
    for _ in range(CLAIMS):
        start = time.perf_counter()
        job = scheduler.claim_next(backend_id)
        timings.append((time.perf_counter() - start) * 1000)
        assert job is not None, "the benchmark ran out of claimable jobs"
    return statistics.median(timings)


def run(report) -> None:
    from gpu_backends.models import GpuBackend
    from workshops.models import QueuePolicy, Seat, Workshop

    backend = GpuBackend.objects.create(
        name="bench-claims", kind="simulator", url="http://127.0.0.1:9", max_concurrency=10**6
    )
    results: dict[str, dict[int, float]] = {}
    for policy in (QueuePolicy.ROUND_ROBIN, QueuePolicy.PRIORITY, QueuePolicy.FIFO):
        workshop = Workshop.objects.create(
            slug=f"bench-claims-{policy}", title="bench", queue_policy=policy, max_running_per_seat=10**6
        )
        workshop.backends.add(backend)
        seats = Seat.objects.bulk_create([Seat(workshop=workshop, label=f"user{i:03d}") for i in range(1, SEATS + 1)])
        results[policy] = {}
        # Enqueueing to RQ and announcing to sockets are not part of a claim's cost.
        with mock.patch("jobs.scheduler.enqueue_dispatch"), mock.patch("jobs.events.announce_job"):
            for size in SIZES:
                _fill(workshop, seats, size)
                _median_claim_ms(backend.pk)  # warm caches once
                _fill(workshop, seats, size)
                results[policy][size] = _median_claim_ms(backend.pk)
                report.line(
                    f"claim ({policy}): {size:>6} queued over {SEATS} seats: median {results[policy][size]:.2f} ms"
                )
        workshop.delete()
        # Workshops other than the one measured must not be scanned: drop this one before the next policy.
    rr = results[QueuePolicy.ROUND_ROBIN]
    report.bench("claim_ms_100", rr[100], "ms")
    report.bench("claim_ms_1000", rr[1_000], "ms")
    report.bench("claim_ms_10000", rr[10_000], "ms")
    report.bench("claim_cost_growth", rr[10_000] / rr[100], "x")
    report.bench("claim_queue_growth", rr[10_000] / rr[200], "x")
    for policy in (QueuePolicy.PRIORITY, QueuePolicy.FIFO):
        report.bench(f"claim_cost_growth_{policy}", results[policy][10_000] / results[policy][100], "x")
    backend.delete()
