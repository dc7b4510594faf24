"""The Ascend bundle of a KV-cache language model: static prefill and decode graphs for ATC, and their runs
on the NPU.

The bundle (`ascend/` in the convert stage's folder) holds prefill.onnx and decode.onnx (edgekd.llm.static_kv:
fixed batch 1, prompt chunk P, cache length C, the KV cache as inputs and outputs), each linted against
CANN's op table like a classifier's model.onnx; convert.sh runs `atc` once per graph, benchmark.sh runs
`msit benchmark` per graph on sample feeds (inputs/<graph>/); generation.json holds what a runner needs
(chat template, stop ids, P, C, the loop); tokenizer/ the tokenizer files; keep_dtype.cfg the layers the
FP16 preflight keeps in FP32; manifest.json the sha256 of every file.

On the device (atc, msit and npu-smi on PATH): each .om is timed by msit with npu-smi power sampling
(prefill = time to first token of a prompt of up to P tokens, decode = one generated token), and the
student's and the teacher's greedy decode run in eager PyTorch on the NPU through torch_npu with npu-smi
energy per token (torch_npu's graph mode, torchair, is not wired in).
Elsewhere the rows are the card's roofline estimate and the report says what did not run.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.errors import StageError, UserError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgekd.config import AscendConfig, TargetConfig
    from edgekd.targets.base import ConvertJob, LanguageModelPayload

LM_MANIFEST_SCHEMA_VERSION = 1
GRAPHS = ("prefill", "decode")
PARITY_PROMPTS = 4       # validation prompts whose greedy tokens must match PyTorch's
PARITY_NEW_TOKENS = 16   # tokens decoded per parity prompt (prefill + that many decode steps)
SELECTED = "student/ascend-decode-om"  # the shipped artifact's row: per-token latency is the decode graph's


# --------------------------------------------------------------------------- scripts


def _shape_arg(shapes: dict[str, list[int]]) -> str:
    return "--input_shape=\"" + ";".join(f"{n}:{','.join(str(d) for d in s)}" for n, s in shapes.items()) + "\""


def _convert_sh(shapes: dict[str, dict[str, list[int]]], soc: str, mode: str, keep_dtype: bool) -> str:
    keep = " --keep_dtype=keep_dtype.cfg" if keep_dtype and mode != "must_keep_origin_dtype" else ""
    lines = "\n".join(
        f'atc --model={g}.onnx --framework=5 --output={g} --soc_version={soc} {_shape_arg(shapes[g])} '
        f'--precision_mode="${{PRECISION_MODE:-{mode}}}"{keep} "$@"' for g in GRAPHS)
    return f"""#!/usr/bin/env bash
# Convert the static prefill and decode graphs to Ascend offline models (prefill.om, decode.om) with ATC.
# Needs the CANN toolkit environment: source /usr/local/Ascend/ascend-toolkit/set_env.sh
# Another precision mode: PRECISION_MODE=must_keep_origin_dtype ./convert.sh
set -euo pipefail
cd "$(dirname "$0")"
{lines}
"""


def _msit_input(graph: str, names: list[str]) -> str:
    return ",".join(f"inputs/{graph}/{n}.bin" for n in names)


def _benchmark_sh(names: list[str], loop: int, warmup: int, device_id: int) -> str:
    lines = "\n".join(f"msit benchmark --om-model {g}.om --input {_msit_input(g, names)} --loop {loop} "
                      f'--warmup-count {warmup} --device "$DEVICE_ID" "$@"' for g in GRAPHS)
    return f"""#!/usr/bin/env bash
# Time prefill.om (time to first token of one prompt chunk) and decode.om (one generated token) on the NPU
# with msit, on the sample feeds in inputs/ (pip install msit; msit install benchmark).
set -euo pipefail
cd "$(dirname "$0")"
DEVICE_ID="${{DEVICE_ID:-{device_id}}}"
{lines}
"""


def _readme(soc: str, sizes: Any, mode: str, atc_status: str, keep: int) -> str:
    return f"""edgekd Ascend bundle of a language model for {soc}
