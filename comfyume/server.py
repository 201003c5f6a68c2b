"""The hub's web server: daphne, with request bodies bounded and never held whole in memory.

``python -m comfyume.server`` takes daphne's arguments (``-b``, ``-p``, ``--proxy-headers`` …) and runs daphne with
three changes to how a request body travels (docs/OPERATIONS.md, "Request bodies"):

- Twisted parses a ``multipart/form-data`` POST into ``request.args`` in memory by default, the whole body at
  once, on the event loop. Daphne never uses ``args``: a 150 MB form cost ~2 GB and stopped every other request
  (``/health`` included) for seconds. The parse is turned off.
- An oversized body is refused from its headers (``Content-Length`` over the limit of ``comfyume.bodylimits``),
  before a byte of it is read, and a body of unknown length (chunked) is cut off as soon as it passes the limit:
  the 413 goes out in the API's format and the connection is closed.
- Daphne hands the application the whole body at once: it reads Twisted's spool file into its queue in one loop
  before the application runs. Here the application reads the spool file a chunk at a time, as it asks for it,
  so a large upload costs one chunk of memory, not its size.

Daphne offers ``CommandLineInterface.server_class`` for this; its ``Server`` builds its HTTP factory inside
``run()``, so :class:`HubServer` exchanges that one attribute for ours.

One daphne process relays every live event on one event loop, so it uses one core at most. ``--processes N``
(default ``COMFYUME_WEB_PROCESSES``, 1) runs N of them on the same address: each child binds its own socket with
``SO_REUSEPORT`` and the kernel spreads new connections over them, WebSockets included (docs/OPERATIONS.md,
"Sizing the hub"). The parent only watches: SIGTERM or SIGINT is passed on to every child, and when one child
ends on its own the others are stopped too and the parent exits with its code, so the container's or
``make run``'s restart policy brings the whole server back. Everything the web processes share lives in
PostgreSQL and Redis (sign-in limits, metrics, the channel layer), so nothing is lost between them.
"""

from __future__ import annotations

import daphne.server  # isort: skip  # installs Twisted's asyncio reactor: must come before any other Twisted import

import argparse
import io
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import IO, Any

from daphne.cli import CommandLineInterface
from daphne.http_protocol import HTTPFactory, WebRequest

from comfyume import bodylimits

log = logging.getLogger(__name__)

# What the application gets per receive(): large enough that a 50 MB upload is ~800 hand-overs, small enough to
# be nothing next to the process.
CHUNK_BYTES = 64 * 1024
REASONS = {413: b"Content Too Large"}


class HubRequest(WebRequest):
    """Daphne's request, with the body bounded on its way in and handed to the application on demand."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Twisted would otherwise read a multipart or urlencoded body whole into request.args (unused by daphne).
        super().__init__(*args, parsePOSTFormSubmission=False, **kwargs)
        self.body_limit = 0
        self.body_received = 0
        self.refused = False
        self.body_file: IO[bytes] | None = None

    def _path(self) -> str:
        # The request line is on the channel until the body is complete; only then does Twisted give it to us.
        target: bytes = getattr(self.channel, "_path", b"/") or b"/"
        return target.split(b"?", 1)[0].decode("latin-1")

    def gotLength(self, length: int | None) -> None:  # noqa: N802  (Twisted's name)
        """The headers are in: refuse a body declared too large before reading any of it."""
        headers = [(name.lower(), value) for name, values in self.requestHeaders.getAllRawHeaders() for value in values]
        self.body_limit = bodylimits.body_limit(self._path(), headers)
        if length is not None and length > self.body_limit:
            self.content = io.BytesIO()
            self._refuse(length)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802  (Twisted's name)
        """Count the body as it comes (a chunked one has no declared length) and cut it off past the limit."""
        if self.refused:
            return
        self.body_received += len(data)
        if self.body_received > self.body_limit:
            self._refuse(None)
            return
        super().handleContentChunk(data)

    def _refuse(self, size: int | None) -> None:
        """Answer 413 straight on the connection and close it: the request never reaches the application."""
        self.refused = True
        # Twisted would send "100 Continue" after the headers: the client is to stop, not go on.
        self.requestHeaders.removeHeader(b"Expect")
        answer = bodylimits.refusal(self._path(), self.body_limit, size)
        head = [b"HTTP/1.1 %d %s" % (answer.status, REASONS.get(answer.status, b"Error"))]
        head += [name + b": " + value for name, value in answer.headers]
        head += [b"Content-Length: %d" % len(answer.body), b"Connection: close", b"", b""]
        self.channel.transport.write(b"\r\n".join(head) + answer.body)
        log.info("Refused a %s-byte body to %s (limit %d)", size or "chunked", self._path(), self.body_limit)
        self.channel.loseConnection()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:  # noqa: N802  (Twisted's name)
        if not self.refused:
            super().requestReceived(command, path, version)

    def process(self) -> Any:
        """Daphne's processing, with the spool file kept for :meth:`HubServer.create_application` to stream
        and an empty one in its place, so daphne's own loop queues only an empty, final message."""
        self.body_file, self.content = self.content, io.BytesIO()
        return super().process()

    def finish(self) -> None:
        super().finish()
        self._close_body()

    def connectionLost(self, reason: Any) -> None:  # noqa: N802  (Twisted's name)
        super().connectionLost(reason)
        self._close_body()

    def _close_body(self) -> None:
        # Twisted closes the file it knows (now the empty stand-in); the spool file is ours to close.
        if self.body_file is not None:
            self.body_file.close()


