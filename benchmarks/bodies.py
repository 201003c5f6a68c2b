"""Large request bodies against the real web server: what they cost it in memory and in answering others.

Two cases, each on a fresh web process (so its peak resident memory, ``VmHWM``, belongs to that case alone):
- ``anonymous``: a 150 MB multipart ``POST /`` without any credentials (what anyone on the internet can send);
- ``upload``: a participant's 49 MB video through ``POST /api/hub/inputs`` (the seat frontend's call).
For each: the web process's peak memory over its idle peak, the status the client got, how long the request
took, and the slowest ``GET /health`` answered meanwhile (polled every 50 ms from another thread).

Both servers run: stock ``daphne`` (what the hub ran before) and ``comfyume.server`` (what it runs now), so
one run shows before and after. BENCH_BODY_SERVERS=comfyume.server picks one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

BASE = Path(__file__).resolve().parent.parent
SERVERS = os.environ.get("BENCH_BODY_SERVERS", "daphne,comfyume.server").split(",")
ANONYMOUS_MB = 150
UPLOAD_MB = 49
MB = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (``VmHWM``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _start(server: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", server, "-b", "127.0.0.1", "-p", str(port), "comfyume.asgi:application"],
        cwd=BASE,
        env=os.environ.copy(),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            requests.get(f"{base}/health", timeout=2)
            return proc, base
        except requests.ConnectionError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{server} did not answer /health within 60 s (see {log})")


def _multipart(path: Path, size_mb: int) -> Path:
    """A multipart form with one ``image`` file of ``size_mb`` MB and its ``name``, written to disk once."""
    boundary = "----comfyume-bench"
    with path.open("wb") as f:
        f.write(f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nclip.mp4\r\n'.encode())
        f.write(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="clip.mp4"\r\n'.encode())
        f.write(b"Content-Type: video/mp4\r\n\r\n")
        block = os.urandom(MB)
        f.write(b"\x00\x00\x00\x18ftypmp42")  # an MP4's first box: the hub checks what a file is by its bytes
        for _ in range(size_mb):
            f.write(block)
        f.write(f"\r\n--{boundary}--\r\n".encode())
    return path


def _post_while_polling(base: str, path: str, body: Path, headers: dict[str, str]) -> tuple[int | str, float, float]:
    """POST ``body`` (streamed from disk); meanwhile poll /health. (status, seconds, slowest /health in s)."""
    slowest = 0.0
    done = threading.Event()

    def poll() -> None:
        nonlocal slowest
        while not done.is_set():
            start = time.monotonic()
            try:
                requests.get(f"{base}/health", timeout=30)
            except requests.RequestException:
                pass
            slowest = max(slowest, time.monotonic() - start)
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    start = time.monotonic()
    headers = {"Content-Type": "multipart/form-data; boundary=----comfyume-bench", **headers}
    try:
        with body.open("rb") as f:
            status: int | str = requests.post(
                f"{base}{path}", data=f, headers={**headers, "Content-Length": str(body.stat().st_size)}, timeout=120
            ).status_code
    except requests.RequestException as exc:
        status = type(exc).__name__
    took = time.monotonic() - start
    time.sleep(0.3)  # the server may still be working after the client got its answer
    done.set()
    poller.join()
    return status, took, slowest


def run(report) -> None:
    from workshops.services import create_workshop

    workshop, _ = create_workshop("bench-bodies", seats=1, backends=[])
    token = workshop.seats.get().issue_token()
    work = Path(tempfile.mkdtemp(prefix="cfme-bodies-"))
    report.line(f"\n## Large request bodies ({ANONYMOUS_MB} MB anonymous POST /, {UPLOAD_MB} MB upload)")
    try:
        seat = {"Authorization": f"Bearer {token}"}
        cases = [
            ("anonymous", "/", _multipart(work / "anonymous.form", ANONYMOUS_MB), {}),
            ("upload", "/api/hub/inputs", _multipart(work / "upload.form", UPLOAD_MB), seat),
        ]
        for server in SERVERS:
            name = server.replace(".", "_")
            for case, path, body, headers in cases:
                proc, base = _start(server, work / f"{name}.log")
                try:
                    idle = _peak_rss_mb(proc.pid)
                    status, took, slowest = _post_while_polling(base, path, body, headers)
                    grew = _peak_rss_mb(proc.pid) - idle
                finally:
                    proc.terminate()
                    proc.wait(10)
                report.line(
                    f"{server:16} {case:9} status {status}, {took:.2f} s; peak memory +{grew:.0f} MB; "
                    f"slowest /health meanwhile {slowest * 1000:.0f} ms"
                )
                report.bench(f"body_{case}_{name}_peak_growth_mb", grew, "MB")
                report.bench(f"body_{case}_{name}_slowest_health_ms", slowest * 1000, "ms")
    finally:
        for f in work.iterdir():
            f.unlink()
        work.rmdir()
