"""The compiled CPU training layers (mevos.kernels.train_cpu) against float64 arithmetic and torch's
own layers; where they must not apply (eval mode, no grad, NCHW), torch's layers run unchanged; with
no compiler they warn once and run torch's layers."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mevos.kernels import cpu, train_cpu

_BOGUS = "/nonexistent/mevos-test-c++"


@pytest.fixture(autouse=True)
def compiled(monkeypatch):
    monkeypatch.delenv("MEVOS_CXX", raising=False)
    if cpu._compiler() is None:
        pytest.skip("no C++ compiler on this machine: only torch's layers run")
    assert train_cpu.available(), train_cpu.reason()


pytestmark = pytest.mark.usefixtures("two_torch_threads")  # tests/kernels/conftest.py


def _cl(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def _bn(c: int, seed: int = 0) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.bias.copy_(torch.rand(c, generator=g) - 0.5)
        bn.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return bn.train()


def _float64_bn_relu(x, weight, bias, residual, relu, eps):
    """relu(bn(x) + residual) in float64 over N x C x H x W, with the batch's statistics."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
    if residual is not None:
        y = y + residual
    return torch.relu(y) if relu else y


@pytest.mark.parametrize("shape", [(4, 24, 16, 16), (2, 5, 7, 9), (1, 37, 3, 1), (3, 128, 8, 8)])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("with_residual", [False, True])
def test_batch_norm_relu_matches_float64_float32(shape, relu, with_residual):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.7
    r0 = torch.randn(shape, generator=g, dtype=torch.float64) if with_residual else None
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    bn = _bn(shape[1])
    running = (bn.running_mean.clone(), bn.running_var.clone())

    x = _cl(x0.float()).requires_grad_()
    r = _cl(r0.float()).requires_grad_() if r0 is not None else None
    y = train_cpu.batch_norm_relu(x, bn, relu=relu, residual=r)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
    y.backward(_cl(grad.float()))

    x64 = x0.clone().requires_grad_()
    r64 = r0.clone().requires_grad_() if r0 is not None else None
    w64, b64 = bn.weight.detach().double().requires_grad_(), bn.bias.detach().double().requires_grad_()
    want = _float64_bn_relu(x64, w64, b64, r64, relu, bn.eps)
    want.backward(grad)

    torch.testing.assert_close(y.double(), want, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(bn.weight.grad.double(), w64.grad, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(bn.bias.grad.double(), b64.grad, atol=1e-3, rtol=1e-4)
    if r is not None:
        torch.testing.assert_close(r.grad.double(), r64.grad, atol=1e-6, rtol=0)
    # running statistics as torch updates them: momentum 0.1, the unbiased variance
    m = shape[0] * shape[2] * shape[3]
    mean = x0.mean(dim=(0, 2, 3))
    var = x0.var(dim=(0, 2, 3), unbiased=False) * m / (m - 1)
    torch.testing.assert_close(bn.running_mean.double(), 0.9 * running[0].double() + 0.1 * mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(bn.running_var.double(), 0.9 * running[1].double() + 0.1 * var, atol=1e-5, rtol=1e-6)
    assert int(bn.num_batches_tracked) == 1


def test_batch_norm_relu_bfloat16_is_torch_to_bfloat16_rounding():
    g = torch.Generator().manual_seed(2)
    shape = (4, 24, 32, 32)
    x0 = torch.randn(shape, generator=g) * 3 - 1
    grad = torch.randn(shape, generator=g)
    bn, ref = _bn(24), _bn(24)
    x = _cl(x0.bfloat16()).requires_grad_()
    y = train_cpu.batch_norm_relu(x, bn)
    assert y.dtype == torch.bfloat16
    y.backward(_cl(grad.bfloat16()))
    # float64 on the same bfloat16 inputs, then rounded as bfloat16 outputs are
    x64 = x0.bfloat16().double().requires_grad_()
    w64, b64 = ref.weight.detach().double().requires_grad_(), ref.bias.detach().double().requires_grad_()
    want = _float64_bn_relu(x64, w64, b64, None, True, bn.eps)
    want.backward(grad.bfloat16().double())
    torch.testing.assert_close(y.double(), want, atol=0.02, rtol=0.01)  # bfloat16: 8-bit mantissa
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=0.02, rtol=0.01)
    torch.testing.assert_close(bn.weight.grad.double(), w64.grad, atol=0.05, rtol=1e-3)
    torch.testing.assert_close(bn.bias.grad.double(), b64.grad, atol=0.05, rtol=1e-3)
    # and close to torch's own bfloat16 layers
    x_t = _cl(x0.bfloat16()).requires_grad_()
    y_t = F.relu(ref(x_t))
    torch.testing.assert_close(y.float(), y_t.float(), atol=0.05, rtol=0.02)


def test_relu_keeps_nan_as_torch_does():
    x = _cl(torch.randn(2, 8, 4, 4))
    x[0, 3, 1, 1] = float("nan")
    y = train_cpu.batch_norm_relu(x.requires_grad_(), _bn(8))
    assert torch.isnan(y[:, 3]).all()  # the channel's statistics are NaN
    assert not torch.isnan(y[:, :3]).any() and not torch.isnan(y[:, 4:]).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,k,s,p", [((3, 24, 16, 16), 3, 2, 1), ((2, 5, 9, 7), 3, 2, 1), ((2, 16, 8, 8), 2, 2, 0),
                                         ((1, 40, 5, 6), 3, 1, 1), ((2, 8, 3, 3), 3, 2, 1)])
