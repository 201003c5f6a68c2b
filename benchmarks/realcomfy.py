"""What the platform adds to a job on a real ComfyUI: the same job straight to it and through the hub, interleaved.

Run it when a ComfyUI is at hand (any version; no model is needed)::

    COMFYUI_URL=http://127.0.0.1:8188 make bench                     # with the other benchmarks
    python -m benchmarks realcomfy --comfyui-url http://127.0.0.1:8188 [--jobs 20] [--paths direct,comfyui,worker]

Three paths, one job each per round, in an order drawn anew each round, so that the machine's noise and ComfyUI's
own pauses hit them alike:

- ``direct``: what any ComfyUI client does. Its event socket stays open (as the web frontend's), ``POST /prompt``,
  wait for ``executing {node: null}``, then read each output through ``/view``;
- ``comfyui``: a seat of a workshop whose backend is that ComfyUI (``kind=comfyui``), through the hub's web server
  and RQ workers (:class:`benchmarks.hub.Hub`): the seat's ``POST /api/hub/prompt``, its event socket, then each
  output through ``/api/hub/view``, as the participant's browser gets it;
- ``worker``: a seat whose backend is a Verda deployment (``kind=verda``): a Verda-like gateway
  (tests/fake_verda.py) in front of the GPU worker (``python -m gpu_backends.worker``) beside that ComfyUI.

A job's time is from the submit leaving to the last output byte in hand. ComfyUI's own run (``execution_start`` to
``execution_success``, as the client or the hub received them) varies from one job to the next by more than the platform
costs, so the figure that counts takes it out: **added time = the path's time outside ComfyUI's run, less the direct
path's**, at the median. ComfyUI's own pauses (it collects garbage after a job at most every 10 s: 0.3–0.4 s of
held GIL on this CPU) land on a third of every path's jobs, the direct one's included, so no 99th percentile of a
whole job says anything about the hub; the one printed is of **the hub's own steps added up** (submit → the backend
took the prompt, the output copies, the backend's final event → the outputs in hand). Each platform job is traced
(``jobs.trace``) and its time split step by step.

The default job needs no model: EmptyImage → ImageInvert → SaveImage, or, when ComfyUI has an upscale model,
EmptyImage → ImageUpscaleWithModel → SaveImage, whose tiles send ``progress`` as a sampler's steps do (``--size``
sets the image's side). ``--workflow FILE`` runs an API-format workflow instead; its ``seed``, ``noise_seed`` and
EmptyImage ``color`` inputs change per job, so ComfyUI's cache never answers. To give ComfyUI a core of its own
as a GPU server has its own machine, start it under ``taskset -c 1`` and set ``BENCH_HUB_CPUS=0``
(docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import websocket

from benchmarks.hub import Hub, pct, pin_to_hub_cpus, print_split, step_times

PATHS = ("direct", "comfyui", "worker")
DEPLOYMENT = "bench-realcomfy"


@dataclass
class Run:
    """One job on one path: wall-clock times (``time.time()``) and the job's ComfyUI prompt id."""

    path: str
    submitted: float
    done: float = 0.0  # the final executing {node: null} in the client's hands
    outputs: float = 0.0  # the last output byte in the client's hands
    comfy_prompt_id: str = ""
    # ComfyUI's execution_start / execution_success as their first receiver got them: the client's socket (direct),
    # the hub (the job's trace). Not /history's timestamps: ComfyUI 0.12 keeps none.
    comfy_start: float = 0.0
    comfy_success: float = 0.0
    job_id: int | None = None
    steps: list[tuple[str, float]] = field(default_factory=list)
    files: int = 0

    @property
    def total(self) -> float:
        return self.outputs - self.submitted

    @property
    def comfy_run(self) -> float:
        return self.comfy_success - self.comfy_start

    @property
    def not_comfy(self) -> float:
        """The job's time that was not ComfyUI running it."""
        return self.total - self.comfy_run

    @property
    def not_comfy_to_event(self) -> float:
        """The same, up to the final event (outputs not yet read)."""
        return self.done - self.submitted - self.comfy_run


# --- the job ---


