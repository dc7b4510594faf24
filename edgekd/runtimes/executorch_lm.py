"""A causal language model's ExecuTorch program (.pte with its static KV cache) on ExecuTorch's runtime.

The program is the one `edgekd.targets.mobile.lm` writes: `forward(input_ids [1, n], cache_position [n]) ->
logits [1, n, vocab]`, the KV cache a mutable buffer inside the program (transformers' static cache) and
attention ExecuTorch's `llama::custom_sdpa` (causal from `cache_position[0]`). One loaded method serves any
number of sequences: a prefill at position 0 overwrites the cache rows it needs, and the causal SDPA never
reads the rows past the current position that an earlier, longer sequence left behind.

The same loop is what the ExecuTorch LLM runner does on a phone (prefill, then one token per call), so
TTFT and per-token figures taken here are of the shipped program on this host's x86 XNNPACK kernels.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import StageError, TargetUnavailable, UserError

FORWARD = "forward"


def load_llm_ops() -> None:
    """Register ExecuTorch's LLM custom ops (custom_sdpa, update_cache) and its quantized kernels
    (embedding_byte for 8-bit embeddings): their ATen schema for export and their kernels for the pybind
    runtime both come from these libraries."""
    try:
        import executorch.kernels.quantized  # noqa: F401  (registers quantized_decomposed::* kernels)
        from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  (registers torch.ops.llama.*)
    except ImportError as e:
        raise TargetUnavailable(f"executorch's LLM custom ops are not importable: {e}",
                                hint="pip install '.[mobile]' (installs executorch>=1.5.1,<1.6)") from e


class PteLM:
    """Greedy decoding and teacher-forced logits of a KV-cache .pte, on ExecuTorch's runtime."""

    def __init__(self, path: Path | str, threads: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise UserError(f".pte file not found: {path}", hint="build it with the mobile target's convert stage")
        load_llm_ops()
        import torch
        from executorch.runtime import Runtime

        self._torch = torch
        if threads is not None:
            # XNNPACK runs on ExecuTorch's own threadpool (all cores by default). It is sized BEFORE the
            # method loads: the delegate keeps a pointer to the pool it was initialised with.
            import executorch.extension.pybindings.portable_lib as _pl

            if int(_pl._threadpool_get_thread_count()) != int(threads):
                _pl._unsafe_reset_threadpool(int(threads))
        try:
            self.program = Runtime.get().load_program(path)
            self.method = self.program.load_method(FORWARD)
        except Exception as e:  # the pybind loader raises RuntimeError/ValueError variants for bad programs
            raise StageError(f"ExecuTorch could not load {path.name}: {e}",
                             hint="re-export the .pte with the installed executorch version") from e
        self.path = path
        self.max_len = self._cache_len()

    def _cache_len(self) -> int:
        """Tokens the static cache holds: the program's `get_max_seq_len` constant method (written by the
        export, and what the ExecuTorch LLM runner reads too); unbounded here when a program lacks it."""
        if "get_max_seq_len" not in self.program.method_names:
            return 1 << 30
        return int(self.program.load_method("get_max_seq_len").execute([])[0])

    def forward(self, ids: list[int], pos: int) -> np.ndarray:
        """Logits [n, vocab] of `ids` placed at cache positions pos..pos+n-1 (the cache is updated)."""
        torch = self._torch
        n = len(ids)
        if pos + n > self.max_len or n >= self.max_len:
            raise UserError(f"{pos + n} tokens do not fit the program's KV cache of {self.max_len}",
                            hint="shorten the prompt or raise data.max_length / generate.max_new_tokens and rebuild")
        try:
            out = self.method.execute([torch.tensor([ids], dtype=torch.long),
                                       torch.arange(pos, pos + n, dtype=torch.long)])
        except Exception as e:  # execution errors surface as RuntimeError from the pybind layer
            raise StageError(f"ExecuTorch execution of {self.path.name} failed: {e}",
                             hint="check the sequence fits the program's cache length") from e
        return out[0][0].detach().float().numpy()

    def logits(self, ids: list[int]) -> np.ndarray:
        """Teacher forcing: the whole sequence prefilled through the cache in one call, logits of every position."""
        return self.forward(list(ids), 0)

    def generate(self, prompt: list[int], max_new_tokens: int, stop: list[int] | None = None
                 ) -> tuple[list[int], dict[str, Any]]:
        """Greedy tokens after `prompt` (stopping after a stop token, which is kept) and the timing of each call."""
        stop_set = set(stop or [])
        t0 = time.perf_counter()
        nxt = int(self.forward(list(prompt), 0)[-1].argmax())
        ttft = time.perf_counter() - t0
        toks, steps = [nxt], []
        pos = len(prompt)
        while len(toks) < max_new_tokens and nxt not in stop_set:
            t1 = time.perf_counter()
            nxt = int(self.forward([nxt], pos)[-1].argmax())
            steps.append(time.perf_counter() - t1)
            pos += 1
            toks.append(nxt)
        return toks, {"ttft_s": ttft, "step_s": steps}

