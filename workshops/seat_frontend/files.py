"""The seat's own files: userdata (workflows, settings) under ``user/`` and uploaded images under ``input/``.

Every path a browser names is resolved inside its root (symlinks followed) before it is touched, so
``..``, absolute paths and encoded tricks end in a 4xx and nothing outside the seat's directory is read or
written. Answers follow ComfyUI's ``app/user_manager.py`` and ``/upload/image`` exactly where the web
frontend depends on them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .media import ACCEPTED, HEAD_BYTES, MediaType, NameProblem, check_name, check_path, detect, stored_name

SETTINGS_FILE = "comfy.settings.json"
MAX_USERDATA_BYTES = 20 * 1024 * 1024


class FileProblem(Exception):
    """A request about a file that cannot be honoured: ``status`` is the HTTP answer, the text says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def resolve_inside(root: Path, relative: str) -> Path:
    """``root/relative`` if it stays inside ``root`` (after following symlinks), else FileProblem 403.

    A name the filesystem would choke on (NUL, control characters, a part over 255 bytes) is a 400 here,
    before any system call can turn it into a 500."""
    try:
        check_path(relative)
    except NameProblem as exc:
        raise FileProblem(400, str(exc)) from None
    candidate = (root / relative).resolve()
    if candidate != root and root not in candidate.parents:
        raise FileProblem(403, "Invalid path")
    return candidate


@dataclass
class SeatFiles:
    root: Path

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        for sub in ("user", "input", "state"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    @property
    def user_dir(self) -> Path:
        return self.root / "user"

    @property
    def input_dir(self) -> Path:
        return self.root / "input"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    # --- userdata ----------------------------------------------------------------------------------

    def file_info(self, path: Path, base: Path) -> dict[str, Any]:
        stat = path.stat()
        return {
            "path": path.relative_to(base).as_posix(),
            "size": stat.st_size,
            "modified": stat.st_mtime,
            "created": stat.st_ctime,
        }

    def list_dir(self, directory: str, *, recurse: bool, full_info: bool, split: bool) -> list[Any]:
        """``GET /userdata?dir=``: files (not hidden ones, like ComfyUI's glob) relative to ``dir``."""
        if not directory:
            raise FileProblem(400, "Directory not provided")
        base = resolve_inside(self.user_dir, directory)
        if not base.is_dir():
            raise FileProblem(404, "Directory not found")
        found = base.rglob("*") if recurse else base.glob("*")
        files = sorted(
            p for p in found if p.is_file() and not any(part.startswith(".") for part in p.relative_to(base).parts)
        )
        if full_info:
            return [self.file_info(p, base) for p in files]
        relative = [p.relative_to(base).as_posix() for p in files]
        if split:
            return [[r, *r.split("/")] for r in relative]
        return relative

    def user_file(self, name: str) -> Path:
        path = resolve_inside(self.user_dir, name)
        if path == self.user_dir or name.endswith("/"):  # a folder's name is not a file's
            raise FileProblem(400, "Invalid path")
        return path

    def read_user_file(self, name: str) -> Path:
        path = self.user_file(name)
        if not path.is_file():
            raise FileProblem(404, "File not found")
        return path

    def write_user_file(self, name: str, body: bytes, *, overwrite: bool) -> Path:
        if len(body) > MAX_USERDATA_BYTES:
            raise FileProblem(413, f"The file is larger than {MAX_USERDATA_BYTES // (1024 * 1024)} MB.")
        path = self.user_file(name)
        if path.exists() and not overwrite:
            raise FileProblem(409, "File already exists")
        if path.is_dir():
            raise FileProblem(400, "A folder has that name")
        with _in_the_way():
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(path, body)
        return path

    def delete_user_file(self, name: str) -> None:
        path = self.user_file(name)
        if not path.is_file():
            raise FileProblem(404, "File not found")
        path.unlink()

    def move_user_file(self, source: str, dest: str, *, overwrite: bool) -> Path:
        src = self.read_user_file(source)
        target = self.user_file(dest)
        if target.exists() and not overwrite:
            raise FileProblem(409, "File already exists")
        with _in_the_way():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, target)
        return target

    def relative(self, path: Path) -> str:
        return path.relative_to(self.user_dir).as_posix()

    # --- settings ----------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        path = self.user_dir / SETTINGS_FILE
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def update_settings(self, changes: dict[str, Any]) -> None:
        current = self.settings()
        current.update(changes)
        _atomic_write(self.user_dir / SETTINGS_FILE, json.dumps(current, indent=4).encode())

    # --- uploaded images -----------------------------------------------------------------------------

    def input_file(self, filename: str, subfolder: str = "") -> Path:
        try:
            check_name(filename)
        except NameProblem as exc:
            raise FileProblem(400, str(exc)) from None
        folder = resolve_inside(self.input_dir, subfolder) if subfolder else self.input_dir
        return resolve_inside(folder, filename)

    def save_upload(
        self, filename: str, subfolder: str, source: IO[bytes], *, overwrite: bool
    ) -> tuple[str, Path, MediaType, bool]:
        """Store an upload as ComfyUI does: same name + same content is reused, same name + other content
        becomes ``name (1).png`` unless ``overwrite``. Only media ComfyUI loads is kept, judged by its bytes,
        under a name whose extension matches them. Returns the final name, its path, the detected type and
        whether this upload wrote the file (False when an identical one was there already).

        ``source`` is the upload's spooled file, read from where it stands and copied a chunk at a time: a
        50 MB video is never held in memory."""
        start = source.tell()
        media = detect(source.read(HEAD_BYTES))
        source.seek(start)
        if media is None:
            raise FileProblem(400, f"This file cannot be uploaded: only {ACCEPTED} can.")
        try:
            filename = stored_name(filename, media)
        except NameProblem as exc:
            raise FileProblem(400, str(exc)) from None
        if filename.startswith("."):
            raise FileProblem(400, "The file name may not start with a dot.")
        path = self.input_file(filename, subfolder)
        stem, dot, ext = filename.rpartition(".")
        if not dot:
            stem, ext = filename, ""
        digest: str | None = None
        counter = 1
        while path.exists() and not overwrite:
            if digest is None:
                digest = _sha256_stream(source)
                source.seek(start)
            if _sha256_file(path) == digest:
                return filename, path, media, False
            filename = f"{stem} ({counter}){dot}{ext}"
            path = self.input_file(filename, subfolder)
            counter += 1
        with _in_the_way():
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_copy(path, source)
        return filename, path, media, True


def _sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return _sha256_stream(handle)


def _sha256_stream(handle: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(1024 * 1024), b""):
        digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _in_the_way() -> Iterator[None]:
    """A file where a folder of the path must be, or a folder where the file must go, is the participant's
    naming clash (409), not the server's failure."""
    try:
        yield
    except (NotADirectoryError, IsADirectoryError, FileExistsError):
        raise FileProblem(409, "A file or folder of that name is in the way.") from None


def _atomic_copy(path: Path, source: IO[bytes]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as target:
        shutil.copyfileobj(source, target, 1024 * 1024)
    os.replace(tmp, path)


def _atomic_write(path: Path, body: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(body)
    os.replace(tmp, path)
