"""A seeded synthetic video with exact masks: the embedded data of the demo and the test suite.

Textured objects (ellipses, convex polygons, blobs; stripes, checker, rings or smooth-noise
textures, each in its own colour) move on smooth paths that all pass near the frame centre midway
through each pass, so they meet and occlude one another in a fixed depth order. The texture is
fixed to the object (it moves, turns and scales with it) over a textured background that drifts.
In frame 0 every object is whole, inside the frame and apart from the others.
"""

from __future__ import annotations

import colorsys
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mevos.data.palette import write_label_png
from mevos.errors import UsageError

SHAPES: tuple[str, ...] = ("ellipse", "polygon", "blob")
TEXTURES: tuple[str, ...] = ("stripes", "checker", "noise", "rings")


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. Same config (seed included) -> byte-identical frames and labels."""

    height: int = 240
    width: int = 320
    num_frames: int = 30
    num_objects: int = 2
    seed: int = 0
    name: str = "synthetic"
    period: int | None = None  # frames from one side to the other; None: the whole video is one pass
    scale_change: float = 0.25  # object size varies within 1 +- this
    drift: float = 6.0  # background drift amplitude, pixels
    noise: float = 2.0  # per-frame Gaussian pixel noise, std on the 0..255 scale

    def __post_init__(self) -> None:
        if self.height < 16 or self.width < 16:
            raise UsageError(f"synthetic frames must be at least 16x16, got {self.width}x{self.height}")
        if self.num_frames < 1 or self.num_objects < 1 or self.num_objects > 255:
            raise UsageError(
                f"need num_frames >= 1 and 1 <= num_objects <= 255, got {self.num_frames}, {self.num_objects}"
            )
        if self.period is not None and self.period < 1:
            raise UsageError(f"period must be >= 1 frame, got {self.period}")
        if not 0.0 <= self.scale_change < 1.0 or self.drift < 0 or self.noise < 0:
            raise UsageError("need 0 <= scale_change < 1, drift >= 0 and noise >= 0")


@dataclass(frozen=True)
class SyntheticVideo:
    """frames: T x (H x W x 3 uint8). labels: T x (H x W uint8), 0 = background, 1..N = the visible
    pixels of each object. amodal: T x (N x H x W bool), each object's full extent before occlusion.
    depth_order: object ids from back to front."""

    frames: list[np.ndarray] = field(repr=False)
    labels: list[np.ndarray] = field(repr=False)
    amodal: list[np.ndarray] = field(repr=False)
    depth_order: tuple[int, ...]
    num_objects: int
    config: SyntheticConfig = field(repr=False)

    @property
    def name(self) -> str:
        return self.config.name


def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of gh x gw x C to h x w x C (float32)."""
    gh, gw = grid.shape[:2]
    ys = np.linspace(0, gh - 1, h, dtype=np.float32)
    xs = np.linspace(0, gw - 1, w, dtype=np.float32)
    y0 = np.minimum(ys.astype(np.int64), gh - 2)
    x0 = np.minimum(xs.astype(np.int64), gw - 2)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    rows = grid[y0] * (1 - fy) + grid[y0 + 1] * fy
    return (rows[:, x0] * (1 - fx) + rows[:, x0 + 1] * fx).astype(np.float32)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255


