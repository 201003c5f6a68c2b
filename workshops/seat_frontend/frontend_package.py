"""Which ComfyUI web frontend (``comfyui-frontend-package``) a seat serves, and where its files are.

The version is a setting (``COMFYUME_FRONTEND_VERSION``): the default is the one pinned in requirements.txt and
installed with the project; any other is installed once, beside the project, into
``COMFYUME_FRONTENDS_DIR/<version>/`` (``manage.py install_frontend``, which ``make run`` calls for you). A seat
image carries exactly one version, chosen when it is built. Nothing here needs Django: the seat frontend uses it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata, resources
from pathlib import Path

PACKAGE = "comfyui-frontend-package"
MODULE = "comfyui_frontend_package"
# The default, pinned in requirements.txt and workshops/seat_frontend/requirements.txt (a test keeps them equal):
# the newest on PyPI, which the Chromium walk in tests/test_browser_frontends.py passes.
DEFAULT_VERSION = "1.58.1"
# The versions the Chromium walk proves, newest first: the default and the frontend of ComfyUI 0.3.64.
SUPPORTED_VERSIONS = (DEFAULT_VERSION, "1.27.10")
VERSION_FORMAT = re.compile(r"^\d{1,3}\.\d{1,3}\.\d{1,4}$")


class FrontendMissing(Exception):
    """The configured version is neither installed with the project nor in the frontends folder."""


def check_version(version: str) -> str:
    version = version.strip()
    if not VERSION_FORMAT.match(version):
        raise FrontendMissing(
            f"COMFYUME_FRONTEND_VERSION must be a version of {PACKAGE} such as {DEFAULT_VERSION}, not {version!r}."
        )
    return version


def installed_version() -> str | None:
    """The version installed with the project (the seat image's one), if any."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def folder_for(version: str, frontends_dir: Path) -> Path:
    return frontends_dir / version


def web_root(version: str | None, frontends_dir: Path | None) -> Path:
    """The static files of ``version`` (None: the installed one). Raises FrontendMissing, saying how to get it."""
    installed = installed_version()
    if version is None or version == installed:
        if installed is None:
            raise FrontendMissing(f"{PACKAGE} is not installed: pip install -r requirements.txt")
        return Path(str(resources.files(MODULE) / "static"))
    version = check_version(version)
    if frontends_dir is not None:
        root = folder_for(version, frontends_dir) / MODULE / "static"
        if (root / "index.html").is_file():
            return root
    where = f" in {frontends_dir}" if frontends_dir is not None else ""
    raise FrontendMissing(
        f"ComfyUI frontend {version} is not installed{where} (this installation has {installed or 'none'}). "
        f"Install it with: python manage.py install_frontend {version}  "
        f"(a seat image: docker build --build-arg COMFYUI_FRONTEND_VERSION={version} …)"
    )


def served_version(root: Path) -> str:
    """The version whose files ``root`` holds, from the package's own metadata beside them."""
    package_dir = root.parent
    for dist_info in package_dir.parent.glob(f"{MODULE}-*.dist-info"):
        try:
            return metadata.Distribution.at(dist_info).version
        except (OSError, ValueError):
            continue
    return installed_version() or "unknown"


def install(version: str, frontends_dir: Path, *, quiet: bool = True) -> Path:
    """Install ``version`` into ``frontends_dir/<version>/`` with pip (nothing else changes); returns its web root.

    A version already there is not fetched again. pip writes into a temporary folder that is renamed into
    place only when complete, so an interrupted install leaves nothing half-made behind."""
    version = check_version(version)
    with_files = folder_for(version, frontends_dir) / MODULE / "static" / "index.html"
    if with_files.is_file():
        return with_files.parent
    frontends_dir.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=frontends_dir, prefix=f".{version}-"))
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps"]
    command += ["--target", str(partial), f"{PACKAGE}=={version}"] + (["--quiet"] if quiet else [])
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not (partial / MODULE / "static" / "index.html").is_file():
        shutil.rmtree(partial, ignore_errors=True)
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise FrontendMissing(f"pip could not install {PACKAGE}=={version}: {' '.join(detail) or 'no files'}")
    try:
        partial.rename(folder_for(version, frontends_dir))
    except OSError:  # another install finished first
        shutil.rmtree(partial, ignore_errors=True)
        if not with_files.is_file():
            raise
    return with_files.parent