def default_workflow(comfyui: str, size: int, model: str = "") -> dict[str, Any]:
    models = []
    try:
        spec = requests.get(f"{comfyui}/object_info/UpscaleModelLoader", timeout=30).json()
        models = spec["UpscaleModelLoader"]["input"]["required"]["model_name"][0]
        if isinstance(models, str):  # newer ComfyUIs: ["COMBO", {"options": [...]}]
            models = spec["UpscaleModelLoader"]["input"]["required"]["model_name"][1]["options"]
    except (requests.RequestException, ValueError, KeyError, IndexError, TypeError):
        pass
    if model:
        if model not in models:
            raise SystemExit(f"realcomfy: ComfyUI has no upscale model {model!r}; it has {models}.")
        models = [model]
    image = {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1, "color": 0}}
    save = {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "bench/realcomfy"}}
    if models:
        return {
            "1": image,
            "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": models[0]}},
            "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
            "4": save,
        }
    return {"1": image, "3": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}, "4": save}


def vary(workflow: dict[str, Any], n: int) -> tuple[dict[str, Any], bool]:
    """The workflow with its seeds and EmptyImage colours set from ``n``; False when nothing could vary."""
    varied = json.loads(json.dumps(workflow))
    changed = False
    for node in varied.values():
        inputs = node.get("inputs") or {}
        for name in ("seed", "noise_seed"):
            if isinstance(inputs.get(name), int):
                inputs[name], changed = n, True
        if node.get("class_type") == "EmptyImage" and isinstance(inputs.get("color"), int):
            inputs["color"], changed = n % 0xFFFFFF, True
    return varied, changed


def output_files(output: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        item
        for items in output.values()
        if isinstance(items, list)
        for item in items
        if isinstance(item, dict) and "filename" in item
    ]


# --- the clients ---


class EventClient:
    """An event socket kept open between jobs (as a browser tab keeps its own), read until a prompt ends.

    Each output is fetched as soon as its ``executed`` message arrives, as ComfyUI's web frontend loads a node's
    image: so a pause ComfyUI takes after a job (its garbage collection every 10 s holds the GIL for a quarter of
    a second on this machine) falls on both paths alike.
    """

    def __init__(self, url: str, fetch: Any, headers: list[str] | None = None) -> None:
        self.ws = websocket.create_connection(url, header=headers or [], timeout=120, skip_utf8_validation=True)
        self.fetch = fetch
        self.pool = ThreadPoolExecutor(2)

    def until_done(self, prompt_id: str) -> tuple[float, float, int]:
        """When ``prompt_id``'s ``executing {node: null}`` came, when its last output was in hand, and how many.
        Outputs are fetched beside the socket (a browser loads an image while its socket goes on). ``seen`` keeps
        when ``execution_start`` and ``execution_success`` came."""
        fetches: list[Future[float]] = []
        self.seen: dict[str, float] = {}
        while True:
            raw = self.ws.recv()
            if not isinstance(raw, str) or prompt_id not in raw:
                continue
            message = json.loads(raw)
            data = message.get("data") or {}
            if data.get("prompt_id") != prompt_id:
                continue
            if message.get("type") in ("execution_start", "execution_success"):
                self.seen[message["type"]] = time.time()
            if message.get("type") == "executed":
                fetches += [self.pool.submit(self._fetch, item) for item in output_files(data.get("output") or {})]
            elif message.get("type") == "execution_error":
                raise RuntimeError(f"the job failed: {data.get('exception_message')}")
            elif message.get("type") == "executing" and data.get("node") is None:
                done = time.time()
                return done, max([done, *(f.result() for f in fetches)]), len(fetches)

    def _fetch(self, item: dict[str, Any]) -> float:
        self.fetch(item)
        return time.time()

    def close(self) -> None:
        self.ws.close()
        self.pool.shutdown()


def _read_all(session: requests.Session, url: str, params: dict[str, Any]) -> None:
    with session.get(url, params=params, stream=True, timeout=120) as response:
        response.raise_for_status()
        for _ in response.iter_content(256 * 1024):
            pass


