"""The R2 store against a real S3-compatible server (moto in server mode, tests/s3_server.py).

Nothing inside boto3 is mocked: uploads, presigned URLs and signature checks go over HTTP to the server.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from django.http import FileResponse

from storage.downloads import FileChunks
from storage.r2 import R2Config, R2Store, endpoint_for
from storage.stores import StorageError, StorageNotConfigured, default_store
from tests.s3_server import S3Credentials, admin_client, free_port, object_store_settings

MB = 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunked(data: bytes, size: int = 256 * 1024) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.fixture
def small_parts(settings, r2_store: R2Store) -> R2Store:
    """The store with a 5 MB multipart threshold and 5 MB parts (S3's minimum), so tests need only ~12 MB."""
    settings.OBJECT_STORE = {**settings.OBJECT_STORE, "MULTIPART_THRESHOLD_MB": 5, "MULTIPART_PART_MB": 5}
    store = default_store()
    assert isinstance(store, R2Store)
    return store


@pytest.fixture
def big_body() -> bytes:
    return os.urandom(12 * MB)


def server_head(store: R2Store, key: str) -> dict[str, Any]:
    return admin_client(store.config.endpoint_url).head_object(Bucket=store.config.bucket, Key=key)


# -- configuration ------------------------------------------------------------------------------------


def test_default_store_is_r2_and_reuses_one_client(r2_store: R2Store) -> None:
    again = default_store()
    assert isinstance(r2_store, R2Store) and isinstance(again, R2Store)
    assert again.client is r2_store.client


@pytest.mark.parametrize(
    ("missing", "variable"),
    [
        ("BUCKET", "COMFYUME_R2_BUCKET"),
        ("ACCESS_KEY_ID", "COMFYUME_R2_ACCESS_KEY_ID"),
        ("SECRET_ACCESS_KEY", "COMFYUME_R2_SECRET_ACCESS_KEY"),
        ("ENDPOINT_URL", "COMFYUME_R2_ACCOUNT_ID"),
    ],
)
def test_missing_setting_is_named(settings, missing: str, variable: str) -> None:
    settings.OBJECT_STORE = {**object_store_settings("http://127.0.0.1:9", "bucket"), missing: ""}
    with pytest.raises(StorageNotConfigured, match=variable):
        default_store()


def test_endpoint_follows_account_and_eu_jurisdiction() -> None:
    conf = object_store_settings("", "media", R2_ACCOUNT_ID="0123abcd")
    assert R2Config.from_settings(conf).endpoint_url == "https://0123abcd.r2.cloudflarestorage.com"
    eu = R2Config.from_settings({**conf, "R2_JURISDICTION": "eu"})
    assert eu.endpoint_url == endpoint_for("0123abcd", "eu") == "https://0123abcd.eu.r2.cloudflarestorage.com"
    override = R2Config.from_settings({**conf, "ENDPOINT_URL": "http://127.0.0.1:9000/"})
    assert override.endpoint_url == "http://127.0.0.1:9000"


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"R2_JURISDICTION": "asia"}, "COMFYUME_R2_JURISDICTION"),
        ({"ENDPOINT_URL": "", "R2_ACCOUNT_ID": "https://abc.r2.cloudflarestorage.com"}, "COMFYUME_R2_ACCOUNT_ID"),
        ({"MULTIPART_PART_MB": 4}, "COMFYUME_MULTIPART_PART_MB"),
        ({"PRESIGN_SECONDS": 8 * 24 * 3600}, "COMFYUME_PRESIGN_SECONDS"),
    ],
)
def test_bad_setting_is_named(overrides: dict[str, Any], variable: str) -> None:
    with pytest.raises(StorageNotConfigured, match=variable):
        R2Config.from_settings(object_store_settings("http://127.0.0.1:9", "bucket", **overrides))


def test_check_passes_and_leaves_nothing_behind(r2_store: R2Store) -> None:
    r2_store.check()
    listing = admin_client(r2_store.config.endpoint_url).list_objects_v2(Bucket=r2_store.config.bucket)
    assert listing.get("KeyCount") == 0


