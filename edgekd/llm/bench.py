"""Profile ONE causal LM in this process: `python -m edgekd.llm.bench SPEC_JSON OUT_JSON`.

What a user compares for a phone: time to first token (prefill of the prompt), per-token decode
latency and tokens/s, peak memory, energy per generated token. Every model decodes exactly
`new_tokens` tokens per prompt (stop tokens ignored), so tokens/s compare like with like.

SPEC_JSON is a `GenerationSpec` (edgekd/profile/spec.py), validated here before anything loads.
"""
from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Any

from edgekd.errors import EdgekdError
from edgekd.profile.spec import GenerationSpec, load_spec

def _torch_runner(path: str, device: str = "cpu"):
    import torch

    from edgekd.llm.models import load_causal_lm

    model, _ = load_causal_lm(path)
    model.to(device)
    # the next token's id is read on the host every step (greedy decoding), so each step's time includes the
    # GPU's work; synchronize() makes the prefill's too
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run(prompt: list[int], n: int) -> tuple[float, list[float]]:
        with torch.no_grad():
            ids = torch.tensor([prompt], device=device)
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            nxt = out.logits[0, -1].argmax().view(1, 1)
            sync()
            ttft = time.perf_counter() - t0
            past, steps = out.past_key_values, []
            for _ in range(n - 1):
                t1 = time.perf_counter()
                out = model(input_ids=nxt, past_key_values=past, use_cache=True)
                nxt = out.logits[0, -1].argmax().view(1, 1)
                past = out.past_key_values
                sync()
                steps.append(time.perf_counter() - t1)
        return ttft, steps

    return run


def _onnx_runner(path: str, threads: int, providers: list[str] | None = None):
    import numpy as np

    from edgekd.llm.onnx_gen import OrtLM

    on_cpu = not providers or providers == ["CPUExecutionProvider"]
    lm = OrtLM(path, threads, None if on_cpu else providers)

    def run(prompt: list[int], n: int) -> tuple[float, list[float]]:
        ids = np.asarray([prompt], dtype=np.int64)
        mask = np.ones_like(ids)
        t0 = time.perf_counter()
        logits, past = lm.step(ids, mask, lm.empty_past(1))
        nxt = int(logits[0, -1].argmax())
        ttft = time.perf_counter() - t0
        steps = []
        for _ in range(n - 1):
            mask = np.ones((1, mask.shape[1] + 1), dtype=np.int64)
            t1 = time.perf_counter()
            logits, past = lm.step(np.asarray([[nxt]], dtype=np.int64), mask, past)
            nxt = int(logits[0, -1].argmax())
            steps.append(time.perf_counter() - t1)
        return ttft, steps

    return run


def _pte_runner(path: str, threads: int):
    from edgekd.runtimes.executorch_lm import PteLM

    lm = PteLM(path, threads)

    def run(prompt: list[int], n: int) -> tuple[float, list[float]]:
        t0 = time.perf_counter()
        nxt = int(lm.forward(list(prompt), 0)[-1].argmax())
        ttft = time.perf_counter() - t0
        steps, pos = [], len(prompt)
        for _ in range(n - 1):
            t1 = time.perf_counter()
            nxt = int(lm.forward([nxt], pos)[-1].argmax())
            steps.append(time.perf_counter() - t1)
            pos += 1
        return ttft, steps

    return run


_RUNNERS = {"onnx": _onnx_runner, "pte": _pte_runner}


