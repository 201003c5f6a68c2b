"""Object stores behind one small interface: the local directory store now, R2 with the serverless path.

Keys are relative paths like ``workshops/<slug>/<seat>/<prompt_id>/<file>``; a store never lets a key
escape its root.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from django.conf import settings


class StorageError(Exception):
    """A key that cannot be stored or read (bad key, missing object, I/O failure)."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str


def safe_key(*parts: str) -> str:
    """Join key parts, refusing anything that would climb out of the store (``..``, absolute paths)."""
    cleaned: list[str] = []
    for part in parts:
        for piece in PurePosixPath(str(part).replace("\\", "/")).parts:
            if piece in ("", ".", "/"):
                continue
            if piece == ".." or "\x00" in piece:
                raise StorageError(f"Refusing an unsafe storage key part: {part!r}")
            cleaned.append(piece)
    if not cleaned:
        raise StorageError("Empty storage key")
    return "/".join(cleaned)


class LocalStore:
    """Files under one directory; writes are atomic (temp file + rename) and hashed as they stream."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / safe_key(key)

    def put(self, key: str, chunks: Iterable[bytes]) -> StoredObject:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return StoredObject(key=safe_key(key), size=size, sha256=digest.hexdigest())

    def open(self, key: str) -> BinaryIO:
        try:
            return self.path(key).open("rb")
        except FileNotFoundError as exc:
            raise StorageError(f"No object at {key!r}") from exc

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


def default_store() -> LocalStore:
    return LocalStore(settings.STORAGE_DIR)
