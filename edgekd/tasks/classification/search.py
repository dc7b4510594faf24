"""The classification task's search stage: a student sized to a latency or size budget, measured on the target.

Latency and size do not depend on trained weights, so each candidate architecture of the space the student
implies is built untrained, exported, quantized as the target's candidates would be, and timed (p50, batch 1) on
the target runtime in a fresh process: onnxruntime for ONNX targets, the ExecuTorch .pte for targets shipping
.pte. The few largest that fit are ranked by a short proxy distillation on the cached teacher logits, chosen on
validation; the distill stage trains the winner (its kwargs replace the card's)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import ConfigError
from edgekd.pipeline import BuildContext, StageOutput, StageResult
from edgekd.tasks.common import build_model, data_fingerprint, splits
from edgekd.tasks.search_common import (ensure_measured, fits, kwargs_ranges, label_rows, measure_space, proxy_rows,
                                        round_half_up, searching, skip_reason, unique_within)

__all__ = ["search_space", "searching", "skip_reason", "stage_search", "order_key", "stem_strides"]

# The zoo students whose shape the default space scales: arch -> (kwarg holding the per-layer sizes, dataclass).
ZOO_SPACES: dict[str, tuple[str, str]] = {"small_cnn": ("widths", "edgekd.zoo.cnn:SmallCNNConfig"),
                                          "mlp": ("hidden", "edgekd.zoo.mlp:MLPConfig")}
# Students cut from the teacher (the MiniLM cut: edgekd.zoo.text.BertStudent): the default space is fractions of
# the teacher's own depth and width (a card's student.search.space gives others); widths stay whole heads.
CUT_SPACES = {"bert_student"}
CUT_DEPTH = [0.34, 0.5, 0.67, 1.0]
CUT_WIDTH = [0.25, 0.5, 0.75, 1.0]
# Timing of one candidate: short, one fresh process each; a budget is checked again on the final artifact with
# the profile stage's full settings.
SEARCH_TIMING = {"warmup_runs": 10, "warmup_seconds": 0.1, "min_runs": 200, "min_seconds": 0.3, "max_seconds": 3.0,
                 "batch_sweep": [1], "throughput_batch": 1}


def stem_strides(space: Any, arch: str, input_shape: tuple[int, ...] | None) -> list[int]:
    """The stem strides of a zoo space: the card's, else 1 and every power of two that keeps the first feature
    map at least STEM_MIN_SIDE pixels on the image's shorter side (small_cnn on images only)."""
    from edgekd.config import STEM_MIN_SIDE

    if arch != "small_cnn":
        return [1]
    if space is not None and space.stem_stride is not None:
        return list(space.stem_stride)
    if input_shape is None or len(input_shape) != 3:
        return [1]
    side, out = min(input_shape[1:]), [1]
    while side // (out[-1] * 2) >= STEM_MIN_SIDE and out[-1] < 8:
        out.append(out[-1] * 2)
    return out


