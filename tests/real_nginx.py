"""A real nginx for tests, and the small upstreams it proxies to.

nginx's behaviour (what ``proxy_pass`` does to ``%2F``, which answers ``auth_request`` caches, how an
upgrade is passed) is the thing under test, so the tests run Debian's nginx binary on free ports with a
main configuration that writes only under a temp dir, in front of stub servers that record exactly what
reached them. Without nginx installed the tests are skipped, saying why.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BufferedIOBase
from pathlib import Path
from types import TracebackType

import pytest

from workshops.management.commands.render_nginx import run_nginx_test, write_self_signed_certificate
from workshops.nginx import render_main_config

__all__ = [
    "RealNginx",
    "RecordedRequest",
    "StubDns",
    "StubUpstream",
    "free_port",
    "nginx_binary",
    "require_nginx",
    "write_self_signed_certificate",
]


def nginx_binary() -> str | None:
    if os.access("/usr/sbin/nginx", os.X_OK):
        return "/usr/sbin/nginx"
    return shutil.which("nginx")


def require_nginx() -> str:
    """The nginx binary, or skip the calling test with the reason."""
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (/usr/sbin/nginx or nginx on PATH): apt-get install nginx")
    return binary


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it; a race with another process is unlikely)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RealNginx:
    """One nginx master (and worker) serving a rendered site from ``work_dir``; a context manager."""

    def __init__(self, work_dir: Path, binary: str | None = None) -> None:
        self.work_dir = work_dir
        self.binary = binary or require_nginx()
        self.site_file = work_dir / "site.conf"
        self.main_file = work_dir / "nginx.conf"
        self.process: subprocess.Popen[bytes] | None = None
        work_dir.mkdir(parents=True, exist_ok=True)

    def write(self, site_text: str) -> RealNginx:
        self.site_file.write_text(site_text)
        user = "root" if os.geteuid() == 0 else None  # as root, workers must be able to read the private dir
        self.main_file.write_text(render_main_config(str(self.site_file), str(self.work_dir), user=user))
        return self

    def test(self) -> subprocess.CompletedProcess[str]:
        """``nginx -t`` on what :meth:`write` wrote."""
        return run_nginx_test(self.binary, self.main_file, self.work_dir)

    def error_log(self) -> str:
        path = self.work_dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, wait_for_port: int, timeout: float = 10.0) -> RealNginx:
        """Start nginx in the foreground (``daemon off``) and wait until ``wait_for_port`` accepts."""
        args = [self.binary, "-p", str(self.work_dir), "-e", str(self.work_dir / "error.log")]
        self.process = subprocess.Popen([*args, "-c", str(self.main_file)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                stderr = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{stderr}\n{self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", wait_for_port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen on {wait_for_port} within {timeout} s:\n{self.error_log()}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: fast shutdown of master and workers
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def __enter__(self) -> RealNginx:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --- Stub upstreams ----------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """What reached a stub: the request target exactly as sent (no decoding), headers, body size."""

    method: str
    path: str
    headers: dict[str, str]
    body_length: int
    websocket: bool = False

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class StubAnswer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


Responder = Callable[[RecordedRequest], StubAnswer]
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _echo(request: RecordedRequest) -> StubAnswer:
    body = json.dumps({"path": request.path, "method": request.method, "body_length": request.body_length})
    return StubAnswer(200, {"Content-Type": "application/json"}, body.encode())


class StubUpstream:
    """A threaded HTTP/1.1 server that records every request and answers with ``respond`` (default: a JSON
    echo of the raw path). A WebSocket upgrade is accepted (101) and text frames are echoed back."""

    def __init__(self, name: str, respond: Responder = _echo) -> None:
        self.name = name
        self.respond = respond
        self.requests: list[RecordedRequest] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # nginx keeps upstream connections alive

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                upgrade = self.headers.get("Upgrade", "").lower() == "websocket"
                record = RecordedRequest(
                    method=self.command,
                    path=self.path,  # BaseHTTPRequestHandler keeps the request target as received
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body_length=len(body),
                    websocket=upgrade,
                )
                stub.requests.append(record)
                if upgrade:
                    self._websocket()
                    return
                answer = stub.respond(record)
                self.send_response(answer.status)
                for key, value in answer.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def _websocket(self) -> None:
                key = self.headers.get("Sec-WebSocket-Key", "")
                accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", accept)
                self.end_headers()
                self.wfile.flush()
                self.close_connection = True
                while (frame := _read_frame(self.rfile)) is not None:
                    opcode, payload = frame
                    if opcode == 0x8:  # close: answer it and stop
                        self.wfile.write(_frame(0x8, payload[:2]))
                        return
                    if opcode in (0x1, 0x2):
                        self.wfile.write(_frame(opcode, payload))
                        self.wfile.flush()

            do_GET = do_POST = do_PUT = do_DELETE = _handle  # noqa: N815 - http.server's method names

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name=f"stub-{name}", daemon=True)

    def start(self) -> StubUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def seen(self, predicate: Callable[[RecordedRequest], bool]) -> list[RecordedRequest]:
        return [r for r in list(self.requests) if predicate(r)]


def _read_frame(stream: BufferedIOBase) -> tuple[int, bytes] | None:
    head = stream.read(2)
    if len(head) < 2:
        return None
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", stream.read(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", stream.read(8))[0]
    mask = stream.read(4) if head[1] & 0x80 else b""
    payload = stream.read(length)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return opcode, payload


def _frame(opcode: int, payload: bytes) -> bytes:
    """A final, unmasked frame (servers do not mask)."""
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return head + payload


# --- Stub DNS ----------------------------------------------------------------------------------------


class StubDns:
    """A UDP DNS server answering A queries for the names in ``records`` (others: NXDOMAIN).

    nginx's ``resolver`` asks a DNS server, never /etc/hosts, so tests of per-request name lookups need one.
    """

    def __init__(self, records: dict[str, str], ttl: int = 5) -> None:
        self.records = {name.lower().rstrip("."): ip for name, ip in records.items()}
        self.ttl = ttl
        self.queries: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.address = f"127.0.0.1:{self.port}"
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="stub-dns", daemon=True)

    def start(self) -> StubDns:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.sock.close()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stopping.is_set():
            try:
                data, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            answer = self._answer(data)
            if answer:
                self.sock.sendto(answer, peer)

    def _answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        labels, offset = [], 12
        while offset < len(query) and query[offset]:
            length = query[offset]
            labels.append(query[offset + 1 : offset + 1 + length].decode(errors="replace"))
            offset += 1 + length
        question_end = offset + 5  # the zero byte, QTYPE and QCLASS
        name = ".".join(labels).lower()
        qtype = struct.unpack("!H", query[offset + 1 : offset + 3])[0]
        self.queries.append(name)
        ip = self.records.get(name)
        rd = query[2] & 0x01
        if ip is None:
            header = query[:2] + struct.pack("!BBHHHH", 0x80 | rd, 0x80 | 3, 1, 0, 0, 0)  # NXDOMAIN
            return header + query[12:question_end]
        answers = b""
        if qtype == 1:  # A
            answers = struct.pack("!HHHIH", 0xC00C, 1, 1, self.ttl, 4) + socket.inet_aton(ip)
        header = query[:2] + struct.pack("!BBHHHH", 0x80 | rd, 0x80, 1, 1 if answers else 0, 0, 0)
        return header + query[12:question_end] + answers
