"""The propagation ops the runtime calls: dispatch to a fused CUDA kernel or the PyTorch reference.

For now every call goes to the reference in `mevos.kernels.reference`; the fused kernels of
`mevos.kernels.cuda` plug in here for CUDA tensors (MEVOS_FORCE_REFERENCE=1 forces the reference).
"""

from __future__ import annotations

from mevos.kernels.reference import readout, topk_affinity

__all__ = ["topk_affinity", "readout"]
