"""Seat frontends as a service: where a seat's ComfyUI is, who may open it, and keeping it running.

Admin actions and management commands call ``start_seats`` / ``stop_seats`` / ``restart_seats`` /
``reset_seats``, and a participant's arrival (sign-in, or their home page) calls ``start_for_participant``:
they only record what is wanted. The supervisor (``manage.py run_seat_frontends``, started by ``make run`` and
by the production compose file) reconciles that with the driver, restarts frontends that died (with backoff)
and records what it found, so every action is quick, repeatable and survives restarts. It leaves a heartbeat
in Redis, so that a command can tell whether anything will carry out what it asked.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import redis
import requests
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Max
from django.http import HttpRequest
from django.utils import timezone

from comfyume.redis_client import counters

from .models import Seat, SeatFrontend, Workshop, hash_token
from .provisioning import TOKEN_ENV, FrontendDriver, FrontendStatus, ProvisioningError, SeatSpec, get_driver
from .seat_frontend import frontend_package

log = logging.getLogger(__name__)
RESTART_BACKOFF = (1, 2, 5, 10, 30, 60)
# A started frontend that has not answered its health check after this many seconds gets a note saying so
# (it keeps starting: a busy host may be slow, and the participant's page tells them what it waits for).
ANSWER_DEADLINE = 30
# Frontends stopped at once when the supervisor stops: each may take its driver's whole grace period (a seat
# whose participant keeps a socket open does), and `make run` gives the supervisor ten seconds in all.
STOP_TOGETHER = 64


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


def url_for(seat: Seat, frontend: SeatFrontend | None, request: HttpRequest | None) -> str | None:
    """The address of the seat's ComfyUI for this browser, or None while its frontend is not running."""
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
        "COMFYUME_FRONTEND_VERSION": conf["FRONTEND_VERSION"],
    }
    if token is not None:
        env[TOKEN_ENV] = token
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
    # An existing row is read first: the port search (a bind per candidate) runs only for a new one, not on
    # every participant's visit to their page.
    return [SeatFrontend.objects.filter(seat=seat).first() or _new_frontend(seat) for seat in seats]


def _new_frontend(seat: Seat) -> SeatFrontend:
    for _ in range(5):  # another process may take the same port at the same moment
        try:
            with transaction.atomic():
                frontend, _created = SeatFrontend.objects.get_or_create(seat=seat, defaults={"port": _allocate_port()})
            return frontend
        except IntegrityError:
            continue
    raise ProvisioningError(f"Could not allocate a port for {seat}.")


def _seats(target: Workshop | Iterable[Seat]) -> list[Seat]:
    if isinstance(target, Workshop):
        return list(target.seats.select_related("workshop"))
    return list(target)


def start_seats(target: Workshop | Iterable[Seat]) -> int:
    rows = ensure_frontends(_seats(target))
    return SeatFrontend.objects.filter(pk__in=[r.pk for r in rows]).update(desired=SeatFrontend.Desired.RUNNING)


def start_for_participant(seat: Seat) -> SeatFrontend | None:
    """The participant has arrived (signed in, or opened their page): ask for their seat's ComfyUI to run, as
    JupyterHub spawns a server on login. An archived workshop's seats stay off. Returns the seat's frontend,
    None when none could be set up (arriving never fails because of it: their page says so)."""
    if seat.workshop.archived_at is not None:
        return SeatFrontend.objects.filter(seat=seat).first()
    try:
        (frontend,) = ensure_frontends([seat])
    except ProvisioningError as exc:
        log.warning("Seat frontend %s: not set up for its participant: %s", seat, exc)
        return None
    if frontend.desired != SeatFrontend.Desired.RUNNING:
        SeatFrontend.objects.filter(pk=frontend.pk).update(desired=SeatFrontend.Desired.RUNNING)
        frontend.desired = SeatFrontend.Desired.RUNNING
    return frontend