def test_unknown_bucket_names_the_bucket_setting(settings, s3_server: str) -> None:
    settings.OBJECT_STORE = object_store_settings(s3_server, "no-such-bucket-here")
    store = default_store()
    with pytest.raises(StorageNotConfigured, match="COMFYUME_R2_BUCKET") as raised:
        store.check()
    assert raised.value.permanent
    with pytest.raises(StorageError, match="COMFYUME_R2_BUCKET"):
        store.put("a/b.png", [b"x"])


def test_wrong_secret_names_the_secret_setting(settings, s3_server: str, s3_bucket: str, s3_credentials: S3Credentials):
    settings.OBJECT_STORE = object_store_settings(
        s3_server, s3_bucket, ACCESS_KEY_ID=s3_credentials.access_key_id, SECRET_ACCESS_KEY="not-the-secret"
    )
    with pytest.raises(StorageNotConfigured, match="COMFYUME_R2_SECRET_ACCESS_KEY"):
        default_store().check()
    # A HEAD answer has no body to say which half is wrong: both settings are named.
    with pytest.raises(StorageNotConfigured, match="COMFYUME_R2_ACCESS_KEY_ID and COMFYUME_R2_SECRET_ACCESS_KEY"):
        default_store().exists("a/b.png")
    # The server really checks signatures: the right secret passes.
    settings.OBJECT_STORE = {**settings.OBJECT_STORE, "SECRET_ACCESS_KEY": s3_credentials.secret_access_key}
    default_store().check()


def test_unknown_access_key_names_the_key_setting(settings, s3_server: str, s3_bucket: str, s3_credentials):
    settings.OBJECT_STORE = object_store_settings(s3_server, s3_bucket, ACCESS_KEY_ID="AKIANOSUCHKEY0000000")
    with pytest.raises(StorageNotConfigured, match="COMFYUME_R2_ACCESS_KEY_ID"):
        default_store().check()


def test_unreachable_endpoint_names_the_endpoint_settings(settings) -> None:
    settings.OBJECT_STORE = object_store_settings(f"http://127.0.0.1:{free_port()}", "bucket")
    with pytest.raises(StorageError, match=r"COMFYUME_R2_ACCOUNT_ID.*COMFYUME_R2_ENDPOINT_URL") as raised:
        default_store().check()
    assert not raised.value.permanent  # the network may come back


# -- put, open, head, delete --------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["workshops/ws1/user001/p1/out.png", "workshops/ws1/user001/p1/sub dir/ré+sult 1.png"])
def test_put_then_open_round_trips_with_sha256(r2_store: R2Store, key: str) -> None:
    data = os.urandom(300_000)
    stored = r2_store.put(key, chunked(data, 4096), content_type="image/png")
    assert (stored.key, stored.size, stored.sha256) == (key, len(data), sha256(data))
    with r2_store.open(stored.key) as handle:
        assert handle.read() == data
    info = r2_store.head(stored.key)
    # The server kept the sha256 that was sent with the body: head() reports it without reading the object.
    assert (info.size, info.sha256, info.content_type) == (len(data), sha256(data), "image/png")
    assert r2_store.exists(stored.key)


def test_put_of_nothing_stores_an_empty_object(r2_store: R2Store) -> None:
    stored = r2_store.put("a/empty.txt", [])
    assert (stored.size, stored.sha256) == (0, sha256(b""))
    assert r2_store.open("a/empty.txt").read() == b""


def test_put_above_threshold_goes_multipart_and_reads_back_identical(small_parts: R2Store, big_body: bytes) -> None:
    stored = small_parts.put("a/video.mp4", chunked(big_body, 64 * 1024), content_type="video/mp4")
    assert (stored.size, stored.sha256) == (len(big_body), sha256(big_body))
    assert server_head(small_parts, "a/video.mp4")["ETag"].endswith('-3"')  # 5 + 5 + 2 MiB
    with small_parts.open("a/video.mp4") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == sha256(big_body)
    info = small_parts.head("a/video.mp4")
    assert info.sha256 is None  # composite: not the object's own sha256
    assert small_parts.verify("a/video.mp4", size=len(big_body), sha256_hex=sha256(big_body)) == stored


