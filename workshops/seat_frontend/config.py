"""The seat frontend's configuration, read from the environment its provisioning driver sets."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class ConfigError(Exception):
    """A missing or malformed setting; the message names the variable."""


@dataclass(frozen=True)
class SeatConfig:
    hub_url: str  # how this server reaches the hub (not the public address)
    token: str  # the seat's token: every hub call carries it
    label: str  # user001, for logs and pages
    base_path: str  # "/" or "/user001/" behind nginx
    login_url: str  # where a browser without a session signs in; "{host}" is the request's host name
    data_dir: Path  # user/ (userdata, settings), input/ (uploads), state/
    host: str = "127.0.0.1"
    port: int = 8188
    auth_cache_seconds: float = 5.0
    max_upload_bytes: int = 50 * 1024 * 1024
    frontend_version: str | None = None  # None: the comfyui-frontend-package installed with this server
    frontends_dir: Path | None = None  # where other versions are installed (frontend_package.install)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> SeatConfig:
        def need(name: str) -> str:
            value = environ.get(name, "").strip()
            if not value:
                raise ConfigError(f"{name} is not set.")
            return value

        def number(name: str, default: float) -> float:
            raw = environ.get(name, "").strip()
            try:
                return float(raw) if raw else default
            except ValueError:
                raise ConfigError(f"{name} must be a number, not {raw!r}.") from None

        base_path = environ.get("COMFYUME_SEAT_BASE_PATH", "/").strip() or "/"
        if not (base_path.startswith("/") and base_path.endswith("/")):
            raise ConfigError(f"COMFYUME_SEAT_BASE_PATH must start and end with '/', not {base_path!r}.")
        hub_url = need("COMFYUME_HUB_URL").rstrip("/")
        if not hub_url.startswith(("http://", "https://")):
            raise ConfigError(f"COMFYUME_HUB_URL must be an http(s) URL, not {hub_url!r}.")
        return cls(
            hub_url=hub_url,
            token=need("COMFYUME_SEAT_TOKEN"),
            label=environ.get("COMFYUME_SEAT_LABEL", "seat"),
            base_path=base_path,
            login_url=environ.get("COMFYUME_SEAT_LOGIN_URL", "/login/"),
            data_dir=Path(need("COMFYUME_SEAT_DATA_DIR")).resolve(),
            host=environ.get("COMFYUME_SEAT_HOST", "127.0.0.1"),
            port=int(number("COMFYUME_SEAT_PORT", 8188)),
            auth_cache_seconds=number("COMFYUME_SEAT_AUTH_CACHE_SECONDS", 5.0),
            max_upload_bytes=int(number("COMFYUME_MAX_UPLOAD_MB", 50) * 1024 * 1024),
            frontend_version=environ.get("COMFYUME_FRONTEND_VERSION", "").strip() or None,
            frontends_dir=Path(frontends_dir).resolve()
            if (frontends_dir := environ.get("COMFYUME_FRONTENDS_DIR"))
            else None,
        )
