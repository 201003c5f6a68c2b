"""The dashboard's ES modules survive `collectstatic` as the hub's image runs it: the hashed main.js imports the
hashed modules, each of which exists, so a browser never mixes one deploy's module with another's."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = ROOT / "static" / "comfyume" / "dashboard"
IMPORT = re.compile(r'^import .* from "\./(?P<name>[^"]+)";$', re.MULTILINE)

# deploy/hub/Dockerfile's collectstatic (production settings, a throwaway key), into a folder of the test's.
COLLECT = """
import sys
import django
django.setup()
from django.conf import settings
from django.core.management import call_command
settings.STATIC_ROOT = sys.argv[1]
call_command("collectstatic", interactive=False, verbosity=0)
"""


def collect_for_production(tmp_path: Path) -> Path:
    static_root = tmp_path / "static"
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "ALLOWED_HOSTS", "DJANGO_SETTINGS_MODULE")}
    env.update(
        COMFYUME_ENV="production", SECRET_KEY="collectstatic-only", COMFYUME_DATA_DIR=str(tmp_path / "data"),
        DJANGO_SETTINGS_MODULE="comfyume.settings",
    )  # fmt: skip
    command = [sys.executable, "-c", COLLECT, str(static_root)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return static_root


def test_the_hashed_dashboard_imports_the_hashed_modules_and_each_exists(tmp_path):
    static_root = collect_for_production(tmp_path)
    paths = json.loads((static_root / "staticfiles.json").read_text())["paths"]
    # Each module's final hashed file name -> its source name.
    hashed = {Path(paths[f"comfyume/dashboard/{m.name}"]).name: m.name for m in MODULES.glob("*.js")}

    reached, todo = set(), ["main.js"]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        served = static_root / paths[f"comfyume/dashboard/{name}"]
        imports = IMPORT.findall(served.read_text())
        assert set(imports) <= set(hashed), f"{served.name} imports a name that is not a module's hashed one"
        for imported in imports:
            assert (served.parent / imported).is_file()
            todo.append(hashed[imported])

    assert reached == {m.name for m in MODULES.glob("*.js")}  # every module, none left unreached
    assert len(reached) > 1
