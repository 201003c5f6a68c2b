"""Production settings refuse to start on dangerous configuration, naming the variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def start(tmp_path, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "COMFYUME_ENV")}
    clean.update(COMFYUME_DATA_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="comfyume.settings", **env)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('started')"],
        cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_production_without_secret_key_refuses_naming_it(tmp_path):
    result = start(tmp_path, COMFYUME_ENV="production", ALLOWED_HOSTS="workshop.example.com")
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_debug_with_a_public_host_refuses_naming_both(tmp_path):
    result = start(tmp_path, SECRET_KEY="x" * 50, DEBUG="true", ALLOWED_HOSTS="workshop.example.com")
    assert result.returncode != 0
    assert "DEBUG is on while ALLOWED_HOSTS names a public host (workshop.example.com)" in result.stderr


def test_unknown_mode_is_refused(tmp_path):
    result = start(tmp_path, COMFYUME_ENV="staging")
    assert result.returncode != 0 and "COMFYUME_ENV must be" in result.stderr


@pytest.mark.parametrize(
    "env",
    [
        {"COMFYUME_ENV": "production", "SECRET_KEY": "x" * 50, "ALLOWED_HOSTS": "workshop.example.com"},
        {},  # embedded defaults: a secret key is generated into the data dir
    ],
)
def test_sound_configurations_start(tmp_path, env):
    result = start(tmp_path, **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "started"


def test_embedded_secret_key_is_kept_across_starts(tmp_path):
    start(tmp_path)
    first = (tmp_path / "secret_key").read_text()
    start(tmp_path)
    assert (tmp_path / "secret_key").read_text() == first and len(first) > 40


def test_unknown_seat_driver_is_refused_naming_it(tmp_path):
    result = start(tmp_path, COMFYUME_SEAT_DRIVER="kubernetes")
    assert result.returncode != 0
    assert "COMFYUME_SEAT_DRIVER must be one of process, docker, not 'kubernetes'" in result.stderr


def test_docker_seats_cannot_reach_a_hub_on_localhost(tmp_path):
    result = start(tmp_path, COMFYUME_SEAT_DRIVER="docker", COMFYUME_HUB_INTERNAL_URL="http://127.0.0.1:8000")
    assert result.returncode != 0
    assert "COMFYUME_HUB_INTERNAL_URL points at localhost" in result.stderr


def test_a_frontend_version_that_is_not_one_is_refused_naming_it(tmp_path):
    result = start(tmp_path, COMFYUME_FRONTEND_VERSION="latest")
    assert result.returncode != 0
    assert "COMFYUME_FRONTEND_VERSION must be a version of comfyui-frontend-package" in result.stderr
    assert start(tmp_path, COMFYUME_FRONTEND_VERSION="").returncode == 0  # empty, as .env.example has it: the pin
