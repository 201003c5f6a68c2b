"""``manage.py load_templates FILE… [--workshop SLUG] [--default NAME]``: workflow templates from ComfyUI's
saved-workflow JSON files (UI format), into the workshop's seats' workflow lists. A picture beside a file, of the
same name (``flux.png``, ``.jpg``/``.jpeg`` or ``.webp`` beside ``flux.json``), becomes its card in ComfyUI's
Templates browser."""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from workshops.models import WorkflowTemplate, Workshop
from workshops.services import ThumbnailProblem, picture_beside, push_templates, set_thumbnail


def read_workflow(path: Path) -> dict:
    """A workflow as ComfyUI's "Save" writes it; an API-format export is refused with the reason."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CommandError(f"{path}: no such file.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommandError(f"{path}: not a JSON file ({exc}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        if isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
            raise CommandError(
                f"{path} is in API format (File → Export (API)); templates need the saved workflow (File → Save)."
            )
        raise CommandError(f"{path}: not a ComfyUI workflow (it has no 'nodes' list).")
    return data


class Command(BaseCommand):
    help = "Add or update workflow templates from ComfyUI workflow files; optionally attach them to a workshop."

    def add_arguments(self, parser):
        parser.add_argument("files", nargs="+", type=Path)
        parser.add_argument("--workshop", help="workshop slug whose seats get these templates")
        parser.add_argument("--default", help="template name the workshop opens for a participant with an empty canvas")

    def handle(self, *args, files: list[Path], workshop: str | None, default: str | None, **options):
        target = None
        if workshop:
            target = Workshop.objects.filter(slug=workshop).first()
            if target is None:
                raise CommandError(f"No workshop called {workshop!r}.")
        workflows = {path.stem: read_workflow(path) for path in files}  # all checked before anything is saved
        pictures = {path.stem: picture for path in files if (picture := picture_beside(path)) is not None}
        if default and default not in workflows and not WorkflowTemplate.objects.filter(name=default).exists():
            raise CommandError(f"--default {default!r} is neither among the files nor an existing template.")
        with transaction.atomic():
            for name, workflow in workflows.items():
                template, created = WorkflowTemplate.objects.update_or_create(
                    name=name, defaults={"workflow": workflow}
                )
                picture = pictures.get(name)
                if picture is not None:
                    try:
                        set_thumbnail(template, picture.read_bytes())
                    except ThumbnailProblem as exc:
                        raise CommandError(f"{picture}: {exc}") from None  # nothing of this run is saved
                self.stdout.write(
                    f"{'Added' if created else 'Updated'} template {name!r}"
                    + (f" with its picture {picture.name}" if picture is not None else "")
                )
                if target is not None:
                    target.templates.add(template)
            if target is not None and default:
                target.default_template = WorkflowTemplate.objects.get(name=default)
                target.save(update_fields=["default_template"])
            if target is not None:
                push_templates(target)
        if target is not None:
            self.stdout.write(self.style.SUCCESS(f"{target.slug}: seats get the templates within a second."))
