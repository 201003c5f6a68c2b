"""ComfyuME's ComfyUI simulator: a real HTTP + WebSocket server that speaks ComfyUI 0.3.64's API.

It is the "GPU" of development and CI, and it says so everywhere it shows itself: ``/system_stats``
(``"simulator": true``, device "ComfyuME simulator (no GPU)"), its log lines, ``GET /`` and the text in and
on every picture it writes. No Django here; run it with ``python -m gpu_backends.simulator``.

What it reproduces, from the recordings in ``shared/fixtures/comfyui-0.3.64`` and ComfyUI a125cd84
(``server.py``, ``execution.py``, ``main.py``, ``comfy_execution/progress.py``, ``comfy_execution/graph.py``):

* the WebSocket message sequence of a run (status x2, execution_start, execution_cached, per node
  progress_state/executing[/progress_state+progress ticks][/executed]/progress_state, execution_success,
  status, executing null), of an error (execution_error with ComfyUI's field set) and of an interrupt
  (execution_interrupted, landing only at a node boundary or a progress tick), and of a cached run;
* who gets what: a prompt's events go to the sockets whose ``clientId`` is the prompt's ``client_id``;
  ``status`` goes to everyone; a prompt without ``client_id`` gets no execution_* / executing / executed
  events, while its progress / progress_state / execution_interrupted go to every socket (ComfyUI's quirk);
* the HTTP bodies: ``POST /prompt`` numbering (invalid prompts use up numbers too), caller-supplied
  prompt_id, ``front``, plain-text 500 for malformed JSON, 400 bodies from :mod:`jobs.preflight`, ``/queue``,
  ``/history`` (ComfyUI's entry shape), ``/view`` (ComfyUI's path checks), ``/upload/image``;
* output files: SaveImage (``<prefix>_00001_.png`` counters, subfolder from the prefix, ``%width%``-style
  variables), PreviewImage / MaskPreview (temp/), SaveAnimatedWEBP, SaveAnimatedPNG, PreviewAny (text).

What it does not do (on purpose): run nodes (each takes ``node_delay``), encode video (SaveVideo /
SaveWEBM end in ``execution_error`` "ComfyuME simulator cannot encode video": there is no encoder here and
nothing fake is returned), other output nodes (SaveLatent, 3D, model savers: ``execution_error`` "cannot
simulate"), latent/binary preview frames, ``/upload/mask``, ``/view``'s ``preview``/``channel`` conversions,
the web frontend, userdata/settings/models/internal routes, custom VALIDATE_INPUTS (jobs.preflight skips those
inputs, so any LoadImage file name validates; a missing one simply renders 512x512), and ComfyUI's Python
tracebacks (errors carry the simulator's own traceback).

Differences from ComfyUI, chosen for tests: several sockets may share a clientId and all receive the
events (ComfyUI keeps only the newest); ``concurrency`` > 1 runs prompts side by side like replicas, each
"replica slot" with its own cache; the node-output cache is off unless ``cache=True`` (then an identical
resubmission is served from cache, as ComfyUI does).

Model combos (``SimulatorConfig.models``): a combo input gets the extra names when its name is ``name`` or
ends in ``_name`` / ``_name<digit>`` (ckpt_name, unet_name, vae_name, clip_name2, lora_name, ...) and either
its node's category has a ``loaders`` segment or its option list is empty (CreateHookLora.lora_name);
``config_name`` is left alone. Image-upload combos (LoadImage.image, LoadImageMask.image) list the image
files under input/, subfolders included ("pasted/image.png"), as ComfyUI's LoadImage accepts them.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import hashlib
import heapq
import itertools
import json
import logging
import mimetypes
import os
import random
import re
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from aiohttp import WSCloseCode, WSMsgType, web
from PIL import Image

try:
    from . import simulator_media as media
except ImportError:  # run as a plain script
    import simulator_media as media  # type: ignore[no-redef]

log = logging.getLogger("comfyume.simulator")

DATA_DIR = Path(__file__).resolve().parent / "data"
DEVICE_NAME = "ComfyuME simulator (no GPU)"
SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": 100 * 1024 * 1024}
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
MAX_HISTORY = 10000
TEXT_500 = "500 Internal Server Error\n\nServer got itself in trouble"  # aiohttp's answer to a crash
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
VIDEO_CLASSES = {"SaveVideo", "SaveWEBM"}
# Nodes whose VALIDATE_INPUTS checks a file on the backend's disk (nodes.py); jobs.preflight leaves them to us.
FILE_INPUTS = {
    "LoadImage": ("image", "Invalid image file: {}"),
    "LoadImageMask": ("image", "Invalid image file: {}"),
    "LoadLatent": ("latent", "Invalid latent file: {}"),
}
BATCH_KEYS = ("batch_size", "length", "frames", "num_frames", "video_frames", "amount")
MAX_IMAGES, MAX_FRAMES, MAX_FRAME_SIDE = 64, 48, 512
_CLOSE_ALL = "__close_all_sockets__"


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
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise ValueError(f"{key} must be a number >= 0")
                clean[key] = want(value)
        if clean.get("concurrency", 1) < 1:
            raise ValueError("concurrency must be >= 1")
        for key, value in clean.items():
            setattr(self, key, value)


def now_ms() -> int:
    return int(time.time() * 1000)


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


class PromptInterruptedError(Exception):
    """The prompt was interrupted while ``node_id`` was its current node."""


class _Run:
    """One prompt while it executes."""

    def __init__(self, item: list[Any], slot: int) -> None:
        self.item = item
        self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs = item
        self.client_id: str | None = self.extra_data.get("client_id")
        self.slot = slot
        self.interrupt = asyncio.Event()
        self.executed: list[str] = []
        self.messages: list[list[Any]] = []
        self.progress: dict[str, dict[str, Any]] = {}
        self.ui: dict[str, dict[str, Any]] = {}
        self.last_node: str | None = None
        self.events_sent = 0
        self.drop_after = 0
        self.started = time.monotonic()


class _ExecutionList:
    """ComfyUI's ExecutionList (graph.py) without lazy inputs or async nodes: same order of execution."""

    def __init__(self, prompt: dict[str, Any], is_output, is_cached) -> None:
        self.prompt, self.is_output, self.is_cached = prompt, is_output, is_cached
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, bool]] = {}

    def add_node(self, root: str) -> None:
        stack, links = [root], []
        while stack:
            node_id = stack.pop()
            if node_id in self.pending:
                continue
            self.pending[node_id] = True
            self.block_count[node_id] = 0
            self.blocking[node_id] = {}
            for value in self.prompt[node_id]["inputs"].values():
                if is_link(value) and value[0] in self.prompt and not self.is_cached(value[0]):
                    stack.append(value[0])
                    links.append((value[0], node_id))
        for from_id, to_id in links:
            if not self.is_cached(from_id):
                self.add_node(from_id)
                if to_id not in self.blocking[from_id]:
                    self.blocking[from_id][to_id] = True
                    self.block_count[to_id] += 1

    def next(self) -> str | None:
        """The node to run next (ComfyUI's ux_friendly_pick_node), or None on a dependency cycle."""
        ready = [n for n in self.pending if self.block_count[n] == 0]
        if not ready:
            return None
        for node_id in ready:
            if self.is_output(node_id):
                return node_id
        for node_id in ready:
            if any(self.is_output(b) for b in self.blocking[node_id]):
                return node_id
        for node_id in ready:
            if any(self.is_output(b2) for b in self.blocking[node_id] for b2 in self.blocking[b]):
                return node_id
        return ready[0]

    def complete(self, node_id: str) -> None:
        del self.pending[node_id]
        for blocked in self.blocking.pop(node_id):
            self.block_count[blocked] -= 1


