"""``python -m gpu_backends.worker``: flags, each with an environment variable (docs/GPU_WORKER.md)."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from .app import WorkerConfig, serve


def _env_port(parser: argparse.ArgumentParser, name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        parser.error(f"{name} must be a port number, not {raw!r}")
    if not 0 <= port <= 65535:
        parser.error(f"{name} must be a port number, not {raw!r}")
    return port


def load_warmup(path: Path) -> dict[str, Any]:
    """An API-format prompt (or a ``{"prompt": {...}}`` body as /prompt takes it)."""
    data = json.loads(path.read_text())
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]
    if not isinstance(data, dict) or not data or not all(isinstance(node, dict) for node in data.values()):
        raise ValueError("not an API-format prompt (an object of nodes)")
    return data


def main(argv: list[str] | None = None) -> None:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="python -m gpu_backends.worker",
        description="ComfyuME's GPU worker: runs jobs on the ComfyUI next to it (docs/GPU_WORKER.md).",
    )
    parser.add_argument(
        "--comfyui-url",
        default=env.get("COMFYUME_WORKER_COMFYUI_URL") or "http://127.0.0.1:8188",
        help="the local ComfyUI (COMFYUME_WORKER_COMFYUI_URL; default http://127.0.0.1:8188)",
    )
    parser.add_argument(
        "--host",
        default=env.get("COMFYUME_WORKER_HOST") or "0.0.0.0",
        help="address to listen on (COMFYUME_WORKER_HOST; default 0.0.0.0)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=_env_port(parser, "COMFYUME_WORKER_PORT", 8189),
        help="port to listen on (COMFYUME_WORKER_PORT; default 8189)",
    )
    parser.add_argument(
        "--warmup-prompt",
        type=Path,
        default=env.get("COMFYUME_WORKER_WARMUP_PROMPT") or None,
        help="an API-format prompt run once before /ready says yes (COMFYUME_WORKER_WARMUP_PROMPT)",
    )
    parser.add_argument(
        "--token",
        default=env.get("COMFYUME_WORKER_TOKEN") or None,
        help="when set, /run and /cancel need 'Authorization: Bearer <token>' (COMFYUME_WORKER_TOKEN)",
    )
    args = parser.parse_args(argv)
    if not str(args.comfyui_url).startswith(("http://", "https://")):
        parser.error(f"--comfyui-url / COMFYUME_WORKER_COMFYUI_URL must be an http(s) URL, not {args.comfyui_url!r}")
    warmup = None
    if args.warmup_prompt is not None:
        try:
            warmup = load_warmup(Path(args.warmup_prompt))
        except (OSError, ValueError) as exc:
            parser.error(f"--warmup-prompt / COMFYUME_WORKER_WARMUP_PROMPT {args.warmup_prompt}: {exc}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    serve(WorkerConfig(comfyui_url=args.comfyui_url, token=args.token, warmup_prompt=warmup), args.host, args.port)


if __name__ == "__main__":
    main()