def test_multipart_put_sends_parts_while_the_body_still_streams(small_parts: R2Store, big_body: bytes) -> None:
    produced = 0

    def body() -> Iterator[bytes]:
        nonlocal produced
        for chunk in chunked(big_body, MB):
            produced += 1
            yield chunk

    # Observe (not mock) the requests on their way out: how much of the body existed when each part left.
    at_each_part: list[int] = []

    def note(**kwargs: Any) -> None:
        at_each_part.append(produced)

    small_parts.client.meta.events.register("before-send.s3.UploadPart", note)
    try:
        stored = small_parts.put("a/stream.mp4", body())
    finally:
        small_parts.client.meta.events.unregister("before-send.s3.UploadPart", note)
    assert stored.sha256 == sha256(big_body)
    assert len(at_each_part) == 3
    assert at_each_part[0] <= 6 < 12  # part 1 left after ~5 of the 12 MB had been read


def test_put_at_threshold_is_one_put(small_parts: R2Store) -> None:
    data = os.urandom(5 * MB)
    small_parts.put("a/exact.bin", [data])
    assert "-" not in server_head(small_parts, "a/exact.bin")["ETag"]
    assert small_parts.head("a/exact.bin").sha256 == sha256(data)


def test_open_seeks_with_ranged_reads(small_parts: R2Store, big_body: bytes) -> None:
    small_parts.put("a/video.mp4", [big_body])
    start = 5 * MB - 10
    # storage/downloads.py serves byte ranges by seeking the handle open() gives.
    chunks = FileChunks(small_parts.open("a/video.mp4"), start=start, length=100)
    assert b"".join(chunks) == big_body[start : start + 100]
    with small_parts.open("a/video.mp4") as handle:
        assert handle.seek(-4, os.SEEK_END) == len(big_body) - 4
        assert handle.read() == big_body[-4:]
        handle.seek(0)
        assert handle.read(8) == big_body[:8]


def test_open_handle_serves_as_a_django_file_response(r2_store: R2Store) -> None:
    data = os.urandom(3 * MB + 5)
    r2_store.put("a/in.png", [data])
    # As jobs/callbacks.py serves an input: FileResponse seeks to the end for Content-Length, then back.
    response = FileResponse(r2_store.open("a/in.png"), content_type="image/png")
    assert response["Content-Length"] == str(len(data))
    assert response.getvalue() == data
    response.close()


def test_missing_object_is_a_storage_error(r2_store: R2Store) -> None:
    assert not r2_store.exists("a/missing.png")
    with pytest.raises(StorageError, match="No object"):
        r2_store.open("a/missing.png")
    with pytest.raises(StorageError, match="No object"):
        r2_store.head("a/missing.png")
    with pytest.raises(StorageError, match="No object"):
        r2_store.verify("a/missing.png", size=1, sha256_hex=sha256(b"x"))


def test_delete_removes_and_is_idempotent(r2_store: R2Store) -> None:
    r2_store.put("a/gone.png", [b"bytes"])
    r2_store.delete("a/gone.png")
    assert not r2_store.exists("a/gone.png")
    r2_store.delete("a/gone.png")
    assert not r2_store.exists("a/gone.png")


@pytest.mark.parametrize("key", ["../escape.png", "a/../../b.png", "a/\x00b.png", ""])
def test_unsafe_keys_are_refused_before_any_request(r2_store: R2Store, key: str) -> None:
    for call in (
        lambda: r2_store.put(key, [b"x"]),
        lambda: r2_store.open(key),
        lambda: r2_store.exists(key),
        lambda: r2_store.delete(key),
        lambda: r2_store.presigned_get(key),
        lambda: r2_store.upload_target(key, size=1, sha256_hex=sha256(b"x"), content_type="image/png"),
    ):
        with pytest.raises(StorageError):
            call()
    listing = admin_client(r2_store.config.endpoint_url).list_objects_v2(Bucket=r2_store.config.bucket)
    assert listing.get("KeyCount") == 0


