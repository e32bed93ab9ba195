"""Benchmarks that cannot rot: every script in benchmarks/ runs its `--smoke` mode here.

Each smoke mode uses tests/data (so it runs on a fresh clone, without ../shared), tiny
sizes and the session's converted-model cache; it must exit 0 and print its table(s). A
benchmark that no longer runs (an API it used changed, a dependency went away) fails here
instead of when someone next wants its figures.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from facecrm.vision.pipeline import FacePipeline

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"

# script: lines its smoke output must contain (a table header or row, a summary)
EXPECTED: dict[str, tuple[str, ...]] = {
    "agent_bench.py": (
        "| frame | faces | decision | frames/s (1 thread) |",
        "cascade, every face a customer",
        "| 640x480 | 5 |",
        "2 bursts: 2 known tracks, 2 alerts",  # every known track reached the console
    ),
    "agent_cost_bench.py": (
        "| frame | faces | analytics | frames | CPU ms / frame | frames/s per core (CPU) |",
        "| 640x480 | 5 | analytics off (no zones) | 30 |",
        "| 640x480 | 5 | analytics on (zones, expression, gender, age) | 30 |",
        "target 25 frames/s per core with analytics on:",
    ),
    "api_bench.py": ("| backend | templates |", "| sqlite | 300 |", "| postgresql | 300 |"),
    "attributes_bench.py": (
        "| attribute step, 640x480 frame | ms per face, 1 face (best / median) |",
        "| age model (64 px) |",
        "| gender of every identity photo | gender |",
    ),
    "cascade_bench.py": ("| cascade (dlib → SFace, margin) |", "cascade, customers (mated probes)"),
    "cascade_study.py": ("| scorer | impostor mean / sd / max |", "| cascade |", "| FNIR | FPIR |"),
    "decode_bench.py": ("| idle RSS MB | peak above idle MB |", "| float-6300.tiff | 422"),
    "embedder_compare.py": ("| embedder | genuine / impostor pairs |", "| fused (dlib + sface"),
    "served_cascade_bench.py": ("| path | photos | faces named |", "| cascade, strangers |"),
    "int8_study.py": (
        "| model | chips for the ranges | float32 ms / chip | int8 ms / chip |",
        "| none | float32 ~ float32 | 0.000 | 0.000 |",
        "| dlib + SFace | float32 ~ int8 |",
    ),
    "million_bench.py": (
        "| dlib | synthetic, fitted |",
        "| 2,000 (667) |",  # a PostgreSQL and a SQLite row
        "sqlite 2,000: server RSS MB",
        "| postgresql | 2,000 | 2,005 |",
    ),
    "pay_bench.py": (
        "| backend | sessions | authorised | step_up | declined |",
        "| sqlite | 3 |",
        "| postgresql | 3 |",
    ),
    "preprocessing_noise.py": (
        "| preprocessing against the shipped pipeline | impostor Δg sd |",
        "| detector input: one INTER_AREA (before) |",
        "| 0.15 (shipped) |",
    ),
    "search_bench.py": ("| 2,000 | exact (numpy) |", "| 2,000 | hnswlib |"),
    "stages_bench.py": ("| stage | mean ms |", "| 10,000 templates |", "| SFace int8 in OpenCV |"),
    "sync_bench.py": (
        "| backend | customers | what | wall ms | bytes | server CPU ms | agent CPU ms |",
        "| sqlite | 300 | cold sync, cache warm",
        "| postgresql | 300 | per change: erase",
    ),
    "throughput_bench.py": ("| facecrm | 2 |", "| face_recognition-style", "speed-up with 2"),
}
WITHOUT_MODELS = {"search_bench.py"}  # synthetic vectors only
SLOW = {"decode_bench.py"}  # 8 clients x 11 hostile uploads: ~45 s on a busy machine


def run_smoke(script: str, model_cache: Path) -> str:
    """Run `script --smoke` as a user would (its own process, the repository's sources);
    returns its output once it exited 0 without a FAILED line."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("FACECRM_DATA_DIR", None)  # each script makes its own data directories
    command = [sys.executable, str(BENCHMARKS / script), "--smoke"]
    if script not in WITHOUT_MODELS:
        command += ["--model-cache", str(model_cache)]
    run = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        cwd=BENCHMARKS,
        timeout=600,
    )
    assert run.returncode == 0, (
        f"{script} --smoke exited {run.returncode}:\n{run.stdout}{run.stderr}"
    )
    assert "FAILED" not in run.stdout, run.stdout
    assert run.stdout.startswith("machine: "), run.stdout  # every table says where it ran
    return run.stdout


def test_every_benchmark_has_a_smoke_run() -> None:
    scripts = {p.name for p in BENCHMARKS.glob("*.py")} - {"common.py"}
    assert scripts == set(EXPECTED)
    for script in scripts:
        assert "--smoke" in (BENCHMARKS / script).read_text(), script


@pytest.mark.parametrize(
    "script",
    [pytest.param(s, marks=[pytest.mark.slow] if s in SLOW else []) for s in sorted(EXPECTED)],
)
def test_smoke(script: str, model_cache: Path, pipeline: FacePipeline) -> None:
    """`pipeline` first converts the models into the shared cache, once per session."""
    out = run_smoke(script, model_cache)
    missing = [line for line in EXPECTED[script] if line not in out]
    assert missing == [], out
    if script == "decode_bench.py":
        assert_peak_within_bound(out)


def assert_peak_within_bound(out: str) -> None:
    """The server's peak RSS under hostile uploads stays within the bound the benchmark's
    docstring derives (decode slots x largest decode + what each other request holds)."""
    bound = float(re.search(r"designed bound for 8 clients: (\d+) MB", out)[1])  # type: ignore[index]
    row = out.split("| idle RSS MB | peak above idle MB |")[1].splitlines()[2]
    peak = float(row.split("|")[2])
    assert 0 < peak <= bound <= 460, out
