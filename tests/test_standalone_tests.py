"""Each standalone program's own tests (its folder's ``tests/``) pass without Django: run in a subprocess the way
``python -m tests.standalone`` runs them, with Django, the hub's other libraries and its modules refused."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import standalone
from tests.test_layers import STANDALONE

# How many tests each program's folder holds today: fewer passing means some were lost or went uncollected.
AT_LEAST = {"gpu_backends.simulator": 44, "gpu_backends.worker": 41, "workshops.seat_frontend": 66}


def start(folder: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            standalone.command(folder, "-q"),
            cwd=standalone.ROOT,
            env=standalone.environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def finish(run: subprocess.Popen[bytes], log: Path) -> str:
    run.wait(timeout=300)
    return log.read_text()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Iterator[dict[str, tuple[subprocess.Popen[bytes], Path]]]:
    """The programs' runs, started together: the whole takes as long as the longest one."""
    logs = tmp_path_factory.mktemp("standalone")
    started = {}
    for program in AT_LEAST:
        log = logs / f"{program}.log"
        started[program] = (start(Path(*program.split(".")) / "tests", log), log)
    yield started
    for run, _ in started.values():
        if run.poll() is None:
            run.kill()
            run.wait()


def test_every_standalone_program_has_its_tests_run_alone():
    assert set(AT_LEAST) == set(STANDALONE) == set(standalone.PROGRAMS)


@pytest.mark.parametrize("program", sorted(AT_LEAST))
def test_a_programs_own_tests_pass_without_django(runs, program):
    run, log = runs[program]
    output = finish(run, log)
    assert run.returncode == 0, output[-4000:]
    passed = re.search(r"(\d+) passed", output.strip().splitlines()[-1])
    assert passed and int(passed.group(1)) >= AT_LEAST[program], output[-4000:]


def test_the_guard_refuses_the_hub_and_fails_the_run_even_when_the_import_error_was_caught(tmp_path):
    (tmp_path / "test_guarded.py").write_text(
        "def test_a_caught_import_of_django():\n"
        "    try:\n"
        "        import django  # noqa: F401\n"
        "    except ImportError:\n"
        "        pass\n"
        "\n"
        "def test_a_module_of_the_hub():\n"
        "    import workshops.models  # noqa: F401\n"
        "\n"
        "def test_the_programs_and_what_they_share():\n"
        "    import gpu_backends.simulator, gpu_backends.worker.app, jobs.preflight, workshops.seat_frontend.app\n"
        "    import tests.recorded  # noqa: F401\n"
    )
    log = tmp_path / "run.log"
    run = start(tmp_path, log)
    output = finish(run, log)

    assert run.returncode == 1, output
    assert "1 failed, 2 passed" in output and "ModuleNotFoundError: workshops.models" in output
    assert "refused imports of the hub: ['django', 'workshops.models']" in output


def test_what_the_guard_refuses():
    refused = ["django.conf", "channels", "rq", "redis", "comfyume", "comfyume.settings", "jobs.models", "storage"]
    allowed = ["gpu_backends", "gpu_backends.worker.tests.fake_hub", "jobs", "jobs.preflight", "tests.recorded"]
    assert [name for name in refused if not standalone.refused(name)] == []
    assert [name for name in allowed if standalone.refused(name)] == []
    assert standalone.refused("gpu_backends.models") and standalone.refused("workshops.seat_api")
    assert not standalone.refused("workshops.seat_frontend.media")
