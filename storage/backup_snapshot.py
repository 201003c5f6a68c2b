"""What a backup reads from the installation: one consistent database snapshot, and the seats' own files.

The database is read inside one transaction so every row agrees with every other (a job and its artifacts,
a seat and its user): ``REPEATABLE READ`` on PostgreSQL; on SQLite a deferred read transaction, which in
WAL mode is a snapshot that does not block writers (the project's own transactions are IMMEDIATE, which
would hold the write lock for the whole dump). The rows are written as a Django fixture (JSON Lines, as
``dumpdata --natural-foreign`` would, keeping microseconds) with natural keys for users' permissions and
groups, so ``loaddata`` loads it into a freshly migrated database of either engine; content types and
permissions are recreated by ``migrate`` and are not dumped.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import os
import platform
import re
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import django
from django.apps import apps
from django.conf import settings
from django.core import serializers
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, models, transaction
from django.db.migrations.recorder import MigrationRecorder

# Not dumped: recreated by migrate (content types, permissions), per-server and short-lived (sessions),
# Django's own admin change log (the platform's audit is workshops.AuditEntry), RQ's admin stub, and the
# backup history itself (it describes the old server's backups, not this one's).
EXCLUDED = ("contenttypes", "auth.permission", "sessions", "admin.logentry", "django_rq", "storage.backuprun")
# A seat directory's runtime files: the process driver's pid file, logs, and half-written temp files.
SKIPPED_NAMES = frozenset({"frontend.pid"})
SKIPPED_SUFFIXES = (".pid", ".log", ".tmp", ".swp")
TEMP_NAME = re.compile(r"(\.tmp-\d+$)|(^\.upload-)|(^\.check-)")


def dumped_models() -> list[type[models.Model]]:
    """Every model whose rows a backup holds (and whose rows make an installation non-empty)."""
    chosen = []
    for model in apps.get_models():
        meta = model._meta
        if meta.app_label in EXCLUDED or meta.label_lower in EXCLUDED:
            continue
        if meta.proxy or not meta.managed:
            continue
        chosen.append(model)
    return chosen


@contextlib.contextmanager
def database_snapshot() -> Iterator[None]:
    """Everything read inside sees the database as of one moment (see the module docstring)."""
    if connection.in_atomic_block:
        # Inside a caller's transaction (a test's), which already fixes what we read; the isolation level
        # can only be set as a transaction's first statement.
        yield
        return
    if connection.vendor == "postgresql":
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield
        return
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("BEGIN DEFERRED")
        try:
            yield
        finally:
            with contextlib.suppress(Exception), connection.cursor() as cursor:
                cursor.execute("ROLLBACK")
        return
    with transaction.atomic():
        yield


class ExactEncoder(DjangoJSONEncoder):
    """Django's fixture encoder keeps only milliseconds of a time; a backup keeps every microsecond."""

    def default(self, o: Any) -> Any:
        if isinstance(o, datetime.datetime | datetime.time):
            text = o.isoformat()
            return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text
        return super().default(o)


def dump_database(path: Path, chosen: list[type[models.Model]]) -> None:
    """Write the rows of ``chosen`` as a gzipped JSON Lines fixture (``loaddata`` reads it back line by line).

    As ``dumpdata --natural-foreign`` does, but with every microsecond of the datetimes: models are ordered so
    that rows referred to by natural key (users, groups) come first; primary keys are kept, so every other
    reference stays as it was.
    """
    ordered = serializers.sort_dependencies([(None, chosen)], allow_cycles=True)

    def rows() -> Iterator[models.Model]:
        for model in ordered:
            yield from model._default_manager.order_by(model._meta.pk.name).iterator(chunk_size=2000)

    with gzip.open(path, "wt", encoding="utf-8") as stream:
        serializers.serialize("jsonl", rows(), stream=stream, use_natural_foreign_keys=True, cls=ExactEncoder)