def search_space(student: Any, input_shape: tuple[int, ...] | None = None) -> tuple[list[dict[str, Any]], str]:
    """(the candidates' kwargs, where the space came from) for a student card with `search`; `input_shape`
    (C, H, W without the batch) sizes the default stem strides of an image student."""
    import importlib

    sc = student.search
    if sc.kwargs:
        cands, where = kwargs_ranges(student)
    elif student.arch in ZOO_SPACES:
        key, cfg_path = ZOO_SPACES[student.arch]
        mod, _, cls = cfg_path.partition(":")
        base = list(student.kwargs.get(key) or getattr(importlib.import_module(mod), cls)().__dict__[key])
        from edgekd.config import SearchSpace

        space = sc.space or SearchSpace()
        strides = stem_strides(sc.space, student.arch, input_shape)
        cands = []
        for stride in strides:  # stride 1 is the card's own stem: the kwarg is only written when it differs
            extra = {"stem_stride": stride} if stride != 1 else {}
            for dm in space.depth_mult:
                depth = max(1, round_half_up(len(base) * dm))
                layers = base[:depth] + [base[-1]] * max(0, depth - len(base))  # deeper: repeat the last size
                for wm in space.width_mult:
                    cands.append({**student.kwargs, **extra, key: [max(2, round_half_up(w * wm)) for w in layers]})
        origin = "card: student.search.space" if sc.space is not None else "edgekd's default grid"
        where = (f"zoo {student.arch}: the card's {key} {base} x width_mult {space.width_mult} x depth_mult "
                 f"{space.depth_mult}" + (f" x stem_stride {strides}" if strides != [1] else "") + f" ({origin})")
    elif student.arch in CUT_SPACES:
        cands, where = _cut_space(student, sc.space)
    else:
        raise ConfigError(f"student.search: no search space for a {student.describe()} student",
                          hint="list ranges of its kwargs in student.search.kwargs, e.g. {width_mult: [0.25, 0.5, 1.0]} "
                               f"(zoo students {', '.join(ZOO_SPACES)} have a default space)")
    return unique_within(cands, sc.max_candidates), where


def _cut_space(student: Any, space: Any) -> tuple[list[dict[str, Any]], str]:
    """bert_student: num_layers x hidden_size as fractions of the teacher's (whole heads of the teacher's head
    size, so `init_from: trained_teacher` can prune the teacher into each; the FFN keeps the teacher's ratio)."""
    from edgekd.zoo.text import load_config

    hf = student.kwargs.get("hf")
    if not hf:
        raise ConfigError("student.search: a bert_student without `hf` has no teacher to be cut from",
                          hint="give student.kwargs.hf (the teacher's folder or pkg:NAME)")
    t = load_config(hf)
    head = t.hidden_size // t.num_attention_heads
    depth = space.depth_mult if space is not None else CUT_DEPTH
    width = space.width_mult if space is not None else CUT_WIDTH
    if any(f > 1 for f in [*depth, *width]):
        raise ConfigError("student.search.space: a student cut from the teacher takes fractions <= 1 of its depth and width",
                          hint=f"e.g. depth_mult {CUT_DEPTH}, width_mult {CUT_WIDTH}")
    layers = sorted({max(1, round_half_up(t.num_hidden_layers * f)) for f in depth})
    hidden = sorted({max(1, round_half_up(t.num_attention_heads * f)) * head for f in width})
    cands = [{**{k: v for k, v in student.kwargs.items() if k not in ("num_heads", "intermediate_size", "teacher_layers")},
              "num_layers": n, "hidden_size": h} for n in layers for h in hidden]
    origin = "card: student.search.space" if space is not None else "edgekd's default fractions"
    return cands, (f"cut from the teacher {hf} ({t.num_hidden_layers} layers x hidden {t.hidden_size}, heads of {head}): "
                   f"num_layers {layers} x hidden_size {hidden} ({origin})")


def _input_shape(ctx: BuildContext) -> tuple[int, ...]:
    return tuple(splits(ctx).x_val.shape[1:])


def _search_cfg(ctx: BuildContext) -> dict:
    from edgekd.quantize.candidates import makers_key
    from edgekd.tasks.classification.hooks import candidate_plan

    if not searching(ctx):
        return {}
    if ctx.recipe.student.weights:
        raise ConfigError("student.search builds architectures from scratch, but the student names weights",
                          hint="drop student.weights, or drop student.search and keep the given student")
    cands, where = search_space(ctx.recipe.student, _input_shape(ctx))  # pre-flight: no space exits 2 now
    return {"student": ctx.recipe.student.key_dict(), "data_sha256": data_fingerprint(ctx), "space": cands,
            "space_from": where, "candidates": candidate_plan(ctx)[0], **makers_key(),
            "timing": SEARCH_TIMING}


# --------------------------------------------------------------------------- measuring one architecture


