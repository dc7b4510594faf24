"""`edgekd profile FILE.onnx --target T`: profile any ONNX model (bring your own model) with the
target card's settings, in subprocesses like the build does."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from edgekd.errors import UserError


def input_shape_of(path: Path) -> tuple[str, list[int]]:
    """First input's name and a concrete shape: symbolic/unknown dims become 1 (batch and friends)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError/ValueError variants on garbage
        raise UserError(f"{path} is not a readable ONNX model: {type(e).__name__}", hint="give a .onnx file") from None
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise UserError(f"{path} has no graph inputs", hint="export the model with at least one input")
    dims = [d.dim_value if d.dim_value > 0 else 1 for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


def profile_onnx_file(path: Path, target: Any, repeats: int | None = None) -> dict[str, Any]:
    from edgekd.profile.measure.energy import measured_or_estimate
    from edgekd.profile.measure.flops import host_roofline
    from edgekd.profile.runner import measure_host_peak, profile_model
    from edgekd.profile.spec import ProfileSettings, ProfileSpec

    name, shape = input_shape_of(path)
    p = target.profile
    spec = ProfileSpec(**ProfileSettings.from_card(target, target.device).model_dump(), kind="onnx",
                       path=str(Path(path).resolve()), input_name=name, input_shape=shape)
    with tempfile.TemporaryDirectory(prefix="edgekd-profile-") as wd:
        res = profile_model(spec, repeats=repeats or p.repeats, workdir=Path(wd))
        host = measure_host_peak(p.threads, Path(wd))
    res["energy"] = res.get("energy") or measured_or_estimate(res["cpu_seconds_per_inference"], target.device)
    # This run is on the host: its roofline uses the host's measured peak, never the card's.
    bw = target.device.mem_bandwidth_gbs if describes_host(target) else None
    res["flops"], res["roofline"] = host_roofline(path, res["latency_ms"]["p50"], host, shape=shape,
                                                  mem_bandwidth_gbs=bw)
    res["host"] = {k: host.get(k) for k in ("peak_gflops", "method", "matrix", "threads", "blas", "cpu")}
    res.update({"path": str(path), "size_bytes": os.path.getsize(path), "input_name": name, "input_shape": shape,
                "target": target.name, "threads": p.threads})
    return res


def describes_host(target: Any) -> bool:
    """A CPU onnxruntime target card describes the host class itself (its bandwidth applies here)."""
    return target.runtime == "onnxruntime" and list(target.providers) == ["CPUExecutionProvider"]


def render_profile(res: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    lat = res["latency_ms"]
    t = Table(title=f"{res['path']} on {res['target']} ({res['threads']} thread(s))", box=None)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k in ("min", "p50", "p90", "p99", "mean", "std"):
        t.add_row(f"latency {k}", f"{lat[k]:.4f} ms")
    t.add_row("runs", f"{lat['n']:,}")
    t.add_row("spread across repeats", f"{100 * res.get('spread', 0):.1f}%" + (" (noisy)" if res.get("noisy") else ""))
    if res.get("throughput_per_s"):
        t.add_row("throughput", f"{res['throughput_per_s']:,.1f}/s")
    t.add_row("size", f"{res['size_bytes'] / 1024:,.1f} KiB")
    t.add_row("peak RSS (delta at load+run)", f"{(res.get('peak_rss_delta_bytes') or 0) / 2**20:,.1f} MiB")
    fl = res.get("flops") or {}
    t.add_row("MACs / inference", f"{fl['macs']:,}" + ("" if fl.get("complete") else f" (incomplete: {fl.get('unresolved')} ops unresolved)")
              if "macs" in fl else "not counted")
    host = res.get("host") or {}
    if host.get("peak_gflops"):
        t.add_row("host FP32 peak (sgemm, measured)", f"{host['peak_gflops']:,.1f} GFLOP/s")
    rf = res.get("roofline") or {}
    if rf.get("efficiency") is not None:
        bound = f", {rf['bound']}-bound" if rf.get("bound") else ""
        t.add_row("roofline efficiency", f"{100 * rf['efficiency']:.2f}% of the measured peak{bound}")
    e = res["energy"]
    t.add_row("energy / inference", f"{1000 * e['joules_per_inference']:.4f} mJ [{e['method']}]")
    console.print(t)
