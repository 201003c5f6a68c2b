"""Backups: the database, every seat's files and the outputs, to a directory or a bucket, verified by sha256.

``manage.py backup`` and the reconciler's schedule (:func:`run_scheduled`) both go through
:func:`perform_backup`: claim the one running :class:`~storage.models.BackupRun`, take a consistent database
snapshot (storage/backup_snapshot.py), copy seat files and outputs, write the manifest last, then apply the
retention policy. Outputs in the local store are copied; outputs in R2 are recorded by reference (key, size,
sha256) unless ``copy_outputs``. Restore lives in storage/backup_restore.py; docs/BACKUP.md is the guide.

Settings (``settings.BACKUP`` when present, else these environment variables): ``COMFYUME_BACKUP_URL``,
``COMFYUME_BACKUP_INTERVAL_HOURS`` (24; 0 = off), ``COMFYUME_BACKUP_KEEP_DAILY`` / ``_WEEKLY`` /
``_MONTHLY`` (5 / 3 / 3). An ``s3://`` destination uses the ``COMFYUME_R2_*`` endpoint and key.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, connections, transaction
from django.utils import timezone

from .backup_destinations import MANIFEST, Destination, backup_id_for, open_destination
from .backup_manifest import DATABASE_FILE, BackupError, Entry, Manifest, Progress, Reference, TextSink, read_chunks
from .backup_snapshot import seat_files, take_snapshot
from .models import BackupRun
from .retention import Retention, prune
from .stores import StorageError, default_store

log = logging.getLogger(__name__)

# A running backup that has shown no progress for this long lost its process (killed, host restarted).
STALE_AFTER = timedelta(minutes=15)
# How often a running backup records its progress (its heartbeat) on its BackupRun row.
HEARTBEAT_EVERY = 30.0
# After a failed scheduled backup, the next try waits this long (or the interval, if shorter).
RETRY_AFTER = timedelta(hours=1)


@dataclass(frozen=True)
class BackupSettings:
    url: str
    interval_hours: float
    retention: Retention


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}.") from None
    if value < 0:
        raise ImproperlyConfigured(f"{name} cannot be negative ({raw}).")
    return value


def backup_settings() -> BackupSettings:
    """``settings.BACKUP`` (URL, INTERVAL_HOURS, KEEP_DAILY, KEEP_WEEKLY, KEEP_MONTHLY) or the environment."""
    conf: dict[str, Any] | None = getattr(settings, "BACKUP", None)
    if conf is None:
        conf = {
            "URL": os.environ.get("COMFYUME_BACKUP_URL", ""),
            "INTERVAL_HOURS": _env_number("COMFYUME_BACKUP_INTERVAL_HOURS", 24),
            "KEEP_DAILY": int(_env_number("COMFYUME_BACKUP_KEEP_DAILY", 5)),
            "KEEP_WEEKLY": int(_env_number("COMFYUME_BACKUP_KEEP_WEEKLY", 3)),
            "KEEP_MONTHLY": int(_env_number("COMFYUME_BACKUP_KEEP_MONTHLY", 3)),
        }
    return BackupSettings(
        url=str(conf.get("URL") or "").strip(),
        interval_hours=float(conf.get("INTERVAL_HOURS", 24)),
        retention=Retention(
            daily=int(conf.get("KEEP_DAILY", 5)),
            weekly=int(conf.get("KEEP_WEEKLY", 3)),
            monthly=int(conf.get("KEEP_MONTHLY", 3)),
        ),
    )


def destination_from(url: str | None) -> Destination:
    """The destination named by ``url``, else by COMFYUME_BACKUP_URL; BackupError when neither is set."""
    url = url or backup_settings().url
    if not url:
        raise BackupError(
            "No backup destination: pass --dest file:///path or s3://bucket/prefix, or set COMFYUME_BACKUP_URL."
        )
    return open_destination(url)


# --- Runs: the lock, the heartbeat, the record ------------------------------------------------------------


class BackupBusy(BackupError):
    """Another backup is running (the one running BackupRun row is taken)."""


def expire_stale(now: datetime) -> int:
    """Mark failed the running backups whose process died (no heartbeat for STALE_AFTER): frees the lock."""
    return BackupRun.objects.filter(status=BackupRun.Status.RUNNING, heartbeat_at__lt=now - STALE_AFTER).update(
        status=BackupRun.Status.FAILED,
        finished_at=now,
        error=f"Interrupted: no progress for {int(STALE_AFTER.total_seconds() // 60)} minutes (its process stopped).",
    )


def claim_run(destination_url: str, trigger: str, now: datetime) -> BackupRun:
    """Create the running BackupRun, or BackupBusy when another backup holds it."""
    expire_stale(now)
    try:
        with transaction.atomic():
            return BackupRun.objects.create(
                destination=destination_url, trigger=trigger, started_at=now, heartbeat_at=now
            )
    except IntegrityError:
        running = BackupRun.objects.filter(status=BackupRun.Status.RUNNING).first()
        since = f" since {running.started_at:%Y-%m-%d %H:%M:%S %Z}" if running else ""
        raise BackupBusy(
            f"Another backup is running{since}. Wait for it; if its process died it is marked failed after "
            f"{int(STALE_AFTER.total_seconds() // 60)} minutes without progress."
        ) from None


def _heartbeat(run: BackupRun) -> Any:
    last = [0.0]

    def tick(files: int, size: int) -> None:
        moment = timezone.now()
        if moment.timestamp() - last[0] < HEARTBEAT_EVERY:
            return
        last[0] = moment.timestamp()
        BackupRun.objects.filter(pk=run.pk, status=BackupRun.Status.RUNNING).update(
            heartbeat_at=moment, object_count=files, byte_count=size
        )

    return tick


# --- Writing a backup -------------------------------------------------------------------------------------


def _free_id(destination: Destination, started: datetime) -> str:
    """The id for a backup started now; one second later while a folder of that name exists."""
    taken = set(destination.backup_ids())
    moment = started
    while backup_id_for(moment) in taken:
        moment += timedelta(seconds=1)
    return backup_id_for(moment)


def write_backup(
    destination: Destination, backup_id: str, *, copy_outputs: bool, progress: Progress, started: datetime
) -> Manifest:
    """Write one backup (database, seat files, outputs, then the manifest) and return its manifest."""
    store = default_store()
    storage_kind = settings.OBJECT_STORE["KIND"]
    with tempfile.TemporaryDirectory(prefix="comfyume-backup-") as tmp:
        dump = Path(tmp) / DATABASE_FILE
        snapshot = take_snapshot(dump)
        files = seat_files(snapshot.seats)
        copied = snapshot.stored if (storage_kind == "local" or copy_outputs) else []
        manifest = Manifest(
            backup_id=backup_id,
            created_at=started.isoformat(),
            finished_at="",
            versions=snapshot.versions,
            migrations=snapshot.migrations,
            counts=snapshot.counts,
            storage_kind=storage_kind,
            seat_driver=settings.SEAT_FRONTENDS["DRIVER"],
            references=[] if copied else [Reference(r.key, r.size, r.sha256) for r in snapshot.stored],
        )
        if manifest.rows == 0:
            manifest.warnings.append(EMPTY_WARNING)
        if manifest.seat_driver == "docker" and snapshot.seats and not files:
            manifest.warnings.append(
                "No seat's saved workflows are in this backup: with the docker driver they are the seat "
                "supervisor's copies (every 5 minutes and at each stop), and none was found. Is run_seat_frontends "
                "running with the same COMFYUME_SEAT_DATA_DIR (docs/BACKUP.md#seats-files-with-the-docker-driver)?"
            )
        progress.expect(
            1 + len(files) + len(copied), dump.stat().st_size + sum(f.size for f in files) + sum(r.size for r in copied)
        )
        stored = destination.put(backup_id, DATABASE_FILE, read_chunks(dump.open("rb"), progress))
        manifest.files.append(Entry(DATABASE_FILE, stored.size, stored.sha256, "database"))
        progress.file_done()
    for seat_file in files:
        try:
            handle = seat_file.source.open("rb")
        except FileNotFoundError:  # deleted by its participant since the folder was listed
            continue
        stored = destination.put(backup_id, seat_file.path, read_chunks(handle, progress))
        manifest.files.append(Entry(seat_file.path, stored.size, stored.sha256, "seat"))
        progress.file_done()
    for ref in copied:
        path = f"objects/{ref.key}"
        try:
            stored = destination.put(backup_id, path, read_chunks(store.open(ref.key), progress))
        except StorageError as exc:
            if not exc.permanent:
                raise
            manifest.warnings.append(f"Not in the store, not backed up: {ref.key} ({exc})")
            continue
        if stored.sha256 != ref.sha256 or stored.size != ref.size:
            manifest.warnings.append(
                f"The stored {ref.key} does not match the sha256 its row recorded: copied as it is."
            )
        manifest.files.append(Entry(path, stored.size, stored.sha256, "object", key=ref.key))
        progress.file_done()
    manifest.finished_at = timezone.now().isoformat()
    # Last, in one atomic write (temp file + rename locally, one PUT on S3): its presence means "finished".
    destination.put(backup_id, MANIFEST, [manifest.to_json()])
    progress.finish()
    return manifest


@dataclass
class BackupResult:
    run: BackupRun
    manifest: Manifest
    pruned: list[str]


def perform_backup(
    destination: Destination,
    *,
    trigger: str = BackupRun.Trigger.COMMAND,
    copy_outputs: bool = False,
    retention: Retention | None = None,
    stream: TextSink | None = None,
    run: BackupRun | None = None,
) -> BackupResult:
    """Claim the run (unless given one), write the backup, record how it ended, then prune.

    Any failure is recorded on the run (status failed, the reason) and raised again. A failure to prune is
    a warning on a successful run, never a failed backup.
    """
    started = timezone.now()
    if run is None:
        run = claim_run(destination.url, trigger, started)
    backup_id = ""
    try:
        destination.check()
        backup_id = _free_id(destination, started)
        BackupRun.objects.filter(pk=run.pk).update(backup_id=backup_id)
        run.backup_id = backup_id
        progress = Progress(f"backup {backup_id}", stream=stream, tick=_heartbeat(run))
        manifest = write_backup(destination, backup_id, copy_outputs=copy_outputs, progress=progress, started=started)
    except BaseException as exc:
        reason = f"{exc.__class__.__name__}: {exc}" if not isinstance(exc, StorageError | BackupError) else str(exc)
        run.finish(BackupRun.Status.FAILED, error=reason[:5000] or exc.__class__.__name__)
        log.error("Backup to %s failed: %s", destination.url, reason)
        if backup_id:
            _discard(destination, backup_id)
        raise
    warnings = list(manifest.warnings)
    pruned: list[str] = []
    try:
        pruned = prune(destination, retention or backup_settings().retention, protect={backup_id})
    except (StorageError, OSError) as exc:
        warnings.append(f"Pruning old backups failed: {exc}")
    run.finish(
        BackupRun.Status.SUCCEEDED,
        object_count=len(manifest.files) + 1,
        byte_count=manifest.total_bytes + len(manifest.to_json()),
        reference_count=len(manifest.references),
        warnings="\n".join(warnings),
    )
    for warning in warnings:
        log.warning("Backup %s: %s", backup_id, warning)
    return BackupResult(run, manifest, pruned)


def _discard(destination: Destination, backup_id: str) -> None:
    """Remove what a failed run wrote (best effort: the destination may be the thing that failed)."""
    try:
        if not destination.is_complete(backup_id):
            destination.delete_backup(backup_id)
    except (StorageError, OSError) as exc:
        log.warning("Could not remove the unfinished backup %s at %s: %s", backup_id, destination.url, exc)


# --- Health and the schedule ------------------------------------------------------------------------------


EMPTY_WARNING = "The database has no rows: this backup is empty."


def health(now: datetime | None = None) -> dict[str, Any]:
    """For /health and /metrics: when the last backup succeeded, how old it is, and the last failure.

    ``status``: ``ok``; ``stale`` (no success within twice the interval, 24 h when the schedule is off);
    ``failing`` (the newest finished run failed); ``empty`` (the newest success holds no database rows);
    ``never`` (runs, or a schedule, but no success yet); ``off`` (no schedule and no backup ever run: the
    operator chose no backups, which is not a failing backup).
    """
    now = now or timezone.now()
    conf = backup_settings()
    done = BackupRun.objects.exclude(finished_at=None)
    success = done.filter(status=BackupRun.Status.SUCCEEDED).order_by("-finished_at").first()
    failure = done.filter(status=BackupRun.Status.FAILED).order_by("-finished_at").first()
    running = BackupRun.objects.filter(status=BackupRun.Status.RUNNING).exists()
    scheduled = bool(conf.url) and conf.interval_hours > 0
    age = (now - success.finished_at).total_seconds() if success and success.finished_at else None
    expected_hours = conf.interval_hours if conf.interval_hours > 0 else 24
    if not scheduled and not (success or failure or running):
        status = "off"
    elif failure and failure.finished_at and (not success or failure.finished_at > (success.finished_at or now)):
        status = "failing"
    elif age is None:
        status = "never"
    elif age > 2 * expected_hours * 3600:
        status = "stale"
    elif success and EMPTY_WARNING in success.warnings:
        status = "empty"  # it succeeded, but holds no database rows: as bad as none
    else:
        status = "ok"
    return {
        "status": status,
        "scheduled": scheduled,
        "running": running,
        "last_success": success.finished_at.isoformat() if success and success.finished_at else None,
        "last_success_timestamp": success.finished_at.timestamp() if success and success.finished_at else None,
        "age_seconds": round(age, 1) if age is not None else None,
        "last_backup_id": success.backup_id if success else None,
        "last_failure": (
            {"at": failure.finished_at.isoformat(), "error": failure.error[:300]}
            if failure and failure.finished_at
            else None
        ),
    }


def _due(now: datetime, conf: BackupSettings, *, exclude: int | None = None) -> bool:
    runs = BackupRun.objects.exclude(pk=exclude) if exclude else BackupRun.objects.all()
    success = runs.filter(status=BackupRun.Status.SUCCEEDED).order_by("-started_at").values("started_at").first()
    if success and now - success["started_at"] < timedelta(hours=conf.interval_hours):
        return False
    failure = runs.filter(status=BackupRun.Status.FAILED).order_by("-started_at").values("started_at").first()
    retry = min(RETRY_AFTER, timedelta(hours=conf.interval_hours))
    if failure and (not success or failure["started_at"] > success["started_at"]):
        return now - failure["started_at"] >= retry
    return True


def run_scheduled(now: datetime) -> threading.Thread | None:
    """Start a backup in a background thread when one is due; the reconciler calls this on every sweep.

    Due: a destination is set, ``COMFYUME_BACKUP_INTERVAL_HOURS`` > 0, the last success started longer ago
    than that, and the last failure (if newer) longer ago than an hour. The running BackupRun row is the
    lock: of two reconcilers only one creates it, and the other returns None. The backup runs in a daemon
    thread so the sweep goes on at once (a backup of many GB takes minutes); if the reconciler stops
    meanwhile the run is marked failed after STALE_AFTER and retried. Returns the thread (tests join it).
    """
    conf = backup_settings()
    if not conf.url or conf.interval_hours <= 0:
        return None
    running = BackupRun.objects.filter(status=BackupRun.Status.RUNNING).values("heartbeat_at").first()
    if running is not None:
        if now - running["heartbeat_at"] < STALE_AFTER:
            return None
        expire_stale(now)
    if not _due(now, conf):
        return None
    try:
        run = claim_run(_display_url(conf.url), BackupRun.Trigger.SCHEDULE, now)
    except BackupBusy:
        return None
    # Checked again under the lock: another reconciler may have finished a backup since the check above.
    if not _due(now, conf, exclude=run.pk):
        BackupRun.objects.filter(pk=run.pk).delete()
        return None
    thread = threading.Thread(target=_scheduled_backup, args=(run.pk, conf), name="comfyume-backup", daemon=True)
    thread.start()
    return thread


def _display_url(url: str) -> str:
    try:
        return open_destination(url).url
    except (StorageError, ValueError):
        return url.split("@")[-1][:500]


def _scheduled_backup(run_id: int, conf: BackupSettings) -> None:
    try:
        run = BackupRun.objects.get(pk=run_id)
        try:
            destination = open_destination(conf.url)
        except StorageError as exc:
            run.finish(BackupRun.Status.FAILED, error=str(exc))
            log.error("Scheduled backup: %s", exc)
            return
        result = perform_backup(destination, trigger=BackupRun.Trigger.SCHEDULE, retention=conf.retention, run=run)
        log.info(
            "Scheduled backup %s: %d files, %d bytes, %d by reference",
            result.manifest.backup_id,
            result.run.object_count,
            result.run.byte_count,
            result.run.reference_count,
        )
    except Exception:
        log.exception("Scheduled backup failed")
    finally:
        connections.close_all()  # this thread's own connection