def test_max_pool_equals_torch_values_and_gradients(dtype, shape, k, s, p):
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(shape, generator=g)
    x0 = torch.where(x0 > 0.3, x0, torch.zeros(())).to(dtype)  # ties at 0, as after a ReLU
    x0[0, 0, 0, 0] = float("-inf")
    x0[-1, -1, -1, -1] = float("nan")
    pool = nn.MaxPool2d(k, s, p).train()
    x = _cl(x0).requires_grad_()
    y = train_cpu.max_pool(x, pool)
    x_t = x0.clone().requires_grad_()
    y_t = pool(x_t)
    torch.testing.assert_close(y, y_t, atol=0, rtol=0, equal_nan=True)
    gy = torch.randn(y.shape, generator=g).to(dtype)
    y.backward(_cl(gy))
    y_t.backward(gy)
    # the gradient goes to the same window place (first maximum, NaN first), summed in float32
    torch.testing.assert_close(x.grad.float(), x_t.grad.float(), atol=0 if dtype == torch.float32 else 0.02, rtol=0.01)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("with_masks", [False, True])
def test_normalized_input_equals_torch_sub_div_and_cast(autocast, with_masks):
    g = torch.Generator().manual_seed(4)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    owner = nn.Identity().train()
    image = torch.rand(1 if with_masks else 3, 3, 20, 24, generator=g)
    masks = (torch.rand(3, 1, 20, 24, generator=g) > 0.5).float() if with_masks else None
    want = (image - mean) / std
    if masks is not None:
        want = torch.cat([want.expand(3, -1, -1, -1), masks], dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        got = train_cpu.normalized_input(image, mean, std, masks, owner)
    assert got.is_contiguous(memory_format=torch.channels_last)
    if autocast:  # the first convolution would cast to bfloat16: the same rounding, done here
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, want.bfloat16())
    else:
        assert got.dtype == torch.float32 and torch.equal(got, want)


def test_outside_training_the_layers_are_torchs():
    x = _cl(torch.randn(2, 8, 6, 6))
    bn, pool, owner = _bn(8).eval(), nn.MaxPool2d(3, 2, 1), nn.Identity().eval()
    assert torch.equal(train_cpu.batch_norm_relu(x, bn), F.relu(bn(x)))
    assert torch.equal(train_cpu.max_pool(x, pool.eval()), pool(x))
    bn.train()
    with torch.no_grad():  # no gradient: torch's layers (and their running-statistics update)
        ref = copy.deepcopy(bn)
        assert torch.equal(train_cpu.batch_norm_relu(x, bn), F.relu(ref(x)))
        assert torch.equal(bn.running_mean, ref.running_mean)
    mean, std = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    image = torch.rand(2, 3, 4, 4) + 1
    got = train_cpu.normalized_input(image, mean, std, None, owner)
    assert torch.equal(got, image - 0) and got.is_contiguous()  # torch's ops, the input's layout


def test_without_a_compiler_torchs_layers_run_after_one_warning(monkeypatch):
    monkeypatch.setattr(train_cpu, "_warned", set())
    monkeypatch.setenv("MEVOS_CXX", _BOGUS)
    assert not train_cpu.available() and _BOGUS in train_cpu.reason()
    x = _cl(torch.randn(2, 8, 6, 6)).requires_grad_()
    bn, ref = _bn(8), _bn(8)
    with pytest.warns(RuntimeWarning, match="compiled CPU training layers unavailable.*mevos-test-c"):
        y = train_cpu.batch_norm_relu(x, bn)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pooled = train_cpu.max_pool(y, nn.MaxPool2d(3, 2, 1))
    assert torch.equal(y, F.relu(ref(x)))
    assert pooled.shape == (2, 8, 3, 3)


def test_a_resnet_trains_the_same_with_and_without_the_compiled_layers(monkeypatch):
    """One training step of the `small` key encoder under bf16 autocast, channels-last as the
    trainer runs it: the loss, every gradient and the running statistics agree with torch's layers."""
    from mevos.model import build_model
    from mevos.model.config import PRESETS

    model = build_model(PRESETS["small"]).train().to(memory_format=torch.channels_last)
    twin = copy.deepcopy(model)
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(5))

    weights = [torch.randn(s, generator=torch.Generator().manual_seed(6)) for s in ((4, 64, 8, 8), (4, 48, 8, 8), (4, 24, 16, 16))]

    def step(m):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = m.encode_key(images)
        loss = sum((o.float() * w).mean() for o, w in zip(outputs, weights))
        loss.backward()
        return loss

    loss = step(model)
    monkeypatch.setattr(train_cpu, "_library", lambda: None)
    loss_t = step(twin)
    torch.testing.assert_close(loss, loss_t, atol=0.02, rtol=0.01)
    grads = [(n, p.grad, p_t.grad) for (n, p), p_t in zip(model.key_encoder.named_parameters(), twin.key_encoder.parameters())]
    assert all((g is None) == (g_t is None) for _, g, g_t in grads)
    grads = [(n, g.flatten(), g_t.flatten()) for n, g, g_t in grads if g is not None]
    everything = torch.cat([g for _, g, _ in grads]), torch.cat([g_t for _, _, g_t in grads])
    assert F.cosine_similarity(*everything, dim=0) > 0.999
    largest = max(float(g_t.norm()) for _, _, g_t in grads)
    for name, g, g_t in grads:  # bf16 arithmetic either way: the same direction, per tensor
        if g_t.norm() > 1e-3 * largest:
            assert F.cosine_similarity(g, g_t, dim=0) > 0.99, name
    for (name, b), b_t in zip(model.key_encoder.named_buffers(), twin.key_encoder.buffers()):
        torch.testing.assert_close(b.float(), b_t.float(), atol=2e-3, rtol=2e-3, msg=name)
