"""What the shared stages (tasks/stages/) ask a language model: how its candidates are judged (next-token
agreement through onnxruntime with the KV cache, perplexity beside it), how its models are timed (the
generation benchmark, per token) and its report rows."""
from __future__ import annotations

from pathlib import Path
from typing import Any


from edgekd.errors import ConfigError
from edgekd.pipeline import BuildContext, StageResult
from edgekd.tasks.text_generation.data import _gen, _teacher_info, read_answers
from edgekd.tasks.text_generation.export import _examples


LM_CANDIDATES = ("fp32", "fp16", "int8-dynamic", "int8-weight", "int4-weight")


# --------------------------------------------------------------------------- quantize


def _quantize_cfg(ctx: BuildContext) -> dict:
    from edgekd.quantize.candidates import check_options

    q = ctx.recipe.quantize
    # checked here, in the pipeline's pre-flight: a bad option is exit 2 before the teacher generates
    check_options(q.options)
    kept, dropped = lm_candidate_plan(ctx)
    if dropped and ctx.console is not None:  # said once per build, at pre-flight, as for classifiers
        from edgekd.targets import dropped_line

        line = dropped_line(ctx.target, dropped, kept)
        ctx.memo("candidates-not-built", lambda: ctx.console.print(line, soft_wrap=True, markup=False) or True)
    return {"candidates": kept, "options": q.options, "budget": q.accuracy_budget,
            "accuracy_aware": q.accuracy_aware}


def lm_candidate_names(ctx: BuildContext) -> list[str]:
    """The candidates in the recipe's order, fp32 first. Each of LM_CANDIDATES also comes as `NAME-vocab`: made from
    the student with its output head trimmed to the tokens seen in training (edgekd/llm/vocab.py)."""
    from edgekd.quantize.candidates import base_candidate, validate_candidate_names

    names = list(ctx.recipe.quantize.candidates or ["fp32", "int8-dynamic", "int8-weight", "int4-weight"])
    bases = [base_candidate(n)[0] for n in names]
    validate_candidate_names(bases)
    bad = [n for n, b in zip(names, bases) if b not in LM_CANDIDATES]
    if bad:
        raise ConfigError(f"candidate(s) {bad} do not apply to KV-cache language models",
                          hint=f"valid here: {', '.join(LM_CANDIDATES)}, each also as NAME-vocab (the output head "
                               "trimmed to the tokens seen in training); static QDQ would need calibration of every "
                               "cache input")
    return ["fp32"] + [n for n in names if n != "fp32"]  # fp32 first: the reference the others are judged against


def lm_candidate_plan(ctx: BuildContext) -> tuple[list[str], list[dict[str, str]]]:
    """(the candidates this build makes, those the target's family cannot ship): on Ascend the integer ONNX
    kinds (ATC has no parser for them; the bundle is the FP32 student's static graphs with the FP16
    preflight), reported as unsupported-on-target."""
    from edgekd.targets import split_candidates

    return split_candidates(ctx.target, lm_candidate_names(ctx))


RANK_EXAMPLES = 32  # validation examples that rank the keep-in-FP32 trials (the full validation split confirms each step)


