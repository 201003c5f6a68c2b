#!/usr/bin/env python3
"""Download the models of a manifest (``manage.py gpu_manifest --out models.json``) into a ComfyUI models folder.

    python fetch_models.py models.json --to /mnt/models          # a Verda volume, or a folder to bake in
    python fetch_models.py models.json --to /mnt/models --dry-run  # sizes only, nothing written

Standard library only, so it runs anywhere a Python 3.11 is (the GPU image, a laptop, the server). Each file
goes to ``<to>/<folder>/<name>``; one already there with the right size is kept; an interrupted download is
resumed (``<name>.part`` and an HTTP range) and moved into place only when complete. A gated model (Flux.2
Klein 9B, some LTX-2 files) needs a Hugging Face token that has accepted its licence: set ``HF_TOKEN``. It is
sent only to huggingface.co and never forwarded on a redirect (Hugging Face redirects downloads to its CDN with
a signed address). Exit status: 0 when every model is in place, 1 when any failed (each failure says why).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHUNK = 1024 * 1024
TOKEN_HOSTS = ("huggingface.co",)
TIMEOUT = 60


class FetchError(Exception):
    pass


def _safe_part(text: str, what: str) -> str:
    """A relative path inside the models folder: no absolute path, no '..', nothing a file system treats oddly."""
    if not text or text.startswith("/") or "\\" in text or "\x00" in text or ".." in Path(text).parts or text == ".":
        raise FetchError(f"the manifest's {what} {text!r} is not a plain relative name")
    return text


def _request(url: str, *, method: str = "GET", start: int = 0) -> urllib.request.Request:
    request = urllib.request.Request(url, method=method, headers={"User-Agent": "comfyume-fetch-models/1"})
    token = os.environ.get("HF_TOKEN", "").strip()
    host = (urlsplit(url).hostname or "").lower()
    if token and any(host == h or host.endswith("." + h) for h in TOKEN_HOSTS):
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    if start:
        request.add_header("Range", f"bytes={start}-")
    return request


def _open(request: urllib.request.Request) -> Any:
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        gated = exc.code in (401, 403)
        hint = " (a gated model: set HF_TOKEN to a token that has accepted its licence)" if gated else ""
        raise FetchError(f"{exc.code} {exc.reason}{hint}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise FetchError(f"cannot reach it: {getattr(exc, 'reason', exc)}") from None


def size_of(url: str) -> int | None:
    with _open(_request(url, method="HEAD")) as answer:
        length = answer.headers.get("Content-Length")
        return int(length) if length and length.isdigit() else None


def fetch(url: str, target: Path) -> str:
    """Download ``url`` to ``target`` (resuming ``target.part``); what happened, in a few words."""
    expected = size_of(url)
    if target.exists() and expected is not None and target.stat().st_size == expected:
        return "already there"
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    if expected is not None and start > expected:
        part.unlink()
        start = 0
    with _open(_request(url, start=start)) as answer:
        if start and answer.status != 206:  # the server ignored the range: start again
            start = 0
        with part.open("ab" if start else "wb") as out:
            shutil.copyfileobj(answer, out, CHUNK)
    got = part.stat().st_size
    if expected is not None and got != expected:
        raise FetchError(f"got {got} bytes of {expected}; run it again to resume")
    part.replace(target)
    return f"{got / 1e9:.2f} GB downloaded" + (" (resumed)" if start else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", type=Path, help="The JSON manage.py gpu_manifest --out wrote")
    parser.add_argument("--to", type=Path, required=True, help="ComfyUI's models folder (or a volume's)")
    parser.add_argument("--dry-run", action="store_true", help="Print each model's size and the total; write nothing")
    args = parser.parse_args(argv)
    try:
        manifest = json.loads(args.manifest.read_text(encoding="utf-8"))
        models = manifest["models"]
        assert isinstance(models, list)
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
        print(f"{args.manifest}: not a manifest from manage.py gpu_manifest ({exc})", file=sys.stderr)
        return 2
    failed, total = [], 0
    for model in models:
        name = f"{model.get('folder') or '?'}/{model.get('name')}"
        try:
            if not model.get("folder"):
                raise FetchError("no folder known (the template does not say and its loader is not a core one)")
            folder = _safe_part(str(model["folder"]), "folder")
            filename = _safe_part(str(model.get("name") or ""), "name")
            url = str(model.get("url") or "")
            if not url.startswith(("https://", "http://")):
                raise FetchError("no download address: put the file there yourself")
            if args.dry_run:
                size = size_of(url)
                total += size or 0
                said = f"{size / 1e9:.2f} GB" if size is not None else "size unknown"
            else:
                said = fetch(url, args.to / folder / filename)
        except FetchError as exc:
            failed.append(name)
            print(f"FAILED {name}: {exc}", file=sys.stderr)
            continue
        print(f"{name}: {said}")
    if args.dry_run:
        print(f"total {total / 1e9:.2f} GB for {len(models) - len(failed)} model(s) with a known size")
    if failed:
        print(f"{len(failed)} of {len(models)} model(s) not in place: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
