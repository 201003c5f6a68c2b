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


def history_messages(entry: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A ``/history`` entry's status messages as ``(type, data)``.

    ComfyUI 0.3 keeps ``[type, data]`` pairs, the data with its ``timestamp`` (ms); newer ones (0.12) keep only the
    types' names, and they come with empty data here. Anything else is skipped.
    """
    found: list[tuple[str, dict[str, Any]]] = []
    for item in (entry.get("status") or {}).get("messages") or []:
        if isinstance(item, str):
            found.append((item, {}))
        elif isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], str):
            found.append((item[0], item[1] if isinstance(item[1], dict) else {}))
    return found


def history_stamps(entry: dict[str, Any]) -> dict[str, float]:
    """ComfyUI's own timestamps (ms) of a history entry's messages, by type; none from a names-only entry."""
    return {
        kind: float(data["timestamp"])
        for kind, data in history_messages(entry)
        if isinstance(data.get("timestamp"), int | float)
    }


def history_failure(entry: dict[str, Any], prompt_id: str) -> tuple[str, dict[str, Any]] | None:
    """How a history entry's prompt failed: ``("execution_interrupted" | "execution_error", data)``, or None.

    Where the entry keeps the message's data (0.3) that is it; where it keeps only the messages' names (0.12), an
    interrupt or an error is still one, with what little is known: without this a failed prompt recovered from
    history was taken for a success.
    """
    messages = history_messages(entry)
    for wanted in ("execution_interrupted", "execution_error"):
        data = next((data for kind, data in messages if kind == wanted), None)
        if data:
            return wanted, data
        if data is not None:  # the name only
            return wanted, {**_UNKNOWN_FAILURE[wanted], "prompt_id": prompt_id}
    if (entry.get("status") or {}).get("status_str") == "error":
        return "execution_error", {**_UNKNOWN_FAILURE["execution_error"], "prompt_id": prompt_id}
    return None


_UNKNOWN_FAILURE: dict[str, dict[str, Any]] = {
    "execution_interrupted": {"node_id": None, "node_type": "", "executed": []},
    "execution_error": {
        "node_id": None,
        "node_type": "",
        "executed": [],
        "exception_message": "The workflow failed on the GPU; its ComfyUI kept no detail of the error.",
        "exception_type": "unknown",
        "traceback": [],
        "current_inputs": {},
        "current_outputs": [],
    },
}


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


# --- Binary preview frames (ComfyUI's server.py BinaryEventTypes and send_image) ------------------------------

PREVIEW_IMAGE = 1  # 4-byte event type, 4-byte image type (1 JPEG, 2 PNG), the image
PREVIEW_IMAGE_WITH_METADATA = 4  # 4-byte event type, 4-byte length, JSON metadata (prompt_id, node_id, image_type)
PREVIEW_FORMATS = {1: "image/jpeg", 2: "image/png"}
MAX_PREVIEW_BYTES = 2 * 1024 * 1024  # a preview is a small JPEG; anything larger is not one


# What a client sends first to get previews with metadata (ComfyUI's feature flags, as its web frontend sends them).
PREVIEW_METADATA_FLAGS = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
NODE_KEYS = ("node_id", "display_node_id", "parent_node_id", "real_node_id")


@dataclass(frozen=True)
class Preview:
    """One live preview of a running prompt, as ComfyUI sent it."""

    content_type: str  # image/jpeg or image/png
    image: bytes
    prompt_id: str | None = None  # only the metadata variant names the prompt and nodes
    nodes: dict[str, str | None] | None = None  # node_id, display_node_id, parent_node_id, real_node_id

    def frame(self, prompt_id: str, running_node: str | None = None) -> bytes | None:
        """PREVIEW_IMAGE_WITH_METADATA under ``prompt_id``: what newer frontends draw (on the node it names). A
        preview that came without metadata is the running node's; without one either, there is nowhere to draw
        it (None)."""
        nodes = self.nodes
        if nodes is None and running_node is not None:  # a top-level node: no parent
            nodes = {"node_id": running_node, "display_node_id": running_node, "parent_node_id": None}
            nodes["real_node_id"] = running_node
        if nodes is None:
            return None
        metadata = {**nodes, "prompt_id": prompt_id, "image_type": self.content_type}
        header = json.dumps(metadata, separators=(",", ":")).encode()
        return PREVIEW_IMAGE_WITH_METADATA.to_bytes(4, "big") + len(header).to_bytes(4, "big") + header + self.image


def decode_preview(raw: bytes) -> Preview | None:
    """A binary frame as a preview; None for any other binary event (text, unknown types) or a malformed one."""
    if len(raw) < 8 or len(raw) > MAX_PREVIEW_BYTES + 64 * 1024:
        return None
    event = int.from_bytes(raw[:4], "big")
    if event == PREVIEW_IMAGE:
        content_type = PREVIEW_FORMATS.get(int.from_bytes(raw[4:8], "big"))
        return Preview(content_type, raw[8:]) if content_type and len(raw) > 8 else None
    if event == PREVIEW_IMAGE_WITH_METADATA:
        length = int.from_bytes(raw[4:8], "big")
        try:
            metadata = json.loads(raw[8 : 8 + length])
        except ValueError:
            return None
        image = raw[8 + length :]
        if not isinstance(metadata, dict) or not image or metadata.get("image_type") not in PREVIEW_FORMATS.values():
            return None
        node = metadata.get("node_id")
        if not isinstance(node, str | int) or isinstance(node, bool):
            return None
        nodes = {key: None if metadata.get(key) is None else str(metadata[key]) for key in NODE_KEYS}
        nodes["display_node_id"] = nodes["display_node_id"] or str(node)
        prompt_id = metadata.get("prompt_id")
        return Preview(metadata["image_type"], image, prompt_id=str(prompt_id) if prompt_id else None, nodes=nodes)
    return None


class PreviewThrottle:
    """At most ``per_second`` previews of one run pass; the others are dropped (the next one shows the newer
    state anyway, and the events that matter never wait behind pictures)."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else None
        self.last = float("-inf")

    def allows(self, now: float) -> bool:
        if self.interval is None or now - self.last < self.interval:
            return False
        self.last = now
        return True
