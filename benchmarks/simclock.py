"""``python -m benchmarks.simclock --port P --out FILE [simulator options]``: the ComfyUI simulator in a process of its
own (as a GPU server is a machine of its own), noting when each prompt arrived and when it sent each message.

On SIGTERM it writes what it noted to ``FILE`` as JSON (``{"received": {prompt_id: t}, "sent": [[prompt_id, event,
detail, t], ...]}``, wall-clock seconds) and stops. The ``crowd`` benchmark reads it: sharing a process (and its
GIL) with hundreds of benchmark clients, the simulator measured the clients' load more than the hub's.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

from gpu_backends.simulator import SimulatorConfig, SimulatorThread


def message_key(event: str, data: Any) -> tuple[str, str, str] | None:
    """Names one ComfyUI message of a prompt the same way on both sides; progress_state is left out (the hub
    coalesces it: only the newest waiting one is sent, by design)."""
    if not isinstance(data, dict) or not data.get("prompt_id"):
        return None
    if event == "executing":
        return (data["prompt_id"], event, str(data.get("node")))
    if event == "progress":
        return (data["prompt_id"], event, f"{data.get('node')}:{data.get('value')}")
    if event in ("executed", "execution_start", "execution_success"):
        return (data["prompt_id"], event, str(data.get("node", "")))
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--progress-steps", type=int, default=0)
    args = parser.parse_args()
    sim = SimulatorThread(
        SimulatorConfig(
            output_dir=args.output_dir,
            node_delay=0.0,
            concurrency=args.concurrency,
            progress_steps=args.progress_steps,
            progress_all=args.progress_steps > 0,
        ),
        port=args.port,
    ).start()
    received: dict[str, float] = {}
    sent: dict[tuple[str, str, str], float] = {}
    simulator = sim.simulator
    original_put, original_send = simulator.put, simulator.send

    def put(item: list[Any]) -> None:
        received[item[1]] = time.time()
        original_put(item)

    def send(event: str, data: Any, sid: str | None = None) -> None:
        key = message_key(event, data)
        if key is not None:
            sent.setdefault(key, time.time())
        original_send(event, data, sid)

    simulator.put, simulator.send = put, send  # type: ignore[method-assign]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"simulator on {sim.url}", flush=True)
    stop.wait()
    args.out.write_text(json.dumps({"received": received, "sent": [[*key, at] for key, at in sent.items()]}))
    sim.stop()


if __name__ == "__main__":
    main()
