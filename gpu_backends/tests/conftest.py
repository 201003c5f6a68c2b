"""Fixtures the gpu_backends tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gpu_backends import providers
from gpu_backends.providers import EventSockets


@pytest.fixture
def pool(monkeypatch) -> Iterator[EventSockets]:
    """A pool of this test's own, so sockets left by other tests (and their simulators) play no part."""
    fresh = EventSockets()
    monkeypatch.setattr(providers, "EVENT_SOCKETS", fresh)
    yield fresh
    for sock in fresh._idle:
        sock.ws.close()