class HubHTTPFactory(HTTPFactory):
    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802  (Twisted's name)
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = HubRequest
        return protocol


class StreamedBody:
    """The application's ``receive``: the request's spool file a chunk at a time, then daphne's queue.

    Daphne's queue holds one empty ``http.request`` (the body it was given) and later ``http.disconnect``;
    the empty one is dropped, the rest passed on.
    """

    def __init__(self, request: HubRequest, queue_get: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self.request, self.queue_get = request, queue_get
        self.body_done = False

    async def __call__(self) -> dict[str, Any]:
        if not self.body_done:
            body = self.request.body_file
            if body is None or body.closed:  # the client went away
                self.body_done = True
                return {"type": "http.disconnect"}
            chunk = body.read(CHUNK_BYTES)
            more = len(chunk) == CHUNK_BYTES
            if not more:
                self.body_done = True
                await self.queue_get()  # daphne's empty, final http.request
            return {"type": "http.request", "body": chunk, "more_body": more}
        return await self.queue_get()


class HubServer(daphne.server.Server):
    """Daphne's server with :class:`HubHTTPFactory` and the body streamed to the application."""

    @property
    def http_factory(self) -> HTTPFactory:
        return self._hub_http_factory

    @http_factory.setter
    def http_factory(self, factory: HTTPFactory) -> None:
        # Server.run() builds daphne's own factory here; ours differs only in its request class.
        self._hub_http_factory = HubHTTPFactory(self)

    def create_application(self, protocol: Any, scope: dict[str, Any]) -> Any:
        """Daphne's, with the application's ``receive`` reading the request's spool file first.

        Daphne builds ``receive`` from its queue inside this method; the application is wrapped for the
        duration of the (synchronous) call so that it gets :class:`StreamedBody` around it instead.
        """
        if not isinstance(protocol, HubRequest):  # a WebSocket: nothing to stream
            return super().create_application(protocol, scope)
        application: Any = getattr(self, "application")  # noqa: B009  (daphne's Server is untyped)

        def with_streamed_body(scope: dict[str, Any], receive: Any, send: Any) -> Any:
            return application(scope=scope, receive=StreamedBody(protocol, receive), send=send)

        self.application = with_streamed_body
        try:
            return super().create_application(protocol, scope)
        finally:
            self.application = application


class HubCommandLineInterface(CommandLineInterface):
    description = "ComfyuME's web server (daphne with bounded, streamed request bodies)"
    server_class = HubServer


# How often a thread holding the GIL is made to hand it over (Python's default: 5 ms). The event loop relays every
# live event and waits for the GIL after each wait for the network, while the requests' threads run Python: at
# 100 seats, 10 jobs a second, events took 0.42 s from Redis to their socket at 5 ms and 0.07 s at 0.1 ms
# (docs/BENCHMARKS.md, "One hub, many seats").
SWITCH_INTERVAL = 0.0001


# --- several processes on one address ------------------------------------------------------------------------

MAX_PROCESSES = 64
# A child still running this long after SIGTERM is killed (daphne closes its connections within a few seconds).
STOP_GRACE = 30.0
# Daphne's own defaults when neither -b nor -p is given.
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000


class UsageError(Exception):
    """A command line or setting the server cannot run with; the message says what to change."""


def _process_count(value: str, source: str) -> int:
    text = value.strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_PROCESSES:
        raise UsageError(f"{source} must be a whole number from 1 to {MAX_PROCESSES}, not {value!r}.")
    return int(text)


def split_command_line(argv: Sequence[str]) -> tuple[int, bool, str | None, int | None, list[str]]:
    """(processes, child, host, port, the rest of daphne's arguments) from ``argv``; host and port are None when
    not given.

    ``-b``/``--bind`` and ``-p``/``--port`` are taken out in every spelling argparse accepts, because with several
    processes each child binds the address itself and hands daphne the socket (``--fd``).
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--processes", default=None)
    parser.add_argument("--reuse-port-child", action="store_true")  # set by the parent on its children
    parser.add_argument("-b", "--bind", dest="host", default=None)
    parser.add_argument("-p", "--port", default=None)
    known, rest = parser.parse_known_args(list(argv))
    if known.processes is not None:
        processes = _process_count(known.processes, "--processes")
    else:
        processes = _process_count(os.environ.get("COMFYUME_WEB_PROCESSES", "1"), "COMFYUME_WEB_PROCESSES")
    try:
        port = int(known.port) if known.port is not None else None
    except ValueError:
        raise UsageError(f"--port must be a number, not {known.port!r}.") from None
    return processes, known.reuse_port_child, known.host, port, rest


def _with_address(host: str | None, port: int | None, rest: list[str]) -> list[str]:
    return [*(["-b", host] if host else []), *(["-p", str(port)] if port is not None else []), *rest]


def _check_for_processes(host: str, port: int, rest: list[str]) -> None:
    """Refuse what several processes cannot share, before any of them starts."""
    options = HubCommandLineInterface().parser.parse_args(rest)  # exits with daphne's own message when wrong
    if options.unix_socket or options.file_descriptor is not None or options.socket_strings:
        raise UsageError("Several web processes listen on -b/-p only: leave out -u, --fd and -e, or run one process.")
    try:
        if ipaddress.ip_address(host.strip("[]")).version != 4:
            raise UsageError(f"Several web processes need an IPv4 address to bind (-b), not {host!r}.")
    except ValueError:
        raise UsageError(f"Several web processes need an IPv4 address to bind (-b), not {host!r}.") from None
    if not 0 < port < 65536:
        raise UsageError(f"--port must be from 1 to 65535, not {port}.")


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` that other processes of this user may bind too (``SO_REUSEPORT``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"Cannot listen on {host}:{port}: {exc.strerror}.") from None
    sock.listen(socket.SOMAXCONN)
    sock.set_inheritable(False)
    return sock


def run_child(host: str, port: int, rest: list[str]) -> None:
    """One of several web processes: its own socket on the shared address, handed to daphne."""
    sock = reuse_port_socket(host, port)
    # Twisted adopts a duplicate of the descriptor and closes the one it was given.
    HubCommandLineInterface().run([*rest, "--fd", str(sock.fileno())])


def run_processes(processes: int, host: str, port: int, rest: list[str]) -> int:
    """Start ``processes`` children on ``host:port`` and watch them; the exit code is the first to end's."""
    _check_for_processes(host, port, rest)
    logging.basicConfig(level=logging.INFO, format="%(asctime)-15s %(levelname)-8s %(message)s")  # daphne's format
    command = [sys.executable, "-m", "comfyume.server", "--processes", "1", "--reuse-port-child"]
    command += _with_address(host, port, rest)
    children = [subprocess.Popen(command) for _ in range(processes)]
    log.info("Started %d web processes on %s:%d (pids %s)", processes, host, port, [c.pid for c in children])
    stopping: list[float] = []  # when the stop began (empty: running)
    asked: list[int] = []  # the signal that asked for the stop, if one did

    def stop() -> None:
        if not stopping:
            stopping.append(time.monotonic())
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def on_signal(signum: int, frame: Any) -> None:
        asked.append(signum)
        stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while any(child.poll() is None for child in children):
        if not stopping:
            ended = next((child for child in children if child.returncode is not None), None)
            if ended is not None:
                log.error("Web process %d ended (exit code %s): stopping the others", ended.pid, ended.returncode)
                stop()
        elif time.monotonic() - stopping[0] > STOP_GRACE:
            for child in children:
                if child.poll() is None:
                    child.kill()
        time.sleep(0.2)
    if asked:
        return 0
    # Nothing asked them to stop: a child ended on its own (all of them, if they failed at once).
    first = next((child for child in children if child.returncode), None)
    if first is not None and not stopping:
        log.error("Web process %d ended (exit code %s)", first.pid, first.returncode)
    return first.returncode if first is not None and first.returncode > 0 else 1


def main(argv: Sequence[str]) -> int:
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        processes, child, host, port, rest = split_command_line(argv)
        if processes == 1 and not child:
            HubCommandLineInterface().run(_with_address(host, port, rest))
            return 0
        host, port = host or DEFAULT_HOST, DEFAULT_PORT if port is None else port
        if child:
            run_child(host, port, rest)
        else:
            return run_processes(processes, host, port, rest)
    except UsageError as exc:
        print(f"comfyume.server: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