def _signatures(prompt: dict[str, Any]) -> dict[str, str]:
    """A cache key per node: class, constant inputs and (recursively) what is linked in; ids don't matter."""
    memo: dict[str, str] = {}

    def sig(node_id: str, trail: tuple[str, ...] = ()) -> str:
        if node_id in memo:
            return memo[node_id]
        if node_id in trail:  # a cycle: unique, never cached
            return f"cycle:{node_id}"
        node = prompt[node_id]
        parts = []
        for name, value in sorted(node.get("inputs", {}).items()):
            if is_link(value) and value[0] in prompt:
                parts.append([name, sig(value[0], (*trail, node_id)), value[1]])
            else:
                parts.append([name, value])
        text = json.dumps([node.get("class_type"), parts], sort_keys=True, default=str)
        memo[node_id] = hashlib.sha1(text.encode()).hexdigest()
        return memo[node_id]

    return {node_id: sig(node_id) for node_id in prompt}


def _int(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


class Simulator:
    """The state behind the routes: queue, running prompts, history, sockets, files."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        root = config.output_dir.resolve()
        self.dirs = {name: root / name for name in ("output", "input", "temp")}
        for path in self.dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        example = self.dirs["input"] / "example.png"  # ComfyUI ships input/example.png; LoadImage lists it
        if not example.exists():
            media.save_png(
                example, media.render_frame(512, 512, ["example.png"], seed="example"), prompt=None, extra_pnginfo=None
            )
        self.base_object_info: dict[str, Any] = json.loads(config.object_info_path.read_text())
        self._object_info: tuple[Any, dict[str, Any], bytes] | None = None
        self.queue: list[list[Any]] = []
        self.running: dict[int, _Run] = {}
        self.history: dict[str, dict[str, Any]] = {}
        self.sockets: dict[str, list[web.WebSocketResponse]] = {}
        self.caches: dict[int, dict[str, dict[str, Any] | None]] = {}
        self.number = 0
        self.task_counter = 0
        self.tasks: set[asyncio.Task] = set()
        self.messages: asyncio.Queue = asyncio.Queue()
        self.wakeup = asyncio.Event()
        self.save_lock = threading.Lock()

    # ---------- node catalogue ----------
    def input_images(self) -> list[str]:
        base = self.dirs["input"]
        found = [
            p.relative_to(base).as_posix()
            for p in base.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        ]
        return sorted(found)

    def object_info(self) -> tuple[dict[str, Any], bytes]:
        """The catalogue with models and uploaded images injected, and its JSON; rebuilt when they change."""
        key = (tuple(self.config.models), tuple(self.input_images()))
        if self._object_info is None or self._object_info[0] != key:
            info = copy.deepcopy(self.base_object_info)
            models, images = list(key[0]), list(key[1])
            for node in info.values():
                category = str(node.get("category", ""))
                for section in ("required", "optional"):
                    for name, spec in (node.get("input", {}).get(section) or {}).items():
                        self._inject(category, name, spec, models, images)
            self._object_info = (key, info, json.dumps(info).encode())
        return self._object_info[1], self._object_info[2]

    @staticmethod
    def _inject(category: str, name: str, spec: Any, models: list[str], images: list[str]) -> None:
        if not isinstance(spec, list) or not spec:
            return
        extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if isinstance(spec[0], list):
            options = spec[0]
        elif spec[0] == "COMBO" and isinstance(extra.get("options"), list):
            options = extra["options"]
        else:
            return
        if extra.get("image_upload") and extra.get("image_folder", "input") == "input":
            options[:] = sorted(set(options) | set(images))
        elif (
            models
            and name != "config_name"
            and re.search(r"(^|_)name\d*$", name)
            and ("loaders" in category.split("/") or not options)
        ):
            options.extend(m for m in models if m not in options)

    def is_output(self, class_type: str) -> bool:
        return bool(self.base_object_info.get(class_type, {}).get("output_node"))

    def file_exists(self, name: str) -> bool:
        """folder_paths.exists_annotated_filepath, kept inside our own directories."""
        name, base = _annotated(name, self.dirs)
        base = base or self.dirs["input"]
        path = os.path.realpath(os.path.join(base, name))
        return os.path.commonpath((path, str(base))) == str(base) and os.path.exists(path)

    def check_input_files(self, prompt: dict[str, Any], outputs: list[str]) -> tuple[list[str], dict[str, Any]]:
        """ComfyUI's disk checks (LoadImage's VALIDATE_INPUTS...) for the nodes the outputs need.

        Returns the outputs still valid and node_errors in ComfyUI's shape for the missing files.
        """
        node_errors: dict[str, Any] = {}
        good = []
        for output in outputs:
            needed, stack = set(), [output]
            while stack:
                node_id = stack.pop()
                if node_id in needed or node_id not in prompt:
                    continue
                needed.add(node_id)
                stack.extend(v[0] for v in prompt[node_id].get("inputs", {}).values() if is_link(v))
            failed = False
            for node_id in sorted(needed):
                check = FILE_INPUTS.get(prompt[node_id]["class_type"])
                value = prompt[node_id].get("inputs", {}).get(check[0]) if check else None
                if not check or not isinstance(value, str) or self.file_exists(value):
                    continue
                failed = True
                error = {
                    "type": "custom_validation_failed",
                    "message": "Custom validation failed for node",
                    "details": f"{check[0]} - {check[1].format(value)}",
                    "extra_info": {"input_name": check[0]},
                }
                entry = node_errors.setdefault(
                    node_id, {"errors": [error], "dependent_outputs": [], "class_type": prompt[node_id]["class_type"]}
                )
                entry["dependent_outputs"].append(output)
            if not failed:
                good.append(output)
        return good, node_errors

    # ---------- messages ----------
    def send(self, event: str, data: Any, sid: str | None = None) -> None:
        """Like ComfyUI's send_sync: ordered through one queue; sid None means every socket."""
        self.messages.put_nowait((event, data, sid))

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": len(self.queue) + len(self.running)}}

    def queue_updated(self) -> None:
        self.send("status", {"status": self.queue_info()})

    def emit(self, run: _Run, event: str, data: Any, *, anonymous_to_all: bool = False) -> None:
        """One execution event of ``run``: to its client; without a client only if ComfyUI broadcasts it."""
        if run.client_id is None and not anonymous_to_all:
            return
        self.send(event, data, run.client_id)
        run.events_sent += 1
        if run.drop_after and run.events_sent == run.drop_after:
            log.warning(
                "ComfyUI simulator: ws_drop_after=%d reached for %s, closing every socket",
                run.drop_after,
                run.prompt_id,
            )
            self.send(_CLOSE_ALL, None)

    def add_message(self, run: _Run, event: str, data: dict[str, Any], *, broadcast: bool = False) -> None:
        data = {**data, "timestamp": now_ms()}
        run.messages.append([event, data])
        self.emit(run, event, data, anonymous_to_all=broadcast)

    async def publish_loop(self) -> None:
        while True:
            event, data, sid = await self.messages.get()
            if event == _CLOSE_ALL:
                for ws in [ws for group in self.sockets.values() for ws in group]:
                    self.spawn(ws.close(code=WSCloseCode.GOING_AWAY, message=b"ComfyuME simulator: ws_drop_after"))
                self.sockets.clear()
                continue
            text = json.dumps({"type": event, "data": data})
            targets = (
                [ws for group in self.sockets.values() for ws in group]
                if sid is None
                else list(self.sockets.get(sid, []))
            )
            for ws in targets:
                try:
                    await ws.send_str(text)
                except Exception as exc:  # a gone client must not stop the others (ComfyUI does the same)
                    log.debug("ComfyUI simulator: could not send %s: %s", event, exc)

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # ---------- queue ----------
    def put(self, item: list[Any]) -> None:
        heapq.heappush(self.queue, item)
        self.queue_updated()
        self.wakeup.set()

    async def dispatch_loop(self) -> None:
        while True:
            self.wakeup.clear()
            while self.queue and len(self.running) < max(1, self.config.concurrency):
                item = heapq.heappop(self.queue)
                used = {run.slot for run in self.running.values()}
                run = _Run(copy.deepcopy(item), next(i for i in itertools.count() if i not in used))
                task_id, self.task_counter = self.task_counter, self.task_counter + 1
                self.running[task_id] = run
                self.queue_updated()
                self.spawn(self.execute(task_id, run))
            try:  # a timeout too, so a concurrency raised from another thread is noticed
                await asyncio.wait_for(self.wakeup.wait(), 0.25)
            except TimeoutError:
                pass

    def delete_pending(self, prompt_id: str) -> None:
        for index, item in enumerate(self.queue):
            if item[1] == prompt_id:
                if len(self.queue) == 1:
                    self.queue = []
                    self.queue_updated()
                else:
                    self.queue.pop(index)
                    heapq.heapify(self.queue)
                self.queue_updated()
                return

    # ---------- execution ----------
    async def execute(self, task_id: int, run: _Run) -> None:
        """Run one prompt like ComfyUI's prompt_worker, then write its history entry (task_done)."""
        cfg = self.config
        if cfg.ws_drop_after > 0:  # one shot: it belongs to this prompt
            run.drop_after, cfg.ws_drop_after = cfg.ws_drop_after, 0
        log.info("ComfyUI simulator: executing prompt %s (simulated, no GPU)", run.prompt_id)
        success = False
        try:
            success = await self.execute_prompt(run)
            if success and cfg.history_delay > 0:  # ComfyUI: success can precede history
                await asyncio.sleep(cfg.history_delay)
        except Exception:  # a bug in the simulator; the prompt still ends, as an error
            log.exception("ComfyUI simulator: internal error while executing %s", run.prompt_id)
        finally:
            self.task_done(task_id, run, success)
        log.info(
            "ComfyUI simulator: prompt %s %s in %.2f seconds (simulated)",
            run.prompt_id,
            "executed" if success else "failed",
            time.monotonic() - run.started,
        )

    async def execute_prompt(self, run: _Run) -> bool:
        """ComfyUI's PromptExecutor.execute_async: the messages and the nodes; True on execution_success."""
        cfg = self.config
        prompt = run.prompt
        self.add_message(run, "execution_start", {"prompt_id": run.prompt_id})
        signatures = _signatures(prompt)
        cache = self.caches.setdefault(run.slot, {}) if cfg.cache else {}
        for key in set(cache) - set(signatures.values()):
            del cache[key]
        cached = [node_id for node_id in prompt if signatures[node_id] in cache]
        self.add_message(run, "execution_cached", {"nodes": cached, "prompt_id": run.prompt_id})
        order = _ExecutionList(
            prompt, lambda n: self.is_output(prompt[n]["class_type"]), lambda n: signatures[n] in cache
        )
        for node_id in run.outputs:
            order.add_node(node_id)
        while order.pending:
            node_id = order.next()
            if node_id is None:
                blamed = next(iter(order.pending))
                self._error(run, blamed, "Dependency cycle detected", "graph.DependencyCycleError", [], [])
                return False
            try:
                await self.execute_node(run, node_id, signatures[node_id], cache)
            except PromptInterruptedError as exc:
                node_id = str(exc)
                self.add_message(
                    run,
                    "execution_interrupted",
                    {
                        "prompt_id": run.prompt_id,
                        "node_id": node_id,
                        "node_type": prompt[node_id]["class_type"],
                        "executed": list(run.executed),
                    },
                    broadcast=True,
                )
                return False
            except Exception as exc:  # what ComfyUI reports for an exception raised by a node
                kind = type(exc)
                name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
                self._error(
                    run,
                    node_id,
                    f"{exc}\n",
                    name,
                    traceback.format_tb(exc.__traceback__),
                    self._current_inputs(prompt, node_id),
                )
                return False
            order.complete(node_id)
        self.add_message(run, "execution_success", {"prompt_id": run.prompt_id})
        return True

    def task_done(self, task_id: int, run: _Run, success: bool) -> None:
        self.running.pop(task_id, None)
        if len(self.history) > MAX_HISTORY:
            self.history.pop(next(iter(self.history)))
        item = copy.deepcopy(run.item)
        for key in SENSITIVE_EXTRA_DATA_KEYS:
            item[3].pop(key, None)
        self.history[run.prompt_id] = {
            "prompt": item,
            "outputs": {node_id: ui["output"] for node_id, ui in run.ui.items()},
            "status": {"status_str": "success" if success else "error", "completed": success, "messages": run.messages},
            "meta": {node_id: ui["meta"] for node_id, ui in run.ui.items()},
        }
        self.queue_updated()
        if run.client_id is not None:
            self.emit(run, "executing", {"node": None, "prompt_id": run.prompt_id})
        self.wakeup.set()

    def _error(self, run: _Run, node_id: str, message: str, exc_type: str, tb: list[str], inputs: Any) -> None:
        self.add_message(
            run,
            "execution_error",
            {
                "prompt_id": run.prompt_id,
                "node_id": node_id,
                "node_type": run.prompt[node_id]["class_type"],
                "executed": list(run.executed),
                "exception_message": message,
                "exception_type": exc_type,
                "traceback": tb,
                "current_inputs": inputs,
                "current_outputs": list(run.prompt),
            },
        )

    @staticmethod
    def _current_inputs(prompt: dict[str, Any], node_id: str) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for name, value in prompt[node_id]["inputs"].items():
            if is_link(value):
                out[name] = [f"<output {value[1]} of node {value[0]}: simulated, no tensor>"]
            else:
                out[name] = [value if value is None or isinstance(value, (int, float, bool, str)) else str(value)]
        return out

    def _progress(self, run: _Run, node_id: str, **changes: Any) -> None:
        entry = run.progress.setdefault(node_id, {"state": "pending", "value": 0, "max": 1})
        entry.update(changes)
        if entry["state"] == "finished":
            entry["value"] = entry["max"]
        nodes = {
            n: {
                "value": e["value"],
                "max": e["max"],
                "state": e["state"],
                "node_id": n,
                "prompt_id": run.prompt_id,
                "display_node_id": n,
                "parent_node_id": None,
                "real_node_id": n,
            }
            for n, e in run.progress.items()
            if e["state"] != "pending"
        }
        self.emit(run, "progress_state", {"prompt_id": run.prompt_id, "nodes": nodes}, anonymous_to_all=True)

    def _meta(self, node_id: str) -> dict[str, Any]:
        return {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id}

    async def execute_node(self, run: _Run, node_id: str, signature: str, cache: dict[str, Any]) -> None:
        cfg = self.config
        node = run.prompt[node_id]
        class_type = node["class_type"]
        if signature in cache:  # served from cache: replay the ui, no executing, no work
            ui = cache[signature]
            if run.client_id is not None:
                self.emit(
                    run,
                    "executed",
                    {
                        "node": node_id,
                        "display_node": node_id,
                        "output": ui["output"] if ui else None,
                        "prompt_id": run.prompt_id,
                    },
                )
            if ui:
                run.ui[node_id] = ui
            self._progress(run, node_id, state="finished")
            return
        self._progress(run, node_id, state="running", value=0.0, max=1.0)
        run.last_node = node_id
        self.emit(run, "executing", {"node": node_id, "display_node": node_id, "prompt_id": run.prompt_id})
        if run.interrupt.is_set():
            raise PromptInterruptedError(node_id)
        if class_type in cfg.hang_on_class:
            log.info("ComfyUI simulator: node %s (%s) hangs until interrupted", node_id, class_type)
            await run.interrupt.wait()
            raise PromptInterruptedError(node_id)
        if class_type in cfg.fail_on_class:
            raise RuntimeError(f"ComfyuME simulator: injected failure (fail_on_class) in node {node_id} {class_type}")
        steps = cfg.progress_steps if cfg.progress_steps > 0 and (cfg.progress_all or "steps" in node["inputs"]) else 0
        if steps:
            for value in range(1, steps + 1):
                await asyncio.sleep(cfg.node_delay / steps)
                if run.interrupt.is_set():  # ComfyUI's progress hook checks before reporting
                    raise PromptInterruptedError(node_id)
                self._progress(run, node_id, state="running", value=value, max=steps)
                self.emit(
                    run,
                    "progress",
                    {"value": value, "max": steps, "prompt_id": run.prompt_id, "node": node_id},
                    anonymous_to_all=True,
                )
        else:
            await asyncio.sleep(cfg.node_delay)
        output = await self.node_output(run, node_id) if self.is_output(class_type) else None
        ui = {"meta": self._meta(node_id), "output": output} if output else None
        if ui:
            run.ui[node_id] = ui
            if run.client_id is not None:
                self.emit(
                    run,
                    "executed",
                    {"node": node_id, "display_node": node_id, "output": output, "prompt_id": run.prompt_id},
                )
        if cfg.cache:
            cache[signature] = ui
        self._progress(run, node_id, state="finished")
        run.executed.append(node_id)

    # ---------- output nodes ----------
    async def node_output(self, run: _Run, node_id: str) -> dict[str, Any] | None:
        class_type = run.prompt[node_id]["class_type"]
        if class_type in VIDEO_CLASSES:
            raise RuntimeError("ComfyuME simulator cannot encode video")
        writer = {
            "SaveImage": self._save_images,
            "PreviewImage": self._save_images,
            "MaskPreview": self._save_images,
            "SaveAnimatedWEBP": self._save_animation,
            "SaveAnimatedPNG": self._save_animation,
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


# ====================================================================================================
# HTTP + WebSocket
# ====================================================================================================
SIM_KEY = web.AppKey("simulator", Simulator)
routes = web.RouteTableDef()


def _sim(request: web.Request) -> Simulator:
    return request.app[SIM_KEY]


def _text_500() -> web.Response:
    return web.Response(status=500, text=TEXT_500, content_type="text/plain")


@routes.get("/")
async def get_root(request: web.Request) -> web.Response:
    return web.Response(
        text="ComfyuME simulator (not a GPU): ComfyUI 0.3.64's API without its frontend.\n"
        "See /system_stats and /simulator/config.\n"
    )


@routes.get("/ws")
async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    sim = _sim(request)
    ws = web.WebSocketResponse(timeout=2.0)
    await ws.prepare(request)
    sid = request.rel_url.query.get("clientId", "") or uuid.uuid4().hex
    sim.sockets.setdefault(sid, []).append(ws)
    try:
        await ws.send_str(json.dumps({"type": "status", "data": {"status": sim.queue_info(), "sid": sid}}))
        for run in sim.running.values():  # on reconnect, ComfyUI tells its client the current node
            if run.client_id == sid and run.last_node is not None:
                await ws.send_str(json.dumps({"type": "executing", "data": {"node": run.last_node}}))
        first = True
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                data = json.loads(msg.data)
            except ValueError:
                log.warning("ComfyUI simulator: invalid JSON from client %s", sid)
                continue
            if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                await ws.send_str(json.dumps({"type": "feature_flags", "data": SERVER_FEATURES}))
            first = False
    finally:
        group = sim.sockets.get(sid, [])
        if ws in group:
            group.remove(ws)
        if not group:
            sim.sockets.pop(sid, None)
    return ws


@routes.get("/system_stats")
async def system_stats(request: web.Request) -> web.Response:
    stats = json.loads((DATA_DIR / "system_stats.json").read_text())
    stats["system"]["comfyui_version"] = "0.3.64"
    stats["devices"][0]["name"] = DEVICE_NAME
    stats["simulator"] = True
    return web.json_response(stats)


@routes.get("/features")
async def get_features(request: web.Request) -> web.Response:
    return web.json_response(SERVER_FEATURES)


@routes.get("/object_info")
async def get_object_info(request: web.Request) -> web.Response:
    return web.Response(body=_sim(request).object_info()[1], content_type="application/json", charset="utf-8")


@routes.get("/object_info/{node_class}")
async def get_object_info_node(request: web.Request) -> web.Response:
    info = _sim(request).object_info()[0]
    node_class = request.match_info["node_class"]
    return web.json_response({node_class: info[node_class]} if node_class in info else {})


@routes.get("/prompt")
async def get_prompt(request: web.Request) -> web.Response:
    return web.json_response(_sim(request).queue_info())


@routes.post("/prompt")
async def post_prompt(request: web.Request) -> web.Response:
    sim = _sim(request)
    cfg = sim.config
    if cfg.http_fail_count > 0:
        cfg.http_fail_count -= 1
        log.warning("ComfyUI simulator: injected HTTP %d for POST /prompt", cfg.http_fail_status)
        return web.Response(
            status=cfg.http_fail_status,
            text=f"ComfyuME simulator: injected HTTP {cfg.http_fail_status} (http_fail_count)",
        )
    log.info("ComfyUI simulator: got prompt")
    from jobs.preflight import PromptValidationError, error_body, validate_prompt  # lazy: standalone import

    try:
        body = await request.json()
    except ValueError:
        return _text_500()
    if not isinstance(body, dict):
        return _text_500()
    if "number" in body:
        try:
            number: float | int = float(body["number"])
        except (TypeError, ValueError):
            return _text_500()
    else:
        number = -sim.number if body.get("front") else sim.number
        sim.number += 1
    if "prompt" not in body:
        return web.json_response(error_body("no_prompt", "No prompt provided", "No prompt provided"), status=400)
    prompt = body["prompt"]
    prompt_id = str(body.get("prompt_id", uuid.uuid4()))
    if not isinstance(prompt, dict):  # ComfyUI's validation crashes on it
        return _text_500()
    try:
        validated = validate_prompt(prompt, sim.object_info()[0])
    except PromptValidationError as exc:
        log.warning("ComfyUI simulator: invalid prompt: %s", exc.body.get("error"))
        return web.json_response(exc.body, status=400)
    except Exception:
        log.exception("ComfyUI simulator: validation crashed")
        return _text_500()
    node_errors = dict(getattr(validated, "node_errors", None) or {})  # of outputs that failed next to valid ones
    outputs, file_errors = sim.check_input_files(prompt, list(validated))
    node_errors.update(file_errors)
    if not outputs:  # details: the failed output nodes' own errors, as ComfyUI summarises them
        own = [
            e
            for node_id, entry in node_errors.items()
            if node_id in entry["dependent_outputs"]
            for e in entry["errors"]
        ]
        details = "\n".join(f"{e['message']}: {e['details']}" for e in own)
        body = error_body(
            "prompt_outputs_failed_validation", "Prompt outputs failed validation", details, None, node_errors
        )
        return web.json_response(body, status=400)
    targets = body.get("partial_execution_targets")
    if isinstance(targets, list):
        outputs = [o for o in outputs if o in targets]
        if not outputs:
            return web.json_response(error_body("prompt_no_outputs", "Prompt has no outputs"), status=400)
    raw_extra = body.get("extra_data")
    extra_data: dict[str, Any] = raw_extra if isinstance(raw_extra, dict) else {}
    if "client_id" in body:
        extra_data["client_id"] = body["client_id"]
    sim.put([number, prompt_id, prompt, extra_data, outputs])
    return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})


