"""ONNX with a KV cache for causal LMs, and a greedy generation loop on onnxruntime.

The export is optimum-onnx's `text-generation-with-past` (inputs: input_ids, attention_mask,
position_ids, past_key_values.N.key/value; outputs: logits, present.N.key/value). The loop feeds
the whole prompt once (empty past), then one token per step with the returned cache.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import StageError


def export_with_past(hf_folder: Path, out_dir: Path, opset: int) -> Path:
    """optimum-onnx export of a local HF causal-LM folder; returns the .onnx path."""
    import contextlib
    import io
    import logging

    from optimum.exporters.onnx import main_export

    for name in ("optimum", "transformers", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    out_dir.mkdir(parents=True, exist_ok=True)
    import warnings

    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python bools in HF's cache code
            main_export(str(hf_folder), output=str(out_dir), task="text-generation-with-past", opset=opset,
                        do_validation=False, device="cpu")
    except Exception as e:  # noqa: BLE001 - exporter failures become one typed line
        raise StageError(f"ONNX export with KV cache failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400],
                         hint="rerun with --debug for the exporter's traceback") from e
    path = out_dir / "model.onnx"
    if not path.is_file():
        raise StageError("the exporter wrote no model.onnx", hint="rerun with --debug")
    return path


class OrtLM:
    """An onnxruntime session over a KV-cache causal-LM ONNX, with greedy decoding."""

    def __init__(self, path: Path | str, threads: int = 1, providers: list[str] | None = None) -> None:
        from edgekd.runtimes.ort import session

        # a named provider (CUDA on the cuda target) must be there: no silent fall-back to the CPU
        self.sess = session(path, threads, providers, require_providers=providers is not None)
        self.inputs = {i.name: i for i in self.sess.get_inputs()}
        self.past_names = [n for n in self.inputs if n.startswith("past_key_values.")]
        self.out_names = [o.name for o in self.sess.get_outputs()]
        if "input_ids" not in self.inputs or not self.past_names:
            raise StageError(f"{path} is not a KV-cache causal LM (inputs: {', '.join(self.inputs)})",
                             hint="export with task text-generation-with-past")
        shape = self.inputs[self.past_names[0]].shape  # [batch, kv_heads, past, head_dim]
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        dt = self.inputs[self.past_names[0]].type
        self.kv_dtype = np.float16 if "float16" in dt else np.float32

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        return {n: np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=self.kv_dtype) for n in self.past_names}

    def step(self, ids: np.ndarray, mask: np.ndarray, past: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
        past_len = next(iter(past.values())).shape[2]
        feed = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64), **past}
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.broadcast_to(np.arange(past_len, past_len + ids.shape[1], dtype=np.int64),
                                                   ids.shape).copy()
        outs = self.sess.run(None, feed)
        logits = outs[0]
        present = {}
        for name, val in zip(self.out_names[1:], outs[1:]):
            present[name.replace("present.", "past_key_values.")] = val
        return logits, present

    def generate(self, prompt_ids: list[int], max_new_tokens: int, stop: list[int]) -> tuple[list[int], dict]:
        """Greedy decoding of one prompt; returns tokens and timings (ttft_s, decode step seconds)."""
        ids = np.asarray([prompt_ids], dtype=np.int64)
        mask = np.ones_like(ids)
        t0 = time.perf_counter()
        logits, past = self.step(ids, mask, self.empty_past(1))
        ttft = time.perf_counter() - t0
        out: list[int] = []
        steps: list[float] = []
        nxt = int(logits[0, -1].argmax())
        while True:
            out.append(nxt)
            if nxt in stop or len(out) >= max_new_tokens:
                break
            mask = np.ones((1, mask.shape[1] + 1), dtype=np.int64)
            t1 = time.perf_counter()
            logits, past = self.step(np.asarray([[nxt]]), mask, past)
            steps.append(time.perf_counter() - t1)
            nxt = int(logits[0, -1].argmax())
        return out, {"ttft_s": ttft, "step_s": steps}

    def logits(self, ids: list[int]) -> np.ndarray:
        a = np.asarray([ids], dtype=np.int64)
        return self.step(a, np.ones_like(a), self.empty_past(1))[0][0]


def evaluate_onnx(path: Path | str, examples, threads: int = 1) -> dict[str, float]:
    """Perplexity and next-token agreement of an ONNX LM on held-out examples (teacher forcing)."""
    from edgekd.llm.sequences import score_logits

    return score_logits(OrtLM(path, threads).logits, examples, Path(path).name)


def parity(path: Path | str, student, prompts_ids: list[list[int]], max_new_tokens: int, stop: list[int],
           atol: float) -> dict[str, Any]:
    """The ONNX against PyTorch: logits on each prompt (max abs diff) and greedy tokens (must match)."""
    import torch

    lm = OrtLM(path)
    max_diff, mismatches = 0.0, []
    for k, p in enumerate(prompts_ids):
        with torch.no_grad():
            ref = student(input_ids=torch.tensor([p])).logits[0].float().numpy()
        max_diff = max(max_diff, float(np.abs(lm.logits(p) - ref).max()))
        ort_tokens, _ = lm.generate(p, max_new_tokens, stop)
        with torch.no_grad():
            t = student.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                                 pad_token_id=stop[0])[0, len(p):].tolist()
        if ort_tokens != t[:len(ort_tokens)] or len(t) < len(ort_tokens):
            mismatches.append(k)
    ok = max_diff <= atol and not mismatches
    return {"ok": ok, "max_abs_diff": max_diff, "atol": atol, "prompts": len(prompts_ids),
            "greedy_mismatches": mismatches}


def copy_tokenizer(src: Path, dst: Path) -> list[str]:
    names = []
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
              "chat_template.jinja", "generation_config.json", "config.json"):
        if (src / f).is_file():
            shutil.copyfile(src / f, dst / f)
            names.append(f)
    return names
