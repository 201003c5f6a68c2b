"""Restore a backup onto an empty installation: verify, migrate, files and outputs, then the database.

Order matters. Nothing is touched until the whole backup has been re-read and matches its manifest, the
backup's schema is one this code can load, and the installation is empty. Then the schema is migrated, seat
files and copied outputs are written (a file already there with the same content is fine, so a restore
that stopped half-way can be run again), and the database is loaded last in one transaction: the database
is what makes an installation non-empty, so it is filled only when everything else is in place.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.models import F

from workshops.models import Seat, SeatFrontend

from .backup_destinations import Destination
from .backup_manifest import (
    DATABASE_FILE,
    BackupError,
    Entry,
    Manifest,
    Progress,
    Reference,
    TextSink,
    read_chunks,
    verify_backup,
)
from .backup_snapshot import dumped_models
from .stores import HASH_CHUNK, StorageError, default_store

EMPTY_MEANS = (
    "An empty installation has no row in any table a backup restores: no users or groups, workshops, seats, "
    "jobs, GPU backends, workflow templates, outputs or uploads (content types, permissions and sessions do "
    "not count)."
)


def occupied() -> dict[str, int]:
    """Rows per model in the tables a restore would fill (tables not created yet count as empty)."""
    existing = set(connection.introspection.table_names())
    counts = {}
    for model in dumped_models():
        if model._meta.db_table in existing:
            count = model._default_manager.count()
            if count:
                counts[model._meta.label_lower] = count
    return counts


def schema_problems(manifest: Manifest) -> tuple[list[str], list[str]]:
    """(refusals, warnings) comparing the backup's applied migrations with this code's migrations."""
    executor = MigrationExecutor(connection)
    known = set(executor.loader.disk_migrations)
    unknown = sorted(
        f"{app}.{name}" for app, names in manifest.migrations.items() for name in names if (app, name) not in known
    )
    refusals, warnings = [], []
    if unknown:
        commit = manifest.versions.get("commit") or "unknown"
        refusals.append(
            f"The backup was made by a newer version of ComfyuME (commit {commit}): its database has migrations "
            f"this code does not have ({', '.join(unknown[:10])}). Run the restore with that version or a newer one."
        )
    applied = {(app, name) for app, names in manifest.migrations.items() for name in names}
    newer = sorted(
        f"{app}.{name}"
        for app, name in known
        if (app, name) not in applied and app in {m._meta.app_label for m in dumped_models()}
    )
    if newer:
        warnings.append(
            "This code has migrations the backup's database had not applied "
            f"({', '.join(newer[:10])}): the rows are loaded into the newer schema, new fields take their defaults."
        )
    return refusals, warnings


def pending_migrations() -> int:
    executor = MigrationExecutor(connection)
    return len(executor.migration_plan(executor.loader.graph.leaf_nodes()))


def seat_target(entry: Entry) -> Path:
    """Where a seat file of the backup goes: ``<COMFYUME_SEAT_DATA_DIR>/<workshop>/<seat>/<path>``."""
    parts = entry.path.split("/")
    if len(parts) < 4 or parts[0] != "seats":
        raise BackupError(f"The manifest names a seat file outside seats/<workshop>/<seat>/: {entry.path!r}")
    return Path(settings.SEAT_FRONTENDS["DATA_DIR"]).joinpath(*parts[1:])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class RestorePlan:
    """What a restore does (or, with --dry-run, would do) and what it found."""

    manifest: Manifest
    pending_migrations: int = 0
    seat_files: list[Entry] = field(default_factory=list)
    seat_files_present: int = 0
    objects: list[Entry] = field(default_factory=list)
    objects_present: int = 0
    references: list[Reference] = field(default_factory=list)
    missing_references: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    done: bool = False


def plan_restore(source: Destination, backup_id: str, *, progress: Progress | None = None) -> RestorePlan:
    """Verify the backup and check the installation; BackupError says why a restore must not go on."""
    verification = verify_backup(source, backup_id, progress=progress)
    if not verification.ok or verification.manifest is None:
        listed = "\n".join(f"  - {problem}" for problem in verification.problems[:50])
        more = len(verification.problems) - 50
        raise BackupError(
            f"Backup {backup_id} at {source.url} fails verification; nothing was restored:\n{listed}"
            + (f"\n  … and {more} more" if more > 0 else "")
        )
    manifest = verification.manifest
    refusals, warnings = schema_problems(manifest)
    if refusals:
        raise BackupError(" ".join(refusals))
    rows = occupied()
    if rows:
        found = ", ".join(f"{count} {label}" for label, count in sorted(rows.items()))
        raise BackupError(
            f"This installation is not empty ({found}), so nothing was restored. {EMPTY_MEANS} Restore onto a "
            "fresh database (PostgreSQL: a new database; SQLite: move the file away) before anything else runs "
            "on it: not `make run`, which creates a demo workshop and an admin."
        )
    plan = RestorePlan(manifest, pending_migrations=pending_migrations(), warnings=[*manifest.warnings, *warnings])
    conflicts = []
    for entry in manifest.entries("seat"):
        target = seat_target(entry)
        if target.is_symlink() or (target.exists() and not target.is_file()):
            conflicts.append(f"{target} exists and is not a file")
        elif target.exists():
            if file_sha256(target) == entry.sha256:
                plan.seat_files_present += 1
                continue
            conflicts.append(f"{target} exists with other content")
        plan.seat_files.append(entry)
    store = default_store()
    for entry in manifest.entries("object"):
        if store.exists(entry.key):
            try:
                store.verify(entry.key, size=entry.size, sha256_hex=entry.sha256)
                plan.objects_present += 1
                continue
            except StorageError:
                conflicts.append(f"the store already holds {entry.key} with other content")
        plan.objects.append(entry)
    if conflicts:
        listed = "\n".join(f"  - {conflict}" for conflict in conflicts[:50])
        raise BackupError(
            f"Files the backup would write are already there with other content; nothing was restored. Move "
            f"them away (or restore onto empty seat and storage directories):\n{listed}"
        )
    plan.references = list(manifest.references)
    return plan


def _write_file(target: Path, chunks: Iterable[bytes], entry: Entry) -> None:
    """Stream a backup file to ``target`` atomically (temp file + rename), checking its sha256 on the way."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.restore-")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                digest.update(chunk)
        if digest.hexdigest() != entry.sha256:
            raise BackupError(f"{entry.path} changed at the source during the restore (sha256 differs); run it again.")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _reset_runtime_state() -> None:
    """Seat frontends ran on the old server: they are stopped here, and no seat token from there works."""
    SeatFrontend.objects.update(
        state=SeatFrontend.State.STOPPED,
        address="",
        started_at=None,
        restart_done=F("restart_requested"),
        reset_done=F("reset_requested"),
    )
    Seat.objects.update(token_hash=None)


