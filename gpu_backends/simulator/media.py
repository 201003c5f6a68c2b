"""Pictures for the ComfyUI simulator: real PNG / animated WebP / animated PNG / MP4 / WebM files, visibly labelled.

Every frame says "ComfyuME simulator" and the prompt id on it, and every file carries the label in its
metadata (PNG text chunk ``comfyume_simulator``; WebP EXIF Software tag; the video container's ``title`` and
``comment``), next to the ``prompt`` / ``workflow`` metadata ComfyUI itself writes. Nothing here pretends to be
a generated image.

Videos are encoded with PyAV, as ComfyUI's own SaveVideo / SaveWEBM do (the wheel bundles FFmpeg with libx264,
libvpx-vp9 and libsvtav1): a test pattern whose band moves and whose frame counter advances.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

LABEL = "ComfyuME simulator"
METADATA_LABEL = "ComfyuME simulator (no GPU): a placeholder picture, not a generated image"
VIDEO_METADATA_LABEL = "ComfyuME simulator (no GPU): a placeholder test pattern, not a generated video"
MAX_SIDE = 2048


def fit(width: int, height: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(width, height) scaled down, aspect kept, so neither side exceeds ``max_side``; at least 1x1."""
    width, height = max(1, int(width)), max(1, int(height))
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _colour(seed: str) -> tuple[int, int, int]:
    digest = hashlib.sha1(seed.encode()).digest()
    # Mid-tone colours so the white/black text stays readable.
    return tuple(64 + b % 128 for b in digest[:3])  # type: ignore[return-value]


def render_frame(
    width: int, height: int, lines: list[str], *, seed: str, frame: int = 0, frames: int = 1
) -> Image.Image:
    """One RGB picture: a flat colour from ``seed``, a band that moves with ``frame``, and ``lines`` of text."""
    width, height = fit(width, height)
    background = _colour(seed)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    band = max(2, width // 8)
    x = int((width - band) * (frame / max(1, frames - 1))) if frames > 1 else (width - band) // 2
    draw.rectangle([x, 0, x + band, height], fill=tuple(255 - c for c in background))
    text = [LABEL, *lines] + ([f"frame {frame + 1}/{frames}"] if frames > 1 else [])
    size = max(6, min(width, height) // 12)
    font = ImageFont.load_default(size=size)
    widest = max(font.getlength(line) for line in text)
    if widest > width * 0.94:  # shrink so the longest line (the prompt id) fits
        size = max(6, int(size * width * 0.94 / widest))
        font = ImageFont.load_default(size=size)
    y = max(1, size // 3)
    for line in text:
        draw.text(
            (max(1, size // 3), y),
            line,
            fill=(255, 255, 255),
            font=font,
            stroke_width=max(1, size // 10),
            stroke_fill=(0, 0, 0),
        )
        y += size + size // 3
    return image


@functools.lru_cache(maxsize=256)
def preview_jpeg(seed: str, node_id: str, step: int, steps: int) -> bytes:
    """A live preview of one sampler step, as ComfyUI's latent previewer sends it: a small JPEG (at most 512 px
    on its longer side there; 256 here) that changes with every step.

    ComfyUI draws its previews in the execution thread; the simulator draws them in its event loop, where a
    crowd's previews (16 jobs at once, a frame per step) held up every other message by a second. The picture
    depends on the seed, node and step only, so the caller passes a seed that repeats (the node's class) and
    each frame is drawn once."""
    picture = render_frame(
        256, 256, [f"preview node {node_id}", f"step {step}/{steps}"], seed=seed, frame=step - 1, frames=steps
    )
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=70)
    return out.getvalue()


def _json(value: Any) -> str:
    return json.dumps(value)


def _png_info(prompt: dict | None, extra_pnginfo: dict | None) -> PngInfo:
    """ComfyUI's text chunks (``prompt``, one per ``extra_pnginfo`` key) plus the simulator label."""
    info = PngInfo()
    info.add_text("comfyume_simulator", METADATA_LABEL)
    if prompt is not None:
        info.add_text("prompt", _json(prompt))
    for key, value in (extra_pnginfo or {}).items():
        info.add_text(str(key), _json(value))
    return info


def save_png(
    path: Path, image: Image.Image, *, prompt: dict | None, extra_pnginfo: dict | None, compress_level: int = 4
) -> None:
    """A PNG with ComfyUI's text chunks plus the simulator label."""
    image.save(path, pnginfo=_png_info(prompt, extra_pnginfo), compress_level=compress_level)


def save_animated_png(
    path: Path, frames: list[Image.Image], *, fps: float, prompt: dict | None, extra_pnginfo: dict | None
) -> None:
    frames[0].save(
        path,
        pnginfo=_png_info(prompt, extra_pnginfo),
        compress_level=4,
        save_all=True,
        duration=int(1000.0 / fps),
        append_images=frames[1:],
    )


def save_animated_webp(
    path: Path,
    frames: list[Image.Image],
    *,
    fps: float,
    lossless: bool,
    quality: int,
    method: int,
    prompt: dict | None,
    extra_pnginfo: dict | None,
) -> None:
    """An (animated when several frames) WebP, EXIF tagged like ComfyUI's SaveAnimatedWEBP plus the label."""
    exif = frames[0].getexif()
    exif[0x0131] = METADATA_LABEL  # Software (ComfyUI itself uses 0x0110 and 0x010F downwards)
    if prompt is not None:
        exif[0x0110] = f"prompt:{_json(prompt)}"
    tag = 0x010F
    for key, value in (extra_pnginfo or {}).items():
        exif[tag] = f"{key}:{_json(value)}"
        tag -= 1
    frames[0].save(
        path,
        save_all=True,
        duration=int(1000.0 / fps),
        append_images=frames[1:],
        exif=exif,
        lossless=lossless,
        quality=quality,
        method=method,
    )


def save_video(
    path: Path,
    frames: list[Image.Image],
    *,
    fps: float,
    codec: str,
    pix_fmt: str,
    options: dict[str, str],
    bit_rate: int | None = None,
    container_options: dict[str, str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Encode ``frames`` with the FFmpeg encoder ``codec`` into ``path`` (container from its suffix).

    ``metadata`` values are stored JSON-encoded like ComfyUI's (``prompt``, ``workflow``); ``title`` and
    ``comment`` carry the simulator label. Frame sides must be even for the 4:2:0 pixel formats.
    """
    if codec == "libsvtav1":  # SVT-AV1 prints its whole configuration to stderr unless told otherwise
        os.environ.setdefault("SVT_LOG", "1")
    with av.open(str(path), mode="w", options=container_options or {}) as output:
        output.metadata["title"] = LABEL
        output.metadata["comment"] = VIDEO_METADATA_LABEL
        for key, value in (metadata or {}).items():
            output.metadata[str(key)] = _json(value)
        # ComfyUI's rate: milli-fps precision, so 23.976 stays 23976/1000 rather than a float's fraction.
        stream = output.add_stream(codec, rate=Fraction(round(fps * 1000), 1000), options=options)
        if not isinstance(stream, av.VideoStream):
            raise ValueError(f"{codec} is not a video encoder")
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = pix_fmt
        if bit_rate is not None:
            stream.bit_rate = bit_rate
        for image in frames:
            output.mux(stream.encode(av.VideoFrame.from_image(image)))
        output.mux(stream.encode(None))
