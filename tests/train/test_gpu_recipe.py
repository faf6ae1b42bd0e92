"""The GPU recipe (`--preset gpu`, scripts/gpu_train.sh, scripts/gpu_check.sh), on the CPU: the
preset is the paper's shape, the scripts parse, and gpu_train.sh runs end to end for one step at
toy sizes, leaving a summary and weights that load (also once rejoined from their float16 parts)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mevos.model import load_checkpoint, read_checkpoint
from mevos.train.config import PRESETS, train_preset

from .conftest import write_videos

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
TOY = ["--set", "crop_size=64", "--set", "scale_min=64", "--set", "scale_max=80", "--set", "batch_size=2",
       "--set", "clips_per_video=1", "--set", "long_gap=3", "--max-steps", "1", "--no-progress", "--threads", "1"]


def _need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"needs `{tool}` on the PATH")


def test_gpu_preset_is_the_papers_model_batch_crops_and_losses() -> None:
    gpu, paper = train_preset("gpu"), PRESETS["paper"]
    assert (gpu.model, gpu.batch_size, gpu.crop_size, gpu.scale_min, gpu.scale_max) == ("r18", 16, 256, 256, 320)
    for name in ("w_seg", "w_short", "w_long", "w_distill", "teacher", "clusters", "kmeans_iters", "kmeans_points",
                 "max_cluster_fraction", "cluster_short_side", "num_refs", "long_gap", "corr_temperature",
                 "seg_temperature", "flip", "phi_scale_min"):
        assert getattr(gpu, name) == getattr(paper, name), name
    # Both phases, the paper's 3:1, and exactly one clustering: at the start of the joint phase.
    assert gpu.corr_epochs == 3 * gpu.joint_epochs > 0
    assert gpu.recluster_every >= gpu.joint_epochs
    # 22 videos (davis2016-train): 44 steps an epoch, 880 in all (sized for ~6 min of an H200).
    steps_per_epoch = -(-22 * gpu.clips_per_video // gpu.batch_size)
    assert steps_per_epoch * gpu.epochs == 880


@pytest.mark.parametrize("script", ["gpu_train.sh", "gpu_check.sh"])
def test_scripts_parse(script: str) -> None:
    _need("bash")
    subprocess.run(["bash", "-n", str(SCRIPTS / script)], check=True)


def test_pack_reencodes_frames_within_a_budget(tmp_path: Path) -> None:
    src = write_videos(tmp_path / "src", count=2, frames=6)
    run = [sys.executable, str(SCRIPTS / "gpu_recipe.py"), "pack", str(src), str(tmp_path / "dst")]
    assert subprocess.run(run, capture_output=True, text=True).returncode == 0
    assert sorted(p.relative_to(tmp_path / "dst") for p in (tmp_path / "dst").rglob("*.jpg")) == sorted(
        p.relative_to(src).with_suffix(".jpg") for p in src.rglob("*") if p.is_file())
    assert subprocess.run([*run, "--budget-mib", "0.001"], capture_output=True).returncode == 1


@pytest.mark.slow  # ~15 s on two busy cores: one r18 step at 64 x 64, then 105 MB of weights checked twice
def test_gpu_train_script_runs_one_step_and_leaves_loadable_weights(tmp_path: Path) -> None:
    _need("bash", "timeout")
    data = write_videos(tmp_path / "videos", count=2, frames=8)
    out, run = tmp_path / "out", tmp_path / "run"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_TRAIN_INSTALL": "0", "GPU_TRAIN_DATA": str(data),
           "GPU_TRAIN_RUN": str(run), "GPU_TRAIN_SECONDS": "120", "OUT": str(out)}
    proc = subprocess.run(["bash", str(SCRIPTS / "gpu_train.sh"), *TOY], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mevos train exited 0" in (out / "train.log").read_text()

    last = read_checkpoint(run / "last.pt")  # weights_only inside
    assert last["train_state"]["step"] == 1 and last["config"]["name"] == "r18"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_exit_code"] == 0 and summary["steps"] == 1 and not summary["completed_schedule"]
    assert summary["config"]["model"] == "r18" and summary["weights"]["loads"]
    assert (out / "log.jsonl").is_file()

    # The float16 parts (each under the 16 MiB a device file may be) rejoin into a loadable checkpoint.
    parts = sorted(out.glob("model-fp16.pt.part*"))
    assert [p.name for p in parts] == [p["file"] for p in summary["weights_fp16"]["parts"]]
    assert all(p.stat().st_size <= 15 * 2**20 for p in parts)
    joined = tmp_path / "model-fp16.pt"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    assert hashlib.sha256(joined.read_bytes()).hexdigest() == summary["weights_fp16"]["sha256"]
    model, meta = load_checkpoint(joined, expect_preset="r18")
    assert meta["steps"] == 1 and next(model.parameters()).dtype == torch.float32  # cast back on load
    assert summary["weights_fp16"]["key_max_abs_diff_vs_fp32"] < 1e-2
