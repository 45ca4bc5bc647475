"""The GPU coverage report: what LiteRT's GPU accelerator makes of every TFLite artifact.

For each TFLite artifact of a bundle: its ops (name, version, count, from the flatbuffer), the
accelerator's verdict as it reports it while compiling (fully accelerated or not, the ops it
rejects and why, how many ops it runs on the GPU and how many it leaves to the CPU), the
connected sets of ops it accepts (where it could place partitions), and the parity of the GPU
run in the accelerator's default fp16 mode. `validate` produces the runs
(`runtime_bench.validate`, runtime "litert_gpu"); this module only reads them and the model files.
Beside the GPU verdict, each artifact gets the NNAPI rule table's static verdict
(`runtime_bench.nnapi_profile`). Written into every bundle as reports/coverage.{md,json};
`bilayer-mobile coverage BUNDLE` prints it.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from ..reference.files import atomic_write, write_text_atomic
from .nnapi_profile import OpOperands, connected_sets, model_operands, verdict_of
from .validate import GPU_RUNTIME, NNAPI_TARGET, ValidationReport, load_manifest


def model_ops(path: Path) -> list[dict]:
    """The main subgraph's ops in execution order: type, version, output and input tensor ids,
    output tensor names."""
    return _as_dicts(model_operands(path))


def _as_dicts(operands: list[OpOperands]) -> list[dict]:
    return [{"op": o.op, "version": o.version, "inputs": o.inputs, "outputs": o.outputs, "tensors": o.output_names}
            for o in operands]


def op_table(ops: list[dict]) -> list[dict]:
    """Op type and version -> count, sorted by count."""
    counts = Counter((o["op"], o["version"]) for o in ops)
    return [{"op": op, "version": version, "count": n} for (op, version), n in
            sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def rejected_ops(ops: list[dict], verdict: dict) -> list[int]:
    """Indices of the ops the accelerator's messages reject: the op named by its output tensor
    where the message names one, else every op of the message's type (it prints a type whose
    every instance it rejects once)."""
    by_tensor = {t for r in verdict["rejected"] for t in r["tensors"]}
    whole_types = {r["op"] for r in verdict["rejected"] if not r["tensors"]}
    return [i for i, o in enumerate(ops) if o["op"] in whole_types or by_tensor & set(o["tensors"])]


def accepted_sets(ops: list[dict], rejected: list[int]) -> int:
    """How many connected sets (through tensors) the accepted ops form: the fewest partitions
    the accelerator could run them in."""
    rejected_set = set(rejected)
    accepted = [i for i in range(len(ops)) if i not in rejected_set]
    return connected_sets([(o["inputs"], o["outputs"]) for o in ops], accepted)


def gpu_coverage(bundle: Path | str, report: ValidationReport) -> dict:
    """The coverage of every TFLite artifact of `bundle` from `report`'s GPU runs; artifacts the
    GPU did not run (no device here, or GPU validation off) say why."""
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    runs = {r.artifact: r for r in report.results if r.runtime == GPU_RUNTIME}
    entries = []
    for artifact in manifest["artifacts"] + [a for a in manifest.get("rejected", []) if a.get("file")]:
        if artifact.get("runtime") != "litert" or not (bundle / artifact["file"]).is_file():
            continue
        operands = model_operands(bundle / artifact["file"])  # the flatbuffer read once, for both verdicts
        ops = _as_dicts(operands)
        entry = {"artifact": artifact["name"], "file": artifact["file"], "graph": artifact["graph"],
                 "precision": artifact["precision"], "warp": artifact.get("warp"), "total_ops": len(ops),
                 "ops": op_table(ops), "nnapi": verdict_of(operands)}
        run = runs.get(artifact["name"])
        if run is None:
            why = [line for line in report.not_run if line.startswith(f"{artifact['name']} on")]
            entry["gpu"] = None
            entry["not_run"] = (why[0] if why else
                                "not run on the GPU: the NNAPI profile is for the NNAPI delegate in float32 (docs/nnapi.md)"
                                if artifact["target"] == NNAPI_TARGET else
                                "not run on the GPU (only the frame graphs are, and only with --gpu auto/require)")
        else:
            verdict = run.gpu
            rejected = rejected_ops(ops, verdict)
            entry["gpu"] = {**verdict, "rejected_ops_in_model": len(rejected),
                            "accepted_sets": accepted_sets(ops, rejected)}
            psnr = lambda x: "inf" if math.isinf(x) else round(x, 2)
            entry["gpu_parity"] = {"passed": run.passed, "threshold_db": run.threshold_db, "samples": run.samples,
                                   "gated_psnr_db": psnr(run.gated_psnr_db),
                                   "outputs_psnr_db": {k: psnr(v.psnr_db) for k, v in run.outputs.items()},
                                   "uv_error_px": None if run.uv_error_px is None else round(run.uv_error_px, 4)}
        entries.append(entry)
    devices = sorted({e["gpu"]["device"] for e in entries if e.get("gpu") and e["gpu"]["device"]})
    return {"accelerator": "LiteRT GPU accelerator (WebGPU / ML Drift), HardwareAccelerator.GPU | CPU, default fp16",
            "devices": devices, "machine": report.machine, "artifacts": entries,
            "executorch": executorch_delegation(manifest), "coreml": coreml_packages(manifest)}


def executorch_delegation(manifest: dict) -> list[dict]:
    """Per ExecuTorch program of the manifest: what the XNNPACK delegate took, as the exporter
    recorded it from `executorch.devtools.backend_debug.get_delegation_info`."""
    return _accelerator_records(manifest, "executorch")


def coreml_packages(manifest: dict) -> list[dict]:
    """Per Core ML package of the manifest: its op list, compute dtypes, the compute units its
    precision is eligible for and the Neural Engine notes, as the exporter recorded them."""
    return _accelerator_records(manifest, "coreml")


def _accelerator_records(manifest: dict, runtime: str) -> list[dict]:
    return [{"artifact": a["name"], "graph": a["graph"], "precision": a["precision"], **a["accelerator"]}
            for a in manifest["artifacts"] + manifest.get("rejected", [])
            if a.get("runtime") == runtime and a.get("accelerator")]


def _nnapi_cell(verdict: dict | None) -> str:
    if not verdict:
        return "-"
    whole = "whole" if verdict["whole"] else f"{verdict['delegable_percent']:g}%, {verdict['partitions']} partitions"
    return f"{whole}, {verdict['min_android'] or '-'}"


def _fmt(x) -> str:
    return x if isinstance(x, str) else f"{x:.1f}"


def coverage_markdown(coverage: dict) -> str:
    """The report as Markdown: one summary table, then each artifact's rejected ops and op list."""
    device = ", ".join(coverage["devices"]) or "none (not run)"
    lines = ["# Accelerator coverage of the artifacts (LiteRT GPU, NNAPI, ExecuTorch XNNPACK, Core ML)", "",
             f"Accelerator: {coverage['accelerator']}. Device: {device}. A software Vulkan device (lavapipe) runs "
             "the same accelerator code as a phone's GPU, so verdicts and fp16 numerics hold; its timings do not. "
             "NNAPI: the static rule table of `runtime_bench/nnapi_profile.py` (the NNAPI delegate's own conditions; "
             "the delegate was not run: that needs an Android device; NNAPI is deprecated since Android 15).", "",
             "| artifact | warp | ops | GPU verdict | ops on GPU / CPU | accepted sets | fp16 gated PSNR (dB) | "
             "other outputs (dB) | gate | result | NNAPI (rule table) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in coverage["artifacts"]:
        g = e.get("gpu")
        nnapi = _nnapi_cell(e.get("nnapi"))
        if g is None:
            lines.append(f"| {e['artifact']} | {e['warp'] or '-'} | {e['total_ops']} | not run | - | - | - | - | - | "
                         f"{e['not_run']} | {nnapi} |")
            continue
        p = e["gpu_parity"]
        verdict = "fully accelerated" if g["fully_accelerated"] else "**NOT fully accelerated**"
        others = ", ".join(f"{k} {_fmt(v)}" for k, v in p["outputs_psnr_db"].items())
        lines.append(f"| {e['artifact']} | {e['warp'] or '-'} | {e['total_ops']} | {verdict} | "
                     f"{g['gpu_ops']} / {g['cpu_ops']} | {g['accepted_sets']} | {_fmt(p['gated_psnr_db'])} | {others} | "
                     f">= {p['threshold_db']:.0f} | {'PASS' if p['passed'] else '**FAIL**'} | {nnapi} |")
    lines.append("")
    for e in coverage["artifacts"]:
        lines += [f"## {e['artifact']}", ""]
        g = e.get("gpu")
        if g and g["rejected"]:
            lines += ["Rejected by the accelerator (its own messages):", ""]
            lines += [f"- {r['op']}: {r['reason']}" + (f" ({len(r['tensors'])} ops)" if r["tensors"] else "")
                      for r in g["rejected"]]
            lines.append("")
        refused = Counter(r["reason"] for r in (e.get("nnapi") or {}).get("refused", []))
        if refused:
            lines += ["Refused by the NNAPI rule table:", ""]
            lines += [f"- {reason} (x{n})" for reason, n in refused.most_common()]
            lines.append("")
        lines.append("ops: " + ", ".join(f"{o['op']} v{o['version']} x{o['count']}" for o in e["ops"]))
        lines.append("")
    if any(e.get("gpu") for e in coverage["artifacts"]):
        lines += ["![ops on the GPU and on the CPU per artifact](coverage.png)", ""]
    lines += executorch_markdown(coverage.get("executorch", []))
    lines += coreml_markdown(coverage.get("coreml", []))
    return "\n".join(lines)


def coreml_markdown(packages: list[dict]) -> list[str]:
    """The Core ML section: per package its deployment target, the compute units its precision
    can use, the dtypes its ops compute in and the warp's convention; then the Neural Engine
    notes once."""
    if not packages:
        return []
    lines = ["# Core ML packages: what Core ML may place where", "",
             "From each saved package at export (no Core ML runtime here: its placement of ops on the Neural Engine, "
             "GPU and CPU is decided on the device; check it there with Xcode's performance report or MLComputePlan). "
             "Parity: the MIL program evaluated on the host (reports/parity.md, runtime coreml_mil_host).", "",
             "| artifact | deployment target | compute units eligible | ops | op compute dtypes | resample |",
             "|---|---|---|---|---|---|"]
    for p in packages:
        resample = "; ".join(f"{r.get('sampling_mode')}, {r.get('coordinates_mode')}, align_corners "
                             f"{r.get('align_corners')}" for r in p.get("resample", [])) or "-"
        dtypes = ", ".join(f"{k} x{v}" for k, v in p.get("op_precisions", {}).items())
        lines.append(f"| {p['artifact']} | {p['deployment_target']} | {p['compute_units_eligible']} | "
                     f"{sum(p['ops'].values())} | {dtypes} | {resample} |")
    lines += ["", "Neural Engine notes (from Apple's and coremltools' documentation; \"(uncertain)\" marks reported "
              "behaviour that no Apple document states):", ""]
    for topic, note in packages[0].get("ane_notes", {}).items():
        lines.append(f"- {topic}: {note['note']} Source: {note['source']}")
    return lines + [""]


def executorch_markdown(programs: list[dict]) -> list[str]:
    """The ExecuTorch section: delegate partitions and nodes per program, and the op types left
    to the portable kernels."""
    if not programs:
        return []
    lines = ["# ExecuTorch programs: what the XNNPACK delegate takes", "",
             "From `get_delegation_info` at export (`executorch.devtools.backend_debug`); the programs ran in the "
             "ExecuTorch runtime for parity (reports/parity.md). Nodes on portable kernels run between the delegate's "
             "partitions, each boundary a copy.", "",
             "| artifact | XNNPACK partitions | nodes delegated | nodes on portable kernels | compute ops on portable kernels |",
             "|---|---|---|---|---|"]
    for p in programs:
        portable = ", ".join(f"{op} x{p['ops'][op]['portable']}" for op in p["portable_ops"]) or "none"
        lines.append(f"| {p['artifact']} | {p['partitions']} | {p['delegated_nodes']} | {p['portable_nodes']} | {portable} |")
    return lines + [""]


def plot_coverage(coverage: dict, path: Path) -> None:
    """Stacked bars of the ops each artifact runs on the GPU and leaves to the CPU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [e for e in coverage["artifacts"] if e.get("gpu")]
    names = [e["artifact"] for e in runs]
    gpu = [e["gpu"]["gpu_ops"] or 0 for e in runs]
    cpu = [e["gpu"]["cpu_ops"] or 0 for e in runs]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(runs) + 1.2))
    ax.barh(range(len(runs)), gpu, color="tab:green", label="GPU")
    ax.barh(range(len(runs)), cpu, left=gpu, color="tab:red", label="CPU (rejected or cut off)")
    ax.set_yticks(range(len(runs)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ops")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)


def write_coverage(bundle: Path | str, coverage: dict) -> None:
    """reports/coverage.json, reports/coverage.md and its plot."""
    reports = Path(bundle) / "reports"
    reports.mkdir(exist_ok=True)
    if any(e.get("gpu") for e in coverage["artifacts"]):
        plot_coverage(coverage, reports / "coverage.png")
    write_text_atomic(reports / "coverage.json", json.dumps(coverage, indent=2))
    write_text_atomic(reports / "coverage.md", coverage_markdown(coverage))
