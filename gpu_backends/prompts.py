"""Pure functions on API-format prompts, shared by the hub's providers and the GPU worker (no Django here)."""

from __future__ import annotations

from typing import Any


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
