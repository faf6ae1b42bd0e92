"""`mevos stream` against a real server on loopback writes the same masks as the in-process tracker."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("grpc", reason="the serve extra (grpcio) is not installed")
pytest.importorskip("prometheus_client", reason="the serve extra (prometheus-client) is not installed")

from mevos.cli import main  # noqa: E402
from mevos.data.palette import read_label_png  # noqa: E402
from mevos.data.synthetic import SyntheticConfig, generate, write_synthetic  # noqa: E402
from mevos.data.video import open_frames  # noqa: E402
from mevos.model import build_model, preset  # noqa: E402
from mevos.runtime.backend import TorchBackend  # noqa: E402
from mevos.runtime.tracker import Tracker, TrackerConfig  # noqa: E402
from mevos.server import ServerConfig, create_server  # noqa: E402

TRACKING = ["--top-k", "10", "--mem-frames", "4", "--refine-rounds", "1"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """As `mevos serve` on the CPU: one intra-op thread per calling thread (see tests/server)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def backend() -> TorchBackend:
    return TorchBackend(build_model(preset("small"), seed=0), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def target(backend: TorchBackend) -> Iterator[str]:
    server, port = create_server(backend, ServerConfig(port=0))
    yield f"127.0.0.1:{port}"
    server.stop(0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("syn")
    frames = write_synthetic(generate(SyntheticConfig(height=120, width=160, num_frames=6, num_objects=2)), root)
    return frames, root / "Annotations" / "480p" / "synthetic" / "00000.png"


@pytest.mark.parametrize("encoding", ["rle", "png"])
def test_stream_writes_the_in_process_masks(backend, target, dataset, tmp_path, encoding, capsys) -> None:  # noqa: ANN001
    frames_dir, mask = dataset
    out = tmp_path / "out"
    code = main(["stream", str(frames_dir), "--mask", str(mask), "--server", target, "--out", str(out),
                 "--image-format", "png", "--encoding", encoding, *TRACKING])
    assert code == 0
    assert "6 frames, 2 object(s)" in capsys.readouterr().out
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [f"{i:05d}.png" for i in range(6)]
    assert (out / "overlay.mp4").stat().st_size > 0
    tracker = Tracker(backend, TrackerConfig(top_k=10, mem_frames=4, refine_rounds=1))
    first = read_label_png(mask)
    for i, frame in enumerate(open_frames(frames_dir)):
        want = tracker.step(frame, masks=first if i == 0 else None).labels
        np.testing.assert_array_equal(read_label_png(out / f"{i:05d}.png"), want)


def test_stream_reports_an_unreachable_server(dataset, tmp_path, capsys) -> None:  # noqa: ANN001
    frames_dir, mask = dataset
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    code = main(["stream", str(frames_dir), "--mask", str(mask), "--server", f"127.0.0.1:{port}", "--out", str(out),
                 "--overlay", "none", "--timeout", "5"])
    assert code == 2
    assert "UNAVAILABLE" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".out.partial"))


def test_stream_refuses_a_mask_of_another_size(target, dataset, tmp_path, capsys) -> None:  # noqa: ANN001
    frames_dir, _ = dataset
    from mevos.data.palette import write_label_png

    bad = tmp_path / "bad.png"
    write_label_png(bad, np.ones((10, 10), np.uint8))
    code = main(["stream", str(frames_dir), "--mask", str(bad), "--server", target, "--out", str(tmp_path / "o")])
    assert code == 2 and "differs from the frame size" in capsys.readouterr().err


def test_unknown_setting_is_an_error() -> None:
    from mevos.client import make_settings
    from mevos.errors import MevosError

    with pytest.raises(MevosError, match="unknown session setting 'topk'"):
        make_settings({"topk": 3})
    assert make_settings({"top_k": 3, "radius": None}).HasField("top_k")