def quantize_plan(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path):
    """A language model's candidates are judged by next-token agreement with the teacher's answers (teacher
    forcing through onnxruntime with the KV cache), perplexity beside it; whole projection kinds across every
    layer are the keep-in-FP32 unit."""
    from edgekd.llm.onnx_gen import evaluate_onnx
    from edgekd.quantize.candidates import base_candidate
    from edgekd.tasks.base import SCRATCH, QuantizePlan

    tok, val = _examples(ctx, inputs, "val")
    _, test = _examples(ctx, inputs, "test", tok)
    names, not_built = lm_candidate_plan(ctx)

    def evaluate(examples):
        def ev(path: Path) -> dict[str, Any]:
            r = evaluate_onnx(path, examples)
            return {**r, "score": r["agreement"]}
        return ev

    trimmed: dict[str, Any] = {}

    def trimmed_student() -> tuple[Path, dict[str, Any]]:
        """The FP32 student with its head over the tokens seen in training, made once for every -vocab candidate."""
        if not trimmed:
            path = wd / SCRATCH / "student-trimmed-head.onnx"  # removed when the stage is done
            _, train = _examples(ctx, inputs, "train", tok)
            dm = inputs["distill"].metrics
            keep = training_vocab_of(ctx, tok, train, [dm["end_id"], *dm.get("stop_ids", [])])
            info = trim_student_head(inputs["export"].path("student"), path, keep, val)
            trimmed.update(path=path, info={"head": info, "notes": [info["note"]]})
        return trimmed["path"], trimmed["info"]

    def variant(base: str):
        return lambda: (base, *trimmed_student())

    return QuantizePlan(
        variants={n: variant(base_candidate(n)[0]) for n in names if base_candidate(n)[1]},
        names=names, not_built=not_built, options=dict(ctx.recipe.quantize.options), calib=None,
        validate=evaluate(val), test=evaluate(test),
        fields=lambda name, path, v, t: {"val_perplexity": v["perplexity"], "perplexity": t["perplexity"]},
        metric="next-token agreement with the teacher", grouping="layer-groups",
        smoke=lambda path: evaluate_onnx(path, val[:1]),  # loads and decodes in onnxruntime with its KV cache
        rank=lambda path: evaluate_onnx(path, val[:RANK_EXAMPLES])["agreement"])


def trim_student_head(src: Path, dst: Path, keep: list[int], val) -> dict[str, Any]:
    """`src` (a student's FP32 KV-cache ONNX) with its head over `keep` (edgekd/llm/vocab.py), the dropped tokens
    together at their share of the validation answers `val` (examples): how the quantize stage makes every -vocab
    candidate's starting graph and the search times one. Returns trim_head's info and those counts."""
    from edgekd.llm.vocab import dropped_share, trim_head

    share = dropped_share([e.ids[e.start:] for e in val], keep)
    info = trim_head(src, dst, keep, dropped_mass=share["dropped_mass"])
    info["validation_tokens_outside"] = {k: share[k] for k in ("missed", "tokens")}
    return info


def training_vocab_of(ctx: BuildContext, tok, train, always: list[int]) -> list[int]:
    """The tokens a student trains on: the training examples (prompt and answer), the general text mixed in
    (distill.general_text, the same draw as the distill stage's), and `always` (the end and stop tokens)."""
    from edgekd.llm.vocab import training_vocab

    seqs = [e.ids for e in train]
    gt = ctx.recipe.distill.general_text
    if gt is not None:
        from edgekd.llm.natural_text import general_text

        seqs += [e.ids for e in general_text(tok, gt.source, gt.samples, gt.max_length, ctx.recipe.distill.seed)[0]]
    return training_vocab(seqs, always)


def vocab_reads(ctx: BuildContext) -> dict[str, Any]:
    """What the kept tokens of a -vocab candidate depend on beyond the answers (a stage key's part)."""
    gt = ctx.recipe.distill.general_text
    # hard_label (a loss weight) does not change which texts are drawn: left out, so the key is what it was before it
    return {"general_text": gt.model_dump(mode="json", exclude={"hard_label"}) if gt is not None else None,
            "seed": ctx.recipe.distill.seed}


# --------------------------------------------------------------------------- profile


def _bench_settings(ctx: BuildContext):
    """The settings every generation benchmark of the profile stage shares. Where the target's runtime runs
    here (cpu; cuda on a GPU host: its onnxruntime providers, the teacher on the GPU) the benchmark is the
    device's; elsewhere this host's CPU stands in (a host proxy), and its energy takes the power of the
    machine that ran it, never the target card's."""
    from edgekd.profile.spec import GenerationSettings
    from edgekd.targets import family

    measured_on, _, dev = family(ctx.target).where_profiled(ctx.target)
    return GenerationSettings.from_card(ctx.target, _gen(ctx), profiled_on=measured_on, profile_device=dev)


def _profile_cfg(ctx: BuildContext) -> dict:
    return _bench_settings(ctx).model_dump(mode="json")


