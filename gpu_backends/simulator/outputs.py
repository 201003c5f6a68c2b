"""What output nodes leave behind: the files SaveImage & co. write, named and sized like ComfyUI's."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image

from . import media
from .config import BATCH_KEYS, MAX_FRAME_SIDE, MAX_FRAMES, MAX_IMAGES
from .graph import _int, _Run, is_link

# ComfyUI 0.3.64's video savers (comfy_extras/nodes_video.py; VideoFromComponents.save_to in
# comfy_api/latest/_input_impl/video_types.py): SaveVideo writes H.264 (FFmpeg's default h264 encoder, libx264 in
# PyAV's wheel) in MP4 for "auto" and "mp4" / "h264" alike, with movflags=use_metadata_tags so the prompt and
# workflow survive in the MP4; SaveWEBM maps its codec combo to an encoder and a pixel format, at constant quality
# (bit_rate 0 and its crf). The speed options are the simulator's own, not ComfyUI's: the same codec and container
# in a fraction of the time (libvpx's default "good" deadline is ~6x slower, SVT-AV1's preset 6 ~3x).
WEBM_ENCODERS = {
    "vp9": ("libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8"}),
    "av1": ("libsvtav1", "yuv420p10le", {"preset": "10"}),
}
# The input that carries a frame rate (SaveWEBM's and CreateVideo's ``fps``, some custom nodes' ``frame_rate``).
FPS_KEYS = ("fps", "frame_rate")


class OutputsMixin:
    """The output-node half of :class:`~.engine.Simulator`: file writing, ComfyUI's save paths and counters."""

    dirs: dict[str, Path]
    save_lock: threading.Lock

    # ---------- output nodes ----------
    async def node_output(self, run: _Run, node_id: str) -> dict[str, Any] | None:
        class_type = run.prompt[node_id]["class_type"]
        writer = {
            "SaveImage": self._save_images,
            "PreviewImage": self._save_images,
            "MaskPreview": self._save_images,
            "SaveAnimatedWEBP": self._save_animation,
            "SaveAnimatedPNG": self._save_animation,
            "SaveVideo": self._save_video,
            "SaveWEBM": self._save_video,
        }.get(class_type)
        if class_type == "PreviewAny":
            return {"text": [f"ComfyuME simulator: no value was computed for node {node_id}"]}
        if writer is None:
            raise RuntimeError(f"ComfyuME simulator cannot simulate the output node {class_type}")
        return await asyncio.to_thread(writer, run, node_id)

    def geometry(self, prompt: dict[str, Any], node_id: str) -> tuple[int, int, int | None]:
        """Width, height, batch found upstream of ``node_id`` (breadth first); 512x512 when nothing says."""
        size: tuple[int, int] | None = None
        batch: int | None = None
        seen, frontier = {node_id}, [node_id]
        while frontier and (size is None or batch is None):
            next_frontier = []
            for current in frontier:
                node = prompt.get(current, {})
                inputs = node.get("inputs", {})
                width, height = _int(inputs.get("width")), _int(inputs.get("height"))
                if size is None and width and height and not is_link(inputs.get("width")):
                    size = (width, height)
                if size is None and node.get("class_type") in ("LoadImage", "LoadImageMask"):
                    size = self._input_image_size(inputs.get("image"))
                if batch is None:
                    batch = next((_int(inputs[k]) for k in BATCH_KEYS if k in inputs and _int(inputs[k])), None)
                for value in inputs.values():
                    if is_link(value) and value[0] not in seen:
                        seen.add(value[0])
                        next_frontier.append(value[0])
            frontier = next_frontier
        width, height = size or (512, 512)
        return width, height, batch

    def frame_rate(self, prompt: dict[str, Any], node_id: str) -> float | None:
        """The frame rate a video node is given: its own ``fps``, else the nearest upstream one (CreateVideo's),
        read through a linked Primitive node; None when nothing says."""
        seen, frontier = {node_id}, [node_id]
        while frontier:
            next_frontier = []
            for current in frontier:
                inputs = prompt.get(current, {}).get("inputs", {})
                for key in FPS_KEYS:
                    value = inputs.get(key)
                    if is_link(value):  # PrimitiveFloat / PrimitiveInt hold their number in "value"
                        value = prompt.get(value[0], {}).get("inputs", {}).get("value")
                    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                        return float(value)
                for value in inputs.values():
                    if is_link(value) and value[0] not in seen:
                        seen.add(value[0])
                        next_frontier.append(value[0])
            frontier = next_frontier
        return None

    def _input_image_size(self, name: Any) -> tuple[int, int] | None:
        if not isinstance(name, str):
            return None
        path = (self.dirs["input"] / name).resolve()
        if not path.is_relative_to(self.dirs["input"]) or not path.is_file():
            return None
        try:
            with Image.open(path) as img:
                return img.size
        except OSError:
            return None

    def save_path(self, prefix: str, base: Path, width: int, height: int) -> tuple[Path, str, int, str]:
        """ComfyUI's folder_paths.get_save_image_path: (folder, file stem, next counter, subfolder)."""
        if "%" in prefix:
            now = time.localtime()
            for key, value in (
                ("%width%", width),
                ("%height%", height),
                ("%year%", now.tm_year),
                ("%month%", f"{now.tm_mon:02}"),
                ("%day%", f"{now.tm_mday:02}"),
                ("%hour%", f"{now.tm_hour:02}"),
                ("%minute%", f"{now.tm_min:02}"),
                ("%second%", f"{now.tm_sec:02}"),
            ):
                prefix = prefix.replace(key, str(value))
        subfolder = os.path.dirname(os.path.normpath(prefix))
        stem = os.path.basename(os.path.normpath(prefix))
        folder = os.path.abspath(os.path.join(base, subfolder))
        if os.path.commonpath((str(base), folder)) != str(base):
            raise Exception("**** ERROR: Saving image outside the output folder is not allowed.")
        os.makedirs(folder, exist_ok=True)
        prefix_len = len(os.path.basename(prefix))
        counters = []
        for name in os.listdir(folder):
            try:
                digits = int(name[prefix_len + 1 :].split("_")[0])
            except ValueError:
                digits = 0
            if (
                os.path.normcase(name[:prefix_len]) == os.path.normcase(stem)
                and name[prefix_len : prefix_len + 1] == "_"
            ):
                counters.append(digits)
        return Path(folder), stem, max(counters, default=0) + 1, subfolder

    def _labels(self, run: _Run, node_id: str, width: int, height: int) -> list[str]:
        return [f"prompt {run.prompt_id}", f"node {node_id} {run.prompt[node_id]['class_type']}", f"{width}x{height}"]

    def _save_images(self, run: _Run, node_id: str) -> dict[str, Any]:
        inputs = run.prompt[node_id]["inputs"]
        if run.prompt[node_id]["class_type"] == "SaveImage":
            kind, prefix, level = "output", str(inputs.get("filename_prefix", "ComfyUI")), 4
        else:  # PreviewImage / MaskPreview: ComfyUI's random temp prefix
            kind, level = "temp", 1
            prefix = "ComfyUI_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        width, height, batch = self.geometry(run.prompt, node_id)
        width, height = media.fit(width, height)
        count = max(1, min(batch or 1, MAX_IMAGES))
        results = []
        with self.save_lock:
            folder, stem, counter, subfolder = self.save_path(prefix, self.dirs[kind], width, height)
            for index in range(count):
                image = media.render_frame(
                    width,
                    height,
                    [*self._labels(run, node_id, width, height), f"image {index + 1}/{count}"],
                    seed=f"{run.prompt_id}:{node_id}:{index}",
                )
                name = f"{stem.replace('%batch_num%', str(index))}_{counter:05}_.png"
                media.save_png(
                    folder / name,
                    image,
                    prompt=run.prompt,
                    extra_pnginfo=run.extra_data.get("extra_pnginfo"),
                    compress_level=level,
                )
                results.append({"filename": name, "subfolder": subfolder, "type": kind})
                counter += 1
        return {"images": results}

    def _save_animation(self, run: _Run, node_id: str) -> dict[str, Any]:
        node = run.prompt[node_id]
        inputs = node["inputs"]
        width, height, batch = self.geometry(run.prompt, node_id)
        width, height = media.fit(width, height, MAX_FRAME_SIDE)
        count = max(1, min(batch or 8, MAX_FRAMES))
        fps = float(inputs.get("fps", 6.0)) or 6.0
        frames = [
            media.render_frame(
                width,
                height,
                self._labels(run, node_id, width, height),
                seed=f"{run.prompt_id}:{node_id}",
                frame=i,
                frames=count,
            )
            for i in range(count)
        ]
        webp = node["class_type"] == "SaveAnimatedWEBP"
        extra = run.extra_data.get("extra_pnginfo")
        with self.save_lock:
            folder, stem, counter, subfolder = self.save_path(
                str(inputs.get("filename_prefix", "ComfyUI")), self.dirs["output"], width, height
            )
            name = f"{stem}_{counter:05}_.{'webp' if webp else 'png'}"
            if webp:
                method = {"default": 4, "fastest": 0, "slowest": 6}.get(str(inputs.get("method")), 4)
                media.save_animated_webp(
                    folder / name,
                    frames,
                    fps=fps,
                    lossless=bool(inputs.get("lossless", True)),
                    quality=int(inputs.get("quality", 80)),
                    method=method,
                    prompt=run.prompt,
                    extra_pnginfo=extra,
                )
            else:
                media.save_animated_png(folder / name, frames, fps=fps, prompt=run.prompt, extra_pnginfo=extra)
        return {
            "images": [{"filename": name, "subfolder": subfolder, "type": "output"}],
            "animated": [count != 1 if webp else True],
        }

    def _save_video(self, run: _Run, node_id: str) -> dict[str, Any]:
        """SaveVideo (MP4, H.264) or SaveWEBM (VP9 / AV1): a real, playable video of the moving test pattern,
        ``ComfyUI_00001_.mp4`` under the prefix's subfolder, answered as ComfyUI's ui.PreviewVideo."""
        node = run.prompt[node_id]
        inputs = node["inputs"]
        webm = node["class_type"] == "SaveWEBM"
        width, height, batch = self.geometry(run.prompt, node_id)
        width, height = media.fit(width, height, MAX_FRAME_SIDE)
        width, height = max(2, width - width % 2), max(2, height - height % 2)  # 4:2:0 chroma needs even sides
        fps = self.frame_rate(run.prompt, node_id) or (24.0 if webm else 30.0)  # the nodes' defaults
        count = max(1, min(batch or round(fps), MAX_FRAMES))  # one second when nothing upstream says
        if webm:
            codec, pix_fmt, speed = WEBM_ENCODERS[str(inputs.get("codec", "vp9"))]
            options, bit_rate, container_options = {**speed, "crf": str(inputs.get("crf", 32.0))}, 0, {}
            extension, default_prefix = "webm", "ComfyUI"
            metadata = {"prompt": run.prompt, **(run.extra_data.get("extra_pnginfo") or {})}
        else:
            codec, pix_fmt, options, bit_rate = "h264", "yuv420p", {}, None
            container_options = {"movflags": "use_metadata_tags"}
            extension, default_prefix = "mp4", "video/ComfyUI"
            metadata = {**(run.extra_data.get("extra_pnginfo") or {}), "prompt": run.prompt}
        labels = [*self._labels(run, node_id, width, height), f"{fps:g} fps, {codec}"]
        frames = [
            media.render_frame(width, height, labels, seed=f"{run.prompt_id}:{node_id}", frame=i, frames=count)
            for i in range(count)
        ]
        with self.save_lock:
            folder, stem, counter, subfolder = self.save_path(
                str(inputs.get("filename_prefix", default_prefix)), self.dirs["output"], width, height
            )
            name = f"{stem}_{counter:05}_.{extension}"
            (folder / name).touch()  # takes the counter; the encoding happens outside the lock
        try:
            media.save_video(
                folder / name,
                frames,
                fps=fps,
                codec=codec,
                pix_fmt=pix_fmt,
                options=options,
                bit_rate=bit_rate,
                container_options=container_options,
                metadata=metadata,
            )
        except BaseException:
            (folder / name).unlink(missing_ok=True)
            raise
        return {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}], "animated": [True]}
