"""A distilled causal language model as an ExecuTorch program with its KV cache (`--target mobile`).

Export: transformers' ExecuTorch integration (`TorchExportableModuleForDecoderOnlyLM`: the HF model with a
static KV cache held as program buffers, `forward(input_ids, cache_position) -> logits`, the signature the
ExecuTorch LLM runner calls) is `torch.export`ed with a dynamic sequence length (one program prefills a
prompt and decodes token by token). Attention is ExecuTorch's LLM extension op `llama::custom_sdpa` (causal
from the cache position, reading the static cache in place), registered as a transformers attention
function; quantization is the LLM extension's torchao source transform (`extension.llm.export.quantize`:
"8da4w" = int8 dynamic activations + int4 grouped weights, "8da8w" = the same with int8 per-channel
weights (see PTE_VARIANTS for why not weight-only int8); embeddings 8-bit per-row, ExecuTorch's `-E 8,0`
for phones), lowered with the XNNPACK partitioner and the LLM export
builder's backend config (quant fusion, constraint-based memory planning of the dynamic shape).

Why not optimum-executorch (checked: 1.1.0 on PyPI): it requires transformers==5.0.0rc1 and optimum~=2.0,
while this project pins transformers 4.57 and optimum 1.x for the ONNX path; what it adds for a decoder-only
LM is the same three pieces used here (the transformers wrapper, custom_sdpa registration, torchao
quantize_) plus a custom KV-cache op we do not need (the static cache's index_put is a portable kernel that
costs ~1% of a decode step at these sizes). Installing it would downgrade-or-break the shared environment.

Every program is run on this host with ExecuTorch's runtime (`edgekd.runtimes.executorch_lm`): greedy
parity with PyTorch on validation prompts (fp32: identical tokens), next-token agreement with the teacher's
answers (validation: the choice, test: the report), and the generation benchmark (TTFT, ms/token,
tokens/s, peak RSS) in a fresh process per program. The teacher is exported (fp32) and timed the same way.

On a phone: the bundle carries benchmark_android.sh and prompts.json (`lm_adb`); `edgekd profile BUILD --adb
SERIAL`, with LLM_RUNNER set to an Android arm64 build of ExecuTorch's llama_main, times the shipped program
there with ExecuTorch's LLM runner (TTFT, ms/token, tokens/s; measured_on device).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.errors import StageError, UserError
# the phone benchmark's writer lives in lm_adb, beside its runner (and the bundle's sha256 check)
from edgekd.targets.mobile.lm_adb import bench_prompts, write_bench_files

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgekd.runtimes.executorch_lm import PteLM
    from edgekd.targets.base import ConvertJob, LanguageModelPayload

# variant -> (linear config, embedding config) of executorch.extension.llm.export.quantize.quantize_model_
PTE_VARIANTS: dict[str, tuple[str | None, str | None]] = {
    "pte-fp32": (None, None),
    "pte-8da4w": ("8da4w", "8w"),
    "pte-8da8w": ("8da8w", "8w"),
}
# No int8 weight-only linear program: XNNPACK has no weight-only int8 linear, and ExecuTorch's constant
# propagation folds the undelegated dequantize back into an fp32 weight (measured on the tiny test model: the
# "8w" program was 97% of the fp32 one's size) -- an fp32 program under another name. Its XNNPACK counterpart,
# int8 per-channel weights with int8 dynamic activations ("8da8w"), ships instead; embeddings are 8-bit in both.
# The recipe's quantize.candidates name the programs made (fp32 always, the reference): 4-bit grouped weights
# where it asks for int4-weight, 8-bit weights where it asks for an int8 candidate.
PTE_FOR_CANDIDATE = {"int4-weight": "pte-8da4w", "int8-dynamic": "pte-8da8w", "int8-weight": "pte-8da8w"}


def pte_variants(candidates: list[str]) -> list[str]:
    """The programs a recipe's candidates (quantize.candidates names) ask for, in PTE_VARIANTS order."""
    wanted = {"pte-fp32"} | {PTE_FOR_CANDIDATE[c] for c in candidates if c in PTE_FOR_CANDIDATE}
    return [v for v in PTE_VARIANTS if v in wanted]