@routes.get("/queue")
async def get_queue(request: web.Request) -> web.Response:
    sim = _sim(request)
    return web.json_response(
        {"queue_running": [run.item for run in sim.running.values()], "queue_pending": list(sim.queue)}
    )


@routes.post("/queue")
async def post_queue(request: web.Request) -> web.Response:
    sim = _sim(request)
    try:
        body = await request.json()
    except ValueError:
        return _text_500()
    if body.get("clear"):
        sim.queue = []
        sim.queue_updated()
    for prompt_id in body.get("delete", []):
        sim.delete_pending(prompt_id)
    return web.Response(status=200)


@routes.post("/interrupt")
async def post_interrupt(request: web.Request) -> web.Response:
    sim = _sim(request)
    try:
        body = await request.json()
    except ValueError:
        body = {}
    prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
    for run in sim.running.values():
        if not prompt_id or run.prompt_id == prompt_id:
            log.info("ComfyUI simulator: interrupting %s", run.prompt_id)
            run.interrupt.set()
    return web.Response(status=200)


@routes.get("/history")
async def get_history(request: web.Request) -> web.Response:
    sim = _sim(request)
    query = request.rel_url.query
    try:
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query.get("offset", -1))
    except ValueError:
        return _text_500()
    if offset < 0 and max_items is not None:
        offset = len(sim.history) - max_items
    out = {}
    for index, (prompt_id, entry) in enumerate(sim.history.items()):
        if index >= offset:
            out[prompt_id] = entry
            if max_items is not None and len(out) >= max_items:
                break
    return web.json_response(out)


