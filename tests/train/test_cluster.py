"""Space-time clustering: planted clusters are found, an oversized one is dropped."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mevos.train.cluster import cluster_video, kmeans, position_encoding_3d


def test_kmeans_recovers_planted_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(4, 8) * 5
    truth = torch.randint(0, 4, (2000,), generator=g)
    x = centres[truth] + 0.3 * torch.randn(2000, 8, generator=g)
    labels, _ = kmeans(x, 4, 50, seed=1)
    # Every planted cluster maps to exactly one found cluster, and back.
    pairs = {(int(a), int(b)) for a, b in zip(truth, labels)}
    assert len(pairs) == 4 and len({b for _, b in pairs}) == 4


def test_oversized_cluster_is_dropped_and_the_rest_become_objects() -> None:
    """A video whose 'background' feature covers 60% of the pixels, and two objects."""
    t, h, w = 4, 10, 10
    feats = torch.zeros(t, 3, h, w)
    feats[:, 0] = 1  # background everywhere...
    feats[:, :, 0:4, 0:4] = torch.tensor([0.0, 1, 0]).view(1, 3, 1, 1)  # object A: 16% of pixels
    feats[:, :, 5:10, 5:10] = torch.tensor([0.0, 0, 1]).view(1, 3, 1, 1)  # object B: 25%
    res = cluster_video(F.normalize(feats, dim=1), clusters=3, iters=20, max_fraction=0.4, pe_weight=0.0, pe_freqs=2)
    assert res.kept == 2
    assert int((res.labels == 0).sum()) == t * (h * w - 16 - 25)  # the background is dropped
    assert (res.labels[:, 0:4, 0:4] == res.labels[0, 0, 0]).all() and int(res.labels[0, 0, 0]) > 0
    assert (res.labels[:, 5:, 5:] == res.labels[0, 9, 9]).all() and int(res.labels[0, 9, 9]) > 0
    assert sorted(round(f, 2) for f in res.fractions) == [0.16, 0.25, 0.59]


def test_position_encoding_is_unit_norm_and_separates_places() -> None:
    pe = position_encoding_3d(3, 4, 5, freqs=3)
    assert pe.shape == (60, 18)
    assert torch.allclose(pe.norm(dim=1), torch.ones(60), atol=1e-5)
    assert torch.cdist(pe, pe).add(torch.eye(60)).min() > 0


def test_fit_on_a_subsample_still_labels_every_pixel() -> None:
    x = torch.cat([torch.zeros(500, 2), torch.ones(500, 2) * 10]) + 0.1 * torch.randn(1000, 2)
    labels, _ = kmeans(x, 2, 10, fit_points=50)
    assert labels.shape == (1000,) and len(set(labels[:500].tolist())) == 1 and labels[0] != labels[-1]
