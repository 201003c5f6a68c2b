"""Django's ASGI handler, with a request's middleware and view run in one hand-over to a thread."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler


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
    """

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        chain: Any = self._middleware_chain  # type: ignore[has-type]  # set by load_middleware, untyped there
        self._middleware_chain = sync_to_async(chain, thread_sensitive=True)
