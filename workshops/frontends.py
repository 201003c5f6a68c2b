"""Seat frontends as a service: where a seat's ComfyUI is, who may open it, and keeping it running.

Admin actions and management commands call ``start_seats`` / ``stop_seats`` / ``restart_seats`` /
``reset_seats``: they only record what is wanted. The supervisor (``manage.py run_seat_frontends``, started
by ``make run`` and by the production compose file) reconciles that with the driver, restarts frontends that
died (with backoff) and records what it found, so every action is quick, repeatable and survives restarts.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Max
from django.http import HttpRequest
from django.utils import timezone

from .models import Seat, SeatFrontend, Workshop, hash_token
from .provisioning import FrontendDriver, FrontendStatus, ProvisioningError, SeatSpec, get_driver

log = logging.getLogger(__name__)
RESTART_BACKOFF = (1, 2, 5, 10, 30, 60)


# --- Where a seat is ---------------------------------------------------------------------------------


def frontend_name(seat: Seat) -> str:
    return f"comfyume-seat-{seat.workshop.slug}-{seat.label}"


def base_path(seat: Seat) -> str:
    return f"/{seat.label}/" if settings.SEAT_FRONTENDS["ROUTING"] == "path" else "/"


def login_url() -> str:
    """Where a seat frontend sends a browser that is not signed in. In port routing the hub is on the same
    host name as the seat (cookies are per host, not per port); the frontend fills in ``{host}``."""
    if settings.SEAT_FRONTENDS["ROUTING"] == "path":
        return "/login/"
    public = urlsplit(settings.PUBLIC_URL)
    return f"{public.scheme}://{{host}}{':' + str(public.port) if public.port else ''}/login/"


def seat_url(seat: Seat, request: HttpRequest | None = None) -> str | None:
    """The address of the seat's ComfyUI for this browser, or None while its frontend is not running."""
    return url_for(seat, SeatFrontend.objects.filter(seat=seat).only("state", "port").first(), request)


def url_for(seat: Seat, frontend: SeatFrontend | None, request: HttpRequest | None) -> str | None:
    if frontend is None or frontend.state != SeatFrontend.State.RUNNING:
        return None
    if settings.SEAT_FRONTENDS["ROUTING"] == "path":
        return f"/{seat.label}/"
    if frontend.port is None:
        return None
    public = urlsplit(settings.PUBLIC_URL)
    host = request.get_host().rsplit(":", 1)[0] if request is not None else public.hostname
    return f"{public.scheme}://{host}:{frontend.port}/"


def seat_for_access_check(*, token: str, original_uri: str, workshop_slug: str) -> Seat | None:
    """The seat a seat check is about: the asking frontend's token, or nginx's ``/userNNN/`` prefix."""
    if token:
        return Seat.objects.select_related("workshop").filter(token_hash=hash_token(token)).first()
    label = original_uri.lstrip("/").split("/", 1)[0].split("?", 1)[0]
    if not label or not workshop_slug:
        return None
    return Seat.objects.select_related("workshop").filter(workshop__slug=workshop_slug, label=label).first()


def seat_spec(seat: Seat, token: str | None = None, *, port: int | None = None) -> SeatSpec:
    """What a driver needs to run this seat's frontend; without ``token`` the spec can only be looked up."""
    conf = settings.SEAT_FRONTENDS
    env = {
        "COMFYUME_HUB_URL": conf["HUB_URL"],
        "COMFYUME_SEAT_LABEL": seat.label,
        "COMFYUME_SEAT_BASE_PATH": base_path(seat),
        "COMFYUME_SEAT_LOGIN_URL": login_url(),
        "COMFYUME_SEAT_AUTH_CACHE_SECONDS": str(conf["AUTH_CACHE_SECONDS"]),
        "COMFYUME_MAX_UPLOAD_MB": str(conf["MAX_UPLOAD_MB"]),
    }
    if token is not None:
        env["COMFYUME_SEAT_TOKEN"] = token
    if port is None:
        frontend = getattr(seat, "frontend", None)
        port = frontend.port if frontend is not None else None
    return SeatSpec(
        workshop=seat.workshop.slug,
        label=seat.label,
        name=frontend_name(seat),
        env=env,
        port=port,
        labels={"comfyume.seat-id": str(seat.pk)},
    )


# --- What the instructor asks for --------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((settings.SEAT_FRONTENDS["BIND_HOST"], port))
        except OSError:
            return False
        return True


def _allocate_port() -> int:
    """The next port after the highest handed out, skipping ports something else on this host holds."""
    highest = SeatFrontend.objects.aggregate(m=Max("port"))["m"]
    port = max(settings.SEAT_FRONTENDS["PORT_BASE"], (highest or 0) + 1)
    for candidate in range(port, min(port + 1000, 65536)):
        if _port_free(candidate):
            return candidate
    raise ProvisioningError(f"No free port for a seat frontend from {port} on.")


def ensure_frontends(seats: Iterable[Seat]) -> list[SeatFrontend]:
    """A SeatFrontend row (and, for the process driver, a port) for each seat."""
    rows = []
    for seat in seats:
        for _ in range(5):  # another process may take the same port at the same moment
            try:
                with transaction.atomic():
                    frontend, _created = SeatFrontend.objects.get_or_create(
                        seat=seat, defaults={"port": _allocate_port()}
                    )
                break
            except IntegrityError:
                continue
        else:
            raise ProvisioningError(f"Could not allocate a port for {seat}.")
        rows.append(frontend)
    return rows


def _seats(target: Workshop | Iterable[Seat]) -> list[Seat]:
    if isinstance(target, Workshop):
        return list(target.seats.select_related("workshop"))
    return list(target)