class Direct:
    def __init__(self, comfyui: str) -> None:
        self.base = comfyui
        self.client_id = f"bench-{uuid.uuid4().hex[:12]}"
        self.session = requests.Session()
        self.events = EventClient(
            f"{comfyui.replace('http', 'ws', 1)}/ws?clientId={self.client_id}",
            lambda item: _read_all(self.session, f"{comfyui}/view", item),
        )

    def run(self, prompt: dict[str, Any]) -> Run:
        prompt_id = str(uuid.uuid4())
        run = Run("direct", time.time(), comfy_prompt_id=prompt_id)
        body: dict[str, Any] = {"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id}
        answer = self.session.post(f"{self.base}/prompt", json=body, timeout=60)
        if answer.status_code != 200:
            raise RuntimeError(f"ComfyUI refused the prompt: {answer.status_code} {answer.text[:300]}")
        run.done, run.outputs, run.files = self.events.until_done(prompt_id)
        run.comfy_start = self.events.seen["execution_start"]
        run.comfy_success = self.events.seen["execution_success"]
        return run

    def close(self) -> None:
        self.events.close()


class HubSeat:
    """A participant's seat through the hub: its API and its event socket."""

    def __init__(self, path: str, hub: Hub, token: str) -> None:
        self.path, self.base = path, hub.base
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.events = EventClient(
            f"{hub.ws_base}/ws/hub/seat/",
            lambda item: _read_all(self.session, f"{self.base}/api/hub/view", item),
            [f"Authorization: Bearer {token}"],
        )

    def run(self, prompt: dict[str, Any]) -> Run:
        run = Run(self.path, time.time())
        answer = self.session.post(f"{self.base}/api/hub/prompt", json={"prompt": prompt}, timeout=60)
        if answer.status_code != 200:
            raise RuntimeError(f"the hub refused the prompt: {answer.status_code} {answer.text[:300]}")
        prompt_id = answer.json()["prompt_id"]
        run.done, run.outputs, run.files = self.events.until_done(prompt_id)
        run.comfy_prompt_id = prompt_id  # replaced by the backend's prompt id once the job's row is read
        return run

    def close(self) -> None:
        self.events.close()


# --- the report ---

# The split of a platform job: (label, from, to); a name is a trace step, or one of the client's / ComfyUI's times.
SPLIT = (
    ("submit → request in the web server", "client_submit", "submit"),
    ("request → row queued", "submit", "queued"),
    ("queued → claimed, task on RQ", "queued", "claimed"),
    ("RQ → a worker runs it", "claimed", "dispatch"),
    ("worker → job handed to the provider", "dispatch", "run"),
    ("provider → backend accepted the prompt", "run", "accepted"),
    ("accepted → ComfyUI execution_start", "accepted", "comfy_start"),
    ("ComfyUI's run (execution_start → success)", "comfy_start", "comfy_success"),
    ("ComfyUI success → hub has the final event", "comfy_success", "done"),
    ("  of which output files copied", "output_fetch", "output_stored"),
    ("hub has the final event → participant's socket has it", "done", "client_done"),
    ("final event → outputs also in hand", "client_done", "client_outputs"),
    ("job recorded after the final event", "done", "recorded"),
)
DIRECT_SPLIT = (
    ("submit → ComfyUI execution_start", "client_submit", "comfy_start"),
    ("ComfyUI's run (execution_start → success)", "comfy_start", "comfy_success"),
    ("ComfyUI success → client has the final event", "comfy_success", "client_done"),
    ("final event → outputs also in hand", "client_done", "client_outputs"),
)


def _times(run: Run) -> dict[str, float]:
    return step_times(
        run.steps,
        client_submit=run.submitted,
        client_done=run.done,
        client_outputs=run.outputs,
        comfy_start=run.comfy_start,
        comfy_success=run.comfy_success,
    )


def _hub_own(t: dict[str, float]) -> float:
    copied = t.get("output_stored", 0.0) - t.get("output_fetch", 0.0)
    return (t["accepted"] - t["client_submit"]) + copied + (t["client_outputs"] - t["done"])


def _check_comfyui(comfyui: str) -> dict[str, Any]:
    try:
        stats = requests.get(f"{comfyui}/system_stats", timeout=10)
        stats.raise_for_status()
        return stats.json()
    except (requests.RequestException, ValueError) as exc:
        raise SystemExit(f"realcomfy: no ComfyUI answers at {comfyui} ({exc}). Start one, or check COMFYUI_URL.")


def run(report: Any, argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks realcomfy", description=__doc__.split("\n")[0])
    parser.add_argument("--comfyui-url", default=os.environ.get("COMFYUI_URL", ""))
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("BENCH_REALCOMFY_JOBS", "20")))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--size", type=int, default=1536, help="the default job's image side (px)")
    parser.add_argument("--upscale-model", default="", help="the default job's upscale model (else the first listed)")
    parser.add_argument("--workflow", type=Path, help="an API-format workflow to run instead of the default job")
    args = parser.parse_args(argv or [])
    comfyui = args.comfyui_url.rstrip("/")
    if not comfyui:
        raise SystemExit("realcomfy needs a ComfyUI: --comfyui-url URL or COMFYUI_URL.")
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = set(paths) - set(PATHS)
    if unknown or "direct" not in paths:
        raise SystemExit(f"--paths takes direct (always) and any of comfyui, worker; not {sorted(unknown)}")
    stats = _check_comfyui(comfyui)
    if args.workflow:
        try:
            workflow = json.loads(args.workflow.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"realcomfy: cannot read the workflow {args.workflow}: {exc}") from None
        if not isinstance(workflow, dict) or not all(isinstance(n, dict) for n in workflow.values()):
            raise SystemExit(f"realcomfy: {args.workflow} is not an API-format workflow (a JSON object of nodes).")
    else:
        workflow = default_workflow(comfyui, args.size, args.upscale_model)
    if not vary(workflow, 1)[1]:
        report.line("  note: nothing in the workflow varies per job (no seed or EmptyImage colour): ComfyUI's cache")
        report.line("        may answer repeated jobs at once, which measures nothing.")
    _run(report, comfyui, stats, workflow, paths, args.jobs, args.warmup)


