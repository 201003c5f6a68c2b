"""A backup's manifest (what it holds, with sizes and sha256), progress on stderr, and verification.

``manifest.json`` is written last: a backup folder without one is unfinished and is never listed as a
backup, verified as good or restored. Verification re-reads every file the manifest names from the
destination and compares its size and sha256; it changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO, Protocol

from .backup_destinations import MANIFEST, Destination
from .stores import HASH_CHUNK, StorageError, check_sha256_hex, safe_key

FORMAT = 1
DATABASE_FILE = "database.jsonl.gz"


class BackupError(Exception):
    """A backup, verification or restore that cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Entry:
    """One file in the backup: the database dump, a seat's file or a copied output (``key`` in the store)."""

    path: str
    size: int
    sha256: str
    kind: str  # database | seat | object
    key: str = ""


@dataclass(frozen=True)
class Reference:
    """An output left in R2 rather than copied: restore checks that it is still there, unchanged."""

    key: str
    size: int
    sha256: str


@dataclass
class Manifest:
    backup_id: str
    created_at: str
    finished_at: str
    versions: dict[str, Any]
    migrations: dict[str, list[str]]
    counts: dict[str, int]
    storage_kind: str
    seat_driver: str
    files: list[Entry] = field(default_factory=list)
    references: list[Reference] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    format: int = FORMAT

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    @property
    def rows(self) -> int:
        return sum(self.counts.values())

    def entries(self, kind: str) -> list[Entry]:
        return [entry for entry in self.files if entry.kind == kind]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        """The manifest, checked for shape; BackupError when it is not one this code can read."""
        try:
            data = json.loads(raw)
            if data.get("format") != FORMAT:
                raise BackupError(f"The manifest has format {data.get('format')!r}; this code reads {FORMAT}.")
            files = [Entry(**item) for item in data.pop("files")]
            references = [Reference(**item) for item in data.pop("references")]
            manifest = cls(**data, files=files, references=references)
            for entry in files:
                safe_key(entry.path)
                check_sha256_hex(entry.sha256)
            for ref in references:
                check_sha256_hex(ref.sha256)
        except BackupError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, StorageError) as exc:
            raise BackupError(f"The manifest cannot be read ({exc.__class__.__name__}: {exc}).") from exc
        return manifest


def read_manifest(destination: Destination, backup_id: str) -> Manifest:
    """The manifest of a finished backup; BackupError when the backup is missing or unfinished."""
    if not destination.is_complete(backup_id):
        raise BackupError(
            f"There is no finished backup {backup_id} at {destination.url} (no {MANIFEST}): "
            "see `manage.py backup --list`."
        )
    with destination.open(backup_id, MANIFEST) as handle:
        return Manifest.from_json(handle.read())


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


class TextSink(Protocol):
    """Where progress lines go: sys.stderr, or a management command's ``self.stderr``."""

    def write(self, text: str, /) -> Any: ...

    def flush(self) -> Any: ...


class Progress:
    """Files done / total and bytes on ``stream`` (stderr) at most every ``every`` seconds; ``tick`` is called
    as often with the same figures (a backup run's heartbeat). Both optional: a quiet run reports nothing."""

    def __init__(
        self,
        label: str,
        *,
        stream: TextSink | None = None,
        tick: Callable[[int, int], None] | None = None,
        every: float = 2.0,
    ) -> None:
        self.label = label
        self.stream = stream
        self.tick = tick
        self.every = every
        self.total_files = 0
        self.total_bytes = 0
        self.files = 0
        self.bytes = 0
        self._last = time.monotonic()

    def expect(self, files: int, size: int) -> None:
        self.total_files += files
        self.total_bytes += size

    def add(self, size: int) -> None:
        self.bytes += size
        self._maybe_report()

    def file_done(self) -> None:
        self.files += 1
        self._maybe_report()

    def _maybe_report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        if self.tick is not None:
            self.tick(self.files, self.bytes)
        if self.stream is not None:
            self.stream.write(
                f"{self.label}: {self.files}/{self.total_files} files, "
                f"{human_size(self.bytes)} of {human_size(self.total_bytes)}\n"
            )
            self.stream.flush()

    def finish(self) -> None:
        self._maybe_report(force=True)


def read_chunks(handle: BinaryIO, progress: Progress | None = None) -> Iterator[bytes]:
    """The rest of ``handle`` in chunks (closing it at the end), counted in ``progress``."""
    with handle:
        while chunk := handle.read(HASH_CHUNK):
            if progress is not None:
                progress.add(len(chunk))
            yield chunk


def hash_entry(destination: Destination, backup_id: str, entry: Entry, progress: Progress | None) -> str | None:
    """What is wrong with one file of the backup, or None when its size and sha256 are the manifest's."""
    digest = hashlib.sha256()
    size = 0
    try:
        for chunk in read_chunks(destination.open(backup_id, entry.path), progress):
            digest.update(chunk)
            size += len(chunk)
    except StorageError as exc:
        if "No object" in str(exc):
            return f"missing: {entry.path}"
        return f"unreadable: {entry.path} ({exc})"
    if size != entry.size:
        return f"wrong size: {entry.path} has {size} bytes, the manifest says {entry.size}"
    if digest.hexdigest() != entry.sha256:
        return f"corrupted: {entry.path} does not match its sha256"
    return None


@dataclass
class Verification:
    backup_id: str
    checked: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    manifest: Manifest | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_backup(destination: Destination, backup_id: str, *, progress: Progress | None = None) -> Verification:
    """Re-read every file of the backup and compare it with the manifest. Changes nothing."""
    result = Verification(backup_id)
    try:
        manifest = read_manifest(destination, backup_id)
    except BackupError as exc:
        result.problems.append(str(exc))
        return result
    result.manifest = manifest
    if not manifest.entries("database"):
        result.problems.append(f"the manifest names no database dump ({DATABASE_FILE})")
    if progress is not None:
        progress.expect(len(manifest.files), manifest.total_bytes)
    for entry in manifest.files:
        problem = hash_entry(destination, backup_id, entry, progress)
        if problem:
            result.problems.append(problem)
        result.checked += 1
        result.bytes += entry.size
        if progress is not None:
            progress.file_done()
    if progress is not None:
        progress.finish()
    return result


@dataclass(frozen=True)
class ListedBackup:
    backup_id: str
    complete: bool
    manifest: Manifest | None = None
    problem: str = ""


def list_backups(destination: Destination) -> list[ListedBackup]:
    """Every backup folder at the destination, oldest first, with its manifest when it has one."""
    listed = []
    for backup_id in destination.backup_ids():
        if not destination.is_complete(backup_id):
            listed.append(ListedBackup(backup_id, complete=False))
            continue
        try:
            listed.append(ListedBackup(backup_id, complete=True, manifest=read_manifest(destination, backup_id)))
        except BackupError as exc:
            listed.append(ListedBackup(backup_id, complete=True, problem=str(exc)))
    return listed
