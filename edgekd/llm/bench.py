"""Profile ONE causal LM in this process: `python -m edgekd.llm.bench SPEC_JSON OUT_JSON`.

What a user compares for a phone: time to first token (prefill of the prompt), per-token decode
latency and tokens/s, peak memory, energy per generated token. Every model decodes exactly
`new_tokens` tokens per prompt (stop tokens ignored), so tokens/s compare like with like.

SPEC: kind ("torch" HF folder | "onnx" KV-cache ONNX), path, prompts (list of token-id lists),
new_tokens, repeats (passes over the prompts after one warm-up pass), threads, device (a
DeviceConfig dict for the energy estimate), energy ("auto" | "none" | a sampler name).
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def _torch_runner(path: str):
    import torch

    from edgekd.llm.models import load_causal_lm

    model, _ = load_causal_lm(path)

    def run(prompt: list[int], n: int) -> tuple[float, list[float]]:
        with torch.no_grad():
            ids = torch.tensor([prompt])
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            nxt = out.logits[0, -1].argmax().view(1, 1)
            ttft = time.perf_counter() - t0
            past, steps = out.past_key_values, []
            for _ in range(n - 1):
                t1 = time.perf_counter()
                out = model(input_ids=nxt, past_key_values=past, use_cache=True)
                nxt = out.logits[0, -1].argmax().view(1, 1)
                past = out.past_key_values
                steps.append(time.perf_counter() - t1)
        return ttft, steps

    return run


def _onnx_runner(path: str, threads: int):
    import numpy as np

    from edgekd.llm.onnx_gen import OrtLM

    lm = OrtLM(path, threads)

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


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    import os

    import psutil

    from edgekd.config import DeviceConfig
    from edgekd.profile.energy import measured_or_estimate, measured_result, pick_sampler
    from edgekd.profile.stats import summarize
    from edgekd.profile.worker import peak_rss, current_rss

    threads = int(spec.get("threads", 1))
    import torch

    torch.set_num_threads(threads)
    rss0 = current_rss()
    t_load = time.perf_counter()
    run = _torch_runner(spec["path"]) if spec["kind"] == "torch" else _onnx_runner(spec["path"], threads)
    load_s = time.perf_counter() - t_load
    rss_loaded = current_rss()
    prompts, n = spec["prompts"], int(spec["new_tokens"])
    run(prompts[0], min(n, 4))  # warm-up
    sampler = pick_sampler(spec.get("energy", "auto"), ["CPUExecutionProvider"]) if spec.get("energy", "auto") != "none" else None
    proc = psutil.Process(os.getpid())
    cpu0 = sum(proc.cpu_times()[:2])
    if sampler:
        sampler.start()
    t0 = time.perf_counter()
    ttfts, steps = [], []
    for _ in range(int(spec.get("repeats", 3))):
        for p in prompts:
            ttft, st = run(p, n)
            ttfts.append(ttft * 1e3)
            steps.extend(s * 1e3 for s in st)
    wall = time.perf_counter() - t0
    joules = sampler.stop() if sampler else None
    cpu = sum(proc.cpu_times()[:2]) - cpu0
    tokens = len(ttfts) * n
    device = DeviceConfig(**spec["device"])
    measured = measured_result(sampler.method, joules, tokens, wall) if sampler and joules else None
    energy = measured_or_estimate(cpu / tokens, device, measured)
    energy["joules_per_token"] = energy.pop("joules_per_inference")
    decode = summarize(steps)
    return {
        "kind": spec["kind"], "path": spec["path"], "threads": threads, "load_seconds": load_s,
        "prompt_tokens": [len(p) for p in prompts], "new_tokens": n, "generations": len(ttfts),
        "ttft_ms": summarize(ttfts), "decode_ms_per_token": decode,
        "tokens_per_s": 1000.0 / decode["mean"] if decode["mean"] else None,
        "end_to_end_tokens_per_s": tokens / wall,
        "peak_rss_bytes": peak_rss(), "rss_after_load_bytes": rss_loaded, "rss_before_load_bytes": rss0,
        "peak_rss_delta_bytes": peak_rss() - rss0, "cpu_seconds_per_token": cpu / tokens, "energy": energy,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    try:
        out = run_spec(spec)
    except Exception as e:  # noqa: BLE001 - the parent reads the last stderr line
        traceback.print_exc()
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 4
    Path(argv[1]).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
