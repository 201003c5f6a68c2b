"""A small ASGI application for tests/test_web_processes.py: answers with the process id that served it.

Run behind ``python -m comfyume.server --processes N``, it shows which of the web processes a connection reached.
"""

from __future__ import annotations

import os
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "comfyume.settings")
django.setup(set_prefix=False)  # the web server reads the body limits from the settings


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