@routes.get("/history/{prompt_id}")
async def get_history_prompt(request: web.Request) -> web.Response:
    sim = _sim(request)
    prompt_id = request.match_info["prompt_id"]
    return web.json_response({prompt_id: sim.history[prompt_id]} if prompt_id in sim.history else {})


@routes.post("/history")
async def post_history(request: web.Request) -> web.Response:
    sim = _sim(request)
    try:
        body = await request.json()
    except ValueError:
        return _text_500()
    if body.get("clear"):
        sim.history.clear()
    for prompt_id in body.get("delete", []):
        sim.history.pop(prompt_id, None)
    return web.Response(status=200)


def _annotated(name: str, dirs: dict[str, Path]) -> tuple[str, Path | None]:
    for kind in ("output", "input", "temp"):
        if name.endswith(f"[{kind}]"):
            return name[: -len(kind) - 3], dirs[kind]
    return name, None


@routes.get("/view")
async def view(request: web.Request) -> web.StreamResponse:
    """ComfyUI's /view path rules (400 for ``..`` or absolute names, 403 for escaping subfolders), and
    nothing outside output_dir ever, symlinks included."""
    sim = _sim(request)
    query = request.rel_url.query
    if "filename" not in query:
        return web.Response(status=404)
    filename, base = _annotated(query["filename"], sim.dirs)
    if not filename or filename[0] == "/" or ".." in filename:
        return web.Response(status=400)
    if base is None:
        base = sim.dirs.get(query.get("type", "output"))
        if base is None:
            return web.Response(status=400)
    root = str(base)
    folder = root
    if "subfolder" in query:
        folder = os.path.abspath(os.path.join(root, query["subfolder"]))
        if os.path.commonpath((folder, root)) != root:
            return web.Response(status=403)
    path = os.path.join(folder, os.path.basename(filename))
    if os.path.commonpath((os.path.realpath(path), root)) != root:
        return web.Response(status=403)
    if not os.path.isfile(path):
        return web.Response(status=404)
    content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    if content_type in {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}:
        content_type = "application/octet-stream"
    name = os.path.basename(filename)
    return web.FileResponse(path, headers={"Content-Disposition": f'filename="{name}"', "Content-Type": content_type})


