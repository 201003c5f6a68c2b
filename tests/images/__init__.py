"""What the image tests stand in for, because it cannot be had here (tests/test_images.py says why each one).

- :func:`make_python_base`: the Python base images the Dockerfiles start ``FROM`` (Docker Hub is out of reach): Debian
  bookworm minbase with Debian's Python 3.11, made with debootstrap from the mirror apt uses.
- :func:`make_wheelhouse` and :class:`WheelhouseServer`: PyPI inside a build (HTTPS from a build goes through this
  network's TLS interception, whose CA must never enter an image): the requirements built into wheels on the host
  and served on 127.0.0.1 for the session; the stand-in base's ``/etc/pip.conf`` points pip there.
- :func:`comfyui_context`: a ComfyUI image, holding the simulator in ComfyUI's place (this folder's Dockerfile and
  ``comfyui_main.py``).
- :func:`make_nginx_stand_in`: the nginx image compose.yaml names, as Debian's nginx with the official image's
  entrypoint behaviour (tests/test_production_path.py).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from tests.docker_engine import DockerEngine, DockerError

ROOT = Path(__file__).resolve().parent.parent.parent
HERE = Path(__file__).resolve().parent
APT_SOURCES = Path("/etc/apt/sources.list.d")
# The Python the Dockerfiles' bases carry (3.11), as Debian ships it.
DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = "python3,python3-venv,python3-pip,python-is-python3,ca-certificates"
# What the simulator needs of ComfyUI's environment, pinned as the project pins them (requirements.txt).
COMFYUI_REQUIREMENTS = ("aiohttp", "pillow", "av")


def debian_mirror() -> str | None:
    """The Debian archive apt is configured with (deb822 ``*.sources`` first, then one-line lists), or None."""
    for path in sorted(APT_SOURCES.glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields: dict[str, list[str]] = {}
            for line in stanza.splitlines():
                if line and not line[0].isspace() and not line.startswith("#") and ":" in line:
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.split()
            if fields.get("enabled", ["yes"])[0] == "no" or "deb" not in fields.get("types", []):
                continue
            if _is_debian_archive(fields.get("uris", []), fields.get("suites", [])):
                return fields["uris"][0]
    for path in [Path("/etc/apt/sources.list"), *sorted(APT_SOURCES.glob("*.list"))]:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and _is_debian_archive(words[1:2], words[2:3]):
                return words[1]
    return None


def _is_debian_archive(uris: list[str], suites: list[str]) -> bool:
    """The main archive (``…/debian`` with a plain release name), not security or updates."""
    return bool(uris) and uris[0].rstrip("/").endswith("/debian") and any("-" not in s and "/" not in s for s in suites)


def make_wheelhouse(requirements: list[Path], into: Path) -> None:
    """Every requirement (and what it needs) as a wheel in ``into``, with the host's pip and its configuration."""
    args = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "-w", str(into)]
    for path in requirements:
        args += ["-r", str(path)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise DockerError(f"pip wheel failed:\n{result.stderr[-3000:]}")


def complete_wheelhouse(wheelhouse: Path, python_version: str) -> list[str]:
    """Add what the wheels need on the image's Python but not on the host's, which ``pip wheel`` resolved for: a
    dependency behind a version marker (redis needs async-timeout below Python 3.11.3; Debian's is 3.11.2). The
    requirements added (empty when none)."""
    target = {"python_full_version": python_version, "python_version": ".".join(python_version.split(".")[:2])}
    added: list[str] = []
    while True:
        present = {canonicalize_name(parse_wheel_filename(wheel.name)[0]) for wheel in wheelhouse.glob("*.whl")}
        missing = set()
        for wheel in wheelhouse.glob("*.whl"):
            for requirement in _requires(wheel):
                marker = requirement.marker
                if marker is None or canonicalize_name(requirement.name) in present:
                    continue
                if marker.evaluate({**target, "extra": ""}) and not marker.evaluate({"extra": ""}):
                    requirement.marker = None
                    missing.add(str(requirement))
        if not missing:
            return added
        requirements = wheelhouse / "target-only.txt"
        requirements.write_text("\n".join(sorted(missing)) + "\n")
        make_wheelhouse([requirements], wheelhouse)
        requirements.unlink()
        added += sorted(missing)


def _requires(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        [metadata] = [name for name in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", name)]
        lines = archive.read(metadata).decode(errors="replace").splitlines()
    return [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]


class WheelhouseServer:
    """A directory listing of the wheelhouse on 127.0.0.1 (pip's ``find-links``), in a thread; a context manager."""

    def __init__(self, directory: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, name="wheelhouse", daemon=True)

    def __enter__(self) -> WheelhouseServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def make_python_base(engine: DockerEngine, work: Path, mirror: str, find_links: str, tags: list[str]) -> None:
    """Debian bookworm minbase with Debian's Python 3.11, imported and tagged with each of ``tags``.

    What the official python images give that Debian's Python needs help with: ``python`` and ``pip`` on PATH
    (python-is-python3, python3-pip), and no PEP 668 marker (their Python is not Debian's, so ``pip install``
    into it is allowed). ``/etc/pip.conf`` sends pip to the wheelhouse only.
    """

    def prepare(rootfs: Path) -> None:
        for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        (rootfs / "etc" / "pip.conf").write_text(f"[global]\nno-index = true\nfind-links = {find_links}\n")

    changes = ["ENV LANG=C.UTF-8", 'CMD ["python3"]']
    _debootstrap_image(engine, work, mirror, BASE_PACKAGES, prepare, changes, tags)


# What the official nginx image's entrypoint does that compose.yaml relies on: run /docker-entrypoint.d/*.sh
# (deploy/nginx/reload-certificates.sh is mounted there) and write /etc/nginx/templates/*.template into
# /etc/nginx/conf.d/ with the container's environment variables filled in (only those: nginx's own $variables
# stay). The official image does the templates in its 20-envsubst-on-templates.sh, before the mounted 90- script.
NGINX_ENTRYPOINT = r"""#!/bin/sh
set -e
if [ "$1" = nginx ]; then
    defined=$(env | cut -d= -f1 | grep -E '^[A-Za-z_][A-Za-z0-9_]*$' | sed 's/.*/${&}/' | tr '
' ' ')
    for template in /etc/nginx/templates/*.template; do
        [ -f "$template" ] || continue
        envsubst "$defined" < "$template" > "/etc/nginx/conf.d/$(basename "$template" .template)"
    done
    for script in $(find /docker-entrypoint.d/ -follow -type f -name '*.sh' | sort); do
        if [ -x "$script" ]; then "$script"; else echo "$0: ignoring $script, not executable" >&2; fi
    done
fi
exec "$@"
"""


def make_nginx_stand_in(engine: DockerEngine, work: Path, mirror: str, tag: str) -> None:
    """Debian's nginx in the place of the official nginx image compose.yaml names (Docker Hub is out of reach):
    bookworm minbase with nginx, envsubst (gettext-base) and wget (the service's health check), the official
    image's entrypoint behaviour (:data:`NGINX_ENTRYPOINT`), its folders (/etc/nginx/conf.d as the one site
    folder, /var/cache/nginx) and its logs on the container's output. Debian's nginx is 1.22, the official
    image 1.28: the rendered site is checked with Debian's by tests/test_deploy.py too."""

    def prepare(rootfs: Path) -> None:
        (rootfs / "etc" / "nginx" / "sites-enabled" / "default").unlink(missing_ok=True)
        for folder in ("docker-entrypoint.d", "etc/nginx/templates", "var/cache/nginx"):
            (rootfs / folder).mkdir(parents=True, exist_ok=True)
        for log in ("access", "error"):
            (rootfs / "var" / "log" / "nginx" / f"{log}.log").unlink(missing_ok=True)
        (rootfs / "var" / "log" / "nginx" / "access.log").symlink_to("/dev/stdout")
        (rootfs / "var" / "log" / "nginx" / "error.log").symlink_to("/dev/stderr")
        entrypoint = rootfs / "docker-entrypoint.sh"
        entrypoint.write_text(NGINX_ENTRYPOINT)
        entrypoint.chmod(0o755)

    changes = [
        'ENTRYPOINT ["/docker-entrypoint.sh"]',
        'CMD ["nginx", "-g", "daemon off;"]',
        "EXPOSE 80 443",
    ]
    _debootstrap_image(engine, work, mirror, "nginx,gettext-base,wget,ca-certificates", prepare, changes, [tag])


def _debootstrap_image(
    engine: DockerEngine,
    work: Path,
    mirror: str,
    packages: str,
    prepare: Callable[[Path], None],
    changes: list[str],
    tags: list[str],
) -> None:
    """Debian bookworm minbase with ``packages``, changed by ``prepare(rootfs)``, imported with the Dockerfile
    ``changes`` and tagged with each of ``tags``; apt's caches left out."""
    rootfs = work / f"rootfs-{tags[0].replace('/', '-').replace(':', '-')}"
    try:
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={packages}", DEBIAN_SUITE, str(rootfs), mirror],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if result.returncode != 0:
            raise DockerError(f"debootstrap failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        prepare(rootfs)
        for cached in [*rootfs.glob("var/cache/apt/archives/*.deb"), *rootfs.glob("var/lib/apt/lists/*_*")]:
            cached.unlink()
        changes = ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", *changes]
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        docker_import = subprocess.run(
            [engine.docker, "import", *(f"--change={c}" for c in changes), "-", tags[0]],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            env=engine.env,
            timeout=600,
        )
        if tar.stdout is not None:
            tar.stdout.close()
        tar.wait(timeout=60)
        if docker_import.returncode != 0:
            raise DockerError(f"docker import failed:\n{docker_import.stderr[-2000:]}")
        for tag in tags[1:]:
            engine.run("tag", tags[0], tag)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def comfyui_context(into: Path) -> Path:
    """The build context of the stand-in ComfyUI image: the simulator, what it imports from the hub
    (``jobs/preflight.py``), its data, ``main.py`` and the pins of its dependencies."""
    into.mkdir(parents=True)
    shutil.copy(HERE / "comfyui-simulator.Dockerfile", into / "Dockerfile")
    shutil.copy(HERE / "comfyui_main.py", into / "main.py")
    skip = shutil.ignore_patterns("tests", "__pycache__", "*.pyc")
    (into / "gpu_backends").mkdir()
    shutil.copy(ROOT / "gpu_backends" / "__init__.py", into / "gpu_backends")
    shutil.copytree(ROOT / "gpu_backends" / "simulator", into / "gpu_backends" / "simulator", ignore=skip)
    shutil.copytree(ROOT / "gpu_backends" / "data", into / "gpu_backends" / "data", ignore=skip)
    (into / "jobs").mkdir()
    for name in ("__init__.py", "preflight.py"):
        shutil.copy(ROOT / "jobs" / name, into / "jobs")
    pins = [
        line
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if re.split(r"[=<>~!\[ ]", line.strip(), maxsplit=1)[0].lower() in COMFYUI_REQUIREMENTS
    ]
    assert len(pins) == len(COMFYUI_REQUIREMENTS), pins
    (into / "requirements.txt").write_text("\n".join(pins) + "\n")
    return into


def copy_repository(into: Path) -> Path:
    """The work tree's files as git sees them (tracked and new, not ignored), for a build from a changed copy."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the work tree is not there
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into