def start_on_sign_in(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """``user_logged_in`` receiver: a participant's sign-in (password or join link) starts their seat."""
    seat = Seat.objects.select_related("workshop").filter(participant=user).first()
    if seat is not None:
        start_for_participant(seat)


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


def wipe_seats(target: Workshop | Iterable[Seat]) -> int:
    """Remove the seats' saved workflows, settings and uploads (a participant's data deleted on request), and
    leave them running or stopped as they are: a running one restarts empty, a stopped one stays stopped. A seat
    whose ComfyUI never ran has no files and no row, and gets none."""
    seats = [seat.pk for seat in _seats(target)]
    return SeatFrontend.objects.filter(seat__in=seats).update(reset_requested=F("reset_requested") + 1)


# --- What the participant's page says ----------------------------------------------------------------


def progress(seat: Seat, frontend: SeatFrontend | None, request: HttpRequest | None) -> dict[str, Any]:
    """Where the seat's ComfyUI is on its way up, for the waiting page and its status endpoint.

    ``phase`` is one of ``ready`` (``url`` is set), ``starting`` (asked for, the supervisor has not started it
    yet), ``answering`` (started, waiting for it to answer), ``failed`` (it could not start or it stopped;
    ``error`` says why, and the supervisor tries again), ``no_supervisor`` (nothing will start it), ``stopped``
    (switched off) or ``archived``; ``message`` says it in the participant's words.
    """
    url = url_for(seat, frontend, request)
    error = frontend.last_error if frontend is not None else ""
    if url:
        return _phase("ready", "Your ComfyUI is ready.", url=url)
    if seat.workshop.archived_at is not None:
        return _phase("archived", "This workshop has ended: its ComfyUI is switched off.")
    if frontend is None:
        return _phase(
            "failed",
            "Your ComfyUI could not be set up. Please tell the instructor.",
            error="No port or place for this seat's frontend (the server log says why).",
        )
    if frontend.desired == SeatFrontend.Desired.STOPPED:
        return _phase("stopped", "Your ComfyUI is switched off. Reload this page to start it, or ask the instructor.")
    if frontend.state == SeatFrontend.State.FAILED:
        return _phase("failed", "Your ComfyUI could not start; it is tried again by itself.", error=error)
    if frontend.state == SeatFrontend.State.STARTING:
        message = "Your ComfyUI has started and is getting ready: waiting for it to answer…"
        if frontend.restarts:
            message = f"Your ComfyUI is starting again (it stopped {frontend.restarts} time(s)): waiting for it…"
        return _phase("answering", message, error=error)
    if not supervisor_running():
        return _phase(
            "no_supervisor",
            "Your ComfyUI is waiting for the seat supervisor that starts it, which is not running: "
            "please tell the instructor.",
            error=error,
        )
    return _phase("starting", "Your ComfyUI is starting…", error=error)


def _phase(phase: str, message: str, *, url: str | None = None, error: str = "") -> dict[str, Any]:
    return {"phase": phase, "message": message, "url": url, "error": error}


# --- The supervisor ----------------------------------------------------------------------------------


def _supervisor_key() -> str:
    return f"{settings.REDIS_PREFIX}:seat-supervisor"


def supervisor_running() -> bool:
    """Is a seat supervisor reconciling right now (its heartbeat is fresh)? Redis trouble counts as no."""
    try:
        return bool(counters().exists(_supervisor_key()))
    except (redis.RedisError, OSError):
        return False


def _beat(driver: str, interval: float) -> None:
    """The supervisor's heartbeat: it expires after a few missed passes, so a dead supervisor is noticed."""
    try:
        counters().set(_supervisor_key(), driver, ex=max(10, int(interval * 5)))
    except (redis.RedisError, OSError):
        log.warning("Seat frontends: could not record the supervisor's heartbeat in Redis")


def _healthy(address: str) -> bool:
    try:
        return requests.get(f"http://{address}/comfyume/health", timeout=0.5).status_code == 200
    except requests.RequestException:
        return False


# How often the supervisor copies the running seats' saved files to the hub's side (docker driver): what a restore
# brings back is at most this old.
SAVE_FILES_EVERY = 300.0


class Supervisor:
    """Reconciles SeatFrontend rows with what the driver reports. One instance per host of seats."""

    def __init__(self, driver: FrontendDriver | None = None, *, interval: float = 1.0) -> None:
        self.driver = driver or get_driver()
        self.interval = interval
        self.stopping = threading.Event()
        self._next_attempt: dict[int, float] = {}
        self._files_saved = 0.0  # monotonic time of the last copy of the seats' saved files

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
        """Stop every frontend this host runs (the process driver's children die with the platform).

        They are stopped together: one after the other, seats with a participant's socket open took their
        driver's grace period each, `make run` killed the supervisor after ten seconds, and the seats not yet
        stopped were left running, still talking to that run's hub address."""
        rows = self._rows()
        specs = [seat_spec(frontend.seat) for frontend in rows]
        with ThreadPoolExecutor(max_workers=max(1, min(STOP_TOGETHER, len(specs)))) as pool:
            outcomes = list(pool.map(self._stop_quietly, specs))
        stopped = [frontend.pk for frontend, ok in zip(rows, outcomes, strict=True) if ok]
        SeatFrontend.objects.filter(pk__in=stopped).update(state=SeatFrontend.State.STOPPED)

    def _stop_quietly(self, spec: SeatSpec) -> bool:
        """Stop one frontend; a driver error is logged, and the other frontends are still stopped."""
        try:
            self.driver.stop(spec)
        except Exception:
            log.exception("Seat frontend %s: could not stop it", spec.name)
            return False
        return True

    def _rows(self) -> list[SeatFrontend]:
        return list(SeatFrontend.objects.select_related("seat__workshop"))

    def save_files(self, *, every: float = SAVE_FILES_EVERY) -> int:
        """Copy each running seat's saved workflows and settings to the hub's side (a driver whose seats keep
        them elsewhere: the docker driver's volumes), at most every ``every`` seconds; how many were copied."""
        save = getattr(self.driver, "save_files", None)
        if save is None or time.monotonic() - self._files_saved < every:
            return 0
        self._files_saved = time.monotonic()
        copied = 0
        for frontend in self._rows():
            if frontend.state != SeatFrontend.State.RUNNING:
                continue
            try:
                copied += bool(save(seat_spec(frontend.seat)))
            except Exception:
                log.exception("Seat frontend %s: its saved files could not be copied", frontend.seat)
        return copied

    def reconcile(self) -> None:
        _beat(self.driver.name, self.interval)
        self.save_files()
        for frontend in self._rows():
            try:
                self.reconcile_one(frontend)
            except ProvisioningError as exc:
                log.warning("Seat frontend %s: %s", frontend.seat, exc)
                self._save(frontend, state=SeatFrontend.State.FAILED, last_error=str(exc))
            except Exception as exc:
                # Anything else a driver raises (an engine's client error, a full disk) is this seat's
                # failure, recorded for its page and the admin; the other seats are still reconciled.
                log.exception("Seat frontend %s: reconcile failed", frontend.seat)
                self._save(frontend, state=SeatFrontend.State.FAILED, last_error=f"{type(exc).__name__}: {exc}")

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
        if status.running and status.stale:
            # Started with other settings: typically by an earlier platform on another address (PORT,
            # COMFYUME_PUBLIC_URL, COMFYUME_HUB_INTERNAL_URL), whose hub it would ask in vain for good. Its
            # participant's files stay with the seat (its directory or volume).
            log.info("Seat frontend %s: started with other settings (%s); starting it again", seat, status.stale)
            self.driver.stop(spec)
            self._save(frontend, state=SeatFrontend.State.STOPPED)
            status = FrontendStatus(running=False, detail="stopped: its settings changed")
        if status.running:
            self._observe_running(frontend, status)
            return
        if frontend.state in (SeatFrontend.State.RUNNING, SeatFrontend.State.STARTING) and frontend.started_at:
            # It was started and is gone: count a crash, say why, and back off before the next start.
            self._save(
                frontend,
                state=SeatFrontend.State.FAILED,
                restarts=frontend.restarts + 1,
                last_error=f"It stopped by itself ({status.detail}).",
            )
            delay = RESTART_BACKOFF[min(frontend.restarts, len(RESTART_BACKOFF) - 1)]
            self._next_attempt[frontend.pk] = time.monotonic() + delay
            log.warning("Seat frontend %s died; starting it again in %s s", seat, delay)
        if time.monotonic() < self._next_attempt.get(frontend.pk, 0):
            return
        token = seat.issue_token()
        status = self.driver.start(seat_spec(seat, token))
        # The last error stays until it answers: a seat that keeps dying shows why while it starts again.
        self._save(
            frontend,
            state=SeatFrontend.State.STARTING,
            driver=self.driver.name,
            address=status.address,
            started_at=timezone.now(),
        )

    def _observe_running(self, frontend: SeatFrontend, status: FrontendStatus) -> None:
        if frontend.state == SeatFrontend.State.RUNNING:
            return
        if _healthy(status.address):
            self._save(frontend, state=SeatFrontend.State.RUNNING, address=status.address, last_error="")
            return
        waited = (timezone.now() - frontend.started_at).total_seconds() if frontend.started_at else 0
        if frontend.state == SeatFrontend.State.STARTING and waited > ANSWER_DEADLINE:
            self._save(
                frontend, last_error=f"Started over {ANSWER_DEADLINE} s ago but does not answer at {status.address}."
            )


def ensure_frontend(version: str, write: Callable[[str], Any] | None = None) -> str:
    """Where the seats will find ``version`` (installing it into COMFYUME_FRONTENDS_DIR if it is not the
    installed one and not there yet). Raises FrontendMissing with the reason."""
    frontends_dir = settings.SEAT_FRONTENDS["FRONTENDS_DIR"]
    try:
        return str(frontend_package.web_root(version, frontends_dir))
    except frontend_package.FrontendMissing:
        frontend_package.check_version(version)
        if write:
            write(f"Installing the ComfyUI frontend {version} into {frontends_dir} (once; pip, about 20 s)")
        return str(frontend_package.install(version, frontends_dir))