def migration_state() -> dict[str, list[str]]:
    """The applied migrations per app, as the database records them."""
    applied: dict[str, list[str]] = {}
    for app_label, name in MigrationRecorder(connection).applied_migrations():
        applied.setdefault(app_label, []).append(name)
    return {app: sorted(names) for app, names in sorted(applied.items())}


def app_commit() -> str | None:
    """The git commit of the running code, when it runs from a checkout."""
    try:
        answer = subprocess.run(
            ["git", "-C", str(settings.BASE_DIR), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = answer.stdout.strip()
    return commit if answer.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


def versions() -> dict[str, Any]:
    return {
        "commit": app_commit(),
        "django": django.get_version(),
        "python": platform.python_version(),
        "database": connection.vendor,
    }


@dataclass(frozen=True)
class StoredRef:
    """An object in the store the database points at (an output, or an uploaded image)."""

    key: str
    size: int
    sha256: str


def stored_objects() -> list[StoredRef]:
    """Every object the rows refer to: artifacts, seats' uploads, and the uploads queued jobs carry."""
    from jobs.models import Job

    from .models import Artifact, SeatInput

    found: dict[str, StoredRef] = {}
    for model in (Artifact, SeatInput):
        for key, size, sha256 in model.objects.order_by("pk").values_list("key", "size", "sha256").iterator():
            found.setdefault(key, StoredRef(key, size, sha256))
    for inputs in Job.objects.order_by("pk").values_list("inputs", flat=True).iterator():
        for item in inputs if isinstance(inputs, list) else []:
            if isinstance(item, dict) and isinstance(item.get("key"), str) and item["key"]:
                with contextlib.suppress(TypeError, ValueError):
                    found.setdefault(item["key"], StoredRef(item["key"], int(item["size"]), str(item["sha256"])))
    return list(found.values())


@dataclass
class Snapshot:
    counts: dict[str, int]
    migrations: dict[str, list[str]]
    seats: list[tuple[str, str]]
    stored: list[StoredRef]
    versions: dict[str, Any] = field(default_factory=dict)


def take_snapshot(dump_path: Path) -> Snapshot:
    """Dump the database to ``dump_path`` (gzipped JSON) and read what else the backup needs, all at once."""
    from workshops.models import Seat

    chosen = dumped_models()
    with database_snapshot():
        counts = {model._meta.label_lower: model._default_manager.count() for model in chosen}
        dump_database(dump_path, chosen)
        snapshot = Snapshot(
            counts=counts,
            migrations=migration_state(),
            seats=list(Seat.objects.order_by("workshop__slug", "label").values_list("workshop__slug", "label")),
            stored=stored_objects(),
        )
    snapshot.versions = versions()
    return snapshot


@dataclass(frozen=True)
class SeatFile:
    path: str  # in the backup: seats/<workshop>/<seat>/<relative path>
    source: Path
    size: int


def skipped(name: str) -> bool:
    return name in SKIPPED_NAMES or name.endswith(SKIPPED_SUFFIXES) or bool(TEMP_NAME.search(name))


def seat_files(seats: list[tuple[str, str]]) -> list[SeatFile]:
    """The files in each seat's directory (userdata, uploads, state), without runtime files or symlinks.

    Symlinks are skipped, not followed: a link a participant could place must not carry files from outside
    the seat into the backup (and back onto a new server).
    """
    root = Path(settings.SEAT_FRONTENDS["DATA_DIR"])
    found: list[SeatFile] = []
    for slug, label in seats:
        seat_dir = root / slug / label
        if seat_dir.is_symlink() or not seat_dir.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(seat_dir):
            dirnames[:] = sorted(d for d in dirnames if not TEMP_NAME.search(d))  # a copy being swapped in
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if skipped(name):
                    continue
                try:
                    info = path.lstat()
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(info.st_mode):
                    continue
                relative = path.relative_to(seat_dir).as_posix()
                found.append(SeatFile(f"seats/{slug}/{label}/{relative}", path, info.st_size))
    return found
