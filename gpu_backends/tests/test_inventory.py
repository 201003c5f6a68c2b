"""Which models a workflow template needs, and which of them a backend's node catalogue offers."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from gpu_backends.inventory import model_presence, required_models
from tests.recorded import OBJECT_INFO_PATH, load

TEMPLATES = Path(__file__).resolve().parents[2] / "workshops" / "data" / "templates"


def template(name: str) -> dict:
    return json.loads((TEMPLATES / name).read_text())


def catalogue_with(**options: list[str]) -> dict:
    """The recorded ComfyUI catalogue with the given loader inputs' choices (e.g. unet_name=[...])."""
    info = copy.deepcopy(load(OBJECT_INFO_PATH))
    for node in info.values():
        for section in ("required", "optional"):
            for name, spec in (node["input"].get(section) or {}).items():
                if name in options and isinstance(spec, list) and isinstance(spec[0], list):
                    spec[0] = options[name]
    return info


def test_flux_template_models_come_from_its_subgraph_loaders():
    needs = {n.name: n for n in required_models(template("flux2_klein_4b_text_to_image.json"))}
    assert set(needs) == {
        "flux-2-klein-base-4b.safetensors",
        "flux-2-klein-4b.safetensors",
        "qwen_3_4b.safetensors",
        "flux2-vae.safetensors",
    }
    assert needs["qwen_3_4b.safetensors"].folder == "text_encoders"
    assert needs["flux2-vae.safetensors"].node_types == {"VAELoader"}
    # The subgraph instances (a UUID for a type) do not count as node types.
    assert all(len(t) < 30 for n in needs.values() for t in n.node_types)


def test_ltx_template_names_its_text_encoder_lora_and_upscaler():
    names = {n.name for n in required_models(template("ltx2_text_to_video.json"))}
    assert {
        "ltx-2-19b-dev-fp8.safetensors",
        "gemma_3_12B_it_fp4_mixed.safetensors",
        "ltx-2-spatial-upscaler-x2-1.0.safetensors",
        "ltx-2-19b-distilled-lora-384.safetensors",
    } <= names


def test_presence_follows_the_loaders_choices():
    needs = {n.name: n for n in required_models(template("flux2_klein_4b_text_to_image.json"))}
    info = catalogue_with(
        unet_name=["flux-2-klein-4b.safetensors"],
        clip_name=["qwen_3_4b.safetensors"],
        vae_name=[],
    )
    assert model_presence(needs["flux-2-klein-4b.safetensors"], info) == "present"
    assert model_presence(needs["flux-2-klein-base-4b.safetensors"], info) == "missing"
    assert model_presence(needs["flux2-vae.safetensors"], info) == "missing"
    assert model_presence(needs["qwen_3_4b.safetensors"], None) == "unknown"


def test_a_backend_without_the_loader_node_says_so():
    needs = {n.name: n for n in required_models(template("ltx2_text_to_video.json"))}
    info = load(OBJECT_INFO_PATH)  # ComfyUI 0.3.64: no LTX-2 nodes
    assert model_presence(needs["ltx-2-spatial-upscaler-x2-1.0.safetensors"], info) == "no-node"


@pytest.mark.parametrize("workflow", [None, [], {"nodes": "x"}, {"nodes": [{"type": "X", "widgets_values": {"a": 1}}]}])
def test_odd_workflows_need_nothing(workflow):
    assert required_models(workflow) == []
