"""A fake Docker Engine: the part of the Engine API the ``docker`` seat driver uses, over real HTTP.

It runs on 127.0.0.1 in a background thread and keeps containers, volumes, networks and images in dicts the
test can read and change. Answers follow the real Engine's (API 1.45): the same paths under ``/v1.45``,
the same status codes (404 with ``{"message"}`` for missing objects, 409 for name conflicts, 304 for starting
a running or stopping a stopped container), idempotent volume creation, chunked progress streams for pulls.
Nothing runs: a started container just has ``State.Running`` set.

Failure knobs: ``create_error`` (a 500 on every container create), ``registry`` (the images a pull can
find; pulling anything else is the Engine's 404 "pull access denied"), ``pull_stream_error`` (a pull that
fails inside its 200 progress stream, as a registry hiccup does) and :meth:`die` (a container exits).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import socket
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

API_VERSION = "1.45"
_VERSIONED = re.compile(r"^/v\d+\.\d+(?=/)")


class EngineError(Exception):
    """An Engine error answer: status code and the ``message`` of its JSON body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _image_ref(name: str) -> str:
    """``repo`` → ``repo:latest``, as the Engine resolves a reference without a tag."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last or "@" in last else f"{name}:latest"


class FakeDockerEngine:
    """The fake Engine; ``FakeDockerEngine()`` is listening when it returns. Call :meth:`stop` when done."""

    def __init__(self, *, images: tuple[str, ...] = ()) -> None:
        self.containers: dict[str, dict[str, Any]] = {}  # id → inspect document
        self.volumes: dict[str, dict[str, Any]] = {}  # name → inspect document
        self.networks: dict[str, dict[str, Any]] = {}  # id → inspect document
        self.images: dict[str, dict[str, Any]] = {}  # "repo:tag" → inspect document
        self.registry: set[str] = set()  # what a pull can find ("repo:tag")
        self.create_error: str | None = None  # set: every container create is a 500 with this message
        self.pull_stream_error: str | None = None  # set: pulls answer 200, then report this error in the stream
        self.created: list[dict[str, Any]] = []  # container create bodies, with "name" added, in order
        self.requests: list[tuple[str, str]] = []  # (method, unversioned path) of every request
        self.lock = threading.RLock()
        self._ids = itertools.count(1)
        self._connections: set[socket.socket] = set()
        for image in images:
            self.add_image(image)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.base_url = f"tcp://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-docker", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and drop open connections, so a client's kept-alive connection fails as well."""
        self._server.shutdown()
        self._server.server_close()
        with self.lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._thread.join(5)

    # --- for tests ---

    def add_image(self, name: str) -> None:
        ref = _image_ref(name)
        self.images[ref] = {"Id": f"sha256:{self._new_id()}", "RepoTags": [ref], "Created": _now()}

    def container(self, name_or_id: str) -> dict[str, Any]:
        """The inspect document of a container, by name or id (KeyError when there is none)."""
        with self.lock:
            found = self._find_container(name_or_id)
            if found is None:
                raise KeyError(name_or_id)
            return found

    def die(self, name_or_id: str, exit_code: int = 137) -> None:
        """The container's process exits (an OOM kill is 137), as if its restart policy had not caught it yet."""
        with self.lock:
            state = self.container(name_or_id)["State"]
            state.update(Status="exited", Running=False, ExitCode=exit_code, FinishedAt=_now())

    # --- the Engine ---

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        """Route one request; returns (status, JSON body or an iterator of stream items or None)."""
        with self.lock:
            self.requests.append((method, path))
            for route_method, pattern, handler in self._routes():
                match = re.fullmatch(pattern, path)
                if match and route_method == method:
                    return handler(query, body, *(unquote(g) for g in match.groups()))
        raise EngineError(404, f"page not found: {method} {path}")

    def _routes(self) -> list[tuple[str, str, Any]]:
        return [
            ("GET", r"/version", self._version),
            ("GET", r"/_ping", lambda q, b: (200, "OK")),
            ("HEAD", r"/_ping", lambda q, b: (200, None)),
            ("GET", r"/networks", self._list_networks),
            ("POST", r"/networks/create", self._create_network),
            ("GET", r"/networks/([^/]+)", self._inspect_network),
            ("POST", r"/volumes/create", self._create_volume),
            ("GET", r"/volumes", lambda q, b: (200, {"Volumes": list(self.volumes.values()), "Warnings": []})),
            ("GET", r"/volumes/([^/]+)", self._inspect_volume),
            ("DELETE", r"/volumes/([^/]+)", self._remove_volume),
            ("GET", r"/containers/json", self._list_containers),
            ("POST", r"/containers/create", self._create_container),
            ("GET", r"/containers/([^/]+)/json", self._inspect_container),
            ("POST", r"/containers/([^/]+)/start", self._start_container),
            ("POST", r"/containers/([^/]+)/stop", self._stop_container),
            ("DELETE", r"/containers/([^/]+)", self._remove_container),
            ("GET", r"/images/(.+)/json", self._inspect_image),
            ("POST", r"/images/create", self._pull),
        ]

    def _new_id(self) -> str:
        return hashlib.sha256(f"fake-docker-{next(self._ids)}".encode()).hexdigest()

    def _version(self, query: dict[str, str], body: Any) -> tuple[int, Any]:
        return 200, {"ApiVersion": API_VERSION, "MinAPIVersion": "1.24", "Version": "26.1.4-fake", "Os": "linux"}

    # networks

    def _find_network(self, name_or_id: str) -> dict[str, Any] | None:
        for net in self.networks.values():
            if name_or_id in (net["Name"], net["Id"]) or (len(name_or_id) >= 12 and net["Id"].startswith(name_or_id)):
                return net
        return None

    def _list_networks(self, query: dict[str, str], body: Any) -> tuple[int, Any]:
        names = json.loads(query.get("filters") or "{}").get("name", [])
        # The Engine's name filter matches substrings.
        return 200, [n for n in self.networks.values() if not names or any(x in n["Name"] for x in names)]

    def _create_network(self, query: dict[str, str], body: Any) -> tuple[int, Any]:
        if self._find_network(body["Name"]) is not None:
            raise EngineError(409, f"network with name {body['Name']} already exists")
        net_id = self._new_id()
        self.networks[net_id] = {
            "Name": body["Name"],
            "Id": net_id,
            "Driver": body.get("Driver") or "bridge",
            "Scope": "local",
            "Labels": body.get("Labels") or {},
            "Containers": {},
        }
        return 201, {"Id": net_id, "Warning": ""}

    def _inspect_network(self, query: dict[str, str], body: Any, name: str) -> tuple[int, Any]:
        net = self._find_network(name)
        if net is None:
            raise EngineError(404, f"network {name} not found")
        return 200, net

    # volumes

    def _create_volume(self, query: dict[str, str], body: Any) -> tuple[int, Any]:
        name = body.get("Name") or self._new_id()
        if name not in self.volumes:  # the Engine returns an existing volume unchanged
            self.volumes[name] = {
                "Name": name,
                "Driver": body.get("Driver") or "local",
                "Mountpoint": f"/var/lib/docker/volumes/{name}/_data",
                "Labels": body.get("Labels") or {},
                "Scope": "local",
                "CreatedAt": _now(),
            }
        return 201, self.volumes[name]

    def _inspect_volume(self, query: dict[str, str], body: Any, name: str) -> tuple[int, Any]:
        if name not in self.volumes:
            raise EngineError(404, f"get {name}: no such volume")
        return 200, self.volumes[name]

    def _remove_volume(self, query: dict[str, str], body: Any, name: str) -> tuple[int, Any]:
        if name not in self.volumes:
            raise EngineError(404, f"get {name}: no such volume")
        users = [c["Id"] for c in self.containers.values() if any(m.get("Name") == name for m in c["Mounts"])]
        if users:
            raise EngineError(409, f"remove {name}: volume is in use - [{', '.join(users)}]")
        del self.volumes[name]
        return 204, None

    # containers

    def _find_container(self, name_or_id: str) -> dict[str, Any] | None:
        for doc in self.containers.values():
            if doc["Name"] == f"/{name_or_id}" or doc["Id"] == name_or_id:
                return doc
        matches = [doc for doc in self.containers.values() if doc["Id"].startswith(name_or_id)]
        return matches[0] if len(matches) == 1 else None

    def _get_container(self, name_or_id: str) -> dict[str, Any]:
        doc = self._find_container(name_or_id)
        if doc is None:
            raise EngineError(404, f"No such container: {name_or_id}")
        return doc

    def _create_container(self, query: dict[str, str], body: Any) -> tuple[int, Any]:
        name = query.get("name", "")
        self.created.append({**body, "name": name})
        if self.create_error is not None:
            raise EngineError(500, self.create_error)
        image = _image_ref(body["Image"])
        if image not in self.images:
            raise EngineError(404, f"No such image: {image}")
        existing = self._find_container(name) if name else None
        if existing is not None and existing["Name"] == f"/{name}":
            raise EngineError(
                409,
                f'Conflict. The container name "/{name}" is already in use by container "{existing["Id"]}". '
                "You have to remove (or rename) that container to be able to reuse that name.",
            )
        host_config = body.get("HostConfig") or {}
        network = host_config.get("NetworkMode") or "default"
        network = "bridge" if network == "default" else network  # the Engine's name for its default network
        if network not in ("bridge", "host", "none") and self._find_network(network) is None:
            raise EngineError(404, f"network {network} not found")
        mounts = []
        for mount in host_config.get("Mounts") or []:
            if mount.get("Type") == "volume":
                # The Engine creates a named volume a container mounts when it does not exist yet.
                self._create_volume({}, {"Name": mount["Source"]})
                mounts.append({"Type": "volume", "Name": mount["Source"], "Destination": mount["Target"]})
        container_id = self._new_id()
        self.containers[container_id] = {
            "Id": container_id,
            "Name": f"/{name or container_id[:12]}",
            "Created": _now(),
            "Image": self.images[image]["Id"],
            "Config": {
                "Image": body["Image"],
                "Env": body.get("Env") or [],
                "Labels": body.get("Labels") or {},
            },
            "HostConfig": host_config,
            "Mounts": mounts,
            "NetworkSettings": {"Networks": {network: {}}},
            "State": {"Status": "created", "Running": False, "Paused": False, "Restarting": False, "ExitCode": 0},
        }
        return 201, {"Id": container_id, "Warnings": []}

    def _inspect_container(self, query: dict[str, str], body: Any, name: str) -> tuple[int, Any]:
        return 200, self._get_container(name)

    def _start_container(self, query: dict[str, str], body: Any, name: str) -> tuple[int, Any]:
        state = self._get_container(name)["State"]
        if state["Running"]:
            return 304, None
        state.update(Status="running", Running=True, ExitCode=0, StartedAt=_now())
        return 204, None

    def _stop_container(self, query: dict[str, str], body: Any, name: str) -> tuple[int, Any]:
        doc = self._get_container(name)
        doc["StopTimeout"] = query.get("t")  # what the caller asked for, for tests to read
        if not doc["State"]["Running"]:
            return 304, None
        doc["State"].update(Status="exited", Running=False, ExitCode=0, FinishedAt=_now())
        return 204, None

    def _remove_container(self, query: dict[str, str], body: Any, name: str) -> tuple[int, Any]:
        doc = self._get_container(name)
        if doc["State"]["Running"] and query.get("force") not in ("1", "true", "True"):
            raise EngineError(
                409,
                f'cannot remove container "{doc["Name"]}": container is running: '
                "stop the container before removing or force remove",
            )
        del self.containers[doc["Id"]]
        return 204, None

    def _list_containers(self, query: dict[str, str], body: Any) -> tuple[int, Any]:
        filters = json.loads(query.get("filters") or "{}")
        found = []
        for doc in self.containers.values():
            if query.get("all") not in ("1", "true", "True") and not doc["State"]["Running"]:
                continue
            labels = doc["Config"]["Labels"]
            if not all(_label_matches(labels, wanted) for wanted in filters.get("label", [])):
                continue
            if filters.get("name") and not any(n in doc["Name"] for n in filters["name"]):
                continue
            found.append(
                {
                    "Id": doc["Id"],
                    "Names": [doc["Name"]],
                    "Image": doc["Config"]["Image"],
                    "Labels": labels,
                    "State": doc["State"]["Status"],
                    "Status": doc["State"]["Status"],
                }
            )
        return 200, found

    # images

    def _inspect_image(self, query: dict[str, str], body: Any, name: str) -> tuple[int, Any]:
        ref = _image_ref(name)
        if ref not in self.images:
            raise EngineError(404, f"No such image: {ref}")
        return 200, self.images[ref]

    def _pull(self, query: dict[str, str], body: Any) -> tuple[int, Any]:
        ref = _image_ref(f"{query['fromImage']}:{query['tag']}" if query.get("tag") else query["fromImage"])
        repo = ref.rsplit(":", 1)[0]
        if ref not in self.registry:
            raise EngineError(
                404,
                f"pull access denied for {repo}, repository does not exist or may require 'docker login': "
                "denied: requested access to the resource is denied",
            )
        tag = ref.rsplit(":", 1)[1]
        items: list[dict[str, Any]] = [{"status": f"Pulling from {repo}", "id": tag}]
        if self.pull_stream_error is not None:
            items.append({"errorDetail": {"message": self.pull_stream_error}, "error": self.pull_stream_error})
        else:
            self.add_image(ref)
            items += [{"status": "Digest: sha256:0"}, {"status": f"Status: Downloaded newer image for {ref}"}]
        return 200, iter(items)


