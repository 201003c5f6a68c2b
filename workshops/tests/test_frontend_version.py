"""The ComfyUI web frontend a seat serves is a setting: the installed pin by default, another version from the
frontends folder, and a clear refusal (naming the command that fixes it) when that version is not there."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import override_settings

from workshops.seat_frontend import app as seat_app
from workshops.seat_frontend import frontend_package
from workshops.seat_frontend.app import build_app
from workshops.seat_frontend.config import SeatConfig

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_is_the_version_both_requirements_files_pin_and_the_one_installed():
    for requirements in (ROOT / "requirements.txt", ROOT / "workshops/seat_frontend/requirements.txt"):
        pins = [line for line in requirements.read_text().splitlines() if line.startswith("comfyui-frontend-package==")]
        assert pins == [f"comfyui-frontend-package=={frontend_package.DEFAULT_VERSION}"], requirements
    assert frontend_package.installed_version() == frontend_package.DEFAULT_VERSION
    assert frontend_package.SUPPORTED_VERSIONS[0] == frontend_package.DEFAULT_VERSION


def _config(tmp_path: Path, **env: str) -> SeatConfig:
    base = {
        "COMFYUME_HUB_URL": "http://127.0.0.1:9",
        "COMFYUME_SEAT_TOKEN": "t",
        "COMFYUME_SEAT_DATA_DIR": str(tmp_path),
    }
    return SeatConfig.from_env({**base, **env})


def _fake_frontend(frontends_dir: Path, version: str) -> Path:
    """What ``pip install --target`` leaves: the package's files and its dist-info."""
    static = frontends_dir / version / frontend_package.MODULE / "static"
    static.mkdir(parents=True)
    (static / "index.html").write_text("<html><head></head><body>frontend " + version + "</body></html>")
    dist_info = frontends_dir / version / f"{frontend_package.MODULE}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {frontend_package.PACKAGE}\nVersion: {version}\n"
    )
    return static


def _system_stats(app) -> dict:
    response = asyncio.run(seat_app.system_stats(make_mocked_request("GET", "/api/system_stats", app=app)))
    return json.loads(response.text or "")


def test_a_seat_serves_the_configured_version_and_reports_it_as_comfyui_does(tmp_path):
    frontends = tmp_path / "frontends"
    static = _fake_frontend(frontends, "1.27.10")
    config = _config(tmp_path / "seat", COMFYUME_FRONTEND_VERSION="1.27.10", COMFYUME_FRONTENDS_DIR=str(frontends))
    assert (config.frontend_version, config.frontends_dir) == ("1.27.10", frontends)
    app = build_app(config)
    assert app[seat_app.WEB_ROOT] == static and "frontend 1.27.10" in app[seat_app.INDEX]
    assert _system_stats(app)["system"]["required_frontend_version"] == "1.27.10"
    # Without a version: the installed one.
    app = build_app(_config(tmp_path / "seat"))
    assert _system_stats(app)["system"]["required_frontend_version"] == frontend_package.installed_version()


def test_a_version_that_is_not_there_stops_the_seat_saying_how_to_install_it(tmp_path):
    env = {
        **os.environ,
        "COMFYUME_HUB_URL": "http://127.0.0.1:9",
        "COMFYUME_SEAT_TOKEN": "t",
        "COMFYUME_SEAT_DATA_DIR": str(tmp_path / "seat"),
        "COMFYUME_SEAT_PORT": "9",
        "COMFYUME_FRONTEND_VERSION": "1.26.1",
        "COMFYUME_FRONTENDS_DIR": str(tmp_path / "frontends"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "workshops.seat_frontend"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "ComfyUI frontend 1.26.1 is not installed in" in result.stderr
    assert (
        "python manage.py install_frontend 1.26.1" in result.stderr
        and "--build-arg COMFYUI_FRONTEND_VERSION=1.26.1" in result.stderr
    )
    with pytest.raises(frontend_package.FrontendMissing, match="must be a version"):
        frontend_package.web_root("../../etc", tmp_path)


def test_a_version_pip_cannot_find_leaves_nothing_behind(tmp_path):
    """The real pip against the package index: 0.0.1 was never published."""
    with pytest.raises(
        frontend_package.FrontendMissing, match=re.escape("pip could not install comfyui-frontend-package==0.0.1")
    ):
        frontend_package.install("0.0.1", tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.django_db
def test_the_process_driver_hands_the_version_and_its_folder_to_each_seat(tmp_path, django_user_model):
    from workshops import frontends
    from workshops.provisioning import get_driver
    from workshops.services import create_workshop

    with override_settings(
        SEAT_FRONTENDS={**settings.SEAT_FRONTENDS, "FRONTEND_VERSION": "1.27.10", "FRONTENDS_DIR": tmp_path}
    ):
        workshop, _ = create_workshop("versions", seats=1)
        spec = frontends.seat_spec(workshop.seats.get())
        assert spec.env["COMFYUME_FRONTEND_VERSION"] == "1.27.10"
        driver = get_driver("process")
        assert driver._settings(spec)["COMFYUME_FRONTENDS_DIR"] == str(tmp_path)


@pytest.mark.django_db
def test_install_frontend_installs_once_and_says_so(tmp_path, monkeypatch):
    """``manage.py install_frontend``: the configured version by default, nothing fetched when it is there."""
    calls = []
    monkeypatch.setattr(frontend_package.subprocess, "run", lambda *a, **k: calls.append(a) or None)
    _fake_frontend(tmp_path, "1.27.10")
    out = StringIO()
    with override_settings(SEAT_FRONTENDS={**settings.SEAT_FRONTENDS, "FRONTENDS_DIR": tmp_path}):
        call_command("install_frontend", "1.27.10", stdout=out)
        call_command("install_frontend", stdout=out)  # the default: the installed pin
        with pytest.raises(CommandError, match="must be a version"):
            call_command("install_frontend", "newest")
    assert calls == []
    text = out.getvalue()
    assert (
        f"ComfyUI frontend 1.27.10: {tmp_path / '1.27.10'}" in text
        and "Seats serve it once COMFYUME_FRONTEND_VERSION=1.27.10" in text
    )
    assert f"ComfyUI frontend {frontend_package.DEFAULT_VERSION}:" in text