@routes.post("/upload/image")
async def upload_image(request: web.Request) -> web.Response:
    """ComfyUI's image_upload: same answer, same ``name (1).png`` renaming, same-content files reused."""
    sim = _sim(request)
    post = await request.post()
    image = post.get("image")
    kind = str(post.get("type") or "input")
    if kind not in sim.dirs or not isinstance(image, web.FileField) or not image.filename:
        return web.Response(status=400)
    base = str(sim.dirs[kind])
    subfolder = str(post.get("subfolder", ""))
    folder = os.path.join(base, os.path.normpath(subfolder))
    filename = image.filename
    path = os.path.abspath(os.path.join(folder, filename))
    if os.path.commonpath((base, path)) != base or os.path.commonpath((base, os.path.abspath(folder))) != base:
        return web.Response(status=400)
    data = image.file.read()
    os.makedirs(folder, exist_ok=True)
    duplicate = False
    if str(post.get("overwrite")) not in ("true", "1"):
        stem, suffix = os.path.splitext(filename)
        for i in itertools.count(1):
            if not os.path.exists(path):
                break
            with open(path, "rb") as existing:
                if hashlib.sha256(existing.read()).digest() == hashlib.sha256(data).digest():
                    duplicate = True
                    break
            filename = f"{stem} ({i}){suffix}"
            path = os.path.join(folder, filename)
    if not duplicate:
        with open(path, "wb") as out:
            out.write(data)
    return web.json_response({"name": filename, "subfolder": subfolder, "type": kind})


