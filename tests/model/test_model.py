"""The networks' shapes and checkpoints (atomic, strict, clear errors)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mevos.errors import CheckpointError, UsageError
from mevos.model import PRESETS, build_model, load_checkpoint, preset, save_checkpoint
from mevos.model.config import ModelConfig


@pytest.mark.parametrize("name", ["small", "small-xfeat", "r18", "r50"])
def test_stage_shapes(name: str) -> None:
    cfg = preset(name)
    model = build_model(cfg)
    image = torch.rand(1, 3, 64, 96)
    with torch.inference_mode():
        key, res3, res2 = model.encode_key(image)
        value = model.encode_value(image, torch.rand(3, 1, 64, 96))
        logits = model.decode(value, value, res3, res2)
    assert key.shape == (1, cfg.key_dim, 8, 12)
    assert torch.allclose(key.norm(dim=1), torch.ones(1, 8, 12), atol=1e-5), "keys are L2-normalised"
    assert res3.shape == (1, cfg.res3_channels, 8, 12)
    assert res2.shape == (1, cfg.res2_channels, 16, 24)
    assert value.shape == (3, cfg.value_dim, 8, 12)
    assert logits.shape == (3, 1, 64, 96)


def test_paper_dimensions() -> None:
    for name in ("r18", "r50"):
        assert (PRESETS[name].key_dim, PRESETS[name].value_dim) == (128, 512)
    assert PRESETS["r50"].feature_layer == 3 and PRESETS["r18"].feature_layer == 4
    with pytest.raises(UsageError, match="unknown model preset"):
        preset("r101")


def test_objects_are_independent() -> None:
    model = build_model(preset("small"))
    image, masks = torch.rand(1, 3, 32, 32), torch.rand(2, 1, 32, 32)
    with torch.inference_mode():
        both = model.encode_value(image, masks)
        one = model.encode_value(image, masks[1:])
    torch.testing.assert_close(both[1:], one, atol=1e-5, rtol=1e-5)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = build_model(preset("small"), seed=1)
    path = save_checkpoint(tmp_path / "m.pt", model, metadata={"trained": True, "steps": 7})
    loaded, meta = load_checkpoint(path)
    assert meta["steps"] == 7 and meta["trained"] is True
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"], "no temporary files left behind"
    assert ModelConfig.from_dict(model.config.to_dict()) == model.config


def test_bad_checkpoints(tmp_path: Path) -> None:
    good = save_checkpoint(tmp_path / "good.pt", build_model(preset("small")))
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pt").write_text("not a checkpoint")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    blob = torch.load(good, weights_only=True)
    blob["state_dict"]["decoder.predict.weight"] = torch.zeros(2, 64, 1, 1)
    torch.save(blob, tmp_path / "shape.pt")
    del blob["state_dict"]["decoder.predict.bias"]
    torch.save(blob, tmp_path / "keys.pt")
    cases = {
        "missing.pt": "does not exist",
        "cut.pt": "truncated",
        "text.pt": "truncated or not a torch checkpoint",
        "foreign.pt": "not a mevos checkpoint",
        "shape.pt": "other shapes",
        "keys.pt": "missing keys",
    }
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(tmp_path / name)
    with pytest.raises(CheckpointError, match="'small' model, but a 'r18'"):
        load_checkpoint(good, expect_preset="r18")


def test_failed_save_leaves_no_file(tmp_path: Path) -> None:
    model = build_model(preset("small"))
    with pytest.raises(AttributeError, match="pickle"):  # a lambda cannot be saved: the write fails midway
        save_checkpoint(tmp_path / "m.pt", model, train_state={"x": lambda: 0})
    assert list(tmp_path.iterdir()) == []


def test_resnet_inference_pool_is_exact():
    # Inference pools over a channels-last copy (faster on the CPU); the values must be the same
    # as the plain op's, which training (grad enabled) still runs.
    from mevos.model.config import preset
    from mevos.model.resnet import ResNet

    torch.manual_seed(0)
    net = ResNet(preset("small"), in_channels=4).eval()
    x = torch.randn(2, 4, 64, 88)
    with torch.no_grad():
        fast = net(x)
    plain = net(x)
    assert all(torch.equal(a, b.detach()) for a, b in zip(fast, plain))
    assert all(t.is_contiguous() for t in fast)
