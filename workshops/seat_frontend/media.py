"""What a participant may upload and how a seat's or the hub's files may be served: one rule for both.

An upload is accepted only when its first bytes are an image, video or audio format ComfyUI's loaders open
(LoadImage through Pillow; LoadVideo and LoadAudio through PyAV). Its name and the browser's Content-Type
are never believed: a PNG named ``poly.html`` is stored as ``poly.png``. Serving follows the bytes (or the
type recorded for them) at the time of serving, so a file that reached a disk some other way is safe too:
only the media types below are shown inline, always with ``nosniff``; everything else (SVG, HTML, PDF, text,
unknown) is an attachment of type ``application/octet-stream`` under a sandboxing CSP.

Standard library only: the seat frontend's image copies only this package, and the hub imports it too.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from urllib.parse import quote

# Enough first bytes to tell every format below apart (an MP4's brand sits at 8..12, WebM's doctype later).
HEAD_BYTES = 64
# One path component, in bytes of UTF-8: what Linux (ext4, overlayfs) and S3 keys allow.
MAX_NAME_BYTES = 255
MAX_PATH_CHARS = 1024
OCTET_STREAM = "application/octet-stream"
# Opened on its own (not inside <img>/<video>), a file may not run script, load anything or be framed.
SANDBOX_CSP = "default-src 'none'; img-src 'self'; media-src 'self'; frame-ancestors 'none'; sandbox"


@dataclass(frozen=True)
class MediaType:
    """A format ComfyUI loads: its served type, its family and its extensions (the canonical one first)."""

    content_type: str
    family: str  # "image", "video" or "audio"
    extensions: tuple[str, ...]

    @property
    def extension(self) -> str:
        return self.extensions[0]


PNG = MediaType("image/png", "image", ("png",))
JPEG = MediaType("image/jpeg", "image", ("jpg", "jpeg", "jfif"))
GIF = MediaType("image/gif", "image", ("gif",))
WEBP = MediaType("image/webp", "image", ("webp",))
BMP = MediaType("image/bmp", "image", ("bmp",))
TIFF = MediaType("image/tiff", "image", ("tiff", "tif"))
AVIF = MediaType("image/avif", "image", ("avif",))
MP4 = MediaType("video/mp4", "video", ("mp4", "m4v"))
MOV = MediaType("video/quicktime", "video", ("mov",))
WEBM = MediaType("video/webm", "video", ("webm",))
MKV = MediaType("video/x-matroska", "video", ("mkv",))
AVI = MediaType("video/x-msvideo", "video", ("avi",))
WAV = MediaType("audio/wav", "audio", ("wav",))
MP3 = MediaType("audio/mpeg", "audio", ("mp3",))
FLAC = MediaType("audio/flac", "audio", ("flac",))
OGG = MediaType("audio/ogg", "audio", ("ogg", "oga", "opus"))
M4A = MediaType("audio/mp4", "audio", ("m4a",))
AAC = MediaType("audio/aac", "audio", ("aac",))

MEDIA_TYPES = (PNG, JPEG, GIF, WEBP, BMP, TIFF, AVIF, MP4, MOV, WEBM, MKV, AVI, WAV, MP3, FLAC, OGG, M4A, AAC)
_BY_CONTENT_TYPE = {m.content_type: m for m in MEDIA_TYPES} | {
    # Other names the same formats go by (ComfyUI, browsers and Python's mimetypes disagree).
    "image/jpg": JPEG,
    "image/x-ms-bmp": BMP,
    "audio/x-wav": WAV,
    "audio/wave": WAV,
    "audio/mp3": MP3,
    "audio/x-flac": FLAC,
    "audio/x-m4a": M4A,
    "video/avi": AVI,
}
_BY_EXTENSION = {ext: m for m in MEDIA_TYPES for ext in m.extensions}
ACCEPTED = (
    "images (PNG, JPEG, WebP, GIF, BMP, TIFF, AVIF), videos (MP4, MOV, WebM, MKV, AVI) "
    "and audio (WAV, MP3, FLAC, OGG, M4A, AAC)"
)

_SIMPLE = (
    (b"\x89PNG\r\n\x1a\n", PNG),
    (b"\xff\xd8\xff", JPEG),
    (b"GIF87a", GIF),
    (b"GIF89a", GIF),
    (b"II*\x00", TIFF),
    (b"MM\x00*", TIFF),
    (b"fLaC", FLAC),
    (b"OggS", OGG),
)
# A BMP's second header says how long it is: one of these sizes (BITMAPCOREHEADER … BITMAPV5HEADER).
_BMP_INFO_SIZES = {bytes([n]) for n in (12, 16, 40, 52, 56, 64, 108, 124)}
_RIFF = {b"WEBP": WEBP, b"WAVE": WAV, b"AVI ": AVI}
_FTYP_BRANDS = {b"qt  ": MOV, b"avif": AVIF, b"avis": AVIF, b"M4A ": M4A, b"M4B ": M4A}


# Right-to-left overrides and isolates make "gnp.exe" look like "exe.png".
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class NameProblem(ValueError):
    """A file or folder name that cannot be stored; the message says why, for the participant."""


def detect(head: bytes) -> MediaType | None:
    """The format of a file from its first ``HEAD_BYTES`` bytes, or None if it is none ComfyUI loads."""
    for signature, media in _SIMPLE:
        if head.startswith(signature):
            return media
    if head[:2] == b"BM" and head[14:15] in _BMP_INFO_SIZES and head[15:18] == b"\0\0\0":
        return BMP
    if head[:3] == b"ID3" and head[3:4] in (b"\x02", b"\x03", b"\x04"):
        return MP3
    if head[:4] == b"RIFF":
        return _RIFF.get(head[8:12])
    if head[4:8] == b"ftyp":
        # ISO base media: the major brand says QuickTime, AVIF or M4A; every other brand plays as MP4.
        return _FTYP_BRANDS.get(head[8:12], MP4)
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska, or WebM when its DocType says so
        return WEBM if b"webm" in head[:HEAD_BYTES] else MKV
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # an MPEG audio frame's sync word
        if head[1] & 0x06:  # layer I, II or III
            return MP3
        if head[1] & 0xF0 == 0xF0:  # layer "0": an AAC ADTS frame
            return AAC
    return None


def check_name(name: str) -> str:
    """One file or folder name as a browser sent it, refused (NameProblem) unless it can be stored as is."""
    if not name or not name.strip():
        raise NameProblem("The file name is empty.")
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in _BIDI_CONTROLS for c in name):
        raise NameProblem("The file name contains control characters.")
    if any(unicodedata.category(c) == "Cs" for c in name):  # a lone surrogate: bytes that were not UTF-8
        raise NameProblem("The file name is not valid text.")
    if "/" in name or "\\" in name:
        raise NameProblem("The file name contains a path separator.")
    if name in (".", ".."):
        raise NameProblem("The file name is not a name.")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise NameProblem(f"The file name is longer than {MAX_NAME_BYTES} bytes.")
    return name


def check_path(path: str) -> str:
    """A relative path (``workflows/a.json``, a subfolder) whose every part passes ``check_name``.

    ``..`` is left to the caller, which resolves the path inside its root and refuses an escape there.
    """
    if len(path) > MAX_PATH_CHARS:
        raise NameProblem(f"The path is longer than {MAX_PATH_CHARS} characters.")
    if "\\" in path:
        raise NameProblem("The path contains a backslash.")
    for part in path.split("/"):
        if part not in ("", ".", ".."):
            check_name(part)
    return path


def stored_name(filename: str, media: MediaType) -> str:
    """The name to keep an upload under: the participant's own when its extension belongs to the detected
    family (a PNG called ``.jpg`` is still an image), else the detected format's extension in its place."""
    name = check_name(filename.strip())
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    known = _BY_EXTENSION.get(ext.lower())
    if known is not None and known.family == media.family:
        return name
    renamed = f"{stem}.{media.extension}"
    if len(renamed.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise NameProblem(f"The file name is longer than {MAX_NAME_BYTES} bytes.")
    return renamed


@dataclass(frozen=True)
class Serving:
    """How one file goes to a browser: the type to send, whether it may show inline, and every header."""

    content_type: str
    inline: bool
    headers: dict[str, str] = field(default_factory=dict)


def serving(filename: str, *, head: bytes | None = None, declared: str | None = None) -> Serving:
    """The serving rule. With ``head`` (the file's first bytes) the bytes decide; otherwise the type recorded
    for the file (``declared``), or its extension when none was recorded. Only a media type is ever inline."""
    if head is not None:
        media = detect(head)
    else:
        kind = (declared or "").split(";", 1)[0].strip().lower()
        if kind:  # application/octet-stream included: whoever recorded or sent it found no safe type
            media = _BY_CONTENT_TYPE.get(kind)
        else:
            media = _BY_EXTENSION.get(filename.rpartition(".")[2].lower()) if "." in filename else None
    inline = media is not None
    content_type = media.content_type if media is not None else OCTET_STREAM
    headers = {
        "Content-Type": content_type,
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": content_disposition(filename or "file", attachment=not inline),
        "Content-Security-Policy": SANDBOX_CSP,
    }
    return Serving(content_type, inline, headers)


def content_disposition(filename: str, *, attachment: bool) -> str:
    """``inline``/``attachment`` with the file's name, quoted as RFC 6266 asks (RFC 5987 for non-ASCII)."""
    kind = "attachment" if attachment else "inline"
    if filename.isascii() and filename.isprintable():
        escaped = filename.replace("\\", "\\\\").replace('"', r"\"")
        return f'{kind}; filename="{escaped}"'
    return f"{kind}; filename*=utf-8''{quote(filename, safe='')}"
