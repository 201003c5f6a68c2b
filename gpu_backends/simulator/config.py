"""The simulator's settings (SimulatorConfig, changeable while it runs) and its fixed constants."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

log = logging.getLogger("comfyume.simulator")

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEVICE_NAME = "ComfyuME simulator (no GPU)"
SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": 100 * 1024 * 1024}
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
MAX_HISTORY = 10000
TEXT_500 = "500 Internal Server Error\n\nServer got itself in trouble"  # aiohttp's answer to a crash
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
# Nodes whose VALIDATE_INPUTS checks a file on the backend's disk (nodes.py); jobs.preflight leaves them to us.
FILE_INPUTS = {
    "LoadImage": ("image", "Invalid image file: {}"),
    "LoadImageMask": ("image", "Invalid image file: {}"),
    "LoadLatent": ("latent", "Invalid latent file: {}"),
}
# Inputs that say how many images (frames) flow downstream. Frame counts come before batch_size: a video latent
# (EmptyLTXVLatentVideo: length 97, batch_size 1) decodes to ``length`` frames, not one.
BATCH_KEYS = ("length", "frames", "num_frames", "video_frames", "batch_size", "amount")
MAX_IMAGES, MAX_FRAMES, MAX_FRAME_SIDE = 64, 48, 512
_CLOSE_ALL = "__close_all_sockets__"
_BINARY = "__binary_frame__"  # a message whose data is a binary frame (a live preview)
PREVIEW_METHODS = ("none", "auto", "latent2rgb", "taesd", "default")


@dataclass
class SimulatorConfig:
    """How the simulator behaves. Everything but the two paths can change while it runs (next prompt)."""

    object_info_path: Path = DATA_DIR / "object_info.json"
    output_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "comfyume-simulator")
    node_delay: float = 0.05
    progress_steps: int = 0
    progress_all: bool = False
    concurrency: int = 1
    fail_on_class: set[str] = field(default_factory=set)
    http_fail_count: int = 0
    http_fail_status: int = 503
    ws_drop_after: int = 0
    hang_on_class: set[str] = field(default_factory=set)
    history_delay: float = 0.0
    models: list[str] = field(default_factory=list)
    cache: bool = False
    # Live previews while a node reports progress, as ComfyUI's --preview-method (whose default is none); a
    # prompt's extra_data.preview_method overrides it for that prompt ("default": this one).
    preview_method: str = "none"

    READ_ONLY: ClassVar[tuple[str, ...]] = ("object_info_path", "output_dir")

    def __post_init__(self) -> None:
        self.object_info_path = Path(self.object_info_path)
        self.output_dir = Path(self.output_dir)
        self.fail_on_class = set(self.fail_on_class)
        self.hang_on_class = set(self.hang_on_class)
        self.models = list(self.models)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = sorted(value) if isinstance(value, set) else str(value) if isinstance(value, Path) else value
        return out

    def update(self, changes: dict[str, Any]) -> None:
        """Apply JSON changes; ValueError (nothing applied) for unknown, read-only or ill-typed keys."""
        types = {
            "node_delay": float,
            "history_delay": float,
            "progress_steps": int,
            "concurrency": int,
            "http_fail_count": int,
            "http_fail_status": int,
            "ws_drop_after": int,
            "progress_all": bool,
            "cache": bool,
            "preview_method": str,
            "fail_on_class": set,
            "hang_on_class": set,
            "models": list,
        }
        clean: dict[str, Any] = {}
        for key, value in changes.items():
            if key in self.READ_ONLY:
                raise ValueError(f"{key} is fixed when the simulator starts")
            if key not in types:
                raise ValueError(f"unknown setting {key!r}")
            want = types[key]
            if want in (set, list):
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"{key} must be a list of strings")
                clean[key] = want(value)
            elif want is bool:
                if not isinstance(value, bool):
                    raise ValueError(f"{key} must be true or false")
                clean[key] = value
            elif want is str:
                if value not in PREVIEW_METHODS[:-1]:
                    raise ValueError(f"{key} must be one of {', '.join(PREVIEW_METHODS[:-1])}")
                clean[key] = value
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise ValueError(f"{key} must be a number >= 0")
                clean[key] = want(value)
        if clean.get("concurrency", 1) < 1:
            raise ValueError("concurrency must be >= 1")
        for key, value in clean.items():
            setattr(self, key, value)
