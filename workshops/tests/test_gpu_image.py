"""The GPU image's models from the workshop's own templates: the manifest (what, where, from where), the
download script (resume, the gated-model token only to Hugging Face and never on a redirect, failures named),
and the check that a GPU's ComfyUI has every node and model before the day."""

from __future__ import annotations

import http.server
import importlib.util
import json
import threading
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "workshops" / "data" / "templates"
FLUX_4B = TEMPLATES / "flux2_klein_4b_text_to_image.json"
FLUX_9B = TEMPLATES / "flux2_klein_9b_text_to_image.json"
LTX = TEMPLATES / "ltx2_text_to_video.json"

spec = importlib.util.spec_from_file_location("fetch_models", ROOT / "deploy" / "gpu-worker" / "fetch_models.py")
assert spec and spec.loader
fetch_models = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fetch_models)


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


# --- the manifest --------------------------------------------------------------------------------------------


def test_the_manifest_lists_each_model_once_in_its_folder_with_its_address(tmp_path):
    target = tmp_path / "models.json"
    out = run("gpu_manifest", "--file", str(FLUX_4B), "--file", str(FLUX_9B), "--file", str(LTX), "--out", str(target))
    manifest = json.loads(target.read_text())
    paths = {f"{m['folder']}/{m['name']}": m for m in manifest["models"]}
    assert paths["vae/flux2-vae.safetensors"]["templates"] == [FLUX_4B.stem, FLUX_9B.stem]  # once, shared
    assert paths["vae/flux2-vae.safetensors"]["url"].startswith("https://huggingface.co/")
    # The 9B template names its diffusion model without a folder: the UNETLoader's folder is used.
    assert paths["diffusion_models/flux-2-klein-9b-fp8.safetensors"]["url"] == ""
    assert "no download address in the template" in out
    assert paths["checkpoints/ltx-2-19b-dev-fp8.safetensors"]["templates"] == [LTX.stem]
    assert {"UNETLoader", "SaveVideo", "LTXVScheduler"} <= set(manifest["node_types"])
    assert "Note" not in manifest["node_types"] and "MarkdownNote" not in manifest["node_types"]
    with pytest.raises(CommandError, match="exists already"):
        run("gpu_manifest", "--file", str(FLUX_4B), "--out", str(target))


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--workshop", "nope"), "No workshop called 'nope'"),
        (("--workshop", "ws1"), "ws1 has no templates"),
        (("--template", "Nope"), "No template called 'Nope'; the templates are: none"),
        (("--file", "/nonexistent.json"), "Cannot read /nonexistent.json"),
    ],
)
def test_bad_choices_are_refused_by_name(personas, args, message):
    with pytest.raises(CommandError, match=message):
        run("gpu_manifest", *args)


def test_a_file_that_is_not_a_saved_workflow_is_refused(tmp_path):
    (tmp_path / "api.json").write_text(json.dumps({"1": {"class_type": "SaveImage", "inputs": {}}}))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CommandError, match="not a workflow saved from ComfyUI"):
        run("gpu_manifest", "--file", str(tmp_path / "api.json"))
    with pytest.raises(CommandError, match="is not JSON"):
        run("gpu_manifest", "--file", str(tmp_path / "bad.json"))


# --- the download script -------------------------------------------------------------------------------------

BLOB = bytes(range(256)) * 4096  # 1 MiB


class Files(http.server.BaseHTTPRequestHandler):
    """Serves /m/<name> (with ranges), /gated (401 without a bearer token), /moved (302 to the other server)."""

    seen: list[tuple[str, str, str]] = []
    other = ""

    def log_message(self, *args) -> None:
        pass

    def _answer(self, head: bool) -> None:
        Files.seen.append((self.headers.get("Host", ""), self.path, self.headers.get("Authorization", "")))
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", f"{Files.other}/m/blob")
            self.end_headers()
            return
        if self.path == "/gated" and not self.headers.get("Authorization"):
            self.send_error(401)
            return
        if not self.path.startswith(("/m/", "/gated")):
            self.send_error(404)
            return
        first = 0
        if (wanted := self.headers.get("Range")) and not head:
            first = int(wanted.split("=")[1].split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(BLOB) - first))
        self.end_headers()
        if not head:
            self.wfile.write(BLOB[first:])

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)


@pytest.fixture
def servers() -> Iterator[tuple[str, str]]:
    started = []
    for _ in range(2):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
    Files.seen = []
    first = f"http://localhost:{started[0].server_port}"
    second = f"http://127.0.0.1:{started[1].server_port}"
    Files.other = second
    yield first, second
    for server in started:
        server.shutdown()


def manifest(tmp_path: Path, *models: dict) -> Path:
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"models": list(models)}))
    return path


def test_models_are_downloaded_into_their_folders_and_kept_on_a_second_run(servers, tmp_path, capsys):
    base, _ = servers
    path = manifest(tmp_path, {"name": "a.safetensors", "folder": "vae", "url": f"{base}/m/blob"})
    assert fetch_models.main([str(path), "--to", str(tmp_path / "models")]) == 0
    assert (tmp_path / "models" / "vae" / "a.safetensors").read_bytes() == BLOB
    assert fetch_models.main([str(path), "--to", str(tmp_path / "models")]) == 0
    assert "vae/a.safetensors: already there" in capsys.readouterr().out


def test_an_interrupted_download_is_resumed_with_a_range(servers, tmp_path):
    base, _ = servers
    target = tmp_path / "models" / "loras" / "b.safetensors"
    target.parent.mkdir(parents=True)
    target.with_name("b.safetensors.part").write_bytes(BLOB[:300_000])
    path = manifest(tmp_path, {"name": "b.safetensors", "folder": "loras", "url": f"{base}/m/blob"})
    assert fetch_models.main([str(path), "--to", str(tmp_path / "models")]) == 0
    assert target.read_bytes() == BLOB and not target.with_name("b.safetensors.part").exists()


