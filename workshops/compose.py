"""``docker-compose.users.yml``: the seat frontends as compose services, for operators who prefer compose.

Each service is the container the ``docker`` driver would create (same name, image, environment, labels,
volume, limits and restart policy), so the two can take turns managing a seat. Seat tokens are never
written: each service reads its token from a variable (:func:`seat_token_variable`) that the operator
supplies in an env file (``docker compose --env-file seat-tokens.env -f docker-compose.users.yml up -d``).

The YAML is written by hand (no YAML library is a dependency): every string is a double-quoted scalar,
which JSON's quoting produces and YAML reads the same way.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .provisioning import SeatSpec
from .provisioning.docker import (
    CAP_DROP,
    DATA_DIR,
    PIDS_LIMIT,
    READ_ONLY_ROOT,
    SECURITY_OPT,
    TMPFS,
    container_env,
    container_labels,
    volume_name,
)

TOKEN_ENV = "COMFYUME_SEAT_TOKEN"
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
# Plain words that YAML 1.1 readers (PyYAML among them) take for booleans or null.
_YAML11_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def seat_token_variable(spec: SeatSpec) -> str:
    """The env-file variable holding the seat's token: ``SEAT_TOKEN_COMFYUME_SEAT_MAY_USER001``."""
    return "SEAT_TOKEN_" + re.sub(r"[^A-Z0-9_]", "_", spec.name.upper())


class _Reference(str):
    """A value written as is: a ``${VAR}`` that compose must interpolate (every other ``$`` is escaped)."""


def users_compose(specs: list[SeatSpec], *, image: str, network: str, memory: str, cpus: float) -> dict[str, Any]:
    """The compose file as data: one service per seat, the seats' network (made elsewhere) and their volumes."""
    services: dict[str, Any] = {}
    volumes: dict[str, Any] = {}
    for spec in specs:
        env = container_env(spec)
        variable = seat_token_variable(spec)
        # Replaces the token when the spec has one. ":?" makes `docker compose up` refuse to start when the
        # operator forgot a token.
        env[TOKEN_ENV] = _Reference(f"${{{variable}:?set {variable} in the env file}}")
        services[spec.name] = {
            "image": image,
            "container_name": spec.name,  # the driver's name: nginx and the hub reach <name>:8188
            "restart": "unless-stopped",
            "environment": env,
            "labels": container_labels(spec),
            "volumes": [{"type": "volume", "source": volume_name(spec), "target": DATA_DIR}],
            "networks": [network],
            "mem_limit": memory,
            "cpus": cpus,
            # The driver's confinement (workshops/provisioning/docker.py), in compose's words.
            "read_only": READ_ONLY_ROOT,
            "tmpfs": [f"{path}:{options}" for path, options in TMPFS.items()],
            "cap_drop": CAP_DROP,
            "security_opt": [f"{option}:true" for option in SECURITY_OPT],
            "pids_limit": PIDS_LIMIT,
        }
        # An explicit name keeps compose from prefixing it with the project: the driver's volume is the same one.
        volumes[volume_name(spec)] = {"name": volume_name(spec)}
    return {
        "services": services,
        "networks": {network: {"name": network, "external": True}},
        "volumes": volumes,
    }


def render_users_compose(specs: list[SeatSpec], *, image: str, network: str, memory: str, cpus: float) -> str:
    """``docker-compose.users.yml`` for these seats (see the module docstring for the tokens)."""
    header = [
        "# Seat frontends, one service per seat. Written by `manage.py render_compose_users`; edits are lost.",
        "# Seat tokens are not in this file: put one line per seat in an env file (see the variables below),",
        "#   SEAT_TOKEN_…=<token>",
        "# and run: docker compose --env-file seat-tokens.env -f docker-compose.users.yml up -d",
        f"# The network {network} must exist: docker network create {network}",
    ]
    document = users_compose(specs, image=image, network=network, memory=memory, cpus=cpus)
    return "\n".join([*header, *_block(document, 0)]) + "\n"


def _block(value: dict[str, Any] | list[Any], depth: int) -> list[str]:
    """YAML block-style lines for a mapping or a sequence, indented two spaces per level."""
    pad = "  " * depth
    lines: list[str] = []
    items = value.items() if isinstance(value, dict) else ((None, item) for item in value)
    for key, item in items:
        lead = f"{pad}{_key(key)}:" if key is not None else f"{pad}-"
        if isinstance(item, dict | list) and item:
            nested = _block(item, depth + 1)
            if key is None and isinstance(item, dict):
                # A mapping inside a sequence starts on the dash's line: "- type: volume".
                lines.append(f"{lead} {nested[0].lstrip()}")
                lines.extend(nested[1:])
            else:
                lines.append(lead)
                lines.extend(nested)
        else:
            lines.append(f"{lead} {_scalar(item)}")
    return lines


def _key(key: str) -> str:
    plain = _PLAIN_KEY.fullmatch(key) and key.lower() not in _YAML11_WORDS
    return key if plain else _quoted(key)


def _scalar(value: Any) -> str:
    if isinstance(value, _Reference):
        return _quoted(value)
    if isinstance(value, str):
        # Compose interpolates "$" everywhere; "$$" is its literal dollar.
        return _quoted(value.replace("$", "$$"))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if value is None:
        return "null"
    if isinstance(value, dict | list) and not value:
        return "{}" if isinstance(value, dict) else "[]"
    raise TypeError(f"Cannot write {type(value).__name__} to the compose file")


def _quoted(text: str) -> str:
    """A double-quoted scalar. JSON escapes quotes, backslashes and C0 controls; YAML also forbids other
    unprintable characters (DEL, C1 controls, line separators) in a file, so those are escaped too."""
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in json.dumps(text, ensure_ascii=False))


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