=================================================

prefill.onnx      static graph: input_ids [1,{sizes.prompt_length}], attention_mask [1,{sizes.cache_length}], cache_position [{sizes.prompt_length}],
                  past_key_values.N.key/value [1,kv_heads,{sizes.cache_length},head_dim] -> logits, present.N.key/value
decode.onnx       the same for one token: input_ids [1,1], cache_position [1]
convert.sh        atc per graph -> prefill.om, decode.om (precision_mode {mode}{f"; keep_dtype.cfg keeps {keep} layer(s) in FP32" if keep else ""}; ATC here: {atc_status})
benchmark.sh      msit benchmark per graph on the sample feeds in inputs/<graph>/ (raw .bin, one per input)
generation.json   the decode loop's settings: chat template, stop/pad ids, prompt chunk and cache length
tokenizer/        the student's tokenizer files
manifest.json     sha256 of every file, shapes, lint, host parity, FP16 preflight

The loop (generation.json "loop"): right-pad the chat-formatted prompt to {sizes.prompt_length} tokens (longer prompts:
one prefill per chunk of {sizes.prompt_length} at cache positions chunk*{sizes.prompt_length}...), attention_mask 1 on the
slots filled so far; the next token is the argmax of the logits row of the last real prompt token. Then decode
one token at a time at cache position = tokens so far, feeding back present.* as past_key_values.*, until a
stop id or {sizes.cache_length} tokens.

On the Ascend host:
  source /usr/local/Ascend/ascend-toolkit/set_env.sh
  ./convert.sh
  DEVICE_ID=0 ./benchmark.sh
