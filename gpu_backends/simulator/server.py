"""Serving the simulator: the aiohttp app, ``run`` (foreground), SimulatorThread (background) and the CLI."""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, web

from .config import PREVIEW_METHODS, SERVER_FEATURES, SimulatorConfig, log
from .engine import Simulator
from .routes import SIM_KEY, routes


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
    parser.add_argument(
        "--preview-method", default="none", choices=PREVIEW_METHODS[:-1], help="as ComfyUI's --preview-method"
    )
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
            preview_method=args.preview_method,
        ),
    )
