"""``manage.py trace_job JOB``: where one job's time went, step by step (needs COMFYUME_TRACE_JOBS on when it ran)."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs import trace
from jobs.models import Job


class Command(BaseCommand):
    help = "Print the per-step trace of one job (its id or prompt id), kept an hour when COMFYUME_TRACE_JOBS is on."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job", help="the job's id (as in the admin) or its prompt id")

    def handle(self, *args: Any, **options: Any) -> None:
        wanted = options["job"].strip()
        job = None
        if wanted.isdigit():
            job = Job.objects.filter(pk=int(wanted)).first()
        else:
            try:
                job = Job.objects.filter(prompt_id=uuid.UUID(wanted)).first()
            except ValueError:
                raise CommandError(f"{wanted!r} is neither a job id nor a prompt id.") from None
        if job is None:
            raise CommandError(f"No job {wanted}.")
        steps = trace.read(job.pk)
        if not steps:
            raise CommandError(
                f"Job {job.pk} has no trace: COMFYUME_TRACE_JOBS was off when it ran, or it ran over an hour ago."
            )
        self.stdout.write(f"Job {job.pk} ({job.prompt_id}), {job.status}:")
        first = previous = steps[0][1]
        for step, at in steps:
            since, step_ms = f"+{(at - first) * 1000:.1f}", f"{(at - previous) * 1000:.1f}"
            self.stdout.write(f"  {step:<16} {since:>10} ms   (this step {step_ms:>8} ms)")
            previous = at
