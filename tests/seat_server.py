"""A seat frontend on a real port, in a thread of the test process, talking to a live hub."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

from workshops.seat_frontend.app import build_app
from workshops.seat_frontend.config import SeatConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SeatServerThread:
    def __init__(self, config: SeatConfig) -> None:
        self.config = config
        self.url = f"http://127.0.0.1:{config.port}{config.base_path}"
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self.app: web.Application | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"seat-{config.label}", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self.app = build_app(self.config)
            self._runner = web.AppRunner(self.app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, self.config.host, self.config.port).start()

        self._loop.run_until_complete(start())
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> SeatServerThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the seat frontend did not start")
        return self

    def run(self, coroutine: Any) -> Any:
        """Run a coroutine in the seat's own loop (from a test's thread); its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def seat_config(
    hub_url: str, token: str, data_dir: Path, *, label: str = "user001", base_path: str = "/"
) -> SeatConfig:
    return SeatConfig(
        hub_url=hub_url,
        token=token,
        label=label,
        base_path=base_path,
        login_url=f"{hub_url}/login/",
        data_dir=data_dir,
        port=free_port(),
        auth_cache_seconds=0.5,
        max_upload_bytes=1024 * 1024,
    )
