"""The docs agree with the code: every variable a doc names is in docs/CONFIGURATION.md and exists, and every
command a doc tells a reader to run exists.

A reader follows the docs to the letter; a renamed variable, a removed command or a make target that never
existed leaves them stuck. These tests read the docs (README.md, docs/, deploy/'s READMEs and .env.example) the
way a reader would.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from django.core.management import get_commands

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("deploy/**/*.md"), ROOT / "deploy/.env.example"])
CONFIGURATION = ROOT / "docs/CONFIGURATION.md"

# An upper-case name with underscores, not part of a longer word or a call: what a doc names a variable by.
NAME = re.compile(r"(?<![\w.$/-])([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+_?)(?![\w(])")
# Names in the docs that are not environment variables, each with what it is.
NOT_VARIABLES = {
    "BACKEND_DOWN_DEADLINE": "the reconciler's setting key, from COMFYUME_BACKEND_DOWN_DEADLINE",
    "COLD_START_TIMEOUT": "a setting key, from COMFYUME_COLD_START_TIMEOUT",
    "HEARTBEAT_TIMEOUT": "a setting key, from COMFYUME_HEARTBEAT_TIMEOUT",
    "WORKER_SILENCE": "a setting key, from COMFYUME_WORKER_SILENCE",
    "QUIET_CHECK": "a constant of gpu_backends/providers.py",
    "SUPPORTED_VERSIONS": "a constant of workshops/frontend_package.py",
    "BACKUP_ID": "a placeholder in a command line",
    "CONN_HEALTH_CHECKS": "a Django database setting",
    "CONN_MAX_AGE": "a Django database setting",
    "DATA_UPLOAD_MAX_MEMORY_SIZE": "a Django setting",
    "FILE_UPLOAD_MAX_MEMORY_SIZE": "a Django setting",
    "STATIC_ROOT": "a Django setting",
    "SO_REUSEPORT": "a socket option",
    "PREVIEW_IMAGE": "a ComfyUI binary event type",
    "PREVIEW_IMAGE_WITH_METADATA": "a ComfyUI binary event type",
    "SERVERLESS_UPDATE": "a file of the system we replace (docs/VERDA.md's sources)",
}
# Variables read by the tools themselves, not by our code: docker compose; and a family we only write.
READ_BY_TOOLS = {
    "COMPOSE_PROJECT_NAME": "docker compose",
    "COMPOSE_FILE": "docker compose",
    "SEAT_TOKEN_USER001": "the compose file render_compose_users writes names ${SEAT_TOKEN_USER001}…",
}
# Paths the docs name that are not in the repository, each with where it comes from.
MADE_ELSEWHERE = {
    "deploy/.env": "copied from deploy/.env.example on the server",
    "deploy/certificate/": "certbot's, on the server",
    "workshops/demo/": "a storage key: outputs are kept under workshops/<workshop>/<seat>/",
}


def configured() -> set[str]:
    """The variables docs/CONFIGURATION.md's tables list (the first column of each row)."""
    names: set[str] = set()
    for line in CONFIGURATION.read_text().splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    return names


def named_in_docs() -> dict[str, set[str]]:
    """Every variable-like name the docs use, with the docs that use it."""
    found: dict[str, set[str]] = {}
    for doc in DOCS:
        for match in NAME.finditer(doc.read_text()):
            found.setdefault(match.group(1), set()).add(str(doc.relative_to(ROOT)))
    return found


def test_every_variable_a_doc_names_is_in_configuration_md():
    listed = configured()
    missing = {}
    for name, docs in named_in_docs().items():
        if name in NOT_VARIABLES:
            continue
        if name.endswith("_"):  # a family (`COMFYUME_R2_*`): at least one member is listed
            if not any(row.startswith(name) for row in listed):
                missing[name + "*"] = sorted(docs)
        elif name not in listed:
            missing[name] = sorted(docs)
    assert not missing, f"named in the docs but not in docs/CONFIGURATION.md: {missing}"


