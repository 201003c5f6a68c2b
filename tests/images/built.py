"""The hub, seat and GPU worker images, built once per session for every test module that needs them.

A pytest plugin (the root conftest lists it), so tests/test_images.py and tests/test_docker_seats.py share one
``images`` fixture, and a session that runs both builds each image once. The stand-ins it builds on are those of
this package (tests/images/__init__.py); tests/test_images.py says why each one.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.docker_engine import DockerEngine, install_debian_packages
from tests.images import (
    WheelhouseServer,
    comfyui_context,
    complete_wheelhouse,
    debian_mirror,
    make_python_base,
    make_wheelhouse,
)

ROOT = Path(__file__).resolve().parent.parent.parent
DOCKERFILES = {
    "hub": "deploy/hub/Dockerfile",
    "seat": "deploy/seat-frontend/Dockerfile",
    "worker": "deploy/gpu-worker/Dockerfile",
}
REQUIREMENTS = [
    ROOT / "requirements.txt",
    ROOT / "workshops" / "seat_frontend" / "requirements.txt",
    ROOT / "gpu_backends" / "worker" / "requirements.txt",
]
PYTHON_VERSION = "import platform; print(platform.python_version())"


@dataclass
class Images:
    """The images this session built, their tags and how long each took."""

    engine: DockerEngine
    prefix: str
    tags: dict[str, str]
    comfyui: str  # the stand-in ComfyUI image the worker is built FROM
    base: str  # the Python base the hub and the seat start FROM (a stand-in, or what the engine had)
    cold_seconds: dict[str, float]
    made: list[str] = field(default_factory=list)  # every tag this session created

    def build(self, name: str, tag: str, context: Path) -> float:
        """The deploy README's build command for ``name``; seconds it took."""
        extra = ["--build-arg", f"COMFYUI_IMAGE={self.comfyui}"] if name == "worker" else []
        started = time.monotonic()
        self.engine.run(
            "build", "--network", "host", "-f", DOCKERFILES[name], *extra, "-t", tag, ".", cwd=context, timeout=900
        )
        self.made.append(tag)
        return time.monotonic() - started

    def size_mb(self, tag: str) -> float:
        return self.engine.inspect(tag)["Size"] / 1e6


def from_names(dockerfile: str) -> list[str]:
    """The images a Dockerfile starts FROM by a fixed name (not a build argument)."""
    text = (ROOT / dockerfile).read_text()
    return [name for name in re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE) if "$" not in name]


@pytest.fixture(scope="session")
def images(request: pytest.FixtureRequest) -> Iterator[Images]:
    """The hub, seat and GPU worker images, built once for the session on the stand-ins the docstring lists."""
    engine: DockerEngine = request.getfixturevalue("docker_engine")
    prefix = f"comfyume-test-{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="cfme-images-"))
    bases = sorted({name for key in ("hub", "seat") for name in from_names(DOCKERFILES[key])})
    assert bases, "the hub and seat Dockerfiles name their Python base"
    built = Images(engine, prefix, {}, f"{prefix}/comfyui-simulator:latest", bases[0], {})
    try:
        started = time.monotonic()
        (work / "wheels").mkdir()
        make_wheelhouse(REQUIREMENTS, work / "wheels")
        print(f"\nBENCH images_wheelhouse_s {time.monotonic() - started:.1f} s (pip wheel on the host)")
        with WheelhouseServer(work / "wheels") as wheelhouse:
            missing = [name for name in bases if not engine.has_image(name)]
            if missing:
                reason = install_debian_packages("debootstrap", commands=["debootstrap"])
                mirror = debian_mirror()
                if reason or mirror is None:
                    pytest.skip(reason or "no Debian archive in apt's sources to debootstrap the base image from")
                started = time.monotonic()
                make_python_base(engine, work, mirror, wheelhouse.url, missing)
                built.made += missing
                print(f"BENCH images_stand_in_base_s {time.monotonic() - started:.1f} s (debootstrap + import)")
                print(f"BENCH image_stand_in_base_mb {built.size_mb(missing[0]):.0f} MB")
            version = engine.run("run", "--rm", "--network", "none", built.base, "python3", "-c", PYTHON_VERSION)
            complete_wheelhouse(work / "wheels", version.stdout.strip())
            engine.run(
                "build", "--network", "host", "--build-arg", f"BASE_IMAGE={built.base}", "-t", built.comfyui, ".",
                cwd=comfyui_context(work / "comfyui"), timeout=900,
            )  # fmt: skip
            built.made.append(built.comfyui)
            for name in DOCKERFILES:
                built.tags[name] = f"{prefix}/{name}:cold"
                built.cold_seconds[name] = built.build(name, built.tags[name], ROOT)
                print(f"BENCH image_{name}_build_cold_s {built.cold_seconds[name]:.1f} s")
            yield built
    finally:
        if not engine.owned:  # an engine of our own goes with its data; another keeps only what it had
            for tag in reversed(built.made):
                engine.run("rmi", "--force", tag, check=False)
        shutil.rmtree(work, ignore_errors=True)