def profile_models(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path, tick) -> tuple[dict, dict, dict]:
    """The generation benchmark of the teacher (PyTorch) and every student candidate (onnxruntime with its KV
    cache), each in its own process: TTFT, per-token latency, tokens/s, memory, energy per token."""
    from edgekd.profile.spec import GenerationSpec

    tok, _ = _examples(ctx, inputs, "test")
    bench = _bench_settings(ctx)
    prompts = _profile_prompts(inputs, tok, bench)
    specs = {"teacher/fp32-torch": GenerationSpec(name="teacher/fp32-torch", kind="torch", prompt_ids=prompts,
                                                  path=_teacher_info(inputs["teacher"])["folder"], settings=bench)}
    for c in inputs["quantize"].metrics["candidates"]:
        if c["error"] is None:
            name = f"student/{c['variant']}"
            specs[name] = GenerationSpec(name=name, kind="onnx", path=str(inputs["quantize"].dir / c["path"]),
                                         prompt_ids=prompts, settings=bench)
    out = {}
    for name, spec in specs.items():
        out[name] = _bench_row(spec, wd / "logs", bench)
        tick(f"profile {name}", len(specs))
    settings = {**bench.model_dump(), "prompt_tokens": [len(p) for p in prompts],
                "unit": "one generated token (decode step); ttft is the prefill of the whole prompt"}
    return out, {"settings": settings}, {}


def _profile_prompts(inputs: dict[str, StageResult], tok, bench) -> list[list[int]]:
    """The held-out prompts every generation benchmark of a build decodes from (the first of the test split)."""
    from edgekd.llm.generate import chat_ids

    return [chat_ids(tok, r["prompt"]) for r in read_answers(inputs["generate"])["test"][: bench.prompts]]


def _bench_row(spec, logs: Path, bench) -> dict[str, Any]:
    """One model's generation benchmark in its own process, named as the report reads it: per-token latency and
    energy (one inference is one generated token), where it was measured."""
    from edgekd.profile.runner import run_bench

    r = run_bench(spec, logs, str(spec.name).replace("/", "_"))
    r["latency_ms"] = r["decode_ms_per_token"]  # the selection and report read per-token latency
    e = dict(r["energy"])
    e["joules_per_inference"] = e["joules_per_token"]  # one inference = one generated token
    r["energy"] = e
    r["measured_on"], r["device"] = bench.profiled_on, bench.profile_device.name
    return r


# --------------------------------------------------------------------------- the quantized teacher


# issue 28: what a user quantizing the teacher would pick (int8-weight since it runs on onnxruntime's weight-only
# kernels: faster than int8-dynamic and closer to FP32 for the 135M teacher, benchmarks/results/weight_only.json)
QUANTIZED_TEACHER_KINDS = ("int8-dynamic", "int8-weight", "int4-weight")


def _quantized_teacher_cfg(ctx: BuildContext) -> dict:
    from edgekd.quantize.candidates import check_options
    from edgekd.tasks.text_generation.export import _opset

    check_options(ctx.recipe.quantize.options)
    # the student's candidate options and benchmark settings: the rows are comparable because these are the same
    return {"options": ctx.recipe.quantize.options, "opset": _opset(ctx),
            "bench": _bench_settings(ctx).model_dump(mode="json")}


