"""Cloudflare R2 (or any S3-compatible server) as the object store, through boto3.

R2 speaks the S3 API at ``https://<account>.r2.cloudflarestorage.com`` (``<account>.eu.…`` for buckets in
the EU jurisdiction). Requests are signed with SigV4 and addressed path-style (``/<bucket>/<key>``) so the
same code talks to R2 and to the test suite's moto server.

Integrity: every byte the hub writes is hashed as it streams and sent with its sha256
(``x-amz-checksum-sha256``), so the server refuses a body that does not match. GPU workers upload through
presigned URLs with the announced sha256 signed in. R2 keeps SHA-256 only as a *composite* checksum for
multipart objects (a hash of the parts' hashes), so those are verified by reading them back once.

Every botocore failure leaves this module as a :class:`~storage.stores.StorageError` whose message names the
setting an operator should look at; ``permanent=False`` marks the ones a retry can cure.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import io
import math
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ParamValidationError
from botocore.exceptions import ConnectionError as BotoConnectionError
from django.conf import settings
from django.utils.http import content_disposition_header

from .stores import (
    ObjectInfo,
    StorageError,
    StorageNotConfigured,
    StoredObject,
    check_sha256_hex,
    compare,
    hash_stream,
    safe_key,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

MB = 1024 * 1024
# S3 and R2 refuse parts under 5 MiB (except the last) and uploads of more than 10,000 parts.
MIN_PART_SIZE = 5 * MB
MAX_PARTS = 10_000
# R2's jurisdictions, each behind its own endpoint host ("" is the default, global one).
JURISDICTIONS = ("", "eu", "fedramp", "us")
# SigV4 presigned URLs live at most 7 days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
# What put() keeps in memory before its buffer moves to a temp file (the rest of a small object, or a part).
SPOOL_BYTES = 8 * MB
COPY_CHUNK = 1 * MB
# Buffered reads of open(): a few round trips per MB keeps a streamed download fast.
READ_BUFFER = 1 * MB

_ENDPOINT_HINT = "check COMFYUME_R2_ACCOUNT_ID (and COMFYUME_R2_JURISDICTION), or COMFYUME_R2_ENDPOINT_URL when set"
_CREDENTIALS_HINT = "check COMFYUME_R2_ACCESS_KEY_ID and COMFYUME_R2_SECRET_ACCESS_KEY"
_TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling", "503", "500"}
_CORRUPT_CODES = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "InvalidChecksum"}


def endpoint_for(account_id: str, jurisdiction: str = "") -> str:
    """R2's S3 endpoint for an account; buckets created in a jurisdiction live behind its own host."""
    if jurisdiction:
        return f"https://{account_id}.{jurisdiction}.r2.cloudflarestorage.com"
    return f"https://{account_id}.r2.cloudflarestorage.com"


