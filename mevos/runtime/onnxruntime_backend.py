"""The ONNX Runtime backend: the three exported graphs in ONNX Runtime sessions.

CPU: numpy in and out of the sessions (zero-copy views of CPU tensors). CUDA (CUDA or TensorRT
execution provider): IO binding to torch CUDA tensors, so tensors stay on the device between
graphs, and the sessions compute on torch's current stream.

    backend = OnnxRuntimeBackend.from_path("exports/small", device="cpu")
    key, res3, res2 = backend.encode_key(image)
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mevos.errors import InputError, MevosError, UsageError, require
from mevos.model.graphs import GraphSpec, graph_specs, input_size
from mevos.export.manifest import OnnxExport, export_hint

#: short name -> ONNX Runtime execution provider
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def _ort() -> Any:
    return require("onnxruntime", "onnx", "the onnxruntime backend")


class _Graph:
    """One InferenceSession and the spec of its graph."""

    def __init__(self, session: Any, spec: GraphSpec, device: torch.device) -> None:
        self.session, self.spec, self.device = session, spec, device
        self.stream: int | None = None

    def run(self, *inputs: Tensor) -> list[Tensor]:
        feeds = dict(zip(self.spec.input_names, inputs, strict=True))
        try:
            if self.device.type == "cpu":
                arrays = {k: np.ascontiguousarray(v.detach().to("cpu", torch.float32).numpy()) for k, v in feeds.items()}
                return [torch.from_numpy(o) for o in self.session.run(self.spec.output_names, arrays)]
            return self._run_bound(feeds)
        except Exception as exc:  # ORT's own exception types: turn them into one that names the call
            if isinstance(exc, MevosError):
                raise
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feeds.items())
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"ONNX Runtime cannot run {self.spec.name} on {shapes} ({first}); inputs must be "
                             f"float32 with heights and widths that are multiples of 8") from None

    def _run_bound(self, feeds: dict[str, Tensor]) -> list[Tensor]:
        binding = self.session.io_binding()
        index = self.device.index or 0
        keep = []  # the bound buffers must outlive the run
        for name, t in feeds.items():
            t = t.detach().to(self.device, torch.float32).contiguous()
            keep.append(t)
            binding.bind_input(name, "cuda", index, np.float32, tuple(t.shape), t.data_ptr())
        h, w, o = input_size(self.spec.name, {k: tuple(v.shape) for k, v in feeds.items()})
        outputs = [torch.empty(s, device=self.device) for s in self.spec.output_shapes(h, w, o).values()]
        for name, t in zip(self.spec.output_names, outputs, strict=True):
            binding.bind_output(name, "cuda", index, np.float32, tuple(t.shape), t.data_ptr())
        current = torch.cuda.current_stream(self.device)
        if current.cuda_stream != self.stream:
            current.synchronize()  # the session computes on another stream than the inputs were made on
        self.session.run_with_iobinding(binding)  # returns when the outputs are written
        return outputs


class OnnxRuntimeBackend:
    """Runs an ONNX export with ONNX Runtime.

    device: "cpu" or "cuda[:N]". providers: execution providers in order of preference, by short
    name ("tensorrt", "cuda", "cpu"); default: cpu on the CPU, cuda then cpu on CUDA. The graphs
    are fp32; precision "fp16" is possible only with the TensorRT execution provider.
    """

    name = "onnxruntime"

    def __init__(self, export: OnnxExport, device: str | torch.device = "cpu", precision: str = "auto",
                 providers: tuple[str, ...] | None = None, threads: int | None = None) -> None:
        ort = _ort()
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise UsageError(f"the onnxruntime backend runs on cpu or cuda, not {self.device}")
        if precision not in ("auto", "fp32", "fp16"):
            raise UsageError(f"precision must be auto, fp32 or fp16, not {precision!r}")
        if providers is None:
            providers = ("cpu",) if self.device.type == "cpu" else ("cuda", "cpu")
        unknown = [p for p in providers if p not in PROVIDERS]
        if unknown:
            raise UsageError(f"unknown execution provider(s) {unknown}; choose from {', '.join(PROVIDERS)}")
        if self.device.type == "cpu" and providers != ("cpu",):
            raise UsageError("on the CPU the onnxruntime backend uses the CPU execution provider only; "
                             "use --device cuda for the CUDA or TensorRT execution providers")
        if precision == "fp16" and "tensorrt" not in providers:
            raise UsageError("the onnxruntime backend runs the fp32 graphs on the CPU and CUDA execution providers; "
                             "for fp16 use --backend tensorrt, --backend onnxruntime-trt or --backend torch on CUDA")
        if self.device.type == "cuda":
            self._check_cuda(ort, providers)
        self.export = export
        self.config = export.config
        self.providers = providers
        fp16 = "tensorrt" in providers and precision in ("auto", "fp16")
        self.precision = "fp16" if fp16 else "fp32"
        specs = graph_specs(self.config)
        self.graphs = {name: self._session(ort, path, specs[name], threads, fp16) for name, path in export.paths.items()}

    def _check_cuda(self, ort: Any, providers: tuple[str, ...]) -> None:
        if not torch.cuda.is_available():
            raise UsageError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu")
        available = ort.get_available_providers()
        missing = [p for p in providers if PROVIDERS[p] not in available]
        if missing:
            raise UsageError(
                f"this onnxruntime ({ort.__version__}) lacks the {', '.join(PROVIDERS[p] for p in missing)}; "
                f"install onnxruntime-gpu (pip uninstall onnxruntime && pip install onnxruntime-gpu), "
                f"or use --device cpu"
            )

    def _provider_list(self, fp16: bool) -> list[Any]:
        from mevos.env import cache_dir

        out: list[Any] = []
        index = self.device.index or 0
        for p in self.providers:
            if p == "cuda":
                # Compute on torch's current stream: the graphs then order with the torch work around them.
                stream = torch.cuda.current_stream(self.device).cuda_stream
                out.append((PROVIDERS[p], {"device_id": str(index), "has_user_compute_stream": "1",
                                           "user_compute_stream": str(stream)}))
            elif p == "tensorrt":
                cache = cache_dir() / "ort-tensorrt"
                cache.mkdir(parents=True, exist_ok=True)
                stream = torch.cuda.current_stream(self.device).cuda_stream
                out.append((PROVIDERS[p], {
                    "device_id": str(index), "has_user_compute_stream": "1", "user_compute_stream": str(stream),
                    "trt_fp16_enable": "1" if fp16 else "0",
                    "trt_engine_cache_enable": "1", "trt_engine_cache_path": str(cache),
                    "trt_timing_cache_enable": "1", "trt_timing_cache_path": str(cache),
                }))
            else:
                out.append(PROVIDERS[p])
        return out

    def _session(self, ort: Any, path: os.PathLike[str], spec: GraphSpec, threads: int | None, fp16: bool) -> _Graph:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: ORT warns about every unused initializer
        if threads:
            options.intra_op_num_threads = threads
        # ORT's threads spin after each run by default; torch's ops between the graphs (the memory
        # read, soft aggregation) then fight them for the cores and run several times slower.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=self._provider_list(fp16))
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise InputError(f"ONNX Runtime cannot load {path} ({first}); {export_hint(self.export.folder)}") from None
        graph = _Graph(session, spec, self.device)
        if self.device.type == "cuda":
            graph.stream = torch.cuda.current_stream(self.device).cuda_stream
        return graph

    @classmethod
    def from_path(cls, model_path: str | os.PathLike[str] | None, device: str = "cpu", precision: str = "auto",
                  providers: tuple[str, ...] | None = None) -> OnnxRuntimeBackend:
        from mevos.export.onnx import resolve_export

        _ort()  # fail on a missing onnxruntime before exporting anything
        return cls(resolve_export(model_path), device=device, precision=precision, providers=providers)

    # -- the three stages -------------------------------------------------------------------

    def _out(self, t: Tensor) -> Tensor:
        return t if t.device == self.device else t.to(self.device)

    def encode_key(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """image 1 x 3 x H x W float in [0, 1] -> (key 1 x Ck x H/8 x W/8, res3, res2)."""
        key, res3, res2 = self.graphs["encode_key"].run(image)
        return self._out(key), self._out(res3), self._out(res2)

    def encode_value(self, image: Tensor, masks: Tensor) -> Tensor:
        """image 1 x 3 x H x W, masks O x 1 x H x W -> values O x Cv x H/8 x W/8."""
        if image.shape[0] != 1:
            raise UsageError(f"encode_value takes one image (1 x 3 x H x W), got {tuple(image.shape)}")
        return self._out(self.graphs["encode_value"].run(image, masks)[0])

    def decode(self, readout: Tensor, value: Tensor, res3: Tensor, res2: Tensor) -> Tensor:
        """readout, value O x Cv x h x w; res3 1 x C3 x h x w; res2 1 x C2 x 2h x 2w -> logits O x 1 x 8h x 8w."""
        return self._out(self.graphs["decode"].run(readout, value, res3, res2)[0])


def onnxruntime_backend_from_path(model_path: str | None, device: str = "cpu",
                                  precision: str = "auto") -> OnnxRuntimeBackend:
    """ONNX Runtime on the CPU (CPU EP) or CUDA (CUDA EP) for an export folder, a checkpoint
    (exported into the cache on first use) or None (the default weights)."""
    return OnnxRuntimeBackend.from_path(model_path, device=device, precision=precision)


def onnxruntime_trt_backend_from_path(model_path: str | None, device: str = "cuda",
                                      precision: str = "auto") -> OnnxRuntimeBackend:
    """ONNX Runtime with its TensorRT execution provider (CUDA EP, then CPU, as fallbacks);
    needs a CUDA device, onnxruntime-gpu and TensorRT's libraries. fp16 unless fp32 is asked."""
    if torch.device(device).type != "cuda":
        raise UsageError("--backend onnxruntime-trt runs on CUDA only; use --device cuda, or "
                         "--backend onnxruntime on the CPU")
    return OnnxRuntimeBackend.from_path(model_path, device=device, precision=precision,
                                        providers=("tensorrt", "cuda", "cpu"))