def _ships_pte(ctx: BuildContext) -> bool:
    # the artifact a target ships decides what is timed: its own formats, not its name
    return "pte" in ctx.target.formats


def _measure_onnx(ctx: BuildContext, fp32: Path, d: Path, calib: np.ndarray, names: list[str], shape: list[int],
                  device: Any) -> list[dict[str, Any]]:
    from edgekd.errors import StageError
    from edgekd.profile.runner import interleaved_profile
    from edgekd.profile.spec import ProfileSettings, ProfileSpec
    from edgekd.quantize.candidates import make_candidate

    files: dict[str, Path] = {}
    notes: dict[str, str] = {}
    for name in names:
        if name == "fp32":
            files[name] = fp32
            continue
        try:
            files[name] = Path(make_candidate(name, fp32, d / f"{name}.onnx", calib)["path"])
        except StageError as e:  # a candidate the graph cannot take is not a candidate of this architecture
            notes[name] = e.message
    settings = ProfileSettings.from_card(ctx.target, device).model_copy(update={**SEARCH_TIMING, "energy": "none"})
    specs = {n: ProfileSpec(kind="onnx", path=str(p), name=n, input_shape=shape, input_name="input",
                            **settings.model_dump()) for n, p in files.items()}
    timed = interleaved_profile(specs, repeats=1, workdir=d / "logs")
    return [{"variant": n, "runtime": "onnxruntime", "size_bytes": files[n].stat().st_size,
             "p50_ms": float(timed[n]["latency_ms"]["p50"])} for n in files] + \
        [{"variant": n, "skipped": why} for n, why in notes.items()]


def _measure_pte(ctx: BuildContext, model: Any, d: Path, calib: np.ndarray, shape: list[int]) -> list[dict[str, Any]]:
    import torch

    from edgekd.profile.runner import spawn
    from edgekd.targets.mobile.executorch import export_pte
    from edgekd.targets.mobile.pte_timer import PteTimingSpec

    rows = []
    for prec in ("fp32", "int8"):  # the .pte precisions the mobile bundle ships
        path = d / f"model_{prec}.pte"
        export_pte(model, torch.zeros(shape), path, quantize=prec, calib=calib if prec == "int8" else None)  # type: ignore[arg-type]
        spec = PteTimingSpec(path=str(path), input_shape=shape, runs=SEARCH_TIMING["min_runs"],
                             warmup=SEARCH_TIMING["warmup_runs"], threads=ctx.target.profile.threads)
        out = spawn("edgekd.targets.mobile.pte_timer", spec, path.name, spec.threads, d / "logs", f"pte-{prec}", 300.0)
        rows.append({"variant": f"pte-{prec}", "runtime": "executorch", "size_bytes": path.stat().st_size,
                     "p50_ms": float(out["latency_ms"]["p50"])})
    return rows


def order_key(student: Any) -> str | tuple[str, ...] | None:
    """What orders a space by size for skip_reason: a zoo student's per-layer sizes, a cut student's depth and
    width; None (time every one) for ranges of a user's kwargs, which carry no order."""
    if student.search.kwargs:
        return None
    if student.arch in ZOO_SPACES:
        return ZOO_SPACES[student.arch][0]
    return ("num_layers", "hidden_size") if student.arch in CUT_SPACES else None


def _skipped(ctx: BuildContext, i: int, kw: dict[str, Any], why: str, fits: bool = False) -> dict[str, Any]:
    from edgekd.zoo import count_params

    model = build_model(ctx.recipe.student.model_copy(update={"kwargs": kw}), seed=ctx.recipe.distill.seed)
    return {"index": i, "kwargs": kw, "params": count_params(model), "macs": None, "variants": [], "variant": None,
            "runtime": None, "latency_ms": None, "size_bytes": None, "min_latency_ms": None, "min_size_bytes": None,
            "fits": fits, "proxy_val_accuracy": None, "skipped": why}


