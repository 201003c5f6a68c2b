"""A thin, typed client for ComfyUI's HTTP + WebSocket API (a real ComfyUI or the simulator).

Every call has explicit timeouts, and every failure is one exception type, :class:`BackendError`, that
says whether trying again can help (``permanent``) — a refused connection or a 5xx is worth a retry, a
400 with ``node_errors`` is not.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import urlencode, urlsplit, urlunsplit

import requests
import websocket

from .worker.prompts import PREVIEW_METADATA_FLAGS, FileRef, decode_message

__all__ = ["BackendError", "ComfyUIClient", "FileRef", "decode_message"]


class BackendError(Exception):
    """A GPU backend did not do what was asked.

    ``permanent``: retrying the same request will fail the same way (e.g. the prompt was rejected).
    ``lost``: the backend had accepted the job and we can no longer find it (replica gone, restarted).
    ``payload``: the backend's own JSON error body, when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        lost: bool = False,
        status: int | None = None,
        payload: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.lost = lost
        self.status = status
        self.payload = payload


_sessions = threading.local()


def shared_session(base_url: str) -> requests.Session:
    """This thread's keep-alive HTTP session to ``base_url``, for every client of that backend in the thread.

    A worker makes a new client per job; with a session each, every job paid a new connection to the GPU
    server (a TLS handshake to a remote one) before ``POST /prompt``. Per thread because a requests Session
    is not promised to be thread-safe; per process because a forked child must not share the parent's sockets.
    """
    if getattr(_sessions, "pid", None) != os.getpid():
        _sessions.pid, _sessions.by_url = os.getpid(), {}
    session = _sessions.by_url.get(base_url)
    if session is None:
        session = _sessions.by_url[base_url] = requests.Session()
        # What requests takes from the environment (the proxy, honouring NO_PROXY for this backend; the CA
        # bundle), read once: it otherwise walks the whole environment on every request, a millisecond of
        # every job's dispatch.
        found = session.merge_environment_settings(base_url, {}, None, None, None)
        session.proxies, session.verify = found["proxies"], found["verify"]
        session.trust_env = False
    return session


