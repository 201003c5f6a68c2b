"""Recorded facts from real ComfyUIs, 0.3.64 and 0.12.1 (copied from shared/fixtures so a clean clone tests alone)."""

import gzip
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "tests" / "data" / "comfyui-0.3.64"
# 0.12.1 (the installable fork's packaging; its README in shared/fixtures says where it differs from upstream).
NEWER = ROOT / "tests" / "data" / "comfyui-0.12.1"
OBJECT_INFO_PATH = ROOT / "gpu_backends" / "data" / "object_info.json"
TINY_PATH = ROOT / "workshops" / "data" / "tiny_workflow_api.json"


def load(path: Path):
    """A recorded JSON file; a large one is kept gzipped (``object_info.json.gz``)."""
    if path.suffix == ".gz":
        return json.loads(gzip.decompress(path.read_bytes()))
    return json.loads(path.read_text())


def recorded_invalid() -> dict:
    """ComfyUI's 400 bodies for invalid prompts, by case name."""
    return load(CAPTURES / "protocol_capture_1.json")["invalid"]
