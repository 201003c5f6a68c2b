"""``manage.py gpu_manifest``: what a GPU image (or volume) needs for a workshop's templates, as a manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gpu_backends.inventory import image_needs
from workshops.models import WorkflowTemplate, Workshop


class Command(BaseCommand):
    help = (
        "List the models (folder, download address) and node types the templates need on the GPU, and write them "
        "as a manifest for deploy/gpu-worker/fetch_models.py (docs: deploy/gpu-worker/README.md, 'Models')."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--workshop", help="The templates of this workshop")
        which.add_argument("--template", action="append", help="A template by name (repeatable)")
        which.add_argument("--file", action="append", type=Path, help="A workflow file saved from ComfyUI")
        parser.add_argument("--out", type=Path, help="Write the manifest (JSON) here")

    def handle(self, *args: Any, workshop: str | None, template: list[str] | None, file: list[Path] | None,
               out: Path | None, **options: Any) -> None:  # fmt: skip
        workflows = workflows_for(workshop, template, file)
        needs = image_needs(workflows)
        write = self.stdout.write
        write(f"{len(workflows)} template(s): {', '.join(workflows)}")
        write(f"Models ({len(needs.models)}), under ComfyUI's models/ folder:")
        for model in needs.models:
            where = model.url or "no download address in the template: put the file there yourself"
            folder = "" if model.folder else "  (folder unknown: check the loader node)"
            write(f"  {model.path}{folder}\n      {where}\n      used by {', '.join(model.templates)}")
        write(f"Node types ({len(needs.node_types)}): {', '.join(needs.node_types)}")
        if out is not None:
            if out.exists():
                raise CommandError(f"{out} exists already; refusing to overwrite it.")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"templates": list(workflows), **needs.as_json()}, indent=2) + "\n")
            write(self.style.SUCCESS(f"Manifest: {out} (python deploy/gpu-worker/fetch_models.py {out} --to DIR)"))


def read_json_file(path: Path) -> Any:
    """A JSON file a command was given; CommandError saying why when it cannot be read or is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CommandError(f"Cannot read {path}: {exc.strerror}.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError(f"{path} is not JSON: {exc}.") from None


def workflows_for(workshop: str | None, names: list[str] | None, files: list[Path] | None) -> dict[str, Any]:
    """The UI-format workflows of a workshop's templates, of named templates, or of files; CommandError when none."""
    if workshop is not None:
        found = Workshop.objects.filter(slug=workshop).first()
        if found is None:
            raise CommandError(f"No workshop called {workshop!r}.")
        own = list(found.templates.order_by("name"))
        if not own:
            raise CommandError(f"{workshop} has no templates: add them first (load_templates, or the admin).")
        return {t.name: t.workflow for t in own}
    if names:
        templates = {t.name: t.workflow for t in WorkflowTemplate.objects.filter(name__in=names)}
        missing = [name for name in names if name not in templates]
        if missing:
            known = ", ".join(WorkflowTemplate.objects.order_by("name").values_list("name", flat=True)) or "none"
            raise CommandError(f"No template called {', '.join(map(repr, missing))}; the templates are: {known}.")
        return templates
    workflows = {}
    for path in files or []:
        data = read_json_file(path)
        if not isinstance(data, dict) or "nodes" not in data:
            raise CommandError(f"{path} is not a workflow saved from ComfyUI (UI format, with 'nodes').")
        workflows[path.stem] = data
    return workflows
