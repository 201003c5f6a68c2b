"""Object stores behind one small interface: a local directory, or Cloudflare R2 (storage/r2.py).

Keys are relative paths like ``workshops/<slug>/<seat>/<prompt_id>/<file>``; a store never lets a key
escape its root. Both stores hash what they write as it streams, so the sha256 recorded for an Artifact is
always of the bytes that were actually stored.

The GPU worker uploads its outputs itself (docs/GPU_WORKER.md): :meth:`ObjectStore.upload_target` says where
(a presigned PUT or multipart upload on R2; ``None`` means "to the hub", which then calls :meth:`put`), and
:meth:`ObjectStore.verify` checks what arrived before an Artifact is recorded.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol

from django.conf import settings

# Reading a stored file back to hash it: large enough that a 200 MB video is a few hundred reads.
HASH_CHUNK = 1024 * 1024


class StorageError(Exception):
    """A key that cannot be stored or read (bad key, missing object, I/O failure, a store misconfigured).

    ``permanent`` says whether retrying the same call can help: False for a network failure or a server's
    5xx, True for a missing object, a wrong checksum or a configuration mistake (the message names the setting).
    """

    def __init__(self, message: str, *, permanent: bool = True) -> None:
        super().__init__(message)
        self.permanent = permanent


class StorageNotConfigured(StorageError):
    """The store cannot be used as configured; the message names the environment variable to fix."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about an object without reading it.

    ``sha256`` is None when the store holds no whole-object sha256 for it (a local file, or a multipart
    upload whose checksum is composite); :meth:`ObjectStore.verify` then reads the object to hash it.
    """

    key: str
    size: int
    sha256: str | None
    content_type: str
    etag: str


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


def check_sha256_hex(value: str) -> str:
    """The sha256 as 64 lowercase hex digits, or StorageError for anything else."""
    text = str(value).strip().lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise StorageError(f"Not a sha256 (64 hex digits): {value!r}")
    return text


def hash_stream(handle: BinaryIO) -> tuple[int, str]:
    """The size and sha256 of everything left in ``handle``, read in chunks (closes it)."""
    digest = hashlib.sha256()
    size = 0
    with handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def compare(key: str, stored: tuple[int, str | None], *, size: int, sha256_hex: str) -> None:
    """Raise StorageError when a stored object's size or sha256 is not the expected one."""
    actual_size, actual_sha = stored
    if actual_size != size:
        raise StorageError(f"The object at {key!r} has {actual_size} bytes, not the {size} announced.")
    if actual_sha is not None and actual_sha != sha256_hex:
        raise StorageError(f"The object at {key!r} does not match its announced sha256 (it was corrupted).")


class ObjectStore(Protocol):
    """What every store offers. Callers type against this, never a concrete store."""

    def put(self, key: str, chunks: Iterable[bytes], *, content_type: str | None = None) -> StoredObject:
        """Store the bytes under ``key`` (replacing any object there), streaming and hashing as they come."""
        ...

    def open(self, key: str) -> BinaryIO:
        """A readable (and seekable) stream of the object; StorageError when there is none."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing object is not an error."""
        ...

    def head(self, key: str) -> ObjectInfo:
        """What the store knows about the object without reading it; StorageError when there is none."""
        ...

    def presigned_get(
        self,
        key: str,
        *,
        filename: str | None = None,
        content_type: str | None = None,
        expires: int | None = None,
        attachment: bool = True,
    ) -> str | None:
        """A URL that downloads the object without the hub, or None when the hub must serve it itself."""
        ...

    def upload_target(self, key: str, *, size: int, sha256_hex: str, content_type: str) -> dict[str, Any] | None:
        """Where a GPU worker uploads a file of this size and checksum, or None for "to the hub"."""
        ...

    def complete_multipart(self, key: str, upload_id: str, parts: list[dict[str, Any]]) -> StoredObject:
        """Join a multipart upload's parts (``[{"number", "etag"}]``) into the object."""
        ...

    def abort_multipart(self, key: str, upload_id: str) -> None: ...

    def verify(self, key: str, *, size: int, sha256_hex: str) -> StoredObject:
        """The object, checked to have this size and sha256; StorageError when it is missing or differs."""
        ...

    def check(self) -> None:
        """Raise StorageError naming the setting to fix when the store cannot be read and written."""
        ...


class LocalStore:
    """Files under one directory; writes are atomic (temp file + rename) and hashed as they stream.

    GPU workers upload to the hub itself (``upload_target`` is None), and downloads are served by the hub's
    views (``presigned_get`` is None).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / safe_key(key)

    def put(self, key: str, chunks: Iterable[bytes], *, content_type: str | None = None) -> StoredObject:
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
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise StorageError(f"No object at {key!r}") from exc

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def head(self, key: str) -> ObjectInfo:
        try:
            stat = self.path(key).stat()
        except FileNotFoundError as exc:
            raise StorageError(f"No object at {key!r}") from exc
        if not self.path(key).is_file():
            raise StorageError(f"No object at {key!r}")
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        # No sha256 is kept beside a file; the etag changes whenever the file is replaced.
        return ObjectInfo(safe_key(key), stat.st_size, None, content_type, f"{stat.st_mtime_ns:x}-{stat.st_size:x}")

    def presigned_get(
        self,
        key: str,
        *,
        filename: str | None = None,
        content_type: str | None = None,
        expires: int | None = None,
        attachment: bool = True,
    ) -> str | None:
        return None

    def upload_target(self, key: str, *, size: int, sha256_hex: str, content_type: str) -> dict[str, Any] | None:
        safe_key(key)
        check_sha256_hex(sha256_hex)
        return None

    def complete_multipart(self, key: str, upload_id: str, parts: list[dict[str, Any]]) -> StoredObject:
        raise StorageError("The local store hands out no multipart uploads; the file goes to the hub in one PUT.")

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Nothing to abort: the local store never starts a multipart upload."""

    def verify(self, key: str, *, size: int, sha256_hex: str) -> StoredObject:
        expected = check_sha256_hex(sha256_hex)
        compare(key, (self.head(key).size, None), size=size, sha256_hex=expected)  # a wrong size needs no read
        stored = hash_stream(self.open(key))
        compare(key, stored, size=size, sha256_hex=expected)
        return StoredObject(key=safe_key(key), size=stored[0], sha256=stored[1])

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".check-"):
                pass
        except OSError as exc:
            raise StorageNotConfigured(
                f"The local store at {self.root} is not writable ({exc.strerror or exc}): "
                "fix its permissions or set COMFYUME_STORAGE_DIR."
            ) from exc


def default_store() -> ObjectStore:
    """The store this installation uses: R2 when ``COMFYUME_STORAGE=r2``, else the local directory."""
    if settings.OBJECT_STORE["KIND"] == "r2":
        from .r2 import R2Store

        return R2Store.from_settings()
    return LocalStore(settings.STORAGE_DIR)
