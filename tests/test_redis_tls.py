"""Redis over a private network: a password and TLS (rediss://) as options of the Redis settings, proven
against a real redis-server that requires both (Debian's, started here with a CA and certificate made here).

Every client of the hub builds from ``settings.REDIS_URL``: the health check, the counters, the mailboxes, the
Channels layer and RQ each connect through TLS with the password in a process started with only the
environment variables an operator sets.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from comfyume.redis_url import with_options

ROOT = Path(__file__).resolve().parent.parent
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
PASSWORD = "s3cret/with:odd@chars"


def test_options_go_into_the_one_url():
    assert with_options("redis://r:6379/0") == "redis://r:6379/0"
    assert with_options("redis://r:6379/0", password=PASSWORD) == "redis://:s3cret%2Fwith%3Aodd%40chars@r:6379/0"
    assert with_options("rediss://app@r:6380/2", password="pw") == "rediss://app:pw@r:6380/2"


def test_a_ca_file_asks_for_a_verified_certificate(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    url = with_options("rediss://r:6380/0?socket_timeout=3", ca_file=str(ca))
    assert (
        url == f"rediss://r:6380/0?socket_timeout=3&ssl_ca_certs={str(ca).replace('/', '%2F')}&ssl_cert_reqs=required"
    )


@pytest.mark.parametrize(
    ("url", "options", "words"),
    [
        ("redis://:pw@r:6379/0", {"password": "other"}, "not both"),
        ("redis://r:6379/0", {"ca_file": "/etc/hostname"}, "must start with rediss://"),
        ("rediss://r:6380/0", {"ca_file": "/no/such/ca.crt"}, "there is no file /no/such/ca.crt"),
        ("unix:///tmp/redis.sock", {"password": "pw"}, "the embedded Redis takes neither"),
    ],
)
def test_options_that_do_not_fit_stop_the_start_with_the_setting_named(url, options, words):
    with pytest.raises(ImproperlyConfigured, match=words):
        with_options(url, **options)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    """A redis-server that takes TLS connections only, with a password; its CA's certificate."""
    if not Path(REDIS_SERVER).exists() or not shutil.which("openssl"):
        pytest.skip("needs Debian's redis-server and openssl")
    help_text = subprocess.run([REDIS_SERVER, "--help"], capture_output=True, text=True).stdout
    here = tmp_path_factory.mktemp("tls-redis")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=here)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "redis.key",
             "-out", "redis.csr", cwd=here)  # fmt: skip
    (here / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "redis.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "redis.crt", cwd=here)  # fmt: skip
    port = _free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", "redis.crt", "--tls-key-file", "redis.key", "--tls-ca-cert-file", "ca.crt",
         "--tls-auth-clients", "no", "--requirepass", PASSWORD, "--save", "", "--appendonly", "no",
         "--dir", str(here)],
        cwd=here, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    if proc.poll() is not None:
        output = proc.stdout.read() if proc.stdout else ""
        if "tls" in output.lower() and "tls-port" not in help_text:
            pytest.skip(f"this redis-server has no TLS: {output[-200:]}")
        raise AssertionError(f"redis-server did not start: {output[-500:]}")
    yield port, here / "ca.crt"
    proc.terminate()
    proc.wait(10)


PROBE = """
import json, django
django.setup()
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
import django_rq
from comfyume.health import _check_redis
from comfyume.redis_client import counters
from gpu_backends.mailbox import Mailbox

out = {"health": _check_redis()}
if out["health"] == "ok":
    out["counter"] = counters().incr("tls-probe")
    box = Mailbox("tls-probe")
    box.post({"kind": "events", "seq": 1})
    out["mailbox"] = box.receive(2)
    layer = get_channel_layer()
    async def roundtrip():
        channel = await layer.new_channel()
        await layer.group_add("tls-probe", channel)
        await layer.group_send("tls-probe", {"type": "probe.hello"})
        return await layer.receive(channel)
    out["channels"] = async_to_sync(roundtrip)()
    queue = django_rq.get_queue(settings.RQ_QUEUE_NAME)
    queue.enqueue("builtins.print", "tls-probe")
    out["rq_queued"] = queue.count
print(json.dumps(out))
"""


def _probe(env: dict[str, str], tmp_path: Path) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "COMFYUME_", "DATABASE_URL"))}
    base.update(
        DJANGO_SETTINGS_MODULE="comfyume.settings",
        COMFYUME_DATA_DIR=str(tmp_path),
        COMFYUME_REDIS_PREFIX=f"tls-{os.getpid()}",
        **env,
    )
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=base, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_client_of_the_hub_reaches_a_redis_that_wants_tls_and_a_password(tls_redis, tmp_path):
    port, ca = tls_redis
    out = _probe(
        {
            "REDIS_URL": f"rediss://127.0.0.1:{port}/0",
            "COMFYUME_REDIS_PASSWORD": PASSWORD,
            "COMFYUME_REDIS_TLS_CA_FILE": str(ca),
        },
        tmp_path,
    )
    assert out["health"] == "ok"
    assert out["counter"] == 1
    assert out["mailbox"] == {"kind": "events", "seq": 1}
    assert out["channels"] == {"type": "probe.hello"}
    assert out["rq_queued"] == 1


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"COMFYUME_REDIS_PASSWORD": "wrong"}, "invalid"),  # WRONGPASS invalid username-password pair
        ({}, "auth"),  # no password: NOAUTH Authentication required
    ],
)
def test_a_wrong_or_missing_password_shows_on_health_not_as_a_crash(tls_redis, tmp_path, env, words):
    port, ca = tls_redis
    out = _probe({"REDIS_URL": f"rediss://127.0.0.1:{port}/0", "COMFYUME_REDIS_TLS_CA_FILE": str(ca), **env}, tmp_path)
    assert out["health"].startswith("error") and words in out["health"].lower(), out


def test_a_server_certificate_the_ca_did_not_sign_is_refused(tls_redis, tmp_path):
    port, _ = tls_redis
    other = tmp_path / "other-ca"
    other.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other",
             "-keyout", "o.key", "-out", "o.crt", cwd=other)  # fmt: skip
    out = _probe(
        {
            "REDIS_URL": f"rediss://127.0.0.1:{port}/0",
            "COMFYUME_REDIS_PASSWORD": PASSWORD,
            "COMFYUME_REDIS_TLS_CA_FILE": str(other / "o.crt"),
        },
        tmp_path,
    )
    assert out["health"].startswith("error") and "certificate" in out["health"].lower(), out


def test_the_containers_health_check_speaks_tls_with_the_password(tls_redis, tmp_path):
    """``python -m comfyume.redis_url`` (the compose health check of workers and reconciler) builds its URL from the
    same variables as the settings."""
    port, ca = tls_redis
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "COMFYUME_"))}
    env.update(REDIS_URL=f"rediss://127.0.0.1:{port}/0", COMFYUME_REDIS_TLS_CA_FILE=str(ca))
    run = [sys.executable, "-m", "comfyume.redis_url"]
    ok = subprocess.run(run, cwd=ROOT, env={**env, "COMFYUME_REDIS_PASSWORD": PASSWORD}, capture_output=True)
    assert ok.returncode == 0, ok.stderr
    wrong = subprocess.run(run, cwd=ROOT, env={**env, "COMFYUME_REDIS_PASSWORD": "x"}, capture_output=True, text=True)
    assert wrong.returncode == 1 and "Redis does not answer" in wrong.stderr
