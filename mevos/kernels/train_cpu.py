"""Training-time batch norm (+ ReLU) and max pooling on the CPU, from a small compiled library.

On a 2-core CPU a training step of the `cpu` preset spent about a third of its time in the key
encoder's stem at 1/2 resolution: torch's batch norm backward over channels-last bfloat16, the
ReLU's separate passes and max_pool2d with int64 indices, each a few memory passes over a
B x 24 x S/2 x S/2 tensor. `csrc/train_cpu.cpp` does each layer in one or two passes:

- `batch_norm_relu(x, bn)`: batch norm with the batch's statistics (training mode) and a ReLU
  after it, in one autograd node. Same values as `F.relu(bn(x))` to float rounding; the module's
  running statistics are updated as torch does (unbiased variance, its momentum).
- `max_pool(x, pool)`: max_pool2d with the winner's place in its window kept in one byte.
  Same values and gradients as `pool(x)` (first maximum wins, NaN wins over numbers).

Both take the fast path only where it applies (CPU, float32 or bfloat16, channels-last
contiguous, the module in training mode with gradients on, not traced or exported); anywhere else,
or when the library cannot be built (no compiler: one RuntimeWarning), they run torch's own
layers. The library is built like the CPU affinity (`mevos.kernels.cpu`): with the system C++
compiler on first use, into the cache.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mevos.kernels import cpu

__all__ = ["normalized_input", "batch_norm_relu", "max_pool", "available", "reason"]

SOURCE = Path(__file__).with_name("csrc") / "train_cpu.cpp"
_ABI = 4
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
_warned: set[str] = set()


@functools.cache
def _load(compiler: str | None) -> tuple[ctypes.CDLL | None, str | None]:
    lib, why, _ = cpu._open(compiler, SOURCE, "mevos_train_abi_version", _ABI)
    if lib is None:
        return None, why
    i64, ptr, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.mevos_bn_forward.argtypes = [ptr, ptr, ptr, i32, i64, i64, ptr, ptr, ctypes.c_double, i32, i64, ptr, ptr, ptr]
    lib.mevos_bn_backward.argtypes = [ptr, ptr, ptr, ptr, ptr, i32, i64, i64, ptr, ptr, ptr, i32, i64, ptr, ptr]
    lib.mevos_pool_forward.argtypes = [ptr, ptr, ptr, i32, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64]
    lib.mevos_pool_backward.argtypes = [ptr, ptr, ptr, i32, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64]
    lib.mevos_normalize_input.argtypes = [ptr, i64, ptr, ptr, i32, i64, i64, i64, ptr, ptr, i64]
    for f in (lib.mevos_normalize_input, lib.mevos_bn_forward, lib.mevos_bn_backward, lib.mevos_pool_forward,
              lib.mevos_pool_backward):
        f.restype = ctypes.c_int
    return lib, None


def available() -> bool:
    """Whether the compiled layers can run in this process (builds them on first call)."""
    return _load(cpu._compiler())[0] is not None


def reason() -> str | None:
    """Why the compiled layers are unavailable; None when they are available."""
    return _load(cpu._compiler())[1]


def _library() -> ctypes.CDLL | None:
    lib, why = _load(cpu._compiler())
    if lib is None:
        cpu._warn_once(_warned, f"compiled CPU training layers unavailable: {why}; using torch's batch norm and "
                                "max pool", stacklevel=4)
    return lib


def _channels_last(x: Tensor) -> bool:
    """x is N x C x H x W laid out as a contiguous N*H*W x C matrix."""
    n, c, h, w = x.shape
    return x.stride() == (h * w * c, 1, w * c, c)


def _training_on_cpu(x: Tensor, module: nn.Module) -> bool:
    return (module.training and torch.is_grad_enabled() and x.device.type == "cpu" and x.dim() == 4
            and x.dtype in _DTYPES and x.numel() > 0
            and not torch.jit.is_tracing() and not torch.jit.is_scripting() and not torch.onnx.is_in_onnx_export()
            and not torch.compiler.is_compiling() and not torch.compiler.is_exporting())


def _applies(x: Tensor, module: nn.Module) -> bool:
    return _training_on_cpu(x, module) and _channels_last(x)


def _ptr(t: Tensor) -> int:
    return t.data_ptr()


def normalized_input(image: Tensor, mean: Tensor, std: Tensor, masks: Tensor | None, module: nn.Module) -> Tensor:
    """A backbone's input: `(image - mean) / std`, with the masks concatenated as one more channel
    when given. image: 1 x 3 x H x W (used for every mask) or N x 3 x H x W float32; mean, std: 3
    values; masks: N x 1 x H x W or None -> N x (3 or 4) x H x W.

    When `module` trains on the CPU: one compiled pass that writes the result channels-last (the
    layout the convolutions run in) and, under bfloat16 autocast, in bfloat16 (the same rounding as
    the first convolution's cast); the values are those of torch's sub and div. Elsewhere torch's
    ops, in the input's layout."""
    n = image.shape[0] if masks is None else masks.shape[0]
    fast = (_training_on_cpu(image, module) and image.dtype == torch.float32 and image.shape[1] == 3
            and image.shape[0] in (1, n) and not image.requires_grad
            and (masks is None or (masks.dtype == torch.float32 and masks.shape[1] == 1
                                   and masks.shape[2:] == image.shape[2:] and not masks.requires_grad)))
    lib = _library() if fast else None
    if lib is None:
        x = (image - mean) / std
        return x if masks is None else torch.cat([x.expand(n, -1, -1, -1), masks], dim=1)
    _, _, h, w = image.shape
    image = image if image.stride()[1:] == (h * w, w, 1) else image.contiguous()
    masks = None if masks is None else masks.contiguous()
    dtype = torch.float32
    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16:
        dtype = torch.bfloat16
    out = torch.empty((n, 3 if masks is None else 4, h, w), dtype=dtype, memory_format=torch.channels_last)
    mean32, std32 = mean.detach().float().flatten().contiguous(), std.detach().float().flatten().contiguous()
    stride = 0 if image.shape[0] == 1 and n > 1 else image.stride(0)
    rc = lib.mevos_normalize_input(_ptr(image), stride, None if masks is None else _ptr(masks), _ptr(out),
                                   _DTYPES[dtype], n, h, w, _ptr(mean32), _ptr(std32), torch.get_num_threads())
    if rc:
        raise RuntimeError(f"mevos_normalize_input failed ({rc})")
    return out


def _as_channels_last(g: Tensor, dtype: torch.dtype) -> Tensor:
    """An incoming gradient as a channels-last tensor of dtype."""
    g = g.to(dtype).contiguous(memory_format=torch.channels_last)
    if not _channels_last(g):  # a size-1 dimension can leave other strides
        g = g.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    return g


class _BatchNormReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, residual: Tensor | None,  # noqa: ANN001, ANN205
                eps: float, relu: bool, lib: ctypes.CDLL):
        n, c, h, w = x.shape
        m = n * h * w
        y = torch.empty_like(x)  # channels-last like x
        stats = torch.empty((3, c), dtype=torch.float32)
        weight32 = weight.detach().float().contiguous()
        bias32 = bias.detach().float().contiguous()
        rc = lib.mevos_bn_forward(_ptr(x), None if residual is None else _ptr(residual), _ptr(y), _DTYPES[x.dtype],
                                  m, c, _ptr(weight32), _ptr(bias32), eps, int(relu), torch.get_num_threads(),
                                  _ptr(stats[0]), _ptr(stats[1]), _ptr(stats[2]))
        if rc:
            raise RuntimeError(f"mevos_bn_forward failed ({rc})")
        ctx.save_for_backward(x, y, stats, weight32)
        ctx.meta = (relu, lib, weight.dtype, bias.dtype, residual is not None)
        ctx.mark_non_differentiable(stats)
        return y, stats

    @staticmethod
    def backward(ctx, gy: Tensor, _gstats: Tensor):  # noqa: ANN001, ANN205
        x, y, stats, weight32 = ctx.saved_tensors
        relu, lib, w_dtype, b_dtype, with_residual = ctx.meta
        n, c, h, w = x.shape
        gy = _as_channels_last(gy, x.dtype)
        dx = torch.empty_like(x)
        dres = torch.empty_like(x) if with_residual and ctx.needs_input_grad[3] else None
        grads = torch.empty((2, c), dtype=torch.float32)
        rc = lib.mevos_bn_backward(_ptr(gy), _ptr(x), _ptr(y), _ptr(dx), None if dres is None else _ptr(dres),
                                   _DTYPES[x.dtype], n * h * w, c, _ptr(stats[0]), _ptr(stats[1]), _ptr(weight32),
                                   int(relu), torch.get_num_threads(), _ptr(grads[0]), _ptr(grads[1]))
        if rc:
            raise RuntimeError(f"mevos_bn_backward failed ({rc})")
        return dx, grads[0].to(w_dtype), grads[1].to(b_dtype), dres, None, None, None