GROUP_SIZE = 32  # ExecuTorch's default 4-bit group; per-channel int8 where a layer's width is not a multiple
ATTENTION = "edgekd_et_custom_sdpa"
BUNDLE_DIR = "mobile"
MANIFEST_SCHEMA_VERSION = 1


# --------------------------------------------------------------------------- export


def _custom_sdpa(module, query, key, value, attention_mask, position_ids=None, scaling=None, softcap=None,
                 head_mask=None, **kwargs):
    """transformers attention function running ExecuTorch's `llama::custom_sdpa` on the static cache.

    The op takes [batch, seq, heads, dim] and applies the causal mask itself from `start_pos` (the first
    cache position of the query), so the cache rows past the current position are never read."""
    import torch

    if softcap is not None or getattr(module, "sliding_window", None):
        raise UserError("the ExecuTorch export supports full causal attention without soft-capping",
                        hint="a sliding-window or soft-capped model needs the hybrid cache; build it for --target cpu")
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    start_pos = position_ids[0][0].item()
    out = torch.ops.llama.custom_sdpa(q, k, v, start_pos=start_pos, attn_mask=None, drpout_p=0.0, is_causal=True,
                                      scale=scaling)
    return out, None


def _no_mask(*args, **kwargs):
    return None  # custom_sdpa builds its causal mask from the cache position


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from edgekd.runtimes.executorch_lm import load_llm_ops

    load_llm_ops()
    AttentionInterface.register(ATTENTION, _custom_sdpa)
    AttentionMaskInterface.register(ATTENTION, _no_mask)


def _quantize(model, linear: str, embedding: str | None, group_size: int) -> list[str]:
    """ExecuTorch's LLM source transform (torchao `quantize_`) in place. 8da4w: int4 groups of `group_size` where
    a layer's input width holds whole groups; on the others (a pruned student's odd residual width, e.g. 190)
    int8 per-channel weights, as in 8da8w: XNNPACK's int4 kernels take groups of a multiple of 32 only (a
    per-channel int4 row of 190 is refused at partitioning). Returns those layers' names."""
    import contextlib
    import io
    import warnings

    import torch
    from executorch.extension.llm.export.quantize import quantize_model_

    odd = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.in_features % group_size]
    # quantize_model_ prints a line per step to stdout (the CLI's --json channel) and is marked experimental
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", FutureWarning)
        quantize_model_(model, qlinear_config=linear, qlinear_group_size=group_size if linear == "8da4w" else 0,
                        qembedding_config=embedding, qembedding_group_size=0,
                        skip_incompatible_shapes=linear == "8da4w")
    if linear == "8da4w" and odd:
        from torchao.quantization.granularity import PerAxis
        from torchao.quantization.quant_api import Int8DynamicActivationIntxWeightConfig, quantize_

        names = set(odd)
        quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0),
                                                               intx_choose_qparams_algorithm="hqq_scale_only"),
                  filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn in names)
    return odd if linear == "8da4w" else []


