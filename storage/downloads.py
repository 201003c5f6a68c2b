"""Reading outputs back out of the store: one artifact's bytes (whole or one byte range) and streamed ZIPs.

These are plain iterators and small pure functions; storage/views.py turns them into HTTP responses.
Everything here reads the store in chunks of :data:`CHUNK_SIZE`, one file open at a time, so memory stays flat
however large a workshop's outputs are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import BinaryIO

from zipstream import ZipStream

from .stores import ObjectStore

# Big enough that handing each chunk to the ASGI server (one thread hop per chunk) costs little next to the
# copy, small enough that a few dozen parallel downloads stay within a few MiB each.
CHUNK_SIZE = 256 * 1024

MISSING_NAME = "MISSING.txt"

# Characters that are path separators, reserved on Windows or invisible; they would make an entry climb
# out of its folder or fail to extract on the instructor's laptop.
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')


class RangeNotSatisfiable(Exception):
    """A ``Range`` header naming bytes the file does not have: the answer is 416."""


def parse_single_range(header: str, size: int) -> tuple[int, int] | None:
    """The ``(first, last)`` byte positions (inclusive) that one ``Range: bytes=…`` header asks for.

    Returns None when the header should be ignored and the whole file sent: RFC 9110 §14.2 lets a server
    ignore a Range it does not understand, and browsers only ever ask one range of a video, so a multi-range
    request gets a plain 200 rather than a multipart answer. Raises :class:`RangeNotSatisfiable` for a
    well-formed range that starts past the end of the file.
    """
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    first_text, last_text = first_text.strip(), last_text.strip()
    if not dash or not (first_text.isdigit() or first_text == "") or not (last_text.isdigit() or last_text == ""):
        return None
    if first_text == "":
        if last_text == "":
            return None
        suffix = int(last_text)  # "bytes=-500": the last 500 bytes
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - suffix), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None  # syntactically invalid: ignore it, as the RFC says
    if first >= size:
        raise RangeNotSatisfiable
    return first, min(int(last_text), size - 1) if last_text else size - 1


class FileChunks:
    """The bytes of an open file from ``start``, ``length`` of them (all when None), in chunks.

    A class rather than a generator so that ``close()`` closes the file even when no chunk was ever asked
    for (a HEAD request, a client gone before the first byte).
    """

    def __init__(self, handle: BinaryIO, start: int = 0, length: int | None = None) -> None:
        self.handle = handle
        self.remaining = length
        if start:
            handle.seek(start)

    def __iter__(self) -> FileChunks:
        return self

    def __next__(self) -> bytes:
        if self.remaining is not None and self.remaining <= 0:
            self.close()
            raise StopIteration
        chunk = self.handle.read(CHUNK_SIZE if self.remaining is None else min(CHUNK_SIZE, self.remaining))
        if not chunk:
            self.close()
            raise StopIteration
        if self.remaining is not None:
            self.remaining -= len(chunk)
        return chunk

    def close(self) -> None:
        self.handle.close()


def read_chunks(store: ObjectStore, key: str) -> Iterator[bytes]:
    """The bytes of one stored object, opened on the first ``next()`` rather than when this is called.

    A ZIP of a thousand files queues a thousand of these and must hold one file open at a time.
    """
    chunks = FileChunks(store.open(key))
    try:
        yield from chunks
    finally:
        chunks.close()


def _safe_component(name: str, fallback: str) -> str:
    """One path component for a ZIP entry: no separators, no ``..``, no hidden or reserved names."""
    cleaned = _UNSAFE_CHARS.sub("_", name).strip().lstrip(".").strip()
    return cleaned[:150] or fallback


@dataclass(frozen=True)
class ArchiveItem:
    """One artifact as the ZIP needs it (a plain row: building an archive must not load Job rows)."""

    seat_label: str
    job_number: int
    filename: str
    key: str
    size: int


@dataclass(frozen=True)
class ArchiveEntry:
    """Where an item went in the archive."""

    name: str
    item: ArchiveItem


@dataclass
class Archive:
    """A ZIP ready to stream: its exact length is known before the first byte is sent."""

    stream: ZipStream
    entries: list[ArchiveEntry] = field(default_factory=list)
    missing: list[ArchiveEntry] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.stream)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.stream)


def entry_name(item: ArchiveItem, taken: set[str]) -> str:
    """``<seat>/<job number>-<filename>``, made safe and unique within the archive.

    Two outputs of one job can share a filename (ComfyUI subfolders); the second becomes ``name-2.png``.
    Names are compared case-insensitively because the instructor may unzip on macOS or Windows.
    """
    folder = _safe_component(item.seat_label, "seat")
    filename = _safe_component(item.filename, "output")
    base = f"{folder}/{item.job_number}-{filename}"
    name, n = base, 1
    while name.lower() in taken:
        n += 1
        path = PurePosixPath(base)
        name = str(path.with_name(f"{path.stem}-{n}{path.suffix}"))
    taken.add(name.lower())
    return name


def missing_report(missing: list[ArchiveEntry]) -> str:
    """The text of MISSING.txt: which outputs the archive lacks and where the store should have had them."""
    lines = [
        "These outputs are recorded in ComfyuME but their files were missing from storage when this ZIP",
        "was made, so they are not in it. Each line: the name it would have had, then its storage key.",
        "",
    ]
    lines += [f"{entry.name}\t{entry.item.key}" for entry in missing]
    return "\n".join(lines) + "\n"


def build_archive(items: Iterable[ArchiveItem], store: ObjectStore) -> Archive:
    """A stored (uncompressed) ZIP of the items, with a MISSING.txt listing any whose file is gone.

    Images and videos are compressed already, so storing them costs a few percent of size and lets the
    archive's length be computed up front (``Content-Length``: the browser shows real progress). Whether
    each file exists is checked now, before the first byte goes out, because once streaming has begun the
    length is promised and an entry can no longer be dropped. A file that disappears or changes size after
    this check makes zipstream raise mid-stream: the download then ends short of its Content-Length and the
    browser reports it failed, instead of saving a silently corrupt archive.
    """
    archive = Archive(stream=ZipStream(sized=True))
    taken = {MISSING_NAME.lower()}
    for item in items:
        entry = ArchiveEntry(entry_name(item, taken), item)
        if not store.exists(item.key):
            archive.missing.append(entry)
            continue
        archive.stream.add(read_chunks(store, item.key), entry.name, size=item.size)
        archive.entries.append(entry)
    if archive.missing:
        archive.stream.add(missing_report(archive.missing).encode(), MISSING_NAME)
    return archive
