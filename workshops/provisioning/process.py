"""The ``process`` driver: each seat's frontend is a local process (``python -m workshops.seat_frontend``).

Used by ``make run`` and single-host installs. A process is started with only the environment it needs
(no database URL, no secret key) and its output appended to ``<data>/logs/<name>.log``. Its pid is kept in
the seat's directory, so a restarted supervisor still finds, watches and stops the processes it started, and
next to it the settings it was started with (its token aside), so a process that outlived a platform started
since on another address is noticed as stale.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import FrontendStatus, ProvisioningError, SeatSpec, changed

BASE_DIR = Path(__file__).resolve().parent.parent.parent
LOG_ROTATE_BYTES = 5 * 1024 * 1024
_PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own dead child not yet reaped) is not alive.
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def _is_seat_frontend(pid: int) -> bool:
    """A recorded pid may have been reused by an unrelated process after a reboot or a crash."""
    try:
        return b"workshops.seat_frontend" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (not Linux): trust the pid


class ProcessDriver:
    name = "process"

    def __init__(self, data_dir: Path, *, host: str = "127.0.0.1", frontends_dir: Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.frontends_dir = frontends_dir

    def seat_dir(self, spec: SeatSpec) -> Path:
        return self.data_dir / spec.workshop / spec.label

    def log_path(self, spec: SeatSpec) -> Path:
        return self.data_dir / "logs" / f"{spec.name}.log"

    def _pid_file(self, spec: SeatSpec) -> Path:
        return self.seat_dir(spec) / "frontend.pid"

    def _settings_file(self, spec: SeatSpec) -> Path:
        return self.seat_dir(spec) / "frontend.settings.json"

    def _settings(self, spec: SeatSpec) -> dict[str, str]:
        """The environment a process started from ``spec`` gets, less the token and what the host passes on."""
        return {
            **spec.settings(),
            "COMFYUME_SEAT_HOST": self.host,
            "COMFYUME_SEAT_PORT": str(spec.port),
            "COMFYUME_SEAT_DATA_DIR": str(self.seat_dir(spec)),
            **({"COMFYUME_FRONTENDS_DIR": str(self.frontends_dir)} if self.frontends_dir else {}),
        }

    def _stale(self, spec: SeatSpec) -> str:
        try:
            running = json.loads(self._settings_file(spec).read_text())
        except (OSError, ValueError):
            return "settings not recorded"  # started by an earlier version: restarting it once is harmless
        if not isinstance(running, dict):
            return "settings not recorded"
        return ", ".join(changed(running, self._settings(spec)))

    def _pid(self, spec: SeatSpec) -> int | None:
        try:
            pid = int(self._pid_file(spec).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) and _is_seat_frontend(pid) else None

    def status(self, spec: SeatSpec) -> FrontendStatus:
        pid = self._pid(spec)
        if pid is None:
            gone = self._pid_file(spec).exists()  # started and not stopped since: it exited by itself
            return FrontendStatus(running=False, detail=self._last_words(spec) if gone else "not running")
        return FrontendStatus(
            running=True, address=f"{self.host}:{spec.port}", detail=f"pid {pid}", stale=self._stale(spec)
        )

    def _last_words(self, spec: SeatSpec) -> str:
        """Why a process exited, for the admin and the participant: the last line of its log (its error)."""
        try:
            with open(self.log_path(spec), "rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
                lines = [line for line in log.read().decode(errors="replace").splitlines() if line.strip()]
        except OSError:
            lines = []
        return f"exited; its log ends: {lines[-1].strip()[:300]}" if lines else "exited"

    def start(self, spec: SeatSpec) -> FrontendStatus:
        current = self.status(spec)
        if current.running:
            return current
        if spec.port is None:
            raise ProvisioningError(f"{spec.name} has no port allocated.", permanent=True)
        seat_dir = self.seat_dir(spec)
        seat_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path(spec)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if log_path.exists() and log_path.stat().st_size > LOG_ROTATE_BYTES:
            log_path.replace(log_path.with_suffix(".log.1"))
        settings = self._settings(spec)
        env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
        env.update({**spec.env, **settings, "PYTHONUNBUFFERED": "1"})
        # Written before the pid file: a process found running always has its settings next to it.
        self._settings_file(spec).write_text(json.dumps(settings, indent=1, sort_keys=True))
        with open(log_path, "ab") as log:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "workshops.seat_frontend"],
                    cwd=BASE_DIR,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ProvisioningError(f"Could not start {spec.name}: {exc}") from exc
        self._pid_file(spec).write_text(str(proc.pid))
        return FrontendStatus(running=True, address=f"{self.host}:{spec.port}", detail=f"pid {proc.pid}")

    def stop(self, spec: SeatSpec, timeout: float = 5.0) -> None:
        pid = self._pid(spec)
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                # Gone before it returns: a start that follows at once needs the port free.
                deadline = time.monotonic() + 1
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
        self._pid_file(spec).unlink(missing_ok=True)

    def reset(self, spec: SeatSpec) -> None:
        """Move the seat's data aside (``<data>/trash/``) rather than deleting it: a reset by mistake can be undone."""
        seat_dir = self.seat_dir(spec)
        if not seat_dir.exists():
            return
        trash = self.data_dir / "trash" / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(seat_dir), str(trash))
