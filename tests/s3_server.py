"""A real S3-compatible server for the tests: moto in server mode, on a free loopback port.

The stores talk to it over HTTP exactly as they talk to R2 (SigV4, path-style, presigned URLs fetched with
``requests``), so nothing inside boto3 is mocked. Loaded from the root conftest as a pytest plugin.

moto accepts any credentials until its IAM checks are switched on; ``s3_credentials`` does that for one test
(moto then checks SigV4 signatures and access key IDs, as R2 does).
"""

from __future__ import annotations

import functools
import json
import logging
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
import requests

from storage.r2 import R2Store
from storage.stores import default_store

# moto's own region for buckets; R2 treats us-east-1 as an alias of its "auto" region, and so does moto.
ADMIN_REGION = "us-east-1"
ANY_KEY = "test-key"
ANY_SECRET = "test-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@functools.lru_cache(maxsize=4)
def admin_client(endpoint: str, service: str = "s3") -> Any:
    """A boto3 client with moto's default (unchecked) credentials, for setting a test up (one per endpoint)."""
    return boto3.session.Session().client(
        service,
        endpoint_url=endpoint,
        region_name=ADMIN_REGION,
        aws_access_key_id=ANY_KEY,
        aws_secret_access_key=ANY_SECRET,
    )


def object_store_settings(endpoint: str, bucket: str, **overrides: Any) -> dict[str, Any]:
    """``settings.OBJECT_STORE`` for R2 at the test server."""
    return {
        "KIND": "r2",
        "R2_ACCOUNT_ID": "",
        "R2_JURISDICTION": "",
        "ENDPOINT_URL": endpoint,
        "BUCKET": bucket,
        "ACCESS_KEY_ID": ANY_KEY,
        "SECRET_ACCESS_KEY": ANY_SECRET,
        "REGION": "auto",
        "PRESIGN_SECONDS": 600,
        "MULTIPART_THRESHOLD_MB": 64,
        "MULTIPART_PART_MB": 16,
        **overrides,
    }


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 (and IAM) on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer  # here, not at the top: most test runs never start it

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request drowns failures
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: str) -> Iterator[str]:
    """A fresh, empty bucket on the test server, emptied and removed afterwards."""
    client = admin_client(s3_server)
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    yield bucket
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])
    client.delete_bucket(Bucket=bucket)


@pytest.fixture
def r2_store(settings, s3_server: str, s3_bucket: str) -> R2Store:
    """``default_store()`` with ``COMFYUME_STORAGE=r2`` pointed at the test server and a fresh bucket."""
    settings.OBJECT_STORE = object_store_settings(s3_server, s3_bucket)
    store = default_store()
    assert isinstance(store, R2Store)
    return store


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: str
    secret_access_key: str


@pytest.fixture
def s3_credentials(s3_server: str) -> Iterator[S3Credentials]:
    """A real access key allowed ``s3:*``, with moto checking every request's signature until the test ends."""
    iam = admin_client(s3_server, "iam")
    user = f"hub-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="s3-all", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    requests.post(f"{s3_server}/moto-api/reset-auth", data=b"0", timeout=5).raise_for_status()
    try:
        yield S3Credentials(key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        requests.post(f"{s3_server}/moto-api/reset-auth", data=b"inf", timeout=5).raise_for_status()
