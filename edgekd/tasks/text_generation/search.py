"""The text-generation task's search stage: a language-model student cut from its teacher, sized to a budget of
per-token latency (p50 of one decode step at batch 1) or size (the shipped ONNX after quantization).

The space is fractions of the teacher a `pruned_llama` student is cut to (depth x FFN by default; any of its
kwargs through student.search.kwargs ranges). Latency and size do not depend on training: each candidate is cut
from the teacher (the importance of its layers, heads and neurons measured once on the training sequences),
exported with its KV cache, made into the build's quantized candidates, and decoded by the profile stage's own
generation benchmark in a fresh process. Among the largest that fit, the one whose cut (before any training) has
the lowest perplexity on the teacher's validation answers is trained: the cut's own loss is the proxy (one forward
pass per candidate, no training); the distill stage cuts and trains the winner."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgekd.errors import ConfigError
from edgekd.pipeline import BuildContext, StageOutput, StageResult
from edgekd.tasks.search_common import ensure_measured, fits, kwargs_ranges, label_rows, measure_space, unique_within

LM_DEPTH = [0.2, 0.3, 0.4, 0.5]  # fractions of the teacher's layers
LM_FFN = [0.25, 0.5, 1.0]  # fractions of its FFN neurons
# The timing of one cut: the profile stage's benchmark, shorter (at most these); the budget is checked again on the
# shipped artifact with the card's full settings.
SEARCH_BENCH = {"prompts": 2, "new_tokens": 16, "repeats": 1}
# sizes a cut grows with: what orders the skip rule; the last is the axis a bisection runs along (the default space
# varies depth and FFN: a chain is one depth, FFN growing)
ORDER = ("depth", "hidden", "heads", "kv_heads", "ffn")
PROXY_EXAMPLES = 64  # validation examples the untrained cuts are scored on


def lm_search_space(student: Any) -> tuple[list[dict[str, Any]], str]:
    """(the candidates' kwargs, where the space came from): the card's kwargs ranges, else depth x FFN fractions
    (student.search.space's depth_mult/width_mult, read as fractions of the teacher, else LM_DEPTH x LM_FFN)."""
    sc = student.search
    if student.arch != "pruned_llama":
        raise ConfigError(f"student.search: no search space for a {student.describe()} student",
                          hint="a language-model budget sizes a student cut from the teacher: arch pruned_llama")
    if sc.kwargs:
        cands, where = kwargs_ranges(student)
    else:
        depth = sc.space.depth_mult if sc.space is not None else LM_DEPTH
        ffn = sc.space.width_mult if sc.space is not None else LM_FFN
        if any(f > 1 for f in [*depth, *ffn]):
            raise ConfigError("student.search.space: a student cut from the teacher takes fractions <= 1 of its "
                              "depth (depth_mult) and FFN (width_mult)", hint=f"e.g. depth_mult {LM_DEPTH}, width_mult {LM_FFN}")
        cands = [{**student.kwargs, "depth": d, "ffn": f} for d in depth for f in ffn]
        origin = "card: student.search.space" if sc.space is not None else "edgekd's default fractions"
        where = f"cut from the teacher (pruned_llama): depth {list(depth)} x ffn {list(ffn)} of the teacher's ({origin})"
    from edgekd.llm.prune import parse_options

    for c in cands:  # a bad fraction is exit 2 at pre-flight, not after minutes of cutting
        parse_options(c)
    return unique_within(cands, sc.max_candidates), where


def _lm_search_cfg(ctx: BuildContext) -> dict:
    from edgekd.tasks.search_common import searching
    from edgekd.tasks.text_generation.export import _opset
    from edgekd.tasks.text_generation.hooks import lm_candidate_plan

    if not searching(ctx):
        return {}
    cands, where = lm_search_space(ctx.recipe.student)
    return {"student": ctx.recipe.student.model_dump(mode="json"), "space": cands, "space_from": where,
            "candidates": lm_candidate_plan(ctx)[0], "options": ctx.recipe.quantize.options, "opset": _opset(ctx),
            "bench": _search_bench(ctx).model_dump(mode="json"), "max_length": ctx.recipe.data.max_length,
            "proxy_examples": PROXY_EXAMPLES}


def _search_bench(ctx: BuildContext):
    from edgekd.tasks.text_generation.hooks import _bench_settings

    bench = _bench_settings(ctx)
    return bench.model_copy(update={k: min(getattr(bench, k), v) for k, v in SEARCH_BENCH.items()})


def _order(student: Any) -> tuple[str, ...] | None:
    # a cut no larger in every fraction is no slower and no larger; a card's kwargs ranges carry no such order
    # unless they only range over those fractions
    sc = student.search
    return ORDER if not sc.kwargs or set(sc.kwargs) <= set(ORDER) else None


def stage_lm_search(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path) -> StageOutput:
    import json

    import torch

    from edgekd.llm import sequences as S
    from edgekd.llm.models import answer_ids, load_causal_lm
    from edgekd.llm.prune import calibration_batches, cut, importance, parse_options, plan
    from edgekd.profile.spec import GenerationSpec
    from edgekd.quantize.candidates import make_candidate
    from edgekd.llm.onnx_gen import evaluate_onnx, export_with_past
    from edgekd.tasks.text_generation.data import _teacher_info, read_answers
    from edgekd.tasks.text_generation.export import _opset
    from edgekd.tasks.text_generation.hooks import _bench_row, _profile_prompts, lm_candidate_plan

    student_card = ctx.recipe.student
    sc = student_card.search
    cands, where_from = lm_search_space(student_card)
    info = _teacher_info(inputs["teacher"])
    teacher, tok = load_causal_lm(info["folder"])
    stops, end_id, pad = answer_ids(tok, teacher)
    ans = read_answers(inputs["generate"])
    L = ctx.recipe.data.max_length
    train = S.build_examples(tok, ans["train"], L, end_id)
    val = S.build_examples(tok, ans["val"], L, end_id)[:PROXY_EXAMPLES]
    # the same calibration the distill stage cuts with: its first calibration_samples training sequences
    calib = calibration_batches(train, pad, parse_options(student_card.kwargs).calibration_samples)
    imp = importance(teacher, calib)
    bench = _search_bench(ctx)
    prompts = _profile_prompts(inputs, tok, bench)  # the prompts the profile stage decodes, as many as the search times
    names = lm_candidate_plan(ctx)[0]
    # where the generation benchmark runs, as the profile stage labels it: the device where the target's runtime
    # runs here (cpu; cuda on a GPU host), else this host's CPU as a labelled proxy
    measured_on, machine = bench.profiled_on, bench.profile_device.name
    def cut_of(kw: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        p = plan(teacher, parse_options(kw), imp)
        return cut(teacher, p), p

    def not_timed(i: int, kw: dict[str, Any], why: str, fit: bool) -> dict[str, Any]:
        model, _ = cut_of(kw)
        return {"index": i, "kwargs": kw, "params": sum(t.numel() for t in model.parameters()), "macs": None,
                "variants": [], "variant": None, "runtime": None, "latency_ms": None, "size_bytes": None,
                "min_latency_ms": None, "min_size_bytes": None, "fits": fit, "proxy_val_accuracy": None,
                "skipped": why}

    def measure(i: int, kw: dict[str, Any]) -> dict[str, Any]:
        model, p = cut_of(kw)
        params = sum(t.numel() for t in model.parameters())
        if ctx.progress is not None:
            ctx.log(f"  search: measuring {i + 1}/{len(cands)} {kw}")
        d = wd / "candidates" / f"{i:02d}"
        model.generation_config.eos_token_id = stops
        model.save_pretrained(d / "hf", safe_serialization=True)
        tok.save_pretrained(d / "hf")
        fp32 = export_with_past(d / "hf", d / "fp32", _opset(ctx))
        variants = []
        for name in names:
            if name == "fp32":
                path, size = fp32, sum(f.stat().st_size for f in fp32.parent.iterdir() if f.name.startswith(fp32.name))
            else:
                path = d / f"{name}.onnx"
                try:
                    make_candidate(name, fp32, path, None, dict(ctx.recipe.quantize.options),
                                   smoke=lambda q: evaluate_onnx(q, val[:1]))
                except Exception as e:  # noqa: BLE001 - a kind this cut cannot take is not a candidate of it
                    variants.append({"variant": name, "skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
                    continue
                size = path.stat().st_size
            spec = GenerationSpec(name=f"search-{i:02d}-{name}", kind="onnx", path=str(path), prompt_ids=prompts,
                                  settings=bench)
            r = _bench_row(spec, d / "logs", bench)
            variants.append({"variant": name, "runtime": "onnxruntime", "size_bytes": int(size),
                             "p50_ms": float(r["decode_ms_per_token"]["p50"]), "tokens_per_s": r.get("tokens_per_s")})
        for v in variants:
            v["fits"] = fits(v, sc)
        timed = [v for v in variants if "p50_ms" in v]
        best = min([v for v in timed if v["fits"]] or timed, key=lambda v: v["p50_ms"])
        with torch.no_grad():
            proxy = S.evaluate(model, val, pad)  # what the cut alone keeps: no training
        shutil.rmtree(d, ignore_errors=True)  # hundreds of MB per cut of a real teacher: the table is what stays
        return {"index": i, "kwargs": kw, "params": params, "macs": None, "variants": variants,
                "variant": best["variant"], "runtime": "onnxruntime", "latency_ms": best["p50_ms"],
                "size_bytes": best["size_bytes"], "min_latency_ms": min(v["p50_ms"] for v in timed),
                "min_size_bytes": min(v["size_bytes"] for v in timed), "fits": any(v["fits"] for v in timed),
                "proxy_val_accuracy": float(proxy["agreement"]), "proxy_val_perplexity": float(proxy["perplexity"]),
                "layers": len(p["layers"]), "hidden": p["hidden"], "intermediate": p["intermediate"]}

    rows = measure_space(cands, sc, _order(student_card), measure, not_timed)
    fitting, ranked = ensure_measured(rows, cands, sc, f"{machine} ({measured_on})", measure)
    for r in rows:
        r["measured_on"] = measured_on if r["latency_ms"] is not None else None
    # perplexity, not agreement: a deep cut's argmax agrees with almost no answer token before training (0-0.1% for
    # every fitting cut of smollm2 at 6 of 30 layers, bench_lm_budget), while its loss still orders the cuts
    winner = min(ranked, key=lambda r: (r["proxy_val_perplexity"], r["latency_ms"]))
    why = (f"lowest perplexity on the teacher's validation answers as cut, before any training "
           f"({winner['proxy_val_perplexity']:.4g}, agreement {100 * winner['proxy_val_accuracy']:.2f}%, on {len(val)} "
           f"answers) among the {len(ranked)} largest of {len(fitting)} fitting cuts; {winner['latency_ms']:.4g} ms per "
           f"token, {winner['size_bytes'] / 2**20:.4g} MiB as {winner['variant']}")
    others = [r for r in ranked if r is not winner]
    if others:
        why += "; next: " + ", ".join(f"{r['kwargs']} {r['proxy_val_perplexity']:.4g}" for r in others)
    label_rows(rows, winner, ranked)
    metrics = {"budget": {"latency_ms": sc.latency_ms, "size_kib": sc.size_kib}, "space_from": where_from,
               "measured_on": measured_on, "device": machine,
               "latency": f"p50 of one decode step (ms per generated token) at batch 1, the profile stage's generation "
                          f"benchmark ({bench.prompts} prompts x {bench.new_tokens} tokens x {bench.repeats}), one fresh "
                          "process per artifact, the cut before training",
               "candidates": rows, "winner": {k: winner[k] for k in ("index", "kwargs", "params", "macs", "variant",
                                                                      "latency_ms", "size_bytes", "proxy_val_accuracy",
                                                                      "proxy_val_perplexity")},
               "why": why, "top_k": sc.top_k, "proxy": f"the untrained cut's perplexity on {len(val)} validation answers "
                                                       "(lower wins)", "proxy_examples": len(val),
               "timed": sum(r["latency_ms"] is not None for r in rows), "skip_margin": sc.skip_margin}
    (wd / "search.json").write_text(json.dumps(metrics, indent=2))
    ctx.log(f"  search: winner {winner['kwargs']} — {why}")
    return StageOutput({"table": "search.json"}, metrics)


__all__ = ["lm_search_space", "stage_lm_search"]