def test_the_token_goes_to_the_model_host_only_and_never_follows_a_redirect(servers, tmp_path, monkeypatch):
    base, _ = servers
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setattr(fetch_models, "TOKEN_HOSTS", ("localhost",))  # stands in for huggingface.co
    path = manifest(
        tmp_path,
        {"name": "g.safetensors", "folder": "unet", "url": f"{base}/gated"},
        {"name": "r.safetensors", "folder": "unet", "url": f"{base}/moved"},
    )
    assert fetch_models.main([str(path), "--to", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "unet" / "r.safetensors").read_bytes() == BLOB
    to_first = {auth for host, _, auth in Files.seen if host.startswith("localhost")}
    to_other = {auth for host, _, auth in Files.seen if host.startswith("127.0.0.1")}
    assert to_first == {"Bearer hf_secret"} and to_other == {""}  # the redirect's target never saw it


def test_failures_are_named_and_the_rest_still_arrives(servers, tmp_path, capsys, monkeypatch):
    base, _ = servers
    monkeypatch.delenv("HF_TOKEN", raising=False)
    path = manifest(
        tmp_path,
        {"name": "ok.safetensors", "folder": "vae", "url": f"{base}/m/blob"},
        {"name": "gone.safetensors", "folder": "vae", "url": f"{base}/nothing"},
        {"name": "gated.safetensors", "folder": "vae", "url": f"{base}/gated"},
        {"name": "nourl.safetensors", "folder": "vae", "url": ""},
        {"name": "../escape.safetensors", "folder": "vae", "url": f"{base}/m/blob"},
        {"name": "nofolder.safetensors", "folder": "", "url": f"{base}/m/blob"},
    )
    assert fetch_models.main([str(path), "--to", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert "FAILED vae/gone.safetensors: 404" in err
    assert "FAILED vae/gated.safetensors: 401 Unauthorized (a gated model: set HF_TOKEN" in err
    assert "FAILED vae/nourl.safetensors: no download address" in err
    assert "is not a plain relative name" in err and "no folder known" in err
    assert "5 of 6 model(s) not in place" in err
    assert (tmp_path / "m" / "vae" / "ok.safetensors").exists() and not (tmp_path / "m" / "escape.safetensors").exists()


def test_a_dry_run_prints_the_sizes_and_writes_nothing(servers, tmp_path, capsys):
    base, _ = servers
    path = manifest(
        tmp_path, *({"name": f"{i}.safetensors", "folder": "vae", "url": f"{base}/m/blob"} for i in range(3))
    )
    assert fetch_models.main([str(path), "--to", str(tmp_path / "m"), "--dry-run"]) == 0
    assert "total 0.00 GB for 3 model(s)" in capsys.readouterr().out and not (tmp_path / "m").exists()


def test_a_file_that_is_not_a_manifest_is_refused(tmp_path, capsys):
    (tmp_path / "x.json").write_text('{"nodes": []}')
    assert fetch_models.main([str(tmp_path / "x.json"), "--to", str(tmp_path)]) == 2
    assert "not a manifest from manage.py gpu_manifest" in capsys.readouterr().err


# --- the check against a GPU's ComfyUI -----------------------------------------------------------------------


@pytest.mark.django_db
def test_the_check_names_what_a_comfyui_lacks_and_passes_once_it_has_it(sim, personas, tmp_path):
    with pytest.raises(CommandError, match=r"lacks 2 node type\(s\) and 4 model\(s\)"):
        run("check_gpu_image", "--url", sim.url, "--file", str(FLUX_4B))
    # What it said, line by line: the simulator's catalogue has no Flux.2 nodes and no models at all.
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("check_gpu_image", "--url", sim.url, "--file", str(FLUX_4B), stdout=out)
    said = out.getvalue()
    assert "missing node Flux2Scheduler (used by flux2_klein_4b_text_to_image)" in said
    assert "missing model flux2-vae.safetensors: put it in models/vae/flux2-vae.safetensors" in said
    # A template of nodes it has: once its model is there, the check passes.
    workflow = {
        "nodes": [
            {"id": 1, "type": "UNETLoader", "widgets_values": ["flux-2-klein-4b.safetensors", "default"]},
            {"id": 2, "type": "SaveImage", "widgets_values": ["out"]},
            {"id": 3, "type": "Note", "widgets_values": ["frontend only"]},
        ],
        "links": [],
    }
    path = tmp_path / "small.json"
    path.write_text(json.dumps(workflow))
    with pytest.raises(CommandError, match=r"lacks 0 node type\(s\) and 1 model\(s\)"):
        run("check_gpu_image", "--url", sim.url, "--file", str(path))
    sim.config.models = ["flux-2-klein-4b.safetensors"]
    out = run("check_gpu_image", "--url", sim.url, "--file", str(path))
    assert "every node type (2) and model (1) is there" in out
    assert run("check_gpu_image", "--backend", "sim", "--file", str(path)).startswith("backend sim:")


@pytest.mark.django_db
def test_the_check_refuses_an_unknown_backend_and_a_bad_address(personas):
    with pytest.raises(CommandError, match="No GPU backend called 'gpu9'; the backends are: sim"):
        run("check_gpu_image", "--backend", "gpu9", "--file", str(FLUX_4B))
    with pytest.raises(CommandError, match="--url must be an http"):
        run("check_gpu_image", "--url", "localhost:8188", "--file", str(FLUX_4B))
    with pytest.raises(CommandError, match="Could not read the node list"):
        run("check_gpu_image", "--url", "http://127.0.0.1:9", "--file", str(FLUX_4B))
