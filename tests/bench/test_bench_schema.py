"""`mevos bench` on a tiny configuration: the files it writes and the schema of its JSON.
Never asserts on speed (the figures depend on the machine and its load)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mevos.bench import schema
from mevos.bench.measure import HostPeak, summarize
from mevos.bench.plan import parse_resolution, tiny_plan
from mevos.bench.runner import add_ratios
from mevos.cli import main
from mevos.errors import MevosError, UsageError


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run through the real CLI (with a gRPC round when grpcio is installed)."""
    out = tmp_path_factory.mktemp("bench")
    code = main(["bench", "--plan", "tiny", "--device", "cpu", "--out", str(out), "--tag", "test"])
    assert code == 0
    return out, json.loads((out / "bench_test.json").read_text())


def test_writes_json_plots_and_summary(tiny_run):
    out, doc = tiny_run
    for name in ("bench_test.json", "bench_test_stages.png", "bench_test_fps.png", "SUMMARY.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "bench_test_stages.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "SUMMARY.md").read_text()
    assert "bench_test.json" in summary and "| baseline |" in summary
    assert "GPU figures are pending a GPU machine" in summary
    assert doc["files"] == {"json": "bench_test.json", "plots": ["bench_test_stages.png", "bench_test_fps.png"],
                            "summary": "SUMMARY.md"}


def test_json_matches_the_schema(tiny_run):
    _, doc = tiny_run
    assert schema.problems(doc) == []
    assert doc["schema"] == schema.SCHEMA and doc["mode"] == "tiny"
    assert doc["device"]["type"] == "cpu" and doc["device"]["capability"] is None
    assert doc["versions"]["torch"] == torch.__version__
    assert doc["command"] == ["mevos", "bench", "--plan", "tiny", "--device", "cpu", "--out", doc["command"][7],
                              "--tag", "test"]
    assert doc["settings"]["resolutions"] == ["64x48"] and doc["settings"]["device"] == "cpu"
    assert doc["methods"]["host_memory"] and doc["methods"]["device_memory"]


def test_results_cover_the_tiny_grid(tiny_run):
    _, doc = tiny_run
    res = doc["results"]
    stages = {r["variant"]: r for r in res["stages"]}
    assert set(stages) == {"baseline", "torch"}
    assert stages["baseline"]["affinity_path"] == "dense reference"
    from mevos.kernels import cpu as cpu_op

    assert stages["torch"]["affinity_path"] == ("compiled CPU operator" if cpu_op.available() else f"chunked reference ({cpu_op.reason()})")
    assert stages["baseline"]["speedup_vs_baseline"] == pytest.approx(1.0)
    for r in res["stages"]:
        assert list(r["stages_ms"]) == ["preprocess", "encode_key", "affinity_topk", "readout",
                                        "refine_encode_value", "refine_decode", "memory_write", "postprocess"]
        assert r["frame_ms"] == pytest.approx(sum(v["median"] for v in r["stages_ms"].values()))
        assert all(v["n"] == 1 and v["median"] >= 0 for v in r["stages_ms"].values())
        assert r["peak_host_mb"] > 0 and r["peak_device_mb"] is None
    e2e = {r["variant"]: r for r in res["end_to_end"]}
    assert set(e2e) == {"baseline", "torch"}
    for r in e2e.values():
        assert r["frames_timed"] == 2 and r["frames_warmup"] == 4 and r["fps"] > 0
    assert res["fast_path"]["status"] == "skipped" and res["fast_path"]["reason"].startswith("needs a GPU")


