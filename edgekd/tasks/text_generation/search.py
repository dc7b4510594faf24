"""The text-generation task's search stage: a language-model student cut from its teacher, sized to a budget of
per-token latency (p50 of one decode step at batch 1) or size (the shipped ONNX after quantization).

The space is fractions of the teacher a `pruned_llama` student is cut to (depth x FFN by default; any of its
kwargs through student.search.kwargs ranges). Latency and size do not depend on training: each candidate is cut
from the teacher (the importance of its layers, heads and neurons measured once on the training sequences),
exported with its KV cache, made into the build's quantized candidates, and decoded by the profile stage's own
generation benchmark in a fresh process. The largest that fit (top_k) are ranked by a short proxy distillation, as
Minitron retrains its candidate cuts briefly before ranking them: each is cut again and trained with the card's
answer-level losses on a seeded subset of the teacher's answers (proxy_samples, 64 unless set; proxy_epochs, 1), its
top-k logits computed once for the subset; the one with the highest next-token agreement on the teacher's validation
answers (held-out templates) wins. Each cut's scores before training are kept beside (what pruning alone leaves);
they are not the ranking: at a fifth of smollm2's layers every cut agrees with almost no answer token before
training. The distill stage cuts and trains the winner."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from edgekd.errors import ConfigError
from edgekd.pipeline import BuildContext, StageOutput, StageResult
from edgekd.tasks.search_common import (ensure_measured, fits, kwargs_ranges, label_rows, measure_space, proxy_rows,
                                        unique_within)

LM_DEPTH = [0.2, 0.3, 0.4, 0.5]  # fractions of the teacher's layers
LM_FFN = [0.25, 0.5, 1.0]  # fractions of its FFN neurons
# The timing of one cut: the profile stage's benchmark with fewer prompts and one pass (at most these), the same
# number of new tokens: a decode step costs more as the cache grows, so a shorter decode times a cut faster than the
# final check will (a cut timed at 4.9 ms per token over 16 tokens measured 5.7 ms over the profile's 32 in
# bench_lm_budget, host load doing the rest); the budget is checked again on the shipped artifact with the card's
# full settings.
SEARCH_BENCH = {"prompts": 2, "repeats": 1}
# sizes a cut grows with: what orders the skip rule; the last is the axis a bisection runs along (the default space
# varies depth and FFN: a chain is one depth, FFN growing)
ORDER = ("depth", "hidden", "heads", "kv_heads", "ffn")
PROXY_EXAMPLES = 64  # validation examples the cuts are scored on, before and after the proxy distillation
# the proxy distillation of a language model when the card does not set it (student.search.proxy_samples/_epochs,
# whose own defaults size a classifier's): one pass over 64 answers is a few minutes of a 50M cut on one core
LM_PROXY = {"samples": 64, "epochs": 1}
PROXY_TRAIN_FIELDS = ("batch_size", "lr", "weight_decay", "grad_clip", "seed")


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


def proxy_settings(sc: Any) -> tuple[int | None, int]:
    """(training answers, epochs) of the proxy distillation: the card's when it sets them, else LM_PROXY."""
    samples = sc.proxy_samples if "proxy_samples" in sc.model_fields_set else LM_PROXY["samples"]
    epochs = sc.proxy_epochs if "proxy_epochs" in sc.model_fields_set else LM_PROXY["epochs"]
    return samples, epochs


def _proxy_losses(ctx: BuildContext) -> list[dict]:
    """The card's loss terms that read the answers alone (a hidden_state term pairs one cut's layers with the
    teacher's, run online: too dear for a ranking, and skipped as the classifiers' proxy skips feature terms)."""
    from edgekd.tasks.text_generation.distill import CONTROL_LOSS, _loss_terms

    return [{"kind": k, "weight": w, **o.model_dump(mode="json")} for k, w, o in _loss_terms(ctx)
            if k != "hidden_state"] or [dict(CONTROL_LOSS)]


