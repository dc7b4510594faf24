"""A causal LM as two static-shape ONNX graphs with an explicit, fixed-size KV cache: what compilers that
take one shape per graph (Ascend's ATC) need from a generating model.

- prefill: input_ids [1, P], attention_mask [1, C], cache_position [P], past_key_values.N.key/value
  [1, kv_heads, C, head_dim] -> logits [1, P, vocab], present.N.key/value [1, kv_heads, C, head_dim]
- decode: the same with input_ids [1, 1] and cache_position [1].

The cache is transformers' own `StaticCache` (its `index_copy_` update becomes ScatterElements),
filled from the graph inputs, so the graphs compute exactly what the PyTorch model computes with
that cache. The attention mask is built in the graph from the 2-D mask and the cache positions
(slot k is visible to the token at position q when k <= q and mask[k] == 1): transformers' own mask
builder uses vmap, which the TorchScript exporter cannot trace.

Prompts shorter than P are right-padded (the pads' cache slots are masked and later overwritten by
decode steps); longer ones are prefilled in chunks of P at increasing cache positions, which is why
the cache positions are an input. C is a multiple of P, so no chunk runs past the cache.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgekd.errors import StageError

PREFILL, DECODE = "prefill", "decode"


@dataclass(frozen=True)
class StaticSizes:
    """The fixed shapes of the two graphs: prompt chunk P and cache length C (a multiple of P)."""

    prompt_length: int
    cache_length: int

    def __post_init__(self) -> None:
        if self.prompt_length < 1 or self.cache_length < self.prompt_length or self.cache_length % self.prompt_length:
            raise ValueError(f"cache length {self.cache_length} must be a positive multiple of the prompt length "
                             f"{self.prompt_length}")


def static_sizes(prompt_lengths: Sequence[int], max_length: int, max_new_tokens: int, *,
                 prompt_length: int | None = None, cache_length: int | None = None, multiple: int = 16) -> StaticSizes:
    """P and C for a model trained on `max_length` tokens that answers prompts of `prompt_lengths` with up to
    `max_new_tokens`: P covers the longest prompt (rounded up to `multiple`), C holds the longest prompt plus
    its answer and any training-length sequence, rounded up to a multiple of P. Given values win."""
    def up(n: int, m: int) -> int:
        return max(m, int(math.ceil(n / m)) * m)

    longest = max(prompt_lengths, default=multiple)
    p = int(prompt_length) if prompt_length else up(longest, multiple)
    c = int(cache_length) if cache_length else max(max_length, longest + max_new_tokens)
    return StaticSizes(p, up(c, p))


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    """(input names, output names) of both graphs."""
    kv = [f"{k}.{i}.{t}" for k in ("past_key_values",) for i in range(num_layers) for t in ("key", "value")]
    out = [f"present.{i}.{t}" for i in range(num_layers) for t in ("key", "value")]
    return ["input_ids", "attention_mask", "cache_position", *kv], ["logits", *out]


def kv_shape(config: Any, cache_length: int) -> tuple[int, int, int, int]:
    """[1, kv_heads, C, head_dim] of one cache tensor of a Hugging Face decoder config."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 1, int(kv_heads), int(cache_length), int(head_dim)