@routes.get("/simulator/config")
async def get_simulator_config(request: web.Request) -> web.Response:
    return web.json_response(_sim(request).config.to_json())


@routes.post("/simulator/config")
async def post_simulator_config(request: web.Request) -> web.Response:
    """Fault injection at run time: POST a JSON object of SimulatorConfig fields to change."""
    sim = _sim(request)
    try:
        changes = await request.json()
        if not isinstance(changes, dict):
            raise ValueError("send a JSON object")
        sim.config.update(changes)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    sim.wakeup.set()
    return web.json_response(sim.config.to_json())


async def _lifecycle(app: web.Application):
    sim = app[SIM_KEY]
    background = [asyncio.create_task(sim.publish_loop()), asyncio.create_task(sim.dispatch_loop())]
    yield
    for task in [*background, *sim.tasks]:
        task.cancel()
    await asyncio.gather(*background, *sim.tasks, return_exceptions=True)


async def _close_sockets(app: web.Application) -> None:
    sim = app[SIM_KEY]
    sockets = [ws for group in sim.sockets.values() for ws in group]
    await asyncio.gather(
        *(ws.close(code=WSCloseCode.GOING_AWAY, message=b"simulator stopping") for ws in sockets),
        return_exceptions=True,
    )


def build_app(config: SimulatorConfig) -> web.Application:
    """The aiohttp application; every route also answers under /api like ComfyUI's."""
    app = web.Application(client_max_size=SERVER_FEATURES["max_upload_size"])
    app[SIM_KEY] = Simulator(config)
    api = [web.route(r.method, "/api" + r.path, r.handler) for r in routes if isinstance(r, web.RouteDef)]
    app.add_routes(api)
    app.add_routes(routes)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_close_sockets)
    return app


