"""Space-time clustering (Eq. 4): k-means over every pixel embedding of a video, plus a 3D
sinusoidal position code, so that segments are compact in space and time. Clusters holding more
than `max_fraction` of the video's pixels (sky, grass, ...) are dropped; the rest are pseudo
object masks (labels 1..M, 0 = no object)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def position_encoding_3d(t: int, h: int, w: int, freqs: int, device: torch.device | str = "cpu") -> Tensor:
    """T*h*w x 6*freqs sinusoidal code of (t, y, x), each normalised to [0, 1], at frequencies
    pi * 2^i; scaled to unit norm per pixel."""
    axes = [torch.linspace(0, 1, n, device=device) if n > 1 else torch.zeros(1, device=device) for n in (t, h, w)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # N x 3
    f = math.pi * (2.0 ** torch.arange(freqs, device=device, dtype=torch.float32))
    ang = grid[:, :, None] * f  # N x 3 x freqs
    pe = torch.cat([ang.sin(), ang.cos()], dim=2).reshape(grid.shape[0], -1)
    return pe / math.sqrt(3 * freqs)


def kmeans(x: Tensor, k: int, iters: int, seed: int = 0, fit_points: int = 0,
           chunk: int = 65536) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ seeding, on x's device. x: N x D float -> (labels N int64,
    centroids k x D). Empty clusters are re-seeded at the point farthest from its centroid.
    fit_points > 0 fits the centroids on that many random points, then labels every point."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    full = x
    if 0 < fit_points < x.shape[0]:
        x = x[torch.randperm(x.shape[0], generator=g)[:fit_points].to(x.device)]
    n = x.shape[0]
    # k-means++ seeding on a subsample keeps the seeding cost independent of N
    sub = x[torch.randperm(n, generator=g)[: min(n, 4096)].to(x.device)]
    cent = [sub[int(torch.randint(sub.shape[0], (1,), generator=g))]]
    d2 = ((sub - cent[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / d2.numel())
        i = int(torch.multinomial(p.cpu(), 1, generator=g))
        cent.append(sub[i])
        d2 = torch.minimum(d2, ((sub - sub[i]) ** 2).sum(1))
    c = torch.stack(cent)
    labels = torch.zeros(n, dtype=torch.long, device=x.device)
    for _ in range(iters):
        labels, dist = _assign(x, c, chunk)
        onehot = torch.nn.functional.one_hot(labels, k).to(x.dtype)  # a matmul beats index_add_ on CPU
        sums = onehot.t() @ x
        counts = onehot.sum(0)
        new = sums / counts.clamp(min=1)[:, None]
        for j in torch.nonzero(counts == 0).flatten().tolist():
            dist = dist + (x * x).sum(1)
            far = int(dist.argmax())
            new[j] = x[far]
            dist[far] = 0
        if torch.allclose(new, c):
            c = new
            break
        c = new
    labels, _ = _assign(full, c, chunk)
    return labels, c


def _assign(x: Tensor, c: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    labels, dists = [], []
    cc = (c * c).sum(1)
    for s in range(0, x.shape[0], chunk):
        xs = x[s:s + chunk]
        d = cc - 2 * xs @ c.t()  # |x|^2 is the same for every centroid: left out of the argmin
        m, i = d.min(1)
        labels.append(i)
        dists.append(m)
    return torch.cat(labels), torch.cat(dists)


@dataclass(frozen=True)
class ClusterResult:
    """labels T x h x w uint8: 0 = dropped (oversized) cluster, j >= 1 = pseudo object j.
    fractions: share of pixels of every cluster (before dropping); kept: how many survive."""

    labels: Tensor
    fractions: tuple[float, ...]
    kept: int


def cluster_video(features: Tensor, clusters: int, iters: int, max_fraction: float, pe_weight: float,
                  pe_freqs: int, seed: int = 0, fit_points: int = 0) -> ClusterResult:
    """features: T x D x h x w pixel embeddings (unit norm over D) of one video -> ClusterResult."""
    t, d, h, w = features.shape
    x = features.permute(0, 2, 3, 1).reshape(-1, d).float()
    if pe_weight > 0:
        x = torch.cat([x, pe_weight * position_encoding_3d(t, h, w, pe_freqs, x.device)], dim=1)
    labels, _ = kmeans(x, clusters, iters, seed, fit_points)
    counts = torch.bincount(labels, minlength=clusters).float()
    fractions = counts / labels.numel()
    keep = fractions <= max_fraction
    keep &= counts > 0
    # Renumber the kept clusters 1..m in order of size (largest first), dropped ones -> 0.
    order = [int(j) for j in torch.argsort(counts, descending=True) if bool(keep[j])]
    lut = torch.zeros(clusters, dtype=torch.uint8, device=labels.device)
    for new, j in enumerate(order, start=1):
        lut[j] = new
    out = lut[labels].view(t, h, w).cpu()
    return ClusterResult(out, tuple(float(f) for f in fractions.cpu()), len(order))
