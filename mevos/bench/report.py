"""Files a benchmark run leaves: the JSON document, two PNG plots, and SUMMARY.md (the tables of
every bench_*.json in the folder, the one the README links)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mevos.atomic import write_text_atomic
from mevos.bench import schema
from mevos.bench.plan import parse_resolution

#: Stage order in plots and tables (tracker stages and the fast path's coarser ones).
STAGE_ORDER = ("upload", "preprocess", "encode_key", "affinity_topk", "readout", "refine_encode_value", "refine_decode",
               "refine", "memory_write", "postprocess")
SUMMARY = "SUMMARY.md"


def _clean(x: Any) -> Any:
    """NaN and inf are not JSON: null instead."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_json(doc: dict[str, Any], path: Path) -> Path:
    """Check the document against the schema, then write it atomically."""
    doc = _clean(doc)
    schema.check(doc)
    return write_text_atomic(path, json.dumps(doc, indent=1) + "\n")


# -- plots ---------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(doc: dict[str, Any]) -> str:
    d = doc["device"]
    return f"mevos bench {doc['mode']} on {d['name']}" + (f" (sm {d['capability']})" if d.get("capability") else "")


def plot_stages(doc: dict[str, Any], path: Path) -> Path | None:
    """Stacked horizontal bars of the per-stage medians, one bar per variant and configuration,
    one panel per resolution."""
    rows = doc["results"]["stages"]
    if not rows:
        return None
    plt = _pyplot()
    resolutions = sorted({r["resolution"] for r in rows}, key=lambda s: math.prod(parse_resolution(s)))
    panels = [[r for r in rows if r["resolution"] == res] for res in resolutions]
    heights = [max(2.0, 0.32 * len(p) + 1.2) for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    colors = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(STAGE_ORDER)}
    used: set[str] = set()
    for ax, res, panel in zip(axes[:, 0], resolutions, panels, strict=True):
        labels = []
        for y, r in enumerate(panel):
            left = 0.0
            for s in STAGE_ORDER:
                if s in r["stages_ms"]:
                    v = float(r["stages_ms"][s]["median"])
                    ax.barh(y, v, left=left, color=colors[s], label=s if s not in used else None)
                    used.add(s)
                    left += v
            ax.text(left, y, f" {left:.1f} ms", va="center", fontsize=7)
            labels.append(f"{r['variant']} {r['preset']} O={r['objects']} T={r['mem_frames']}")
        ax.set_yticks(range(len(panel)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{res}: per-stage latency (median ms per frame, R={panel[0]['refine_rounds']})", fontsize=9)
        ax.set_xlabel("ms")
        ax.set_xlim(0, max(sum(float(v["median"]) for v in r["stages_ms"].values()) for r in panel) * 1.18)
    fig.legend(loc="upper right", fontsize=7, ncol=3)
    fig.suptitle(_title(doc), fontsize=10, x=0.3)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_fps(doc: dict[str, Any], path: Path) -> Path | None:
    """FPS against resolution per variant (solid: measured end to end with the Tracker; dashed:
    1000 / sum of stage medians), one panel per (preset, objects, memory frames); bars (hatched:
    from the stages) where every series of a panel has one point."""
    res = doc["results"]
    e2e, stages = res["end_to_end"], res["stages"]
    if not e2e and not stages:
        return None
    plt = _pyplot()
    configs = sorted({(r["preset"], r["objects"], r["mem_frames"]) for r in e2e + stages})
    cols = min(2, len(configs))
    nrows = math.ceil(len(configs) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.5 * cols, 3.6 * nrows), squeeze=False)
    variants = sorted({r["variant"] for r in e2e + stages})
    colors = {v: plt.get_cmap("tab10")(i % 10) for i, v in enumerate(variants)}
    for ax, (preset, objects, mem) in zip(axes.flat, configs):
        series = []  # (label, colour, style, [(area, resolution, fps)])
        for v in variants:
            for data, key, style in ((e2e, "fps", "-o"), (stages, "fps_from_stages", "--x")):
                pts = sorted(((math.prod(parse_resolution(r["resolution"])), r["resolution"], r[key]) for r in data
                              if r["variant"] == v and r["preset"] == preset and r["objects"] == objects
                              and r["mem_frames"] == mem and r.get(key)), key=lambda p: p[0])
                if pts:
                    series.append((f"{v} ({'e2e' if key == 'fps' else 'stages'})", colors[v], style, pts))
        shown = [p[2] for s in series for p in s[3]]
        if all(len(s[3]) == 1 for s in series):
            # One point per series (e.g. --quick, one resolution): a line through one point shows
            # nothing, so bars, one per series, labelled with their FPS.
            for i, (label, colour, style, pts) in enumerate(series):
                ax.bar(i, pts[0][2], color=colour, hatch="//" if style.startswith("--") else None,
                       edgecolor="white", label=f"{label}, {pts[0][1]}")
                ax.text(i, pts[0][2], f"{pts[0][2]:.2f}", ha="center", va="bottom", fontsize=6)
            ax.set_xticks(range(len(series)), [s[0] for s in series], rotation=30, ha="right", fontsize=6)
            ax.set_xlabel(f"variant ({series[0][3][0][1]})" if series else "variant")
        else:
            for label, colour, style, pts in series:
                ax.plot([p[1] for p in pts], [p[2] for p in pts], style, color=colour, label=label)
            ax.set_xlabel("resolution")
        ax.set_title(f"{preset}, {objects} object(s), {mem} memory frames", fontsize=9)
        if shown and max(shown) > 5 * min(shown):  # a log axis only where the FPS spans a wide range
            from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        else:
            ax.set_ylim(bottom=0, top=max(shown, default=1.0) * 1.15)
        ax.set_ylabel("FPS")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(configs):]:
        ax.axis("off")
    fig.suptitle(_title(doc), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- SUMMARY.md ----------------------------------------------------------------------------------


def _f(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}"


def _ratio(x: Any) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _stage(r: dict[str, Any], *names: str) -> float | None:
    vals = [float(r["stages_ms"][n]["median"]) for n in names if n in r["stages_ms"]]
    return sum(vals) if vals else None


def _section(doc: dict[str, Any], name: str) -> list[str]:
    d, m, v, res = doc["device"], doc["machine"], doc["versions"], doc["results"]
    cap = f", compute capability {d['capability']}" if d.get("capability") else ""
    lines = [
        f"## {d['name']}{cap} - `{doc['mode']}` run ([{name}]({name}))", "",
        f"- machine: {m['hostname']}, {m['cpu_model']}, {m['cpu_cores']} cores; load average "
        f"{m.get('load_average_start')} at start, {m.get('load_average_end')} at the end; this process got "
        f"{_f(m.get('cpu_seconds_per_wall_second'), 2)} CPU-seconds per second",
        f"- threads: torch {d.get('torch_threads')} (plan: {doc['settings'].get('threads') or 'library default'}); "
        "weights: " + "; ".join(f"{k}: {w}" for k, w in (doc['settings'].get('weights') or {}).items()),
        f"- versions: python {v['python']}, torch {v['torch']}, onnxruntime {v.get('onnxruntime')}, "
        f"CUDA {v.get('cuda')}, mevos {v['mevos']}",
        f"- command: `{' '.join(doc['command'])}` ({doc['wall_seconds']:.0f} s wall), {doc['created']}",
        "",
    ]
    if res["end_to_end"]:
        lines += ["### End to end (Tracker.step over the synthetic video, memory full)", "",
                  "| preset | resolution | objects | mem frames | variant | FPS | ms/frame (median) | vs baseline "
                  "| peak host MiB | peak device MiB |",
                  "|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
        for r in res["end_to_end"]:
            lines.append(f"| {r['preset']} | {r['resolution']} | {r['objects']} | {r['mem_frames']} | {r['variant']} "
                         f"| {_f(r['fps'], 2)} | {_f(r['ms_per_frame'].get('median', r['ms_per_frame'].get('mean')))} "
                         f"| {_ratio(r['speedup_vs_baseline'])} | {_f(r['peak_host_mb'], 0)} "
                         f"| {_f(r['peak_device_mb'], 0)} |")
        lines.append("")
    if res["stages"]:
        rounds = res["stages"][0]["refine_rounds"]
        lines += [f"### Per-stage latency (median ms per frame; refine = {rounds} rounds of V + D)", "",
                  "| preset | res | O | T | variant | encode_key | affinity top-k | readout | refine V | refine D "
                  "| memory write | pre+post | frame | FPS | vs baseline | affinity path |",
                  "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in res["stages"]:
            rv, rd = _stage(r, "refine_encode_value"), _stage(r, "refine_decode")
            if rv is None and rd is None:
                rv = _stage(r, "refine")  # the fast path's rounds are one CUDA graph
            lines.append(
                f"| {r['preset']} | {r['resolution']} | {r['objects']} | {r['mem_frames']} | {r['variant']} "
                f"| {_f(_stage(r, 'encode_key'))} | {_f(_stage(r, 'affinity_topk'))} | {_f(_stage(r, 'readout'))} "
                f"| {_f(rv)} | {_f(rd)} | {_f(_stage(r, 'memory_write'))} "
                f"| {_f(_stage(r, 'upload', 'preprocess', 'postprocess'))} | {_f(r['frame_ms'])} "
                f"| {_f(r['fps_from_stages'], 2)} | {_ratio(r['speedup_vs_baseline'])} | {r['affinity_path']} |")
        lines.append("")
    srv = res["serving"]
    lines += ["### Serving (gRPC server in-process on loopback, torch backend)", ""]
    if srv.get("status") == "ok":
        lock = srv["lockstep"]
        lines += [f"{srv['resolution']}, {srv['objects']} object(s), {srv['mem_frames']} memory frames, "
                  f"{srv['frames_timed']} timed frames per stream; {srv.get('rounds', 1)} lock-step rounds, each "
                  f"after an in-process Tracker run on the same frames; frames sent as {srv['image_format']}, masks "
                  f"returned as {srv['mask_encoding']}.", "",
                  "| stream | FPS | latency median ms | latency p90 ms | in-process ms/frame "
                  "| serving adds ms/frame (paired) | FPS vs in-process |", "|---|---:|---:|---:|---:|---:|---:|",
                  f"| lock-step (1 in flight) | {_f(lock['fps'], 2)} | {_f(lock['latency_ms']['median'])} "
                  f"| {_f(lock['latency_ms']['p90'])} | {_f(srv['in_process']['ms_per_frame']['median'])} "
                  f"| {_f(srv.get('added_ms_per_frame'), 2)} | {_ratio(srv['fps_ratio_grpc_vs_in_process'])} |"]
        if "pipelined" in srv:
            p = srv["pipelined"]
            lines.append(f"| pipelined (window {p['window']}) | {_f(p['fps'], 2)} | {_f(p['latency_ms']['median'])} "
                         f"| {_f(p['latency_ms']['p90'])} | | | "
                         f"{_ratio(p['fps'] / srv['in_process']['fps'] if srv['in_process']['fps'] else None)} |")
        sm = lock["server_ms"]
        lines += ["", "Server-side, lock-step (median ms): " + ", ".join(
            f"{k} {_f(sm[k]['median'])}" for k in ("decode", "queue", "batch_wait", "track", "encode", "total")
            if k in sm) + "."]
        if "added_ms" in lock:
            a = lock["added_ms"]
            lines.append(f"What serving adds per frame (paired: round trip minus the tracker's time in the server for "
                         f"the same frame; median ms): {_f(a['total']['median'], 2)}, of which "
                         f"{_f(a['in_server']['median'], 2)} in the server (decode, queue, batching, encode) and "
                         f"{_f(a['client_and_transport']['median'], 2)} in the client and on the wire.")
        lines.append("")
    else:
        lines += [f"Skipped: {srv.get('reason')}", ""]
    fast = res["fast_path"]
    lines += ["### GPU fast path (fp16, fused kernels, CUDA graphs, pinned overlapped uploads)", ""]
    if fast.get("status") == "ok":
        lines += [f"{fast['resolution']}, {fast['objects']} object(s), {fast['mem_frames']} memory frames, "
                  f"R = {fast['refine_rounds']}; goal {fast['goal_fps']:.0f} FPS end to end.", "",
                  "| preset | configuration | FPS | ms/frame | goal reached |", "|---|---|---:|---:|---|"]
        for preset, entry in fast["presets"].items():
            for label, r in entry.items():
                if isinstance(r, dict) and "fps" in r:
                    lines.append(f"| {preset} | {label} | {_f(r['fps'])} | {_f(1e3 / r['fps'], 2)} "
                                 f"| {'yes' if label == 'all on' and entry['goal_reached'] else ''} |")
                elif isinstance(r, dict) and r.get("status") == "failed":
                    lines.append(f"| {preset} | {label} | failed: {r['reason']} | | |")
            prof = entry.get("profile")
            if prof:
                lines += ["", f"{preset} per-stage (median ms, device synchronised at each boundary): " + ", ".join(
                    f"{s} {_f(v['median'], 3)}" for s, v in prof["stages_ms"].items())
                    + f"; host synchronisations per frame: {prof['host_syncs_per_frame']}", ""]
        jf = fast.get("jf", {})
        if jf.get("status") == "ok":
            lines += ["", f"J&F on {len(jf['sequences'])} DAVIS sequences: fast path {jf['jf_fast']:.4f}, fp32 "
                      f"baseline {jf['jf_reference']:.4f}, difference {jf['jf_delta']:+.4f} (tolerance "
                      f"{jf['tolerance']}): {'within' if jf['within_tolerance'] else 'OUTSIDE'}; pixel agreement "
                      f"{jf['pixel_agreement']:.4f}. Weights: {jf.get('weights')}.", ""]
        elif jf:
            lines += ["", f"J&F check skipped: {jf.get('reason')}", ""]
    else:
        lines += [f"Not measured: {fast.get('reason')}.", ""]
    if res["skipped"]:
        lines += ["Variants not run here: " + "; ".join(f"{s['variant']} ({s['reason']})" for s in res["skipped"]), ""]
    for png in doc.get("files", {}).get("plots", []):
        lines.append(f"![{png}]({png})")
    lines.append("")
    return lines


def write_summary(folder: Path) -> Path:
    """SUMMARY.md from every bench_*.json in `folder`, GPU runs first."""
    docs = []
    for p in sorted(folder.glob("bench_*.json")):
        try:
            doc = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not schema.problems(doc):
            docs.append((p.name, doc))
    docs.sort(key=lambda nd: (nd[1]["device"]["type"] != "cuda", nd[0]))
    lines = ["# mevos benchmark results", "",
             "Written by `mevos bench` from the `bench_*.json` files beside it (machine, device, versions, command "
             "and settings are in each). Every ratio divides by the baseline of the same configuration: the paper's "
             "code path, fp32 PyTorch with the dense (materialised) affinity. Clocks are read after a device "
             "synchronisation; warm-up runs are not timed. Weights are seeded or untrained: speed does not depend "
             "on them.", ""]
    if not any(d["device"]["type"] == "cuda" for _, d in docs):
        lines += ["> **GPU figures are pending a GPU machine.** Only CPU runs are recorded so far; the GPU table "
                  "(every backend at 240p/480p/720p) and the fast-path figures come from `mevos bench` on a CUDA "
                  "GPU.", ""]
    for name, doc in docs:
        lines += _section(doc, name)
    return write_text_atomic(folder / SUMMARY, "\n".join(lines))
