"""Backend kinds: which provider runs each kind of GpuBackend, and what the rest of the hub may ask of a kind.

Behaviour that differs by kind lives on the kind's provider class (``needs_callback``, ``cold_starts``,
``scales``, ``scaler()``: see :class:`~gpu_backends.providers.Provider`), never at a call site that names a kind.
The dispatch, the health sweep, the submit path, scaling, the admin and the dashboard ask :func:`kind_of`, a dict
lookup that builds nothing (the claim and the dispatch ask it per job); :func:`provider_for` builds the provider
with its HTTP clients. A new kind, a second serverless vendor say, is its client module, its provider class and
one line in :data:`KINDS` (CONTRIBUTING.md).
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings

from .models import GpuBackend
from .providers import ComfyUIProvider, Provider, Scaler
from .serverless import ServerlessProvider, Timing
from .verda import VerdaInference, VerdaManagement


class VerdaProvider(ServerlessProvider):
    """Verda's serverless containers: jobs through its inference gateway (gpu_backends.verda.VerdaInference),
    minimum replicas through its public API (VerdaManagement, with the ``VERDA`` settings)."""

    scales = True
    scaling_api = "Verda API"
    scaler_needs = "Verda API credentials: set COMFYUME_VERDA_CLIENT_ID and COMFYUME_VERDA_CLIENT_SECRET"

    @classmethod
    def for_backend(cls, backend: Any, cfg: dict[str, Any]) -> VerdaProvider:
        gateway = VerdaInference(
            backend.inference_url,
            # Secrets stay in the environment: the row names the variable.
            os.environ.get(backend.api_key_env, ""),
            connect_timeout=cfg["BACKEND_CONNECT_TIMEOUT"],
            read_timeout=cfg["BACKEND_READ_TIMEOUT"],
            run_timeout=cfg["SERVERLESS_REQUEST_TIMEOUT"],
        )
        timing = Timing(
            silence=cfg["WORKER_SILENCE"], cold_start=cfg["COLD_START_TIMEOUT"], poll=cfg["ASYNC_POLL_INTERVAL"]
        )
        return cls(gateway, mode=backend.inference_mode, timing=timing)

    @classmethod
    def scaler(cls) -> Scaler | None:
        cfg = settings.VERDA
        if not cfg["CLIENT_ID"] or not cfg["CLIENT_SECRET"]:
            return None
        return VerdaManagement(cfg["CLIENT_ID"], cfg["CLIENT_SECRET"], api_url=cfg["API_URL"])


# Keyed by GpuBackend.Kind (a str): a test registers a fake kind with monkeypatch.setitem.
KINDS: dict[str, type[Provider]] = {
    GpuBackend.Kind.COMFYUI: ComfyUIProvider,
    GpuBackend.Kind.SIMULATOR: ComfyUIProvider,  # the simulator speaks ComfyUI's protocol
    GpuBackend.Kind.VERDA: VerdaProvider,
}


def kind_of(backend: GpuBackend) -> type[Provider]:
    """What ``backend``'s kind does, without building anything. A kind nobody registered (a row left from a
    removed kind) answers as the base Provider: it asks for nothing and cannot be built."""
    return KINDS.get(backend.kind, Provider)


def provider_for(backend: Any) -> Provider:
    """The provider for a GpuBackend row; BackendError (permanent) for a kind nobody registered."""
    return kind_of(backend).for_backend(backend, settings.COMFYUME)


def scaling_kinds() -> list[str]:
    """The kinds whose deployments the hub scales (gpu_backends.scaling.sweep)."""
    return [kind for kind, provider in KINDS.items() if provider.scales]
