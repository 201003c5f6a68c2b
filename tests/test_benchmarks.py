"""The benchmarks that measure the real path run, print what they promise, and refuse bad input clearly.

``realcomfy`` against the simulator (it speaks ComfyUI's protocol; a real ComfyUI is used by hand, see
docs/BENCHMARKS.md), and ``crowd`` at a few seats: each in a process of its own, as ``make bench`` runs it, on its
private SQLite and embedded Redis. What they print is the point; these tests check that every figure is there and
is a number, and that no job was lost.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.realcomfy import vary

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "BENCH_"))}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def figures(output: str) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(r"^BENCH (\S+) (\S+) \S+$", output, re.M)}


def test_realcomfy_measures_every_path_step_by_step(simulator):
    result = bench("realcomfy", "--comfyui-url", simulator.url, "--jobs", "2", "--warmup", "1", "--size", "64")
    assert result.returncode == 0, result.stderr[-3000:]
    found = figures(result.stdout)
    for path in ("comfyui", "worker"):
        for name in ("added_p50", "hub_own_p50", "hub_own_p99", "final_event_added_p50"):
            assert math.isfinite(found[f"realcomfy.{path}.{name}"]), result.stdout
    # The split of a platform job names every step the trace noted.
    for label in ("request → row queued", "RQ → a worker runs it", "provider → backend accepted the prompt",
                  "ComfyUI success → hub has the final event", "job recorded after the final event"):  # fmt: skip
        assert result.stdout.count(label) == 2, result.stdout


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ((), "realcomfy needs a ComfyUI: --comfyui-url URL or COMFYUI_URL."),
        (("--comfyui-url", "http://127.0.0.1:9"), "realcomfy: no ComfyUI answers at http://127.0.0.1:9"),
    ],
)
def test_realcomfy_says_what_is_missing(args, said):
    result = bench("realcomfy", *args, timeout=120)
    assert result.returncode != 0 and said in result.stderr, result.stderr[-2000:]


def test_realcomfy_refuses_a_bad_path_or_workflow(simulator, tmp_path):
    result = bench("realcomfy", "--comfyui-url", simulator.url, "--paths", "direct,gpu", timeout=120)
    assert result.returncode != 0 and "not ['gpu']" in result.stderr, result.stderr[-2000:]
    not_json = tmp_path / "flow.json"
    not_json.write_text("{nodes")
    result = bench("realcomfy", "--comfyui-url", simulator.url, "--workflow", str(not_json), timeout=120)
    assert result.returncode != 0 and f"cannot read the workflow {not_json}" in result.stderr
    ui_format = tmp_path / "ui.json"
    ui_format.write_text(json.dumps({"nodes": [], "links": []}))
    result = bench("realcomfy", "--comfyui-url", simulator.url, "--workflow", str(ui_format), timeout=120)
    assert result.returncode != 0 and "is not an API-format workflow" in result.stderr
    result = bench("realcomfy", "--comfyui-url", simulator.url, "--upscale-model", "nope.pth", timeout=120)
    assert result.returncode != 0 and "ComfyUI has no upscale model 'nope.pth'" in result.stderr


def test_vary_changes_seeds_and_colours_only():
    workflow = {
        "1": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "model": ["2", 0]}},
        "2": {"class_type": "EmptyImage", "inputs": {"color": 0, "width": 64}},
        "3": {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}},
    }
    varied, changed = vary(workflow, 42)
    assert changed and workflow["1"]["inputs"]["seed"] == 1  # the original is left alone
    assert varied["1"]["inputs"] == {"seed": 42, "steps": 20, "model": ["2", 0]}
    assert varied["2"]["inputs"] == {"color": 42, "width": 64} and varied["3"]["inputs"] == {"noise_seed": 42}
    assert vary({"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}}}, 3)[1] is False


def test_crowd_loses_no_job_and_prints_its_figures():
    result = bench("crowd", BENCH_CROWD_SEATS="4", BENCH_CROWD_WORKERS="2", BENCH_CROWD_SECONDS="3",
                   BENCH_CROWD_RATE="60")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    found = figures(result.stdout)
    assert found["crowd.4.jobs_lost"] == 0, result.stdout
    for name in ("burst_all_done", "hub_overhead_p50", "event_to_socket_p99", "web_rss"):
        assert math.isfinite(found[f"crowd.4.{name}"]) and found[f"crowd.4.{name}"] > 0, result.stdout
    assert "burst of 4:" in result.stdout and "Redis → the seat's socket" in result.stdout
