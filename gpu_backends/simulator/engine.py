"""The Simulator: node catalogue, queue, execution of prompts, WebSocket events and history."""

from __future__ import annotations

import asyncio
import copy
import heapq
import itertools
import json
import os
import re
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, web

from . import media
from .config import (
    _BINARY,
    _CLOSE_ALL,
    FILE_INPUTS,
    IMAGE_SUFFIXES,
    MAX_HISTORY,
    PREVIEW_METHODS,
    SENSITIVE_EXTRA_DATA_KEYS,
    SimulatorConfig,
    log,
)
from .graph import PromptInterruptedError, _ExecutionList, _Run, _signatures, is_link, now_ms
from .outputs import OutputsMixin


def _annotated(name: str, dirs: dict[str, Path]) -> tuple[str, Path | None]:
    for kind in ("output", "input", "temp"):
        if name.endswith(f"[{kind}]"):
            return name[: -len(kind) - 3], dirs[kind]
    return name, None


class Simulator(OutputsMixin):
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
        # Clients that announced supports_preview_metadata (ComfyUI keeps each socket's feature flags).
        self.metadata_clients: set[str] = set()
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

    def preview(self, run: _Run, node_id: str, step: int, steps: int) -> None:
        """A live preview of a step, as ComfyUI's latent previewer sends one: to the prompt's client only, with
        metadata (PREVIEW_IMAGE_WITH_METADATA) if that client announced ``supports_preview_metadata``, else as a
        plain PREVIEW_IMAGE; none with preview method "none" or without a client."""
        method = run.extra_data.get("preview_method")
        if method in (None, "default") or method not in PREVIEW_METHODS:
            method = self.config.preview_method
        if run.client_id is None or method == "none":
            return
        image = media.preview_jpeg(run.prompt[node_id]["class_type"], node_id, step, steps)
        if run.client_id in self.metadata_clients:
            meta = {
                "node_id": node_id,
                "display_node_id": node_id,
                "parent_node_id": node_id,
                "real_node_id": node_id,
                "prompt_id": run.prompt_id,
                "image_type": "image/jpeg",
            }
            header = json.dumps(meta).encode()
            frame = (4).to_bytes(4, "big") + len(header).to_bytes(4, "big") + header + image
        else:
            frame = (1).to_bytes(4, "big") + (1).to_bytes(4, "big") + image
        self.send(_BINARY, frame, run.client_id)

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
            frame: bytes | str = data if event == _BINARY else json.dumps({"type": event, "data": data})
            targets = (
                [ws for group in self.sockets.values() for ws in group]
                if sid is None
                else list(self.sockets.get(sid, []))
            )
            for ws in targets:
                try:
                    if isinstance(frame, bytes):
                        await ws.send_bytes(frame)
                    else:
                        await ws.send_str(frame)
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
                self.preview(run, node_id, value, steps)
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
