"""``manage.py run_seat_frontends``: keep every seat's ComfyUI frontend in the state the instructor asked for."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from workshops.frontends import Supervisor


class Command(BaseCommand):
    help = "Supervise seat frontends: start, stop, restart and reset them as asked in the admin; restart crashes."

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=1.0, help="seconds between reconciliations")

    def handle(self, *args, interval: float, **options):
        Supervisor(interval=interval).run()