def export_lm_pte(model_dir: Path | str, out_path: Path | str, variant: str, cache_len: int,
                  group_size: int = GROUP_SIZE) -> dict[str, Any]:
    """The HF causal LM in `model_dir` as an XNNPACK-delegated .pte with a static KV cache of `cache_len`
    tokens and a dynamic sequence length (1..cache_len-1): prefill and decode in one method. Written
    atomically; returns size, delegation counts and the settings used."""
    import torch

    from edgekd.llm.models import load_causal_lm
    from edgekd.targets.mobile.executorch import _delegation, _stage_failure, require_executorch

    require_executorch()
    if variant not in PTE_VARIANTS:
        raise UserError(f"unknown .pte variant '{variant}'", hint=f"valid: {', '.join(PTE_VARIANTS)}")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    t0 = time.perf_counter()
    out_path = Path(out_path)
    model, _ = load_causal_lm(model_dir)
    cfg = model.config
    # the wrapper refuses a model whose generation config does not ask for the static cache it builds
    model.generation_config.use_cache = True
    model.generation_config.cache_implementation = "static"
    linear, embedding = PTE_VARIANTS[variant]
    for m in model.modules():
        if isinstance(m, torch.nn.Embedding):
            # padding_idx only masks a gradient (inference reads the row as any other), but it is an argument of
            # aten.embedding that ExecuTorch's quant-fusion pattern for the 8-bit embedding does not match: left
            # in, torchao's dequantize_affine stays in the graph without an ExecuTorch kernel.
            m.padding_idx = None
    per_channel = _quantize(model, linear, embedding, group_size) if linear is not None else []
    _register_attention()
    wrapper = TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=cache_len)
    wrapper.model.model.config._attn_implementation = ATTENTION  # after the wrapper set its own sdpa
    # seq > 1 in the example so the dynamic dimension is not specialised to 1
    ids, pos = torch.zeros((1, 3), dtype=torch.long), torch.arange(3, dtype=torch.long)
    seq = torch.export.Dim("seq_length", max=cache_len - 1)
    metadata = {"get_max_seq_len": cache_len, "get_max_context_len": cache_len, "get_vocab_size": int(cfg.vocab_size),
                "use_kv_cache": True, "use_sdpa_with_kv_cache": False, "enable_dynamic_shape": True,
                "get_n_layers": int(cfg.num_hidden_layers)}
    if getattr(cfg, "bos_token_id", None) is not None:
        metadata["get_bos_id"] = int(cfg.bos_token_id)
    try:
        with torch.no_grad():
            ep = wrapper.export(input_ids=ids, cache_position=pos,
                                dynamic_shapes={"input_ids": {1: seq}, "cache_position": {0: seq}}, strict=True)
    except Exception as e:  # torch.export raises many unrelated types; all mean "cannot capture this model"
        raise _stage_failure(f"torch.export of the {variant} language model", e) from e
    try:
        edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()], constant_methods=metadata,
                                           compile_config=EdgeCompileConfig(_check_ir_validity=False))
        delegation = _delegation(edge.exported_program().graph_module)
        # the LLM export builder's backend config: torchao's dequantize patterns fused into ExecuTorch's
        # quantized kernels (embedding_byte), memory planned for the upper bound of the dynamic length
        program = edge.to_executorch(ExecutorchBackendConfig(
            extract_delegate_segments=True, do_quant_fusion_and_const_prop=True,
            memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
            sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass()))
    except Exception as e:  # lowering errors name the unsupported edge op in their message
        raise _stage_failure(f"lowering of the {variant} language model", e) from e
    from edgekd.targets.mobile.executorch import write_program

    write_program(program, out_path)
    from importlib.metadata import version

    return {"format": "pte", "variant": variant, "path": out_path.name, "size_bytes": out_path.stat().st_size,
            "params": int(sum(p.numel() for p in model.parameters())), "cache_len": cache_len,
            "backend": "XnnpackBackend", **delegation,
            "settings": {"export": "transformers.integrations.executorch.TorchExportableModuleForDecoderOnlyLM "
                                   "(static cache), torch.export with a dynamic sequence length",
                         "attention": "executorch llama::custom_sdpa", "partitioner": "XnnpackPartitioner",
                         "quantize": None if linear is None else
                         {"api": "executorch.extension.llm.export.quantize.quantize_model_ (torchao)",
                          "linear": linear, "linear_group_size": group_size if linear == "8da4w" else "per-channel",
                          "per_channel_int8_layers": per_channel,
                          "embedding": embedding, "embedding_group_size": "per-row"},
                         "executorch_version": version("executorch"), "torchao_version": version("torchao"),
                         "transformers_version": version("transformers")},
            "export_seconds": round(time.perf_counter() - t0, 3)}