def batch_norm_relu(x: Tensor, bn: nn.BatchNorm2d, relu: bool = True, residual: Tensor | None = None) -> Tensor:
    """`F.relu(bn(x) + residual)`, without the ReLU when relu=False and without the sum when
    residual is None. x, residual: N x C x H x W -> N x C x H x W.

    In training mode on the CPU over a channels-last float32/bfloat16 x (and a residual of the
    same dtype and layout): one compiled forward and backward with the batch's statistics, and
    bn's running statistics updated as torch does. Elsewhere (eval mode, no grad, other devices or
    layouts, no compiler): torch's layers."""
    fast = (_applies(x, bn) and bn.track_running_stats and bn.affine and bn.running_mean is not None
            and bn.running_var is not None and x.shape[0] * x.shape[2] * x.shape[3] > 1
            and (residual is None or (residual.shape == x.shape and residual.dtype == x.dtype
                                      and residual.device == x.device and _channels_last(residual))))
    lib = _library() if fast else None
    if lib is None:
        out = bn(x)
        if residual is not None:
            out = out + residual
        return F.relu(out, inplace=True) if relu else out
    y, stats = _BatchNormReLU.apply(x, bn.weight, bn.bias, residual, bn.eps, relu, lib)
    with torch.no_grad():
        m = x.shape[0] * x.shape[2] * x.shape[3]
        running_mean, running_var, tracked = bn.running_mean, bn.running_var, bn.num_batches_tracked
        assert running_mean is not None and running_var is not None and tracked is not None  # `fast` checked them
        tracked.add_(1)
        momentum = bn.momentum if bn.momentum is not None else 1.0 / float(tracked)
        running_mean.mul_(1 - momentum).add_(stats[0].to(running_mean.dtype), alpha=momentum)
        unbiased = stats[2] * (m / (m - 1))
        running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
    return y


