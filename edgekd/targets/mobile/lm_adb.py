"""The language-model bundle on an Android phone over adb: ExecuTorch's LLM runner (`llama_main`).

`write_bench_files` adds `prompts.json` (the build's benchmark prompts, chat-templated strings) and
`benchmark_android.sh` to the bundle; `adb_profile_lm` (what `edgekd profile BUILD --adb SERIAL` runs on a
language-model build) verifies the bundle against its manifest, runs the script and turns each run's
`PyTorchObserver {json}` line into per-token figures measured on the phone.

The runner's flags and its report are those of pytorch/executorch examples/models/llama/main.cpp and
extension/llm/runner/stats.h + text_llm_runner.cpp (read at commit cff6f4dd32e6, the 1.5 line; main.cpp is
unchanged since v1.4.1). What the report's fields mean there:
- `inference_start_ms`: before the prompt is encoded; `first_token_ms` (= `prompt_eval_end_ms`): after the
  prefill produced the first new token; `inference_end_ms`: after the decode loop.
- `generated_tokens`: the tokens of the DECODE loop only. The runner asks its token generator for
  `max_new_tokens - 1` tokens after the prefill's first one and records what that loop returns
  (`pos - start_pos`), so the loop's time `inference_end_ms - first_token_ms` covers exactly
  `generated_tokens` forward passes: ms/token = that time / generated_tokens (not generated_tokens - 1).
- timestamps are whole milliseconds (`time_in_ms`): a decode step under 1 ms is only resolved on average.
"""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgekd.errors import StageError, TargetUnavailable, UserError

KIND = "executorch-llm"  # manifest "kind" of the language-model bundle (lm.write_lm_bundle)
DEVICE_DIR = "/data/local/tmp/edgekd-llm"
SCRIPT = "benchmark_android.sh"
PROMPTS = "prompts.json"
RUNNER_HINT = ("set LLM_RUNNER to an Android arm64 build of ExecuTorch's llama_main: in a pytorch/executorch "
               "checkout, cmake with the Android NDK toolchain (-DANDROID_ABI=arm64-v8a) and "
               "-DEXECUTORCH_BUILD_XNNPACK=ON -DEXECUTORCH_BUILD_KERNELS_LLM=ON "
               "-DEXECUTORCH_BUILD_KERNELS_QUANTIZED=ON -DEXECUTORCH_BUILD_EXTENSION_LLM_RUNNER=ON, then build "
               "examples/models/llama (see its README, 'Run on Android'); the file is llama_main")