# --------------------------------------------------------------------------- checks on this host


def greedy_parity(model_dir: Path | str, pte: Path | str, prompts: list[list[int]], max_new_tokens: int,
                  stop: list[int], atol: float, rtol: float) -> dict[str, Any]:
    """The .pte against the PyTorch model it came from: logits of each prompt (max abs diff, limit the card's
    atol + rtol x the logits' range, as for the ONNX export) and greedy tokens (identical or a mismatch)."""
    import numpy as np
    import torch

    from edgekd.llm.models import load_causal_lm
    from edgekd.runtimes.executorch_lm import PteLM

    model, _ = load_causal_lm(model_dir)
    lm = PteLM(pte)
    max_diff, scale, mismatches, first_diff = 0.0, 1.0, [], []
    for k, p in enumerate(prompts):
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([p])).logits[0].float().numpy()
            want = model.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                  max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                                  pad_token_id=stop[0] if stop else 0)[0, len(p):].tolist()
        scale = max(scale, float(np.abs(ref).max()))
        max_diff = max(max_diff, float(np.abs(lm.logits(p) - ref).max()))
        got, _ = lm.generate(p, max_new_tokens, stop)
        if got != want[:len(got)] or len(want) < len(got):
            mismatches.append(k)
            first_diff.append(next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want))))
    limit = atol + rtol * scale
    return {"ok": max_diff <= limit and not mismatches, "max_abs_diff": max_diff, "limit": limit,
            "prompts": len(prompts), "greedy_mismatches": mismatches, "first_mismatch_token": first_diff,
            "max_new_tokens": max_new_tokens, "reference": "pytorch"}


def evaluate_pte(lm: "PteLM | Path | str", examples) -> dict[str, float]:
    """Perplexity and next-token agreement of a KV-cache .pte on held-out examples (teacher forcing through
    the cache), scored exactly as the ONNX candidates are (`llm.sequences.score_logits`)."""
    from edgekd.llm.sequences import score_logits
    from edgekd.runtimes.executorch_lm import PteLM

    lm = lm if isinstance(lm, PteLM) else PteLM(lm)
    return score_logits(lm.logits, examples, Path(lm.path).name)


def greedy_match(reference: Path | str, pte: Path | str, prompts: list[list[int]], max_new_tokens: int,
                 stop: list[int]) -> dict[str, Any]:
    """A quantized program's greedy tokens against the fp32 program's on the same prompts: the fraction of
    generated tokens equal position by position (a quantized model may diverge; reported, not a gate)."""
    from edgekd.runtimes.executorch_lm import PteLM

    ref_lm, lm = PteLM(reference), PteLM(pte)
    same = total = 0
    for p in prompts:
        want, _ = ref_lm.generate(p, max_new_tokens, stop)
        got, _ = lm.generate(p, max_new_tokens, stop)
        total += len(want)
        same += sum(a == b for a, b in zip(got, want))
    return {"token_match": same / total if total else None, "tokens": total, "prompts": len(prompts),
            "reference": "pte-fp32"}


# --------------------------------------------------------------------------- the convert step


def cache_len_for(payload: "LanguageModelPayload", bench_tokens: int) -> int:
    """The static cache: the longest training sequence or prompt + generated tokens, and one more (the
    program's dynamic length stops one short of its cache, as the ExecuTorch LLM runner expects)."""
    prompts = [*payload.val_prompts, *payload.test_prompts]
    longest_prompt = max((len(p) for p in prompts), default=0)
    examples = [*payload.val, *payload.test]
    longest_example = max((len(e.ids) for e in examples), default=0)
    need = max(payload.max_length, longest_example, longest_prompt + max(payload.max_new_tokens, bench_tokens))
    return int(need) + 1


