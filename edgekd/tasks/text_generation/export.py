"""The text-generation task's export stage: the student to ONNX with its KV cache, checked against PyTorch
(logits and greedy tokens)."""
from __future__ import annotations

from pathlib import Path


from edgekd.errors import StageError
from edgekd.pipeline import BuildContext, StageOutput, StageResult
from edgekd.tasks.text_generation.data import read_answers


# --------------------------------------------------------------------------- export


# optimum writes the attention as scaled_dot_product_attention, which the exporter has from opset 14. The
# KV-cache ONNX is the host-side candidate (quantized, timed and selected on onnxruntime); a target whose
# runtime needs a lower opset gets its own graphs from its converter (Ascend: static prefill/decode graphs
# at the card's opset), so a card's lower opset raises this one instead of failing the export.
KV_EXPORT_MIN_OPSET = 14


def _opset(ctx: BuildContext) -> int:
    return max(ctx.target.onnx.opset, KV_EXPORT_MIN_OPSET)


def _export_cfg(ctx: BuildContext) -> dict:
    return {"opset": _opset(ctx), "parity": ctx.target.parity.model_dump()}


def _examples(ctx: BuildContext, inputs: dict[str, StageResult], split: str, tok=None):
    """(the student's tokenizer, the split's examples); `tok`: a tokenizer already loaded, not loaded again."""
    from edgekd.llm.sequences import build_examples

    if tok is None:
        from transformers import AutoTokenizer

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
    path = export_with_past(src, onnx_dir, _opset(ctx))
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
    return StageOutput(outputs, {"student_parity": par, "opset": _opset(ctx),
                                 "inputs": [i.name for i in m.graph.input], "outputs": [o.name for o in m.graph.output]})