"""


# --------------------------------------------------------------------------- the bundle


def _graph_shapes(path: Path) -> tuple[dict[str, list[int]], list[str]]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input if i.name not in inits}
    return shapes, [o.name for o in m.graph.output]


def _name_nodes(path: Path) -> None:
    """Unique node names (keep_dtype.cfg addresses nodes by name; the preflight names them the same way)."""
    import onnx

    from edgekd.targets.ascend.precision import _node_names

    m = onnx.load(str(path))
    _node_names(m)
    onnx.save(m, str(path))


def _node_names_of(path: Path) -> set[str]:
    import onnx

    return {n.name for n in onnx.load(str(path), load_external_data=False).graph.node}


def _write_samples(tmp: Path, lm: Any, prompt: list[int], names: list[str]) -> dict[str, Any]:
    """inputs/prefill/*.bin and inputs/decode/*.bin: the real feeds of one validation prompt's first chunk
    and of the decode step after it (msit reads one raw file per input), with the token each predicts."""
    n = min(len(prompt), lm.P)
    ids = np.zeros((1, lm.P), dtype=np.int64)
    ids[0, :n] = prompt[:n]
    mask = np.zeros((1, lm.C), dtype=np.int64)
    mask[0, :n] = 1
    feeds = {"prefill": {"input_ids": ids, "attention_mask": mask, "cache_position": np.arange(lm.P, dtype=np.int64),
                         **lm.empty_cache()}}
    outs = lm.prefill_sess.run(None, feeds["prefill"])
    first = int(outs[0][0, n - 1].argmax())
    mask2 = mask.copy()
    mask2[0, n] = 1
    feeds["decode"] = {"input_ids": np.array([[first]], dtype=np.int64), "attention_mask": mask2,
                       "cache_position": np.array([n], dtype=np.int64), **dict(zip(lm.kv_names, outs[1:]))}
    second = int(lm.decode_sess.run(None, feeds["decode"])[0][0, -1].argmax())
    for g, feed in feeds.items():
        (tmp / "inputs" / g).mkdir(parents=True)
        for name in names:
            np.ascontiguousarray(feed[name]).tofile(tmp / "inputs" / g / f"{name}.bin")
    return {"prompt_tokens": n, "prefill_next_token": first, "decode_next_token": second,
            "inputs": {g: [f"inputs/{g}/{name}.bin" for name in names] for g in GRAPHS}}


def _run_atc(bundle: Path, timeout_s: float) -> dict[str, Any]:
    """convert.sh of the LM bundle: one .om per graph (prefill, decode)."""
    from edgekd.targets.ascend.bundle import run_atc

    return run_atc(bundle, timeout_s, tuple(f"{g}.om" for g in GRAPHS))


def write_lm_bundle(job: "ConvertJob", *, atc_timeout_s: float = 3600.0) -> dict[str, Any]:
    """Write `job.wd/ascend/` for the language-model student of `job.payload` and return its manifest.

    The static graphs must reproduce the PyTorch student's greedy tokens on validation prompts
    (StageError otherwise); lint findings raise UserError unless the build allows unsupported ops; an
    ATC failure raises StageError after the bundle (with atc.log) is written."""
    import torch

    from edgekd.llm.models import load_causal_lm
    from edgekd.llm.onnx_gen import copy_tokenizer
    from edgekd.llm.static_kv import StaticLM, evaluate_static, export_static_graphs, greedy_parity, static_sizes
    from edgekd.targets.ascend.bundle import (_static_linted, _write_script, bundle_folder, check_target,
                                              raise_if_atc_failed)
    from edgekd.targets.ascend.precision import KEEP_DTYPE_FILE, keep_dtype_text, lm_fp16_preflight

    p: "LanguageModelPayload" = job.payload
    target = job.target
    asc = check_target(target)
    log = job.log or (lambda line: None)
    if not p.val_prompts:
        raise UserError("the Ascend bundle of a language model needs validation prompts (greedy parity)",
                        hint="keep a validation split (data.val_fraction > 0)")
    sizes = static_sizes([len(x) for x in p.val_prompts + p.test_prompts], p.max_length, p.max_new_tokens,
                         prompt_length=asc.prompt_length, cache_length=asc.cache_length)
    longest = max([len(x) + 1 for x in p.val_prompts + p.test_prompts] + [len(e.ids) for e in p.val + p.test])
    if longest > sizes.cache_length:
        raise UserError(f"the static KV cache of {sizes.cache_length} tokens cannot hold the longest prompt or sequence "
                        f"({longest} tokens)", hint=f"set [ascend] cache_length >= {longest} in the target card "
                                                    "(or leave it unset: derived from the prompts)")
    student, _ = load_causal_lm(p.student_dir)
    final = job.wd / "ascend"
    job.wd.mkdir(parents=True, exist_ok=True)
    allow = bool(job.options.get("allow_unsupported"))
    with bundle_folder(job.wd, ".ascend-lm-") as tmp:
        raw = export_static_graphs(student, tmp / "raw", sizes, target.onnx.opset)
        prep, findings, shapes = {}, {}, {}
        for g in GRAPHS:
            graph_shapes, _ = _graph_shapes(raw[g])
            (tmp / g).mkdir()
            prep[g], findings[g] = _static_linted(raw[g], tmp / g, target, "input_ids", graph_shapes["input_ids"], allow)
            os.replace(tmp / g / "model.onnx", tmp / f"{g}.onnx")
            (tmp / g).rmdir()
            _name_nodes(tmp / f"{g}.onnx")
            shapes[g] = graph_shapes
        shutil.rmtree(tmp / "raw")
        names = list(shapes["prefill"])
        lm = StaticLM(tmp / "prefill.onnx", tmp / "decode.onnx")
        log(f"  ascend: static graphs P={sizes.prompt_length} C={sizes.cache_length}; greedy parity on "
            f"{min(PARITY_PROMPTS, len(p.val_prompts))} validation prompt(s)")
        prompts = p.val_prompts[:PARITY_PROMPTS]
        par = greedy_parity(lm, student, prompts, min(PARITY_NEW_TOKENS, p.max_new_tokens), p.stop_ids)
        with torch.no_grad():
            scale = max(float(student(input_ids=torch.tensor([prompts[0]])).logits.abs().max()), 1.0)
        atol = target.parity.atol + target.parity.rtol * scale  # logits of a large vocabulary: rtol against their range
        par.update({"atol": atol, "ok": par["ok"] and par["max_abs_diff"] <= atol})
        if not par["ok"]:
            raise StageError(f"static prefill/decode graphs disagree with PyTorch: max abs logit diff "
                             f"{par['max_abs_diff']:.3g} (limit {atol:.3g}), greedy mismatches on validation prompts "
                             f"{par['greedy_mismatches']}", hint="rerun with --debug; report the model", exit_code=4)
        acc_test = evaluate_static(lm, p.test) if p.test else None
        log(f"  ascend: FP16 preflight ({asc.precision_mode}) on next-token agreement of validation sequences")
        precision = lm_fp16_preflight(tmp / "prefill.onnx", asc.precision_mode, p.val, p.test, job.budget_points, log=job.log)
        if precision.get("keep_fp32"):
            # chosen on the prefill graph; ATC applies the same file to the decode graph, whose nodes carry the
            # same module-path names (a name it lacks would silently keep nothing there: recorded)
            decode_nodes = _node_names_of(tmp / "decode.onnx")
            precision["keep_fp32_absent_in_decode"] = [n for n in precision["keep_fp32"] if n not in decode_nodes]
            (tmp / KEEP_DTYPE_FILE).write_text(keep_dtype_text(precision["keep_fp32"]), encoding="utf-8")
        samples = _write_samples(tmp, lm, prompts[0], names)
        del lm
        (tmp / "tokenizer").mkdir()
        tok_files = copy_tokenizer(p.student_dir, tmp / "tokenizer")
        generation = {"chat_template": p.chat_template, "stop_ids": list(p.stop_ids), "pad_id": p.pad_id,
                      "max_length": p.max_length, "max_new_tokens": p.max_new_tokens,
                      "prompt_length": sizes.prompt_length, "cache_length": sizes.cache_length,
                      "inputs": names, "outputs": _graph_shapes(tmp / "decode.onnx")[1],
                      "loop": "prefill the right-padded prompt in chunks of prompt_length at cache_position "
                              "chunk*prompt_length.., attention_mask 1 on filled slots; next token = argmax of the last "
                              "real prompt token's logits; decode one token at cache_position = tokens so far, feeding "
                              "present.* back as past_key_values.*, until a stop id or cache_length"}
        (tmp / "generation.json").write_text(json.dumps(generation, indent=1), encoding="utf-8")
        keep = bool(precision.get("keep_fp32"))
        _write_script(tmp / "convert.sh", _convert_sh(shapes, asc.soc_version, asc.precision_mode, keep))
        _write_script(tmp / "benchmark.sh", _benchmark_sh(names, asc.loop, asc.warmup, asc.device_id))
        atc = _run_atc(tmp, atc_timeout_s)
        (tmp / "README.txt").write_text(_readme(asc.soc_version, sizes, asc.precision_mode, atc["status"],
                                                len(precision.get("keep_fp32") or [])), encoding="utf-8")
        manifest = _manifest(tmp, target, sizes, shapes, prep, findings, allow, par, atc, precision, samples,
                             generation, tok_files, acc_test, sum(t.numel() for t in student.parameters()))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    raise_if_atc_failed(atc, asc.soc_version, final)
    return manifest


def _manifest(tmp: Path, target: "TargetConfig", sizes: Any, shapes: dict, prep: dict, findings: dict, allow: bool,
              parity: dict, atc: dict, precision: dict, samples: dict, generation: dict, tok_files: list[str],
              acc_test: dict | None, params: int) -> dict[str, Any]:
    from edgekd import __version__
    from edgekd.fsio import sha256_file
    from edgekd.targets.ascend.bundle import load_op_table

    table = load_op_table()
    return {
        "schema_version": LM_MANIFEST_SCHEMA_VERSION, "kind": "ascend-lm-bundle",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "edgekd_version": __version__,
        "target": target.name, "soc_version": target.ascend.soc_version, "precision_mode": target.ascend.precision_mode,
        "params": int(params), "opset": prep["prefill"]["opset"], "prompt_length": sizes.prompt_length, "cache_length": sizes.cache_length,
        "graphs": {g: {"file": f"{g}.onnx", "om": f"{g}.om", "inputs": shapes[g],
                       "outputs": prep[g]["outputs"], "folding": prep[g]["folding"],
                       "nodes_after": prep[g]["nodes_after"],
                       "lint": {"ok": not findings[g], "findings": [f.to_dict() for f in findings[g]]}} for g in GRAPHS},
        "lint": {"ok": not any(findings.values()), "allowed_unsupported": any(findings.values()) and allow,
                 "table_cann_version": table["cann_version"],
                 "note": "passing the lint does not guarantee every dtype/shape compiles"},
        "host_parity": {**parity, "what": "greedy tokens over prefill + decode and prompt logits vs the PyTorch student, "
                                          "onnxruntime CPU, validation prompts"},
        "accuracy": {"static_fp32_agreement": acc_test["agreement"], "perplexity": acc_test["perplexity"],
                     "tokens": acc_test["tokens"], "split": "test", "measured_on": "host", "runtime": "onnxruntime",
                     "metric": "next-token agreement with the teacher's tokens (teacher forcing)"} if acc_test else None,
        "precision_preflight": precision, "atc": atc, "samples": samples, "generation": generation,
        "tokenizer_files": [f"tokenizer/{f}" for f in tok_files],
        "commands": {"convert": "./convert.sh", "benchmark": "./benchmark.sh"},
        "files": {str(q.relative_to(tmp)): sha256_file(q) for q in sorted(tmp.rglob("*")) if q.is_file()},
    }


# --------------------------------------------------------------------------- on the device


def profile_lm_on_device(bundle: Path, ascend: "AscendConfig", manifest: dict[str, Any]) -> dict[str, Any]:
    """msit benchmark of prefill.om and decode.om on their sample feeds, npu-smi power sampled, when this
    host has atc, msit and npu-smi and atc produced both; else {"status": "not run", "reason"}."""
    from edgekd.targets.ascend.device import detect_ascend_soc, device_tools, run_msit_on_device

    missing = [k for k, v in device_tools().items() if v is None]
    if missing:
        return {"status": "not run", "reason": f"{', '.join(missing)} not on PATH: no Ascend host"}
    absent = [f"{g}.om" for g in GRAPHS if not (bundle / f"{g}.om").is_file()]
    if absent:
        return {"status": "not run", "reason": f"no {', '.join(absent)}: atc did not produce it"}
    soc, how = detect_ascend_soc()
    graphs = {}
    for g in GRAPHS:
        feeds = ",".join(manifest["samples"]["inputs"][g])
        graphs[g] = run_msit_on_device(bundle / f"{g}.om", ascend.loop, ascend.warmup, ascend.device_id,
                                       idle_seconds=ascend.idle_seconds, interval_s=ascend.power_interval_s,
                                       extra=["--input", feeds])
    return {"status": "ok", "device": soc or ascend.soc_version, "device_detected": how, "graphs": graphs}


def _sync(device: str) -> None:
    import torch

    mod = getattr(torch, device, None)
    if mod is not None and hasattr(mod, "synchronize"):
        mod.synchronize()


def greedy_on_npu(folder: Path, prompts: list[list[int]], max_new_tokens: int, stop: list[int],
                  ascend: "AscendConfig", *, device: str = "npu", sampler: Any = None,
                  available: Any = None) -> dict[str, Any]:
    """A causal LM's (the student's, the teacher's) greedy decode in eager PyTorch on the NPU (torch_npu),
    npu-smi power sampled with the idle baseline subtracted: TTFT, ms/token, tokens/s, joules per generated
    token. {"status": "not run", "reason"} when torch_npu sees no NPU. `device`, `sampler` and `available`
    exist for tests."""
    from edgekd.runtimes.torch_device import torch_npu_status

    ok, reason = available() if available is not None else torch_npu_status()
    if not ok:
        return {"status": "not run", "reason": reason}
    import torch

    if device == "npu":
        import torch_npu  # noqa: F401 - registers the "npu" device with torch
    from edgekd.llm.models import load_causal_lm
    from edgekd.profile.measure.energy import NpuSmiSampler, integrate_trapezoid
    from edgekd.profile.measure.stats import summarize

    model, _ = load_causal_lm(folder)
    params = sum(t.numel() for t in model.parameters())
    model.to(device)
    sampler = sampler or NpuSmiSampler(ascend.device_id, interval_s=ascend.power_interval_s)
    idle = sampler.idle_watts(ascend.idle_seconds)
    ttft, steps, tokens = [], [], 0
    with torch.inference_mode():
        model(input_ids=torch.tensor([prompts[0]], device=device))  # warm-up: kernels compiled, memory allocated
        _sync(device)
        sampler.start()
        for p in prompts:
            t0 = time.perf_counter()
            out = model(input_ids=torch.tensor([p], device=device), use_cache=True)
            nxt = int(out.logits[0, -1].argmax())  # .item() synchronizes with the device
            ttft.append((time.perf_counter() - t0) * 1e3)
            past, n = out.past_key_values, 1
            while nxt not in stop and n < max_new_tokens:
                t1 = time.perf_counter()
                out = model(input_ids=torch.tensor([[nxt]], device=device), past_key_values=past, use_cache=True)
                nxt, past = int(out.logits[0, -1].argmax()), out.past_key_values
                steps.append((time.perf_counter() - t1) * 1e3)
                n += 1
            tokens += n
        gross = sampler.stop()
    samples = list(sampler.samples)
    window = samples[-1][0] - samples[0][0] if len(samples) > 1 else 0.0
    above = integrate_trapezoid([(t, w - idle) for t, w in samples])
    energy = {"method": "npu-smi", "measured": True, "joules_per_token": above / tokens if tokens and above > 0 else None,
              "idle_watts": idle, "joules_total": gross, "joules_above_idle": above, "window_s": window,
              "tokens": tokens, "note": "board power from npu-smi, idle baseline subtracted, per generated token "
                                        "(prefill included)"}
    energy["joules_per_inference"] = energy["joules_per_token"]
    step = summarize(steps) if steps else None
    return {"status": "ok", "runtime": f"torch-{device} (eager)", "params": int(params), "ttft_ms": summarize(ttft),
            "ms_per_token": step,
            "tokens_per_s": 1000.0 / step["mean"] if step else None, "tokens": tokens, "prompts": len(prompts),
            "energy": energy, "graph_mode": "not tried: torch_npu's graph mode (torchair) is not wired in"}


# --------------------------------------------------------------------------- report rows


def _stats(lat: dict[str, Any], n: int | None, what: str) -> dict[str, Any]:
    return {"p50": lat.get("p50"), "p90": lat.get("p90"), "p99": lat.get("p99"), "mean": lat.get("mean"), "n": n,
            "min": lat.get("min"), "max": lat.get("max"), "what": what}


def lm_rows(bundle: Path, manifest: dict[str, Any], device: dict[str, Any], npu: dict[str, Any],
            target: "TargetConfig", params: int | None, teacher_npu: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Report rows: one per graph (msit on the NPU: measured_on device; else the card's roofline estimate),
    and the student's and teacher's torch_npu decode when they ran (the teacher's row is what the device
    comparison is made against). Agreement is the static FP32 graphs' on the test split (host)."""
    from edgekd.targets.ascend import _static_flops
    from edgekd.targets.estimate import roofline_estimate

    acc = (manifest.get("accuracy") or {}).get("static_fp32_agreement")
    prec = manifest.get("precision_preflight") or {}
    fp16 = prec.get("agreement_with_keep") if prec.get("keep_fp32") else prec.get("fp16_agreement")
    P = manifest["prompt_length"]
    mode = manifest.get("precision_mode")
    wbytes = (params or 0) * (4 if mode in ("must_keep_origin_dtype", "force_fp32") else 2)
    rows = []
    for g in GRAPHS:
        om = bundle / f"{g}.om"
        art = om if om.is_file() else bundle / f"{g}.onnx"
        info = manifest["graphs"][g]
        io = float(sum(np.prod(s) * (8 if n in ("input_ids", "attention_mask", "cache_position") else 4)
                       for n, s in info["inputs"].items()) + sum(np.prod(s) * 4 for s in info["outputs"].values()))
        per_token = g == "decode"
        row: dict[str, Any] = {
            "role": "student", "variant": f"ascend-{g}-om", "format": "om" if om.is_file() else "onnx (static, for atc)",
            "path": str(art.relative_to(bundle.parent)), "params": params, "size_bytes": art.stat().st_size,
            "accuracy": acc, "agreement": acc, "accuracy_measured_on": "host", "agreement_fp16_simulated": fp16,
            "precision_mode": mode, "keep_fp32_layers": prec.get("keep_fp32") or [], "peak_rss_bytes": None,
            "throughput_batch": 1, "graph": g, "prompt_length": P, "cache_length": manifest["cache_length"],
            "unit": "one generated token" if per_token else f"one prefill call ({P} prompt tokens)"}
        if device.get("status") == "ok":
            d = device["graphs"][g]
            lat = _stats(d["latency_ms"], d["loop"], d["latency_what"])
            e = dict(d["energy"])
            jpi = e.get("joules_per_inference")
            e["joules_per_token"] = (jpi if per_token else jpi / P) if jpi is not None else None
            row.update({"runtime": "msit benchmark (CANN)", "measured_on": "device", "device": device["device"],
                        "latency_ms": lat, "energy": e, "joules_per_token": e["joules_per_token"],
                        "ttft_ms": None if per_token else lat, "ms_per_token": lat if per_token else None,
                        "tokens_per_s": (1000.0 if per_token else 1000.0 * P) / lat["mean"] if lat.get("mean") else None})
            row["throughput_per_s"] = row["tokens_per_s"]
            if per_token:  # the decode row carries the prompt's TTFT too: the two graphs make one generation
                pre = device["graphs"]["prefill"]
                row["ttft_ms"] = _stats(pre["latency_ms"], pre["loop"], pre["latency_what"] + f", one {P}-token chunk")
        else:
            fl = _static_flops(bundle / f"{g}.onnx")
            est = roofline_estimate(fl[0], wbytes, io, target.device, "fp16") if fl else None
            v = est["latency_ms"] if est else None
            lat = {"p50": v, "p90": None, "p99": None, "mean": v, "n": None, "method": "estimate-roofline"}
            e = dict(est["energy"]) if est else {"joules_per_inference": None, "method": "estimate-none"}
            jpi = e.get("joules_per_inference")
            row.update({"runtime": f"ascend ({g}.om not run: {device.get('reason', 'no NPU')})", "measured_on": "estimate",
                        "device": target.device.name, "latency_ms": lat, "energy": e, "estimate": est,
                        "ttft_ms": None if per_token else lat, "ms_per_token": lat if per_token else None,
                        "tokens_per_s": None, "throughput_per_s": None,  # 1/latency of a lower bound would add nothing
                        "joules_per_token": (jpi if per_token else jpi / P) if jpi is not None else None})
        rows.append(row)
    for role, run, path in (("student", npu, "../distill/student"), ("teacher", teacher_npu or {}, None)):
        if run.get("status") != "ok":
            continue
        rows.append({"role": role, "variant": "fp32-torch-npu", "format": "safetensors", "runtime": run["runtime"],
                     "path": path or run.get("path", ""), "params": run.get("params"), "size_bytes": None,
                     "accuracy": None, "agreement": None, "peak_rss_bytes": None, "throughput_batch": 1,
                     "measured_on": "device", "device": device.get("device") or target.ascend.soc_version,
                     "latency_ms": run["ms_per_token"] or run["ttft_ms"], "ttft_ms": run["ttft_ms"],
                     "ms_per_token": run["ms_per_token"], "tokens_per_s": run["tokens_per_s"],
                     "throughput_per_s": run["tokens_per_s"], "energy": run["energy"],
                     "joules_per_token": run["energy"].get("joules_per_token"), "unit": "one generated token"})
    return rows


def convert_lm(job: "ConvertJob") -> tuple[dict[str, str], dict[str, Any]]:
    """The ascend family's convert step for a language-model payload."""
    manifest = write_lm_bundle(job)
    bundle = job.wd / "ascend"
    device = profile_lm_on_device(bundle, job.target.ascend, manifest)
    p: "LanguageModelPayload" = job.payload
    prompts = p.test_prompts[:4] or p.val_prompts[:4]
    npu = greedy_on_npu(p.student_dir, prompts, p.max_new_tokens, list(p.stop_ids), job.target.ascend)
    # the teacher on the same NPU and path: the like-for-like row the device comparison is formed against
    teacher_npu = (greedy_on_npu(p.teacher_dir, prompts, p.max_new_tokens, list(p.stop_ids), job.target.ascend)
                   if npu["status"] == "ok" else npu)
    if teacher_npu.get("status") == "ok":
        teacher_npu["path"] = str(p.teacher_dir)
    if job.log:
        job.log(f"  ascend: prefill.om/decode.om on the NPU: {device['status']}"
                + (f" ({device['reason']})" if "reason" in device else ""))
    rows = lm_rows(bundle, manifest, device, npu, job.target, manifest["params"], teacher_npu)
    outputs = {str(q.relative_to(bundle)): str(q.relative_to(job.wd)) for q in sorted(bundle.rglob("*")) if q.is_file()}
    par, prec = manifest["host_parity"], manifest["precision_preflight"]
    where: dict[str, list[str]] = {"ran": [], "not_run": []}
    where["ran"].append(f"static prefill/decode graphs (P={manifest['prompt_length']}, C={manifest['cache_length']}): "
                        f"op lint {'passed' if manifest['lint']['ok'] else 'FAILED (allowed)'}; greedy parity with PyTorch "
                        f"on {par['prompts']} validation prompt(s), {par['greedy_tokens']} tokens identical, max abs logit "
                        f"diff {par['max_abs_diff']:.2g}: this host (onnxruntime)")
    if prec.get("fp16_agreement") is not None:
        kept = (f"; {len(prec['keep_fp32'])} node(s) ({', '.join(prec['keep_fp32_groups'])}) kept in FP32 via keep_dtype.cfg"
                f" -> {prec['agreement_with_keep']:.2%}" if prec.get("keep_fp32") else "")
        where["ran"].append(f"FP16 preflight ({prec['mode']}, host simulation): next-token agreement FP32 "
                            f"{prec['fp32_agreement']:.2%}, FP16 {prec['fp16_agreement']:.2%} (test split; chosen on "
                            f"validation: {prec['val_agreement']:.2%} agreement with FP32){kept}")
    if device["status"] == "ok":
        where["ran"].append(f"prefill.om (TTFT) and decode.om (per token): {device['device']} (msit benchmark, npu-smi)")
    else:
        where["not_run"].append(f"prefill.om/decode.om on the NPU: {device['reason']}; their rows are the card's "
                                "roofline estimate")
    if npu["status"] == "ok":
        where["ran"].append(f"student and teacher greedy decode in PyTorch on the NPU ({npu['runtime']}, npu-smi energy "
                            "per token)")
    else:
        where["not_run"].append(f"student and teacher greedy decode on the NPU (torch_npu): {npu['reason']}")
    return outputs, {"bundle": "ascend", "selected": job.selected, "manifest": manifest, "device": device,
                     "torch_npu": {"student": npu, "teacher": teacher_npu}, "models": rows, "selected_artifact": SELECTED, "where": where}
