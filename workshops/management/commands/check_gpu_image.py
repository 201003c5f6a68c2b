"""``manage.py check_gpu_image``: does a GPU's ComfyUI have every node and model the templates use? Before the day."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gpu_backends.client import BackendError, ComfyUIClient
from gpu_backends.inventory import image_needs, model_presence, required_models
from gpu_backends.models import GpuBackend
from gpu_backends.services import refresh_object_info

from .gpu_manifest import workflows_for


class Command(BaseCommand):
    help = (
        "Ask a GPU's ComfyUI for its node list (object_info) and check that every node type and model the "
        "templates use is there. Exit status 1 when anything is missing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--backend", help="A GPU backend by name (a Verda one starts a replica if none runs)")
        where.add_argument("--url", help="A ComfyUI's address, e.g. the image run locally: http://127.0.0.1:8188")
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--workshop", help="The templates of this workshop")
        which.add_argument("--template", action="append", help="A template by name (repeatable)")
        which.add_argument("--file", action="append", type=Path, help="A workflow file saved from ComfyUI")

    def handle(self, *args: Any, backend: str | None, url: str | None, workshop: str | None,
               template: list[str] | None, file: list[Path] | None, **options: Any) -> None:  # fmt: skip
        workflows = workflows_for(workshop, template, file)
        object_info, where = self._object_info(backend, url)
        needs = image_needs(workflows)
        missing_nodes = [t for t in needs.node_types if t not in object_info]
        missing_models = []
        seen = set()
        for workflow in workflows.values():
            for need in required_models(workflow):
                if need.name in seen:
                    continue
                seen.add(need.name)
                presence = model_presence(need, object_info)
                if presence != "present":
                    missing_models.append((need.name, presence))
        write = self.stdout.write
        write(f"{where}: {len(object_info)} node types; {len(workflows)} template(s) checked")
        for node_type in missing_nodes:
            users = ", ".join(needs.node_types[node_type])
            write(self.style.ERROR(f"  missing node {node_type} (used by {users}): install its custom node pack"))
        for name, presence in missing_models:
            model = next((m for m in needs.models if m.name == name), None)
            folder = model.path if model else name
            why = "its loader node is missing" if presence == "no-node" else f"put it in models/{folder}"
            write(self.style.ERROR(f"  missing model {name}: {why}"))
        if missing_nodes or missing_models:
            raise CommandError(
                f"{where} lacks {len(missing_nodes)} node type(s) and {len(missing_models)} model(s) the templates "
                "use (listed above)."
            )
        write(self.style.SUCCESS(f"  every node type ({len(needs.node_types)}) and model ({len(seen)}) is there"))

    def _object_info(self, backend: str | None, url: str | None) -> tuple[dict[str, Any], str]:
        try:
            if backend is not None:
                found = GpuBackend.objects.filter(name=backend).first()
                if found is None:
                    names = ", ".join(GpuBackend.objects.order_by("name").values_list("name", flat=True)) or "none"
                    raise CommandError(f"No GPU backend called {backend!r}; the backends are: {names}.")
                return refresh_object_info(found), f"backend {found.name}"
            assert url is not None
            if not url.startswith(("http://", "https://")):
                raise CommandError(f"--url must be an http(s) address, not {url!r}.")
            return ComfyUIClient(url.rstrip("/")).object_info(), url
        except BackendError as exc:
            raise CommandError(f"Could not read the node list: {exc}") from None
