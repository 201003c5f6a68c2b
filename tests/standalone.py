"""Runs a standalone program's own tests as its image would: without Django (docs/ARCHITECTURE.md, "Layers").

``python -m tests.standalone gpu_backends/worker [pytest options]`` runs pytest on the program's ``tests/``
folder with pytest-django off, without pyproject.toml's options or the root conftest.py (both set Django up),
and with this module as a plugin. The plugin refuses to import Django, the other libraries only the hub installs
and the hub's own modules, and an import it refused fails the run even when the code caught the ImportError.
The normal run collects these tests too; tests/test_standalone_tests.py runs each program's this way as well.
"""

from __future__ import annotations

import importlib.abc
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HUB_LIBRARIES = frozenset({"django", "channels", "daphne", "rq", "django_rq", "redis", "psycopg", "psycopg2"})
HUB_PACKAGES = frozenset({"comfyume", "workshops", "jobs", "gpu_backends", "storage"})
PROGRAMS = ("workshops.seat_frontend", "gpu_backends.worker", "gpu_backends.simulator")
# What else of the hub's packages may come in: the packages around the programs (empty __init__ files) and the
# one pure module a program takes from the hub (the simulator validates prompts with jobs.preflight).
SHARED = frozenset({"workshops", "gpu_backends", "jobs", "jobs.preflight"})


def refused(name: str) -> bool:
    """Whether a program's tests may not import the module ``name``."""
    top = name.partition(".")[0]
    if top in HUB_LIBRARIES:
        return True
    if top not in HUB_PACKAGES or name in SHARED:
        return False
    return not any(name == program or name.startswith(f"{program}.") for program in PROGRAMS)


class RefuseTheHub(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path``: an import of what :func:`refused` names fails, and is remembered."""

    def __init__(self) -> None:
        self.refused: list[str] = []

    def find_spec(self, fullname, path=None, target=None):
        if refused(fullname):
            self.refused.append(fullname)
            raise ModuleNotFoundError(f"{fullname}: a standalone program's tests run without the hub", name=fullname)
        return None


GUARD = RefuseTheHub()


def pytest_configure(config: pytest.Config) -> None:
    already = sorted(name for name in sys.modules if refused(name))
    if already:
        raise pytest.UsageError(f"imported before the tests started (a plugin or conftest): {already}")
    sys.meta_path.insert(0, GUARD)


def pytest_unconfigure(config: pytest.Config) -> None:
    if GUARD in sys.meta_path:
        sys.meta_path.remove(GUARD)


def pytest_sessionfinish(session: pytest.Session) -> None:
    # A refused import that was caught (``try: import django``) still fails the run.
    if GUARD.refused and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    if GUARD.refused:
        terminalreporter.write_line(f"refused imports of the hub: {sorted(set(GUARD.refused))}", red=True)


def command(folder: str | Path, *args: str) -> list[str]:
    """The pytest command that runs ``folder`` (a program's tests folder) with the hub refused."""
    folder = (ROOT / folder).resolve()
    return [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:django",
        "-p",
        "no:cacheprovider",
        "-p",
        "tests.standalone",
        # No configuration file: pyproject.toml's options load tests.pytest_env and name Django's settings.
        "-c",
        os.devnull,
        "--rootdir",
        str(ROOT),
        # Only the conftest files in the folder: the root one loads Django and the hub's fixtures.
        "--confcutdir",
        str(folder),
        "--strict-markers",
        # pyproject.toml's asyncio settings, for an async test in a program's folder.
        "-o",
        "asyncio_mode=auto",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        str(folder),
        *args,
    ]


def environment() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name != "DJANGO_SETTINGS_MODULE"}
    return {**env, "PYTHONPATH": str(ROOT)}


def main(argv: Sequence[str]) -> int:
    if not argv:
        print("usage: python -m tests.standalone <program folder> [pytest options]", file=sys.stderr)
        return 2
    folder = Path(argv[0]) / "tests"
    return subprocess.call(command(folder, *argv[1:]), cwd=ROOT, env=environment())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
