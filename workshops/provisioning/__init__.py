"""Provisioning drivers: how a seat's frontend server is started, stopped, reset and found.

Two drivers implement one interface: ``process`` (a supervised local process per seat, the default) and
``docker`` (a container per seat through the Docker Engine API). Drivers know nothing about the database:
they take a :class:`SeatSpec` and report a :class:`FrontendStatus`. The seat-frontend supervisor
(``workshops.frontends``) decides what should run and calls them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

# The seat's token changes with every start, so it is no part of what a running frontend is compared on.
TOKEN_ENV = "COMFYUME_SEAT_TOKEN"


class ProvisioningError(Exception):
    """A driver could not do what was asked; ``permanent`` says whether retrying can help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class SeatSpec:
    """Everything a driver needs to run one seat's frontend."""

    workshop: str  # workshop slug
    label: str  # user001
    name: str  # comfyume-seat-<workshop>-<label>: process log name, container and volume name
    env: dict[str, str] = field(default_factory=dict)  # the frontend's configuration (token included)
    port: int | None = None  # process driver: the port it listens on
    labels: dict[str, str] = field(default_factory=dict)

    def settings(self) -> dict[str, str]:
        """The environment without the token: what a frontend started from this spec must run with."""
        return {key: value for key, value in self.env.items() if key != TOKEN_ENV}


def changed(running: Mapping[str, str], wanted: Mapping[str, str]) -> list[str]:
    """The names whose value differs between what a frontend runs with and what it would be started with."""
    return sorted(key for key in running.keys() | wanted.keys() if running.get(key) != wanted.get(key))


@dataclass(frozen=True)
class FrontendStatus:
    running: bool
    address: str = ""  # host:port where nginx and the hub reach it
    detail: str = ""  # pid / container id / exit code, for the admin
    # What a running frontend has that the spec asked about no longer says ("COMFYUME_HUB_URL, image"); empty
    # when it runs as that spec would start it. The supervisor restarts a frontend whose settings went stale.
    stale: str = ""


class FrontendDriver(Protocol):
    name: str

    def start(self, spec: SeatSpec) -> FrontendStatus:
        """Start the seat's frontend (a no-op when it already runs)."""

    def stop(self, spec: SeatSpec) -> None:
        """Stop it; its data stays."""

    def status(self, spec: SeatSpec) -> FrontendStatus:
        """Is it running, where, and was it started with the settings ``spec`` carries (token aside)?"""

    def reset(self, spec: SeatSpec) -> None:
        """Remove the seat's data (saved workflows, settings, uploads). Called while it is stopped."""


def get_driver(name: str | None = None) -> FrontendDriver:
    """The configured driver (``COMFYUME_SEAT_DRIVER``)."""
    from django.conf import settings

    name = name or settings.SEAT_FRONTENDS["DRIVER"]
    if name == "process":
        from .process import ProcessDriver

        conf = settings.SEAT_FRONTENDS
        return ProcessDriver(conf["DATA_DIR"], host=conf["BIND_HOST"], frontends_dir=conf["FRONTENDS_DIR"])
    if name == "docker":
        from .docker import DockerDriver

        conf = settings.SEAT_FRONTENDS
        return DockerDriver(
            base_url=conf["DOCKER_HOST"],
            image=conf["IMAGE"],
            network=conf["NETWORK"],
            memory=conf["MEMORY"],
            cpus=conf["CPUS"],
            files_dir=conf["DATA_DIR"],
        )
    raise ProvisioningError(f"Unknown seat driver {name!r}.", permanent=True)