def run(host: str, port: int, config: SimulatorConfig) -> None:
    """Serve until interrupted (Ctrl-C)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    async def main() -> None:
        runner = web.AppRunner(build_app(config))
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        log.info("ComfyUI simulator (not a GPU) listening on http://%s:%s", host, bound)
        log.info("ComfyUI simulator: files in %s", config.output_dir)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


class SimulatorThread:
    """The simulator on 127.0.0.1 in a background thread with its own event loop (tests, benchmarks).

    ``config`` is live: change its fields and the next prompt sees them.
    """

    def __init__(self, config: SimulatorConfig, port: int = 0) -> None:
        self.config = config
        self.port = port
        self.url = ""
        self.app: web.Application | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def simulator(self) -> Simulator:
        assert self.app is not None, "start() first"
        return self.app[SIM_KEY]

    def start(self) -> SimulatorThread:
        self._thread = threading.Thread(target=self._main, name="comfyui-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("ComfyUI simulator did not start within 30 s")
        if self._error is not None:
            raise RuntimeError(f"ComfyUI simulator failed to start: {self._error}") from self._error
        return self

    def _main(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            assert self._runner is not None
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

    async def _start(self) -> None:
        self.app = build_app(self.config)
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"
        log.info("ComfyUI simulator (not a GPU) listening on %s", self.url)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=15)

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ComfyuME's ComfyUI simulator (not a GPU)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--output-dir", type=Path, default=Path("var/comfyui-simulator"))
    parser.add_argument("--node-delay", type=float, default=0.05)
    parser.add_argument("--progress-steps", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--model", action="append", default=[], help="a model file name to offer (repeatable)")
    parser.add_argument("--cache", action="store_true", help="serve identical resubmissions from cache")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run(
        args.host,
        args.port,
        SimulatorConfig(
            output_dir=args.output_dir,
            node_delay=args.node_delay,
            progress_steps=args.progress_steps,
            concurrency=args.concurrency,
            models=args.model,
            cache=args.cache,
        ),
    )


if __name__ == "__main__":
    main()