def _measure(ctx: BuildContext, i: int, kw: dict[str, Any], s: Any, calib: np.ndarray, names: list[str],
             device: Any, wd: Path) -> dict[str, Any]:
    import torch

    from edgekd.export.onnx import export_onnx
    from edgekd.profile.measure.flops import onnx_flops
    from edgekd.zoo import count_params

    sc = ctx.recipe.student.search
    d = wd / "candidates" / f"{i:02d}"
    d.mkdir(parents=True, exist_ok=True)
    ref = ctx.recipe.student.model_copy(update={"kwargs": kw})
    model = build_model(ref, seed=ctx.recipe.distill.seed).eval()
    shape = [1, *s.x_val.shape[1:]]
    fp32 = export_onnx(model, torch.as_tensor(s.x_val[:1]), d / "fp32.onnx", ctx.target.onnx.opset, True)
    macs = onnx_flops(fp32, shape=shape)["macs"]
    rows = _measure_pte(ctx, model, d, calib, shape) if _ships_pte(ctx) else \
        _measure_onnx(ctx, fp32, d, calib, names, shape, device)
    for r in rows:
        r["fits"] = fits(r, sc)
    fitting = [r for r in rows if r["fits"]]
    # the artifact that would ship for this architecture: the fastest fitting variant (else the fastest measured)
    timed = [r for r in rows if "p50_ms" in r]
    best = min(fitting or timed, key=lambda r: r["p50_ms"])
    return {"index": i, "kwargs": kw, "params": count_params(model), "macs": int(macs), "variants": rows,
            "variant": best["variant"], "runtime": best["runtime"], "latency_ms": best["p50_ms"],
            "size_bytes": best["size_bytes"], "min_latency_ms": min(r["p50_ms"] for r in timed),
            "min_size_bytes": min(r["size_bytes"] for r in timed), "fits": bool(fitting), "proxy_val_accuracy": None}


# --------------------------------------------------------------------------- ranking by proxy distillation


def _proxy(ctx: BuildContext, inputs: dict[str, StageResult], s: Any, rows: list[dict[str, Any]]) -> None:
    """Distil each ranked architecture for proxy_epochs on the cached teacher logits; its best validation accuracy."""
    from edgekd.config import LossConfig
    from edgekd.distill.losses import build_losses
    from edgekd.distill.options import LOGIT_LOSSES
    from edgekd.distill.trainer import train
    from edgekd.tasks.classification.distill import _logit_cache, _teacher_module

    dc = ctx.recipe.distill
    sc = ctx.recipe.student.search
    teacher = _teacher_module(ctx, inputs["teacher"])
    cache = _logit_cache(ctx, teacher, inputs["teacher"], s.x_train, 0, 1)
    # a seeded subset ranks the architectures (the cache is indexed by training row, so rows keep their index)
    rows_idx = proxy_rows(len(s.x_train), sc.proxy_samples, dc.seed)
    x_tr, y_tr = s.x_train[rows_idx], s.y_train[rows_idx]
    labeled = None if s.labeled is None else s.labeled[rows_idx]

    def cached(idx: Any) -> Any:
        return cache.get(rows_idx[np.asarray(idx)])
    # logit losses only: feature/relation losses address module paths a resized student may not have
    losses = [lc for lc in dc.losses if lc.kind in LOGIT_LOSSES] or \
        [LossConfig(kind="soft_label", weight=0.9, temperature=4.0), LossConfig(kind="hard_label", weight=0.1)]
    proxy_cfg = dc.model_copy(update={"epochs": sc.proxy_epochs, "patience": None, "augment": False})
    import torch

    example = torch.as_tensor(s.x_val[:8])
    for r in rows:
        student = build_model(ctx.recipe.student.model_copy(update={"kwargs": r["kwargs"]}), seed=dc.seed)
        loss_set = build_losses(losses, student, teacher, example)
        res = train(student, x_tr, y_tr, s.x_val, s.y_val, proxy_cfg, teacher=teacher, loss_set=loss_set,
                    teacher_logits=cached, labeled=labeled, progress=ctx.progress,
                    description=f"proxy {r['index']:02d}")
        r["proxy_val_accuracy"] = float(res.best_val_accuracy)
        r["proxy_seconds"] = float(res.seconds)
        r["proxy_samples"] = int(len(rows_idx))