def _bench(pte: Path, name: str, prompts: list[list[int]], settings: Any, logs: Path) -> dict[str, Any]:
    from edgekd.profile.runner import run_bench
    from edgekd.profile.spec import GenerationSpec

    spec = GenerationSpec(name=name, kind="pte", path=str(pte), prompt_ids=prompts, settings=settings)
    return run_bench(spec, logs, name.replace("/", "_"))


# The teacher quantized for the phone, as a user would ship it instead of distilling: the scheme of the student's
# pte-8da8w (8-bit dynamic activations, 8-bit weights), the one whose quality a quantized teacher keeps best.
TEACHER_PTE_QUANTIZED = "pte-8da8w"


def _quantized_teacher_pte(lm: "LanguageModelPayload", pte_dir: Path, cache_len: int, prompts: list[list[int]],
                           settings: Any, logs: Path, log) -> dict[str, Any]:
    """The teacher's phone-quantized program, scored on the student's test examples and timed like the student's
    programs; a lowering failure is recorded (the teacher row is a comparison, not what ships)."""
    path = pte_dir / f"teacher_{TEACHER_PTE_QUANTIZED.removeprefix('pte-')}.pte"
    log(f"convert: exporting the teacher as {path.name}")
    try:
        info = export_lm_pte(lm.teacher_dir, path, TEACHER_PTE_QUANTIZED, cache_len)
    except StageError as e:
        return {"error": e.message, "variant": TEACHER_PTE_QUANTIZED}
    info["test"] = evaluate_pte(path, lm.test)
    info["profile"] = _bench(path, f"teacher/{TEACHER_PTE_QUANTIZED}", prompts, settings, logs)
    info["error"] = None
    return info


