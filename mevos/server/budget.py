"""What one session may cost, checked before its tracker allocates anything.

The tracker's memory bank is preallocated: (max_pinned + mem_frames) slots x feature cells x
(key + objects x (value + mask)). Together with one frame's activations (the key encoder on one
image, the value encoder and decoder on one image per object) that is what a session holds. The
estimate counts 4 bytes per value (fp32; fp16 backends need about half), so it errs on the safe
side; it is computed from the first frame's size, short_side, mem_frames and the object count,
and again whenever objects are added.
"""

from __future__ import annotations

from dataclasses import dataclass

from mevos.model.config import ModelConfig
from mevos.runtime.geometry import STRIDE, Geometry
from mevos.runtime.tracker import TrackerConfig
from mevos.server.limits import RequestError

BYTES_PER_VALUE = 4
MIB = 2**20


def activation_values_per_pixel(model: ModelConfig) -> float:
    """Values alive per input pixel and batch row while an encoder runs: the input, then the
    widest stages (stem at 1/2, layer1 at 1/4, the rest at 1/8), about two at a time."""
    c = [w * model.expansion for w in model.widths]
    return 4 + 2 * (model.stem_width / 4 + c[0] / 16 + sum(c[1:]) / 64)


@dataclass(frozen=True)
class MemoryBudget:
    """limit_bytes per session; max_side bounds the working size (after short_side) too."""

    model: ModelConfig
    limit_bytes: int
    max_side: int

    def geometry(self, size: tuple[int, int], config: TrackerConfig, where: str) -> Geometry:
        """The working geometry of frames of `size` (H, W); INVALID_ARGUMENT when short_side
        scales them beyond max_side."""
        geo = config.geometry(size)
        (h, w), (sh, sw) = size, geo.scaled
        if max(sh, sw) > self.max_side:
            raise RequestError("INVALID_ARGUMENT", f"{where}: short_side {config.short_side} scales the {w}x{h} frame "
                                                   f"to {sw}x{sh}, beyond the server's max_frame_side {self.max_side}")
        return geo

    def estimate(self, geo: Geometry, config: TrackerConfig, objects: int) -> int:
        """Bytes a session with frames of `geo` and `objects` objects needs (an estimate)."""
        m = self.model
        slots = config.max_pinned + config.mem_frames
        cells = geo.grid[0] * geo.grid[1]
        bank = slots * cells * (m.key_dim + objects * (m.value_dim + 1))
        pixels = geo.padded[0] * geo.padded[1]
        frame = (1 + objects) * pixels * activation_values_per_pixel(m)
        frame += objects * (pixels + cells * m.value_dim)  # per-object probabilities and readouts
        full = objects * geo.size[0] * geo.size[1]  # probabilities at the frame size
        return int((bank + frame + full) * BYTES_PER_VALUE)

    def check(self, geo: Geometry, config: TrackerConfig, objects: int, where: str) -> None:
        """RESOURCE_EXHAUSTED, naming the numbers, when the estimate is over the limit."""
        need = self.estimate(geo, config, objects)
        if need > self.limit_bytes:
            (sh, sw), slots = geo.scaled, config.max_pinned + config.mem_frames
            raise RequestError(
                "RESOURCE_EXHAUSTED",
                f"{where}: the session would need about {need / MIB:.0f} MiB ({sw}x{sh} working size = "
                f"{geo.grid[1]}x{geo.grid[0]} feature cells at stride {STRIDE}, {objects} objects, {slots} memory "
                f"slots = {config.max_pinned} pinned + mem_frames {config.mem_frames}), over the server's per-session "
                f"budget of {self.limit_bytes / MIB:.0f} MiB; lower short_side, mem_frames or the number of objects")