def run_spec(spec_in: GenerationSpec | dict[str, Any]) -> dict[str, Any]:
    import os

    import psutil

    from edgekd.profile.measure.energy import measured_or_estimate, measured_result, pick_sampler
    from edgekd.profile.measure.memory import current_rss, peak_rss
    from edgekd.profile.measure.stats import summarize
    from edgekd.profile.runner import NOISY_SPREAD, repeat_spread

    spec = load_spec(GenerationSpec, spec_in)
    st = spec.settings
    threads = st.threads
    import torch

    torch.set_num_threads(threads)
    rss0 = current_rss()
    t_load = time.perf_counter()
    gpu = (st.torch_device == "cuda") if spec.kind == "torch" else (
        spec.kind == "onnx" and any("CUDA" in p for p in st.providers))
    if spec.kind == "torch":
        run = _torch_runner(spec.path, st.torch_device)
    elif spec.kind == "onnx":
        run = _onnx_runner(spec.path, threads, st.providers)
    else:  # an ExecuTorch program: its own runtime on this CPU
        run = _RUNNERS[spec.kind](spec.path, threads)
    load_s = time.perf_counter() - t_load
    rss_loaded = current_rss()
    prompts, n = spec.prompt_ids, st.new_tokens
    run(prompts[0], min(n, 4))  # warm-up
    # the counter of the device the model runs on: NVML on a GPU, RAPL (or an estimate) on the CPU
    sampler = pick_sampler(spec.energy, ["CUDAExecutionProvider"] if gpu else ["CPUExecutionProvider"]) \
        if spec.energy != "none" else None
    proc = psutil.Process(os.getpid())
    cpu0 = sum(proc.cpu_times()[:2])
    if sampler:
        sampler.start()
    t0 = time.perf_counter()
    ttfts, steps, passes = [], [], []
    for _ in range(st.repeats):
        pass_steps: list[float] = []
        for p in prompts:
            ttft, step_s = run(p, n)
            ttfts.append(ttft * 1e3)
            pass_steps.extend(s * 1e3 for s in step_s)
        steps.extend(pass_steps)
        passes.append(summarize(pass_steps)["p50"])
    wall = time.perf_counter() - t0
    joules = sampler.stop() if sampler else None
    cpu = sum(proc.cpu_times()[:2]) - cpu0
    tokens = len(ttfts) * n
    measured = measured_result(sampler.method, joules, tokens, wall) if sampler and joules else None
    # without a counter: the device's power for the time it was busy (the GPU: the wall time of decoding;
    # the CPU: this process's CPU time), labelled an estimate; never host CPU time at a GPU's power
    energy = measured_or_estimate((wall if gpu else cpu) / tokens, st.profile_device, measured)
    energy["joules_per_token"] = energy.pop("joules_per_inference")
    decode = summarize(steps)
    spread = repeat_spread(passes)
    return {
        "kind": spec.kind, "path": spec.path, "threads": threads, "load_seconds": load_s,
        "providers": ([st.torch_device] if spec.kind == "torch" else st.providers),
        "prompt_tokens": [len(p) for p in prompts], "new_tokens": n, "generations": len(ttfts),
        "ttft_ms": summarize(ttfts), "decode_ms_per_token": decode,
        # each pass's per-token p50: their spread is the noise the selection asks a faster candidate to beat
        # (quantize/select.py; without it two candidates 0.5% apart were told apart by a noisy p50)
        "repeats": passes, "spread": spread, "noisy": spread > NOISY_SPREAD,
        "tokens_per_s": 1000.0 / decode["mean"] if decode["mean"] else None,
        "end_to_end_tokens_per_s": tokens / wall,
        "peak_rss_bytes": peak_rss(), "rss_after_load_bytes": rss_loaded, "rss_before_load_bytes": rss0,
        "peak_rss_delta_bytes": peak_rss() - rss0, "cpu_seconds_per_token": cpu / tokens, "energy": energy,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m edgekd.llm.bench SPEC_JSON OUT_JSON", file=sys.stderr)
        return 2
    try:
        out = run_spec(load_spec(GenerationSpec, Path(argv[0]).read_text()))
        from edgekd.fsio import write_json_atomic

        write_json_atomic(Path(argv[1]), out)  # the parent never reads a half-written result
    except EdgekdError as e:
        print(f"edgekd-bench: {e.message}" + (f" (hint: {e.hint})" if e.hint else ""), file=sys.stderr)
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - the parent reads the last stderr line
        traceback.print_exc()
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