def convert_language_model(job: "ConvertJob") -> tuple[dict[str, str], dict[str, Any]]:
    """Teacher and student .pte programs, checked and measured on this host; the selected student's app bundle."""
    from edgekd.quantize.budget import Budget
    from edgekd.runtimes.executorch_lm import PteLM

    lm: LanguageModelPayload = job.payload
    log = job.log or (lambda s: None)
    settings = lm.bench
    if settings is None:
        raise StageError("the language-model convert job carries no benchmark settings",
                         hint="an internal error: convert_job must set LanguageModelPayload.bench")
    cache_len = cache_len_for(lm, settings.new_tokens)
    pte_dir = job.wd / "pte"
    if pte_dir.exists():  # a killed earlier run of this stage left it: ours to remove
        shutil.rmtree(pte_dir)
    pte_dir.mkdir(parents=True)
    bench_prompts = lm.test_prompts[: settings.prompts] or lm.val_prompts[: settings.prompts]
    if not bench_prompts or not lm.val:
        raise UserError("no validation/test prompts to check the .pte programs on",
                        hint="raise data.train_size so the validation and test splits are not empty")
    p = job.target.parity
    arts: dict[str, dict[str, Any]] = {}
    for variant in pte_variants([c["variant"] for c in lm.candidates]):
        path = pte_dir / f"student_{variant.removeprefix('pte-')}.pte"
        log(f"convert: exporting the student as {path.name}")
        try:
            info = export_lm_pte(lm.student_dir, path, variant, cache_len)
        except StageError as e:
            if variant == "pte-fp32":
                raise
            arts[variant] = {"error": e.message, "variant": variant}  # the fp32 program still ships
            continue
        prog = PteLM(path)
        info["val"] = evaluate_pte(prog, lm.val)
        info["test"] = evaluate_pte(prog, lm.test)
        del prog
        if variant == "pte-fp32":
            par = greedy_parity(lm.student_dir, path, lm.val_prompts, lm.max_new_tokens, lm.stop_ids, p.atol, p.rtol)
            if not par["ok"]:
                raise StageError(f"{path.name} disagrees with the PyTorch student: max abs diff {par['max_abs_diff']:.3g} "
                                 f"(limit {par['limit']:.3g}), greedy mismatches on validation prompts "
                                 f"{par['greedy_mismatches']}", hint="rerun with --debug; report the model")
            info["parity"] = par
        else:
            info["parity"] = greedy_match(pte_dir / "student_fp32.pte", path, lm.val_prompts, lm.max_new_tokens,
                                          lm.stop_ids)
        info["profile"] = _bench(path, f"student/{variant}", bench_prompts, settings, job.wd / "logs")
        info["error"] = None
        arts[variant] = info
    teacher = teacher_q = None
    if lm.teacher_on_target:
        teacher_path = pte_dir / "teacher_fp32.pte"
        log(f"convert: exporting the teacher as {teacher_path.name}")
        teacher = export_lm_pte(lm.teacher_dir, teacher_path, "pte-fp32", cache_len)
        teacher["test"] = evaluate_pte(teacher_path, lm.test)
        teacher["profile"] = _bench(teacher_path, "teacher/pte-fp32", bench_prompts, settings, job.wd / "logs")
        teacher_q = _quantized_teacher_pte(lm, pte_dir, cache_len, bench_prompts, settings, job.wd / "logs", log)

    choice = select_pte(arts, Budget(job.budget_points, metric="next-token agreement"))
    chosen = choice["selected_variant"]
    write_lm_bundle(job.wd, pte_dir / arts[chosen]["path"], chosen, lm, cache_len)
    rows = [pte_row("teacher", "pte-fp32", teacher, f"pte/{teacher['path']}", settings)] if teacher else []
    if teacher_q is not None and teacher_q.get("error") is None:  # the alternative to distilling, on the phone's runtime
        rows.append({**pte_row("teacher", TEACHER_PTE_QUANTIZED, teacher_q, f"pte/{teacher_q['path']}", settings),
                     "quantization": TEACHER_PTE_QUANTIZED.removeprefix("pte-")})
    rows += [pte_row("student", v, a, f"pte/{a['path']}", settings) for v, a in arts.items() if a.get("error") is None]
    outputs = {f"{f.parent.name}/{f.name}": str(f.relative_to(job.wd))
               for d in (pte_dir, job.wd / BUNDLE_DIR) for f in sorted(d.iterdir()) if f.is_file()}
    where = {"ran": [f".pte programs ({'teacher and student' if teacher else 'the student'}): ExecuTorch runtime with "
                     f"XNNPACK on this host ({settings.profile_device.name}), {settings.threads} thread(s)"],
             "not_run": [f"on-phone generation ({job.target.device.name}): no phone here; time the bundle's model.pte "
                         f"with ExecuTorch's LLM runner (llama_main) on one over adb: edgekd profile BUILD --adb SERIAL "
                         f"(LLM_RUNNER=an Android arm64 llama_main; see convert/mobile/README.txt)"]}
    if teacher is None:
        where["not_run"].append("the teacher's .pte (generate.teacher_on_target: false, the --quick default): no "
                                "teacher row on ExecuTorch, so no like-for-like teacher/student ratio on it")
    return outputs, {"bundle": BUNDLE_DIR, "selected": job.selected, "cache_len": cache_len,
                     "artifacts": {v: {k: x for k, x in a.items() if k != "profile"} for v, a in arts.items()},
                     "teacher_artifact": {k: x for k, x in teacher.items() if k != "profile"} if teacher else None,
                     "teacher_quantized_artifact": ({k: x for k, x in teacher_q.items() if k != "profile"}
                                                    if teacher_q else None),
                     "models": rows, "selected_artifact": f"student/{chosen}", "artifact_selection": choice,
                     "teacher_same_runtime": "teacher/pte-fp32" if teacher else None, "where": where}


