"""One run's verdict: an artifact in one runtime (or a shipped shader on one GPU driver), its
worst-sample comparison of every output, and whether it passed its gate."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .compare import OutputComparison


@dataclass
class ArtifactResult:
    """One artifact run in one runtime (or one shipped shader run on one GPU driver)."""

    name: str  # the artifact's name, `@runtime` appended for its runs in a further runtime
    target: str
    precision: str
    graph: str
    threshold_db: float
    passed: bool
    outputs: dict[str, OutputComparison] = field(default_factory=dict)  # worst sample per output
    gated_outputs: tuple[str, ...] = ()  # the outputs the contract marks as gated
    # frame graphs: the reference's mean warp (px) and the UV error allowed for it
    warp_px: float | None = None
    uv_limit_px: float | None = None
    # failed int8 / int8_dynamic artifacts: per-tensor localisation against the fp32 artifact
    # (runtime_bench.localize.Localization.as_dict, or {"error": ...} when it could not run)
    localization: dict | None = None
    artifact: str = ""  # the manifest entry this result judges ("" for a shader)
    runtime: str = ""
    samples: int = 0  # golden samples run
    gpu: dict | None = None  # the GPU accelerator's verdict (litert_gpu_runner.GpuVerdict.as_dict)
    nnapi: dict | None = None  # NNAPI profile artifacts: the rule table's verdict (nnapi_profile.verdict_of)

    def as_dict(self) -> dict:
        return {"name": self.name, "artifact": self.artifact, "runtime": self.runtime, "samples": self.samples,
                "target": self.target, "precision": self.precision, "graph": self.graph,
                "threshold_db": self.threshold_db, "passed": self.passed, "gated_outputs": list(self.gated_outputs),
                "gpu": self.gpu, "nnapi": self.nnapi,
                "warp_px": self.warp_px, "uv_limit_px": self.uv_limit_px,
                "outputs": {k: v.as_dict() for k, v in self.outputs.items()}, "localization": self.localization}

    @property
    def gated_psnr_db(self) -> float:
        gated = [self.outputs[n].psnr_db for n in self.gated_outputs if n in self.outputs]
        return min(gated) if gated else math.nan

    @property
    def uv_error_px(self) -> float | None:
        errors = [c.uv_error_px for c in self.outputs.values() if c.uv_error_px is not None]
        return max(errors) if errors else None

    def figures(self) -> dict:
        """The numbers a later `validate` compares with: gated PSNR, UV error, every output's PSNR."""
        psnr = lambda x: "inf" if math.isinf(x) else round(x, 2)
        return {"passed": self.passed, "gated_psnr_db": psnr(self.gated_psnr_db),
                "uv_error_px": None if self.uv_error_px is None else round(self.uv_error_px, 4),
                "uv_limit_px": None if self.uv_limit_px is None else round(self.uv_limit_px, 4),
                "outputs_psnr_db": {k: psnr(v.psnr_db) for k, v in self.outputs.items()}}