class _Object:
    """One object: shape and texture in local units (extent radius 1), plus its path."""

    def __init__(self, rng: np.random.Generator, cfg: SyntheticConfig, radius: float,
                 start: np.ndarray, hue: float, texture: str) -> None:
        self.radius = radius
        self.shape = SHAPES[int(rng.integers(len(SHAPES)))]
        self.texture = texture
        if self.shape == "ellipse":
            self.axes = (1.0, float(rng.uniform(0.55, 0.9)))
        elif self.shape == "polygon":
            n = int(rng.integers(5, 9))
            ang = 2 * np.pi * (np.arange(n) + rng.uniform(-0.25, 0.25, n)) / n
            self.verts = np.stack([np.cos(ang), np.sin(ang)], 1)
        else:
            amp = rng.uniform(0.0, 0.12, 3)
            self.harmonics = (np.arange(2, 5), amp / (1 + amp.sum()), rng.uniform(0, 2 * np.pi, 3), 1 / (1 + amp.sum()))
        self.freq = float(rng.uniform(2.5, 4.0))
        self.tex_angle = float(rng.uniform(0, np.pi))
        self.tex_phase = rng.uniform(0, 2 * np.pi, 2)
        self.noise_grid = rng.uniform(0, 1, (9, 9)).astype(np.float32)
        self.colour_a = _hsv(hue, 0.8, 0.95)
        self.colour_b = _hsv(hue + 0.08, 0.9, 0.35)
        # Path: start -> centre (+ a small sideways offset) -> opposite side, then back.
        perp = np.array([-start[1], start[0]]) / max(float(np.linalg.norm(start)), 1e-6)
        self.start = start
        self.side = perp * radius * float(rng.uniform(-0.1, 0.1))
        self.wobble = rng.uniform(-0.12, 0.12, 2) * float(np.linalg.norm(start))
        self.rot0 = float(rng.uniform(0, 2 * np.pi))
        self.spin = float(rng.uniform(-1.0, 1.0))  # radians per pass
        self.scale_freq = float(rng.uniform(0.6, 1.4))
        self.scale_phase = float(rng.uniform(0, 2 * np.pi))
        self.scale_change = cfg.scale_change

    def pose(self, theta: float, centre: np.ndarray) -> tuple[np.ndarray, float, float]:
        """(centre xy, radius in pixels, rotation) at path phase theta (0 = start, pi/2 = middle)."""
        c = centre + self.start * math.cos(theta) + self.side * math.sin(theta) + self.wobble * math.sin(2 * theta)
        s = 1 + self.scale_change * math.sin(self.scale_freq * theta + self.scale_phase)
        return c, self.radius * s, self.rot0 + self.spin * theta / math.pi

    def contains(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        if self.shape == "ellipse":
            a, b = self.axes
            return (u / a) ** 2 + (v / b) ** 2 <= 1
        if self.shape == "polygon":
            p, q = self.verts, np.roll(self.verts, -1, 0)
            inside = np.ones(u.shape, dtype=bool)
            for (px, py), (qx, qy) in zip(p, q):
                # The centre is inside, so a point is inside when it is on the centre's side of every edge.
                sign = (qx - px) * (0 - py) - (qy - py) * (0 - px)
                inside &= ((qx - px) * (v - py) - (qy - py) * (u - px)) * sign >= 0
            return inside
        ks, amp, phase, base = self.harmonics
        phi = np.arctan2(v, u)[..., None]
        rho = base + (amp * np.cos(ks * phi + phase)).sum(-1)
        return u * u + v * v <= rho * rho

    def paint(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Texture colours at local coordinates: h x w x 3 float32."""
        if self.texture == "stripes":
            along = u * math.cos(self.tex_angle) + v * math.sin(self.tex_angle)
            f = 0.5 + 0.5 * np.sin(2 * np.pi * self.freq * along)
        elif self.texture == "checker":
            cells = np.floor(u * self.freq + self.tex_phase[0]) + np.floor(v * self.freq + self.tex_phase[1])
            f = (cells % 2) * 0.8 + 0.1
        elif self.texture == "rings":
            f = 0.5 + 0.5 * np.cos(2 * np.pi * self.freq * np.sqrt(u * u + v * v) + self.tex_phase[0])
        else:
            gx = np.clip((u + 1) * 4, 0, 7.999)
            gy = np.clip((v + 1) * 4, 0, 7.999)
            x0, y0 = gx.astype(np.int64), gy.astype(np.int64)
            fx, fy = gx - x0, gy - y0
            g = self.noise_grid
            top = g[y0, x0] * (1 - fx) + g[y0, x0 + 1] * fx
            bottom = g[y0 + 1, x0] * (1 - fx) + g[y0 + 1, x0 + 1] * fx
            f = top * (1 - fy) + bottom * fy
        shade = 0.88 + 0.12 * np.clip(-u - v, -1, 1)  # light from the top left: the object looks solid
        f = f.astype(np.float32)[..., None]
        return (self.colour_a * f + self.colour_b * (1 - f)) * shade.astype(np.float32)[..., None]


def _object_radius(cfg: SyntheticConfig) -> float:
    """Largest extent radius (pixels, at scale 1) that keeps frame-0 objects inside and apart."""
    grow = 1 + cfg.scale_change
    m = min(cfg.height, cfg.width) / 2 - 2
    if cfg.num_objects == 1:
        return min(cfg.height, cfg.width) * 0.2
    # Frame-0 centres sit on an ellipse of half-axes >= m - R, at least 0.6 * 2pi/N apart.
    sin_g = math.sin(min(0.6 * math.pi / cfg.num_objects, math.pi / 2))
    r_ext = (m * sin_g - 1) / (1 + sin_g)
    r = min(r_ext / grow, min(cfg.height, cfg.width) * 0.2)
    if r < 4:
        raise UsageError(f"{cfg.num_objects} objects do not fit apart in a {cfg.width}x{cfg.height} frame")
    return r


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A muted, textured h x w x 3 float32 canvas: two octaves of smooth noise plus faint grain lines."""
    low = _upsample(rng.uniform(0, 1, (h // 48 + 3, w // 48 + 3, 1)).astype(np.float32), h, w)
    mid = _upsample(rng.uniform(0, 1, (h // 12 + 3, w // 12 + 3, 3)).astype(np.float32), h, w)
    hue = float(rng.uniform(0, 1))
    dark, light = _hsv(hue, 0.25, 0.3), _hsv(hue + 0.1, 0.2, 0.75)
    angle = float(rng.uniform(0, np.pi))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grain = 0.5 + 0.5 * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) / 3.0 + 6 * low[..., 0])
    f = 0.55 * low + 0.3 * mid.mean(-1, keepdims=True) + 0.15 * grain[..., None]
    return dark * (1 - f) + light * f + (mid - 0.5) * 30


def generate(config: SyntheticConfig = SyntheticConfig()) -> SyntheticVideo:
    """Render the video described by `config` (see SyntheticVideo for what comes back)."""
    cfg = config
    rng = np.random.default_rng(cfg.seed)
    h, w, n = cfg.height, cfg.width, cfg.num_objects
    pad = int(math.ceil(cfg.drift)) + 1
    canvas = _background(rng, h + 2 * pad, w + 2 * pad)
    drift_freq = rng.uniform(0.02, 0.06, 2)
    drift_phase = rng.uniform(0, 2 * np.pi, 2)

    radius = _object_radius(cfg)
    grow = 1 + cfg.scale_change
    centre = np.array([w / 2, h / 2])
    half_axes = np.array([w / 2 - 2 - radius * grow, h / 2 - 2 - radius * grow])
    a0 = float(rng.uniform(0, 2 * np.pi))
    hue0 = float(rng.uniform(0, 1))
    tex0 = int(rng.integers(len(TEXTURES)))
    objects = []
    for i in range(n):
        ang = a0 + 2 * np.pi * (i + float(rng.uniform(-0.2, 0.2))) / n
        start = half_axes * np.array([math.cos(ang), math.sin(ang)])
        size = radius * float(rng.uniform(0.75, 1.0))
        objects.append(_Object(rng, cfg, size, start, hue0 + i / n, TEXTURES[(tex0 + i) % len(TEXTURES)]))
    depth = tuple(int(k) + 1 for k in rng.permutation(n))  # back to front

    period = cfg.period or max(cfg.num_frames - 1, 1)
    frames, labels, amodal = [], [], []
    for t in range(cfg.num_frames):
        theta = math.pi * t / period
        ox, oy = (pad + np.round(cfg.drift * np.sin(drift_freq * t + drift_phase))).astype(int)
        img = canvas[oy:oy + h, ox:ox + w].copy()
        lab = np.zeros((h, w), dtype=np.uint8)
        full = np.zeros((n, h, w), dtype=bool)
        for oid in depth:
            obj = objects[oid - 1]
            c, r, rot = obj.pose(theta, centre)
            x0, x1 = max(0, int(c[0] - r) - 1), min(w, int(c[0] + r) + 2)
            y0, y1 = max(0, int(c[1] - r) - 1), min(h, int(c[1] + r) + 2)
            if x0 >= x1 or y0 >= y1:
                continue
            dx = np.arange(x0, x1, dtype=np.float32)[None, :] - c[0]
            dy = np.arange(y0, y1, dtype=np.float32)[:, None] - c[1]
            cs, sn = math.cos(rot), math.sin(rot)
            u, v = (cs * dx + sn * dy) / r, (-sn * dx + cs * dy) / r
            inside = obj.contains(u, v)
            img[y0:y1, x0:x1][inside] = obj.paint(u, v)[inside]
            lab[y0:y1, x0:x1][inside] = oid
            full[oid - 1, y0:y1, x0:x1] = inside
        if cfg.noise > 0:
            img += rng.standard_normal(img.shape, dtype=np.float32) * cfg.noise
        frames.append(np.clip(img + 0.5, 0, 255).astype(np.uint8))
        labels.append(lab)
        amodal.append(full)
    return SyntheticVideo(frames, labels, amodal, depth, n, cfg)


def write_synthetic(video: SyntheticVideo, folder: str | os.PathLike[str], resolution: str = "480p") -> Path:
    """Write `video` in DAVIS layout so DavisFolder(folder) reads it; returns the frame folder.

    <folder>/JPEGImages/<resolution>/<name>/%05d.jpg (quality 95) and
    <folder>/Annotations/<resolution>/<name>/%05d.png (palette PNGs of the labels).
    """
    root = Path(folder)
    img_dir = root / "JPEGImages" / resolution / video.name
    ann_dir = root / "Annotations" / resolution / video.name
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    for t, (frame, lab) in enumerate(zip(video.frames, video.labels)):
        Image.fromarray(frame).save(img_dir / f"{t:05d}.jpg", quality=95)
        write_label_png(ann_dir / f"{t:05d}.png", lab)
    return img_dir