def select_pte(arts: dict[str, dict[str, Any]], budget: Any) -> dict[str, Any]:
    """The program to ship, by the mobile family's one rule (`select.select_artifact`): within the recipe's budget of
    the fp32 program's VALIDATION agreement (each through ExecuTorch), then the fastest decode (most tokens/s).
    Test agreement is reported, never read here."""
    from edgekd.targets.mobile.select import select_artifact

    built = {v: a for v, a in arts.items() if a.get("error") is None}
    ref = built["pte-fp32"]["val"]["agreement"]
    rows = [{"variant": v, "measured_on": "host", "val_accuracy": a["val"]["agreement"],
             # ms per token from tokens/s: the same order as the most tokens/s
             "latency_ms": {"p50": 1000.0 / (a["profile"]["tokens_per_s"] or 1e-9)}} for v, a in built.items()]
    choice = select_artifact(rows, ref, budget.points)
    best = choice["selected"].removeprefix("student/")
    status = {v: f"failed: {a['error']}" for v, a in arts.items() if a.get("error") is not None} | choice["status"]
    return {"selected": choice["selected"], "selected_variant": best, "status": {v: status[v] for v in arts},
            "by": "most tokens/s (ExecuTorch on this host) within the accuracy budget of the fp32 .pte's "
                  "validation next-token agreement",
            "reference_val_agreement": ref, "budget_points": budget.points,
            "drop_points": {v: budget.drop_points(ref, built[v]["val"]["agreement"]) for v in built}}


def pte_row(role: str, variant: str, a: dict[str, Any], path: str, settings: Any) -> dict[str, Any]:
    """A report `models` row of a .pte measured on this host: per-token figures by name (ttft_ms, ms_per_token,
    tokens_per_s, joules_per_token, agreement) beside the shared latency_ms/energy/accuracy they fill."""
    pr = a["profile"]
    energy = dict(pr["energy"])
    energy["joules_per_inference"] = energy.get("joules_per_token")  # one inference = one generated token
    test = a["test"]
    return {"role": role, "variant": variant, "format": "pte", "runtime": "executorch (xnnpack)",
            "measured_on": settings.profiled_on, "device": settings.profile_device.name, "throughput_batch": 1,
            "path": path, "params": a.get("params"), "size_bytes": a["size_bytes"],
            "accuracy": test["agreement"], "agreement": test["agreement"], "perplexity": test["perplexity"],
            "val_accuracy": (a.get("val") or {}).get("agreement"), "accuracy_runtime": "executorch",
            "accuracy_measured_on": "host",
            "precision": {"pte-fp32": "fp32", "pte-8da4w": "int8-dynamic-act/int4-weight",
                          "pte-8da8w": "int8-dynamic-act/int8-weight"}[variant],
            "latency_ms": pr["decode_ms_per_token"], "ms_per_token": pr["decode_ms_per_token"],
            "ttft_ms": pr["ttft_ms"], "tokens_per_s": pr["tokens_per_s"], "throughput_per_s": pr["tokens_per_s"],
            "peak_rss_bytes": pr["peak_rss_bytes"], "peak_rss_delta_bytes": pr.get("peak_rss_delta_bytes"),
            "energy": energy, "joules_per_token": energy.get("joules_per_token"),
            "parity": a.get("parity"), "cache_len": a.get("cache_len")}


# --------------------------------------------------------------------------- the bundle