def _run(
    report: Any,
    comfyui: str,
    stats: dict[str, Any],
    workflow: dict[str, Any],
    paths: list[str],
    jobs: int,
    warmup: int,
) -> None:
    from contextlib import ExitStack

    from django.conf import settings

    from gpu_backends.models import GpuBackend
    from gpu_backends.services import refresh_object_info
    from jobs import trace
    from jobs.models import Job
    from workshops.services import create_workshop

    settings.COMFYUME["TRACE_JOBS"] = True
    pin_to_hub_cpus()  # before the gateway and the GPU worker start: they stand for the hub's side too
    version = (stats.get("system") or {}).get("comfyui_version", "?")
    nodes = " → ".join(node["class_type"] for node in workflow.values())
    report.line(f"\n## A real ComfyUI ({version} at {comfyui}): {nodes}; {jobs} rounds after {warmup} warm-up")
    logs = settings.DATA_DIR / "logs-realcomfy"
    with ExitStack() as stack:
        env = {"COMFYUME_TRACE_JOBS": "true"}
        seats: dict[str, tuple[GpuBackend, str]] = {}
        if "comfyui" in paths:
            backend = GpuBackend.objects.create(name="bench-comfyui", kind="comfyui", url=comfyui, max_concurrency=1)
            refresh_object_info(backend)
            seats["comfyui"] = (backend, "")
        if "worker" in paths:
            from tests.fake_verda import INFERENCE_KEY, FakeVerda
            from tests.gpu_worker import gpu_worker

            verda = stack.enter_context(FakeVerda())
            worker = stack.enter_context(gpu_worker(comfyui, log_path=logs.parent / "realcomfy-gpu-worker.log"))
            verda.add_deployment(DEPLOYMENT, worker, min_replicas=1, running=True)
            os.environ["COMFYUME_VERDA_INFERENCE_KEY"] = env["COMFYUME_VERDA_INFERENCE_KEY"] = INFERENCE_KEY
            backend = GpuBackend.objects.create(
                name=DEPLOYMENT,
                kind="verda",
                url=verda.deployment_url(DEPLOYMENT),
                max_concurrency=1,
                state=GpuBackend.State.READY,
            )
            refresh_object_info(backend)
            seats["worker"] = (backend, "")
        tokens = {}
        for path, (backend, _) in seats.items():
            workshop, _ = create_workshop(f"bench-{path}", seats=1, backends=[backend])
            tokens[path] = workshop.seats.get().issue_token()
        hub = Hub(logs, workers=max(1, len(seats)), env=env)
        hub.env.update(COMFYUME_CALLBACK_URL=hub.base, COMFYUME_PUBLIC_URL=hub.base)
        stack.enter_context(hub)
        clients: dict[str, Any] = {"direct": Direct(comfyui)}
        clients.update({path: HubSeat(path, hub, tokens[path]) for path in seats})
        for client in clients.values():
            stack.callback(client.close)

        rounds: list[dict[str, Run]] = []
        counter = int(time.time()) % 100_000 * 100  # new colours and seeds on every run of the benchmark
        # The paths in a new order each round: ComfyUI collects garbage after a job at most every 10 s, holding
        # its GIL for a quarter of a second on this machine; in a fixed order it fell on the same path every time.
        order = random.Random(1)
        for n in range(warmup + jobs):
            done: dict[str, Run] = {}
            for path in order.sample(paths, len(paths)):
                counter += 1
                prompt, _ = vary(workflow, counter)
                done[path] = clients[path].run(prompt)
            if n >= warmup:
                rounds.append(done)
        for done in rounds:
            for path, one in done.items():
                if path != "direct":
                    job = Job.objects.get(prompt_id=one.comfy_prompt_id)
                    one.job_id, one.steps = job.pk, trace.read(job.pk)
                    seen = dict(one.steps)
                    one.comfy_start, one.comfy_success = seen["execution_start"], seen["execution_success"]

    files = {run.files for done in rounds for run in done.values()}
    report.line(f"  outputs per job: {sorted(files)}; times from the submit to the last output byte in hand")
    direct = [done["direct"] for done in rounds]
    report.line(
        f"  direct: p50 {pct([r.total for r in direct], 0.5) * 1000:.0f} ms (ComfyUI's own run p50 "
        f"{pct([r.comfy_run for r in direct], 0.5) * 1000:.0f} ms)"
    )
    print_split(report, [_times(r) for r in direct], DIRECT_SPLIT)
    for path in paths[1:]:
        runs = [done[path] for done in rounds]
        # Medians and 99th percentiles of each path against the direct path's: ComfyUI's own pauses (its garbage
        # collection at most every 10 s, 0.3 s here) fall on some jobs of every path, so a round's difference
        # swings by their length while each path's median does not.
        ours, theirs = [r.not_comfy for r in runs], [d["direct"].not_comfy for d in rounds]
        added = (pct(ours, 0.5) - pct(theirs, 0.5)) * 1000
        event_ours = [r.not_comfy_to_event for r in runs]
        event_theirs = [d["direct"].not_comfy_to_event for d in rounds]
        event = (pct(event_ours, 0.5) - pct(event_theirs, 0.5)) * 1000
        # The hub's own steps added up, ComfyUI's pauses left out: submit → the backend took the prompt, the
        # output copies, and the backend's final event → the outputs in the participant's hands.
        own = [_hub_own(_times(r)) * 1000 for r in runs]
        report.line(
            f"  {path}: p50 {pct([r.total for r in runs], 0.5) * 1000:.0f} ms; added time per job p50 {added:.1f} ms "
            f"(to the final event alone {event:.1f} ms); the hub's own steps added up p50 {pct(own, 0.5):.1f} ms, "
            f"p99 {pct(own, 0.99):.1f} ms"
        )
        print_split(report, [_times(r) for r in runs], SPLIT)
        report.bench(f"realcomfy.{path}.added_p50", added, "ms")
        report.bench(f"realcomfy.{path}.hub_own_p50", pct(own, 0.5), "ms")
        report.bench(f"realcomfy.{path}.hub_own_p99", pct(own, 0.99), "ms")
        report.bench(f"realcomfy.{path}.final_event_added_p50", event, "ms")