# -- presigned downloads ------------------------------------------------------------------------------


def test_presigned_get_downloads_bytes_with_disposition(r2_store: R2Store) -> None:
    data = os.urandom(5000)
    r2_store.put("a/out.png", [data])
    r2_store.put("a/ré+sult 1.png", [data])
    assert requests.get(r2_store.presigned_get("a/ré+sult 1.png"), timeout=10).content == data
    url = r2_store.presigned_get("a/out.png", filename="résultat 1.png", content_type="image/png")
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["Content-Type"] == "image/png"
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert urllib.parse.quote("résultat 1.png") in disposition


def test_presigned_get_inline_and_expiry(r2_store: R2Store) -> None:
    r2_store.put("a/out.png", [b"png"])
    url = r2_store.presigned_get("a/out.png", filename="out.png", attachment=False, expires=30)
    assert "X-Amz-Expires=30" in url
    assert requests.get(url, timeout=10).headers["Content-Disposition"] == 'inline; filename="out.png"'


# -- the GPU worker's uploads -------------------------------------------------------------------------


def test_presigned_put_then_verify(r2_store: R2Store) -> None:
    data = os.urandom(200_000)
    target = r2_store.upload_target("a/out.png", size=len(data), sha256_hex=sha256(data), content_type="image/png")
    assert target["method"] == "PUT"
    assert set(target["headers"]) == {"x-amz-checksum-sha256", "Content-Length", "Content-Type"}
    assert "x-amz-checksum-sha256" in urllib.parse.unquote(target["url"])  # signed in, not merely sent
    response = requests.put(target["url"], data=data, headers=target["headers"], timeout=10)
    assert response.status_code == 200, response.text
    stored = r2_store.verify("a/out.png", size=len(data), sha256_hex=sha256(data))
    assert (stored.size, stored.sha256) == (len(data), sha256(data))
    assert r2_store.head("a/out.png").content_type == "image/png"


def test_presigned_put_of_corrupt_body_is_refused_or_caught_by_verify(r2_store: R2Store) -> None:
    data = os.urandom(100_000)
    corrupt = bytes([data[0] ^ 0xFF]) + data[1:]
    target = r2_store.upload_target("a/out.png", size=len(data), sha256_hex=sha256(data), content_type="image/png")
    response = requests.put(target["url"], data=corrupt, headers=target["headers"], timeout=10)
    if response.ok:
        # moto 5.2 stores the body without checking the signed checksum (R2 answers 400 BadDigest);
        # nothing of the server's is trusted then: verify reads the object and finds it corrupt.
        with pytest.raises(StorageError, match="sha256"):
            r2_store.verify("a/out.png", size=len(data), sha256_hex=sha256(data))
    else:
        assert response.status_code == 400 and "BadDigest" in response.text
        assert not r2_store.exists("a/out.png")


def test_verify_refuses_wrong_size_and_wrong_sha256(r2_store: R2Store) -> None:
    r2_store.put("a/out.png", [b"twelve bytes"])
    with pytest.raises(StorageError, match="12 bytes, not the 13"):
        r2_store.verify("a/out.png", size=13, sha256_hex=sha256(b"twelve bytes"))
    with pytest.raises(StorageError, match="sha256"):
        r2_store.verify("a/out.png", size=12, sha256_hex=sha256(b"twelve BYTES"))
    with pytest.raises(StorageError, match="Not a sha256"):
        r2_store.verify("a/out.png", size=12, sha256_hex="abc")