def quantized_teacher_models(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path, kinds: list[str],
                             tick) -> dict[str, dict[str, Any]]:
    """The teacher exported to ONNX with its KV cache (the student's exporter), quantized by the student's candidate
    makers and options, scored on the student's test examples (next-token agreement with the teacher's greedy answers,
    perplexity) through onnxruntime, and timed by the student's generation benchmark and settings. Its FP32 ONNX is
    kept only when `fp32` is asked for (540 MB for the 135M teacher)."""
    import shutil

    from edgekd.llm.onnx_gen import evaluate_onnx, export_with_past
    from edgekd.profile.spec import GenerationSpec
    from edgekd.quantize.candidates import make_candidate
    from edgekd.tasks.stages.quantized_teacher import make_each
    from edgekd.tasks.text_generation.export import _opset

    info = _teacher_info(inputs["teacher"])
    tok, test = _examples(ctx, inputs, "test")  # the student's test examples: the same tokens its rows are scored on
    bench = _bench_settings(ctx)
    prompts = _profile_prompts(inputs, tok, bench)
    fp32 = export_with_past(Path(info["folder"]), wd / "fp32", _opset(ctx))
    tick("quantized teacher: exported", len(kinds) + 1)
    (wd / "logs").mkdir(exist_ok=True)

    def one(kind: str) -> dict[str, Any]:
        if kind == "fp32":
            path, size = fp32, sum(f.stat().st_size for f in fp32.parent.iterdir() if f.name.startswith(fp32.name))
        else:
            path = wd / f"{kind}.onnx"
            make_candidate(kind, fp32, path, None, dict(ctx.recipe.quantize.options),
                           smoke=lambda p: evaluate_onnx(p, test[:1]))  # loads and decodes with its KV cache
            size = path.stat().st_size
        ev = evaluate_onnx(path, test)
        spec = GenerationSpec(name=f"teacher/{kind}", kind="onnx", path=str(path), prompt_ids=prompts, settings=bench)
        row = {"variant": kind, "quantization": kind, "format": "onnx", "runtime": "onnxruntime",
               "path": str(path.relative_to(wd)), "size_bytes": size, "params": info["params"],
               "accuracy": ev["agreement"], "perplexity": ev["perplexity"], "error": None,
               "profile": _bench_row(spec, wd / "logs", bench)}
        tick(f"quantized teacher: {kind}", len(kinds) + 1)
        return row

    rows = make_each(kinds, one)
    shutil.rmtree(wd / "logs", ignore_errors=True)
    if "fp32" not in kinds:
        shutil.rmtree(wd / "fp32", ignore_errors=True)
    return rows


# --------------------------------------------------------------------------- select and report


