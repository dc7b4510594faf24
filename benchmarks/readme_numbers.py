"""Regenerate README.md's result tables from benchmarks/results/*.json (`make readme-numbers`).

Every figure between a pair of markers

    <!-- readme-numbers:NAME -->
    ...generated...
    <!-- /readme-numbers:NAME -->

is written by this script from one results file, with the file's name, date and host, so the
README can only quote what a benchmark measured. `--check` rewrites nothing and exits 1 when the
README and the results disagree (tests/test_readme_numbers.py runs it). It never runs a
benchmark: refreshing the numbers means re-running benchmarks/bench_*.py first.
"""
from __future__ import annotations

import argparse
import difflib
import functools
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"

_BLOCK = re.compile(r"(<!-- readme-numbers:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /readme-numbers:(?P=name) -->)",
                    re.DOTALL)


def _load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _x(x: float) -> str:
    return f"{x:.1f}×"


def _ms(x: float) -> str:
    return f"{x:.3f} ms" if x < 1 else f"{x:.2f} ms"


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB" if n < 10 * 2**20 else f"{n / 2**20:,.1f} MiB"


def _source(name: str, d: dict[str, Any], extra: str = "") -> str:
    threads = d.get("threads")
    where = f"host `{d.get('host')}`, {d.get('cpu_count')} cores" + (f", {threads} thread(s)" if threads else "")
    return f"_Source: `benchmarks/results/{name}` ({d.get('created', '?')[:10]}; measured on {where}{extra})._\n"


def fashion_cnn() -> str:
    d = _load("spine.json")
    h = d["headline"]
    lines = [
        "| | teacher | student (selected: `{}`) | ratio |".format(h["selected"]),
        "|---|---|---|---|",
        f"| test accuracy | {_pct(h['teacher_accuracy'])} | {_pct(h['student_accuracy'])} | "
        f"{_pct(h['accuracy_retention'])} retained |",
        f"| latency p50, batch 1, 1 thread | {_ms(h['teacher_p50_ms_torch_b1_1thread'])} (PyTorch) | "
        f"{_ms(h['student_p50_ms_ort_b1_1thread'])} (onnxruntime) | {_x(h['speedup_p50'])} faster |",
        f"| parameters | | | {_x(h['params_ratio'])} fewer |",
        f"| size on disk | | | {_x(h['size_ratio'])} smaller |",
        f"| peak RSS | | | {_x(h['peak_rss_ratio'])} less |",
        f"| energy / inference ({h['energy_method']}, an estimate) | | | {_x(h['energy_ratio'])} less |",
        "",
        "| candidate | test accuracy | size | p50 | status |",
        "|---|---|---|---|---|",
    ]
    for c in d["candidates"]:
        lines.append(f"| `{c['variant']}` | {_pct(c['accuracy'])} | {_kib(c['size_bytes'])} | {_ms(c['p50_ms'])} | "
                     f"{c['status']} |")
    if h.get("objective"):
        lines += ["", f"Selected by the card's `quantize.objective: {h['objective']}` (see \"Quantization is measured, "
                      "not assumed\" below)."]
    kd = d.get("kd_vs_labels_only") or {}
    if kd:
        lines += ["", f"Distillation vs the same student trained on labels only: {_pct(kd['kd_student_fp32_accuracy'])} "
                      f"vs {_pct(kd['labels_only_student_fp32_accuracy'])} ({kd['gain_points']:+.2f} points)."]
    wall = d.get("full_build_s")
    if wall and d.get("full_build_teacher_origin") == "shipped":
        lines += ["", f"Full build (`edgekd build --target cpu`, the teacher from its shipped weights, measured not "
                      f"trained): {wall / 60:.1f} min."]
    elif wall:
        lines += ["", f"Full build with the teacher cached: {wall / 60:.1f} min; training the teacher once: "
                      f"{d['teacher_training_s_one_time'] / 60:.0f} min."]
    return "\n".join(lines) + "\n\n" + _source("spine.json", d)


def minilm_sentiment() -> str:
    d = _load("text.json")
    c = d["comparison"]
    sweep = d["sequence_sweep"]
    sel = sweep["selected"]
    lines = [
        f"| | teacher (MiniLM-L6) | student (selected: `{sel}`) | ratio |",
        "|---|---|---|---|",
        f"| test accuracy | {_pct(d['teacher']['test_accuracy'])} | {_pct(d['student']['test_accuracy'])} | "
        f"{_pct(c['accuracy_retention'])} retained |",
        f"| parameters | {d['teacher']['params'] / 1e6:.1f}M | {d['student']['params'] / 1e6:.1f}M | "
        f"{_x(c['params_ratio'])} fewer |",
        f"| size on disk | | | {_x(c['size_ratio'])} smaller |",
    ]
    for length, models in sorted(sweep["lengths"].items(), key=lambda kv: int(kv[0])):
        m = models[f"student/{sel}"]
        lines.append(f"| latency p50, sequence {length}, batch 1 | {_ms(models['teacher/fp32-torch']['p50_ms'])} (PyTorch), "
                     f"{_ms(models['teacher/fp32']['p50_ms'])} (ONNX) | {_ms(m['p50_ms'])} | "
                     f"{_x(m['speedup_vs_teacher_torch'])} vs PyTorch, {_x(m['speedup_vs_teacher_onnx'])} vs ONNX |")
    minutes = sum(d["stage_seconds"].values()) / 60
    lines += ["", f"Build time (sum of stage times, teacher trained in it): {minutes:.0f} min."]
    return "\n".join(lines) + "\n\n" + _source("text.json", d)