def _git_grep(pattern: str, *files: str) -> set[str]:
    result = subprocess.run(
        ["git", "grep", "-h", "-o", "-E", pattern, "--", *files], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode in (0, 1), result.stderr  # 1: nothing found
    return set(result.stdout.split())


def test_every_variable_configuration_md_lists_is_read_somewhere():
    """A documented variable that nothing reads (renamed, removed) would be set in vain. Code, compose files,
    images and tests read them; so does a shell command a doc gives (certbot's `--email "$CERTBOT_EMAIL"`)."""
    code = ["*.py", "*.sh", "*.yaml", "*.yml", "*.template", "*.toml", "Makefile", "*Dockerfile*", ".ci/*"]
    read = _git_grep(r"[A-Z][A-Z0-9_]{2,}", *code)
    read |= {name.lstrip("${") for name in _git_grep(r"\$\{?[A-Z][A-Z0-9_]{2,}", "*.md")}
    unread = sorted(configured() - read - set(READ_BY_TOOLS))
    assert not unread, f"listed in docs/CONFIGURATION.md but read by no code, compose file or image: {unread}"


def test_no_name_is_excused_that_the_docs_no_longer_use():
    stale = sorted(set(NOT_VARIABLES) - set(named_in_docs()))
    assert not stale, f"NOT_VARIABLES excuses names no doc uses any more: {stale}"


def _commands_in_docs(pattern: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for doc in DOCS:
        for match in re.finditer(pattern, doc.read_text()):
            found.setdefault(match.group(1), set()).add(str(doc.relative_to(ROOT)))
    return found


def test_every_management_command_a_doc_runs_exists():
    commands = set(get_commands())
    named = _commands_in_docs(r"manage\.py\s+([a-z][a-z_]*)")
    assert named, "the docs name no management command: the pattern is wrong"
    unknown = {name: sorted(docs) for name, docs in named.items() if name not in commands}
    assert not unknown, f"the docs run management commands that do not exist: {unknown}"


def test_every_make_target_a_doc_runs_exists():
    targets = set(re.findall(r"^([A-Za-z][\w.-]*):", (ROOT / "Makefile").read_text(), re.M))
    # In backticks, or at the start of a line (a code block): "make sure" in a sentence is not a command.
    named = _commands_in_docs(r"(?m)(?:`|^\s*(?:\$ )?)make\s+([a-z][\w-]*)")
    assert {"run", "test", "bench"} <= set(named), "the docs' make commands were not found: the pattern is wrong"
    unknown = {name: sorted(docs) for name, docs in named.items() if name not in targets}
    assert not unknown, f"the docs run make targets the Makefile does not have: {unknown}"


def test_every_benchmark_a_doc_runs_exists():
    named = _commands_in_docs(r"python -m benchmarks\s+([a-z|]+)")
    usage = (ROOT / "benchmarks/__main__.py").read_text().split("Usage:", 1)[1].split("\n\n", 1)[0]
    benchmarks = set(re.findall(r"\[(\w+)\]", usage)) | set(re.findall(r"benchmarks (\w+) --", usage))
    unknown = {part: sorted(docs) for name, docs in named.items() for part in name.split("|") if part not in benchmarks}
    assert named and not unknown, f"the docs run benchmarks that do not exist: {unknown}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_a_doc_points_to_exists(doc):
    """The project's files a doc names (`docs/OPERATIONS.md`, `jobs/sql.py`, `deploy/hub/`) are there. Only names
    that look like files (an extension) or folders (a trailing slash) count: `workshops/demo/user001` is a
    storage key, `comfyume/seat-frontend:latest` an image."""
    text = doc.read_text()
    top = "docs|deploy|benchmarks|comfyume|workshops|jobs|gpu_backends|storage|tests|templates|static"
    paths = set(re.findall(rf"(?<![\w./-])((?:{top})/[\w./-]*(?:\.[a-z]+|/))(?![\w:-])", text))
    missing = sorted(
        path for path in paths if not (ROOT / path).exists() and not path.startswith(tuple(MADE_ELSEWHERE))
    )
    assert not missing, f"{doc.relative_to(ROOT)} names files that do not exist: {missing}"
