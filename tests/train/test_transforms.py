"""Phi: one transformation for images, feature maps and label maps; equivariance of toy encoders."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mevos.train.transforms import Transform, apply_batch, sample_clip_transform, sample_phi


def test_crop_of_whole_pixels_is_exact_slicing() -> None:
    x = torch.rand(1, 3, 40, 48)
    t = Transform.crop((40, 48), (8, 16, 24, 24))
    assert torch.allclose(t.apply(x, (24, 24)), x[:, :, 8:32, 16:40], atol=1e-4)
    flipped = Transform.crop((40, 48), (8, 16, 24, 24), flip=True)
    assert torch.allclose(flipped.apply(x, (24, 24)), x[:, :, 8:32, 16:40].flip(-1), atol=1e-4)


def test_phi_commutes_with_a_stride_8_toy_encoder() -> None:
    """E = 8x8 average pooling (stride 8). Phi: a crop on the 8-pixel grid, with a flip.
    E(Phi(I)) equals Phi(E(I)) applied on the feature grid."""
    image = torch.rand(2, 3, 64, 80)
    encode = lambda x: F.avg_pool2d(x, 8)  # noqa: E731
    phi = Transform.crop((64, 80), (16, 8, 32, 48), flip=True)
    a = encode(phi.apply(image, (32, 48)))
    b = phi.apply(encode(image), (4, 6))
    assert torch.allclose(a, b, atol=1e-5)


def test_phi_commutes_with_a_pointwise_encoder_at_any_scale() -> None:
    """A 1x1 conv commutes with bilinear resampling, so any scale/crop/flip is exactly equivariant."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 1)
    image = torch.rand(1, 3, 50, 70)
    phi = sample_phi(np.random.default_rng(3), 0.5, True).then(Transform.crop((1, 1), (0.1, 0.2, 0.7, 0.7)))
    with torch.no_grad():
        assert torch.allclose(conv(phi.apply(image, (33, 33))), phi.apply(conv(image), (33, 33)), atol=1e-5)


def test_composition_matches_applying_twice() -> None:
    x = torch.rand(1, 1, 64, 64)
    a = Transform.crop((64, 64), (0, 0, 32, 32))
    b = Transform.crop((1, 1), (0.5, 0.0, 0.5, 0.5), flip=True)
    twice = b.apply(a.apply(x, (32, 32)), (16, 16))
    assert torch.allclose(a.then(b).apply(x, (16, 16)), twice, atol=1e-5)


def test_label_maps_follow_images_with_nearest_sampling() -> None:
    labels = torch.zeros(1, 1, 8, 12)
    labels[:, :, 2:5, 3:7] = 3
    clip = sample_clip_transform(np.random.default_rng(0), (8, 12), 6, 6, 8, True)
    out = apply_batch(labels, [clip], (6, 6), mode="nearest")
    assert set(out.unique().tolist()) <= {0.0, 3.0}


def test_clip_transform_stays_inside_the_frame() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        t = sample_clip_transform(rng, (288, 512), 256, 256, 320, True)
        for a, b in ((t.ay, t.by), (t.ax, t.bx)):
            assert -1 - 1e-6 <= -abs(a) + b and abs(a) + b <= 1 + 1e-6