def test_serving_round_or_reason(tiny_run):
    _, doc = tiny_run
    srv = doc["results"]["serving"]
    try:
        import grpc  # noqa: F401
    except ImportError:
        assert srv["status"] == "skipped" and "grpc" in srv["reason"]
        return
    assert srv["status"] == "ok"
    assert srv["rounds"] == 2 and srv["frames_timed"] == 2
    assert srv["lockstep"]["latency_ms"]["n"] == 4 and srv["lockstep"]["fps"] > 0
    assert srv["in_process"]["ms_per_frame"]["n"] == 4
    assert set(srv["lockstep"]["server_ms"]) >= {"decode", "track", "encode", "total"}
    assert math.isfinite(srv["overhead_ms_per_frame"]) and srv["added_ms_per_frame"] > 0
    added = srv["lockstep"]["added_ms"]
    assert added["total"]["n"] == 4 and added["in_server"]["median"] >= 0


def test_schema_names_what_is_wrong(tiny_run):
    _, doc = tiny_run
    bad = json.loads(json.dumps(doc))
    del bad["machine"]["cpu_model"]
    bad["results"]["stages"][0]["frame_ms"] = "fast"
    bad["results"]["fast_path"] = {"status": "skipped"}
    found = schema.problems(bad)
    assert "$.machine.cpu_model: missing" in found
    assert any(p.startswith("$.results.stages[0].frame_ms: expected") for p in found)
    assert "$.results.fast_path.reason: a skipped section needs a reason" in found
    with pytest.raises(MevosError, match="cpu_model"):
        schema.check(bad)
    assert schema.problems([]) == ["$: expected an object, got list"]


def test_ratios_divide_by_the_baseline_of_the_same_configuration():
    cfg = dict(preset="small", resolution="240p", objects=1, refine_rounds=2)
    st = {"median": 1.0}
    results = {"stages": [
        {**cfg, "mem_frames": 5, "variant": "baseline", "frame_ms": 40.0, "stages_ms": {"a": {"median": 30.0}}},
        {**cfg, "mem_frames": 5, "variant": "torch", "frame_ms": 10.0, "stages_ms": {"a": {"median": 10.0}}},
        {**cfg, "mem_frames": 20, "variant": "torch", "frame_ms": 10.0, "stages_ms": {"a": st}},
    ], "end_to_end": [
        {**cfg, "mem_frames": 5, "variant": "baseline", "fps": 2.0},
        {**cfg, "mem_frames": 5, "variant": "onnxruntime", "fps": 5.0},
    ]}
    add_ratios(results)
    assert results["stages"][1]["speedup_vs_baseline"] == 4.0
    assert results["stages"][1]["stage_speedup_vs_baseline"] == {"a": 3.0}
    assert results["stages"][2]["speedup_vs_baseline"] is None  # no baseline at 20 memory frames
    assert results["end_to_end"][1]["speedup_vs_baseline"] == 2.5


def test_measure_helpers():
    s = summarize([3.0, 1.0, 2.0])
    assert s == {"median": 2.0, "mean": 2.0, "p90": 3.0, "min": 1.0, "max": 3.0, "n": 3}
    assert summarize([])["n"] == 0
    with HostPeak() as h:
        block = bytearray(64 * 2**20)
        block[::4096] = b"x" * len(block[::4096])
    assert h.peak_mb is not None and h.peak_mb >= 64 and h.method
    assert parse_resolution("480p") == (480, 854) and parse_resolution("64x48") == (48, 64)
    with pytest.raises(UsageError):
        parse_resolution("huge")
    with pytest.raises(UsageError):
        tiny_plan().replace(variants=("nope",))


def test_iterations_stop_at_the_budget():
    import time

    from mevos.bench.measure import Iterations

    assert list(Iterations(2, 3)) == [False, False, True, True, True]
    assert list(Iterations(0, 1, budget_s=0.0)) == [True]
    seen = []
    for record in Iterations(3, 10, budget_s=0.02):
        seen.append(record)
        time.sleep(0.015)
    # one warm-up pass is enough once half the budget is gone; two timed ones once all of it is
    assert seen == [False, True, True]


def test_default_plan_refuses_the_cpu(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the default plan runs here")
    assert main(["bench", "--out", str(tmp_path)]) == 2
    assert "use --quick" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
