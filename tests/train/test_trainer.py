"""The training loop: exact resume, bad input, checkpoints that load with weights_only."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch

from mevos.errors import CheckpointError, InputError
from mevos.model import load_checkpoint, read_checkpoint
from mevos.train.trainer import RunOptions, Trainer

from .conftest import write_videos


def _opts(out: Path, **kw) -> RunOptions:
    return RunOptions(out=out, checkpoint_every=1, log_every=1, progress=False, **kw)


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_after_a_stop_is_exactly_the_uninterrupted_run(videos: Path, tiny, tmp_path: Path) -> None:
    """4 steps straight vs 2 + stop + resume 2 (crossing into the joint phase, with clustering):
    identical weights, optimiser state, step and schedule."""
    torch.set_num_threads(1)
    straight = Trainer(tiny, [videos], _opts(tmp_path / "a"))
    assert straight.steps_per_epoch == 2 and tiny.epochs == 2
    straight.run()
    first = Trainer(tiny, [videos], _opts(tmp_path / "b", max_steps=2))
    assert first.run() is None  # stopped, with a checkpoint
    resumed = Trainer(tiny, [videos], _opts(tmp_path / "b"), resume=tmp_path / "b" / "last.pt")
    assert (resumed.state.step, resumed.state.epoch, resumed.state.batch) == (2, 1, 0)
    assert resumed.optimizer.state_dict()["state"][0]["step"] == 2
    resumed.run()
    _assert_same_state(straight.model.state_dict(), resumed.model.state_dict())
    sa, sb = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i in sa["state"]:
        for k in sa["state"][i]:
            assert torch.equal(torch.as_tensor(sa["state"][i][k]), torch.as_tensor(sb["state"][i][k]))
    assert straight.state.step == resumed.state.step == 4
    assert straight.lr_at(straight.state.epoch - 1) == resumed.lr_at(resumed.state.epoch - 1)
    for v in straight.state.labels:
        assert torch.equal(straight.state.labels[v], resumed.state.labels[v])


def test_checkpoints_load_with_weights_only_and_say_what_they_hold(videos: Path, tiny, tmp_path: Path) -> None:
    trainer = Trainer(tiny, [videos], _opts(tmp_path, command="mevos train test"))
    trainer.run()
    last = read_checkpoint(tmp_path / "last.pt")  # torch.load(weights_only=True) inside
    ts = last["train_state"]
    assert ts["step"] == 4 and ts["epoch"] == 2 and ts["schedule"]["phase"] == "joint"
    assert set(ts["labels"]) == {"0", "1", "2"} and ts["labels"]["0"].dtype == torch.uint8
    model, meta = load_checkpoint(tmp_path / "final.pt", expect_preset="small")
    assert meta["trained"] is True and meta["steps"] == 4 and meta["command"] == "mevos train test"
    assert "train_state" not in read_checkpoint(tmp_path / "final.pt")
    assert (tmp_path / "corr_final.pt").is_file() and (tmp_path / "log.jsonl").is_file()


def test_resume_from_another_preset_is_a_clear_error(videos: Path, tiny, tmp_path: Path) -> None:
    Trainer(tiny, [videos], _opts(tmp_path / "a", max_steps=1)).run()
    other = tiny.with_overrides({"model": "r18"})
    with pytest.raises(CheckpointError, match="'small' model.*'r18'"):
        Trainer(other, [videos], _opts(tmp_path / "b"), resume=tmp_path / "a" / "last.pt")


def test_resume_from_weights_without_training_state_is_a_clear_error(videos: Path, tiny, tmp_path: Path) -> None:
    Trainer(tiny, [videos], _opts(tmp_path)).run()
    with pytest.raises(CheckpointError, match="no training state"):
        Trainer(tiny, [videos], _opts(tmp_path / "b"), resume=tmp_path / "final.pt")


def test_empty_data_folder_is_an_error(tiny, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no training video"):
        Trainer(tiny, [tmp_path], _opts(tmp_path / "out"))
    with pytest.raises(InputError, match="does not exist"):
        Trainer(tiny, [tmp_path / "nothing"], _opts(tmp_path / "out"))


def test_videos_shorter_than_a_clip_are_skipped_with_a_warning(tiny, tmp_path: Path) -> None:
    write_videos(tmp_path / "data", count=2, frames=10)
    for p in sorted((tmp_path / "data" / "v1").glob("*.jpg"))[2:]:
        p.unlink()  # v1 keeps 2 frames; a clip needs long_gap + 1 = 4
    with pytest.warns(UserWarning, match="skipping video v1: 2 frames"):
        trainer = Trainer(tiny, [tmp_path / "data"], _opts(tmp_path / "out"))
    assert [v.name for v in trainer.data.videos] == ["v0"] and trainer.data.skipped_short == ["v1"]
    (tmp_path / "only").mkdir()
    shutil.move(str(tmp_path / "data" / "v1"), tmp_path / "only" / "v1")
    with pytest.raises(InputError, match="shorter than a training clip"), pytest.warns(UserWarning):
        Trainer(tiny, [tmp_path / "only"], _opts(tmp_path / "out2"))


def test_unreadable_frames_are_skipped_counted_and_training_goes_on(tiny, tmp_path: Path) -> None:
    write_videos(tmp_path / "data", count=1, frames=8)
    frames = sorted((tmp_path / "data" / "v0").glob("*.jpg"))
    for p in frames[1:7]:
        p.write_bytes(b"not a jpeg")  # only the first and last frames read
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Trainer(tiny.with_overrides({"clips_per_video": 2}), [tmp_path / "data"], _opts(tmp_path / "out"))
        trainer.run()
    assert trainer.state.step == 2 * trainer.steps_per_epoch
    assert 1 <= trainer.data.bad_frames <= 6
    assert any("skipping unreadable frame" in str(w.message) for w in caught)
    assert read_checkpoint(tmp_path / "out" / "final.pt")["metadata"]["bad_frames"] == trainer.data.bad_frames


def test_video_files_are_training_data(tiny, tmp_path: Path) -> None:
    from mevos.data.synthetic import SyntheticConfig, generate
    from mevos.data.video import VideoWriter

    video = generate(SyntheticConfig(height=72, width=96, num_frames=8, seed=3))
    (tmp_path / "data").mkdir()
    with VideoWriter(tmp_path / "data" / "clip.mp4", fps=10) as w:
        for f in video.frames:
            w.write(f)
    trainer = Trainer(tiny, [tmp_path / "data"], _opts(tmp_path / "out", max_steps=1))
    assert [v.name for v in trainer.data.videos] == ["clip"] and trainer.data.videos[0].num_frames == 8
    trainer.run()
    assert trainer.state.step == 1


def test_prefetched_batches_are_the_batches_asked_for(videos: Path, tiny, tmp_path: Path) -> None:
    """next_batch builds batch b + 1 in the background while step b computes: every batch it
    returns equals make_batch's, in order, out of order, and after a re-clustering (new masks)."""
    trainer = Trainer(tiny, [videos], RunOptions(out=tmp_path, progress=False))
    epoch = tiny.corr_epochs  # joint: batches carry pseudo masks
    trainer.recluster(epoch)

    def same(a, b) -> bool:  # noqa: ANN001
        return (torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
                and all(torch.equal(x, y) for x, y in zip(vars(a[3]).values(), vars(b[3]).values())))

    n = trainer.steps_per_epoch
    order = [0, 1, 0, *range(n)]  # a repeat and a jump back: the prefetched batch is not the one asked for
    for b in order:
        assert same(trainer.next_batch(epoch, b, True), trainer.make_batch(epoch, b, True)), b
    trainer.next_batch(epoch, 0, True)  # batch 1 now building on the old masks
    trainer.state.labels = {k: torch.zeros_like(v) for k, v in trainer.state.labels.items()}
    assert same(trainer.next_batch(epoch, 1, True), trainer.make_batch(epoch, 1, True))
    # The last batch of an epoch prefetches batch 0 of the next one, as Trainer.run asks for it,
    # unless new pseudo masks come first (the joint phase's first epoch here).
    two = Trainer(tiny.with_overrides({"corr_epochs": 2}), [videos], RunOptions(out=tmp_path / "two", progress=False))
    last = two.steps_per_epoch - 1
    two.next_batch(0, last, False)
    assert two._pending is not None and two._pending[0] == (1, 0, False)
    assert torch.equal(two.next_batch(1, 0, False)[0], two.make_batch(1, 0, False)[0])
    two.next_batch(1, last, False)
    assert two._pending is None  # epoch 2 starts with a clustering