def test_multipart_upload_target_parts_complete_verify(small_parts: R2Store, big_body: bytes) -> None:
    target = small_parts.upload_target(
        "a/video.mp4", size=len(big_body), sha256_hex=sha256(big_body), content_type="video/mp4"
    )
    multipart = target["multipart"]
    part_size = multipart["part_size"]
    assert part_size == 5 * MB
    assert [part["number"] for part in multipart["parts"]] == [1, 2, 3]
    etags = []
    for part in multipart["parts"]:
        body = big_body[(part["number"] - 1) * part_size : part["number"] * part_size]
        response = requests.put(part["url"], data=body, timeout=30)
        assert response.status_code == 200, response.text
        etags.append({"number": part["number"], "etag": response.headers["ETag"]})
    stored = small_parts.complete_multipart("a/video.mp4", multipart["upload_id"], list(reversed(etags)))
    assert (stored.size, stored.sha256) == (len(big_body), sha256(big_body))
    assert small_parts.verify("a/video.mp4", size=len(big_body), sha256_hex=sha256(big_body)) == stored
    assert small_parts.head("a/video.mp4").content_type == "video/mp4"


def test_multipart_with_a_corrupt_part_fails_verify(small_parts: R2Store, big_body: bytes) -> None:
    target = small_parts.upload_target("a/v.mp4", size=len(big_body), sha256_hex=sha256(big_body), content_type="")
    multipart = target["multipart"]
    part_size = multipart["part_size"]
    etags = []
    for part in multipart["parts"]:
        body = bytearray(big_body[(part["number"] - 1) * part_size : part["number"] * part_size])
        if part["number"] == 2:
            body[100] ^= 0xFF
        response = requests.put(part["url"], data=bytes(body), timeout=30)
        etags.append({"number": part["number"], "etag": response.headers["ETag"]})
    stored = small_parts.complete_multipart("a/v.mp4", multipart["upload_id"], etags)
    assert stored.sha256 != sha256(big_body)
    with pytest.raises(StorageError, match="sha256"):
        small_parts.verify("a/v.mp4", size=len(big_body), sha256_hex=sha256(big_body))


def test_upload_target_splits_into_at_most_10000_parts(small_parts: R2Store) -> None:
    assert small_parts.part_size_for(10 * MB) == 5 * MB
    huge = 100_000 * MB
    assert small_parts.part_size_for(huge) == 10 * MB
    assert huge / small_parts.part_size_for(huge) <= 10_000


def test_complete_with_unknown_part_is_a_storage_error(small_parts: R2Store, big_body: bytes) -> None:
    target = small_parts.upload_target("a/v.mp4", size=len(big_body), sha256_hex=sha256(big_body), content_type="")
    upload_id = target["multipart"]["upload_id"]
    with pytest.raises(StorageError):
        small_parts.complete_multipart("a/v.mp4", upload_id, [{"number": 1, "etag": '"0123"'}])
    with pytest.raises(StorageError, match="number and an etag"):
        small_parts.complete_multipart("a/v.mp4", upload_id, [{"etag": "x"}])
    assert not small_parts.exists("a/v.mp4")


def test_abort_multipart_discards_the_upload(small_parts: R2Store, big_body: bytes) -> None:
    target = small_parts.upload_target("a/v.mp4", size=len(big_body), sha256_hex=sha256(big_body), content_type="")
    upload_id = target["multipart"]["upload_id"]
    admin = admin_client(small_parts.config.endpoint_url)
    assert len(admin.list_multipart_uploads(Bucket=small_parts.config.bucket).get("Uploads", [])) == 1
    small_parts.abort_multipart("a/v.mp4", upload_id)
    assert admin.list_multipart_uploads(Bucket=small_parts.config.bucket).get("Uploads", []) == []
    small_parts.abort_multipart("a/v.mp4", upload_id)  # already gone: not an error
    assert not small_parts.exists("a/v.mp4")


def test_upload_target_refuses_a_bad_announcement(r2_store: R2Store) -> None:
    with pytest.raises(StorageError, match="Not a sha256"):
        r2_store.upload_target("a/out.png", size=3, sha256_hex="not-hex", content_type="image/png")
    with pytest.raises(StorageError, match="-1 bytes"):
        r2_store.upload_target("a/out.png", size=-1, sha256_hex=sha256(b""), content_type="image/png")