def stage_search(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path) -> StageOutput:
    import json

    from edgekd.targets import family
    from edgekd.tasks.classification.hooks import calibration, candidate_plan

    sc = ctx.recipe.student.search
    s = splits(ctx)
    cands, where_from = search_space(ctx.recipe.student, _input_shape(ctx))
    measured_on, machine, device = family(ctx.target).where_profiled(ctx.target)
    if _ships_pte(ctx):  # the .pte runs on this host's ExecuTorch: a host proxy unless a phone runs it
        measured_on, machine = "host", f"{machine} (ExecuTorch on this host)"
    names = [n for n in candidate_plan(ctx)[0] if n != "int8-qat"]  # qat needs training: its graph is int8-qdq's
    calib = calibration(ctx)
    def measure(i: int, kw: dict[str, Any]) -> dict[str, Any]:
        if ctx.progress is not None:
            ctx.log(f"  search: measuring {i + 1}/{len(cands)} {kw}")
        return _measure(ctx, i, kw, s, calib, names, device, wd)

    rows = measure_space(cands, sc, order_key(ctx.recipe.student), measure,
                         lambda i, kw, why, fits: _skipped(ctx, i, kw, why, fits))
    fitting, ranked = ensure_measured(rows, cands, sc, f"{machine} ({measured_on})", measure)
    for r in rows:
        r["measured_on"] = measured_on if r["latency_ms"] is not None else None
    _proxy(ctx, inputs, s, ranked)
    winner = max(ranked, key=lambda r: (r["proxy_val_accuracy"], -r["latency_ms"]))
    runner_up = [r for r in ranked if r is not winner]
    subset = f" of {winner['proxy_samples']:,} training samples" if winner.get("proxy_samples") else ""
    why = (f"highest proxy validation accuracy ({100 * winner['proxy_val_accuracy']:.2f}% after {sc.proxy_epochs} "
           f"epoch(s) of distillation on the cached teacher logits{subset}) among the {len(ranked)} largest of {len(fitting)} "
           f"fitting architectures; {winner['latency_ms']:.4g} ms, {winner['size_bytes'] / 1024:.4g} KiB as "
           f"{winner['variant']}")
    if runner_up:
        why += "; next: " + ", ".join(f"{r['kwargs']} {100 * r['proxy_val_accuracy']:.2f}%" for r in runner_up)
    label_rows(rows, winner, ranked)
    metrics = {"budget": {"latency_ms": sc.latency_ms, "size_kib": sc.size_kib}, "space_from": where_from,
               "measured_on": measured_on, "device": machine,
               "latency": "p50 at batch 1, one fresh process per artifact, untrained weights "
                          f"({SEARCH_TIMING['min_runs']}+ runs)",
               "candidates": [r for r in rows], "winner": {k: winner[k] for k in
                                                          ("index", "kwargs", "params", "macs", "variant", "latency_ms",
                                                           "size_bytes", "proxy_val_accuracy")},
               "why": why, "top_k": sc.top_k, "proxy_epochs": sc.proxy_epochs, "proxy_samples": sc.proxy_samples,
               "timed": sum(r["latency_ms"] is not None for r in rows), "skip_margin": sc.skip_margin}
    (wd / "search.json").write_text(json.dumps(metrics, indent=2))
    ctx.log(f"  search: winner {winner['kwargs']} — {why}")
    return StageOutput({"table": "search.json"}, metrics)
