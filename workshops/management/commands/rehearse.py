"""``manage.py rehearse <workshop> --prompt flux.json --prompt ltx.json``: jobs.rehearsal on the real backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs.rehearsal import MAX_PARTICIPANTS, Rehearsal, RehearsalError, read_prompt, rehearse, report
from workshops import audit
from workshops.models import Workshop

from .gpu_manifest import read_json_file


class Command(BaseCommand):
    help = (
        "Rehearse a workshop on its real GPU backends: each template's API-format prompt queued once per "
        "simulated participant, then cold start, time to first image, GPU time and cost per template; nothing is "
        "left running or billed. The platform's workers must be running."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("workshop", help="The workshop's slug")
        parser.add_argument(
            "--prompt",
            action="append",
            type=Path,
            default=[],
            help="A template's prompt in API format (ComfyUI: Workflow → Export (API)); repeatable",
        )
        parser.add_argument("--participants", type=int, default=3, help="Simulated participants (default 3)")
        parser.add_argument("--timeout", type=float, default=1800, help="Seconds to wait for the jobs (default 1800)")

    def handle(self, *args: Any, workshop: str, prompt: list[Path], participants: int, timeout: float, **_: Any):
        try:
            found = Workshop.objects.get(slug=workshop, archived_at=None)
        except Workshop.DoesNotExist:
            raise CommandError(f"No open workshop called {workshop!r}.") from None
        if not prompt:
            raise CommandError(
                "Give each template's prompt in API format: --prompt flux.json (in ComfyUI: Workflow → Export (API))."
            )
        if not 1 <= participants <= MAX_PARTICIPANTS:
            raise CommandError(f"--participants must be 1 to {MAX_PARTICIPANTS}, not {participants}.")
        prompts = {}
        for path in prompt:
            data = read_json_file(path)
            try:
                prompts[path.stem] = read_prompt(path.name, data)
            except RehearsalError as exc:
                raise CommandError(str(exc)) from None
        if not self._workers_running():
            raise CommandError(
                "No RQ worker is running, so nothing would run: start the platform first (make run, or docker "
                "compose up -d), then rehearse."
            )
        try:
            outcome = rehearse(
                found,
                prompts,
                participants=participants,
                timeout=timeout,
                actor=audit.CommandLine("rehearse"),
                progress=lambda line: self.stdout.write(f"  {line}"),
            )
        except RehearsalError as exc:
            raise CommandError(str(exc)) from None
        self._report(outcome)

    @staticmethod
    def _workers_running() -> bool:
        from rq import Worker

        from jobs.scheduler import dispatch_queue

        return Worker.count(queue=dispatch_queue()) > 0

    def _report(self, outcome: Rehearsal) -> None:
        self.stdout.write(
            self.style.SUCCESS(f"Rehearsal {outcome.workshop.slug} ({outcome.participants} participant(s)):")
        )
        for line in report(outcome):
            style = self.style.ERROR if (" failed: " in line or "refused before" in line) else str
            self.stdout.write(style(f"  {line}"))