def start_seats(target: Workshop | Iterable[Seat]) -> int:
    rows = ensure_frontends(_seats(target))
    return SeatFrontend.objects.filter(pk__in=[r.pk for r in rows]).update(desired=SeatFrontend.Desired.RUNNING)


def stop_seats(target: Workshop | Iterable[Seat]) -> int:
    seats = _seats(target)
    return SeatFrontend.objects.filter(seat__in=seats).update(desired=SeatFrontend.Desired.STOPPED)


def restart_seats(target: Workshop | Iterable[Seat]) -> int:
    rows = ensure_frontends(_seats(target))
    return SeatFrontend.objects.filter(pk__in=[r.pk for r in rows]).update(
        desired=SeatFrontend.Desired.RUNNING, restart_requested=F("restart_requested") + 1
    )


def reset_seats(target: Workshop | Iterable[Seat]) -> int:
    """Start the seats afresh, without their saved workflows, settings and uploads. The process driver moves
    the old files aside (``<seat data>/trash/``); the docker driver removes the seat's volume."""
    rows = ensure_frontends(_seats(target))
    return SeatFrontend.objects.filter(pk__in=[r.pk for r in rows]).update(
        desired=SeatFrontend.Desired.RUNNING, reset_requested=F("reset_requested") + 1
    )


# --- The supervisor ----------------------------------------------------------------------------------


def _healthy(address: str) -> bool:
    try:
        return requests.get(f"http://{address}/comfyume/health", timeout=0.5).status_code == 200
    except requests.RequestException:
        return False


class Supervisor:
    """Reconciles SeatFrontend rows with what the driver reports. One instance per host of seats."""

    def __init__(self, driver: FrontendDriver | None = None, *, interval: float = 1.0) -> None:
        self.driver = driver or get_driver()
        self.interval = interval
        self.stopping = threading.Event()
        self._next_attempt: dict[int, float] = {}

    def run(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stopping.set())
        log.info("Seat frontends: supervising with the %s driver", self.driver.name)
        while not self.stopping.is_set():
            try:
                self.reconcile()
            except Exception:
                log.exception("Seat frontend reconcile failed")
            self.stopping.wait(self.interval)
        if self.driver.name == "process":
            self.stop_all()

    def stop_all(self) -> None:
        """Stop every frontend this host runs (the process driver's children die with the platform)."""
        for frontend in self._rows():
            self.driver.stop(seat_spec(frontend.seat))
            SeatFrontend.objects.filter(pk=frontend.pk).update(state=SeatFrontend.State.STOPPED)

    def _rows(self) -> list[SeatFrontend]:
        return list(SeatFrontend.objects.select_related("seat__workshop"))

    def reconcile(self) -> None:
        for frontend in self._rows():
            try:
                self.reconcile_one(frontend)
            except ProvisioningError as exc:
                log.warning("Seat frontend %s: %s", frontend.seat, exc)
                self._save(frontend, state=SeatFrontend.State.FAILED, last_error=str(exc))

    def _save(self, frontend: SeatFrontend, **changes: Any) -> None:
        changed = {k: v for k, v in changes.items() if getattr(frontend, k) != v}
        if changed:
            for key, value in changed.items():
                setattr(frontend, key, value)
            SeatFrontend.objects.filter(pk=frontend.pk).update(**changed, updated_at=timezone.now())

    def reconcile_one(self, frontend: SeatFrontend) -> None:
        seat = frontend.seat
        spec = seat_spec(seat)
        if frontend.reset_requested > frontend.reset_done:
            self.driver.stop(spec)
            self.driver.reset(spec)
            log.info("Seat frontend %s: reset", seat)
            self._save(frontend, reset_done=frontend.reset_requested, state=SeatFrontend.State.STOPPED)
        if frontend.restart_requested > frontend.restart_done:
            self.driver.stop(spec)
            self._save(frontend, restart_done=frontend.restart_requested, state=SeatFrontend.State.STOPPED)
        status = self.driver.status(spec)
        # An archived workshop's seats stop, whatever was asked for them before.
        if frontend.desired == SeatFrontend.Desired.STOPPED or seat.workshop.archived_at is not None:
            if status.running:
                self.driver.stop(spec)
            self._save(frontend, state=SeatFrontend.State.STOPPED)
            return
        if status.running:
            self._observe_running(frontend, status)
            return
        if frontend.state in (SeatFrontend.State.RUNNING, SeatFrontend.State.STARTING) and frontend.started_at:
            # It was started and is gone: count a crash and back off before the next start.
            self._save(frontend, state=SeatFrontend.State.FAILED, restarts=frontend.restarts + 1)
            delay = RESTART_BACKOFF[min(frontend.restarts, len(RESTART_BACKOFF) - 1)]
            self._next_attempt[frontend.pk] = time.monotonic() + delay
            log.warning("Seat frontend %s died; starting it again in %s s", seat, delay)
        if time.monotonic() < self._next_attempt.get(frontend.pk, 0):
            return
        token = seat.issue_token()
        status = self.driver.start(seat_spec(seat, token))
        self._save(
            frontend,
            state=SeatFrontend.State.STARTING,
            driver=self.driver.name,
            address=status.address,
            started_at=timezone.now(),
            last_error="",
        )

    def _observe_running(self, frontend: SeatFrontend, status: FrontendStatus) -> None:
        if frontend.state == SeatFrontend.State.RUNNING:
            return
        if _healthy(status.address):
            self._save(frontend, state=SeatFrontend.State.RUNNING, address=status.address, last_error="")
