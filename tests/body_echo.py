"""A small ASGI application for tests/test_bodylimits.py: reads the whole body and answers what it received.

Run behind ``python -m comfyume.server`` it shows what the web server itself does with a body (the hub's own
application would add its ASGI check on top): the largest piece handed over at once, the total, and how much
the process's peak memory grew since it started.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "comfyume.settings")
django.setup(set_prefix=False)  # the web server reads the body limits from the settings


def peak_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


STARTED_KB = peak_kb()


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    total = largest = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body = message.get("body", b"")
        total, largest = total + len(body), max(largest, len(body))
        if not message.get("more_body"):
            break
    answer = json.dumps({"total": total, "largest": largest, "grew_kb": peak_kb() - STARTED_KB}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": answer})
