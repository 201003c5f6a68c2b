"""``make run``: the whole platform in the foreground on embedded defaults.

Starts (and supervises) the embedded Redis when ``REDIS_URL`` is unset, the ComfyUI simulator, RQ workers,
the reconciler and the web server (daphne); prepares the database, an admin account and a demo workshop;
hands back what the last run left (``jobs.reconciler.recover_at_start``); prints where to sign in; and stops
every process it started on Ctrl-C or SIGTERM — the workers hand their running jobs back to the queue first.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from comfyume import embedded_redis
from gpu_backends.models import GpuBackend
from jobs import reconciler
from jobs.scheduler import dispatch_queue
from workshops import frontends
from workshops.credentials import credential_sheet
from workshops.credentials_pdf import credential_pdf
from workshops.frontends import ensure_frontend
from workshops.models import JoinLink, WorkflowTemplate, Workshop, hash_token
from workshops.seat_frontend import frontend_package
from workshops.services import (
    SeatCredentials,
    create_workshop,
    credentials_as_dicts,
    join_url,
    picture_beside,
    set_thumbnail,
)

TEMPLATES_DIR = settings.BASE_DIR / "workshops" / "data" / "templates"
DEMO_TEMPLATE = TEMPLATES_DIR / "tiny-invert.json"
# The demo's seats get these (they run on the simulator); the workshop's real templates are loaded too, unattached,
# so the admin shows which of their models each GPU backend has.
DEMO_TEMPLATES = (
    ("Tiny video (24 frames, SaveVideo)", "tiny-video.json", "A model-free video: frames → Create Video → MP4."),
)
REAL_TEMPLATES = (
    ("Flux.2 Klein 4B — text to image", "flux2_klein_4b_text_to_image.json"),
    ("Flux.2 Klein 9B — text to image", "flux2_klein_9b_text_to_image.json"),
    ("LTX-2 — text to video", "ltx2_text_to_video.json"),
    ("LTX-2 distilled — text to video", "ltx2_text_to_video_distilled.json"),
)

MANAGE = [sys.executable, str(settings.BASE_DIR / "manage.py")]
RESTART_BACKOFF = (1, 2, 5, 10, 30)
# The embedded Redis is transport for every other process: it comes back at once, then with a short backoff.
REDIS_RESTART_BACKOFF = (0, 1, 2, 5)
# How long a stop waits for the workers to hand their running jobs back (an interrupt on the GPU, then one
# UPDATE): a second or two on the simulator; a GPU that does not confirm the interrupt is given up on sooner.
HAND_BACK_SECONDS = 20


def workshop_ports(workshop: Workshop) -> list[int | None]:
    return list(workshop.seats.values_list("frontend__port", flat=True))


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Child:
    """A supervised process: restarted with backoff when it dies, stopped as a group on shutdown."""

    name: str
    args: list[str]
    log_path: Path
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    log: BinaryIO | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log = self.log or open(self.log_path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the child
        self.proc = subprocess.Popen(
            self.args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self.started_at = time.monotonic()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def wait_or_kill(self, deadline: float) -> None:
        if not self.proc:
            return
        try:
            self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


class Command(BaseCommand):
    help = "Run the whole platform in the foreground on embedded defaults (what `make run` does)."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--workers", type=int, default=None, help="RQ workers (default: one per GPU slot)")
        parser.add_argument("--demo-seats", type=int, default=int(os.environ.get("COMFYUME_DEMO_SEATS", "3")))
        parser.add_argument("--no-simulator", action="store_true", help="do not start the ComfyUI simulator")

    def handle(self, *args, port, host, workers, demo_seats, no_simulator, **options):
        self.stopping = False
        self.children: list[Child] = []
        self.redis_proc = None
        self.redis_restarts = 0
        self.redis_down_since: float | None = None
        logs = settings.DATA_DIR / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        if not _port_free(port, host):
            raise CommandError(f"Port {port} is in use. Stop what runs there or choose another: PORT=8001 make run")
        # Children (seat frontends through their supervisor, links in pages) reach the hub on this port.
        os.environ["PORT"] = str(port)
        # SIGHUP: the terminal was closed. Every child runs in a session of its own, so nothing else stops them.
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        try:
            if settings.EMBEDDED_REDIS:
                self.stdout.write(f"Starting the embedded Redis ({settings.REDIS_URL})")
                self.redis_proc = embedded_redis.start(settings.EMBEDDED_REDIS_DIR)
            call_command("migrate", interactive=False, verbosity=0)
            self._ensure_frontend()
            admin_password = self._ensure_admin()
            sim_port = None if no_simulator else self._simulator_port()
            demo = self._ensure_demo(demo_seats, sim_port)
            if sim_port:
                self._spawn("simulator", [*MANAGE, "run_comfyui_simulator", "--port", str(sim_port)], logs)
                # The reconciler's first sweep checks the backends' health: started before the simulator listens,
                # it marked it failing and logged a "Connection refused" warning on every start. The recovery
                # below asks the backends about the last run's jobs too.
                self._wait_for_listener("simulator", sim_port)
            self._recover()
            slots = sum(GpuBackend.objects.filter(enabled=True).values_list("max_concurrency", flat=True)) or 1
            for i in range(workers or max(2, min(slots, 16))):
                self._spawn(
                    f"worker-{i + 1}",
                    [*MANAGE, "rqworker", settings.RQ_QUEUE_NAME, "--worker-class", "rq.worker.SimpleWorker"],
                    logs,
                )
            self._spawn("reconciler", [*MANAGE, "run_reconciler"], logs)
            self._spawn("seat-frontends", [*MANAGE, "run_seat_frontends"], logs)
            # comfyume.server is daphne with request bodies bounded and streamed (comfyume/server.py).
            web = [sys.executable, "-m", "comfyume.server", "-b", host, "-p", str(port), "comfyume.asgi:application"]
            self._spawn("web", web, logs)
            self._wait_until_up(host, port)
            self._banner(host, port, admin_password, demo, logs)
            self._supervise()
        finally:
            self._shutdown()

    # --- setup -----------------------------------------------------------------------------
    def _ensure_frontend(self) -> None:
        """The seats' frontend (COMFYUME_FRONTEND_VERSION) is there before the first seat starts."""
        try:
            ensure_frontend(settings.SEAT_FRONTENDS["FRONTEND_VERSION"], self.stdout.write)
        except frontend_package.FrontendMissing as exc:
            raise CommandError(str(exc)) from None

    def _ensure_admin(self) -> str:
        User = get_user_model()
        path = settings.DATA_DIR / "admin_password"
        password = os.environ.get("COMFYUME_ADMIN_PASSWORD") or (path.read_text().strip() if path.exists() else "")
        if not password:
            password = secrets.token_urlsafe(12)
            path.write_text(password)
            path.chmod(0o600)
        user = User.objects.filter(username="admin").first()
        if user is None:
            User.objects.create_superuser("admin", "", password)
        elif os.environ.get("COMFYUME_ADMIN_PASSWORD"):
            user.set_password(password)
            user.save(update_fields=["password"])
        return password

    def _simulator_port(self) -> int:
        wanted = int(os.environ.get("COMFYUME_SIMULATOR_PORT", "8188"))
        return wanted if _port_free(wanted) else _free_port()

    @transaction.atomic
    def _ensure_demo(self, seats: int, sim_port: int | None) -> dict:
        if sim_port:
            backend, _ = GpuBackend.objects.update_or_create(
                name="simulator",
                defaults={
                    "kind": GpuBackend.Kind.SIMULATOR,
                    "url": f"http://127.0.0.1:{sim_port}",
                    "gpu_type": "simulated",
                    "max_concurrency": 2,
                    "state": GpuBackend.State.UNKNOWN,
                },
            )
        path = settings.DATA_DIR / "demo_credentials.json"
        if not Workshop.objects.filter(slug="demo").exists():
            workshop, credentials = create_workshop("demo", seats=seats, title="Demo workshop")
            path.write_text(json.dumps(credentials_as_dicts(credentials), indent=2))
            path.chmod(0o600)
            sheet = settings.DATA_DIR / "demo_credentials.html"
            sheet.write_text(credential_sheet(workshop, credentials))
            sheet.chmod(0o600)
            cards_pdf = settings.DATA_DIR / "demo_credentials.pdf"
            cards_pdf.write_bytes(credential_pdf(workshop, credentials))
            cards_pdf.chmod(0o600)
        workshop = Workshop.objects.get(slug="demo")
        if sim_port:
            workshop.backends.add(backend)
        template, _ = WorkflowTemplate.objects.get_or_create(
            name="Tiny test (invert an image)",
            defaults={
                "description": "Runs in a second on any backend: an empty image, inverted, saved.",
                "workflow": json.loads(DEMO_TEMPLATE.read_text()),
            },
        )
        workshop.templates.add(template)
        for name, filename, description in DEMO_TEMPLATES:
            extra, created = WorkflowTemplate.objects.get_or_create(
                name=name,
                defaults={"description": description, "workflow": json.loads((TEMPLATES_DIR / filename).read_text())},
            )
            if created and (picture := picture_beside(TEMPLATES_DIR / filename)) is not None:
                set_thumbnail(extra, picture.read_bytes())  # its card in the Templates browser
            workshop.templates.add(extra)
        for name, filename in REAL_TEMPLATES:
            WorkflowTemplate.objects.get_or_create(
                name=name,
                defaults={
                    "description": "The workshop's own template: needs a GPU with its models (see Models on the GPUs).",
                    "workflow": json.loads((TEMPLATES_DIR / filename).read_text()),
                },
            )
        if workshop.default_template_id is None:
            workshop.default_template = template
            workshop.save(update_fields=["default_template"])
        frontends.start_seats(workshop)
        listed = self._usable_links(workshop, json.loads(path.read_text())) if path.exists() else []
        return {"workshop": workshop, "seats": listed}

    def _usable_links(self, workshop: Workshop, seats: list[dict]) -> list[dict]:
        """The demo's credentials with a join link that still works for every seat.

        A join link signs in once. The file kept the first run's links, so a restart printed links that answer
        410: a seat whose link was spent (or expired) gets a fresh one, and the file and printable cards follow.
        A link still unused is printed at the hub's current address. The password is unchanged.
        """
        changed = False
        for entry in seats:
            token = entry["join_url"].rstrip("/").rsplit("/", 1)[-1]
            link = JoinLink.objects.filter(token_hash=hash_token(token)).first()
            if link is not None and link.is_usable():
                if entry["join_url"] != join_url(token):  # the hub's address changed (another PORT, a new domain)
                    entry["join_url"] = join_url(token)
                    changed = True
                continue
            seat = workshop.seats.filter(label=entry["seat"]).first()
            if seat is None:
                continue
            entry["join_url"] = join_url(JoinLink.issue(seat))
            changed = True
        if changed:
            credentials = [SeatCredentials(**entry) for entry in seats]
            self._write_private(settings.DATA_DIR / "demo_credentials.json", json.dumps(seats, indent=2))
            pdf = settings.DATA_DIR / "demo_credentials.pdf"
            if pdf.exists():
                pdf.write_bytes(credential_pdf(workshop, credentials))
            sheet = settings.DATA_DIR / "demo_credentials.html"
            if sheet.exists():
                self._write_private(sheet, credential_sheet(workshop, credentials))
        return seats

    @staticmethod
    def _write_private(path: Path, text: str) -> None:
        path.write_text(text)
        path.chmod(0o600)

    def _recover(self) -> None:
        """Hand back what the last run's workers left, before this run's start (seconds, not a heartbeat's minute).

        Only when no RQ worker is registered on the queue: a worker still alive elsewhere (a platform killed
        without its children, another host on the same Redis) may still run its job, and the reconciler's
        heartbeat check decides about those.
        """
        from rq import Worker

        try:
            alive = Worker.count(queue=dispatch_queue())
        except Exception as exc:  # Redis trouble: the reconciler's sweeps handle it once Redis answers
            self.stderr.write(f"Could not check for running workers ({exc}); the reconciler will recover jobs")
            return
        if alive:
            self.stderr.write(f"{alive} worker(s) of this queue still registered; left to the reconciler")
            return
        report = reconciler.recover_at_start()
        if report.requeued or report.redelivered:
            self.stdout.write(
                f"Recovered from the last run: {len(report.requeued)} job(s) queued again (attempts not counted), "
                f"{len(report.redelivered)} claim(s) sent to the workers again"
            )

    # --- processes -------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], logs: Path) -> None:
        child = Child(name, args, logs / f"{name}.log")
        child.start()
        self.children.append(child)

    def _wait_for_listener(self, name: str, port: int, timeout: float = 30) -> None:
        """Until a child accepts connections on ``port`` (it exited, or the time is up: go on; it is supervised)."""
        child = next(c for c in self.children if c.name == name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping and not (child.proc and child.proc.poll() is not None):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)

    def _wait_until_up(self, host: str, port: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{host}:{port}/health"
        while time.monotonic() < deadline and not self.stopping:
            try:
                requests.get(url, timeout=2)
                return
            except requests.RequestException:
                time.sleep(0.25)
            web = next(c for c in self.children if c.name == "web")
            if web.proc and web.proc.poll() is not None:
                raise CommandError(f"The web server exited at start; see {web.log_path}")
        if not self.stopping:
            raise CommandError(f"The web server did not answer {url} within {timeout:.0f} s")

    def _banner(self, host: str, port: int, admin_password: str, demo: dict, logs: Path) -> None:
        base = f"http://{host}:{port}"
        w = self.stdout.write
        w("")
        w(self.style.SUCCESS(f"ComfyuME is running at {base}/"))
        w(f"  Instructor (Django admin): {base}/admin/   user: admin   password: {admin_password}")
        w(f"  Participant sign-in:       {base}/login/")
        for seat in demo["seats"][:3]:
            w(f"    {seat['username']} / {seat['password']}   one-time link: {seat['join_url']}")
        sheets = [settings.DATA_DIR / f"demo_credentials.{kind}" for kind in ("html", "pdf")]
        if any(sheet.exists() for sheet in sheets):
            w(f"    printable cards with QR codes: {' and '.join(str(s) for s in sheets if s.exists())}")
        if len(demo["seats"]) > 3:
            w(f"    … {len(demo['seats']) - 3} more in {settings.DATA_DIR / 'demo_credentials.json'}")
        if settings.SEAT_FRONTENDS["ROUTING"] == "port":
            ports = sorted(p for p in workshop_ports(demo["workshop"]) if p)
            if ports:
                w(f"  Seat ComfyUIs: http://{host}:{ports[0]}/ … (participants are sent there after signing in)")
        sim = GpuBackend.objects.filter(name="simulator").first()
        if sim:
            w(f"  GPU backend: the ComfyUI simulator (not a GPU) at {sim.url}")
        w(f"  Health: {base}/health   Metrics: {base}/metrics   Logs: {logs}/")
        w("Press Ctrl-C to stop everything.")
        self.stdout.flush()

    def _supervise(self) -> None:
        while not self.stopping:
            self._supervise_redis()
            for child in self.children:
                if self.stopping or child.proc is None or child.proc.poll() is None:
                    continue
                code = child.proc.returncode
                if time.monotonic() - child.started_at > 60:
                    child.restarts = 0
                delay = RESTART_BACKOFF[min(child.restarts, len(RESTART_BACKOFF) - 1)]
                self.stderr.write(f"{child.name} exited with {code}; restarting in {delay} s (log: {child.log_path})")
                time.sleep(delay)
                if not self.stopping:
                    child.restarts += 1
                    child.start()
            time.sleep(0.5)

    def _supervise_redis(self) -> None:
        """Restart the embedded Redis when it exits, on the same socket and directory (``poll`` reaps it).

        Nothing is lost with it that matters: claims whose dispatch task it held are enqueued again by the
        reconciler, and every process reconnects. A paused Redis (SIGSTOP) is alive: it is waited for.
        """
        proc = self.redis_proc
        if proc is None or proc.poll() is None:
            return
        now = time.monotonic()
        if self.redis_down_since is None:
            self.redis_down_since = now
            self.stderr.write(f"The embedded Redis exited with {proc.returncode}; restarting it")
        delay = REDIS_RESTART_BACKOFF[min(self.redis_restarts, len(REDIS_RESTART_BACKOFF) - 1)]
        if now - self.redis_down_since < delay:
            return
        self.redis_restarts += 1
        try:
            self.redis_proc = embedded_redis.start(settings.EMBEDDED_REDIS_DIR)
        except RuntimeError as exc:
            self.stderr.write(f"The embedded Redis did not start again: {exc}")
            return
        self.stdout.write(f"The embedded Redis is back after {now - self.redis_down_since:.1f} s")
        self.redis_down_since = None

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def _shutdown(self) -> None:
        """Stop in the order that loses nothing: the processes that take new work (web, seat frontends, reconciler)
        first; then the workers, each handing its running job back to the queue (attempt not counted) before it
        exits; then the GPU simulator they were talking to; Redis last."""
        self.stopping = True
        if self.children:
            self.stdout.write("Stopping…")
        workers = [c for c in self.children if c.name.startswith("worker-")]
        last = [c for c in self.children if c.name == "simulator"]
        first = [c for c in self.children if c not in workers and c not in last]
        for group, seconds in ((first, 10), (workers, HAND_BACK_SECONDS), (last, 10)):
            for child in reversed(group):
                child.stop()
            deadline = time.monotonic() + seconds
            for child in group:
                child.wait_or_kill(deadline)
        embedded_redis.stop(self.redis_proc)
        if self.children:
            self.stdout.write("Stopped every process ComfyuME started.")
