"""The graph contract: the three stage graphs' names, named inputs/outputs and symbolic shapes,
and the network's STRIDE. Shared by export (which writes the graphs) and runtime (which runs them).

The graphs have the boundaries of the model's stage methods and carry their names (STYLE 2):

    encode_key   image 1x3xHxW                          -> key 1xCkxhxw, res3 1xC3xhxw, res2 1xC2x2hx2w
    encode_value image 1x3xHxW, masks Ox1xHxW           -> value OxCvxhxw
    decode       readout, value OxCvxhxw, res3, res2    -> logits Ox1xHxW

with h = H/8, w = W/8 (H, W multiples of 8) and O objects. Everything the exporter, the engine
builder and the runtimes need to know about shapes comes from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from mevos.errors import InputError
from mevos.model.config import ModelConfig

GRAPH_NAMES: tuple[str, ...] = ("encode_key", "encode_value", "decode")
STRIDE = 8  # output stride of the encoders; the decoder's 1/4 skip divides evenly too

#: A symbolic dimension: an int, or one of the names below (resolved by `resolve_dim`).
Dim = int | str
#: symbol -> (base, divisor-or-multiplier) with H, W the padded input size and O the object count.
_SYMBOLS: dict[str, tuple[str, float]] = {
    "height": ("H", 1), "width": ("W", 1),
    "height_4": ("H", 1 / 4), "width_4": ("W", 1 / 4),
    "height_8": ("H", 1 / 8), "width_8": ("W", 1 / 8),
    "objects": ("O", 1),
}


@dataclass(frozen=True)
class TensorSpec:
    """One named graph input or output; `shape` holds ints and symbols of _SYMBOLS."""

    name: str
    shape: tuple[Dim, ...]

    def resolve(self, height: int, width: int, objects: int) -> tuple[int, ...]:
        """The concrete shape for an input of height x width (padded) and `objects` objects."""
        return tuple(resolve_dim(d, height, width, objects) for d in self.shape)

    def dynamic_axes(self) -> dict[int, str]:
        """{axis: symbol} for torch.onnx.export."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def input_shapes(self, height: int, width: int, objects: int) -> dict[str, tuple[int, ...]]:
        return {t.name: t.resolve(height, width, objects) for t in self.inputs}

    def output_shapes(self, height: int, width: int, objects: int) -> dict[str, tuple[int, ...]]:
        return {t.name: t.resolve(height, width, objects) for t in self.outputs}


def resolve_dim(d: Dim, height: int, width: int, objects: int) -> int:
    if isinstance(d, int):
        return d
    base, factor = _SYMBOLS[d]
    value = {"H": height, "W": width, "O": objects}[base]
    return int(value * factor)


def graph_specs(config: ModelConfig) -> dict[str, GraphSpec]:
    """The three graphs of a model of `config`, by name."""
    ck, cv, c3, c2 = config.key_dim, config.value_dim, config.res3_channels, config.res2_channels
    image = TensorSpec("image", (1, 3, "height", "width"))
    res3 = TensorSpec("res3", (1, c3, "height_8", "width_8"))
    res2 = TensorSpec("res2", (1, c2, "height_4", "width_4"))
    value = TensorSpec("value", ("objects", cv, "height_8", "width_8"))
    return {
        "encode_key": GraphSpec(
            "encode_key", (image,), (TensorSpec("key", (1, ck, "height_8", "width_8")), res3, res2)
        ),
        "encode_value": GraphSpec(
            "encode_value", (image, TensorSpec("masks", ("objects", 1, "height", "width"))), (value,)
        ),
        "decode": GraphSpec(
            "decode",
            (TensorSpec("readout", ("objects", cv, "height_8", "width_8")), value, res3, res2),
            (TensorSpec("logits", ("objects", 1, "height", "width")),),
        ),
    }


def input_size(graph: str, shapes: dict[str, tuple[int, ...]]) -> tuple[int, int, int]:
    """(H, W, O) of a call of `graph` from its input shapes (H, W: the padded image size)."""
    if graph == "encode_key":
        _, _, h, w = shapes["image"]
        return h, w, 1
    if graph == "encode_value":
        o, _, h, w = shapes["masks"]
        return h, w, o
    o, _, h, w = shapes["readout"]
    return h * STRIDE, w * STRIDE, o


def check_resolution(height: int, width: int, what: str = "resolution") -> None:
    if height < STRIDE or width < STRIDE or height % STRIDE or width % STRIDE:
        raise InputError(f"{what} {height}x{width}: height and width must be positive multiples of {STRIDE}")
