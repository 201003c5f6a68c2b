"""Where backups go: a directory (``file:///path``) or a bucket (``s3://bucket/prefix``), behind one interface.

A backup is a folder named by its id (``20250301T020000Z``) holding ``database.jsonl.gz``, ``seats/…``,
``objects/…`` and, written last, ``manifest.json``: a folder without a manifest is an unfinished backup.
Files go through the object stores of storage/stores.py, so they are streamed and hashed as they are
written, a local file appears atomically (temp file + rename) and an S3 PUT carries its sha256.

An ``s3://`` destination uses the R2 settings (``COMFYUME_R2_ENDPOINT_URL`` or ``…_ACCOUNT_ID``,
``…_ACCESS_KEY_ID``, ``…_SECRET_ACCESS_KEY``, ``…_REGION``) with the bucket named in the URL, so a backup bucket
beside the outputs bucket needs no other credentials.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from django.conf import settings

from .r2 import R2Config, R2Store
from .stores import LocalStore, ObjectStore, StorageError, StorageNotConfigured, StoredObject, safe_key

MANIFEST = "manifest.json"
ID_FORMAT = "%Y%m%dT%H%M%SZ"
ID_PATTERN = re.compile(r"^\d{8}T\d{6}Z$")
# S3's DeleteObjects takes at most this many keys per request.
DELETE_BATCH = 1000


class BadDestination(StorageError):
    """A destination URL that cannot be used; the message says what to write instead."""


def backup_id_for(moment: datetime) -> str:
    """The id of a backup started at ``moment``: its UTC time, so ids sort as the backups were made."""
    return moment.astimezone(UTC).strftime(ID_FORMAT)


def time_of(backup_id: str) -> datetime | None:
    """When the backup with this id was started, or None for a name that is not a backup id."""
    if not ID_PATTERN.match(backup_id):
        return None
    return datetime.strptime(backup_id, ID_FORMAT).replace(tzinfo=UTC)


def check_id(backup_id: str) -> str:
    if time_of(backup_id) is None:
        raise BadDestination(f"{backup_id!r} is not a backup id (like 20250301T020000Z); see `backup --list`.")
    return backup_id


class Destination:
    """The folders of backups at one place. Subclasses say how to list and remove them."""

    url: str  # as shown to operators and stored on BackupRun: never a secret
    store: ObjectStore

    def _key(self, backup_id: str, path: str) -> str:
        raise NotImplementedError

    def put(self, backup_id: str, path: str, chunks: Iterable[bytes]) -> StoredObject:
        return self.store.put(self._key(backup_id, path), chunks)

    def open(self, backup_id: str, path: str) -> BinaryIO:
        return self.store.open(self._key(backup_id, path))

    def exists(self, backup_id: str, path: str) -> bool:
        return self.store.exists(self._key(backup_id, path))

    def is_complete(self, backup_id: str) -> bool:
        return self.exists(backup_id, MANIFEST)

    def backup_ids(self) -> list[str]:
        """Every backup folder here (complete or not), oldest first."""
        raise NotImplementedError

    def delete_backup(self, backup_id: str) -> None:
        raise NotImplementedError

    def check(self) -> None:
        """Raise StorageError (naming the setting to fix) unless backups can be written here."""
        self.store.check()


class FileDestination(Destination):
    """A directory on this machine (or a mounted disk): ``file:///var/backups/comfyume``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"file://{root}"
        self.store = LocalStore(root)

    def _key(self, backup_id: str, path: str) -> str:
        return safe_key(check_id(backup_id), path)

    def backup_ids(self) -> list[str]:
        try:
            names = [entry.name for entry in os.scandir(self.root) if entry.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []
        return sorted(name for name in names if ID_PATTERN.match(name))

    def delete_backup(self, backup_id: str) -> None:
        shutil.rmtree(self.root / check_id(backup_id), ignore_errors=True)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageNotConfigured(f"Cannot create the backup directory {self.root}: {exc}") from exc
        super().check()


class S3Destination(Destination):
    """A bucket and an optional prefix: ``s3://comfyume-backups/site-a``."""

    def __init__(self, store: R2Store, prefix: str) -> None:
        self.store = self.r2 = store
        self.prefix = prefix
        bucket = store.config.bucket
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"

    def _key(self, backup_id: str, path: str) -> str:
        return safe_key(self.prefix, check_id(backup_id), path) if self.prefix else safe_key(backup_id, path)

    def _folder(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def backup_ids(self) -> list[str]:
        found: list[str] = []
        paginator = self.r2.client.get_paginator("list_objects_v2")
        with self.r2.translated("list the backups in"):
            for page in paginator.paginate(Bucket=self.r2.config.bucket, Prefix=self._folder(), Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    name = str(common["Prefix"])[len(self._folder()) :].rstrip("/")
                    if ID_PATTERN.match(name):
                        found.append(name)
        return sorted(found)

    def delete_backup(self, backup_id: str) -> None:
        folder = f"{self._folder()}{check_id(backup_id)}/"
        bucket = self.r2.config.bucket
        paginator = self.r2.client.get_paginator("list_objects_v2")
        with self.r2.translated("delete the backup", folder):
            for page in paginator.paginate(Bucket=bucket, Prefix=folder):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                for start in range(0, len(keys), DELETE_BATCH):
                    self.r2.client.delete_objects(
                        Bucket=bucket, Delete={"Objects": keys[start : start + DELETE_BATCH], "Quiet": True}
                    )


def open_destination(url: str) -> Destination:
    """The destination a URL names; BadDestination says what is wrong with the URL."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise BadDestination(
            "Put no credentials in the backup URL: an s3:// destination uses COMFYUME_R2_ACCESS_KEY_ID and "
            "COMFYUME_R2_SECRET_ACCESS_KEY."
        )
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise BadDestination(f"A file URL names a local path: file:///var/backups, not {url!r}.")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise BadDestination(f"A file URL needs an absolute path (file:///var/backups), not {url!r}.")
        return FileDestination(Path(path))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise BadDestination(f"An S3 URL names a bucket: s3://bucket/prefix, not {url!r}.")
        prefix = parts.path.strip("/")
        if prefix:
            prefix = safe_key(prefix)
        try:
            config = R2Config.from_settings({**settings.OBJECT_STORE, "BUCKET": parts.netloc})
        except StorageNotConfigured as exc:
            message = str(exc).replace("COMFYUME_STORAGE=r2 needs", "an s3:// backup destination needs")
            raise StorageNotConfigured(f"{message} (it uses the R2 settings for its endpoint and key)") from exc
        return S3Destination(R2Store(config), prefix)
    raise BadDestination(f"A backup destination is file:///path or s3://bucket/prefix, not {url!r}.")