def _wrapper(model: Any, cache_length: int):
    import torch
    from transformers.cache_utils import StaticCache

    class StaticKV(torch.nn.Module):
        """model(input_ids, mask, cache positions, *cache) -> (logits, *updated cache), cache as tensors."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, cache_position, *kv):
            cache = StaticCache(config=self.model.config, max_cache_len=cache_length)
            _, heads, _, head_dim = kv[0].shape
            cache.early_initialization(1, heads, head_dim, kv[0].dtype, kv[0].device)
            for i, layer in enumerate(cache.layers):
                # clones: the update is in place, and a graph input must stay what the caller passed
                layer.keys, layer.values = kv[2 * i].clone(), kv[2 * i + 1].clone()
            slots = torch.arange(cache_length, device=input_ids.device)
            visible = (slots[None, :] <= cache_position[:, None]) & (attention_mask[0, None, :] > 0)
            neg = torch.tensor(torch.finfo(kv[0].dtype).min, dtype=kv[0].dtype)
            mask = torch.where(visible, torch.zeros((), dtype=kv[0].dtype), neg)[None, None]  # [1, 1, T, C] additive
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=cache_position[None],
                             cache_position=cache_position, past_key_values=cache, use_cache=True)
            res = [out.logits]
            for layer in cache.layers:
                res += [layer.keys, layer.values]
            return tuple(res)

    return StaticKV().eval()


def export_static_graphs(model: Any, out_dir: Path | str, sizes: StaticSizes, opset: int) -> dict[str, Path]:
    """{prefill: path, decode: path}: the PyTorch causal LM exported twice with fixed shapes (TorchScript
    exporter, eager attention: plain MatMul/Softmax that every ONNX consumer parses)."""
    import contextlib
    import io
    import warnings

    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    n_layers = model.config.num_hidden_layers
    ins, outs = io_names(n_layers)
    kv = [torch.zeros(kv_shape(model.config, sizes.cache_length)) for _ in range(2 * n_layers)]
    w = _wrapper(model, sizes.cache_length)
    paths = {}
    for name, t in ((PREFILL, sizes.prompt_length), (DECODE, 1)):
        ids = torch.ones((1, t), dtype=torch.long)
        pos = torch.arange(t, dtype=torch.long)
        mask = torch.ones((1, sizes.cache_length), dtype=torch.long)
        path = out_dir / f"{name}.onnx"
        try:
            with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")  # tracer warnings about Python values in HF's cache code
                torch.onnx.export(w, (ids, mask, pos, *kv), str(path), input_names=ins, output_names=outs,
                                  opset_version=opset, dynamo=False, do_constant_folding=True)
        except Exception as e:  # noqa: BLE001 - exporter failures become one typed line
            raise StageError(f"static {name} graph export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400],
                             hint="rerun with --debug; the model must support transformers' StaticCache") from e
        paths[name] = path
    return paths


class StaticLM:
    """onnxruntime sessions over a prefill/decode pair: chunked prefill, greedy decoding, teacher forcing."""

    def __init__(self, prefill: Path | str, decode: Path | str | None, threads: int = 1,
                 optimization: str = "all") -> None:
        """`decode` None: teacher forcing only (prefill and `answer_logits`)."""
        from edgekd.runtimes.ort import session

        self.prefill_sess = session(prefill, threads, optimization=optimization)  # type: ignore[arg-type]
        self.decode_sess = session(decode, threads, optimization=optimization) if decode else None  # type: ignore[arg-type]
        inputs = {i.name: i for i in self.prefill_sess.get_inputs()}
        self.kv_names = [n for n in inputs if n.startswith("past_key_values.")]
        if "input_ids" not in inputs or "cache_position" not in inputs or not self.kv_names:
            raise StageError(f"{prefill} is not a static-cache prefill graph (inputs: {', '.join(inputs)})",
                             hint="make it with edgekd.llm.static_kv.export_static_graphs")
        self.P = int(inputs["input_ids"].shape[1])
        self.C = int(inputs["attention_mask"].shape[1])
        self.kv_shape = tuple(int(d) for d in inputs[self.kv_names[0]].shape)

    def empty_cache(self) -> dict[str, np.ndarray]:
        return {n: np.zeros(self.kv_shape, dtype=np.float32) for n in self.kv_names}

    def _run(self, sess: Any, ids: list[int], start: int, cache: dict[str, np.ndarray], width: int,
             pad: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        x = np.full((1, width), pad, dtype=np.int64)
        x[0, :len(ids)] = ids
        mask = np.zeros((1, self.C), dtype=np.int64)
        mask[0, :start + len(ids)] = 1
        outs = sess.run(None, {"input_ids": x, "attention_mask": mask,
                               "cache_position": np.arange(start, start + width, dtype=np.int64), **cache})
        return outs[0][0, :len(ids)], dict(zip(self.kv_names, outs[1:]))

    def prefill(self, ids: list[int], pad: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray], list[float]]:
        """Logits of every position of `ids` [len, vocab] and the cache after them, in chunks of P; with the
        seconds each chunk took."""
        if not ids or len(ids) > self.C:
            raise StageError(f"a sequence of {len(ids)} tokens does not fit the static cache of {self.C}",
                             hint="raise [ascend] cache_length in the target card")
        cache, logits, secs = self.empty_cache(), [], []
        for start in range(0, len(ids), self.P):
            t0 = time.perf_counter()
            z, cache = self._run(self.prefill_sess, ids[start:start + self.P], start, cache, self.P, pad)
            secs.append(time.perf_counter() - t0)
            logits.append(z)
        return np.concatenate(logits), cache, secs

    def step(self, token: int, pos: int, cache: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if self.decode_sess is None:
            raise StageError("this StaticLM has no decode graph", hint="pass the decode graph to decode tokens")
        z, cache = self._run(self.decode_sess, [token], pos, cache, 1, 0)
        return z[0], cache

    def generate(self, prompt: list[int], max_new_tokens: int, stop: Sequence[int]) -> tuple[list[int], dict[str, Any]]:
        """Greedy decoding of one prompt: (tokens, {ttft_s, step_s}). Stops at a stop token, after
        `max_new_tokens`, or when the cache is full."""
        t0 = time.perf_counter()
        logits, cache, _ = self.prefill(prompt)
        ttft = time.perf_counter() - t0
        out, steps = [int(logits[-1].argmax())], []
        pos = len(prompt)
        while out[-1] not in stop and len(out) < max_new_tokens and pos < self.C:
            t1 = time.perf_counter()
            z, cache = self.step(out[-1], pos, cache)
            steps.append(time.perf_counter() - t1)
            out.append(int(z.argmax()))
            pos += 1
        return out, {"ttft_s": ttft, "step_s": steps}

    def answer_logits(self, example: Any) -> np.ndarray:
        """Teacher forcing: the logit rows that predict `example`'s answer tokens (llm.sequences.Example)."""
        from edgekd.llm.sequences import answer_positions

        lo, hi = answer_positions(example)
        return self.prefill(list(example.ids))[0][lo:hi]


