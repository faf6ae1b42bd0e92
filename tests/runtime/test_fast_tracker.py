"""The fast tracker (mevos.runtime.fast) without a GPU: its math, run eagerly in fp32 on the CPU,
against the Tracker's; its refusals. The CUDA parts (fp16, graphs, pinned uploads, the fused
kernels) run in `mevos bench` on a CUDA GPU and in the gpu-marked test below."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mevos.runtime.fast import FastOptions, FastTracker, cuda_unavailable
from mevos.data.synthetic import SyntheticConfig, generate
from mevos.errors import InputError, UsageError
from mevos.model import build_model, preset
from mevos.runtime.backend import TorchBackend
from mevos.runtime.tracker import Tracker, TrackerConfig, track


@pytest.fixture(scope="module")
def model():
    return build_model(preset("small"), seed=0)


@pytest.fixture(scope="module")
def clip():
    # 10 frames with 3 memory frames: the ring wraps and the oldest slots are overwritten.
    return generate(SyntheticConfig(height=48, width=72, num_frames=10, num_objects=2, seed=3))


def _fast_labels(fast: FastTracker, frames, first):
    """Pipelined as a real client would: frame t queued before frame t-1's labels are read."""
    return [result.labels for _, result in track(fast, frames, first)]


def test_fast_path_math_equals_the_tracker_on_cpu(model, clip):
    cfg = TrackerConfig(mem_frames=3, refine_rounds=2)
    tracker = Tracker(TorchBackend(model), cfg)
    want = [tracker.step(f, masks=clip.labels[0] if i == 0 else None).labels for i, f in enumerate(clip.frames)]
    fast = FastTracker(model, cfg, device="cpu", options=FastOptions.eager_cpu())
    got = _fast_labels(fast, clip.frames, clip.labels[0])
    assert len(got) == len(want)
    np.testing.assert_array_equal(got[0], clip.labels[0])
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.dtype == np.uint8 and g.shape == w.shape
        np.testing.assert_array_equal(g, w, err_msg=f"frame {i}")
    assert fast.used == 4 and not fast.graphs_active


def test_fast_results_are_the_trackers_frame_results_at_a_working_resolution(model, clip):
    """Same FrameResult (labels and probs) as the Tracker's, frames scaled to a short side, and a
    hand-over to a Tracker that continues the session (and can add objects)."""
    cfg = TrackerConfig(mem_frames=2, refine_rounds=1, max_short_side=32)
    backend = TorchBackend(model)
    tracker = Tracker(backend, cfg)
    fast = FastTracker(model, cfg, device="cpu", options=FastOptions.eager_cpu())
    for i, f in enumerate(clip.frames[:5]):
        masks = clip.labels[0] if i == 0 else None
        want, got = tracker.step(f, masks=masks), fast.step(f, masks=masks)
        assert got.object_ids == want.object_ids and got.index == want.index
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_allclose(got.probs, want.probs, atol=1e-5)
    handed = fast.to_tracker(backend)
    want, got = tracker.step(clip.frames[5]), handed.step(clip.frames[5])
    np.testing.assert_array_equal(got.labels, want.labels)
    new = np.where(clip.labels[6] == 1, 9, 0).astype(np.uint8)
    assert handed.step(clip.frames[6], masks=new).object_ids == (1, 2, 9)


def test_profile_charges_every_stage(model, clip):
    fast = FastTracker(model, TrackerConfig(mem_frames=2), device="cpu", options=FastOptions.eager_cpu())
    fast.step(clip.frames[0], masks=clip.labels[0])
    prof = fast.step(clip.frames[1], profile=True).stages
    assert set(prof) == {"upload", "encode_key", "affinity_topk", "readout", "refine", "memory_write", "postprocess"}
    assert all(v >= 0 for v in prof.values())


def test_fast_path_refusals(model, clip):
    if cuda_unavailable():
        with pytest.raises(UsageError, match="needs a CUDA GPU"):
            FastTracker(model)  # the default options need CUDA
        with pytest.raises(UsageError, match="needs a CUDA GPU"):
            FastTracker(model, device="cpu", options=FastOptions(fp16=False, cuda_graphs=False, channels_last=False))
    fast = FastTracker(model, device="cpu", options=FastOptions.eager_cpu())
    with pytest.raises(InputError, match="needs a mask"):
        fast.step(clip.frames[0])
    with pytest.raises(InputError, match="no object"):
        fast.step(clip.frames[0], masks=np.zeros(clip.labels[0].shape, np.uint8))
    fast.step(clip.frames[0], masks=clip.labels[0])
    with pytest.raises(UsageError, match="first frame only"):
        fast.step(clip.frames[1], masks=clip.labels[1])
    with pytest.raises(UsageError, match="first frame only"):
        fast.step(clip.frames[1], remove=[1])
    with pytest.raises(InputError, match="differs"):
        fast.step(clip.frames[1][:32])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fast_path_on_cuda_agrees_with_the_fp32_tracker(model, clip):
    cfg = TrackerConfig(mem_frames=3, refine_rounds=2)
    tracker = Tracker(TorchBackend(model, device="cuda", precision="fp32"), cfg)
    want = np.stack([tracker.step(f, masks=clip.labels[0] if i == 0 else None).labels
                     for i, f in enumerate(clip.frames)])
    fast = FastTracker(model, cfg, device="cuda")
    got = np.stack(_fast_labels(fast, clip.frames, clip.labels[0]))
    assert fast.graphs_active, fast.graph_error
    assert (got == want).mean() > 0.98  # fp16 moves a few boundary pixels


def test_fast_measurements_run_eagerly_on_cpu(model, clip, tmp_path):
    """The fast path's benchmark code end to end on the CPU (eager fp32): throughput, profile,
    and the J&F check against the fp32 dense baseline on a DAVIS-layout folder."""
    from mevos.bench.fastbench import jf_parity, profile_fast, run_fast
    from mevos.data.synthetic import write_synthetic

    cfg = TrackerConfig(mem_frames=2, refine_rounds=1)
    cpu, opts = torch.device("cpu"), FastOptions.eager_cpu()
    r = run_fast(model, cfg, clip.frames, clip.labels[0], 4, cpu, opts)
    assert r["frames_timed"] == 6 and r["fps"] > 0 and r["cuda_graphs"] is False
    p = profile_fast(model, cfg, clip.frames, clip.labels[0], 4, 3, cpu, opts)
    assert p["stages_ms"]["refine"]["n"] == 3 and p["host_syncs_per_frame"] is None
    from mevos.kernels import cpu as cpu_op

    assert p["affinity_path"] == ("compiled CPU operator" if cpu_op.available() else f"chunked reference ({cpu_op.reason()})")
    write_synthetic(clip, tmp_path / "davis", resolution="480p")
    jf = jf_parity(model, cfg, tmp_path / "davis", (), cpu, opts)
    assert jf["sequences"] == [clip.name] and 0 <= jf["jf_reference"] <= 1
    # Same math and the dense top-k selects what the chunked one does: the same masks.
    assert jf["jf_delta"] == 0.0 and jf["within_tolerance"] and jf["pixel_agreement"] == 1.0
