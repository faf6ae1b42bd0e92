"""The one interface every inference backend implements, and the PyTorch backend.

A backend runs the three stages of the model (encode_key, encode_value, decode) on its device;
the tracker and the propagation math never change with the backend. Other backends (ONNX
Runtime, TensorRT) live beside this one and register in `BACKENDS`.
"""

from __future__ import annotations

import contextlib
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from mevos.errors import UsageError
from mevos.model.config import ModelConfig
from mevos.model.network import MevosNet


@runtime_checkable
class Backend(Protocol):
    """What the tracker needs from a backend. Inputs/outputs are torch tensors on `device`."""

    name: str
    device: torch.device
    config: ModelConfig

    def encode_key(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """image 1 x 3 x H x W float in [0, 1] -> (key 1 x Ck x H/8 x W/8, res3, res2)."""
        ...

    def encode_value(self, image: Tensor, masks: Tensor) -> Tensor:
        """image 1 x 3 x H x W, masks O x 1 x H x W -> values O x Cv x H/8 x W/8."""
        ...

    def decode(self, readout: Tensor, value: Tensor, res3: Tensor, res2: Tensor) -> Tensor:
        """readout, value O x Cv x h x w, skips of one frame -> logits O x 1 x 8h x 8w."""
        ...


class TorchBackend:
    """Runs a MevosNet with PyTorch on CPU or CUDA (fp16 autocast on CUDA unless fp32 is asked)."""

    name = "torch"

    def __init__(self, model: MevosNet, device: str | torch.device = "cpu", precision: str = "auto") -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu")
        if precision not in ("auto", "fp32", "fp16"):
            raise UsageError(f"precision must be auto, fp32 or fp16, not {precision!r}")
        if precision == "fp16" and self.device.type != "cuda":
            raise UsageError("fp16 needs a CUDA device; on the CPU use fp32")
        self.fp16 = self.device.type == "cuda" and precision in ("auto", "fp16")
        self.model = model.to(self.device).eval()
        self.config = model.config

    def _ctx(self) -> contextlib.AbstractContextManager[object]:
        if self.fp16:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def encode_key(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with self._ctx():
            return self.model.encode_key(image)

    @torch.inference_mode()
    def encode_value(self, image: Tensor, masks: Tensor) -> Tensor:
        with self._ctx():
            return self.model.encode_value(image, masks)

    @torch.inference_mode()
    def decode(self, readout: Tensor, value: Tensor, res3: Tensor, res2: Tensor) -> Tensor:
        with self._ctx():
            return self.model.decode(readout, value, res3, res2).float()


#: backend name -> "module:factory". Factories take (model_path, device, precision).
BACKENDS: dict[str, str] = {
    "torch": "mevos.runtime.backend:torch_backend_from_path",
    "onnxruntime": "mevos.runtime.onnxruntime_backend:onnxruntime_backend_from_path",
    "onnxruntime-trt": "mevos.runtime.onnxruntime_backend:onnxruntime_trt_backend_from_path",
    "tensorrt": "mevos.runtime.tensorrt_backend:tensorrt_backend_from_path",
}


def torch_backend_from_path(model_path: str | None, device: str = "cpu", precision: str = "auto") -> TorchBackend:
    """A TorchBackend from a checkpoint path (None: the shipped default weights, else untrained `small`)."""
    from mevos.model.weights import load_default_model

    model, _ = load_default_model(model_path)
    return TorchBackend(model, device=device, precision=precision)


def create_backend(name: str, model_path: str | None, device: str = "cpu", precision: str = "auto") -> Backend:
    """The backend called `name` for the model at `model_path`. Unknown names list the known ones."""
    import importlib

    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    module_name, factory = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module_name), factory)(model_path, device=device, precision=precision)
