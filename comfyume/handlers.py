"""Django's ASGI handler, with a request's middleware and view run in one hand-over to a thread, and request
bodies bounded before Django reads them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler

from comfyume import bodylimits

Message = Mapping[str, Any]


class SyncChainASGIHandler(ASGIHandler):
    """Runs the whole middleware chain and the view synchronously, in one call to the sync thread.

    Every view of the hub is synchronous (the ORM is), and so is every middleware we use. Django's own ASGI
    handler builds an async chain instead, and under it each ``MiddlewareMixin`` middleware runs its
    ``process_request`` and ``process_response`` through ``sync_to_async`` separately: with our eight
    middleware that was over a dozen hand-overs between the event loop and the thread per request, each one
    waiting for a loop that is also relaying the participants' live events. Built as under WSGI, the chain
    takes one: the request reaches the view and its response leaves it in a single thread call. The sync
    thread is the same one Django uses (``thread_sensitive``), so nothing about which code shares a thread
    changes. An async view would still work (Django's sync path runs it with ``async_to_sync``), only without
    this benefit.

    Before any of that, the body's size is checked (``comfyume.bodylimits``): Django reads the whole body before
    it looks at the request, so an oversized one is refused here, in its API's format, from its Content-Length
    without reading it, or as soon as a body of unknown length passes the limit. ``comfyume.server`` does the
    same in the web server itself; this check covers any other ASGI server in front.
    """

    _lasting: list[ThreadPoolExecutor] | None = None

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        chain: Any = self._middleware_chain  # type: ignore[has-type]  # set by load_middleware, untyped there
        run = sync_to_async(chain, thread_sensitive=True)
        # At most WEB_CONCURRENCY requests run their middleware and view at once; the others wait their turn on
        # the event loop. Each request has a thread of its own, and a class pressing Run at once put a hundred
        # threads on the GIL beside the event loop that relays the participants' live events: the loop then got
        # one turn in a hundred (docs/BENCHMARKS.md, "One hub, many seats"). A response streamed after its view
        # returned (a download) no longer holds a turn.
        turns = asyncio.Semaphore(settings.WEB_CONCURRENCY)

        async def limited(request: Any) -> Any:
            async with turns:
                return await run(request)

        self._middleware_chain = limited

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """As Django's, but a request's synchronous work goes to a thread kept from one request to the next.

        Django gives every request a thread of its own (``ThreadSensitiveContext``): a thread started for it, and
        another to join it when it ends, while the event loop waits for the GIL to let them start. Here a request
        borrows one of ``2 × WEB_CONCURRENCY`` lasting threads instead (asgiref's context with an executor);
        when all are out (a long download holds one to its end), it gets a new one as before. A view still running
        after its client went away keeps its thread busy: the next request lent that thread waits for it, as
        Django's shared thread outside a request would make it.
        """
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        if self._lasting is None:
            self._lasting = [
                ThreadPoolExecutor(1, thread_name_prefix="hub-request") for _ in range(2 * settings.WEB_CONCURRENCY)
            ]
        executor = self._lasting.pop() if self._lasting else None
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            if executor is not None:
                self._lasting.append(executor)

    async def handle(
        self,
        scope: Any,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        path, headers = scope["path"], scope.get("headers", [])
        limit = bodylimits.body_limit(path, headers)
        declared = bodylimits.declared_length(headers)
        if declared is not None and declared > limit:
            await bodylimits.send_refusal(send, bodylimits.refusal(path, limit, declared))
            return
        await super().handle(scope, _BoundedReceive(receive, send, path, limit), send)


class _BoundedReceive:
    """The body as the server hands it over, counted: past ``limit`` the 413 is sent and Django is told the client
    went away (it then drops what it read and answers nothing more)."""

    def __init__(
        self,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
        path: str,
        limit: int,
    ) -> None:
        self.receive, self.send, self.path, self.limit = receive, send, path, limit
        self.received = 0

    async def __call__(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                await bodylimits.send_refusal(self.send, bodylimits.refusal(self.path, self.limit, None))
                return {"type": "http.disconnect"}
        return message
