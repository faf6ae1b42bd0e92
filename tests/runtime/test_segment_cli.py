"""`mevos segment` and `mevos eval` end to end on real DAVIS frames, and their bad-input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mevos.cli import main
from mevos.data.palette import read_label_png, write_label_png
from mevos.model import build_model, preset, save_checkpoint


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_segment_then_eval_blackswan(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    davis = shared_data / "davis2016"
    frames = davis / "JPEGImages/480p/blackswan"
    mask = davis / "Annotations/480p/blackswan/00000.png"
    out = tmp_path / "results" / "blackswan"
    code, stdout, err = run_cli(
        ["segment", str(frames), "--mask", str(mask), "--out", str(out), "--short-side", "160"], capsys
    )
    assert code == 0, err
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(50)]
    assert (out / "overlay.mp4").stat().st_size > 0
    first = read_label_png(pngs[0])
    np.testing.assert_array_equal(first, read_label_png(mask))
    assert all(read_label_png(p).shape == (480, 854) for p in pngs[::10])
    assert "50 frames" in stdout
    assert not list(tmp_path.glob("results/.*")), "no temporary folder left"

    code, stdout, err = run_cli(
        ["eval", "--davis", str(davis), "--results", str(tmp_path / "results"), "--sequences", "blackswan"], capsys
    )
    assert code == 0, err
    assert "copy_first_mask" in stdout
    assert (tmp_path / "results" / "per_object.csv").read_text().startswith("object,J_mean")


@pytest.fixture()
def clip(tmp_path: Path) -> tuple[Path, Path]:
    """A 3-frame folder of real PNG frames with a first mask."""
    from mevos.data.synthetic import SyntheticConfig, generate

    video = generate(SyntheticConfig(height=64, width=80, num_frames=3, num_objects=1))
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(video.frames):
        Image.fromarray(f).save(folder / f"{i:05d}.png")
    write_label_png(tmp_path / "mask.png", video.labels[0])
    return folder, tmp_path / "mask.png"


def bad_inputs(tmp: Path, frames: Path, mask: Path) -> dict[str, tuple[list[str], str]]:
    (tmp / "small.png").write_bytes(b"")
    write_label_png(tmp / "small.png", np.ones((10, 10), np.uint8))
    write_label_png(tmp / "empty.png", np.zeros((64, 80), np.uint8))
    (tmp / "text.png").write_text("this is not an image")
    (tmp / "empty.mp4").write_bytes(b"")
    (tmp / "text.mp4").write_text("this is not a video")
    broken = tmp / "broken"
    broken.mkdir()
    for p in sorted(frames.iterdir()):
        (broken / p.name).write_bytes(p.read_bytes())
    (broken / "00001.png").write_text("not an image either")
    ckpt = save_checkpoint(tmp / "model.pt", build_model(preset("small")))
    (tmp / "cut.pt").write_bytes(ckpt.read_bytes()[:5000])
    f, m = str(frames), str(mask)
    return {
        "mask size": ([f, "--mask", str(tmp / "small.png")], "differs from the frame size"),
        "mask without object": ([f, "--mask", str(tmp / "empty.png")], "has no object"),
        "mask not an image": ([f, "--mask", str(tmp / "text.png")], "text.png"),
        "empty video": ([str(tmp / "empty.mp4"), "--mask", m], "empty.mp4"),
        "unreadable video": ([str(tmp / "text.mp4"), "--mask", m], "text.mp4"),
        "frame not an image": ([str(broken), "--mask", m], "00001.png"),
        "missing source": ([str(tmp / "nowhere"), "--mask", m], "does not exist"),
        "truncated checkpoint": ([f, "--mask", m, "--checkpoint", str(tmp / "cut.pt")], "truncated"),
    }


@pytest.mark.parametrize(
    "case",
    ["mask size", "mask without object", "mask not an image", "empty video", "unreadable video",
     "frame not an image", "missing source", "truncated checkpoint"],
)
def test_segment_bad_input(case: str, clip: tuple[Path, Path], tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    args, message = bad_inputs(tmp_path, *clip)[case]
    out = tmp_path / "out"
    code, _, err = run_cli(["segment", *args, "--out", str(out)], capsys)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("mevos segment: error:") and message in last, err
    assert "Traceback" not in err
    assert not out.exists(), "no output that looks complete"
    assert not list(tmp_path.glob(".out*")), "no temporary output left behind"


def test_segment_refuses_to_overwrite(clip: tuple[Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    frames, mask = clip
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, _, err = run_cli(["segment", str(frames), "--mask", str(mask), "--out", str(out)], capsys)
    assert code == 2 and "not empty" in err
    assert (out / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("cuda_present", [False, True], ids=["no-cuda", "cuda"])
def test_segment_device_cuda_selects_the_fast_tracker(monkeypatch: pytest.MonkeyPatch, cuda_present: bool) -> None:
    """The choice `mevos segment` (and serve) makes, through the function the CLI calls, with
    torch reporting CUDA absent or present."""
    import argparse

    from mevos.errors import UsageError
    from mevos.runtime import cli as segment_cli
    from mevos.runtime.options import use_fast_tracker

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_present)
    parser = argparse.ArgumentParser()
    segment_cli.add_arguments(parser)

    def choice(*extra: str) -> bool:
        args = parser.parse_args(["frames", "--mask", "m.png", "--out", "o", *extra])
        return use_fast_tracker(args.device, args.backend, args.fast)

    assert choice() is False  # --device cpu is the default
    with pytest.raises(UsageError, match="runs on CUDA devices, not 'cpu'"):
        choice("--device", "cpu", "--fast")
    assert choice("--device", "cuda") is cuda_present
    assert choice("--device", "cuda:0") is cuda_present
    assert choice("--device", "cuda", "--no-fast") is False
    assert choice("--device", "cuda", "--backend", "onnxruntime") is False
    if cuda_present:
        assert choice("--device", "cuda", "--fast") is True
    else:
        with pytest.raises(UsageError, match="--fast: the fast tracker needs a CUDA GPU"):
            choice("--device", "cuda", "--fast")