def evaluate_static(lm: StaticLM, examples: Sequence[Any]) -> dict[str, Any]:
    """Next-token agreement with the examples' answer tokens and perplexity on them (teacher forcing through
    the prefill graph), and the argmax at every answer position (what agreement between two graph pairs is
    measured on)."""
    nll, hits, n, preds = 0.0, 0, 0, []
    for e in examples:
        z = lm.answer_logits(e).astype(np.float64)
        target = np.asarray(e.ids[e.start:])
        m = z.max(-1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(z - m).sum(-1))
        nll += float((lse - z[np.arange(len(target)), target]).sum())
        am = z.argmax(-1)
        hits += int((am == target).sum())
        n += len(target)
        preds.append(am)
    if n == 0:
        raise StageError("no answer tokens to evaluate the static graphs on", hint="check the validation split")
    return {"agreement": hits / n, "perplexity": math.exp(nll / n) if math.isfinite(nll) else float("inf"),
            "tokens": n, "argmax": np.concatenate(preds)}


def greedy_parity(lm: StaticLM, model: Any, prompts: Sequence[list[int]], max_new_tokens: int,
                  stop: Sequence[int]) -> dict[str, Any]:
    """The static graphs against the PyTorch model: greedy tokens over prefill + decode (must be identical)
    and the max abs difference of the prompt's logits."""
    import torch

    mismatches, max_diff, tokens = [], 0.0, 0
    for k, p in enumerate(prompts):
        new = min(max_new_tokens, lm.C - len(p))
        if new < 1:
            raise StageError(f"prompt {k} ({len(p)} tokens) leaves no room in the static cache of {lm.C}",
                             hint="raise [ascend] cache_length in the target card")
        got, _ = lm.generate(list(p), new, stop)
        with torch.no_grad():
            ref_logits = model(input_ids=torch.tensor([p])).logits[0].float().numpy()
            ref = model.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 max_new_tokens=new, do_sample=False, eos_token_id=list(stop),
                                 pad_token_id=int(stop[0]) if stop else 0)[0, len(p):].tolist()
        max_diff = max(max_diff, float(np.abs(lm.prefill(list(p))[0] - ref_logits).max()))
        tokens += len(got)
        if got != ref[:len(got)] or len(ref) < len(got):
            mismatches.append(k)
    return {"ok": not mismatches, "prompts": len(prompts), "greedy_tokens": tokens, "greedy_mismatches": mismatches,
            "max_abs_diff": max_diff}
