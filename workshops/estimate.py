"""Sizing and cost before the day: how many GPU replicas a workshop needs, what to set, and what it costs.

From what the instructor knows beforehand (participants, how often each runs a job, how long a job takes on the
GPU, the session and its pre-warm, the GPU's price) :func:`estimate` works out the GPU time the day asks for,
the replicas that keep the GPUs at most :data:`TARGET_UTILISATION` busy (so a job waits about a job's length at
most, not the whole class), the backend's *max concurrency* and Verda's replica counts to set, how long the
burst after a demo takes to clear, and the cost: warm replicas are billed from the pre-warm to the end whether
busy or not. It is arithmetic, not a simulation; docs/INSTRUCTOR_GUIDE.md says how to read it and
workshops/tests/test_estimate.py checks it against a simulated day's recorded GPU seconds.

:func:`measured_job_seconds` gives the GPU seconds per job from jobs that ran (the workshop's own, else its
backends'), so a rehearsal's figures feed the next estimate.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from jobs.models import Job

from .models import Workshop

# The share of the replicas' time that jobs may use: above it, queues grow fast (a queue's wait grows like
# u / (1 - u)); at 0.7 a job waits well under its own length on average.
TARGET_UTILISATION = 0.7
# GPU seconds per job when nothing has run yet: a Flux.2 Klein image on an H200 is a few seconds, an LTX-2 clip
# a minute or more. Replace it with measured figures (a rehearsal) as soon as there are some.
DEFAULT_JOB_SECONDS = 30.0
DEFAULT_JOBS_PER_HOUR = 6.0  # one job every ten minutes per participant, demos and reading included
DEFAULT_SESSION_HOURS = 8.0


class EstimateError(ValueError):
    """An input the estimate cannot use; the message names it."""


@dataclass(frozen=True)
class Inputs:
    participants: int
    jobs_per_hour: float  # per participant
    job_seconds: float  # GPU seconds per job
    session_hours: float
    prewarm_minutes: float
    price_per_hour: Decimal  # one replica
    jobs_per_replica: int = 1  # Verda's concurrent requests per replica

    def check(self) -> None:
        problems = []
        if self.participants < 1:
            problems.append("participants must be at least 1")
        if not 0 < self.jobs_per_hour <= 600:
            problems.append("jobs per participant per hour must be more than 0 and at most 600")
        if not 0 < self.job_seconds <= 6 * 3600:
            problems.append("GPU seconds per job must be more than 0 and at most 21600")
        if not 0 < self.session_hours <= 24 * 7:
            problems.append("the session must last more than 0 and at most 168 hours")
        if not 0 <= self.prewarm_minutes <= 24 * 60:
            problems.append("the pre-warm must be 0 to 1440 minutes")
        if self.price_per_hour < 0:
            problems.append("the price per hour cannot be negative")
        if self.jobs_per_replica < 1:
            problems.append("jobs per replica must be at least 1")
        if problems:
            text = "; ".join(problems)
            raise EstimateError(text[0].upper() + text[1:] + ".")


@dataclass(frozen=True)
class Estimate:
    inputs: Inputs
    gpu_seconds_per_hour: float  # the GPU time the class asks for in an hour
    busy_gpu_hours: float  # over the session: the jobs' own GPU time
    replicas: int  # to keep the GPUs at most TARGET_UTILISATION busy
    utilisation: float  # with that many replicas
    max_concurrency: int  # the backend's setting: replicas × jobs per replica
    burst_minutes: float  # every participant pressing Run at once: until the last job is done
    billed_replica_hours: float  # warm from the pre-warm to the end
    cost: Decimal  # the replicas kept warm for the session
    busy_cost: Decimal  # the jobs' GPU time alone: the floor, if replicas only ran while busy
    suggested_cap: Decimal  # a spending cap with a margin over the estimate

    @property
    def utilisation_percent(self) -> int:
        return round(self.utilisation * 100)


def _money(value: float | Decimal) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def estimate(inputs: Inputs) -> Estimate:
    inputs.check()
    demand = inputs.participants * inputs.jobs_per_hour * inputs.job_seconds  # GPU seconds per hour
    capacity = 3600.0 * TARGET_UTILISATION * inputs.jobs_per_replica
    replicas = max(1, math.ceil(demand / capacity))
    utilisation = demand / (3600.0 * replicas * inputs.jobs_per_replica)
    slots = replicas * inputs.jobs_per_replica
    burst = math.ceil(inputs.participants / slots) * inputs.job_seconds / 60.0
    billed = replicas * (inputs.session_hours + inputs.prewarm_minutes / 60.0)
    busy_hours = demand * inputs.session_hours / 3600.0
    price = float(inputs.price_per_hour)
    cost = _money(billed * price)
    return Estimate(
        inputs=inputs,
        gpu_seconds_per_hour=demand,
        busy_gpu_hours=busy_hours,
        replicas=replicas,
        utilisation=utilisation,
        max_concurrency=slots,
        burst_minutes=burst,
        billed_replica_hours=billed,
        cost=cost,
        busy_cost=_money(busy_hours / inputs.jobs_per_replica * price),
        suggested_cap=_money(float(cost) * 1.2),
    )


def measured_job_seconds(workshop: Workshop) -> tuple[float, str] | None:
    """The median GPU seconds of finished jobs: the workshop's own, else its backends' (last 200), with where
    the figure comes from; None when nothing has run."""
    finished = Job.objects.filter(status=Job.Status.SUCCEEDED, gpu_seconds__gt=0).order_by("-finished_at")
    for source, jobs in (
        (f"{workshop.slug}'s jobs", finished.filter(workshop=workshop)),
        ("jobs on its GPU backends", finished.filter(backend__in=workshop.backends.all())),
    ):
        seconds = list(jobs.values_list("gpu_seconds", flat=True)[:200])
        if seconds:
            return statistics.median(seconds), f"the median of {len(seconds)} {source}"
    return None


def inputs_for(workshop: Workshop) -> tuple[Inputs, dict[str, str]]:
    """The defaults for a workshop's estimate, and where each came from."""
    backend = workshop.primary_backend()
    measured = measured_job_seconds(workshop)
    hours = DEFAULT_SESSION_HOURS
    if workshop.starts_at and workshop.ends_at and workshop.ends_at > workshop.starts_at:
        hours = round((workshop.ends_at - workshop.starts_at).total_seconds() / 3600.0, 2)
    inputs = Inputs(
        participants=max(workshop.seats.count(), 1),
        jobs_per_hour=DEFAULT_JOBS_PER_HOUR,
        job_seconds=round(measured[0], 2) if measured else DEFAULT_JOB_SECONDS,
        session_hours=hours,
        prewarm_minutes=float(backend.prewarm_minutes) if backend else 20.0,
        price_per_hour=backend.price_per_hour if backend else Decimal("0"),
    )
    sources = {
        "participants": "the workshop's seats",
        "job_seconds": measured[1] if measured else "a guess: nothing has run yet (a rehearsal measures it)",
        "session_hours": "its start and end" if hours != DEFAULT_SESSION_HOURS else "a full day (no end set)",
        "prewarm_minutes": f"backend {backend.name}" if backend else "the default",
        "price_per_hour": f"backend {backend.name}" if backend else "no backend yet",
    }
    return inputs, sources