def _label_matches(labels: dict[str, str], wanted: str) -> bool:
    key, sep, value = wanted.partition("=")
    return key in labels and (not sep or labels[key] == value)


def _handler_for(engine: FakeDockerEngine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.1: the SDK keeps connections alive, and pull progress comes chunked.
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes; with Nagle on, the client's delayed ACK costs 40 ms each.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            with engine.lock:
                engine._connections.add(self.connection)

        def finish(self) -> None:
            with engine.lock:
                engine._connections.discard(self.connection)
            super().finish()

        def _serve(self) -> None:
            url = urlsplit(self.path)
            path = _VERSIONED.sub("", url.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else {}
                status, payload = engine.handle(self.command, path, query, body)
            except EngineError as exc:
                status, payload = exc.status, {"message": exc.message}
            except Exception as exc:  # a bug in the fake: answer like an Engine would rather than hang up
                status, payload = 500, {"message": f"fake engine: {exc!r}"}
            if hasattr(payload, "__next__"):
                self._stream(status, payload)
            else:
                self._reply(status, payload)

        def _reply(self, status: int, payload: Any) -> None:
            if payload is None or status in (204, 304):
                data, content_type = b"", "text/plain"
            elif isinstance(payload, str):  # /_ping's "OK"
                data, content_type = payload.encode(), "text/plain"
            else:
                data, content_type = json.dumps(payload).encode(), "application/json"
            self.send_response(status)
            self.send_header("Api-Version", API_VERSION)
            if status not in (204, 304):
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD" and data:
                self.wfile.write(data)

        def _stream(self, status: int, items: Any) -> None:
            self.send_response(status)
            self.send_header("Api-Version", API_VERSION)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for item in items:
                chunk = json.dumps(item).encode() + b"\r\n"
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")

        do_GET = do_POST = do_DELETE = do_HEAD = _serve  # noqa: N815 - http.server's method names

    return Handler