@dataclass(frozen=True)
class R2Config:
    """The settings of one bucket, validated (see docs/CONFIGURATION.md#object-storage)."""

    endpoint_url: str
    bucket: str
    access_key_id: str
    secret_access_key: str
    region: str = "auto"
    presign_seconds: int = 3600
    multipart_threshold: int = 64 * MB
    part_size: int = 16 * MB

    @classmethod
    def from_settings(cls, conf: Mapping[str, Any]) -> R2Config:
        """Build from ``settings.OBJECT_STORE``; StorageNotConfigured names the first variable to fix."""
        account = str(conf.get("R2_ACCOUNT_ID") or "").strip()
        jurisdiction = str(conf.get("R2_JURISDICTION") or "").strip().lower()
        endpoint = str(conf.get("ENDPOINT_URL") or "").strip().rstrip("/")
        if jurisdiction not in JURISDICTIONS:
            raise StorageNotConfigured(
                f"COMFYUME_R2_JURISDICTION must be empty or one of {', '.join(JURISDICTIONS[1:])}, "
                f"not {jurisdiction!r}."
            )
        if not endpoint:
            if not account:
                raise StorageNotConfigured(
                    "COMFYUME_STORAGE=r2 needs COMFYUME_R2_ACCOUNT_ID (your Cloudflare account ID), "
                    "or COMFYUME_R2_ENDPOINT_URL for another S3-compatible server."
                )
            if not account.isalnum():
                raise StorageNotConfigured(
                    f"COMFYUME_R2_ACCOUNT_ID must be the bare account ID (32 hex digits), not {account!r}; "
                    "put a full URL in COMFYUME_R2_ENDPOINT_URL instead."
                )
            endpoint = endpoint_for(account, jurisdiction)
        elif not endpoint.startswith(("https://", "http://")):
            raise StorageNotConfigured(f"COMFYUME_R2_ENDPOINT_URL must start with https://, not {endpoint!r}.")
        for setting, name in (
            ("BUCKET", "COMFYUME_R2_BUCKET"),
            ("ACCESS_KEY_ID", "COMFYUME_R2_ACCESS_KEY_ID"),
            ("SECRET_ACCESS_KEY", "COMFYUME_R2_SECRET_ACCESS_KEY"),
        ):
            if not str(conf.get(setting) or "").strip():
                raise StorageNotConfigured(f"COMFYUME_STORAGE=r2 needs {name}; it is not set.")
        presign = int(conf.get("PRESIGN_SECONDS") or 3600)
        if not 1 <= presign <= MAX_PRESIGN_SECONDS:
            raise StorageNotConfigured(f"COMFYUME_PRESIGN_SECONDS must be 1…{MAX_PRESIGN_SECONDS}, not {presign}.")
        threshold_mb = int(conf.get("MULTIPART_THRESHOLD_MB") or 0)
        part_mb = int(conf.get("MULTIPART_PART_MB") or 0)
        if threshold_mb < 1:
            raise StorageNotConfigured(f"COMFYUME_MULTIPART_THRESHOLD_MB must be at least 1, not {threshold_mb}.")
        if part_mb * MB < MIN_PART_SIZE:
            raise StorageNotConfigured(f"COMFYUME_MULTIPART_PART_MB must be at least 5 (S3's minimum), not {part_mb}.")
        return cls(
            endpoint_url=endpoint,
            bucket=str(conf["BUCKET"]).strip(),
            access_key_id=str(conf["ACCESS_KEY_ID"]).strip(),
            secret_access_key=str(conf["SECRET_ACCESS_KEY"]).strip(),
            region=str(conf.get("REGION") or "auto").strip(),
            presign_seconds=presign,
            multipart_threshold=threshold_mb * MB,
            part_size=part_mb * MB,
        )


@functools.lru_cache(maxsize=8)
def s3_client(endpoint_url: str, region: str, access_key_id: str, secret_access_key: str) -> Any:
    """One boto3 client per configuration and process: clients are thread-safe and cost ~50 ms to create."""
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        connect_timeout=5,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=32,
        # We send our own sha256 where it matters. botocore's default (a CRC32 on every upload, in an
        # aws-chunked trailer) is not what R2 verifies for us and broke R2 uploads in boto3 1.36.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    # A session per client: boto3's default session is not safe to create clients from in several threads.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=config,
    )