_README = """edgekd mobile bundle (language model)
=====================================
model.pte          ExecuTorch program ({variant}), XNNPACK-delegated, static KV cache of {cache_len} tokens.
                   forward(input_ids int64 [1, n], cache_position int64 [n]) -> logits float32 [1, n, vocab],
                   n <= {max_seq}; prefill the prompt at positions 0..n-1, then one token per call.
                   Constant methods get_max_seq_len / get_max_context_len / get_vocab_size for the
                   ExecuTorch LLM runner (extension/llm/runner, e.g. its llama_main / Android LlmModule).
tokenizer.json     the student's tokenizer (Hugging Face tokenizers format) and its config files
generation.json    chat template, stop token ids, pad id, max length, max new tokens (greedy decoding)
prompts.json       the benchmark prompts ({n_prompts}, chat template applied: the text and its token ids) and
                   the benchmark's settings ({max_new} new tokens, {threads} thread(s), {runs} run(s) per prompt)
benchmark_android.sh  greedy generation of prompts.json on an Android phone over adb with ExecuTorch's
                   LLM runner (llama_main, one warm-up generation per run); see the header of the script
manifest.json      sha256 and size of every file here

The program needs ExecuTorch's LLM custom ops (llama::custom_sdpa) and quantized kernels
(quantized_decomposed::embedding_byte) linked into the runner: build it with
-DEXECUTORCH_BUILD_KERNELS_LLM=ON -DEXECUTORCH_BUILD_KERNELS_QUANTIZED=ON -DEXECUTORCH_BUILD_XNNPACK=ON.
Every figure in the build's report for this file was measured on the build host's ExecuTorch runtime.

On a phone (USB debugging on, `adb devices` lists it), with LLM_RUNNER an Android arm64 llama_main
(pytorch/executorch examples/models/llama, built with the three options above and the Android NDK):
  edgekd profile BUILD --adb <serial>         (BUILD: the build folder; JSON to stdout: TTFT, ms/token,
                                               tokens/s, prompt tokens/s, model load ms; measured_on device)
or by hand, in this folder:
  ANDROID_SERIAL=<serial> LLM_RUNNER=/path/to/llama_main bash benchmark_android.sh
(each run prints llama_main's `PyTorchObserver {{json}}` report line).
"""


def write_lm_bundle(wd: Path, pte: Path, variant: str, lm: "LanguageModelPayload", cache_len: int) -> Path:
    """`wd/mobile/`: model.pte, tokenizer files, generation settings, the phone benchmark (prompts.json and
    benchmark_android.sh: `edgekd profile BUILD --adb SERIAL` runs it, `lm_adb.adb_profile_lm`) and a sha256
    manifest (written in a temp folder and renamed into place)."""
    from edgekd.fsio import sha256_file
    from edgekd.llm.onnx_gen import copy_tokenizer

    final, tmp = wd / BUNDLE_DIR, wd / f".{BUNDLE_DIR}.tmp"
    for d in (tmp, final):
        if d.exists():
            shutil.rmtree(d)
    tmp.mkdir(parents=True)
    shutil.copyfile(pte, tmp / "model.pte")
    copied = copy_tokenizer(Path(lm.student_dir), tmp)
    gen = {"chat_template": lm.chat_template, "stop_token_ids": list(lm.stop_ids), "pad_token_id": lm.pad_id,
           "max_length": cache_len - 1, "max_context_length": cache_len, "max_new_tokens": lm.max_new_tokens,
           "decoding": "greedy", "program_source": pte.name}
    (tmp / "generation.json").write_text(json.dumps(gen, indent=2))
    # the phone benchmark: the host benchmark's prompts and settings, run by ExecuTorch's LLM runner over adb
    st = lm.bench
    threads, runs = (st.threads, st.repeats) if st is not None else (1, 1)
    prompts = bench_prompts(lm)
    write_bench_files(tmp, prompts, st.new_tokens if st is not None else lm.max_new_tokens, threads, cache_len, runs)
    bench = json.loads((tmp / "prompts.json").read_text(encoding="utf-8"))
    (tmp / "README.txt").write_text(_README.format(variant=variant, cache_len=cache_len, max_seq=cache_len - 1,
                                                   n_prompts=len(prompts), max_new=bench["max_new_tokens"],
                                                   threads=threads, runs=runs))
    files = sorted(f for f in tmp.iterdir() if f.is_file())
    manifest = {"schema_version": MANIFEST_SCHEMA_VERSION, "kind": "executorch-llm", "variant": variant,
                "tokenizer_files": copied,
                "files": {f.name: {"sha256": sha256_file(f), "size_bytes": f.stat().st_size} for f in files}}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, final)
    return final