# The script runs on the host, next to the bundle's files. Placeholders __X__ are the build's settings; each
# may be overridden from the environment. llama_main flags (examples/models/llama/main.cpp):
#   --model_path --tokenizer_path --prompt_file: the program, tokenizer.json, the prompt text (a file: chat
#     templates hold newlines and quotes that `adb shell` would re-split)
#   --temperature 0: greedy argmax;  --max_new_tokens: tokens per generation (prefill's first one included);
#   --seq_len: the total bound older runners read (ignored when --max_new_tokens is given);
#   --ignore_eos: decode all of them, as the host benchmark does (stop tokens ignored);
#   --cpu_threads: the threadpool size;  --warmup: one untimed generation in the same process first
#     (the runner prints no report for it), so the timed run sees warm caches and a loaded program.
_SCRIPT = r"""#!/usr/bin/env bash
# Times this language-model bundle on an Android phone over adb: greedy generation of the benchmark prompts
# in prompts.json with ExecuTorch's LLM runner (llama_main), one runner process per prompt and run, each with
# a warm-up generation. Run it on the host, next to the files:
#   ANDROID_SERIAL=<serial> LLM_RUNNER=/path/to/llama_main bash benchmark_android.sh
# LLM_RUNNER: an Android arm64 llama_main (pytorch/executorch examples/models/llama) built with XNNPACK, the
# LLM custom ops and the quantized kernels (-DEXECUTORCH_BUILD_XNNPACK=ON -DEXECUTORCH_BUILD_KERNELS_LLM=ON
# -DEXECUTORCH_BUILD_KERNELS_QUANTIZED=ON). Each run prints one `PyTorchObserver {json}` line (its timings).
# Needs adb and python3 on the host (it reads prompts.json; PYTHON=... picks another interpreter).
set -euo pipefail
: "${ANDROID_SERIAL:?set ANDROID_SERIAL to the serial of the phone, see: adb devices}"
: "${LLM_RUNNER:?set LLM_RUNNER to an Android arm64 build of ExecuTorch llama_main (see README.txt)}"
RUNS="${RUNS:-__RUNS__}"
THREADS="${THREADS:-__THREADS__}"
MAX_NEW_TOKENS="${MAX_NEW_TOKENS:-__MAX_NEW_TOKENS__}"
SEQ_LEN="${SEQ_LEN:-__SEQ_LEN__}"
DEV_DIR="${DEV_DIR:-__DEVICE_DIR__}"
PYTHON="${PYTHON:-python3}"
HERE="$(cd "$(dirname "$0")" && pwd)"
ADB=(adb -s "$ANDROID_SERIAL")
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

"${ADB[@]}" shell mkdir -p "$DEV_DIR"
PHONE_MODEL="$("${ADB[@]}" shell getprop ro.product.model | tr -d '\r')"
echo "=== edgekd: device $PHONE_MODEL ==="
"${ADB[@]}" push "$LLM_RUNNER" "$DEV_DIR/llama_main" >/dev/null
"${ADB[@]}" shell chmod 755 "$DEV_DIR/llama_main"
"${ADB[@]}" push "$HERE/model.pte" "$DEV_DIR/model.pte" >/dev/null
"${ADB[@]}" push "$HERE/tokenizer.json" "$DEV_DIR/tokenizer.json" >/dev/null

N_PROMPTS="$("$PYTHON" -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["prompts"]))' "$HERE/prompts.json")"
for ((k = 0; k < N_PROMPTS; k++)); do
  # the prompt's exact text (no trailing newline added) into a file for --prompt_file
  "$PYTHON" -c 'import json, sys; open(sys.argv[3], "w", encoding="utf-8", newline="").write(json.load(open(sys.argv[1], encoding="utf-8"))["prompts"][int(sys.argv[2])]["text"])' \
    "$HERE/prompts.json" "$k" "$TMP/prompt_$k.txt"
  "${ADB[@]}" push "$TMP/prompt_$k.txt" "$DEV_DIR/prompt_$k.txt" >/dev/null
  for ((r = 0; r < RUNS; r++)); do
    echo "=== edgekd: prompt $k run $r ==="
    # Android builds log to logcat (tag ExecuTorch): clear it so a failure shows this run's log only
    "${ADB[@]}" logcat -c 2>/dev/null || true
    rc=0
    "${ADB[@]}" shell "cd $DEV_DIR && ./llama_main --model_path model.pte --tokenizer_path tokenizer.json --prompt_file prompt_$k.txt --temperature 0 --max_new_tokens $MAX_NEW_TOKENS --seq_len $SEQ_LEN --ignore_eos --cpu_threads $THREADS --warmup" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
      "${ADB[@]}" logcat -d -s ExecuTorch 2>/dev/null | tail -n 20 || true
      exit "$rc"
    fi
  done
done
echo "=== edgekd: done ==="
"""


def bench_prompts(lm: Any) -> list[list[int]]:
    """The prompts the phone decodes: the same ones the host benchmark times (convert_language_model's choice:
    the first `bench.prompts` test prompts, else validation prompts)."""
    n = lm.bench.prompts if lm.bench is not None else 4
    return [list(p) for p in (lm.test_prompts[:n] or lm.val_prompts[:n])]