def b64_sha256(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _hex_from_b64(value: str) -> str | None:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


class _HashingReader:
    """``read(n)`` over an iterable of chunks, hashing every byte handed out."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buffer = bytearray()
        self._digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        self._digest.update(out)
        self.size += len(out)
        return out

    def hexdigest(self) -> str:
        return self._digest.hexdigest()

    def b64digest(self) -> str:
        return b64_sha256(self._digest.digest())


class _Prefixed:
    """``read(n)`` of an already-read prefix (a file) followed by the rest of the source."""

    def __init__(self, prefix: IO[bytes], rest: _HashingReader) -> None:
        self._prefix = prefix
        self._rest = rest

    def read(self, n: int) -> bytes:
        data = self._prefix.read(n)
        if len(data) < n:
            data += self._rest.read(n - len(data))
        return data


class _ObjectReader(io.RawIOBase):
    """A stored object as a seekable raw stream: one GET, and a ranged GET after each seek.

    Later ranged GETs carry ``If-Match`` with the first answer's ETag, so an object replaced mid-read makes
    the read fail instead of splicing two versions together.
    """

    def __init__(self, store: R2Store, key: str) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._pos = 0
        self._size = 0
        self._etag: str | None = None
        self._body: Any = None
        self._open_at(0)

    def _open_at(self, pos: int) -> None:
        params: dict[str, Any] = {"Bucket": self._store.config.bucket, "Key": self._key}
        if pos:
            params["Range"] = f"bytes={pos}-"
        if self._etag:
            params["IfMatch"] = self._etag
        with self._store.translated("read", self._key):
            response = self._store.client.get_object(**params)
        if self._etag is None:
            self._etag = response.get("ETag")
            self._size = int(response["ContentLength"])
        self._body = response["Body"]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        target = base + offset
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        if target != self._pos:
            self._drop_body()
            self._pos = target
        return self._pos

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._pos >= self._size or not len(view):
            return 0
        if self._body is None:
            self._open_at(self._pos)
        with self._store.translated("read", self._key):
            data = self._body.read(len(view))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def _drop_body(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def close(self) -> None:
        self._drop_body()
        super().close()


class R2Store:
    """One R2 bucket (or any S3-compatible one) holding the platform's objects.

    R2 requires every part of a multipart upload but the last to have the same size, so parts are always
    exactly ``part_size`` bytes.
    """

    def __init__(self, config: R2Config, client: Any = None) -> None:
        self.config = config
        self.client = client or s3_client(
            config.endpoint_url, config.region, config.access_key_id, config.secret_access_key
        )

    @classmethod
    def from_settings(cls) -> R2Store:
        return cls(R2Config.from_settings(settings.OBJECT_STORE))

    # -- errors ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def translated(self, action: str, key: str | None = None, upload_id: str | None = None) -> Iterator[None]:
        """Turn any botocore failure inside the block into a StorageError an operator can act on."""
        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            raise self.storage_error(exc, action, key, upload_id) from exc

    def storage_error(
        self, exc: Exception, action: str, key: str | None = None, upload_id: str | None = None
    ) -> StorageError:
        bucket, endpoint = self.config.bucket, self.config.endpoint_url
        where = f"{action} {key!r}" if key else action
        if isinstance(exc, BotoConnectionError):
            return StorageError(
                f"Cannot reach the object store at {endpoint} ({exc}): {_ENDPOINT_HINT}.", permanent=False
            )
        if isinstance(exc, NoCredentialsError):
            return StorageNotConfigured(f"No credentials for the object store: {_CREDENTIALS_HINT}.")
        if isinstance(exc, ParamValidationError):
            if "bucket name" in str(exc).lower():
                return StorageNotConfigured(f"{bucket!r} is not a valid bucket name: check COMFYUME_R2_BUCKET.")
            return StorageError(f"Could not {where}: {exc}")
        if not isinstance(exc, ClientError):
            return StorageError(f"The object store failed to {where} ({exc}); try again.", permanent=False)
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "")
        message = str(error.get("Message") or "")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code == "NoSuchBucket":
            return StorageNotConfigured(
                f"The bucket {bucket!r} does not exist at {endpoint}: check COMFYUME_R2_BUCKET "
                "(and COMFYUME_R2_JURISDICTION: an EU bucket is only visible at the EU endpoint)."
            )
        if code == "InvalidBucketName":
            return StorageNotConfigured(f"{bucket!r} is not a valid bucket name: check COMFYUME_R2_BUCKET.")
        if code == "InvalidAccessKeyId":
            return StorageNotConfigured(
                "The object store does not know this access key: check COMFYUME_R2_ACCESS_KEY_ID "
                "(the Access Key ID of an R2 API token)."
            )
        if code == "SignatureDoesNotMatch":
            return StorageNotConfigured(
                "The object store rejected the request signature: check COMFYUME_R2_SECRET_ACCESS_KEY "
                "(the Secret Access Key of the same API token as COMFYUME_R2_ACCESS_KEY_ID)."
            )
        if code in ("AccessDenied", "Unauthorized", "InvalidToken", "ExpiredToken") or status in (401, 403):
            return StorageNotConfigured(
                f"Access denied to bucket {bucket!r} ({code or status}) when trying to {where}: {_CREDENTIALS_HINT} "
                "(the API token needs Object Read & Write on this bucket)."
            )
        if code == "AuthorizationHeaderMalformed":
            return StorageNotConfigured(
                f"The object store refused the request's region: check COMFYUME_R2_REGION ({message})."
            )
        if code == "NoSuchUpload":
            return StorageError(
                f"The multipart upload {upload_id!r} of {key!r} does not exist (expired, aborted or done)."
            )
        if code == "NoSuchKey" or status == 404:
            return StorageError(f"No object at {key!r}" if key else f"Not found: {where}")
        if code == "PreconditionFailed":
            return StorageError(
                f"The object at {key!r} changed while it was being read; read it again.", permanent=False
            )
        if code in _CORRUPT_CODES:
            return StorageError(f"The object store refused to {where}: the body does not match its checksum ({code}).")
        if code in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall"):
            return StorageError(f"The object store refused the parts of {key!r} ({code}: {message}).")
        if code in _TRANSIENT_CODES or status >= 500:
            return StorageError(f"The object store failed to {where} ({code or status}); try again.", permanent=False)
        return StorageError(f"The object store refused to {where} ({code or status}: {message}).")

    # -- writing --------------------------------------------------------------------------------------

    def put(self, key: str, chunks: Iterable[bytes], *, content_type: str | None = None) -> StoredObject:
        """Stream ``chunks`` into the bucket: one PUT up to the threshold, else a multipart upload.

        Memory stays bounded: the bytes read while deciding go to a spooled temp file, then one part at a
        time is held. Each request carries the sha256 of its body, which the server checks.
        """
        key = safe_key(key)
        threshold = self.config.multipart_threshold
        source = _HashingReader(chunks)
        extra = {"ContentType": content_type} if content_type else {}
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            while spool.tell() <= threshold:
                block = source.read(min(COPY_CHUNK, threshold + 1 - spool.tell()))
                if not block:
                    break
                spool.write(block)
            spool.seek(0)
            if source.size <= threshold:
                with self.translated("store", key):
                    self.client.put_object(
                        Bucket=self.config.bucket,
                        Key=key,
                        Body=spool,
                        ContentLength=source.size,
                        ChecksumAlgorithm="SHA256",
                        ChecksumSHA256=source.b64digest(),
                        **extra,
                    )
            else:
                self._put_multipart(key, _Prefixed(spool, source), extra)
        return StoredObject(key=key, size=source.size, sha256=source.hexdigest())

    def _put_multipart(self, key: str, reader: _Prefixed, extra: dict[str, str]) -> None:
        bucket = self.config.bucket
        with self.translated("start a multipart upload of", key):
            upload_id = self.client.create_multipart_upload(
                Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256", **extra
            )["UploadId"]
        try:
            parts: list[dict[str, Any]] = []
            while block := reader.read(self.config.part_size):
                number = len(parts) + 1
                if number > MAX_PARTS:
                    raise StorageError(f"{key!r} needs more than {MAX_PARTS} parts: raise COMFYUME_MULTIPART_PART_MB.")
                checksum = b64_sha256(hashlib.sha256(block).digest())
                with self.translated("upload a part of", key, upload_id):
                    answer = self.client.upload_part(
                        Bucket=bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=block,
                        ChecksumAlgorithm="SHA256",
                        ChecksumSHA256=checksum,
                    )
                parts.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum})
            with self.translated("complete the multipart upload of", key, upload_id):
                self.client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            # An abandoned upload keeps its parts (and their storage bill) until a lifecycle rule expires it.
            with contextlib.suppress(StorageError):
                self.abort_multipart(key, upload_id)
            raise

    def delete(self, key: str) -> None:
        key = safe_key(key)
        with self.translated("delete", key):
            self.client.delete_object(Bucket=self.config.bucket, Key=key)

    # -- reading --------------------------------------------------------------------------------------

    def open(self, key: str) -> BinaryIO:
        """The object as a buffered, seekable stream; its bytes are fetched as they are read."""
        return io.BufferedReader(_ObjectReader(self, safe_key(key)), buffer_size=READ_BUFFER)

    def exists(self, key: str) -> bool:
        """Whether the object is there. A HEAD of a missing bucket is a plain 404 too: check() tells them apart."""
        key = safe_key(key)
        try:
            self.client.head_object(Bucket=self.config.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise self.storage_error(exc, "look up", key) from exc
        except BotoCoreError as exc:
            raise self.storage_error(exc, "look up", key) from exc
        return True

    def head(self, key: str) -> ObjectInfo:
        key = safe_key(key)
        with self.translated("look up", key):
            answer = self.client.head_object(Bucket=self.config.bucket, Key=key, ChecksumMode="ENABLED")
        etag = str(answer.get("ETag") or "").strip('"')
        checksum = str(answer.get("ChecksumSHA256") or "")
        # A multipart object's SHA-256 is composite (of the parts' hashes), not the object's own; its
        # ETag ends in "-<parts>". Some servers also say so in ChecksumType or a "-<parts>" suffix.
        composite = "-" in etag or "-" in checksum or answer.get("ChecksumType") == "COMPOSITE"
        return ObjectInfo(
            key=key,
            size=int(answer["ContentLength"]),
            sha256=None if composite or not checksum else _hex_from_b64(checksum),
            content_type=str(answer.get("ContentType") or "application/octet-stream"),
            etag=etag,
        )

    def presigned_get(
        self,
        key: str,
        *,
        filename: str | None = None,
        content_type: str | None = None,
        expires: int | None = None,
        attachment: bool = True,
    ) -> str:
        """A GET URL for the object; with ``filename`` it is served as that download (or inline)."""
        params: dict[str, Any] = {"Bucket": self.config.bucket, "Key": safe_key(key)}
        if filename:
            params["ResponseContentDisposition"] = content_disposition_header(attachment, filename)
        if content_type:
            params["ResponseContentType"] = content_type
        with self.translated("presign a download of", key):
            return str(
                self.client.generate_presigned_url(
                    "get_object", Params=params, ExpiresIn=expires or self.config.presign_seconds
                )
            )

    # -- the GPU worker's uploads ---------------------------------------------------------------------

    def part_size_for(self, size: int) -> int:
        """The configured part size, raised (in whole MiB) when the file would need more than 10,000 parts."""
        needed = math.ceil(size / MAX_PARTS)
        return max(self.config.part_size, math.ceil(needed / MB) * MB)

    def upload_target(self, key: str, *, size: int, sha256_hex: str, content_type: str) -> dict[str, Any]:
        """A presigned PUT (size and sha256 signed in, so R2 refuses any other body), or a multipart upload.

        Multipart parts cannot carry a checksum: the worker announces only the whole file's sha256, so
        :meth:`complete_multipart` reads the joined object back and hashes it.
        """
        key = safe_key(key)
        sha256_hex = check_sha256_hex(sha256_hex)
        if size < 0:
            raise StorageError(f"A file cannot have {size} bytes.")
        bucket, expires = self.config.bucket, self.config.presign_seconds
        if size <= self.config.multipart_threshold:
            checksum = b64_sha256(bytes.fromhex(sha256_hex))
            params: dict[str, Any] = {"Bucket": bucket, "Key": key, "ChecksumSHA256": checksum, "ContentLength": size}
            headers = {"x-amz-checksum-sha256": checksum, "Content-Length": str(size)}
            if content_type:
                params["ContentType"] = headers["Content-Type"] = content_type
            with self.translated("presign an upload of", key):
                url = self.client.generate_presigned_url("put_object", Params=params, ExpiresIn=expires)
            return {"method": "PUT", "url": url, "headers": headers}
        part_size = self.part_size_for(size)
        with self.translated("start a multipart upload of", key):
            upload_id = self.client.create_multipart_upload(
                Bucket=bucket, Key=key, **({"ContentType": content_type} if content_type else {})
            )["UploadId"]
        with self.translated("presign the parts of", key, upload_id):
            parts = [
                {
                    "number": number,
                    "url": self.client.generate_presigned_url(
                        "upload_part",
                        Params={"Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumber": number},
                        ExpiresIn=expires,
                    ),
                }
                for number in range(1, math.ceil(size / part_size) + 1)
            ]
        return {"multipart": {"upload_id": upload_id, "part_size": part_size, "parts": parts}}

    def complete_multipart(self, key: str, upload_id: str, parts: list[dict[str, Any]]) -> StoredObject:
        """Join the parts, then read the object back once to learn its size and sha256."""
        key = safe_key(key)
        try:
            numbered = sorted((int(part["number"]), str(part["etag"]).strip('"')) for part in parts)
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageError(f"Each part needs a number and an etag ({exc}).") from exc
        # S3 wants the ETags quoted, as UploadPart answered them; a worker may have stripped the quotes.
        ordered = [{"PartNumber": number, "ETag": f'"{etag}"'} for number, etag in numbered]
        if not ordered:
            raise StorageError("A multipart upload needs at least one part.")
        with self.translated("complete the multipart upload of", key, upload_id):
            self.client.complete_multipart_upload(
                Bucket=self.config.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": ordered}
            )
        size, sha256 = hash_stream(self.open(key))
        return StoredObject(key=key, size=size, sha256=sha256)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        key = safe_key(key)
        try:
            self.client.abort_multipart_upload(Bucket=self.config.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                return  # already aborted, completed or expired: nothing left to clean up
            raise self.storage_error(exc, "abort the multipart upload of", key, upload_id) from exc
        except BotoCoreError as exc:
            raise self.storage_error(exc, "abort the multipart upload of", key, upload_id) from exc

    def verify(self, key: str, *, size: int, sha256_hex: str) -> StoredObject:
        """The object, checked against the announced size and sha256.

        A single-PUT object's sha256 is the one the server checked on upload; a multipart object's is
        composite, so it is read once and hashed.
        """
        key = safe_key(key)
        expected = check_sha256_hex(sha256_hex)
        info = self.head(key)
        compare(key, (info.size, info.sha256), size=size, sha256_hex=expected)
        if info.sha256 is not None:
            return StoredObject(key=key, size=info.size, sha256=info.sha256)
        stored = hash_stream(self.open(key))
        compare(key, stored, size=size, sha256_hex=expected)
        return StoredObject(key=key, size=stored[0], sha256=stored[1])

    def check(self) -> None:
        """List the bucket, then write and delete a small probe object: the hub needs to do all three."""
        with self.translated("list the bucket"):
            self.client.list_objects_v2(Bucket=self.config.bucket, MaxKeys=1)
        probe = f".comfyume-check/{uuid.uuid4().hex}"
        self.put(probe, [b"ok"], content_type="text/plain")
        self.delete(probe)