def byo() -> str:
    """Bring your own model: a torchvision ResNet-18 the user trained, distilled for cpu and mobile (byo.json)."""
    d = _load_opt("byo.json")
    if d is None:
        return "_No measurement yet: run `python benchmarks/bench_byo.py`._\n"
    t, sz = d["teacher_training"], d["sizes"]
    lines = [
        f"A torchvision ResNet-18 ({t['params'] / 1e6:.1f}M parameters) trained by the user from random weights "
        f"({t['epochs']} epochs, {sz['train_images']:,} Fashion-MNIST PNGs of 28×28 in class folders; no pretrained "
        f"weights offline) and given to `edgekd init` as `torchvision:resnet18` + `teacher.pt`; the card it wrote (the "
        f"default zoo student, widened) built " + (f"with `{'`, `'.join('--set ' + x for x in d['sets'])}`" if d.get("sets") else "unchanged")
        + f". Test split: {sz['test_images']:,} images.",
        "",
        "| target | teacher accuracy | student (selected) | student accuracy | retained | p50 teacher (PyTorch) → student | "
        "faster | smaller | fewer parameters | build time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for target, b in d["builds"].items():
        sel = b["selected"].split("/", 1)[-1]
        on = "this host" if b.get("latency_measured_on") in ("host", "device") else b.get("latency_measured_on")
        lines.append(f"| `{target}` | {_pct(b['teacher_accuracy'])} | `{sel}` ({b['student_format']}, {b['student_runtime']}, {on}) | "
                     f"{_pct(b['student_accuracy'])} | {_pct(b['accuracy_retention'])} | "
                     f"{_ms(b['teacher_p50_ms_torch'])} → {_ms(b['student_p50_ms'])} | {_x(b['speedup_p50'])} | "
                     f"{_x(b['size_ratio'])} | {_x(b['params_ratio'])} | {b['build_wall_s'] / 60:.1f} min"
                     + (f" (reused {', '.join(b['reused_stages'])})" if b.get("reused_stages") else "") + " |")
    gains = [f"`{tg}` {b['kd_gain_points']:+.2f} pt" for tg, b in d["builds"].items() if b.get("kd_gain_points") is not None]
    if gains:
        lines += ["", "Distillation vs the same student trained on labels only (test accuracy): " + ", ".join(gains) + "."]
    g = d["goals"]
    missed = [f"`{tg}`: {k.replace('_', ' ')}" for tg, m in d["goals_met"].items() for k, ok in m.items() if ok is False]
    lines += ["", f"Goals: ≥ {_pct(g['accuracy_retention_min'])} retained, ≥ {_x(g['speedup_vs_teacher_torch_min'])} "
                  f"faster than the teacher in PyTorch, build ≤ {g['build_minutes_max']:.0f} min on 2 cores: "
                  + ("all met." if not missed else "missed: " + ", ".join(missed) + ".")]
    loads = [b.get("host_load_1min", {}).get("after") for b in d["builds"].values()]
    extra = f", {d['host_cpu']}" if d.get("host_cpu") else ""
    busy = False
    if any(loads):
        top = max(x for x in loads if x is not None)
        busy = top > 1.5 * (d.get("cpu_count") or 2)  # more runnable jobs than cores: others took CPU time
        extra += f"; 1-min load average up to {top:.1f} during the builds"
    if d.get("notes"):
        n = len(d["notes"])
        extra += f"; {n} note{'s' if n > 1 else ''} in the file on how it ran" + (
            " (a shared, busy host: wall times are upper bounds)" if busy else "")
    return "\n".join(lines) + "\n\n" + _source("byo.json", d, extra)


KD_HEADER = ["recipe", "setting", "metric (test split)", "seeds", "KD student", "labels-only control", "KD − control",
             "source"]
KD_VARIANTS = {"recipe": "as shipped",
               "consistent": "consistent teaching: augmented inputs, teacher logits of the same views"}


def _load_opt(name: str) -> dict[str, Any] | None:
    p = RESULTS / name
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


def _pct2(x: Any) -> str:
    return f"{100 * x:.2f}%" if isinstance(x, (int, float)) else "—"


def _ci(v: dict, key: str = "agreement") -> str:
    lo, hi = v[f"{key}_ci95"]
    return f"{_pct(v[key])} [{_pct(lo)}, {_pct(hi)}]"


def _pts(x: Any) -> str:
    return f"{x:+.2f} pt" if isinstance(x, (int, float)) else "—"


def _gain(values: list[float]) -> str:
    """Mean gain, and the per-seed range when there are several seeds (a mean hides a losing seed)."""
    if not values:
        return "—"
    mean = sum(values) / len(values)
    return _pts(mean) if len(values) == 1 else f"{_pts(mean)} ({min(values):+.2f} … {max(values):+.2f})"


@functools.lru_cache(maxsize=None)
def _card(recipe: str) -> dict[str, Any]:
    """A shipped recipe card as written (models/RECIPE.yaml), {} when there is no such card."""
    import yaml

    card = ROOT / "models" / f"{recipe}.yaml"
    return yaml.safe_load(card.read_text()) if card.is_file() else {}


def _task(recipe: str) -> str | None:
    """The `task` of a shipped recipe card, None when there is no such card."""
    return _card(recipe).get("task")


def _student_diff(recipe: str, measured: dict[str, Any] | None) -> list[str]:
    """The student an entry was measured with, as overrides of the card's student now (empty when the same, or
    when the entry does not record it): a card that changed its student must not relabel old rows "as shipped"."""
    card = _card(recipe)
    if not measured or not card:
        return []
    now = card.get("student") or {}
    if measured.get("arch") != now.get("arch"):
        return [f"student.arch={measured.get('arch')}"]
    kw_now, kw = now.get("kwargs") or {}, measured.get("kwargs") or {}
    return [f"student.kwargs.{k}={kw.get(k)}" for k in sorted(set(kw) | set(kw_now)) if kw.get(k) != kw_now.get(k)]


def kd_rows() -> list[list[str]]:
    """One row per measured KD-vs-labels-only comparison, losses included: the build's own control arm
    (distill.json `control`, from `bench_distill.py --parts control`), the engine ablation and the
    low-label runs (distill.json), the one-seed spine run, the text-generation control (llm.json), and
    recipes without a control measurement (said so, not left out)."""
    out: list[list[str]] = []
    distill = _load_opt("distill.json") or {}
    for key, entry in sorted((distill.get("control") or {}).items()):
        recipe = entry.get("recipe", key)
        for name, v in entry.get("variants", {}).items():
            runs = [r for r in v.get("runs", []) if "error" not in r]
            parts = []
            views = [o.split("=", 1)[1] for o in v.get("overrides", []) if o.startswith("distill.teacher_cache.views=")]
            if entry.get("train_size"):
                noun = "snippets" if _task(recipe) == "text-classification" else "images"
                parts.append(f"{entry['train_size']:,} training {noun}")
            if entry.get("epochs"):
                parts.append(f"{entry['epochs']} epochs")
            parts += list(entry.get("extra_sets") or [])
            parts += [x for x in _student_diff(recipe, entry.get("student")) if x not in parts]
            if name == "recipe" and parts:  # not as shipped: the overrides are the setting
                setting = "the card, with " + ", ".join(parts)
            else:
                setting = KD_VARIANTS.get(name, name) + (f" ({views[0]} cached views)" if views else "")
                setting += "".join(f", {x}" for x in parts)
            if entry.get("quick"):
                setting += ", --quick"
            out.append([recipe, setting, "accuracy, fp32 ONNX in onnxruntime", str(len(runs)),
                        _pct2(v["kd_accuracy"]["mean"]), _pct2(v["control_accuracy"]["mean"]),
                        _gain([r["kd_gain_points"] for r in runs]),
                        f"distill.json control ({v.get('created', distill.get('created', ''))[:10]})"])
    ab = distill.get("ablation")
    if ab and "labels_only" in ab.get("rows", {}) and "kd_soft_label" in ab["rows"]:
        lo, kd = ab["rows"]["labels_only"]["test_accuracy"], ab["rows"]["kd_soft_label"]["test_accuracy"]
        gains = [100 * (a - b) for a, b in zip(kd["values"], lo["values"])]  # paired by distill.seed
        size = f"{ab['train_size']:,} training images" if ab.get("train_size") else "full data"
        out.append([ab["recipe"], f"engine ablation: {size}, {ab['epochs']} epochs", "accuracy, fp32 PyTorch",
                    str(kd["n"]), _pct2(kd["mean"]), _pct2(lo["mean"]), _gain(gains),
                    f"distill.json ablation ({ab.get('created', distill.get('created', ''))[:10]})"])
    low = distill.get("lowdata")
    if low and low.get("kd") and low.get("labels_only"):
        kd_e, lo_e = low["kd"]["test_error"], low["labels_only"]["test_error"]
        gains = [100 * (b - a) for a, b in zip(kd_e["values"], lo_e["values"])]  # error down = accuracy up
        out.append([low["recipe"], f"{int(100 * low['label_fraction'])}% of the labels", "accuracy, fp32 PyTorch",
                    str(kd_e["n"]), _pct2(1 - kd_e["mean"]), _pct2(1 - lo_e["mean"]), _gain(gains),
                    f"distill.json lowdata ({low.get('created', distill.get('created', ''))[:10]})"])
    spine = _load_opt("spine.json")
    if spine and spine.get("kd_vs_labels_only"):
        k = spine["kd_vs_labels_only"]
        out.append(["fashion-cnn", "the full build's own control (spine benchmark)", "accuracy, fp32 ONNX in onnxruntime", "1",
                    _pct2(k["kd_student_fp32_accuracy"]), _pct2(k["labels_only_student_fp32_accuracy"]),
                    _pts(k["gain_points"]), f"spine.json ({spine.get('created', '')[:10]})"])
    text = _load_opt("text.json")
    if text is not None:
        out.append([text.get("recipe", "minilm-sentiment"), "as shipped", "accuracy, fp32 PyTorch", "1",
                    _pct2((text.get("student") or {}).get("test_accuracy")), "not measured", "—",
                    f"text.json ({text.get('created', '')[:10]}): that build ran without a control"])
    llm = _load_opt("llm.json")
    if llm and llm.get("seqkd_vs_control"):
        c = llm["seqkd_vs_control"]
        student = llm.get("student_arch")
        kind = "student pruned from the teacher" if llm.get("pruning") else "tiny Llama"
        arch = f"{student.get('layers')}-layer {kind}, " if isinstance(student, dict) and student.get("layers") else ""
        control = ("same student on the teacher's answers, hard labels only" if llm.get("held_out")
                   else "same student on the prompts' raw text")  # the control before issue 28
        out.append([llm.get("recipe", "smollm2-seqkd"), f"{arch}control: {control}",
                    "next-token agreement with the teacher's answers, PyTorch", "1",
                    _pct2(c["student_test"]["agreement"]), _pct2(c["control_test"]["agreement"]),
                    _pts(c["agreement_gain_points"]), f"llm.json ({(llm.get('build_created') or llm.get('created', ''))[:10]})"])
    return out


def kd_gain() -> str:
    """The 'What distillation buys' table (each row names its own results file)."""
    lines = ["| " + " | ".join(KD_HEADER) + " |", "|" + "---|" * len(KD_HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in kd_rows()]
    return "\n".join(lines) + "\n"


def llm_students() -> str:
    """smollm2-seqkd: students at one token budget (bench_llm.py --compare-students), goals met or missed."""
    d = _load("llm.json")
    sc = d["student_comparison"]
    st, t = sc["settings"], sc["teacher"]
    t_ort = t.get("onnxruntime") or {}
    lines = ["| model | parameters | agreement with the teacher's next token | perplexity of the teacher's answers "
             "| perplexity of natural text | tokens/s fp32 → int8-dynamic (onnxruntime) | answer tokens trained on |",
             "|---|---|---|---|---|---|---|",
             f"| teacher SmolLM2-135M-Instruct | | {_pct(t['test']['agreement'])} | {t['test']['perplexity']:.2f} "
             f"| {t['natural_text']['perplexity']:.0f} | {t_ort.get('fp32', {}).get('tokens_per_s', 0):.0f} → "
             f"{t_ort.get('int8-dynamic', {}).get('tokens_per_s', 0):.0f} | |"]
    for name, s in sc["students"].items():
        o = s.get("onnxruntime") or {}
        curve = " → ".join(_pct(c["val_agreement"]) for c in s["curve"][1:])
        lines.append(f"| `{name}` | {s['params'] / 1e6:.1f}M | {_pct(s['test']['agreement'])} "
                     f"(validation per epoch: {curve}) | {s['test']['perplexity']:.1f} | {s['natural_text']['perplexity']:.0f} "
                     f"| {o.get('fp32', {}).get('tokens_per_s', 0):.0f} → {o.get('int8-dynamic', {}).get('tokens_per_s', 0):.0f} "
                     f"| {s['curve'][-1]['train_answer_tokens']:,} |")
    goals = []
    for name, g in sc.get("goals", {}).items():
        bits = [f"agreement {_pct(g['agreement']['value'])} (goal {_pct(g['agreement']['goal'])})",
                f"perplexity {g['perplexity_ratio']['value']:.1f}× the teacher's (goal ≤ {g['perplexity_ratio']['goal']:.0f}×)",
                f"int8 tokens/s {g['tokens_per_s_ratio_int8_vs_teacher_int8-dynamic_onnx']['value']:.1f}× the teacher's int8 "
                f"(goal ≥ {g['tokens_per_s_ratio_int8_vs_teacher_int8-dynamic_onnx']['goal']:.0f}×)"]
        met = [k for k, v in g.items() if v["met"]]
        goals.append(f"`{name}`: " + "; ".join(bits) + f" — {len(met)} of {len(g)} goals met")
    lines += ["", f"{st['train_examples']} training prompts of `{st['prompts']}`, {st['epochs']} epochs, {st['losses']}, "
                  f"{st['threads']} thread; held-out {st['test_examples']} prompts; natural text: Rotten Tomatoes snippets.",
              "", "Goals: " + ". ".join(goals) + "."]
    best = max(sc["students"].values(), key=lambda e: e["test"]["agreement"])
    steps = [b["val_agreement"] - a["val_agreement"] for a, b in zip(best["curve"][1:], best["curve"][2:])]
    tokens = best["curve"][-1]["train_answer_tokens"]
    rate = best.get("train_answer_tokens_per_s")
    if steps and rate:
        lines += ["", f"The gap, as the curve shows it: the best student's held-out agreement gained "
                      f"{' then '.join(f'{100 * x:+.1f}' for x in steps)} points per further epoch over the same "
                      f"{st['train_examples']} prompts, so more distinct teacher answers, not more passes, is what it "
                      f"needs. It trained at {rate:.0f} answer tokens/s here ({st['threads']} thread); ten times the "
                      f"answer tokens ({10 * tokens:,}) would take about {10 * tokens / rate / 3600:.1f} h of training "
                      f"on this host (an estimate from that rate), before the teacher answers the extra prompts. That "
                      f"is a run for a GPU host (the teacher generating thousands of answers in batches, the student "
                      f"training on them); it has not been measured here, for lack of one."]
    notes = "".join(f"; {n}" for n in sc.get("notes", []))
    return "\n".join(lines) + "\n\n" + _source("llm.json", {**d, "created": sc["created"], "threads": st["threads"]}, notes)


def _distill_vs_quantize(dq: dict) -> str:
    """One paragraph: the shipped student against the quantized teacher on one runtime (bench_llm.py --extras)."""
    s, rows = dq["student"], dq["quantized_teacher"]
    front = []
    for axis, key, by in (("tokens/s", "student_on_pareto_front_speed", "dominated_on_speed_by"),
                          ("size", "student_on_pareto_front_size", "dominated_on_size_by")):
        front.append(f"on the Pareto front of agreement vs {axis}" if dq[key] else
                     f"**not** on the front of agreement vs {axis} (beaten by {', '.join(dq[by])})")
    scored = [r for r in rows if r.get("agreement") is not None]
    text = (f"Distilling vs quantizing the teacher (onnxruntime on this host; agreement with the teacher's answers on "
            f"the test prompts for all): {s['model']} ({_pct(s['agreement'])}, {s['tokens_per_s']:.0f} tokens/s, "
            f"{s['size_bytes'] / 2**20:.0f} MiB) is " + " and ".join(front) + ". "
            + "; ".join(f"{r['model']}: {_pct(r['agreement']) if r.get('agreement') is not None else '—'}, "
                        f"{r['tokens_per_s']:.0f} tokens/s, {r['size_bytes'] / 2**20:.0f} MiB" for r in rows) + ". ")
    faster = dq["student_speedup_vs_fastest_teacher"] > 1
    smaller = dq["student_size_fraction_of_smallest_teacher"] < 1
    better = scored and all(r["agreement"] <= s["agreement"] for r in scored)
    if faster and smaller and not better:
        text += (f"No quantized teacher reaches the student's speed ({dq['student_speedup_vs_fastest_teacher']:.1f}× the "
                 f"fastest) or size ({dq['student_size_fraction_of_smallest_teacher']:.2f}× the smallest), and every one "
                 "keeps more agreement: distilling buys speed and size, quantizing keeps quality.")
    elif better:
        text += "The student matches or beats every quantized teacher on agreement too."
    else:
        text += "Where a quantized teacher is as fast or as small, it is the better choice on this runtime."
    return text


def _decode_compute(dc: dict, goals: dict, models: list[dict] | None = None) -> str:
    """Why the int8 tokens/s ratio is what it is: the multiply-accumulates per decoded token of both models (read off
    their configs by the build: a model of the compute), the shared head's share, and what the 3× goal would need
    against the teacher's fastest INT8 row (int8-dynamic, int8-weight: whichever the build timed faster). A selected
    -vocab candidate (its head over the tokens seen in training) is compared at its own compute."""
    t, s = dc["teacher"], dc["student"]
    text = dc["sentence"]  # the build report's own line
    # against the teacher's fastest INT8 on the same runtime (the smallest ratio among its int8 rows)
    int8 = {k[len("tokens_per_s_ratio_vs_teacher_"):-len("-onnx")]: v for k, v in goals.items()
            if k.startswith("tokens_per_s_ratio_vs_teacher_int8") and k.endswith("-onnx")}
    name = min(int8, key=lambda k: int8[k]["value"]) if int8 else None
    g = int8.get(name)
    if g:
        sel = next((m for m in models or [] if m.get("selected")), None)
        macs = (sel or {}).get("macs_per_token") or s["total"]
        ratio = t["total"] / macs
        if macs != s["total"]:
            text += (f" The shipped `{sel['model'].split('/', 1)[1]}` keeps its head over the tokens seen in training "
                     f"only: {macs / 1e6:.1f}M multiply-accumulates per token, {ratio:.2f}x fewer than the teacher's.")
        need = t["total"] / g["goal"]
        text += (f" The measured tokens/s of the shipped student against the teacher's {name} (its fastest INT8), "
                 f"{g['value']:.2f}×, is "
                 + ("close to" if abs(g["value"] / ratio - 1) < 0.15 else "above" if g["value"] > ratio else "below")
                 + " that compute ratio; ")
        if macs <= need:
            text += (f"by the compute alone it would reach {g['goal']:.0f}× (at most {need / 1e6:.1f}M per token): the rest "
                     "of the time per token is work this model of the compute does not count (onnxruntime's other "
                     "operators per layer, the decode loop), which the teacher's layers pay too.")
        else:
            text += (f"{g['goal']:.0f}× would take a student of about {need / 1e6:.1f}M multiply-accumulates per token, "
                     f"{max(need - s['head'], 0) / 1e6:.1f}M of them beside the head (the student's layers do "
                     f"{(s['total'] - s['head']) / 1e6:.1f}M now) — fewer layers, a narrower residual width (which "
                     "shrinks the head too), or a head over fewer tokens (the -vocab candidates).")
    return text


def _vocab_line(models: list[dict] | None = None, vocab_head: dict | None = None, build_created: str | None = None
                ) -> str | None:
    """What a head over the tokens seen in training keeps (bench_lm_vocab.py on a build), when measured; and why a
    shipped -vocab candidate's perplexity is what it is."""
    v = _load_opt("lm_vocab.json")
    if v is None:
        return None
    whole = next(r for r in v["rows"] if r["kept"] == v["vocab"])
    seen = max((r for r in v["rows"] if r["kept"] < v["vocab"]), key=lambda r: r["kept"])
    small = min(v["rows"], key=lambda r: r["kept"])
    part = lambda r: (f"{_pct(r['agreement']['held-out templates'])} held-out-template agreement, "  # noqa: E731
                      f"{_pct(r['agreement']['natural prompts'])} natural-prompt, "
                      f"{r['student_macs'] / 1e6:.1f}M multiply-accumulates per token ({r['macs_ratio_vs_teacher']:.2f}x "
                      "fewer than the teacher's)")
    # lm_vocab.json measured an earlier build of the card when it is older than the build the block shows
    which = (f"the card's build before this one (lm_vocab.json, {v['created'][:10]})"
             if build_created and v.get("created", "") < build_created else "the card's build")
    return (f"A head over fewer tokens (`benchmarks/bench_lm_vocab.py` on {which}, the trained student's head "
            f"trimmed after training): the {seen['kept']:,} of {v['vocab']:,} tokens seen in training cover "
            f"{_pct(seen['coverage']['held-out templates'])} of the teacher's held-out-template answer tokens and give "
            f"{part(seen)}, against {part(whole)} with the whole head; the {small['kept']:,} most frequent alone give "
            f"{part(small)}." + _vocab_perplexity(models or [], seen, vocab_head))


def _vocab_perplexity(models: list[dict], seen: dict, vocab_head: dict | None = None) -> str:
    sel = next((m for m in models if m.get("selected")), None)
    fp32 = next((m for m in models if m["model"] == "student/fp32"), None)
    if not sel or not fp32 or not sel["model"].endswith("-vocab") or sel.get("perplexity") is None:
        return ""
    head = vocab_head or {}
    how = (f"the dropped tokens together holding {_pct(head['dropped_mass'])} of the probability (the share of validation "
           "answer tokens outside the kept set)" if head.get("dropped_mass") is not None else
           "each less likely than any kept token (this build's floor: the smallest kept logit minus the log of the dropped "
           "count, far below what their share says; builds since give the dropped tokens together the share of "
           "validation answer tokens outside the kept set)")
    return (f" The shipped `{sel['model'].split('/', 1)[1]}`'s perplexity of the teacher's answers ({sel['perplexity']:.0f}, "
            f"the FP32 student's {fp32['perplexity']:.1f}) counts the {_pct(1 - seen['coverage']['held-out templates'])} "
            f"of held-out answer tokens its head cannot generate, {how}: the selection reads agreement, and it trades "
            "those tokens for speed.")


def _same_split(a: dict, b: dict) -> bool:
    """Two builds' generation records hold out the same prompts: as many per split, the same held-out templates."""
    keys = ("kind", "val_templates", "test_templates")
    return (a.get("prompts") == b.get("prompts") and a.get("splits") == b.get("splits")
            and all((a.get("split") or {}).get(k) == (b.get("split") or {}).get(k) for k in keys))


def _against_previous_build(d: dict, prev: dict) -> str:
    """The card's build against the one before it on the same prompts and split (llm.json's superseded[0]): what
    its recipe change bought on each held-out set."""
    def recipe(x: dict) -> str:
        ts = (x.get("generation") or {}).get("train_samples")
        return (f"{ts['per_prompt'] if ts else 1} answer{'s' if ts else ''} per training prompt, "
                f"{x['losses']['epochs']} epochs")

    h, ph = d["held_out"]["student"], prev["held_out"]["student"]
    bits = [f"{k} {_pct(ph[k]['agreement'])} → {_pct(h[k]['agreement'])} ({_pts(100 * (h[k]['agreement'] - ph[k]['agreement']))})"
            for k in ("held-out-template", "natural-prompts", "in-template") if k in h and k in ph]
    r0 = ((prev.get("held_out_goals") or {}).get("natural_text_perplexity_ratio") or {}).get("value")
    r1 = ((d.get("held_out_goals") or {}).get("natural_text_perplexity_ratio") or {}).get("value")
    if r0 and r1:
        bits.append(f"natural-text perplexity ratio {r0:.1f}× → {r1:.1f}×")
    return (f"Against the card's build before it ({prev['created'][:10]}: {recipe(prev)}; the same prompts and split), "
            f"this build ({recipe(d)}): " + ", ".join(bits) + " — the student's agreement with the teacher's next token.")


def llm_build() -> str:
    """smollm2-seqkd: the card's own full build (bench_llm.py --extras): every model it made, the teacher on
    onnxruntime beside them, and the goals for the selected student."""
    d = _load("llm.json")
    lines = ["| model | runtime | parameters | size | agreement with the teacher's next token | perplexity of the "
             "teacher's answers | time to first token, p50 | tokens/s |",
             "|---|---|---|---|---|---|---|---|"]
    for m in d["models"]:
        name = f"**{m['model']}** (selected)" if m["selected"] else m["model"]
        lines.append(f"| {name} | {m['runtime']} | {m['params'] / 1e6:.1f}M | {m['size_bytes'] / 2**20:.0f} MiB "
                     f"| {_pct(m['agreement'])} | {m['perplexity']:.2f} | {m['ttft_ms_p50']:.0f} ms "
                     f"| {m['tokens_per_s']:.1f} |")
    in_models = {m["model"] for m in d["models"] if m["runtime"] == "onnxruntime"}
    for name, t in (d.get("teacher_onnxruntime") or {}).items():
        if name.removesuffix("-onnx") in in_models:  # the build's report has the row already (its quantized_teacher stage)
            continue
        agree = _pct(t["agreement"]) if t.get("agreement") is not None else ""
        ppl = f"{t['perplexity']:.2f}" if t.get("perplexity") is not None else ""
        lines.append(f"| {name} | onnxruntime | | {t['size_bytes'] / 2**20:.0f} MiB | {agree} | {ppl} | "
                     f"{t['ttft_ms_p50']:.0f} ms | {t['tokens_per_s']:.1f} |")
    g, gen, lo = d["goals"], d["generation"], d["losses"]
    tps = [(k.split("_vs_")[1], v) for k, v in g.items() if k.startswith("tokens_per_s_ratio_vs_")]
    bits = [f"agreement {_pct(g['agreement']['value'])} (goal {_pct(g['agreement']['goal'])})",
            f"perplexity {g['perplexity_ratio']['value']:.1f}× the teacher's (goal ≤ {g['perplexity_ratio']['goal']:.0f}×)"]
    bits += [f"tokens/s {v['value']:.2f}× the teacher's {k.removeprefix('teacher_').replace('-onnx', ' ONNX')} "
             f"(goal ≥ {v['goal']:.0f}×)" for k, v in tps]
    met = sum(1 for v in g.values() if isinstance(v, dict) and v.get("met"))
    total = sum(1 for v in g.values() if isinstance(v, dict) and "met" in v)
    c = d["seqkd_vs_control"]
    cached = " with the teacher's answers cached" if d["stage_seconds"].get("generate", 0) < 60 else ""
    took = (f"{d['build_wall_s'] / 60:.1f} min{cached}" if d.get("build_wall_s") is not None else
            f"{sum(d['stage_seconds'].values()) / 60:.1f} min of stage time ("
            + ("the teacher's answers read from the cache" if cached else
               f"generate {d['stage_seconds'].get('generate', 0) / 60:.1f}")
            + f", distill {d['stage_seconds'].get('distill', 0) / 60:.1f})")
    control = ("the same student trained on the teacher's answers with hard labels only" if d.get("held_out")
               else "the same student on the prompts' raw text")
    gt = d.get("general_text")
    hard = (f", {gt['hard_label']:g} of that weight on the text's own next tokens" if gt and gt.get("hard_label")
            else "")
    general = (f", plus {gt['weight']:g} × token-level KD on {gt['samples']:,} general-text snippets ({gt['tokens']:,} "
               f"tokens, top-{gt['top_k']}{hard})" if gt else ", no general text")
    ts = gen.get("train_samples")
    answers = (f", {ts['per_prompt']} answers per training prompt (the greedy one and {ts['kept']:,} sampled at "
               f"temperature {ts['temperature']:g}, top-p {ts['top_p']:g}, of {ts['asked']:,} asked; "
               f"{_sampling_time(ts, d)})" if ts else "")
    best = d.get("best_epoch")
    epochs = f"{lo['epochs']} epochs" + (f" (the best on validation: epoch {best})" if best else "")
    lines += ["", f"The card as shipped: {gen['prompts']} prompts ({gen['splits']['train']} train, {gen['splits']['val']} "
                  f"validation, {gen['splits']['test']} test){answers}, {epochs}, {lo['soft']} soft_label (T="
                  f"{lo['temperature']:g}, top-{lo['top_k']}) + {lo['hard']} hard_label{general}; the build took "
                  f"{took}. "
                  f"Against its control ({control}): {_pct(c['student_test']['agreement'])} vs "
                  f"{_pct(c['control_test']['agreement'])} test agreement.",
              "", f"Goals for {g['student']}: " + "; ".join(bits) + f" — {met} of {total} met."]
    h, hg = d.get("held_out"), d.get("held_out_goals") or {}
    prev = next(iter(d.get("superseded") or []), None)  # the card's build before this one
    if h:
        def fig(who: str, split: str) -> str:
            v = h[who][split]
            ci = v.get("agreement_ci95")
            return f"{_pct(v['agreement'])}" + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "") + f" ({v['prompts']} prompts)"

        hb = []
        for k, v in hg.items():
            if "perplexity" in k:
                on_val = (d.get("natural_text_val") or {}).get("perplexity_ratio")
                hb.append(f"natural-text perplexity {v['value']:.1f}× the teacher's (goal ≤ {v['goal']:.0f}×, "
                          f"{'met' if v['met'] else 'missed'}"
                          + (f"; {on_val:.1f}× on the validation snippets" if on_val else "") + ")")
            else:
                hb.append(f"{k} {_pct(v['value'])} (goal ≥ {_pct(v['goal'])}, {'met' if v['met'] else 'missed'})")
        natural = (f", on natural prompts written apart from the prompt set (held out by source) "
                   f"{fig('student', 'natural-prompts')}" if "natural-prompts" in h["student"] else "")
        lines += ["", "Held out by construction (`data.split: template`: whole templates and their slot words): the "
                      f"student's next-token agreement on held-out templates {fig('student', 'held-out-template')}, on "
                      f"training templates' held-out prompts (in-template recall) {fig('student', 'in-template')}"
                      f"{natural}; the teacher against its own answers {fig('teacher', 'held-out-template')} (95% "
                      "bootstrap intervals over prompts). Issue 28's goals for the student: " + "; ".join(hb) + "."]
        if prev and prev.get("held_out") and _same_split(prev.get("generation") or {}, gen):
            lines += ["", _against_previous_build(d, prev)]
        c_ho = (h.get("control") or {}).get("held-out-template")
        if c_ho:
            gain = 100 * (h["student"]["held-out-template"]["agreement"] - c_ho["agreement"])
            verdict = ("the teacher's logits add" if gain > 0.5 else "the teacher's logits lose" if gain < -0.5
                       else "the teacher's logits add nothing measurable over its answers")
            seeds = _load_opt("lm_kd_seeds.json")
            across = (f"the {len(seeds['seeds'])}-seed comparison at {seeds['epochs']} epoch(s) is below "
                      "(`benchmarks/results/lm_kd_seeds.json`)" if seeds else
                      "issue 28 asks for 3 seeds: `python benchmarks/bench_lm_kd_seeds.py`, not run")
            lines += ["", f"Logit KD against the answers-only control (the same student on the teacher's answers, hard "
                          f"labels only) on held-out templates: {gain:+.1f} points in this build (one seed) — {verdict} "
                          f"on this run; {across}."]
    dq = d.get("distill_vs_quantize")
    if dq:
        lines += ["", _distill_vs_quantize(dq)]
    if d.get("decode_compute"):
        lines += ["", _decode_compute(d["decode_compute"], g, d.get("models"))]
        vocab = _vocab_line(d.get("models"), d.get("vocab_head"), d.get("created"))
        if vocab:
            lines += ["", vocab]
    kept = [(x["variant"], x["kept_fp32_nodes"]) for x in d.get("candidates", []) if x.get("kept_fp32_nodes")]
    if kept:
        from edgekd.quantize.sensitivity import group_name

        lines += ["", "Kept in FP32 by the accuracy-aware loop: " + "; ".join(
            f"`{v}`: {len(n)} nodes ({', '.join(sorted({group_name(x) for x in n}))})"
            for v, n in kept) + "."]
    wo = _load_opt("weight_only.json")
    if wo and d.get("created", "") < wo.get("created", "") and any(
            m["model"].split("/")[-1].startswith(("int8-weight", "int4-weight")) for m in d["models"]):
        lines += ["", "This build predates the lowering of weight-only candidates onto onnxruntime's weight-only kernels: "
                      "its `int8-weight` and `int4-weight` rows were timed as NNCF writes them (a dequantization of every "
                      "weight on every token); what they decode at now is under *Weight-only candidates on onnxruntime* "
                      "below, and the card's next build times them so."]
    slower = _teacher_timing_against_previous(d, prev)
    if slower:
        lines += ["", slower]
    notes = "".join(f"; {n}" for n in d.get("run_notes", []))
    return "\n".join(lines) + "\n\n" + _source("llm.json", d, notes)


def _sampling_time(ts: dict, d: dict) -> str:
    """How long the teacher took to sample the training answers: this build's time, or (answers read from the
    generation cache: seconds, not minutes) the build before's when it sampled the same cache files."""
    if ts["seconds"] >= 60:
        return f"the teacher took {ts['seconds'] / 60:.0f} min to sample them"
    for old in d.get("superseded") or []:
        ots = (old.get("generation") or {}).get("train_samples") or {}
        if ots.get("caches") == ts.get("caches") and ots.get("seconds", 0) >= 60:
            return (f"read from the generation cache: the teacher took {ots['seconds'] / 60:.0f} min to sample them "
                    f"for the build of {old['created'][:10]}")
    return "read from the generation cache"


def _teacher_timing_against_previous(d: dict, prev: dict | None) -> str | None:
    """The teacher's FP32 ONNX is the same graph in every build of the card: when its tokens/s moved by more than 10%
    against the build before, the host ran differently, and tokens/s compare within one build only."""
    row = lambda ms: next((m for m in ms or [] if m["model"] == "teacher/fp32"), None)  # noqa: E731
    now, then = row(d.get("models")), row((prev or {}).get("models"))
    if not now or not then or not now.get("tokens_per_s") or not then.get("tokens_per_s"):
        return None
    r = now["tokens_per_s"] / then["tokens_per_s"]
    if abs(r - 1) <= 0.10:
        return None
    return (f"The teacher's FP32 ONNX (the same graph in both builds) decoded {now['tokens_per_s']:.1f} tokens/s in this "
            f"build against {then['tokens_per_s']:.1f} in the build before ({r:.2f}×) on this host: tokens/s and their "
            "ratios compare within one build, not across builds.")


GENERATORS: dict[str, Callable[[], str]] = {"fashion-cnn": fashion_cnn, "minilm-sentiment": minilm_sentiment,
                                            "kd-gain": kd_gain, "byo": byo, "llm-students": llm_students,
                                            "llm-build": llm_build}


def distributed() -> str:
    """Scale-out: the same build at 1 and N processes under torchrun (bench_distributed.py)."""
    d = _load("distributed.json")
    rows = ["| processes × threads | teacher answers/s | student answer tokens/s | build | test agreement |",
            "|---|---|---|---|---|"]
    for r in d["runs"]:
        sp = r["speedup_vs_first"]
        rows.append(f"| {r['procs']} × {r['threads_per_process']} | {r['generate']['answers_per_s']:.2f} "
                    f"({_x(sp['generate'])}) | {r['distill']['answer_tokens_per_s']:.0f} ({_x(sp['distill'])}) | "
                    f"{r['build_seconds']:.0f} s ({_x(sp['build'])}) | {_pct(r['distill']['test_agreement'])} |")
    same = "the same answers at every process count" if d["same_answers_at_every_process_count"] else \
        "**different answers** between process counts"
    build = f"`{d['recipe']}`{' --quick' if d['quick'] else ''} {' '.join('--set ' + s for s in d['overrides'])}".strip()
    last = d["runs"][-1]["speedup_vs_first"]
    verdicts = []
    for what, key in (("sharded teacher generation", "generate"), ("DDP training of the student", "distill"),
                      ("the whole build", "build")):
        x = last[key]
        verdicts.append(f"{what} {'gains' if x > 1.05 else 'loses' if x < 0.95 else 'neither gains nor loses'} "
                        f"({_x(x)})")
    return (f"{build} on `--target {d['target']}`, {d['backend']}, {d['launcher']}; {d['note']}. Speed-ups are "
            f"against the first row. The runs made {same}; the students' test agreement differs by "
            f"{d['test_agreement_spread_points']:.1f} points. At {d['runs'][-1]['procs']} processes "
            + ", ".join(verdicts) + ": a result of this host, not a promise of more hardware."
            + "\n\n" + "\n".join(rows) + "\n\n" + _source("distributed.json", d))


GENERATORS["distributed"] = distributed


def _num(x: Any, fmt: str, unit: str = "") -> str:
    return "—" if x is None else f"{x:{fmt}}{unit}"


def _shipped_kind(target: str, m: dict) -> bool:
    """The rows of a target's own artifacts (and the teacher's): mobile its .pte programs, ascend its graphs and
    the FP32 student they come from; the ONNX candidates are the cpu rows (every target's build makes them)."""
    if target == "cpu" or m["model"].startswith("teacher/"):
        return True
    if target == "mobile":
        return m["format"] == "pte"
    if target == "ascend":
        return m["model"].endswith("-om") or m["model"] == "student/fp32"
    return True


def lm_targets() -> str:
    """smollm2-seqkd on every target (bench_lm_targets.py): one distilled student, each target's rows as its
    report gives them (where each was measured), the goals per target, and what did not run."""
    d = _load("lm_targets.json")
    head = ["| target | model | runtime | measured on | agreement | TTFT p50 | ms/token p50 | tokens/s | size | "
            "peak RSS | J/token (method) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines = list(head)
    for target in ("cpu", "mobile", "ascend"):
        s = d["targets"].get(target)
        if not s:
            continue
        for m in s["models"]:
            if not _shipped_kind(target, m):
                continue
            name = f"**{m['model']}** (selected)" if m["selected"] else m["model"]
            size = "—" if m["size_bytes"] is None else f"{m['size_bytes'] / 2**20:.1f} MiB"
            rss = "—" if m["peak_rss_bytes"] is None else f"{m['peak_rss_bytes'] / 2**20:.0f} MiB"
            agree = "—" if m["agreement"] is None else _pct(m["agreement"])
            j = "—" if m["joules_per_token"] is None else f"{m['joules_per_token']:.3g} ({m['energy_method']})"
            lines.append(f"| {target} | {name} | {m['runtime']} | {m['measured_on']} | {agree} | "
                         f"{_num(m['ttft_ms_p50'], '.1f', ' ms')} | {_num(m['ms_per_token_p50'], '.2f', ' ms')} | "
                         f"{_num(m['tokens_per_s'], '.1f')} | {size} | {rss} | {j} |")
    out = [f"`edgekd build --recipe {d['recipe']}{' --quick' if d['quick'] else ''} --target T`, the student trained "
           f"once (the cpu build `{d['shared_training_from']}` lends its teacher, generate and distill stages to each "
           "target's folder; the other stages ran per target). Agreement is next-token agreement with the teacher's "
           "answers on the held-out-template test prompts (teacher forcing); ratios only within one runtime. For "
           "`--target cpu` this host is the device; for mobile and ascend it is a host proxy or the card's estimate.", "",
           *lines, ""]
    mob = (d["targets"].get("mobile") or {}).get("goals") or {}
    if "error" in mob:
        out += ['', f"Mobile goals not evaluated: {mob['error']}."]
    elif mob:
        g1, g2, g3 = (mob["tokens_per_s_ratio_vs_teacher_pte"], mob["agreement_drop_points_vs_student_fp32_onnx"],
                      mob["size_fraction_of_teacher_pte"])
        met = sum(bool(g["met"]) for g in (g1, g2, g3))
        out += ['', f"Mobile (ExecuTorch on this host, both programs on the same runtime): {mob['student']} runs "
                   f"{g1['value']:.1f}× the tokens/s of {mob['teacher']} (goal ≥ {g1['goal']:.0f}×), its agreement is "
                   f"{g2['value']:+.1f} points below the student's fp32 ONNX (goal ≤ {g2['goal']:.0f}), its size "
                   f"{g3['value']:.3f} of the teacher program's (goal ≤ {g3['goal']:.2f}) — {met} of 3 met."]
    asc = (d["targets"].get("ascend") or {}).get("goals") or {}
    if asc:
        rec = asc.get("recorded_tools_device_rows")
        ok = rec and rec["every_graph"] and rec["all_measured_on_device"] and rec["all_npu_smi_energy_per_token"]
        out += ['', f"Ascend: the static graphs ({', '.join(asc['graphs'])}; prompt length {asc['prompt_length']}, "
                   f"cache length {asc['cache_length']}) {'pass' if asc['lint_ok'] else '**fail**'} the op lint with "
                   f"{'static' if asc['static_shapes'] else '**dynamic**'} shapes; host parity with PyTorch "
                   f"{'holds' if asc['host_parity_ok'] else '**fails**'}. No Ascend host ran them: their rows above are "
                   "the card's roofline estimate. "
                   + ("The same build with the recorded Ascend tools on PATH (a wiring check, not a measurement: the "
                      "values are the recordings') produced a `measured_on: device` row per graph with msit's figures "
                      "and npu-smi joules per token." if ok else
                      "The recorded-tool build did **not** produce a device row per graph." if rec else "")]
    cuda = d["targets"].get("cuda") or {}
    if "not_run" in cuda:
        out += ['', f"cuda: not run — {cuda['not_run']}."]
    elif cuda:
        out += ['', f"cuda: {cuda['build']} (selected {cuda['selected']}); "
                   + "; ".join(f"{m['model']} {m['runtime']} {_num(m['tokens_per_s'], '.1f')} tokens/s "
                               f"({m['measured_on']})" for m in cuda["models"]) + "."]
    return "\n".join(out) + "\n\n" + _source("lm_targets.json", d)


GENERATORS["lm-targets"] = lm_targets


def budget() -> str:
    """A latency budget sizes the student (bench_budget.py): the budget met on the shipped artifact, the same-runtime
    speed-up, retention, the winner against hand-sized students of the same budget, and what the search cost."""
    d = _load_opt("budget.json")
    if d is None:
        return "_No measurement yet: run `python benchmarks/bench_budget.py --target cpu`._\n"
    head = ["| target | budget (rule) | shipped student | p50 (where) | budget met | same-runtime speed-up | test accuracy "
            "(retention) | best hand-sized | search cost |", "|---|---|---|---|---|---|---|---|---|"]
    lines, hand_rows, notes = list(head), [], []
    for target, t in d["targets"].items():
        s = t["search_build"]
        if "error" in s:
            lines.append(f"| {target} | {t['budget']['latency_ms'] * 1000:.1f} µs | build failed: {s['error'][:120]} "
                         "| | | | | | |")
            continue
        b = t["budget"]
        size = f" and ≤ {b['size']}" if b.get("size") else ""
        w = s["search"]["winner"]
        final = s["search"]["final"]
        met = "yes" if final["met"] else "**no**"
        hands = [h for h in t.get("hand_sized", []) if not h.get("is_winner")]
        hacc = [(h["build"].get("selected_accuracy"), h) for h in hands if "error" not in h["build"]]
        best = max(hacc, key=lambda a: a[0]) if hacc else None
        gap = t.get("winner_minus_best_hand_points")
        cost = t["search_cost"]
        lines.append(
            f"| {target} | ≤ {b['latency_ms'] * 1000:.1f} µs{size} ({b['rule']}) | `{w['kwargs']}` "
            f"{w['params']:,} params as `{s['selected']}` | {s['selected_p50_ms'] * 1000:.1f} µs "
            f"({s.get('selected_measured_on')}) | {met} | {_x(t['same_runtime_speedup'])} | "
            f"{_pct(s['selected_accuracy'])} ({_pct(t['retention'])}) | "
            + (f"{_pct(best[0])} `{best[1]['kwargs']['widths']}` ({gap:+.2f} pt) | " if best else "— | ")
            + f"{cost['search_stage_s']:.0f} s = {_pct(cost['fraction_of_student_build'])} of the rest"
            + (f"; {t['search_again']['search_stage_s']:.0f} s = {_pct(t['search_again']['fraction_of_student_build'])} "
               f"rerun alone with the bisecting search at load {t['search_again']['host_load_1min_before']:g} "
               f"({t['search_again']['timed']} of {t['search_again']['candidates']} timed, "
               f"{t['search_again']['timed_before']} before, "
               f"{'same' if t['search_again']['same_winner'] else 'another'} winner)" if t.get("search_again") else "")
            + " |")
        for h in t.get("hand_sized", []):
            b2 = s if h.get("is_winner") else h["build"]
            if "error" in b2:
                hand_rows.append(f"| {target} | `{h['kwargs']['widths']}` | {h['params']:,} | {b2['error'].split(':')[0]} | | |")
                continue
            hand_rows.append(f"| {target} | `{h['kwargs']['widths']}`{' (the winner)' if h.get('is_winner') else ''} | "
                             f"{h['params']:,} | {_pct(b2['selected_accuracy'])} | {b2['selected_p50_ms'] * 1000:.1f} µs "
                             f"(`{b2['selected']}`) | {'yes' if b2['selected_p50_ms'] <= t['budget']['latency_ms'] else 'no'} |")
        gm = t["goals_met"]
        missed = [k for k, v in gm.items() if v is False]
        short = ""
        if gm.get("winner_vs_hand") is False and t.get("winner_minus_best_hand_points") is not None:
            short = (f": the winner is {-t['winner_minus_best_hand_points']:.2f} points below the best hand-sized student "
                     "(one seed each; the distillation's seed-to-seed spread on this card is larger, see the KD table)")
        notes.append(f"{target}: " + ("every goal met" if not missed else "missed: " + ", ".join(missed) + short)
                     + f" (goals: {'; '.join(f'{k} {v}' for k, v in t['goals'].items())}).")
    out = "\n".join(lines) + "\n\nHand-sized students of the same budget (for each depth, the widest the search's own " \
        "timing table says fits), each distilled in full with the card's recipe:\n\n" + \
        "\n".join(["| target | widths | params | test accuracy | p50 (shipped artifact) | within budget |",
                   "|---|---|---|---|---|---|", *hand_rows]) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n\n"
    extra = "; " + "; ".join(d["targets"][k]["notes"][0] for k in d["targets"] if d["targets"][k].get("notes"))
    return out + _source("budget.json", d, extra if extra != "; " else "")


GENERATORS["budget"] = budget


def _losses(card: str) -> str:
    """The distill losses of a card's text, in short: soft 0.5 at T=2 + hard 0.5."""
    import yaml

    terms = yaml.safe_load(card)["distill"]["losses"]
    return " + ".join(f"{t['kind'].split('_')[0]} {t['weight']:g}" + (f" at T={t['temperature']:g}" if "temperature" in t else "")
                      for t in terms)


def byo_budget() -> str:
    """A pretrained teacher of the user's own sized by `edgekd init --latency-budget` (bench_byo_budget.py): the budget
    on the shipped artifact, retention, and distillation against its labels-only control per seed, with the levers."""
    d = _load_opt("byo_budget.json")
    if d is None:
        return "_No measurement yet: run `python benchmarks/bench_byo_budget.py`._\n"
    s, tt = d["search_build"], d["teacher_training"]
    final = s["search"]["final"]
    w = s["search"]["winner"]
    lines = ["| teacher (user's) | budget (rule) | shipped student | p50 (where) | budget met | same-runtime speed-up "
             "| test accuracy (retention) | search cost |", "|---|---|---|---|---|---|---|---|",
             f"| {tt['arch']}, {tt['params']:,} params, {_pct(s['teacher_accuracy'])} | ≤ {d['budget']['latency_ms'] * 1000:.1f} µs "
             f"({d['budget']['rule']}) | `{w['kwargs']}` {w['params']:,} params as `{s['selected']}` | "
             f"{s['selected_p50_ms'] * 1000:.1f} µs ({s.get('selected_measured_on')}) | {'yes' if final['met'] else '**no**'} | "
             f"{_x(d['same_runtime_speedup'])} | {_pct(s['selected_accuracy'])} ({_pct(d['retention'])}) | "
             f"{d['search_cost']['search_stage_s']:.0f} s = {_pct(d['search_cost']['fraction_of_student_build'])} of the rest"
             + (f"; {d['search_again']['search_stage_s']:.0f} s = {_pct(d['search_again']['fraction_of_student_build'])} "
                f"rerun alone with the bisecting search at load {d['search_again']['host_load_1min_before']:g} "
               f"({d['search_again']['timed']} of {d['search_again']['candidates']} timed, "
               f"{d['search_again']['timed_before']} before, "
                f"{'same' if d['search_again']['same_winner'] else 'another'} winner)" if d.get("search_again") else "")
             + " |"]
    nseeds = len(next(iter(d["levers"].values()))["seeds"])
    rows = ["| losses | " + " | ".join(f"seed {k}: distilled / control (gain)" for k in
                                     next(iter(d["levers"].values()))["seeds"])
            + " | mean gain (test) | mean gain on validation |", "|---|" + "---|" * (nseeds + 2)]

    def lever_row(what: str, lv: dict) -> str:
        cells = [f"{_pct(r['selected_accuracy'])} / {_pct(r['control_accuracy'])} ({_pts(r['kd_gain_points'])})"
                 if r.get("kd_gain_points") is not None else "—" for r in lv["seeds"].values()]
        return (f"| {what} | " + " | ".join(cells) + f" | {_pts(lv['kd_gain_mean'])} | "
                + (_pts(lv["val_kd_gain_mean"]) if lv.get("val_kd_gain_mean") is not None else "—") + " |")
    for name, lv in d["levers"].items():
        rows.append(lever_row(f"init's card ({_losses(d['init']['card'])})" if name == "card" else name, lv))
    bl = d.get("best_lever")
    if bl and bl.get("chosen_on"):
        what = f"init's card ({_losses(d['init']['card'])})" if bl["name"] == "card" else bl["name"]
        rows.append(f"\nChosen on validation ({bl['chosen_on']}, the levers above measured on the same {bl['seeds']} "
                    f"seeds): {what}, {_pts(bl['val_kd_gain_mean'])} on validation; its test gain, reported not chosen "
                    f"on: {_pts(bl['kd_gain_mean'])}.")
        vals = [lv["val_kd_gain_mean"] for lv in d["levers"].values() if lv.get("val_kd_gain_mean") is not None]
        best_test = max(d["levers"].items(), key=lambda kv: kv[1]["kd_gain_mean"])
        if vals and max(vals) <= 0:
            rows.append(f"No loss mix beats labels alone on validation for this teacher and student (every mean "
                        f"validation gain ≤ 0, spread {min(vals):+.2f} … {max(vals):+.2f} pt) while on test "
                        f"{sum(lv['kd_gain_mean'] > 0 for lv in d['levers'].values())} of {len(vals)} do (best "
                        f"{_pts(best_test[1]['kd_gain_mean'])}): the mixes differ by less than the seeds do, and "
                        "distillation buys this pair nothing reliable over its labels.")
            ctrl = [r["control_accuracy"] for r in next(iter(d["levers"].values()))["seeds"].values()]
            t_acc = d["search_build"]["teacher_accuracy"]
            if ctrl and min(ctrl) >= t_acc:
                rows.append(f"Why: the teacher ({_pct(t_acc)}) is less accurate than its student trained on the labels "
                            f"alone ({_pct(min(ctrl))} … {_pct(max(ctrl))} over the seeds): a weak teacher, not a capacity "
                            "gap, so its soft labels carry its errors; the capacity-gap levers (temperature, hard-label "
                            "weight, measured above; an intermediate teacher, not tried) do not address that. Every "
                            "report now says so when its control is at least as accurate as its teacher.")
    gm = d["goals_met"]
    missed = [k for k, v in gm.items() if v is False]
    verdict = "every goal met" if not missed else "missed: " + ", ".join(missed)
    return ("\n".join(lines) + "\n\nDistillation against its own labels-only control (the same student, data, epochs and "
            "seed; test accuracy of the fp32 student in onnxruntime):\n\n" + "\n".join(rows) + "\n\n"
            + f"- {verdict} (goals: {'; '.join(f'{k} {v}' for k, v in d['goals'].items())}).\n\n"
            + _source("byo_budget.json", d, "; " + d["notes"][0] if d.get("notes") else ""))


GENERATORS["byo-budget"] = byo_budget


def _search_vs_card(search_s: float, epochs: int) -> str:
    """The search's cost against the card's own full build (llm.json's stage time), when the budget build is shorter."""
    card = _load_opt("llm.json")
    if not card or not card.get("stage_seconds") or card.get("quick"):
        return ""
    total = sum(card["stage_seconds"].values())
    return (f" ({epochs} epoch(s)); against the card's full build ({total / 60:.0f} min of stage time, `llm.json` "
            f"{card['created'][:10]}) the same search would be {_pct(search_s / total)}")


def lm_budget() -> str:
    """A language-model student cut to a per-token budget (bench_lm_budget.py): every cut timed before training,
    the winner, the budget on the shipped artifact, tokens/s against the teacher's int8 in the same build."""
    d = _load_opt("lm_budget.json")
    if d is None:
        return "_No measurement yet: run `python benchmarks/bench_lm_budget.py`._\n"
    if "error" in d:
        return f"The build failed: {d['error']}\n\n" + _source("lm_budget.json", d)
    s = d["search"]
    rows = ["| depth | FFN | params | fastest artifact | ms/token (untrained cut) | fits | agreement after the proxy "
            "distillation | status |",
            "|---|---|---|---|---|---|---|---|"]
    for c in s["candidates"]:
        kw = c["kwargs"]
        rows.append(f"| {kw.get('depth')} | {kw.get('ffn')} | {c['params'] / 1e6:.1f}M | {c.get('variant') or '—'} | "
                    + (f"{c['latency_ms']:.2f}" if c.get("latency_ms") is not None else
                       "not timed" if c.get("skipped") else "—")
                    + f" | {'yes' if c['fits'] else 'no'} | {_pct2(c.get('proxy_val_accuracy'))} | {c['status']} |")
    final = s["final"]
    tq = d.get("teacher_int8") or {}
    ho = d.get("held_out") or {}
    cost = d["search_cost"]
    gm = d.get("goals_met", {})
    missed = [k for k, v in gm.items() if v is False]
    lines = [f"Budget: {d['budget']['latency_ms']:.2f} ms per token ({d['budget']['rule']}; the teacher's figure from "
             f"{d['teacher_reference']['from']}), {d['epochs']} epoch(s) of the `{d['recipe']}` recipe. "
             f"Shipped `{d['selected']}` ({d['student_params'] / 1e6:.1f}M parameters): "
             f"{d['student_ms_per_token']['p50'] if isinstance(d['student_ms_per_token'], dict) else d['student_ms_per_token']:.2f} "
             f"ms per token on the shipped artifact — budget {'met' if final['met'] else '**missed**'}; "
             + (f"{d['student_tokens_per_s']:.1f} tokens/s against the teacher's "
                f"{d['teacher_reference'].get('kind', 'int8-dynamic')} {tq['tokens_per_s']:.1f} in the "
                f"same build: **{_x(d['tokens_per_s_vs_teacher_int8'])}**. " if tq.get("tokens_per_s") else "")
             + (f"The teacher's int8 took {tq['ms_per_token']['p50']:.1f} ms per token in this build against "
                f"{d['teacher_reference']['p50_ms']:.1f} ms in the run the budget came from "
                f"({tq['ms_per_token']['p50'] / d['teacher_reference']['p50_ms']:.2f}×"
                + ("" if abs(tq['ms_per_token']['p50'] / d['teacher_reference']['p50_ms'] - 1) < 0.1 else
                   "; the two runs' host load differed")
                + "): the same-build ratio above is the like-for-like figure. "
                if isinstance(tq.get("ms_per_token"), dict) else "")
             + "Next-token agreement with the teacher: " + ", ".join(f"{k} {_pct(v)}" for k, v in ho.items() if v is not None)
             + f". Search: {cost['search_stage_s']:.0f} s = {_pct(cost['fraction_of_student_build'])} of the rest of the build"
             + _search_vs_card(cost["search_stage_s"], d["epochs"]) + ". "
             + ("Every goal met." if not missed else "Missed: " + ", ".join(missed) + ".")]
    again = d.get("search_again")
    if again:
        w = again["winner"]
        ranked = [c for c in again["candidates_table"] if c.get("proxy_seconds") is not None]
        how = "proxy distillation ranking" if ranked else "perplexity ranking"
        lines.append(f"The same search stage rerun alone with the current code ({how}, bisection; load "
                     f"{again['host_load_1min_before']:g}): {again['search_stage_s']:.0f} s = "
                     f"{_pct(again['fraction_of_student_build'])} of the rest of the build"
                     + (f" (the proxy distillation {again['proxy_seconds']:.0f} s of it)" if again.get("proxy_seconds")
                        else "")
                     + f", {again['timed']} of {again['candidates']} cuts timed ({again['timed_before']} before), winner "
                     f"depth {w.get('depth')} FFN {w.get('ffn')} ({'the same' if again['same_winner'] else 'another'}).")
        if ranked:
            t = ["| depth | FFN | ms/token | as cut: agreement / perplexity | after the proxy: agreement / perplexity "
                 "| proxy s | status |", "|---|---|---|---|---|---|---|"]
            for c in ranked:
                t.append(f"| {c['kwargs'].get('depth')} | {c['kwargs'].get('ffn')} | {c['latency_ms']:.2f} | "
                         f"{_pct2(c.get('cut_val_accuracy'))} / {c['cut_val_perplexity']:,.0f} | "
                         f"{_pct2(c['proxy_val_accuracy'])} / {c['proxy_val_perplexity']:,.0f} | "
                         f"{c['proxy_seconds']:.0f} | {c['status']} |")
            lines.append("Ranked by the proxy distillation (validation answers, held-out templates):\n\n" + "\n".join(t))
    return "\n\n".join(lines) + "\n\n" + "\n".join(rows) + "\n\n" + _source("lm_budget.json", d,
                                                                          "; " + d["notes"][0] if d.get("notes") else "")


GENERATORS["lm-budget"] = lm_budget


def general_text() -> str:
    """Token-level KD on general text (bench_general_text.py): the same LM build with and without it."""
    d = _load_opt("general_text.json")
    if d is None:
        return "_No measurement yet: run `python benchmarks/bench_general_text.py`._\n"
    lines = ["| student trained on | natural-text perplexity (teacher) | ratio | natural-text next-token accuracy | "
             "held-out templates | in-template | natural prompts | training time |", "|---|---|---|---|---|---|---|---|"]
    for name, a in d["arms"].items():
        nt, ho = a["natural_text"], a["held_out"]

        lines.append(f"| {name} | {nt['student']['perplexity']:,.0f} ({nt['teacher']['perplexity']:.0f}) | "
                     f"{nt['perplexity_ratio']:.1f}× | {_pct(nt['student']['next_token_accuracy'])} | "
                     f"{_ci(ho['held-out-template'])} | {_ci(ho['in-template'])} | {_ci(ho['natural-prompts'])} | "
                     f"{a['train_seconds']:.0f} s |")
    r = d["perplexity_ratio"]
    base, gt = r["answers only"], r["answers + general text"]
    dl = d["agreement_delta_points"]
    goal = d["goal"]["natural_text_perplexity_ratio"]
    ci = [a["held_out"]["held-out-template"]["agreement_ci95"] for a in d["arms"].values()]
    overlap = ci[0][0] <= ci[1][1] and ci[1][0] <= ci[0][1]
    verdict = (f"General text {'lowers' if gt < base else 'does not lower'} the student's natural-text perplexity "
               f"ratio from {base:.1f}× to {gt:.1f}× the teacher's (goal ≤ {goal:g}×: "
               f"{'met' if gt <= goal else 'missed'}) and moves held-out-template agreement by "
               f"{dl['held-out-template']:+.1f} points, natural prompts by {dl['natural-prompts']:+.1f} "
               f"(the two builds' 95% intervals {'overlap' if overlap else 'do not overlap'}; one seed); "
               f"training took {d['train_time_ratio']:.1f}× as long.")
    return (f"`smollm2-seqkd` at {d['epochs']} epoch(s), fp32, the same seed; the second build adds "
            f"`distill.general_text` ({d['arms']['answers + general text']['general_text']['samples']:,} Rotten "
            f"Tomatoes train-bucket snippets, weight {d['arms']['answers + general text']['general_text']['weight']}, the "
            f"teacher's top-{d['arms']['answers + general text']['general_text']['top_k']}). " + verdict + "\n\n"
            + "\n".join(lines) + "\n\n" + _source("general_text.json", d, "; " + "; ".join(d.get("notes") or [])))


GENERATORS["general-text"] = general_text


def _notes(d: dict[str, Any]) -> str:
    """A results file's run notes as the source line's tail ("; note" each; nothing without notes)."""
    return "".join("; " + n for n in d.get("notes") or [])


def _round2(x: float) -> int:
    """x to two significant digits (an extrapolation's precision)."""
    return int(round(x, 1 - int(math.floor(math.log10(abs(x)))))) if x else 0


def _log_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares of log(y) on log(x): (intercept, slope)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    slope = sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)
    return my - slope * mx, slope


def _val_ratio(p: dict, fmt: str | None = None):
    """A curve point's natural-text perplexity ratio on the validation snippets; None (or '') for a point built
    before they were scored. `fmt`: the ratio formatted."""
    r = (p.get("natural_text_val") or {}).get("perplexity_ratio")
    return r if fmt is None else (fmt.format(r) if r is not None else "")


def general_text_curve() -> str:
    """What more general text buys (bench_general_text.py --curve): one build per general-text mix."""
    d = _load_opt("general_text_curve.json")
    if d is None:
        return "_No measurement yet: run `python benchmarks/bench_general_text.py --curve 1000:0.5 --curve 4000:0.5`._\n"
    pts = d["points"]
    goal = d["goal"]["natural_text_perplexity_ratio"]
    lines = ["| general text (snippets : weight) | tokens | natural-text perplexity (teacher) | ratio | "
             "ratio on validation snippets | held-out templates | in-template | natural prompts | "
             "validation agreement | training time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p in pts:
        nt, ho = p["natural_text"], p["held_out"]
        lines.append(f"| {p['mix']} | {p['general_tokens']:,} | {nt['student']['perplexity']:,.0f} "
                     f"({nt['teacher']['perplexity']:.0f}) | {nt['perplexity_ratio']:.1f}× | "
                     f"{_val_ratio(p, '{:.1f}×') or 'not scored'} | "
                     f"{_ci(ho['held-out-template'])} | {_ci(ho['in-template'])} | {_ci(ho['natural-prompts'])} | "
                     f"{_pct(p['val_agreement'])} | {p['train_seconds'] / 60:.0f} min |")
    text = [f"`smollm2-seqkd` at {d['epochs']} epoch(s) on the card's answers, fp32, one seed, one build per mix of "
            f"Rotten Tomatoes train-bucket general text."]
    scored = [p for p in pts if _val_ratio(p) is not None]
    if scored:  # the mixes are compared on the validation snippets (other movies), the test ratio reported beside
        best = min(scored, key=_val_ratio)
        text.append(f"Of the {len(scored)} mixes scored on the validation snippets (test-bucket movies apart from the "
                    f"evaluation's), the lowest ratio there: {_val_ratio(best):.1f}× ({best['mix']}; "
                    f"{best['natural_text']['perplexity_ratio']:.1f}× on the evaluation snippets, goal ≤ {goal:g}×: "
                    f"{'met' if best['natural_text']['perplexity_ratio'] <= goal else 'missed'}).")
        if len(scored) < len(pts):
            text.append(f"{len(pts) - len(scored)} mix(es) were built before the validation snippets existed and are "
                        f"compared on nothing.")
    else:
        low = min(pts, key=lambda p: p["natural_text"]["perplexity_ratio"])
        text.append(f"No mix was scored on the validation snippets (the builds came before them), so none is chosen "
                    f"here; the lowest evaluation ratio, a test figure: {low['natural_text']['perplexity_ratio']:.1f}× "
                    f"({low['mix']}; goal ≤ {goal:g}×).")
    by_weight: dict[float, list[dict]] = {}
    for p in pts:
        if p["samples"] and not p.get("hard_label"):
            by_weight.setdefault(p["weight"], []).append(p)
    for p in pts:  # a hard-label share against the same mix without it
        twin = next((q for q in by_weight.get(p["weight"], []) if q["samples"] == p["samples"]), None)
        if p.get("hard_label") and twin:
            r0, r1 = twin["natural_text"]["perplexity_ratio"], p["natural_text"]["perplexity_ratio"]
            dh = 100 * (p["held_out"]["held-out-template"]["agreement"]
                        - twin["held_out"]["held-out-template"]["agreement"])
            text.append(f"Hard labels on {p['hard_label']:g} of the general-text weight ({p['mix']}) "
                        f"{'lower' if r1 < r0 else 'do not lower'} the ratio ({r0:.1f}× → {r1:.1f}×) and move "
                        f"held-out-template agreement by {dh:+.1f} points.")
    with_text = [p for p in pts if p["samples"]]
    per_snippet = with_text[0]["general_tokens"] / with_text[0]["samples"] if with_text else None
    for w, ps in sorted(by_weight.items()):
        if len({p["general_tokens"] for p in ps}) < 2:
            continue
        a, b = _log_fit([p["general_tokens"] for p in ps], [p["natural_text"]["perplexity_ratio"] for p in ps])
        lo, hi = min(p["general_tokens"] for p in ps), max(p["general_tokens"] for p in ps)
        what = (f"At weight {w:g}, {lo:,} → {hi:,} general-text tokens move the ratio as tokens^{b:.2f}")
        if b < 0:
            need = math.exp((math.log(goal) - a) / b)
            have = d.get("corpus_train_snippets")
            fits = (f"; the corpus's {have:,} train-bucket snippets hold about {_round2(have * per_snippet):,}"
                    if have and per_snippet else "")
            what += (f": a log-log extrapolation (not a measurement) puts {goal:g}× at about {_round2(need):,} tokens "
                     f"per epoch{fits}")
        else:
            what += ": more general text did not lower it"
        text.append(what + ".")
    return (" ".join(text) + "\n\n" + "\n".join(lines) + "\n\n"
            + _source("general_text_curve.json", d, _notes(d)))


GENERATORS["general-text-curve"] = general_text_curve


def lm_ppl_gap() -> str:
    """Where the LM student's natural-text perplexity gap lies (bench_lm_ppl_gap.py): top-k tokens vs the tail."""
    d = _load_opt("lm_ppl_gap.json")
    if d is None:
        return "_No measurement yet: run `python benchmarks/bench_lm_ppl_gap.py BUILD...`._\n"
    lines = ["| build (general text) | ratio | tokens in the teacher's top-k | gap on them (nats × share) | "
             "gap on the tail | the tail's part |", "|---|---|---|---|---|---|"]
    tails = []
    for b in d["builds"]:
        gt = b.get("general_text") or {}
        mix = (f"{gt['samples']:,} : {gt['weight']:g}" + (f", hard {gt['hard_label']:g}" if gt.get("hard_label") else "")
               if gt else "none")
        top, tail = b["parts"]["top_k"], b["parts"]["tail"]
        part = tail["log_ratio_part"] / b["log_ratio"] if b["log_ratio"] > 0 else None
        tails.append(part)
        lines.append(f"| `{Path(b['build']).name}` ({mix}) | {b['perplexity_ratio']:.2f}× | {_pct(top['share'])} "
                     f"(top-{b['k']}) | {top['log_ratio_part']:.2f} | {tail['log_ratio_part']:.2f} | "
                     f"{_pct(part) if part is not None else '—'} |")
    hard = [bool((b.get("general_text") or {}).get("hard_label")) for b in d["builds"]]
    known = [t for t, h in zip(tails, hard) if t is not None and not h]
    verdict = ""
    if known:
        lo, hi = min(known), max(known)
        where = ("mostly in the tail (the tokens top-k KD never shows the student)" if lo > 0.5 else
                 "mostly inside the teacher's top-k (the student has not learned the teacher's ranking of likely "
                 "tokens: more general text or a larger student, not a larger top_k)" if hi < 0.5 else "split")
        verdict = (f"With top-k KD alone on the general text, the natural-text perplexity log-ratio is {where}: the "
                   f"tail holds {_pct(lo)}" + (f"–{_pct(hi)}" if hi - lo > 0.0005 else "") + " of it. ")
    for b, h in zip(d["builds"], hard):
        part = b["parts"]["tail"]["log_ratio_part"]
        if h:
            verdict += (f"With hard labels (`{Path(b['build']).name}`) the tail's part is {part:+.2f} nats"
                        + (": the student gives the text's own tail tokens more probability than the teacher does — "
                           "it learned this corpus's language from the text itself (the evaluation holds out its "
                           "movies, not its genre), so part of that ratio's fall is fitting movie-review text, not "
                           "the teacher's knowledge. " if part < 0 else ". "))
    return (verdict + "Each part is the tokens' share times the student's mean NLL minus the teacher's on them; the "
            "parts add up to the log of the report's ratio.\n\n" + "\n".join(lines) + "\n\n"
            + _source("lm_ppl_gap.json", d, _notes(d)))


GENERATORS["lm-ppl-gap"] = lm_ppl_gap


def prompts_range() -> str:
    """The grown prompt set (grow_llm_prompts.py) and what more answers buy (bench_lm_curve.py)."""
    g = _load_opt("prompts_grown.json")
    if g is None:
        return "_No measurement yet: run `python benchmarks/grow_llm_prompts.py`._\n"
    drop = g["teacher_written_dropped"]
    lines = [f"`{g['out']}`: the {g['base_prompts']} frame prompts + **{g['teacher_written_kept']} questions the teacher "
             f"wrote** on {g['topics_with_a_kept_request']} of {g['topics']} seed topics ({g['requests_asked']} asked; "
             f"dropped: {drop['not_a_request']} not one request, {drop['duplicate']} duplicates, {drop['near_copy']} "
             f"near-copies of the set, the natural prompts or each other) + **{g['arithmetic_kept']} arithmetic and "
             f"short-reasoning problems** made by code in {len(g['arithmetic_frames'])} frames = {g['total_prompts']} "
             f"prompts. The teacher took {g['generation_seconds'] / 60:.1f} min to write its questions"
             + (" (an earlier run's, its replies cached)" if g.get("replies_cached") else "") + ". Examples: "
             + "; ".join(f"\"{e}\"" for k in ("question", "child", "beginner") for e in g["examples"].get(k, [])[:1])
             + "; " + "; ".join(f"\"{e}\"" for e in g["examples"].get("arithmetic", [])[:2]) + "."]
    c = _load_opt("lm_curve.json")
    if c is None:
        return "\n\n".join(lines) + "\n\n_The curve: no measurement yet (`python benchmarks/bench_lm_curve.py`)._\n\n" \
            + _source("prompts_grown.json", g)
    # the set the curve trained on, when it is a larger growth of the same seed topics (grow_llm_prompts.py --samples)
    gx_name = next((f.name for f in sorted(RESULTS.glob("prompts_grown*.json"))
                    if f.name != "prompts_grown.json" and _load(f.name)["out"] == c["prompts"]), None)
    if gx_name:
        gx = _load(gx_name)
        sm, dx = gx["sampling"] or {}, gx["teacher_written_dropped"]
        per = gx.get("kept_per_sample", {})
        lines.append(
            f"`{gx['out']}` (the curve's set): the same {gx['topics']} topics and four viewpoints, the teacher asked "
            f"{gx['samples_per_request']} times per request — its greedy reply, then {gx['samples_per_request'] - 1} "
            f"sampled (temperature {sm.get('temperature')}, top-p {sm.get('top_p')}) — **{gx['teacher_written_kept']} "
            f"questions kept** of {gx['requests_asked']} replies (greedy {per.get('0', 0)}, sampled "
            f"{sum(v for k, v in per.items() if k != '0')}; dropped: {dx['not_a_request']} not one request, "
            f"{dx['near_copy']} near-copies, {dx.get('rewording_in_group', 0)} rewordings of a question kept on the "
            f"same topic (difflib ≥ {sm.get('group_max_ratio')}), {dx['duplicate']} duplicates) + "
            f"**{gx['arithmetic_kept']} arithmetic and reasoning problems** = {gx['total_prompts']:,} prompts.")
    rows = ["| training prompts | answer tokens | held-out (templates and topics) | in-template | natural prompts | "
            "held-out: frames / teacher-written topics / arithmetic | natural-text perplexity ratio | training |",
            "|---|---|---|---|---|---|---|---|"]
    for pt in c["points"]:
        src = pt["test_by_source"]

        def one(name: str) -> str:
            v = next((v for k, v in src.items() if k.startswith(name)), None)
            return _pct(v["agreement"]) if v and v["agreement"] is not None else "—"
        ho = pt["held_out"]
        rows.append(f"| {pt['train_prompts']:,} | {pt['answer_tokens']:,} | {_ci(ho['test'])} | "
                    f"{_ci(ho['test_in_template'])} | {_ci(pt['natural_prompts'])} | "
                    f"{one('frame')} / {one('teacher')} / {one('arith')} | "
                    + (f"{pt['natural_text_perplexity_ratio']:.1f}×" if pt.get("natural_text_perplexity_ratio") else "—")
                    + f" | {pt['train_seconds']:.0f} s |")
    sl = c["slope"]
    tt = c.get("ten_times") or {}
    lines.append(f"The curve (`benchmarks/bench_lm_curve.py`: the card at {c['epochs']} epoch, {c['settings']}; nested "
                 "subsets of the training prompts, `data.train_prompts`):\n\n" + "\n".join(rows))
    ls, last = sl["held_out_test"]["least_squares_points_per_1000"], sl["held_out_test"]["last_two_points_per_1000"]
    nl = sl["natural_prompts"]["least_squares_points_per_1000"]
    lines.append(f"Held-out agreement rose {ls:+.1f} points per 1,000 answers over these points ({last:+.1f} between "
                 f"the last two), natural prompts {nl:+.1f}: "
                 + ("more answers help and the curve has not flattened by the last point. It is no line to extend: the "
                    "slope must fall as agreement rises, and at one epoch every answer is also a training step, so it "
                    "mixes more data with more steps. " if ls > 0 else "more answers do not help measurably here. ")
                 + (f"Ten times the answers ({tt['answers']:,}) would take about {tt['train_hours_here']:.1f} h of "
                    f"training on this host at its measured {c['train_answer_tokens_per_s']:.0f} answer tokens/s "
                    "(an estimate), after the teacher answers them: a run for a GPU host." if tt else ""))
    rc = c.get("reach")
    if rc:
        def need(r: dict, what: str) -> str:
            if r["log_fit_answers"] is None:
                return f"{what} {_pct(r['goal'])}: the curve does not rise, no answer count reaches it"
            def hundreds(n: int) -> str:  # an extrapolation: no more digits than it has
                return f"{int(round(n, -2)):,}"
            return (f"{what} {_pct(r['goal'])} (at {_pct(r['at_last_point'])} now) about "
                    f"{hundreds(r['log_fit_answers'])} training answers by a log fit "
                    f"({r['log_fit']['points_per_doubling']:+.1f} points per doubling), at least "
                    f"{hundreds(r['linear_last_two_answers'])} on the last two points' line")
        lines.append("Read off the curve for issue #28's goals (both extrapolate past the last point, at one epoch): "
                     + need(rc["held_out_test"], "held-out agreement") + "; "
                     + need(rc["natural"], "natural-prompt agreement") + ".")
    for old in c.get("superseded", [])[:1]:  # the curve on the smaller set before, on its own held-out split
        pts = ", ".join(f"{p['train_prompts']}: {_pct(p['held_out']['test']['agreement'])} / "
                        f"{_pct(p['natural_prompts']['agreement'])}" for p in old["points"])
        ols = old["slope"]["held_out_test"]["least_squares_points_per_1000"]
        lines.append(f"The same curve on `{old['prompts']}` (its own held-out split, {old['created'][:10]}), training "
                     f"prompts: held-out / natural-prompt agreement — {pts}; {ols:+.1f} points per 1,000 answers.")
    return "\n\n".join(lines) + "\n\n" + _source("lm_curve.json", c, "; " + c["notes"][0] if c.get("notes") else "")


GENERATORS["prompts-range"] = prompts_range


def lm_samples() -> str:
    """Several answers per training prompt against more prompts and more epochs (bench_lm_samples.py)."""
    d = _load_opt("lm_samples.json")
    if d is None:
        return "_No measurement yet: run `python benchmarks/bench_lm_samples.py`._\n"
    pts = d["points"]
    rows = ["| answers per prompt × epochs | answers (training prompts) | sequences trained | held-out (templates and "
            "topics) | in-template | natural prompts | natural-text perplexity ratio | training | the distinct-prompt "
            "curve at as many sequences (log fit) |", "|---|---|---|---|---|---|---|---|---|"]
    for pt in pts:
        e = pt.get("epochs", 1)
        n = pt.get("trained_examples", pt["answers"] * e)
        fit = pt.get("distinct_prompts_log_fit")
        rows.append(f"| {pt['samples_per_prompt']} × {e} | {pt['answers']:,} ({pt['train_prompts']:,}) | {n:,} | "
                    f"{_ci(pt['held_out']['test'])} | {_ci(pt['held_out']['test_in_template'])} | "
                    f"{_ci(pt['natural_prompts'])} | "
                    + (f"{pt['natural_text_perplexity_ratio']:.1f}×" if pt.get("natural_text_perplexity_ratio") else "—")
                    + f" | {pt['train_seconds']:.0f} s | "
                    + (f"{_pct(fit['held_out_test'])} / {_pct(fit['natural'])} natural"
                       + (" (extrapolated)" if pt.get("distinct_prompts_extrapolated") else "") if fit else "—") + " |")
    by = {(p["samples_per_prompt"], p.get("epochs", 1)): p for p in pts}
    sampled = [p for p in pts if p["samples_per_prompt"] > 1 and p.get("sampling")]
    lines = [f"Several answers per prompt (`benchmarks/bench_lm_samples.py`, `generate.train_samples`: the teacher's "
             f"greedy answer, then sampled ones at temperature {d['sampling']['temperature']}, top-p "
             f"{d['sampling']['top_p']}; one equal to an answer kept for its prompt dropped), on the curve's set and "
             f"held-out split, {d['settings']}:\n\n" + "\n".join(rows)] if d.get("sampling") else \
        [f"Several answers per prompt (`benchmarks/bench_lm_samples.py`), {d['settings']}:\n\n" + "\n".join(rows)]
    say = []
    one = by.get((1, 1))
    if one is not None and sampled:
        best = max((p for p in sampled if p.get("epochs", 1) == 1), key=lambda p: p["samples_per_prompt"], default=None)
        if best is not None:
            g = 100 * (best["held_out_test"] - one["held_out_test"])
            gn = 100 * (best["natural"] - one["natural"])
            sm = best["sampling"]
            r0, r1 = one.get("natural_text_perplexity_ratio"), best.get("natural_text_perplexity_ratio")
            say.append(f"{best['samples_per_prompt']} answers per prompt against 1, one epoch each: held-out "
                       f"{_pts(g)}, natural prompts {_pts(gn)} ({sm['kept']:,} sampled answers kept of {sm['asked']:,}; "
                       f"the teacher took {sm['seconds'] / 60:.0f} min to sample them)"
                       + (f", the natural-text perplexity ratio {r0:.1f}× → {r1:.1f}× (no general text in these builds)"
                          if r0 and r1 else ""))
            fit = best.get("distinct_prompts_log_fit")
            if fit:
                def than(got: float, read: float) -> str:
                    return ("as much as" if abs(100 * (got - read)) < 1 else "more than" if got > read else "less than")
                say.append(f"the distinct-prompt curve's log fit reads {_pct(fit['held_out_test'])} held-out and "
                           f"{_pct(fit['natural'])} natural at as many training sequences"
                           + (" (an extrapolation past its last point)" if best.get("distinct_prompts_extrapolated")
                              else "")
                           + ": sampled answers to the same prompts bought "
                           + than(best["held_out_test"], fit["held_out_test"]) + " new prompts are read to buy on "
                           "held-out templates, " + than(best["natural"], fit["natural"]) + " on natural prompts")
        for k in sorted({p["samples_per_prompt"] for p in sampled}, reverse=True):
            a, b = by.get((k, 1)), by.get((1, k))
            if a is not None and b is not None:  # equal training steps: more answers against more passes
                g = 100 * (a["held_out_test"] - b["held_out_test"])
                say.append(f"at equal training steps, {k} answers per prompt for 1 epoch against 1 answer for {k} "
                           f"epochs: held-out {_pct(a['held_out_test'])} vs {_pct(b['held_out_test'])} ({_pts(g)}), "
                           f"natural prompts {_pct(a['natural'])} vs {_pct(b['natural'])}, in-template "
                           f"{_pct(a['held_out']['test_in_template']['agreement'])} vs "
                           f"{_pct(b['held_out']['test_in_template']['agreement'])}"
                           + (f", natural-text perplexity ratio {a['natural_text_perplexity_ratio']:.1f}× vs "
                              f"{b['natural_text_perplexity_ratio']:.1f}×" if a.get("natural_text_perplexity_ratio")
                              and b.get("natural_text_perplexity_ratio") else ""))
                break
    goals = [p for p in pts if p["held_out_test"] >= 0.55 and p["natural"] >= 0.45]
    say.append("issue #28's goals (held-out ≥ 55%, natural prompts ≥ 45%): "
               + ("reached by " + ", ".join(f"{p['samples_per_prompt']} × {p.get('epochs', 1)}" for p in goals)
                  if goals else f"not reached by any point (best held-out {_pct(max(p['held_out_test'] for p in pts))})"))
    lines.append("Read: " + "; ".join(say) + ".")
    out = "\n\n".join(lines) + "\n\n" + _source("lm_samples.json", d, "; " + d["notes"][0] if d.get("notes") else "")
    ids = _load_opt("lm_curve_ids.json")
    if ids and one is not None and ids.get("points"):  # the 1 x 1 point again, answers as the teacher's own tokens
        q = ids["points"][-1]
        out += ("\n\nThese builds scored and trained on the answers' text re-encoded, which is not always what the "
                "teacher generated (SmolLM2's \"\\n\\n\" token comes back as two); answers now keep the teacher's own "
                f"tokens. The 1 × 1 point again on them: held-out {_ci(q['held_out']['test'])} (was "
                f"{_pct(one['held_out_test'])}), natural prompts {_ci(q['natural_prompts'])} (was {_pct(one['natural'])}),"
                f" the teacher against its own answers {_pct(q['teacher_held_out']['test'])} on the test set (was "
                f"{_pct(one['teacher_held_out']['test'])}).\n\n" + _source("lm_curve_ids.json", ids))
    return out


GENERATORS["lm-samples"] = lm_samples


def lm_kd_seeds() -> str:
    """Logit KD against the answers-only control, per seed (bench_lm_kd_seeds.py)."""
    d = _load_opt("lm_kd_seeds.json")
    if d is None:
        return "_No measurement yet: run `python benchmarks/bench_lm_kd_seeds.py`._\n"
    rows = ["| seed | held-out templates: KD / control (gain) | in-template: KD / control (gain) | validation gain |",
            "|---|---|---|---|"]
    for seed, r in d["seeds"].items():
        t, i, v = (r["sets"][k] for k in ("test", "test_in_template", "val"))
        rows.append(f"| {seed} | {_pct(t['student'])} / {_pct(t['control'])} ({_pts(t['gain_points'])}) | "
                    f"{_pct(i['student'])} / {_pct(i['control'])} ({_pts(i['gain_points'])}) | {_pts(v['gain_points'])} |")
    g, gv = d["gain_points"]["test"], d["gain_points"]["val"]
    own = [r["sets"]["test"]["student"] for r in d["seeds"].values()]
    verdict = (f"logit KD beats the answers-only control on held-out templates in every seed (mean {_pts(g['mean'])}, "
               f"{_pts(g['min'])} … {_pts(g['max'])}); on validation {sum(v > 0 for v in gv['per_seed'])} of "
               f"{len(gv['per_seed'])} seeds (mean {_pts(gv['mean'])}): a small gain against the seed-to-seed spread of "
               f"the student's own agreement ({100 * (max(own) - min(own)):.1f} points)"
               + (", the student's and the control's 95% intervals overlapping in every seed" if all(
                   r["sets"]["test"]["student_ci95"][0] <= r["sets"]["test"]["control_ci95"][1]
                   for r in d["seeds"].values()) else "") if d["goal_met"] else
               f"logit KD does **not** beat the answers-only control in every seed (held-out-template gain "
               f"{_pts(g['min'])} … {_pts(g['max'])}, mean {_pts(g['mean'])}): the teacher's answers carry what it "
               "teaches here; its top-k logits add no reliable gain at this budget")
    return (f"`{d['recipe']}` at {d['epochs']} epoch(s), {d['settings']}:\n\n" + "\n".join(rows) + f"\n\n{verdict}.\n\n"
            + _source("lm_kd_seeds.json", d, "; " + d["notes"][0] if d.get("notes") else ""))


GENERATORS["lm-kd-seeds"] = lm_kd_seeds


def lm_weighting() -> str:
    """Per-token difficulty weighting against none, per seed (bench_lm_weighting.py)."""
    d = _load_opt("lm_weighting.json")
    if d is None:
        return "_No measurement yet: run `python benchmarks/bench_lm_weighting.py`._\n"
    k, b = d["kind"], d["builds"]
    rows = [f"| seed | held-out templates: {k} / none (Δ) | in-template: {k} / none (Δ) | validation Δ | "
            "natural prompts Δ |", "|---|---|---|---|---|"]
    for i, seed in enumerate(d["seeds"]):
        w, n = b[f"{k}/seed{seed}"], b[f"none/seed{seed}"]
        cells = [f"{_pct(w['sets'][s]['agreement'])} / {_pct(n['sets'][s]['agreement'])} "
                 f"({_pts(d['delta_points'][s]['per_seed'][i])})" for s in ("test", "test_in_template")]
        rows.append(f"| {seed} | {cells[0]} | {cells[1]} | {_pts(d['delta_points']['val']['per_seed'][i])} | "
                    f"{_pts(d['delta_points']['natural_prompts']['per_seed'][i])} |")
    t = d["delta_points"]["test"]
    overlap = all(b[f"{k}/seed{s}"]["sets"]["test"]["ci95"][0] <= b[f"none/seed{s}"]["sets"]["test"]["ci95"][1] and
                  b[f"none/seed{s}"]["sets"]["test"]["ci95"][0] <= b[f"{k}/seed{s}"]["sets"]["test"]["ci95"][1]
                  for s in d["seeds"])
    verdict = (f"`{k}` weighting raises held-out-template agreement in every seed (mean {_pts(t['mean'])}, "
               f"{_pts(t['min'])} … {_pts(t['max'])})" if d["helps"] else
               f"`{k}` weighting does **not** raise held-out-template agreement in every seed ({_pts(t['min'])} … "
               f"{_pts(t['max'])}, mean {_pts(t['mean'])}), so the card leaves `distill.weighting` off")
    others = [(name, d["delta_points"][k]) for name, k in (("validation", "val"), ("natural prompts", "natural_prompts"))]
    up = [f"{name} (mean {_pts(v['mean'])})" for name, v in others if v["min"] > 0]
    if up:
        verdict += f"; it gains in every seed on {' and '.join(up)}"
    verdict += ", the two arms' 95% held-out intervals overlapping in every seed" if overlap else ""
    return (f"`{d['recipe']}` at {d['epochs']} epoch(s), {d['settings']}:\n\n" + "\n".join(rows) + f"\n\n{verdict}.\n\n"
            + _source("lm_weighting.json", d, "; " + "; ".join(d["notes"]) if d.get("notes") else ""))


GENERATORS["lm-weighting"] = lm_weighting


def weight_only() -> str:
    """Weight-only candidates as NNCF writes them against the same graphs on onnxruntime's weight-only kernels
    (bench_weight_only.py)."""
    d = _load_opt("weight_only.json")
    if d is None:
        return "_No measurement yet: run `python benchmarks/bench_weight_only.py`._\n"
    rows = ["| model | candidate | size | tokens/s | next-token agreement with its FP32 | natural-text perplexity (FP32) |",
            "|---|---|---|---|---|---|"]
    fp32 = {r["model"]: r for r in d["rows"] if r["candidate"] == "fp32"}
    for r in d["rows"]:
        tps = f"{r['tokens_per_s']:.0f}" if r.get("tokens_per_s") else f"failed: {r.get('error')}"
        kept = f" ({r['kept_tokens']:,} tokens kept)" if r.get("kept_tokens") else ""
        rows.append(f"| {r['model']} | `{r['candidate']}`{kept} | {r['size_bytes'] / 2**20:.1f} MiB | {tps} | "
                    f"{_pct(r['agreement_with_fp32'])} | {r['text_perplexity']:,.1f} "
                    f"({fp32[r['model']]['text_perplexity']:,.1f}) |")

    def row(model, cand):
        return next((r for r in d["rows"] if r["model"] == model and r["candidate"] == cand), None)

    speedups = []
    for cand in ("int8-weight", "int4-weight"):
        for model in ("teacher", "student"):
            a, b = row(model, f"{cand} (as NNCF writes it)"), row(model, cand)
            if a and b and a.get("tokens_per_s") and b.get("tokens_per_s"):
                speedups.append(f"{model} `{cand}` {a['tokens_per_s']:.1f} → {b['tokens_per_s']:.0f} tokens/s "
                                f"({b['tokens_per_s'] / a['tokens_per_s']:.1f}×)")
    ratios = d.get("student_tokens_per_s_ratios") or {}
    best = max(ratios.items(), key=lambda kv: next(iter(kv[1].values())), default=None)
    line = ("Lowered onto onnxruntime's kernels (no weight changes; INT8 activations per block at `accuracy_level` 4): "
            + "; ".join(speedups) + ".")
    if best:
        (vs_int8, r_int8), (vs_any, r_any) = list(best[1].items())
        line += (f" The fastest student row, `{best[0]}`, decodes {_x(r_int8)} the tokens/s of the {vs_int8[3:]} and "
                 f"{_x(r_any)} those of the {vs_any[3:]}")
        int8 = max(((c, r) for c, r in ratios.items() if c.startswith("int8")), key=lambda kv: next(iter(kv[1].values())),
                   default=None)
        line += (f"; the fastest INT8 student row, `{int8[0]}`, {_x(next(iter(int8[1].values())))} the teacher's "
                 f"fastest INT8." if int8 and int8[0] != best[0] else ".")
    return (f"{d['measured_on']}; {d['timing']}; fidelity on {d['natural_text']}. The student is the card's cut of "
            f"the teacher, **untrained** (its weights are the teacher's, sliced): its rows say what quantization does to "
            f"such weights and how fast its shape decodes, not how well a trained student answers; its `-vocab` rows keep "
            f"the prompt set's and the general text's tokens, with the uncalibrated floor (no validation answers here to "
            f"measure the dropped tokens' share on), so their perplexity overstates what a build's would be.\n\n" + "\n".join(rows) + f"\n\n{line}\n\n"
            + _source("weight_only.json", d))


GENERATORS["weight-only"] = weight_only


def render(text: str) -> str:
    """`text` with every marker block regenerated; an unknown block name is an error."""
    def repl(m: re.Match) -> str:
        name = m.group("name")
        if name not in GENERATORS:
            raise SystemExit(f"README.md: unknown readme-numbers block '{name}' (known: {', '.join(GENERATORS)})")
        return m.group(1) + GENERATORS[name]() + m.group(4)

    return _BLOCK.sub(repl, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md differs from the results files")
    ap.add_argument("--readme", type=Path, default=README)
    args = ap.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    missing = set(GENERATORS) - {m.group("name") for m in _BLOCK.finditer(text)}
    if missing:
        print(f"{args.readme}: no readme-numbers block for {', '.join(sorted(missing))}", file=sys.stderr)
        return 1
    new = render(text)
    if args.check:
        if new != text:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                                       "README.md", "README.md (from results)"))
            print("README.md disagrees with benchmarks/results: run `make readme-numbers`", file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.readme.write_text(new, encoding="utf-8")
        print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
