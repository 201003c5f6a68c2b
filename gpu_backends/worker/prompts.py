"""Pure pieces of ComfyUI's protocol shared by the hub's providers and the GPU worker (no Django, no HTTP here):
API-format prompts, the files an ``executed`` output names, and WebSocket messages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FileRef:
    """A file as ComfyUI names it in an ``executed`` output."""

    filename: str
    subfolder: str
    type: str


def file_refs(output: dict[str, Any]) -> Iterator[tuple[str, int, FileRef]]:
    """Every file an ``executed`` output names, with the key and index it stands at: any key holding
    ``{filename, subfolder, type}`` dicts (images, gifs, videos, audio, …)."""
    for key, items in output.items():
        if not isinstance(items, list):
            continue
        for index, item in enumerate(items):
            if isinstance(item, dict) and isinstance(item.get("filename"), str):
                ref = FileRef(item["filename"], str(item.get("subfolder") or ""), str(item.get("type") or "output"))
                yield key, index, ref


def decode_message(raw: str | bytes) -> dict[str, Any] | None:
    """A text frame as a ComfyUI message (``data`` always a dict); binary frames (previews) and junk give None."""
    if isinstance(raw, bytes):
        return None
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return None
    if not isinstance(message.get("data"), dict):
        message["data"] = {}
    return message


def rewrite_inputs(prompt: dict[str, Any], renamed: dict[str, str]) -> dict[str, Any]:
    """The prompt with every input value naming an uploaded file replaced by its name on the backend
    (ComfyUI also accepts the ``name [input]`` annotation, which is kept)."""
    if not renamed:
        return prompt
    out: dict[str, Any] = {}
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            out[node_id] = node
            continue
        inputs = {}
        for key, value in node["inputs"].items():
            if isinstance(value, str):
                bare, annotated = (value[: -len(" [input]")], True) if value.endswith(" [input]") else (value, False)
                if bare in renamed:
                    value = renamed[bare] + (" [input]" if annotated else "")
            inputs[key] = value
        out[node_id] = {**node, "inputs": inputs}
    return out