def report_parts(build_dir: Path, res: dict[str, dict], run: dict):
    """A text-generation build's rows. `accuracy` is next-token agreement with the teacher's answers on
    held-out prompts (the teacher's own figure is its argmax agreeing with its greedy tokens, ~1.0);
    `latency_ms` is per generated token; `energy.joules_per_inference` is per generated token."""
    from edgekd.report.build import candidate_row, model_row, text_generation_control
    from edgekd.tasks.base import ReportParts

    t, gen, d, e, q, p, sel = (res[n] for n in ("teacher", "generate", "distill", "export", "quantize", "profile",
                                                "select"))
    prof = p["metrics"]["models"]

    def entry(role: str, variant: str, fmt: str, runtime: str, path: str, size: int, params: int,
              acc: float | None, ppl: float | None, pr: dict | None = None) -> dict:
        pr = prof.get(f"{role}/{variant}", {}) if pr is None else pr
        row = model_row(role, variant, fmt, runtime, pr, path=path, params=params, size_bytes=size, accuracy=acc,
                        throughput_batch=1, extra=("ttft_ms", "tokens_per_s", "spread", "noisy"))
        # one inference is one generated token: throughput is tokens/s, and the per-token figures say so by name
        return {**row, "perplexity": ppl, "throughput_per_s": pr.get("tokens_per_s"), "agreement": acc,
                "ms_per_token": pr.get("decode_ms_per_token"),
                "joules_per_token": (pr.get("energy") or {}).get("joules_per_token")}

    tm = t["metrics"]
    te = d["metrics"]["teacher"]["test"]
    compute = decode_compute(Path(tm["folder"]), build_dir / "distill" / "student")
    macs = {role: (compute or {}).get(role, {}).get("total") for role in ("teacher", "student")}
    models = [entry("teacher", "fp32-torch", "safetensors", "torch-eager", tm["folder"], tm["size_bytes"], tm["params"],
                    te["agreement"], te["perplexity"])]
    from edgekd.tasks.stages.quantized_teacher import STAGE, read_rows

    for r in read_rows(build_dir, run):  # the teacher quantized: beside the student, never a candidate
        if r.get("error") is None:
            models.append({**entry("teacher", r["variant"], r["format"], r["runtime"], f"{STAGE}/{r['path']}",
                                   r["size_bytes"], r["params"], r["accuracy"], r["perplexity"], r["profile"]),
                           "quantization": r["quantization"]})
    status = {c["variant"]: c["status"] for c in sel["metrics"]["candidates"]}
    candidates = []
    for c in q["metrics"]["candidates"]:
        candidates.append(candidate_row(c, ("variant", "format", "accuracy", "val_accuracy", "perplexity",
                                            "size_bytes", "kept_fp32_nodes", "error"), status, prof))
        if c.get("error") is None:
            models.append(entry("student", c["variant"], "onnx", "onnxruntime", f"quantize/{c['path']}",
                                c["size_bytes"], d["metrics"]["params"], c["accuracy"], c.get("perplexity")))
    # named like the classifier's: training.control.accuracy and comparison.kd_gain_points
    losses = d["metrics"].get("losses")
    ctrl = text_generation_control(d["metrics"].get("control"), d["metrics"].get("test"),
                                   losses.get("epochs") if isinstance(losses, dict) else None,
                                   d["metrics"].get("held_out"), d["metrics"].get("untrained"))
    training = {"student": {k: d["metrics"].get(k) for k in ("val", "test", "best_epoch", "train_seconds", "arch",
                                                             "losses", "examples")},
                "teacher": d["metrics"]["teacher"], "control": ctrl,
                "held_out": held_out_rows(d["metrics"], res["natural"]["metrics"]),
                # the language the student kept: perplexity on held-out natural text against the teacher's
                "natural_text": res["natural"]["metrics"].get("natural_text")}
    if d["metrics"].get("general_text"):  # what it trained on to keep it (distill.general_text)
        training["general_text"] = d["metrics"]["general_text"]
    # train_samples: the sampled answers beside the greedy ones (generate.train_samples > 1), else null
    generation = {k: gen["metrics"].get(k) for k in ("prompts", "answers", "mean_answer_tokens", "finished_fraction",
                                                     "seconds", "splits", "split", "train_samples")}
    split_kind = (gen["metrics"].get("split") or {}).get("kind", "shuffle")
    notes = ["accuracy = next-token agreement with the teacher's greedy answers on the test prompts (teacher forcing; "
             + ("held-out templates: no test template or slot word was trained on" if split_kind == "template"
                else "a seeded shuffle: test prompts may share templates with training prompts")
             + "); latency and energy are per generated token."]
    heads = {f"quantize/{c['path']}": (c.get("info") or {}).get("head") for c in q["metrics"]["candidates"]}
    for m in models:  # the same work per token whatever the precision (the row's runtime makes it faster or not)
        head = heads.get(m.get("path"))
        m["macs_per_token"] = (macs[m["role"]] - head["whole_head_macs_per_token"] + head["head_macs_per_token"]
                               if head and macs[m["role"]] is not None else macs[m["role"]])
    trimmed = next((h for h in heads.values() if h), None)
    if trimmed:  # the -vocab candidates: what they cannot say
        notes.append(f"-vocab candidates: {trimmed['note']}.")
    sections = {"generation": generation}
    if compute is not None:
        sections["decode_compute"] = compute
        notes.append(compute["sentence"])
    return ReportParts(models=models, candidates=candidates, teacher_same_runtime=_converted_teacher(build_dir),
                       training=training,
                       parity={"student_parity": e["metrics"]["student_parity"]}, control=ctrl, notes=notes,
                       sections=sections)


def decode_compute(teacher: Path, student: Path) -> dict | None:
    """report decode_compute: the multiply-accumulates of one decode step of teacher and student (their linear
    layers, read off each folder's config: a model of the compute, not a timing), their ratio, and the output head's
    share (the vocabulary both share: a student cut from the teacher keeps all of it). None when either folder is
    gone (a report made elsewhere) or not buildable."""
    from edgekd.llm.models import decode_macs

    t, s = decode_macs(teacher), decode_macs(student)
    if not t or not s or not s["total"]:
        return None
    ratio, share = t["total"] / s["total"], s["head"] / s["total"]
    sentence = (f"Per decoded token the student's linear layers do {s['total'] / 1e6:.1f}M multiply-accumulates "
                f"against the teacher's {t['total'] / 1e6:.1f}M ({ratio:.2f}x fewer; a model of the compute, not a "
                f"timing): the output head over the shared vocabulary is {s['head'] / 1e6:.1f}M of the student's "
                f"({100 * share:.0f}%): cutting layers leaves it whole, a narrower residual width shrinks it.")
    return {"what": "multiply-accumulates per decoded token in the linear layers (each weight used once per token), "
                    "read off each model's config; attention over the KV cache adds per_cached_token per position "
                    "in it",
            "teacher": t, "student": s, "ratio": ratio, "student_head_share": share, "sentence": sentence}


