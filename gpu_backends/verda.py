"""Thin, typed clients for Verda (formerly DataCrunch) serverless containers.

:class:`VerdaInference` talks to a deployment through Verda's inference gateway
(``https://containers.datacrunch.io/<deployment>/<path>``, the path forwarded to the container's port), with the
inference API key as a Bearer token. :class:`VerdaManagement` talks to Verda's public API (OAuth2 client
credentials) to read a deployment and change its minimum replicas. docs/VERDA.md lists every fact these clients
rely on, with its source, and what could not be confirmed.

Every failure is a :class:`~gpu_backends.client.BackendError` whose message names the setting to check.
``permanent`` means the same request will fail the same way; ``lost`` means a job the worker had accepted can no
longer be followed (the replica died with it). No Django here: the dispatch task and scripts share this module.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ProtocolError

from .client import BackendError

GATEWAY = "https://containers.datacrunch.io"
API_URL = "https://api.datacrunch.io/v1"
# verda-cli's rule for deployment names: they are the URL slug https://containers.datacrunch.io/<name>.
DEPLOYMENT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Refresh the access token this long before Verda's ``expires_in`` runs out (the Go SDK uses 30 s too).
TOKEN_MARGIN = 30.0

# Verda's async status words (Python SDK ``AsyncStatus``) → ours. Anything else: failed if it says so, else unknown.
ASYNC_STATES = {
    "initialized": "queued",
    "queue": "queued",
    "queued": "queued",
    "inference": "running",
    "completed": "done",
}
ASYNC_FAILED_WORDS = ("fail", "error", "cancel", "expire", "timeout", "timedout", "lost")

# Replica status words. Verda documents only "running" (SDK fixtures); the rest are read leniently, as verda-cli does.
REPLICA_READY = frozenset({"running", "ready", "healthy", "active", "serving"})
REPLICA_STARTING = frozenset(
    {"starting", "pending", "initializing", "provisioning", "creating", "scheduled", "scheduling", "image_pulling",
     "pulling", "booting", "loading", "waiting", "queued"}
)  # fmt: skip
REPLICA_FAILING_WORDS = ("fail", "error", "crash", "unhealthy", "backoff", "oom", "evicted")
DEPLOYMENT_WARMING = frozenset({"initializing", "image_pulling", "version_updating"})


def deployment_url(name: str, host: str = GATEWAY) -> str:
    """The gateway URL of a deployment: ``https://containers.datacrunch.io/<name>``."""
    if not DEPLOYMENT_NAME.match(name) or len(name) > 63:
        raise BackendError(
            f"{name!r} is not a Verda deployment name (lowercase letters, digits and '-', at most 63 characters): "
            "check the deployment name in the backend's settings",
            permanent=True,
        )
    return f"{host.rstrip('/')}/{name}"


def split_deployment_url(url: str) -> tuple[str, str]:
    """``https://containers.datacrunch.io/<name>`` → (gateway, name); anything else is a settings error."""
    parts = urlsplit(url.strip())
    segments = [segment for segment in parts.path.split("/") if segment]
    if parts.scheme not in ("http", "https") or not parts.netloc or not segments:
        raise BackendError(
            f"The backend URL {url!r} is not a Verda deployment URL: it must be "
            f"{GATEWAY}/<deployment> (check the backend's URL)",
            permanent=True,
        )
    name = segments[-1]
    prefix = "/".join(segments[:-1])
    gateway = f"{parts.scheme}://{parts.netloc}" + (f"/{prefix}" if prefix else "")
    return gateway, name


def normalize_async_status(word: Any) -> str:
    """Verda's ``Status`` of an asynchronous request → queued | running | done | failed | unknown."""
    text = str(word or "").strip().lower()
    if text in ASYNC_STATES:
        return ASYNC_STATES[text]
    if any(part in text for part in ASYNC_FAILED_WORDS):
        return "failed"
    return "unknown"


