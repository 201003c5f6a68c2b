"""The Redis address every client of the hub uses, with the password and TLS options the settings name.

Each client (the Channels layer, RQ and django-rq, the mailboxes, the counters, ``/health``) builds its
connection from one URL, so the options go into that URL: the password as its user info, TLS as the
``rediss://`` scheme with redis-py's ``ssl_ca_certs`` / ``ssl_cert_reqs`` query arguments. A Redis reached over
a private network (the system we replace used a Tailscale network) then takes ``rediss://`` and a password, and
the password can live apart from the URL (a secret file or variable of its own).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import redis
from django.core.exceptions import ImproperlyConfigured


def with_options(url: str, *, password: str = "", ca_file: str = "") -> str:
    """``url`` with ``password`` (``COMFYUME_REDIS_PASSWORD``) and ``ca_file`` (``COMFYUME_REDIS_TLS_CA_FILE``),
    or :class:`ImproperlyConfigured` naming the setting that does not fit."""
    if not password and not ca_file:
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ImproperlyConfigured(
            f"COMFYUME_REDIS_PASSWORD and COMFYUME_REDIS_TLS_CA_FILE need a redis:// or rediss:// REDIS_URL, "
            f"not {parts.scheme or 'an empty'}:// (the embedded Redis takes neither)."
        )
    netloc = parts.netloc
    if password:
        if parts.password is not None:
            raise ImproperlyConfigured(
                "REDIS_URL already holds a password: set it there or in COMFYUME_REDIS_PASSWORD, not both."
            )
        host = netloc.rpartition("@")[2]
        user = quote(parts.username or "", safe="")
        netloc = f"{user}:{quote(password, safe='')}@{host}"
    query = parts.query
    if ca_file:
        if parts.scheme != "rediss":
            raise ImproperlyConfigured(
                "COMFYUME_REDIS_TLS_CA_FILE verifies a TLS connection: REDIS_URL must start with rediss://."
            )
        if not Path(ca_file).is_file():
            raise ImproperlyConfigured(f"COMFYUME_REDIS_TLS_CA_FILE: there is no file {ca_file}.")
        options = dict(parse_qsl(parts.query))
        options.update(ssl_ca_certs=ca_file, ssl_cert_reqs="required")
        query = urlencode(options)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def from_environment(default: str = "") -> str:
    """``REDIS_URL`` (``default`` when unset) with ``COMFYUME_REDIS_PASSWORD`` and ``COMFYUME_REDIS_TLS_CA_FILE``:
    what the settings use, and the containers' health check without Django."""
    return with_options(
        os.environ.get("REDIS_URL", "") or default,
        password=os.environ.get("COMFYUME_REDIS_PASSWORD", ""),
        ca_file=os.environ.get("COMFYUME_REDIS_TLS_CA_FILE", ""),
    )


def main() -> int:
    """``python -m comfyume.redis_url``: 0 when the Redis the settings name answers PING, else 1 and why (the
    containers' health check, with TLS and the password as the hub uses them)."""
    try:
        redis.Redis.from_url(from_environment(), socket_timeout=3, socket_connect_timeout=3).ping()
    except (ImproperlyConfigured, redis.RedisError, OSError) as exc:
        print(f"Redis does not answer: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