class _MaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, k: int, s: int, p: int, lib: ctypes.CDLL):  # noqa: ANN001, ANN205
        n, c, h, w = x.shape
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        y = torch.empty((n, c, oh, ow), dtype=x.dtype, memory_format=torch.channels_last)
        idx = torch.empty((n, oh, ow, c), dtype=torch.uint8)
        rc = lib.mevos_pool_forward(_ptr(x), _ptr(y), _ptr(idx), _DTYPES[x.dtype], n, h, w, c, oh, ow, k, s, p,
                                    torch.get_num_threads())
        if rc:
            raise RuntimeError(f"mevos_pool_forward failed ({rc})")
        ctx.save_for_backward(idx)
        ctx.meta = (x.shape, x.dtype, k, s, p, lib)
        ctx.mark_non_differentiable(idx)
        return y

    @staticmethod
    def backward(ctx, gy: Tensor):  # noqa: ANN001, ANN205
        (idx,) = ctx.saved_tensors
        (n, c, h, w), dtype, k, s, p, lib = ctx.meta
        oh, ow = idx.shape[1:3]
        gy = _as_channels_last(gy, dtype)
        dx = torch.empty((n, c, h, w), dtype=dtype, memory_format=torch.channels_last)
        rc = lib.mevos_pool_backward(_ptr(gy), _ptr(idx), _ptr(dx), _DTYPES[dtype], n, h, w, c, oh, ow, k, s, p,
                                     torch.get_num_threads())
        if rc:
            raise RuntimeError(f"mevos_pool_backward failed ({rc})")
        return dx, None, None, None, None


def _square(v: int | tuple[int, ...]) -> int | None:
    if isinstance(v, int):
        return v
    return v[0] if len(set(v)) == 1 else None


def max_pool(x: Tensor, pool: nn.MaxPool2d) -> Tensor:
    """`pool(x)`. x: N x C x H x W -> N x C x H' x W'. In training mode with gradients on, on the
    CPU over a channels-last float32/bfloat16 x, through the compiled layer (square windows,
    no dilation, no ceil mode); elsewhere torch's."""
    k, s, p = _square(pool.kernel_size), _square(pool.stride if pool.stride is not None else pool.kernel_size), \
        _square(pool.padding)
    fast = (_applies(x, pool) and k is not None and s is not None and p is not None and _square(pool.dilation) == 1
            and not pool.ceil_mode and not pool.return_indices and 1 <= k <= 16 and 0 <= 2 * p <= k and s >= 1
            and x.shape[2] + 2 * p >= k and x.shape[3] + 2 * p >= k)
    lib = _library() if fast else None
    if lib is None:
        return pool(x)
    return _MaxPool.apply(x, k, s, p, lib)


if __name__ == "__main__":  # `python -m mevos.kernels.train_cpu`: build now (make install does), say what happened
    if available():
        print("mevos CPU training layers: built")
    else:
        print(f"mevos CPU training layers unavailable, torch's layers will run: {reason()}")
