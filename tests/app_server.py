"""aiohttp applications on real loopback ports in a background thread, for fakes the tests talk to over HTTP."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web


class AppServer:
    """aiohttp applications on 127.0.0.1 (or ``host``: e.g. a Docker network's gateway, for containers), each on
    its own real port, in one background thread with its own loop."""

    def __init__(self, *apps: web.Application, handler_cancellation: bool = False, host: str = "127.0.0.1") -> None:
        self.apps = apps
        self.host = host
        self.handler_cancellation = handler_cancellation
        self.ports: list[int] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._runners: list[web.AppRunner] = []
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def urls(self) -> list[str]:
        return [f"http://{self.host}:{port}" for port in self.ports]

    @property
    def url(self) -> str:
        return self.urls[0]

    def start(self) -> AppServer:
        self._thread = threading.Thread(target=self._main, name="aiohttp-test-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("aiohttp test server did not start within 15 s")
        if self._error is not None:
            raise RuntimeError(f"aiohttp test server failed to start: {self._error}") from self._error
        return self

    def _main(self) -> None:
        loop = self.loop = asyncio.new_event_loop()
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
            for runner in self._runners:
                loop.run_until_complete(runner.cleanup())
            loop.close()

    async def _start(self) -> None:
        for app in self.apps:
            runner = web.AppRunner(
                app, access_log=None, shutdown_timeout=1.0, handler_cancellation=self.handler_cancellation
            )
            await runner.setup()
            await web.TCPSite(runner, self.host, 0).start()
            self._runners.append(runner)
            self.ports.append(runner.addresses[0][1])

    def call(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` in the server's loop (from a test's thread)."""
        assert self.loop is not None, "start() first"
        self.loop.call_soon_threadsafe(callback)

    def stop(self) -> None:
        if self.loop is not None and self._thread is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=15)

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