class ComfyUIClient:
    """Requests to one ComfyUI base URL. ``headers`` (e.g. a proxy's Authorization) go with each request, so
    clients with different credentials can share the thread's connection to the backend."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.headers = dict(headers or {})
        self.session = shared_session(self.base_url)

    # --- HTTP ---
    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = f"{self.base_url}{path}"
        try:
            response = self.session.request(
                method, url, headers=self.headers, timeout=kwargs.pop("timeout", self.timeout), **kwargs
            )
        except requests.Timeout as exc:
            raise BackendError(f"{method} {url} timed out") from exc
        except requests.RequestException as exc:
            raise BackendError(f"{method} {url} failed: {exc.__class__.__name__}: {exc}") from exc
        if response.status_code >= 500:
            raise BackendError(
                f"{method} {url} answered {response.status_code}: {response.text[:300]}", status=response.status_code
            )
        return response

    def _json(self, response: requests.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise BackendError(
                f"{response.request.method} {response.url} answered non-JSON ({response.status_code}): "
                f"{response.text[:200]}",
                status=response.status_code,
            ) from exc

    def _get_json(self, path: str, **params: Any) -> Any:
        response = self._request("GET", path, params=params or None)
        if response.status_code == 404:
            raise BackendError(f"GET {response.url} answered 404", permanent=True, status=404)
        if response.status_code >= 400:
            raise BackendError(f"GET {response.url} answered {response.status_code}", status=response.status_code)
        return self._json(response)

    def system_stats(self) -> dict[str, Any]:
        return self._get_json("/system_stats")

    def object_info(self) -> dict[str, Any]:
        info = self._get_json("/object_info")
        if not isinstance(info, dict) or not info:
            raise BackendError("object_info is empty or not a JSON object")
        return info

    def submit(
        self, prompt: dict[str, Any], *, client_id: str, prompt_id: str, extra_data: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """POST /prompt. A 400 (ComfyUI's own validation) is permanent and carries ComfyUI's body."""
        body = {"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id, "extra_data": extra_data or {}}
        response = self._request("POST", "/prompt", json=body)
        if response.status_code == 400:
            payload = self._json(response)
            message = (
                (payload.get("error") or {}).get("message", "Prompt rejected") if isinstance(payload, dict) else ""
            )
            raise BackendError(f"Backend rejected the prompt: {message}", permanent=True, status=400, payload=payload)
        if response.status_code >= 400:
            raise BackendError(f"POST /prompt answered {response.status_code}", status=response.status_code)
        return self._json(response)

    def upload_image(
        self, handle: BinaryIO, *, filename: str, subfolder: str, content_type: str = "application/octet-stream"
    ) -> dict[str, Any]:
        """POST /upload/image (overwrite): ``{name, subfolder, type}`` as ComfyUI stored it."""
        response = self._request(
            "POST",
            "/upload/image",
            files={"image": (filename, handle, content_type)},
            data={"type": "input", "subfolder": subfolder, "overwrite": "true"},
        )
        if response.status_code >= 400:
            raise BackendError(
                f"POST /upload/image answered {response.status_code}: {response.text[:200]}",
                permanent=400 <= response.status_code < 500,
                status=response.status_code,
            )
        answer = self._json(response)
        return answer if isinstance(answer, dict) else {}

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of one prompt, or None while ComfyUI has not written it."""
        data = self._get_json(f"/history/{prompt_id}")
        return data.get(prompt_id) if isinstance(data, dict) else None

    def queue(self) -> dict[str, Any]:
        return self._get_json("/queue")

    def is_queued(self, prompt_id: str) -> bool:
        queue = self.queue()
        return any(
            len(item) > 1 and item[1] == prompt_id
            for key in ("queue_running", "queue_pending")
            for item in queue.get(key, [])
        )

    def delete_from_queue(self, prompt_ids: list[str]) -> None:
        self._request("POST", "/queue", json={"delete": prompt_ids})

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Interrupt ``prompt_id`` if it is the one running (or whatever runs, without an id)."""
        self._request("POST", "/interrupt", json={"prompt_id": prompt_id} if prompt_id else {})

    def view(self, ref: FileRef, chunk_size: int = 256 * 1024) -> tuple[str, Iterator[bytes]]:
        """Stream one output file: (content type, chunks)."""
        params = {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}
        response = self._request("GET", "/view", params=params, stream=True)
        if response.status_code != 200:
            response.close()
            raise BackendError(
                f"GET /view {ref.filename} answered {response.status_code}",
                permanent=response.status_code == 404,
                status=response.status_code,
            )
        content_type = response.headers.get("Content-Type", "application/octet-stream").split(";")[0]
        return content_type, response.iter_content(chunk_size)

    # --- WebSocket ---
    def ws_url(self, client_id: str) -> str:
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, f"{parts.path}/ws", urlencode({"clientId": client_id}), ""))

    def connect_ws(self, client_id: str, recv_timeout: float = 1.0) -> websocket.WebSocket:
        """Open the event socket for ``client_id``; ComfyUI sends a prompt's events only to its client."""
        try:
            ws = websocket.create_connection(
                self.ws_url(client_id),
                timeout=self.timeout[0],
                header=[f"{k}: {v}" for k, v in self.headers.items() if k.lower() == "authorization"],
                enable_multithread=False,
                # websocket-client checks UTF-8 byte by byte in Python; decoding the frame checks it anyway, in C.
                skip_utf8_validation=True,
            )
        except (OSError, websocket.WebSocketException) as exc:
            raise BackendError(f"WebSocket to {self.base_url} failed: {exc.__class__.__name__}: {exc}") from exc
        try:  # previews with the node they belong to, as ComfyUI's web frontend asks for them (first message)
            ws.send(json.dumps(PREVIEW_METADATA_FLAGS))
        except (OSError, websocket.WebSocketException) as exc:
            ws.close()
            raise BackendError(f"WebSocket to {self.base_url} failed: {exc.__class__.__name__}: {exc}") from exc
        ws.settimeout(recv_timeout)
        return ws
