"""corr_crop_size / joint_crop_size: each phase's training batches take its crop side, batches
outside the schedule (evaluations) and an explicit `crop` take the asked side, and a run trains."""

from __future__ import annotations

from pathlib import Path

import pytest

from mevos.errors import UsageError
from mevos.train.trainer import RunOptions, Trainer


def test_phase_crop_sizes(videos: Path, tiny, tmp_path: Path) -> None:
    cfg = tiny.with_overrides({"crop_size": 64, "corr_crop_size": 48, "joint_crop_size": 56})
    trainer = Trainer(cfg, [videos], RunOptions(out=tmp_path, progress=False))
    assert trainer.make_batch(0, 0, False)[0].shape[-2:] == (48, 48)
    trainer.recluster(cfg.corr_epochs)
    frames, _, _, seg = trainer.make_batch(cfg.corr_epochs, 0, True)
    assert frames.shape[-2:] == (56, 56) and seg is not None and seg.masks.shape[-2:] == (56, 56)
    assert trainer.make_batch(cfg.epochs + 5, 0, True)[0].shape[-1] == 64  # past the schedule: crop_size
    assert trainer.make_batch(0, 0, False, crop=64)[0].shape[-1] == 64
    # the same clips (same seeded draws), only the crop side differs
    same = trainer.make_batch(0, 1, False, crop=48)
    assert (same[0] == trainer.make_batch(0, 1, False)[0]).all()
    for epoch, seg_on in ((0, False), (cfg.corr_epochs, True)):
        losses = trainer.train_step(epoch, 0, seg_on)
        assert all(v == v for v in losses.values())  # finite, not NaN


def test_crop_sizes_are_checked(tiny) -> None:
    for bad in ({"corr_crop_size": 50}, {"joint_crop_size": 8}, {"corr_crop_size": tiny.crop_size + 8}):
        with pytest.raises(UsageError):
            tiny.with_overrides(bad)
    assert tiny.with_overrides({"corr_crop_size": 0}).corr_crop_size == 0
