"""Where a GPU worker's callbacks meet the dispatch task waiting for them.

The worker posts to the hub's web process (any of them); the job's dispatch task runs in an RQ worker. A Redis
list per dispatch attempt (keyed by the backend prompt id, fresh for every attempt) carries what the worker
posted, in order; a second key carries "stop" the other way, answered on the worker's next callback.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import redis
from django.conf import settings

# Long enough for the slowest job; short enough that an abandoned mailbox does not linger.
TTL_SECONDS = 6 * 3600


@functools.cache
def _redis() -> redis.Redis:
    # Blocking pops wait up to a second or two: the socket timeout must be longer than that.
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10, socket_connect_timeout=3)


class Mailbox:
    def __init__(self, backend_prompt_id: str) -> None:
        self.key = f"comfyume:worker:{backend_prompt_id}"
        self.stop_key = f"{self.key}:stop"

    def post(self, item: dict[str, Any]) -> None:
        pipe = _redis().pipeline()
        pipe.rpush(self.key, json.dumps(item, separators=(",", ":")))
        pipe.expire(self.key, TTL_SECONDS)
        pipe.execute()

    def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next item the worker posted, or None after ``timeout`` seconds."""
        popped = _redis().blpop([self.key], timeout=max(timeout, 0.01))
        if popped is None:
            return None
        return json.loads(popped[1])

    def request_stop(self, reason: str) -> None:
        _redis().set(self.stop_key, reason, ex=TTL_SECONDS)

    def stop_requested(self) -> str | None:
        value = _redis().get(self.stop_key)
        return value.decode() if isinstance(value, bytes) else value

    def discard(self) -> None:
        _redis().delete(self.key, self.stop_key)
