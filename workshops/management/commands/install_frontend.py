"""``manage.py install_frontend [VERSION]``: make a ComfyUI web frontend version available to the seats."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from workshops.frontends import ensure_frontend
from workshops.seat_frontend import frontend_package


class Command(BaseCommand):
    help = (
        "Install a version of ComfyUI's web frontend (comfyui-frontend-package) for the seats of the process "
        "driver; without VERSION, COMFYUME_FRONTEND_VERSION's. Seats serve it after a restart."
    )

    def add_arguments(self, parser):
        parser.add_argument("version", nargs="?", help="for example 1.27.10 (default: COMFYUME_FRONTEND_VERSION)")

    def handle(self, *args, version=None, **options):
        version = version or settings.SEAT_FRONTENDS["FRONTEND_VERSION"]
        try:
            root = ensure_frontend(version, self.stdout.write)
        except frontend_package.FrontendMissing as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(f"ComfyUI frontend {version}: {root}"))
        if version != settings.SEAT_FRONTENDS["FRONTEND_VERSION"]:
            self.stdout.write(f"Seats serve it once COMFYUME_FRONTEND_VERSION={version} is set and they restart.")
