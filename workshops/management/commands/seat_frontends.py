"""``manage.py seat_frontends start|stop|restart|reset|status --workshop SLUG [--seat user001 …]``."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from workshops import frontends
from workshops.models import Seat, SeatFrontend, Workshop

ACTIONS = {
    "start": frontends.start_seats,
    "stop": frontends.stop_seats,
    "restart": frontends.restart_seats,
    "reset": frontends.reset_seats,
}


class Command(BaseCommand):
    help = "Start, stop, restart or reset seats' ComfyUI frontends (the seat supervisor carries it out), or list them."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=[*ACTIONS, "status"])
        parser.add_argument("--workshop", required=True, help="workshop slug")
        parser.add_argument("--seat", action="append", default=[], help="seat label (repeatable); default: all")

    def handle(self, *args, action: str, workshop: str, seat: list[str], **options):
        found = Workshop.objects.filter(slug=workshop).first()
        if found is None:
            raise CommandError(f"No workshop called {workshop!r}.")
        seats = Seat.objects.filter(workshop=found).select_related("workshop", "frontend").order_by("label")
        if seat:
            seats = seats.filter(label__in=seat)
            missing = sorted(set(seat) - set(seats.values_list("label", flat=True)))
            if missing:
                raise CommandError(f"No such seat in {workshop}: {', '.join(missing)}.")
        if action == "status":
            self._backends(found)
            for s in seats:
                fe: SeatFrontend | None = getattr(s, "frontend", None)
                if fe is None:
                    self.stdout.write(f"{s.label}  not set up")
                    continue
                self.stdout.write(
                    f"{s.label}  {fe.state:<8} wanted {fe.desired:<7} {fe.address or '-':<24} "
                    f"restarts {fe.restarts}{'  ' + fe.last_error if fe.last_error else ''}"
                )
            return
        count = ACTIONS[action](list(seats))
        self.stdout.write(self.style.SUCCESS(f"{action}: {count} seat(s); the seat supervisor carries it out."))

    def _backends(self, workshop: Workshop) -> None:
        """Seats that run but have no GPU behind them answer every Run with 503: say so above them."""
        names = [b.name if b.enabled else f"{b.name} (switched off)" for b in workshop.backends.order_by("order")]
        if names:
            self.stdout.write(f"GPU backends: {', '.join(names)}")
            return
        self.stdout.write(
            self.style.WARNING(
                "No GPU backend: jobs cannot run. Attach one in the admin, or "
                f"`python manage.py add_backend NAME --kind comfyui --url http://HOST:8188 --workshop {workshop.slug}`."
            )
        )
