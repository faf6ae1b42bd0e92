"""Propagation ops: top-k affinity over the memory and readout.

`mevos.kernels.ops` is the entry point (fused CUDA kernels for CUDA tensors, else the PyTorch
reference); `reference` is the oracle; `fused` and `nvrtc` hold the CUDA path, which imports
cuda-python only when a CUDA tensor reaches it. See README.md beside this file.
"""

from mevos.kernels.ops import readout, topk_affinity

__all__ = ["topk_affinity", "readout"]