def restore_backup(
    source: Destination, backup_id: str, *, dry_run: bool = False, stream: TextSink | None = None
) -> RestorePlan:
    """Restore ``backup_id`` from ``source`` (see the module docstring); with ``dry_run`` only plan it."""
    plan = plan_restore(source, backup_id, progress=Progress(f"verify {backup_id}", stream=stream))
    if dry_run:
        return plan
    manifest = plan.manifest
    if plan.pending_migrations:
        call_command("migrate", interactive=False, verbosity=0)
    progress = Progress(f"restore {backup_id}", stream=stream)
    progress.expect(
        len(plan.objects) + len(plan.seat_files) + 1,
        sum(e.size for e in plan.objects) + sum(e.size for e in plan.seat_files) + manifest.entries("database")[0].size,
    )
    store = default_store()
    for entry in plan.objects:
        stored = store.put(
            entry.key,
            read_chunks(source.open(backup_id, entry.path), progress),
            content_type=mimetypes.guess_type(entry.key)[0],
        )
        if stored.sha256 != entry.sha256:
            raise BackupError(f"{entry.path} changed at the source during the restore (sha256 differs); run it again.")
        progress.file_done()
    for entry in plan.seat_files:
        _write_file(seat_target(entry), read_chunks(source.open(backup_id, entry.path), progress), entry)
        progress.file_done()
    database = manifest.entries("database")[0]
    with tempfile.TemporaryDirectory(prefix="comfyume-restore-") as tmp:
        dump = Path(tmp) / DATABASE_FILE
        _write_file(dump, read_chunks(source.open(backup_id, database.path), progress), database)
        with transaction.atomic():
            call_command("loaddata", str(dump), verbosity=0)
            _reset_runtime_state()
    progress.file_done()
    progress.finish()
    for ref in plan.references:
        try:
            store.verify(ref.key, size=ref.size, sha256_hex=ref.sha256)
        except StorageError as exc:
            plan.missing_references.append(f"{ref.key}: {exc}")
    plan.done = True
    return plan


def next_steps(plan: RestorePlan) -> list[str]:
    """What the operator does after a restore, as commands that exist."""
    steps = [
        "Start the platform as before: the web, worker, `manage.py run_reconciler` and "
        "`manage.py run_seat_frontends` processes (docs/OPERATIONS.md); on one machine `python manage.py "
        "run_platform`, which also adds its demo workshop and an `admin` account when they are missing.",
        "Seat frontends start by themselves once the seat supervisor runs: each gets a fresh token at its start "
        "(tokens from the old server no longer work). By hand: "
        "`python manage.py seat_frontends start --workshop SLUG`, and `… status --workshop SLUG` to watch them.",
        "Participants and instructors sign in again with their old passwords (sessions are not restored).",
        "Jobs that were queued or running when the backup was made are queued again or failed with a reason by "
        "the reconciler.",
    ]
    if settings.SEAT_FRONTENDS["DRIVER"] == "docker":
        steps.append(
            "Docker driver: each seat's saved workflows are restored into "
            f"{settings.SEAT_FRONTENDS['DATA_DIR']}; a seat whose volume is new starts with them (run the seat "
            "supervisor with that same folder)."
        )
    if settings.SEAT_FRONTENDS["ROUTING"] == "path":
        steps.append("Render the nginx site again for this server: `python manage.py render_nginx --check --output …`.")
    steps.append("Set COMFYUME_BACKUP_URL on this server and run `python manage.py backup` to start its own backups.")
    return steps