def _converted_teacher(build_dir: Path) -> str | None:
    """The teacher row the target family measured on the student's shipped runtime (mobile: the teacher's .pte
    on ExecuTorch), named by the convert stage: the like-for-like ratio beside the headline's PyTorch teacher."""
    from edgekd.fsio import read_result

    return ((read_result(build_dir / "convert") or {}).get("metrics") or {}).get("teacher_same_runtime")


def held_out_rows(dm: dict, natural: dict | None = None) -> dict | None:
    """training.held_out: per model (teacher: the sanity row, student, control, untrained cut student), next-token
    agreement and perplexity with bootstrap 95% intervals over prompts on the held-out-template test, the
    in-template test and (stage `natural`: teacher and student) the natural prompts, held out by source
    (per-template breakdowns stay in distill/result.json)."""
    sets = {"student": dm.get("held_out"), "teacher": dm.get("teacher_held_out"),
            "control": (dm.get("control") or {}).get("held_out"), "untrained": dm.get("untrained")}
    if not sets["student"]:
        return None  # a distill stage from before held-out reporting
    names = {"test": "held-out-template" if (dm.get("split") or {}).get("kind") == "template" else "shuffled-test",
             "test_in_template": "in-template"}
    out: dict[str, Any] = {}
    for model, ho in sets.items():
        if ho:
            out[model] = {names[k]: {f: v.get(f) for f in ("agreement", "agreement_ci95", "perplexity",
                                                           "perplexity_ci95", "prompts", "tokens")}
                          for k, v in ho.items() if k in names}
    for model in ("student", "teacher"):
        if natural and natural.get(model) and model in out:
            out[model]["natural-prompts"] = {f: natural[model].get(f) for f in ("agreement", "agreement_ci95", "perplexity",
                                                                                 "perplexity_ci95", "prompts", "tokens")}
    return out


# --------------------------------------------------------------------------- convert


def convert_job(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path):
    """The target family's job for the selected language-model student (an ExecuTorch program with its
    KV cache, the Ascend prefill/decode bundle): the student and teacher folders, the validation and test
    sequences, the prompts a greedy decode starts from, and the selected candidate's ONNX."""
    from edgekd.llm.generate import chat_ids
    from edgekd.llm.onnx_gen import evaluate_onnx
    from edgekd.targets import ConvertJob, LanguageModelPayload
    from edgekd.targets.base import host_device

    tok, val = _examples(ctx, inputs, "val")
    _, test = _examples(ctx, inputs, "test")
    ans = read_answers(inputs["generate"])
    cands = inputs["quantize"].metrics["candidates"]
    selected = inputs["select"].metrics["selected"]
    cand = next(c for c in cands if c["variant"] == selected)
    d = inputs["distill"].metrics
    payload = LanguageModelPayload(
        student_dir=inputs["distill"].dir / "student", teacher_dir=Path(_teacher_info(inputs["teacher"])["folder"]),
        val=val, test=test, val_prompts=[chat_ids(tok, r["prompt"]) for r in ans["val"]],
        test_prompts=[chat_ids(tok, r["prompt"]) for r in ans["test"]], pad_id=d["pad_id"], stop_ids=list(d["stop_ids"]),
        max_length=ctx.recipe.data.max_length, max_new_tokens=_gen(ctx).max_new_tokens,
        chat_template=getattr(tok, "chat_template", None), student_agreement=d.get("test_accuracy"),
        student_val_agreement=next((c.get("val_accuracy") for c in cands if c["variant"] == "fp32"), None),
        candidates=cands, bench=_bench_settings(ctx), teacher_on_target=_gen(ctx).teacher_on_target)
    return ConvertJob(wd=wd, target=ctx.target, selected=selected, onnx_path=inputs["quantize"].dir / cand["path"],
                      fp32_onnx=inputs["export"].path("student"), student=None, example={}, expected=[], calib={},
                      input_shapes={}, evaluate=lambda path: evaluate_onnx(path, val)["agreement"],
                      budget_points=ctx.recipe.quantize.accuracy_budget, payload=payload, options=dict(ctx.options),
                      host_device=host_device(), log=ctx.log)
