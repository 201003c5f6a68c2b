from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from gpu_backends.models import GpuBackend
from workshops import frontends
from workshops.credentials import CredentialFiles, print_credentials
from workshops.models import QueuePolicy, Workshop
from workshops.provisioning import ProvisioningError
from workshops.services import WorkshopError, create_workshop, sole_backend


class Command(BaseCommand):
    help = "Create a workshop with N seats and a participant account per seat; print or save their credentials."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--seats", type=int, required=True)
        parser.add_argument("--title", default="")
        parser.add_argument("--policy", default=QueuePolicy.ROUND_ROBIN, choices=QueuePolicy.values)
        parser.add_argument(
            "--backend",
            action="append",
            default=[],
            help="GPU backend name (repeatable); default: the only switched-on backend, when there is exactly one",
        )
        parser.add_argument(
            "--credentials-json", type=Path, help="Write usernames, passwords and one-time join links here"
        )
        parser.add_argument(
            "--credentials-html", type=Path, help="Write a printable sheet (one card per seat, QR join link) here"
        )
        parser.add_argument("--credentials-pdf", type=Path, help="Write the same cards as an A4 PDF here")

    def handle(
        self, *args, slug, seats, title, policy, backend, credentials_json, credentials_html, credentials_pdf, **options
    ):
        backends = self._backends(backend)
        files = CredentialFiles(json_path=credentials_json, html_path=credentials_html, pdf_path=credentials_pdf)
        if refusal := files.refuse_existing():
            raise CommandError(refusal)
        try:
            workshop, credentials = create_workshop(slug, seats=seats, title=title, policy=policy, backends=backends)
        except WorkshopError as exc:
            raise CommandError(str(exc)) from exc
        for line in files.write(workshop, credentials):
            self.stdout.write(line)
        if files.any():
            self.stdout.write(self.style.SUCCESS(f"Created {workshop.slug} with {seats} seats"))
        else:
            self.stdout.write(self.style.SUCCESS(f"Created {workshop.slug} with {seats} seats:"))
            print_credentials(self.stdout, credentials)
        if backends and not backend:
            self.stdout.write(f"GPU backend: {backends[0].name} (the only one; --backend NAME picks another)")
        if not backends:
            self.stderr.write(
                self.style.ERROR(
                    f"No GPU backend exists, so {workshop.slug}'s jobs cannot run: add one with "
                    f"`python manage.py add_backend NAME --kind comfyui --url http://HOST:8188 --workshop "
                    f"{workshop.slug}` (or attach one in the admin)."
                )
            )
        self._start_seats(workshop)

    def _backends(self, names: list[str]) -> list[GpuBackend]:
        """The backends named, or the only one there is. A workshop without any takes jobs that never run,
        so with several to choose from and none named, the instructor is asked to choose."""
        existing = list(GpuBackend.objects.order_by("order", "name"))
        listed = ", ".join(f"{b.name}{'' if b.enabled else ' (switched off)'}" for b in existing)
        by_name = {b.name: b for b in existing}
        for name in names:
            if name not in by_name:
                there = f"; the GPU backends are: {listed}" if existing else "; there is none yet"
                raise CommandError(f"No GPU backend called {name!r}{there}. Add it first with add_backend.")
        if names:
            return [by_name[name] for name in dict.fromkeys(names)]
        only = sole_backend()
        if only is not None:
            return [only]
        if existing:
            raise CommandError(
                f"Which GPU backend should this workshop use? None was named and there is no single switched-on "
                f"one to take: the GPU backends are {listed}. Name one or more with --backend NAME (repeatable)."
            )
        return []

    def _start_seats(self, workshop: Workshop) -> None:
        """Ask for every seat's ComfyUI, as the admin's New workshop does, and say whether anything will start
        them: the seat supervisor carries it out (and a participant's sign-in asks again)."""
        try:
            count = frontends.start_seats(workshop)
        except ProvisioningError as exc:
            self.stdout.write(self.style.WARNING(f"The seats' ComfyUI could not be set up: {exc}"))
            return
        status = f"python manage.py seat_frontends status --workshop {workshop.slug}"
        if frontends.supervisor_running():
            self.stdout.write(
                f"Starting the {count} seats' ComfyUI now (the seat supervisor is running); see: `{status}`"
            )
            return
        self.stdout.write(
            self.style.WARNING(
                f"No seat supervisor is running, so the {count} seats' ComfyUI will start once one runs: "
                "`make run` runs one, or run `python manage.py run_seat_frontends` next to the web server."
            )
        )