def _json_or_none(response: requests.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _says(body: Any, response: requests.Response) -> str:
    """The human part of an error answer: Verda's ``{code, message}``, the worker's ``{error: {message}}``, or text."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("message", "detail", "error"):
            if isinstance(body.get(key), str) and body[key]:
                code = body.get("code")
                return f"{body[key]} ({code})" if isinstance(code, str) and code else str(body[key])
    return response.text[:200].strip()


def _reached_server(exc: requests.RequestException) -> bool:
    """Whether a connection error happened after the request went out (vs. no connection at all)."""
    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.SSLError | requests.exceptions.ProxyError):
        return False
    if isinstance(exc, requests.exceptions.ChunkedEncodingError | requests.exceptions.ContentDecodingError):
        return True
    reason: Any = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # MaxRetryError wraps the cause
    if isinstance(reason, NewConnectionError | ConnectTimeoutError):
        return False
    return isinstance(reason, ProtocolError | ConnectionResetError | ConnectionAbortedError)


@dataclass(frozen=True)
class VerdaRequestStatus:
    """Verda's view of one asynchronous request (``GET /status/<deployment>``)."""

    inference_id: str
    state: str  # queued | running | done | failed | unknown
    verda_status: str  # Verda's own word: Initialized, Queue, Inference, Completed, …
    raw: dict[str, Any] = field(default_factory=dict)


class VerdaInference:
    """Requests to one deployment through Verda's gateway (``https://containers.datacrunch.io/<deployment>``).

    ``read_timeout`` bounds the short calls (status, result, ``/ready``); ``run_timeout`` bounds a synchronous job.
    A synchronous request also ends when the deployment's request TTL (``queue_message_ttl_seconds``, which counts
    queueing and inference together) runs out, so ``run_timeout`` should be at least that TTL.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        run_timeout: float = 3600.0,
    ) -> None:
        self.gateway, self.deployment = split_deployment_url(base_url)
        self.base_url = f"{self.gateway}/{self.deployment}"
        if not api_key:
            raise BackendError(
                "No inference API key for Verda deployment "
                f"{self.deployment!r}: the environment variable named in the backend's API key field is empty",
                permanent=True,
            )
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.run_timeout = run_timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"

    # --- transport ---
    def _send(
        self,
        method: str,
        url: str,
        *,
        what: str,
        read_timeout: float,
        during_run: bool = False,
        **kwargs: Any,
    ) -> requests.Response:
        try:
            return self.session.request(method, url, timeout=(self.connect_timeout, read_timeout), **kwargs)
        except requests.ConnectTimeout as exc:
            raise BackendError(f"{what}: no connection to Verda ({url}) within {self.connect_timeout:.0f} s") from exc
        except requests.ReadTimeout as exc:
            if during_run:
                raise BackendError(
                    f"{what}: no answer from Verda within {read_timeout:.0f} s; the job may still be running on a "
                    "replica we can no longer follow",
                    lost=True,
                ) from exc
            raise BackendError(f"{what}: Verda did not answer within {read_timeout:.0f} s") from exc
        except requests.RequestException as exc:
            if during_run and _reached_server(exc):
                raise BackendError(
                    f"{what}: the connection broke after the request was sent, the replica died with the job "
                    f"({exc.__class__.__name__}: {exc})",
                    lost=True,
                ) from exc
            raise BackendError(f"{what}: could not reach Verda at {url} ({exc.__class__.__name__}: {exc})") from exc

    def _refuse(self, response: requests.Response, body: Any, *, what: str, during_run: bool = False) -> None:
        """Raise the error a gateway status stands for; return for answers the caller reads itself."""
        status = response.status_code
        payload = body if isinstance(body, dict) else None
        if status in (401, 403):
            raise BackendError(
                f"{what}: Verda answered {status}: the inference API key (backend's API key field) was refused",
                permanent=True,
                status=status,
                payload=payload,
            )
        if status == 404:
            raise BackendError(
                f"{what}: Verda answered 404: usually a wrong inference API key or a wrong deployment name "
                f"({self.deployment}) — check both in the backend's settings. (A GPU worker that does not serve "
                "this path answers 404 too; through the gateway the two cannot be told apart.)",
                permanent=True,
                status=404,
                payload=payload,
            )
        if status == 429:
            raise BackendError(
                f"{what}: Verda answered 429: Verda is rate limiting / deployment queue full; try again later",
                status=429,
                payload=payload,
            )
        if status >= 500:
            # 503 means nothing started (no capacity, or the worker is still warming up). Any other 5xx during a
            # job's own request came after the gateway took it: the replica died with the job, or the worker lost
            # its ComfyUI (its 502 comfyui_lost).
            lost = during_run and status != 503
            raise BackendError(
                f"{what}: Verda answered {status}: {_says(body, response)}"
                + (" (the job was lost with its replica)" if lost else ""),
                lost=lost,
                status=status,
                payload=payload,
            )

    # --- the job's request ---
    def run_sync(self, path: str, body: dict[str, Any], *, timeout: float | None = None) -> tuple[int, Any]:
        """POST ``body`` to the worker and wait for its answer: (status, JSON) for 2xx and the worker's own 4xx."""
        url = f"{self.base_url}{path}"
        what = f"POST {url}"
        read = timeout if timeout is not None else self.run_timeout
        response = self._send("POST", url, what=what, read_timeout=read, during_run=True, json=body)
        answer = _json_or_none(response)
        self._refuse(response, answer, what=what, during_run=True)
        if answer is None:
            if response.ok:
                raise BackendError(
                    f"{what}: Verda answered {response.status_code} without JSON: {response.text[:200]!r}",
                    lost=True,
                    status=response.status_code,
                )
            raise BackendError(
                f"{what}: Verda answered {response.status_code}: {response.text[:200]!r}",
                permanent=True,
                status=response.status_code,
            )
        return response.status_code, answer

    def submit_async(self, path: str, body: dict[str, Any]) -> str:
        """POST with ``Prefer: respond-async``: Verda queues the request, keeps its result; returns the inference id."""
        url = f"{self.base_url}{path}"
        what = f"POST {url} (async)"
        response = self._send(
            "POST", url, what=what, read_timeout=self.read_timeout, json=body, headers={"Prefer": "respond-async"}
        )
        answer = _json_or_none(response)
        self._refuse(response, answer, what=what)
        if not response.ok:
            raise BackendError(
                f"{what}: Verda answered {response.status_code}: {_says(answer, response)}",
                permanent=400 <= response.status_code < 500,
                status=response.status_code,
                payload=answer if isinstance(answer, dict) else None,
            )
        inference_id = (answer.get("Id") if isinstance(answer, dict) else None) or response.headers.get(
            "X-Inference-Id"
        )
        if not inference_id:
            raise BackendError(
                f"{what}: Verda answered {response.status_code} without an inference id (no Id, no X-Inference-Id)",
                status=response.status_code,
            )
        return str(inference_id)

    def _async_get(self, kind: str, inference_id: str) -> tuple[requests.Response, Any]:
        url = f"{self.gateway}/{kind}/{self.deployment}"
        what = f"GET {url} for request {inference_id}"
        response = self._send(
            "GET", url, what=what, read_timeout=self.read_timeout, headers={"X-Inference-Id": inference_id}
        )
        answer = _json_or_none(response)
        if response.status_code == 404:
            raise BackendError(
                f"{what}: Verda answered 404: it has no request {inference_id} (results are kept for a limited "
                f"time), or the inference API key or the deployment name ({self.deployment}) is wrong",
                lost=True,
                status=404,
            )
        return response, answer

    def status(self, inference_id: str) -> VerdaRequestStatus:
        """Where an asynchronous request is: queued | running | done | failed | unknown."""
        response, answer = self._async_get("status", inference_id)
        self._refuse(response, answer, what=f"Status of request {inference_id}")
        if not response.ok or not isinstance(answer, dict):
            raise BackendError(
                f"Status of request {inference_id}: Verda answered {response.status_code}: {_says(answer, response)}",
                status=response.status_code,
            )
        word = str(answer.get("Status", ""))
        return VerdaRequestStatus(inference_id, normalize_async_status(word), word, answer)

    def async_state(self, inference_id: str) -> str:
        return self.status(inference_id).state

    def result(self, inference_id: str) -> tuple[int, Any] | None:
        """The container's answer to an asynchronous request (status, JSON), or None while it has not finished."""
        response, answer = self._async_get("result", inference_id)
        what = f"Result of request {inference_id}"
        if isinstance(answer, dict) and set(answer) <= {"Id", "Status", "message"} and "Status" in answer:
            # Verda's own status document instead of the container's answer: not finished, or failed.
            state = normalize_async_status(answer["Status"])
            if state == "failed":
                raise BackendError(
                    f"{what}: Verda reports the request {answer['Status']}", lost=True, status=response.status_code
                )
            if state != "done":
                return None
        self._refuse(response, answer, what=what)
        if response.status_code == 202:
            return None
        if answer is None:
            answer = {"result": response.text}  # as Verda's SDK does for a non-JSON result
        return response.status_code, answer

    # --- the worker's small endpoints ---
    def get(self, path: str) -> Any:
        """GET a worker endpoint (``/ready``, ``/health``, ``/object_info``) through the gateway.

        The worker's ``503 {"ready": false, ...}`` is an answer, returned as is. On a deployment scaled to zero
        this request, like any, starts a replica and waits for it.
        """
        url = f"{self.base_url}{path}"
        what = f"GET {url}"
        response = self._send("GET", url, what=what, read_timeout=self.read_timeout)
        answer = _json_or_none(response)
        if response.status_code == 503 and isinstance(answer, dict) and answer.get("ready") is False:
            return answer
        self._refuse(response, answer, what=what)
        if not response.ok:
            raise BackendError(
                f"{what}: Verda answered {response.status_code}: {_says(answer, response)}",
                permanent=400 <= response.status_code < 500,
                status=response.status_code,
            )
        if answer is None:
            raise BackendError(f"{what}: answered non-JSON: {response.text[:200]!r}", status=response.status_code)
        return answer


@dataclass(frozen=True)
class ReplicaStatus:
    """How warm a deployment is, from its scaling options, its replicas and Verda's deployment status."""

    deployment: str
    state: str  # cold | warming | ready | failing | unknown
    reason: str
    min_replicas: int
    max_replicas: int
    desired: int  # replicas Verda is keeping or bringing up: max(min, running + starting)
    running: int  # replicas that serve requests
    starting: int
    failing: int
    deployment_status: str  # Verda's word: healthy, degraded, paused, quota_reached, initializing, …
    replicas: tuple[dict[str, Any], ...] = ()
    scale_down_delay: int = 0  # seconds Verda keeps a replica above the minimum after its last request

    @property
    def rolling_out(self) -> bool:
        """A new image is being rolled out: its nodes and models may differ from the ones read before."""
        return self.deployment_status.strip().lower() == "version_updating"


def summarize_replicas(
    name: str, scaling: dict[str, Any], replicas: list[dict[str, Any]], deployment_status: str
) -> ReplicaStatus:
    """Pure: Verda's three answers → one :class:`ReplicaStatus` with a reason a person can act on."""
    minimum = int(scaling.get("min_replica_count") or 0)
    maximum = int(scaling.get("max_replica_count") or 0)
    policy = scaling.get("scale_down_policy")
    delay = int((policy.get("delay_seconds") if isinstance(policy, dict) else 0) or 0)
    words = [str(replica.get("status", "")).strip().lower() for replica in replicas]
    running = sum(word in REPLICA_READY for word in words)
    starting = sum(word in REPLICA_STARTING for word in words)
    failing = sum(any(part in word for part in REPLICA_FAILING_WORDS) for word in words)
    desired = max(minimum, running + starting)
    verda = deployment_status.strip().lower()

    def status(state: str, reason: str) -> ReplicaStatus:
        return ReplicaStatus(
            name, state, reason, minimum, maximum, desired, running, starting, failing, verda, tuple(replicas), delay
        )

    if verda == "paused":
        return status("failing", "the deployment is paused in Verda: resume it to serve jobs")
    if verda == "quota_reached":
        return status("failing", "Verda's GPU quota is reached: no replica can start")
    if running:
        extra = f"; {starting} more starting" if starting else ""
        return status("ready", f"{running} of {desired} replica(s) running{extra}")
    if starting:
        return status("warming", f"{starting} replica(s) starting (cold start: pulling the image, loading models)")
    if failing:
        listed = ", ".join(sorted({word for word in words if word}))
        return status("failing", f"{failing} replica(s) failing ({listed})")
    if verda in ("unhealthy",):
        return status("failing", "Verda reports the deployment unhealthy (health check failing?)")
    if verda in DEPLOYMENT_WARMING:
        return status("warming", f"Verda reports the deployment {verda}")
    if not replicas and minimum == 0:
        return status("cold", "scaled to zero: the first request starts a replica (a cold start of several minutes)")
    if not replicas:
        return status("warming", f"min replicas is {minimum}; Verda has not listed a replica yet")
    listed = ", ".join(sorted({word for word in words}))
    return status("unknown", f"replica status not understood: {listed}")


class VerdaManagement:
    """Verda's public API for container deployments, with an OAuth2 client-credentials token cached until expiry."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        api_url: str = API_URL,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
    ) -> None:
        if not client_id or not client_secret:
            raise BackendError(
                "No Verda API credentials: set the client id and client secret (Verda console → Keys → "
                "Cloud API credentials) in the backend's settings",
                permanent=True,
            )
        self.client_id = client_id
        self.client_secret = client_secret
        self.api_url = api_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.session = requests.Session()
        self._token: str | None = None
        self._expires_at = 0.0  # time.monotonic()
        self._lock = threading.Lock()

    # --- transport ---
    def _send(self, method: str, url: str, *, what: str, **kwargs: Any) -> requests.Response:
        try:
            return self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.Timeout as exc:
            raise BackendError(f"{what}: Verda's API did not answer in time ({url})") from exc
        except requests.RequestException as exc:
            raise BackendError(f"{what}: could not reach Verda's API at {url} ({exc.__class__.__name__})") from exc

    def token(self) -> str:
        """A valid access token: the cached one, or a new one shortly before it expires."""
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires_at - TOKEN_MARGIN:
                self._fetch_token()
            assert self._token is not None
            return self._token

    def _fetch_token(self) -> None:
        url = f"{self.api_url}/oauth2/token"
        what = f"POST {url}"
        body = {"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self.client_secret}
        response = self._send("POST", url, what=what, json=body)
        answer = _json_or_none(response)
        if response.status_code in (400, 401, 403):
            raise BackendError(
                f"Verda refused the API credentials ({response.status_code}: {_says(answer, response)}): check the "
                "client id and client secret in the backend's settings",
                permanent=True,
                status=response.status_code,
            )
        if not response.ok or not isinstance(answer, dict) or not answer.get("access_token"):
            raise BackendError(
                f"{what}: Verda answered {response.status_code} without a token: {_says(answer, response)}",
                permanent=response.ok,
                status=response.status_code,
            )
        self._token = str(answer["access_token"])
        self._expires_at = time.monotonic() + float(answer.get("expires_in") or 0)

    def _forget(self, token: str) -> None:
        with self._lock:
            if self._token == token:
                self._token = None

    def _call(self, method: str, path: str, *, deployment: str | None = None, json: Any = None) -> Any:
        url = f"{self.api_url}{path}"
        what = f"{method} {url}"
        for attempt in (1, 2):
            token = self.token()
            response = self._send(method, url, what=what, json=json, headers={"Authorization": f"Bearer {token}"})
            if response.status_code == 401 and attempt == 1:
                self._forget(token)  # revoked or expired early: one fresh token, then give up
                continue
            break
        answer = _json_or_none(response)
        status = response.status_code
        if status == 401:
            raise BackendError(
                f"{what}: Verda's API refused a fresh access token: check the client id and client secret in the "
                "backend's settings (the credentials need the cloud-api-v1 scope)",
                permanent=True,
                status=401,
            )
        if status == 403:
            raise BackendError(
                f"{what}: Verda's API forbids this for these credentials ({_says(answer, response)})",
                permanent=True,
                status=403,
            )
        if status == 404 and deployment is not None:
            raise BackendError(
                f"Verda has no container deployment named {deployment!r} in this project: check the deployment "
                "name in the backend's settings (and that the API credentials belong to its project)",
                permanent=True,
                status=404,
            )
        if status == 429 or status >= 500:
            raise BackendError(f"{what}: Verda's API answered {status}: {_says(answer, response)}", status=status)
        if not response.ok:
            raise BackendError(
                f"{what}: Verda's API answered {status}: {_says(answer, response)}",
                permanent=True,
                status=status,
                payload=answer if isinstance(answer, dict) else None,
            )
        return answer

    def _deployment_path(self, name: str, suffix: str = "") -> str:
        deployment_url(name)  # a name that cannot be a deployment is a settings error, not a 404
        return f"/container-deployments/{name}{suffix}"

    # --- deployments ---
    def deployment(self, name: str) -> dict[str, Any]:
        answer = self._call("GET", self._deployment_path(name), deployment=name)
        if not isinstance(answer, dict):
            raise BackendError(f"Verda answered a deployment {name!r} that is not a JSON object")
        return answer

    def deployment_status(self, name: str) -> str:
        """Verda's word for the deployment: healthy, degraded, unhealthy, paused, quota_reached, …"""
        answer = self._call("GET", self._deployment_path(name, "/status"), deployment=name)
        return str(answer.get("status", "")) if isinstance(answer, dict) else ""

    def scaling(self, name: str) -> dict[str, Any]:
        answer = self._call("GET", self._deployment_path(name, "/scaling"), deployment=name)
        if not isinstance(answer, dict):
            raise BackendError(f"Verda answered scaling options of {name!r} that are not a JSON object")
        return answer

    def replicas(self, name: str) -> list[dict[str, Any]]:
        answer = self._call("GET", self._deployment_path(name, "/replicas"), deployment=name)
        listed = answer.get("list") if isinstance(answer, dict) else answer
        return [replica for replica in listed or [] if isinstance(replica, dict)]

    def set_min_replicas(self, name: str, count: int) -> dict[str, Any]:
        """Keep ``count`` replicas running, every other scaling option as it is (read, change one field, write)."""
        if count < 0:
            raise BackendError(f"Minimum replicas must be 0 or more, not {count}", permanent=True)
        current = self.scaling(name)
        maximum = int(current.get("max_replica_count") or 0)
        if count > maximum:
            raise BackendError(
                f"Deployment {name!r} allows at most {maximum} replica(s); raise its maximum in Verda before "
                f"keeping {count} warm",
                permanent=True,
            )
        if current.get("min_replica_count") == count:
            return current
        answer = self._call(
            "PATCH",
            self._deployment_path(name, "/scaling"),
            deployment=name,
            json={**current, "min_replica_count": count},
        )
        return answer if isinstance(answer, dict) else {**current, "min_replica_count": count}

    def scale_to_zero(self, name: str) -> dict[str, Any]:
        return self.set_min_replicas(name, 0)

    def pause(self, name: str) -> None:
        self._call("POST", self._deployment_path(name, "/pause"), deployment=name)

    def resume(self, name: str) -> None:
        self._call("POST", self._deployment_path(name, "/resume"), deployment=name)

    def replica_status(self, name: str) -> ReplicaStatus:
        """How warm the deployment is: cold | warming | ready | failing | unknown, with the reason."""
        return summarize_replicas(name, self.scaling(name), self.replicas(name), self.deployment_status(name))
