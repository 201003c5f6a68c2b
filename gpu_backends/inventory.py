"""Which of a workflow template's models each GPU backend has, read from the backend's node catalogue.

A model a workflow needs shows up twice in ComfyUI's saved workflows: in a loader node's widget values (the
file name its combo box holds) and, in templates, in the node's ``properties.models`` (name, folder, download
URL). Workflows with subgraphs keep those nodes under ``definitions.subgraphs``. A backend has a model when the
loader's combo list in its ``object_info`` offers that file — the same test preflight applies to a prompt, so
the admin's answer and the participant's experience agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".gguf", ".sft", ".bin", ".onnx")


@dataclass
class ModelNeed:
    name: str
    folder: str = ""
    node_types: set[str] = field(default_factory=set)
    url: str = ""  # where the template says to download it (properties.models[].url)


def _nodes(workflow: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for node in workflow.get("nodes") or []:
        if isinstance(node, dict):
            yield node
    for subgraph in (workflow.get("definitions") or {}).get("subgraphs") or []:
        if isinstance(subgraph, dict):
            yield from _nodes(subgraph)


def required_models(workflow: Any, object_info: dict[str, Any] | None = None) -> list[ModelNeed]:
    """The model files a UI-format workflow names, in the order they first appear.

    Widget values count when they look like a model file and the node is a real node type (a subgraph's
    instance repeats its inner nodes' values and has a UUID for a type).
    """
    if not isinstance(workflow, dict):
        return []
    needs: dict[str, ModelNeed] = {}
    subgraph_ids = {
        sg.get("id") for sg in (workflow.get("definitions") or {}).get("subgraphs") or [] if isinstance(sg, dict)
    }
    for node in _nodes(workflow):
        node_type = str(node.get("type") or "")
        is_subgraph = node_type in subgraph_ids
        for model in (node.get("properties") or {}).get("models") or []:
            if isinstance(model, dict) and isinstance(model.get("name"), str):
                need = needs.setdefault(model["name"], ModelNeed(model["name"]))
                need.folder = need.folder or str(model.get("directory") or "")
                need.url = need.url or str(model.get("url") or "")
                if not is_subgraph:
                    need.node_types.add(node_type)
        values = node.get("widgets_values")
        if is_subgraph or not isinstance(values, list):
            continue
        for value in values:
            if isinstance(value, str) and value.lower().endswith(MODEL_SUFFIXES):
                needs.setdefault(value, ModelNeed(value)).node_types.add(node_type)
    return list(needs.values())


def _combo_options(spec: Any) -> list[str]:
    """The choices of one input spec: ``[[a, b], {...}]`` (classic) or ``["COMBO", {"options": [...]}]``."""
    if not isinstance(spec, list) or not spec:
        return []
    if isinstance(spec[0], list):
        return [str(v) for v in spec[0]]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return [str(v) for v in spec[1].get("options") or []]
    return []


def _options_of(object_info: dict[str, Any], node_type: str) -> set[str]:
    info = object_info.get(node_type)
    if not isinstance(info, dict):
        return set()
    options: set[str] = set()
    for section in ("required", "optional"):
        for spec in ((info.get("input") or {}).get(section) or {}).values():
            options.update(_combo_options(spec))
    return options


def model_presence(need: ModelNeed, object_info: dict[str, Any] | None) -> str:
    """'present', 'missing', 'no-node' (the loader node type itself is missing) or 'unknown' (no catalogue)."""
    if object_info is None:
        return "unknown"
    types = [t for t in need.node_types if t]
    if types:
        known = [t for t in types if t in object_info]
        if not known:
            return "no-node"
        return "present" if any(need.name in _options_of(object_info, t) for t in known) else "missing"
    # Only named in properties: any loader offering it will do.
    return "present" if any(need.name in _options_of(object_info, t) for t in object_info) else "missing"


# --- What a GPU image needs for a set of templates -------------------------------------------------------------

# The folder under ComfyUI's models/ each core loader reads, for a model a template names without one.
LOADER_FOLDERS = {
    "CheckpointLoaderSimple": "checkpoints",
    "ImageOnlyCheckpointLoader": "checkpoints",
    "UNETLoader": "diffusion_models",
    "CLIPLoader": "text_encoders",
    "DualCLIPLoader": "text_encoders",
    "TripleCLIPLoader": "text_encoders",
    "VAELoader": "vae",
    "LoraLoader": "loras",
    "LoraLoaderModelOnly": "loras",
    "UpscaleModelLoader": "upscale_models",
    "LatentUpscaleModelLoader": "latent_upscale_models",
    "ControlNetLoader": "controlnet",
    "CLIPVisionLoader": "clip_vision",
    "StyleModelLoader": "style_models",
}
# Node types that live only in the web frontend: they never reach the GPU, so no image needs them.
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


@dataclass
class ImageModel:
    name: str
    folder: str  # under ComfyUI's models/; "" when no template or loader says
    url: str
    templates: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return f"{self.folder}/{self.name}" if self.folder else self.name


@dataclass
class ImageNeeds:
    models: list[ImageModel]
    node_types: dict[str, list[str]]  # node type → the templates using it

    def as_json(self) -> dict[str, Any]:
        return {
            "models": [
                {"name": m.name, "folder": m.folder, "url": m.url, "templates": m.templates} for m in self.models
            ],
            "node_types": self.node_types,
        }


def node_types(workflow: Any) -> set[str]:
    """The node types a UI-format workflow runs on the GPU (subgraph instances and frontend-only nodes aside)."""
    if not isinstance(workflow, dict):
        return set()
    subgraph_ids = {
        sg.get("id") for sg in (workflow.get("definitions") or {}).get("subgraphs") or [] if isinstance(sg, dict)
    }
    return {
        str(node.get("type"))
        for node in _nodes(workflow)
        if node.get("type") and node.get("type") not in subgraph_ids and node.get("type") not in FRONTEND_ONLY
    }


def image_needs(workflows: dict[str, Any]) -> ImageNeeds:
    """Every model (with its folder and download address) and node type a set of templates needs on the GPU."""
    models: dict[str, ImageModel] = {}
    types: dict[str, list[str]] = {}
    for template, workflow in workflows.items():
        for need in required_models(workflow):
            folder = need.folder or next(
                (LOADER_FOLDERS[t] for t in sorted(need.node_types) if t in LOADER_FOLDERS), ""
            )
            model = models.setdefault(need.name, ImageModel(need.name, folder, need.url))
            model.folder, model.url = model.folder or folder, model.url or need.url
            if template not in model.templates:
                model.templates.append(template)
        for node_type in sorted(node_types(workflow)):
            types.setdefault(node_type, []).append(template)
    return ImageNeeds(sorted(models.values(), key=lambda m: m.path), dict(sorted(types.items())))
