"""A worker keeps its ComfyUI event socket between jobs: reused while healthy, replaced when not, never shared by
two jobs at once, and a socket the backend closed while it waited (a restart) costs the next job nothing."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import requests

from gpu_backends import providers
from gpu_backends.client import ComfyUIClient, FileRef
from gpu_backends.providers import ComfyUIProvider, EventSockets, RunSpec
from gpu_backends.simulator import SimulatorConfig, SimulatorThread
from gpu_backends.worker.prompts import Preview
from tests.recorded import TINY_PATH, load

TINY = load(TINY_PATH)


class Sink:
    """Collects what a run reports; outputs are read to the end as the hub's store would."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.stored: list[tuple[str, int]] = []
        self.previews: list[Preview] = []

    def accepted(self, response: dict[str, Any]) -> bool:
        return True

    def event(self, message: dict[str, Any]) -> None:
        self.events.append(message)

    def store_output(self, node_id: str, ref: FileRef, content_type: str, chunks: Iterator[bytes]) -> dict[str, Any]:
        self.stored.append((ref.filename, sum(len(chunk) for chunk in chunks)))
        return {"filename": ref.filename, "subfolder": "", "type": "output"}

    def record_file(self, node_id: str, ref: FileRef, stored: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("a ComfyUI run stores its files itself")

    def preview(self, preview: Preview, running_node: str | None) -> None:
        self.previews.append(preview)

    def note_backend_ref(self, ref: str) -> None:
        pass

    def tick(self) -> str | None:
        return None


class TimeLimitedSink(Sink):
    """A sink whose job has a time limit, as the hub's has (``JobRun.tick``)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.deadline = time.monotonic() + seconds

    def tick(self) -> str | None:
        return "timeout" if time.monotonic() > self.deadline else None


def prompt(color: int) -> dict[str, Any]:
    """The recorded tiny workflow with a colour of its own (the simulator caches identical graphs)."""
    graph = json.loads(json.dumps(TINY))
    graph["1"]["inputs"]["color"] = color
    return graph


def run_job(url: str, prompt_id: str, color: int) -> Sink:
    sink = Sink()
    outcome = ComfyUIProvider(url).run(RunSpec(prompt=prompt(color), backend_prompt_id=prompt_id), sink)
    assert outcome.status == "succeeded", outcome.error
    assert sink.stored and all(size > 0 for _, size in sink.stored)
    assert sink.events[-1] == {"type": "executing", "data": {"node": None, "prompt_id": prompt_id}}
    return sink


def client_of(url: str, prompt_id: str) -> str:
    """The clientId a prompt was queued under, from the backend's history (ComfyUI keeps it in extra_data)."""
    entry = requests.get(f"{url}/history/{prompt_id}", timeout=5).json()[prompt_id]
    return entry["prompt"][3]["client_id"]


def test_the_next_job_reuses_the_socket_and_sees_only_its_own_events(sim, pool):
    first = run_job(sim.url, "reuse-1", 0x010101)
    second = run_job(sim.url, "reuse-2", 0x020202)
    assert client_of(sim.url, "reuse-1") == client_of(sim.url, "reuse-2")
    # The first job's late frames and the broadcasts in between were skipped, not reported as the second's.
    assert {m["data"]["prompt_id"] for m in first.events} == {"reuse-1"}
    assert {m["data"]["prompt_id"] for m in second.events} == {"reuse-2"}
    assert len(pool._idle) == 1


def test_a_socket_idle_too_long_is_replaced(sim, pool, monkeypatch):
    run_job(sim.url, "idle-1", 0x030303)
    monkeypatch.setattr(providers, "SOCKET_IDLE_REUSE", 0.0)
    run_job(sim.url, "idle-2", 0x040404)
    assert client_of(sim.url, "idle-1") != client_of(sim.url, "idle-2")
    assert len(pool._idle) == 1  # the stale one was closed, not kept beside the new one


def test_a_socket_the_backend_closed_while_idle_costs_the_next_job_nothing(tmp_path, pool, caplog):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = SimulatorConfig(output_dir=tmp_path, node_delay=0.01)
    with SimulatorThread(config, port=port) as before:
        run_job(before.url, "restart-1", 0x050505)
    assert len(pool._idle) == 1  # kept: nothing told it yet that the server went away
    # The "restarted" backend never heard of the old clientId: the job's events go nowhere until the provider
    # reads the close, reconnects and takes what it missed from /history.
    with SimulatorThread(config, port=port) as after:
        sink = run_job(after.url, "restart-2", 0x060606)
        assert [m["type"] for m in sink.events].count("executed") == 1
        assert requests.get(f"{after.url}/history/restart-2", timeout=5).json()["restart-2"]["status"]["completed"]
    assert "Event socket for restart-2 dropped" in caplog.text  # found out on its first read, and recovered


def test_jobs_running_at_once_in_one_process_get_sockets_of_their_own(sim):
    pool = EventSockets()
    client = ComfyUIClient(sim.url)
    a, b = pool.acquire(client), pool.acquire(client)
    assert a.client_id != b.client_id and a.ws is not b.ws
    pool.release(a, reusable=True)
    pool.release(b, reusable=False)  # its job ended in trouble: closed, not kept
    assert not b.ws.connected
    again = pool.acquire(client)
    assert again is a
    pool.release(again, reusable=True)
    # A socket is only handed to a job for the backend (and credentials) it was opened to.
    other = pool.acquire(ComfyUIClient(sim.url, headers={"Authorization": "Bearer other"}))
    assert other is not a
    other.ws.close()
    a.ws.close()


def test_the_pool_keeps_a_bounded_number_of_idle_sockets(sim, monkeypatch):
    monkeypatch.setattr(providers, "SOCKET_IDLE_MAX", 2)
    pool = EventSockets()
    client = ComfyUIClient(sim.url)
    socks = [pool.acquire(client) for _ in range(3)]
    for sock in socks:
        pool.release(sock, reusable=True)
    assert [s.client_id for s in pool._idle] == [s.client_id for s in socks[1:]]
    assert not socks[0].ws.connected  # the oldest was closed
    for sock in socks[1:]:
        sock.ws.close()


def test_clients_of_one_backend_share_the_threads_connection_but_not_their_credentials(sim):
    from gpu_backends.client import shared_session

    seen: dict = {}

    def in_a_fresh_thread() -> None:
        first, second = ComfyUIClient(sim.url), ComfyUIClient(sim.url + "/", headers={"Authorization": "Bearer b"})
        seen["same"] = first.session is second.session is shared_session(sim.url)
        first.system_stats()
        second.system_stats()
        pools = first.session.get_adapter(sim.url).poolmanager.pools  # type: ignore[attr-defined]
        # urllib3's pool container cannot be iterated, only its keys() listed.
        seen["connections"] = sum(pools[key].num_connections for key in pools.keys())  # noqa: SIM118
        seen["session_headers"] = dict(first.session.headers)
        seen["session"] = first.session

    thread = threading.Thread(target=in_a_fresh_thread)
    thread.start()
    thread.join()
    assert seen["same"]
    assert seen["connections"] == 1  # the second client's request went over the first one's connection
    assert "Authorization" not in seen["session_headers"]  # credentials travel per request, not on the session
    assert seen["session"] is not shared_session(sim.url)  # another thread has its own


def test_a_backend_session_reads_the_environment_once_and_honours_no_proxy(monkeypatch):
    from gpu_backends.client import shared_session

    found: dict = {}

    def in_a_fresh_thread() -> None:
        monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
        monkeypatch.setenv("NO_PROXY", "gpu-near.example")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/our-ca.pem")
        found["far"] = shared_session("http://gpu-far.example:8188")
        found["near"] = shared_session("http://gpu-near.example:8188")

    thread = threading.Thread(target=in_a_fresh_thread)
    thread.start()
    thread.join()
    assert found["far"].proxies.get("http") == "http://proxy.example:3128"
    assert "http" not in found["near"].proxies  # NO_PROXY names it
    assert found["far"].verify == "/etc/ssl/certs/our-ca.pem"
    assert not found["far"].trust_env  # not re-read on every request


class SilentProxy:
    """A TCP proxy to a backend that can go silent on its WebSocket connections the way a NAT or proxy that
    dropped them does: the connection stays open and what the client sends still goes through, but nothing
    the server sends arrives. Plain HTTP connections keep working."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.silent = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            self.open += [client, server]
            websocket_seen = threading.Event()
            threading.Thread(target=self._pump, args=(client, server, websocket_seen, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, websocket_seen, False), daemon=True).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, websocket_seen: threading.Event, upstream: bool
    ) -> None:
        try:
            while data := source.recv(65536):
                if upstream and b"upgrade: websocket" in data.lower():
                    websocket_seen.set()
                if not upstream and websocket_seen.is_set() and self.silent.is_set():
                    continue  # swallowed on the way, the connection left open
                sink.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for sock in self.open:
            sock.close()


def test_a_socket_dropped_silently_on_the_way_does_not_hang_the_next_job(sim, pool, monkeypatch, caplog):
    """A reused socket that a NAT dropped without a close delivers nothing: the prompt's end is found in
    /history once the socket has been quiet too long, instead of the job waiting out its time limit."""
    monkeypatch.setattr(providers, "QUIET_CHECK", 0.5)
    monkeypatch.setattr(providers, "INTERRUPT_GRACE", 1.0)
    proxy = SilentProxy(int(sim.url.rsplit(":", 1)[1]))
    try:
        run_job(proxy.url, "quiet-1", 0x070707)
        kept = pool._idle[0]
        proxy.silent.set()
        sink = TimeLimitedSink(8.0)  # without the quiet check the job would be stopped here, not succeed
        spec = RunSpec(prompt=prompt(0x080808), backend_prompt_id="quiet-2")
        outcome = ComfyUIProvider(proxy.url).run(spec, sink)
        assert outcome.status == "succeeded" and outcome.stop_reason is None
        assert sink.stored and all(size > 0 for _, size in sink.stored)
        assert client_of(sim.url, "quiet-2") == kept.client_id  # it did run on the silent socket
        assert [m["type"] for m in sink.events] == ["executed", "execution_success", "executing"]
        assert "Event socket for quiet-2 went quiet" in caplog.text
        assert kept not in pool._idle and not kept.ws.connected  # the silent socket was not kept for another job
    finally:
        proxy.close()