def _lm_search_cfg(ctx: BuildContext) -> dict:
    from edgekd.quantize.candidates import base_candidate, makers_key
    from edgekd.tasks.search_common import searching
    from edgekd.tasks.text_generation.distill import _distill_settings
    from edgekd.tasks.text_generation.export import _opset
    from edgekd.tasks.text_generation.hooks import lm_candidate_plan, vocab_reads

    if not searching(ctx):
        return {}
    cands, where = lm_search_space(ctx.recipe.student)
    names = lm_candidate_plan(ctx)[0]
    # a -vocab candidate's head keeps the tokens of the training answers and the general text (hooks.vocab_reads)
    vocab = {"vocab": vocab_reads(ctx)} if any(base_candidate(n)[1] for n in names) else {}
    return {"student": ctx.recipe.student.model_dump(mode="json"), "space": cands, "space_from": where, **vocab,
            "candidates": names, **makers_key(), "options": ctx.recipe.quantize.options, "opset": _opset(ctx),
            "bench": _search_bench(ctx).model_dump(mode="json"), "max_length": ctx.recipe.data.max_length,
            "proxy_examples": PROXY_EXAMPLES,
            # what the proxy distillation reads of the card (not distill.epochs: the winner's training is distill's)
            "proxy": {"settings": proxy_settings(ctx.recipe.student.search), "losses": _proxy_losses(ctx),
                      "top_k": _distill_settings(ctx)["top_k"],
                      "train": {k: getattr(ctx.recipe.distill, k) for k in PROXY_TRAIN_FIELDS}}}


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
    from edgekd.llm.models import answer_ids, linear_macs, load_causal_lm
    from edgekd.llm.prune import calibration_batches, cut, importance, parse_options, plan
    from edgekd.profile.spec import GenerationSpec
    from edgekd.quantize.candidates import base_candidate, make_candidate
    from edgekd.llm.onnx_gen import evaluate_onnx, export_with_past
    from edgekd.tasks.text_generation.data import _teacher_info, read_answers
    from edgekd.tasks.text_generation.export import _opset
    from edgekd.tasks.text_generation.hooks import (_bench_row, _profile_prompts, lm_candidate_plan, training_vocab_of,
                                                    trim_student_head)

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
    # a -vocab candidate is timed as the quantize stage makes it: the cut's FP32 graph with its head over the tokens
    # the student trains on, then the base candidate of that graph (edgekd/llm/vocab.py)
    keep = training_vocab_of(ctx, tok, train, [end_id, *stops]) if any(base_candidate(n)[1] for n in names) else None
    # where the generation benchmark runs, as the profile stage labels it: the device where the target's runtime
    # runs here (cpu; cuda on a GPU host), else this host's CPU as a labelled proxy
    measured_on, machine = bench.profiled_on, bench.profile_device.name
    def cut_of(kw: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        p = plan(teacher, parse_options(kw), imp)
        return cut(teacher, p), p

    def not_timed(i: int, kw: dict[str, Any], why: str, fit: bool) -> dict[str, Any]:
        model, _ = cut_of(kw)
        return {"index": i, "kwargs": kw, "params": sum(t.numel() for t in model.parameters()),
                "macs": linear_macs(model)["total"],
                "variants": [], "variant": None, "runtime": None, "latency_ms": None, "size_bytes": None,
                "min_latency_ms": None, "min_size_bytes": None, "fits": fit, "proxy_val_accuracy": None,
                "cut_val_accuracy": None, "skipped": why}

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
                base, trimmed = base_candidate(name)
                try:
                    src = fp32
                    if trimmed:  # the cut's graph as the quantize stage will trim the winner's
                        src = d / "fp32-vocab.onnx"
                        if not src.is_file():
                            trim_student_head(fp32, src, keep, val)
                    make_candidate(base, src, path, None, dict(ctx.recipe.quantize.options),
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
            as_cut = S.evaluate(model, val, pad)  # what the cut alone keeps: no training
        shutil.rmtree(d, ignore_errors=True)  # hundreds of MB per cut of a real teacher: the table is what stays
        return {"index": i, "kwargs": kw, "params": params, "macs": linear_macs(model)["total"], "variants": variants,
                "variant": best["variant"], "runtime": "onnxruntime", "latency_ms": best["p50_ms"],
                "size_bytes": best["size_bytes"], "min_latency_ms": min(v["p50_ms"] for v in timed),
                "min_size_bytes": min(v["size_bytes"] for v in timed), "fits": any(v["fits"] for v in timed),
                "cut_val_accuracy": float(as_cut["agreement"]), "cut_val_perplexity": float(as_cut["perplexity"]),
                "proxy_val_accuracy": None, "proxy_val_perplexity": None,
                "layers": len(p["layers"]), "hidden": p["hidden"], "intermediate": p["intermediate"]}

    rows = measure_space(cands, sc, _order(student_card), measure, not_timed)
    fitting, ranked = ensure_measured(rows, cands, sc, f"{machine} ({measured_on})", measure)
    for r in rows:
        r["measured_on"] = measured_on if r["latency_ms"] is not None else None
    proxy = _proxy_distill(ctx, ranked, cut_of, train, val, pad, teacher, wd)
    # agreement after the proxy training (the report's accuracy of a language model); perplexity breaks ties (two
    # short-trained cuts may agree on the same tokens), then the faster
    winner = max(ranked, key=lambda r: (r["proxy_val_accuracy"], -r["proxy_val_perplexity"], -r["latency_ms"]))
    why = (f"highest next-token agreement with the teacher's validation answers after the proxy distillation "
           f"({100 * winner['proxy_val_accuracy']:.2f}%, perplexity {winner['proxy_val_perplexity']:.4g}, on {len(val)} "
           f"answers; {proxy['epochs']} epoch(s) on {proxy['samples']} training answers) among the {len(ranked)} largest "
           f"of {len(fitting)} fitting cuts; {winner['latency_ms']:.4g} ms per token, "
           f"{winner['size_bytes'] / 2**20:.4g} MiB as {winner['variant']}")
    others = [r for r in ranked if r is not winner]
    if others:
        why += "; next: " + ", ".join(f"{r['kwargs']} {100 * r['proxy_val_accuracy']:.2f}% "
                                      f"(perplexity {r['proxy_val_perplexity']:.4g})" for r in others)
    label_rows(rows, winner, ranked)
    metrics = {"budget": {"latency_ms": sc.latency_ms, "size_kib": sc.size_kib}, "space_from": where_from,
               "measured_on": measured_on, "device": machine,
               "latency": f"p50 of one decode step (ms per generated token) at batch 1, the profile stage's generation "
                          f"benchmark ({bench.prompts} prompts x {bench.new_tokens} tokens x {bench.repeats}), one fresh "
                          "process per artifact, the cut before training",
               "candidates": rows, "winner": {k: winner[k] for k in ("index", "kwargs", "params", "macs", "variant",
                                                                      "latency_ms", "size_bytes", "proxy_val_accuracy",
                                                                      "proxy_val_perplexity", "cut_val_accuracy",
                                                                      "cut_val_perplexity")},
               "why": why, "top_k": sc.top_k,
               "proxy": (f"next-token agreement on {len(val)} validation answers after {proxy['epochs']} epoch(s) of "
                         f"distillation on {proxy['samples']} training answers (higher wins); cut_val_*: the same "
                         "before training"),
               "proxy_examples": len(val), "proxy_epochs": proxy["epochs"], "proxy_samples": proxy["samples"],
               "proxy_losses": proxy["losses"], "proxy_seconds": proxy["seconds"],
               "timed": sum(r["latency_ms"] is not None for r in rows), "skip_margin": sc.skip_margin}
    (wd / "search.json").write_text(json.dumps(metrics, indent=2))
    ctx.log(f"  search: winner {winner['kwargs']} — {why}")
    return StageOutput({"table": "search.json"}, metrics)


def _proxy_distill(ctx: BuildContext, ranked: list[dict[str, Any]], cut_of: Any, train: list, val: list, pad: int,
                   teacher: Any, wd: Path) -> dict[str, Any]:
    """Cut each ranked candidate again and distil it briefly: the card's answer-level losses, a seeded subset of the
    training answers (the teacher's top-k on them computed once), the card's optimiser, batch and seed, in this
    process even under torchrun. Each row gains proxy_val_accuracy/_perplexity (its best epoch on `val`)."""
    from edgekd.distill.cache import TopKSequenceCache
    from edgekd.distill.losses import build_losses
    from edgekd.llm import sequences as S
    from edgekd.tasks.text_generation.distill import _distill_settings

    samples, epochs = proxy_settings(ctx.recipe.student.search)
    dc = ctx.recipe.distill
    sub = [train[int(i)] for i in proxy_rows(len(train), samples, dc.seed)]
    n = len(sub)
    losses = _proxy_losses(ctx)
    t0 = time.perf_counter()
    cache = None
    if any(lo["kind"] == "soft_label" for lo in losses):
        cache = TopKSequenceCache(wd / "proxy-logits").write(S.teacher_rows(teacher, sub, pad), S.answer_rows(sub),
                                                             _distill_settings(ctx)["top_k"])
    cfg = dc.model_copy(update={"epochs": epochs, "patience": None})
    for r in ranked:
        model, _ = cut_of(r["kwargs"])
        t1 = time.perf_counter()
        res = S.distill(model, sub, val, build_losses(losses, model, None, None), cfg, pad, cache=cache,
                        progress=ctx.progress, description=f"proxy {r['index']:02d}", one_process=True)
        best = res["history"][res["best_epoch"] - 1]
        r["proxy_val_accuracy"] = float(best["val_agreement"])
        r["proxy_val_perplexity"] = float(best["val_perplexity"])
        r["proxy_seconds"] = round(time.perf_counter() - t1, 3)
        r["proxy_samples"], r["proxy_epochs"] = n, epochs
    shutil.rmtree(wd / "proxy-logits", ignore_errors=True)
    return {"samples": n, "epochs": epochs, "losses": losses, "seconds": round(time.perf_counter() - t0, 3)}


__all__ = ["lm_search_space", "proxy_settings", "stage_lm_search"]
