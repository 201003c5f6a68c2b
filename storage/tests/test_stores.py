"""The local directory store: the methods it shares with the R2 store (storage/stores.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from storage.stores import LocalStore, StorageError, StorageNotConfigured, default_store


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "objects")


def test_default_store_is_local_unless_r2_is_chosen(settings) -> None:
    assert settings.OBJECT_STORE["KIND"] == "local"
    store = default_store()
    assert isinstance(store, LocalStore) and store.root == settings.STORAGE_DIR


def test_put_streams_and_hashes_and_open_reads_back(store: LocalStore) -> None:
    stored = store.put("a/b/out.png", [b"abc", b"", b"def"], content_type="image/png")
    assert (stored.key, stored.size, stored.sha256) == ("a/b/out.png", 6, sha256(b"abcdef"))
    with store.open("a/b/out.png") as handle:
        assert handle.read() == b"abcdef"
    assert not list(store.path("a/b/out.png").parent.glob(".upload-*"))  # no temp file left behind


def test_head_reports_size_type_and_an_etag_that_changes(store: LocalStore) -> None:
    store.put("a/out.png", [b"one"])
    first = store.head("a/out.png")
    assert (first.key, first.size, first.sha256, first.content_type) == ("a/out.png", 3, None, "image/png")
    store.put("a/out.png", [b"three"])
    assert store.head("a/out.png").etag != first.etag
    with pytest.raises(StorageError, match="No object"):
        store.head("a/missing.png")
    with pytest.raises(StorageError, match="No object"):
        store.head("a")  # a directory is not an object


def test_downloads_and_uploads_go_through_the_hub(store: LocalStore) -> None:
    store.put("a/out.png", [b"png"])
    assert store.presigned_get("a/out.png", filename="out.png", content_type="image/png") is None
    assert store.upload_target("a/new.png", size=3, sha256_hex=sha256(b"png"), content_type="image/png") is None
    with pytest.raises(StorageError):
        store.upload_target("../new.png", size=3, sha256_hex=sha256(b"png"), content_type="image/png")
    with pytest.raises(StorageError, match="Not a sha256"):
        store.upload_target("a/new.png", size=3, sha256_hex="xyz", content_type="image/png")


def test_verify_rehashes_the_file(store: LocalStore) -> None:
    stored = store.put("a/out.png", [b"twelve bytes"])
    assert store.verify("a/out.png", size=12, sha256_hex=sha256(b"twelve bytes")) == stored
    store.path("a/out.png").write_bytes(b"twelve BYTES")  # same size, different bytes
    with pytest.raises(StorageError, match="sha256"):
        store.verify("a/out.png", size=12, sha256_hex=sha256(b"twelve bytes"))
    with pytest.raises(StorageError, match="12 bytes, not the 11"):
        store.verify("a/out.png", size=11, sha256_hex=sha256(b"twelve BYTES"))
    with pytest.raises(StorageError, match="No object"):
        store.verify("a/missing.png", size=1, sha256_hex=sha256(b"x"))


def test_multipart_is_not_offered(store: LocalStore) -> None:
    with pytest.raises(StorageError, match="no multipart"):
        store.complete_multipart("a/out.png", "upload-1", [{"number": 1, "etag": "x"}])
    store.abort_multipart("a/out.png", "upload-1")  # nothing was started: nothing to do, and no error
    assert not store.exists("a/out.png")


def test_check_names_the_storage_dir_when_it_cannot_be_written(tmp_path: Path) -> None:
    LocalStore(tmp_path / "fresh").check()
    assert (tmp_path / "fresh").is_dir()
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    with pytest.raises(StorageNotConfigured, match="COMFYUME_STORAGE_DIR"):
        LocalStore(blocker / "objects").check()


@pytest.mark.parametrize("key", ["../x.png", "a/../../x.png", "a/\x00.png", "", "/"])
def test_unsafe_keys_are_refused(store: LocalStore, key: str) -> None:
    with pytest.raises(StorageError):
        store.put(key, [b"x"])
    with pytest.raises(StorageError):
        store.verify(key, size=1, sha256_hex=sha256(b"x"))
    with pytest.raises(StorageError):
        store.open(key)