def _decoder(tokenizer_dir: Path):
    """ids -> text with the bundle's own tokenizer (special tokens kept: the chat template's markers are part of
    the prompt the runner must encode back to the same ids)."""
    if (tokenizer_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        return (lambda ids: tok.decode(ids, skip_special_tokens=False),
                lambda text: tok.encode(text, add_special_tokens=False).ids)
    raise UserError(f"{tokenizer_dir} has no tokenizer.json: ExecuTorch's LLM runner on the phone reads that file",
                    hint="save the student's tokenizer with a fast (tokenizers) backend")


def write_bench_files(bundle: Path, prompts: list[list[int]], new_tokens: int, threads: int, cache_len: int,
                      runs: int = 1) -> None:
    """prompts.json (each benchmark prompt as the chat-templated text the runner encodes, with its token ids)
    and benchmark_android.sh (executable) in `bundle`, which already holds the tokenizer files."""
    decode, encode = _decoder(bundle)
    rows = []
    for ids in prompts:
        text = decode(ids)
        # the runner encodes the text itself (no BOS added, --num_bos 0): say whether that gives back these ids
        rows.append({"text": text, "token_ids": list(ids), "roundtrip_ids_match": encode(text) == list(ids)})
    # the runner stops at the cache: a prompt plus its new tokens must fit (the convert step sized it so)
    max_new = max(1, min(new_tokens, cache_len - 1 - max((len(p) for p in prompts), default=0)))
    doc = {"prompts": rows, "max_new_tokens": max_new, "threads": threads, "runs": runs,
           "seq_len": cache_len - 1, "decoding": "greedy (--temperature 0), stop tokens ignored (--ignore_eos)",
           "source": "the build's benchmark prompts (held-out test prompts, chat template applied)"}
    (bundle / PROMPTS).write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
    script = bundle / SCRIPT
    script.write_text(_SCRIPT.replace("__RUNS__", str(runs)).replace("__THREADS__", str(threads))
                      .replace("__MAX_NEW_TOKENS__", str(max_new)).replace("__SEQ_LEN__", str(cache_len - 1))
                      .replace("__DEVICE_DIR__", DEVICE_DIR))
    os.chmod(script, os.stat(script).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


# --------------------------------------------------------------------------- parsing the runner's output

_OBSERVER = re.compile(r"PyTorchObserver\s+(\{.*\})\s*$", re.M)
_REQUIRED = ("prompt_tokens", "generated_tokens", "model_load_start_ms", "model_load_end_ms", "inference_start_ms",
             "inference_end_ms", "prompt_eval_end_ms", "first_token_ms")


def parse_observer(text: str) -> dict[str, Any]:
    """The `PyTorchObserver {json}` report of one llama_main run (the last one, should a log repeat it)."""
    found = _OBSERVER.findall(text)
    if not found:
        raise StageError("llama_main printed no PyTorchObserver line",
                         hint="run benchmark_android.sh by hand: the runner stopped before its report")
    try:
        stats = json.loads(found[-1])
    except json.JSONDecodeError as e:
        raise StageError(f"llama_main's PyTorchObserver line is not JSON: {e.msg}",
                         hint="run benchmark_android.sh by hand and check the runner's output") from None
    missing = [k for k in _REQUIRED if k not in stats]
    if missing:
        raise StageError(f"llama_main's PyTorchObserver report lacks {', '.join(missing)}",
                         hint="use a llama_main of ExecuTorch 1.x (extension/llm/runner/stats.h)")
    return stats


def run_figures(stats: dict[str, Any]) -> dict[str, Any]:
    """Per-run figures from one report, in ms and tokens/s (its units: SCALING_FACTOR_UNITS_PER_SECOND)."""
    unit_ms = 1000.0 / float(stats.get("SCALING_FACTOR_UNITS_PER_SECOND", 1000))
    prefill = (stats["prompt_eval_end_ms"] - stats["inference_start_ms"]) * unit_ms
    decode = (stats["inference_end_ms"] - stats["first_token_ms"]) * unit_ms
    gen = int(stats["generated_tokens"])
    ms_per_token = decode / gen if gen > 0 and decode > 0 else None
    return {"prompt_tokens": int(stats["prompt_tokens"]), "generated_tokens": gen,
            "emitted_tokens": gen + 1,  # the prefill's first token is printed but not counted by the runner
            "ttft_ms": (stats["first_token_ms"] - stats["inference_start_ms"]) * unit_ms,
            "decode_ms_per_token": ms_per_token,
            "tokens_per_s": 1000.0 / ms_per_token if ms_per_token else None,
            "prompt_tokens_per_s": stats["prompt_tokens"] * 1000.0 / prefill if prefill > 0 else None,
            "model_load_ms": (stats["model_load_end_ms"] - stats["model_load_start_ms"]) * unit_ms,
            "sampling_ms": stats.get("aggregate_sampling_time_ms", 0) * unit_ms}


def parse_lm_benchmark_output(text: str) -> dict[str, Any]:
    """benchmark_android.sh output: its `=== edgekd: ... ===` sections, one report per `prompt K run R`."""
    device, runs = None, []
    parts = re.split(r"^=== edgekd: (.+?) ===\s*$", text, flags=re.M)
    for header, body in zip(parts[1::2], parts[2::2]):
        words = header.split()
        if words[0] == "device":
            device = " ".join(words[1:]) or None
        elif words[0] == "prompt" and len(words) == 4 and words[2] == "run":
            runs.append({"prompt": int(words[1]), "run": int(words[3]), **run_figures(parse_observer(body))})
    return {"device_model": device, "runs": runs}


def _summary(values: list[float | None]) -> dict[str, Any] | None:
    from edgekd.profile.measure.stats import summarize

    xs = [v for v in values if v is not None]
    return summarize(xs) if xs else None


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-prompt (median over its runs) and overall figures: min/p50/p90/mean of each over all runs;
    tokens/s of the p50 decode step (the host benchmark's tokens/s is likewise 1000 / ms per decode step)."""
    import statistics

    if not runs:
        raise StageError("benchmark_android.sh ran no generation", hint="prompts.json lists no prompts; rebuild")
    keys = ("ttft_ms", "decode_ms_per_token", "tokens_per_s", "prompt_tokens_per_s", "model_load_ms")
    per_prompt = []
    for k in sorted({r["prompt"] for r in runs}):
        mine = [r for r in runs if r["prompt"] == k]
        row: dict[str, Any] = {"prompt": k, "runs": len(mine), "prompt_tokens": mine[0]["prompt_tokens"],
                               "generated_tokens": mine[0]["generated_tokens"]}
        for key in keys:
            xs = [r[key] for r in mine if r[key] is not None]
            row[key] = statistics.median(xs) if xs else None
        per_prompt.append(row)
    out = {key: _summary([r[key] for r in runs]) for key in keys}
    decode = out["decode_ms_per_token"]
    out["ms_per_token"] = decode["p50"] if decode else None
    out["tokens_per_s"] = 1000.0 / decode["p50"] if decode else None
    out["tokens_per_s_runs"] = _summary([r["tokens_per_s"] for r in runs])
    return {"per_prompt": per_prompt, **out}


# --------------------------------------------------------------------------- on the phone


def verify_lm_bundle(bundle: Path | str) -> dict[str, Any]:
    """The manifest's sha256 of every file against the files; StageError on a missing or changed file (what
    write_lm_bundle wrote is all that `adb_profile_lm` runs or pushes)."""
    from edgekd.fsio import sha256_file

    bundle = Path(bundle)
    man = json.loads((bundle / "manifest.json").read_text())
    for name, entry in man["files"].items():
        f = bundle / name
        if not f.is_file() or sha256_file(f) != entry["sha256"]:
            raise StageError(f"{bundle.name}/{name} does not match its manifest sha256",
                             hint="rebuild the bundle; never edit it by hand")
    return man



def is_lm_bundle(bundle: Path | str) -> bool:
    """Whether `bundle` (a convert/mobile folder) is the language-model bundle (manifest kind executorch-llm)."""
    try:
        return json.loads((Path(bundle) / "manifest.json").read_text(encoding="utf-8")).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def adb_profile_lm(bundle_dir: Path | str, serial: str, threads: int | None = None, runs: int | None = None,
                   timeout_s: int = 1800) -> dict[str, Any]:
    """Run the language-model bundle's benchmark_android.sh on phone `serial` and parse llama_main's reports.

    Needs `adb` on PATH, the phone listed by `adb devices` and LLM_RUNNER (an Android arm64 llama_main) in the
    environment, else TargetUnavailable (exit 3); a bundle whose files differ from its manifest is refused
    before anything runs or is pushed; a failing runner is a StageError (exit 4) quoting its last line.
    `threads`/`runs` default to the bundle's (prompts.json: the build's benchmark settings).
    """
    from edgekd.targets.mobile.bundle import BUNDLE_DIR, attached_phone

    bundle_dir = Path(bundle_dir)
    if (bundle_dir / BUNDLE_DIR / "manifest.json").is_file():
        bundle_dir = bundle_dir / BUNDLE_DIR
    attached_phone(serial)
    rebuild = "rebuild it with `edgekd build --target mobile` (this edgekd writes the phone benchmark)"
    if not is_lm_bundle(bundle_dir):
        raise UserError(f"{bundle_dir} is not a language-model mobile bundle (no manifest.json of kind {KIND})",
                        hint="pass the build folder of a text-generation recipe built for --target mobile")
    runner = os.environ.get("LLM_RUNNER", "")
    if not runner:
        raise TargetUnavailable("no on-device LLM runner: LLM_RUNNER is not set", hint=RUNNER_HINT)
    if not Path(runner).is_file():
        raise TargetUnavailable(f"LLM_RUNNER={runner} is not a file", hint=RUNNER_HINT)
    man = verify_lm_bundle(bundle_dir)  # the script runs here and pushes the files: only what the build wrote
    if SCRIPT not in man["files"] or PROMPTS not in man["files"]:
        raise UserError(f"{bundle_dir} predates the phone benchmark (no {SCRIPT} in its manifest)", hint=rebuild)
    settings = json.loads((bundle_dir / PROMPTS).read_text(encoding="utf-8"))
    threads = int(threads or settings["threads"])
    runs = int(runs or settings["runs"])
    script = bundle_dir / SCRIPT
    env = {**os.environ, "ANDROID_SERIAL": serial, "RUNS": str(runs), "THREADS": str(threads),
           "PYTHON": sys.executable}
    try:
        proc = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise StageError(f"{SCRIPT} on {serial} took longer than {timeout_s} s",
                         hint="lower the runs, or check the phone is not asleep") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
        where = next((ln.strip("= ").removeprefix("edgekd: ") for ln in reversed(lines)
                      if ln.startswith("=== edgekd: prompt")), None)
        last = lines[-1][:200] if lines else "no output"
        raise StageError(f"llama_main failed on {serial} (exit {proc.returncode}"
                         f"{', ' + where if where else ''}): {last}",
                         hint=f"run `ANDROID_SERIAL={serial} LLM_RUNNER={runner} bash {script}` by hand for the full log")
    parsed = parse_lm_benchmark_output(proc.stdout)
    expected = {k: len(p["token_ids"]) for k, p in enumerate(settings["prompts"])}
    mismatched = sorted({r["prompt"] for r in parsed["runs"] if r["prompt_tokens"] != expected.get(r["prompt"])})
    notes = ["figures from llama_main's PyTorchObserver report (whole-millisecond timestamps); ttft_ms: prompt "
             "encode + prefill to the first new token; decode_ms_per_token: decode-loop time / its tokens",
             "each run: a fresh llama_main process (model load timed as model_load_ms) with one warm-up generation"]
    if mismatched:
        notes.append(f"prompts {mismatched}: the runner's tokenizer gave another prompt length than the build's "
                     "token ids (prompt_tokens_expected, from prompts.json): its figures are for that encoding")
    return {"serial": serial, "host": False, "measured_on": "device", "method": "adb",
            "runtime": "executorch llama_main (xnnpack)", "device_model": parsed["device_model"],
            "variant": man.get("variant"), "runs": runs, "threads": threads,
            "max_new_tokens": settings["max_new_tokens"], "prompts": len(settings["prompts"]),
            "prompt_tokens_expected": [expected[k] for k in sorted(expected)],
            **aggregate(parsed["runs"]), "per_run": parsed["runs"],
            "energy": None, "energy_note": "no power counter read over adb: no joules per token on the phone",
            "notes": notes}
