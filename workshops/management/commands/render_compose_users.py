"""``manage.py render_compose_users``: write docker-compose.users.yml, the seat frontends as compose services."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from workshops.compose import render_users_compose, seat_token_variable
from workshops.frontends import seat_spec
from workshops.models import Seat, Workshop


class Command(BaseCommand):
    help = (
        "Write a compose file with one seat-frontend service per seat (of one workshop, or of every workshop "
        "not archived). Seat tokens are not written: each service reads its own from a SEAT_TOKEN_… variable."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--workshop", metavar="SLUG", help="Only this workshop's seats")
        parser.add_argument("--output", type=Path, metavar="PATH", help="Write here instead of to stdout")

    def handle(self, *args: Any, workshop: str | None, output: Path | None, **options: Any) -> None:
        if workshop:
            if not Workshop.objects.filter(slug=workshop).exists():
                raise CommandError(f"No workshop called {workshop!r}.")
            seats = Seat.objects.filter(workshop__slug=workshop)
        else:
            seats = Seat.objects.filter(workshop__archived_at=None)
        seats = seats.select_related("workshop", "frontend").order_by("workshop__slug", "label")
        specs = [seat_spec(seat, token=None) for seat in seats]
        conf = settings.SEAT_FRONTENDS
        text = render_users_compose(
            specs, image=conf["IMAGE"], network=conf["NETWORK"], memory=conf["MEMORY"], cpus=conf["CPUS"]
        )
        if output is None:
            self.stdout.write(text, ending="")
            return
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        self.stdout.write(self.style.SUCCESS(f"Wrote {len(specs)} seat services to {output}."))
        if specs:
            self.stdout.write(
                f"Supply their tokens ({seat_token_variable(specs[0])} … {seat_token_variable(specs[-1])}) "
                "in an env file: docker compose --env-file seat-tokens.env -f "
                f"{output.name} up -d"
            )
