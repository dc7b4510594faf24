"""The language-model mobile bundle on a phone over adb (targets/mobile/lm_adb.py): the bundle's
benchmark_android.sh and prompts.json, `adb_profile_lm` / `edgekd profile BUILD --adb SERIAL` against a fake
`adb` that replays ExecuTorch llama_main output in the runner's format (tests/fixtures/executorch/README.md).
No ExecuTorch export: the bundle is written around a few-byte model.pte and a word-level tokenizer."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.errors import StageError, TargetUnavailable

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "executorch"
RUN_FILES = sorted(FIXTURES.glob("llama_main_run*.txt"))
SERIAL = "PHONE1"
VOCAB = 64
CACHE = 64
NEW_TOKENS = 32
THREADS = 4


def _observer(path: Path) -> dict:
    """The fixture run's PyTorchObserver JSON, read independently of the code under test."""
    line = next(ln for ln in path.read_text().splitlines() if ln.startswith("PyTorchObserver "))
    return json.loads(line.split(" ", 1)[1])


def _tokenizer_dir(d: Path) -> Path:
    """A word-level tokenizer with chat markers as special tokens, saved as tokenizer.json (no hub download)."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"<pad>": 0, "<|im_start|>": 1, "<|im_end|>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    t = Tokenizer(WordLevel(vocab, unk_token="<pad>"))
    t.pre_tokenizer = Whitespace()
    t.add_special_tokens([AddedToken("<|im_start|>", special=True), AddedToken("<|im_end|>", special=True)])
    d.mkdir(parents=True)
    t.save(str(d / "tokenizer.json"))
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": VOCAB}))
    return d


def _prompts() -> list[list[int]]:
    """Chat-shaped prompts as long as the fixture runs' prompt_tokens (so the runner's count matches)."""
    out = []
    for k, f in enumerate(RUN_FILES):
        n = _observer(f)["prompt_tokens"]
        body = [3 + (k * 7 + i) % (VOCAB - 3) for i in range(n - 4)]
        out.append([1, *body, 2, 1, 40])  # <|im_start|> ... <|im_end|> <|im_start|> assistant-ish
    return out


def _bench_settings():
    from edgekd.cards import load_target
    from edgekd.profile.spec import GenerationSettings

    dev = load_target("mobile").device
    return GenerationSettings(threads=THREADS, prompts=len(RUN_FILES), new_tokens=NEW_TOKENS, repeats=1, device=dev,
                              profiled_on="host", profile_device=dev)


def _write_build(root: Path, prompts: list[list[int]]) -> Path:
    """ROOT/build/convert/mobile written by write_lm_bundle around a stand-in program; returns ROOT/build."""
    from edgekd.targets.base import LanguageModelPayload
    from edgekd.targets.mobile.lm import write_lm_bundle

    hf = root / "hf" if (root / "hf").is_dir() else _tokenizer_dir(root / "hf")
    pte = root / "student_8da4w.pte"
    pte.write_bytes(b"\x00\x00\x00\x00ET12 stand-in program")
    payload = LanguageModelPayload(student_dir=hf, teacher_dir=hf, val=[], test=[], val_prompts=prompts[:1],
                                   test_prompts=prompts + [[1, 5, 2]], pad_id=0, stop_ids=[2], max_length=40,
                                   max_new_tokens=8, chat_template="{{ messages }}", bench=_bench_settings())
    write_lm_bundle(root / "build" / "convert", pte, "pte-8da4w", payload, CACHE)
    return root / "build"


@pytest.fixture
def build(tmp_path) -> Path:
    return _write_build(tmp_path, _prompts())


_FAKE_ADB = r'''#!{py}
"""Fake adb: lists {serial} (and an unauthorized phone), records every call, replays llama_main runs."""
import json, os, sys
from pathlib import Path

state = Path({state!r})
runs = {runs!r}
argv = sys.argv[1:]
with open(state / "calls.jsonl", "a") as log:
    entry = {{"argv": argv}}
    if "push" in argv:
        src = Path(argv[argv.index("push") + 1])
        entry["src_bytes"] = src.read_bytes().decode("utf-8", "replace")
    log.write(json.dumps(entry) + "\n")
if argv[:1] == ["devices"]:
    print("List of devices attached\n{serial}\tdevice\nOTHER\tunauthorized\n")
    sys.exit(0)
if argv[:1] != ["-s"] or argv[1] != "{serial}":
    print("adb: device '%s' not found" % argv[1], file=sys.stderr)
    sys.exit(1)
cmd = argv[2:]
if cmd[:1] == ["shell"] and "getprop" in cmd:
    print("Pixel 8 Pro\r")
elif cmd[:1] == ["shell"] and "./llama_main " in cmd[-1]:
    if os.environ.get("FAKE_LLAMA_FAIL"):
        print("I 00:00:00.000418 executorch:main.cpp:153] Resetting threadpool with num threads = 4")
        print("E 00:00:00.052144 executorch:main.cpp:190] Failed to create llama runner", file=sys.stderr)
        sys.exit(1)
    n = len(list(state.glob("served-*")))
    (state / f"served-{{n}}").write_text("")
    sys.stdout.write(Path(runs[n % len(runs)]).read_text())
sys.exit(0)
'''


def _fake_adb(tmp_path: Path, monkeypatch) -> Path:
    """Install the fake adb first on PATH; returns its state folder (calls.jsonl)."""
    bin_dir, state = tmp_path / "fake_bin", tmp_path / "adb_state"
    bin_dir.mkdir()
    state.mkdir()
    (bin_dir / "adb").write_text(_FAKE_ADB.format(py=sys.executable, serial=SERIAL, state=str(state),
                                                  runs=[str(f) for f in RUN_FILES]))
    os.chmod(bin_dir / "adb", 0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    return state


def _calls(state: Path) -> list[dict]:
    p = state / "calls.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def _runner(tmp_path: Path, monkeypatch) -> Path:
    r = tmp_path / "llama_main"
    r.write_bytes(b"\x7fELF stand-in llama_main")
    monkeypatch.setenv("LLM_RUNNER", str(r))
    return r


def test_the_bundle_ships_the_phone_benchmark_in_its_manifest(build):
    from edgekd.fsio import sha256_file
    from edgekd.targets.mobile.lm_adb import verify_lm_bundle

    b = build / "convert" / "mobile"
    man = verify_lm_bundle(b)
    assert man["kind"] == "executorch-llm"
    for name in ("benchmark_android.sh", "prompts.json"):
        assert man["files"][name]["sha256"] == sha256_file(b / name)
    assert os.access(b / "benchmark_android.sh", os.X_OK)
    script = (b / "benchmark_android.sh").read_text()
    assert "__" not in script.replace("__main__", "")  # every placeholder filled
    assert f'MAX_NEW_TOKENS:-{NEW_TOKENS}}}' in script and f'THREADS:-{THREADS}}}' in script
    doc = json.loads((b / "prompts.json").read_text())
    # the host benchmark's prompts: the first `bench.prompts` test prompts, as text the runner re-encodes to them
    assert [p["token_ids"] for p in doc["prompts"]] == _prompts()
    assert all(p["roundtrip_ids_match"] for p in doc["prompts"])
    assert doc["prompts"][0]["text"].startswith("<|im_start|>") and doc["max_new_tokens"] == NEW_TOKENS
    assert doc["seq_len"] == CACHE - 1
    readme = (b / "README.txt").read_text()
    assert "edgekd profile BUILD --adb" in readme and "benchmark_android.sh" in readme and "prompts.json" in readme


def test_adb_profile_lm_reports_the_runners_figures(build, tmp_path, monkeypatch):
    from edgekd.targets.mobile.lm_adb import adb_profile_lm

    state = _fake_adb(tmp_path, monkeypatch)
    runner = _runner(tmp_path, monkeypatch)
    r = adb_profile_lm(build / "convert" / "mobile", SERIAL)
    assert r["measured_on"] == "device" and r["method"] == "adb" and r["host"] is False
    assert r["device_model"] == "Pixel 8 Pro" and r["energy"] is None and "adb" in r["energy_note"]
    assert r["threads"] == THREADS and r["runs"] == 1 and len(r["per_run"]) == len(RUN_FILES)

    # the figures the recorded reports imply, computed here from their JSON
    obs = [_observer(f) for f in RUN_FILES]
    ttft = [o["first_token_ms"] - o["inference_start_ms"] for o in obs]
    decode = [(o["inference_end_ms"] - o["first_token_ms"]) / o["generated_tokens"] for o in obs]
    load = [o["model_load_end_ms"] - o["model_load_start_ms"] for o in obs]
    for run, o, t, d, ld in zip(r["per_run"], obs, ttft, decode, load):
        assert run["ttft_ms"] == pytest.approx(t) and run["decode_ms_per_token"] == pytest.approx(d)
        assert run["model_load_ms"] == pytest.approx(ld) and run["generated_tokens"] == o["generated_tokens"]
        # the runner's own rates (6 significant digits) agree with ours: same definition of a decode step
        assert run["tokens_per_s"] == pytest.approx(o["decode_token_per_sec"], rel=1e-5)
        assert run["prompt_tokens_per_s"] == pytest.approx(o["prefill_token_per_sec"], rel=1e-5)
    s_ttft, s_decode = sorted(ttft), sorted(decode)
    assert r["ttft_ms"]["p50"] == pytest.approx(s_ttft[1]) and r["ttft_ms"]["n"] == 3
    assert r["ms_per_token"] == pytest.approx(s_decode[1])
    assert r["tokens_per_s"] == pytest.approx(1000.0 / s_decode[1])
    assert r["model_load_ms"]["p50"] == pytest.approx(sorted(load)[1])
    assert [p["prompt_tokens"] for p in r["per_prompt"]] == [len(p) for p in _prompts()]
    assert not any("another prompt length" in n for n in r["notes"])  # the runner counted the build's tokens

    calls = _calls(state)
    pushes = {c["argv"][-1]: c for c in calls if "push" in c["argv"]}
    dev = "/data/local/tmp/edgekd-llm"
    assert pushes[f"{dev}/llama_main"]["argv"][-2] == str(runner)
    assert pushes[f"{dev}/model.pte"]["src_bytes"] == (build / "convert" / "mobile" / "model.pte").read_text("utf-8", "replace")
    assert f"{dev}/tokenizer.json" in pushes
    prompts = json.loads((build / "convert" / "mobile" / "prompts.json").read_text())["prompts"]
    for k, p in enumerate(prompts):  # the exact chat-templated text, byte for byte
        assert pushes[f"{dev}/prompt_{k}.txt"]["src_bytes"] == p["text"]
    runs = [c["argv"][-1] for c in calls if "shell" in c["argv"] and "./llama_main " in c["argv"][-1]]
    assert len(runs) == len(RUN_FILES)
    for k, cmd in enumerate(runs):
        flags = cmd.split("./llama_main", 1)[1].split()
        pairs = dict(zip(flags, flags[1:]))
        assert pairs["--model_path"] == "model.pte" and pairs["--tokenizer_path"] == "tokenizer.json"
        assert pairs["--prompt_file"] == f"prompt_{k}.txt" and pairs["--temperature"] == "0"
        assert pairs["--max_new_tokens"] == str(NEW_TOKENS) and pairs["--seq_len"] == str(CACHE - 1)
        assert pairs["--cpu_threads"] == str(THREADS) and "--warmup" in flags and "--ignore_eos" in flags
    assert all(c["argv"][:2] == ["-s", SERIAL] for c in calls if c["argv"] != ["devices"])


def test_a_prompt_the_runner_counts_differently_is_flagged(tmp_path, monkeypatch):
    """The runner re-encodes the prompt text itself: a length other than the build's ids is said in the notes."""
    from edgekd.targets.mobile.lm_adb import adb_profile_lm

    build = _write_build(tmp_path, [p[:-1] for p in _prompts()])  # one token shorter than the runs report
    _fake_adb(tmp_path, monkeypatch)
    _runner(tmp_path, monkeypatch)
    r = adb_profile_lm(build / "convert" / "mobile", SERIAL)
    assert r["prompt_tokens_expected"] == [len(p) - 1 for p in _prompts()]
    assert any("prompts [0, 1, 2]" in n and "another prompt length" in n for n in r["notes"])


def test_parse_lm_benchmark_output_splits_runs_and_needs_a_report():
    from edgekd.targets.mobile.lm_adb import parse_lm_benchmark_output

    text = "=== edgekd: device X ===\n" + "".join(f"=== edgekd: prompt {k} run 0 ===\n{f.read_text()}"
                                                  for k, f in enumerate(RUN_FILES))
    parsed = parse_lm_benchmark_output(text)
    assert [x["prompt"] for x in parsed["runs"]] == [0, 1, 2] and parsed["device_model"] == "X"
    with pytest.raises(StageError, match="no PyTorchObserver"):
        parse_lm_benchmark_output("=== edgekd: prompt 0 run 0 ===\nI 00:00:00.1 executorch:main.cpp:1] hi\n")


def test_unavailable_phone_or_runner_is_exit_3(build, tmp_path, monkeypatch):
    from edgekd.targets.mobile.lm_adb import adb_profile_lm

    bundle = build / "convert" / "mobile"
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    _runner(tmp_path, monkeypatch)
    with pytest.raises(TargetUnavailable) as e:
        adb_profile_lm(bundle, SERIAL)
    assert e.value.exit_code == 3 and "adb is not on PATH" in str(e.value) and e.value.hint
    state = _fake_adb(tmp_path, monkeypatch)
    with pytest.raises(TargetUnavailable) as e:
        adb_profile_lm(bundle, "SER123")
    assert e.value.exit_code == 3 and "attached: PHONE1" in e.value.hint  # the unauthorized one is not usable
    monkeypatch.delenv("LLM_RUNNER")
    with pytest.raises(TargetUnavailable) as e:
        adb_profile_lm(bundle, SERIAL)
    assert e.value.exit_code == 3 and "LLM_RUNNER" in str(e.value) and "llama_main" in e.value.hint
    monkeypatch.setenv("LLM_RUNNER", str(tmp_path / "missing" / "llama_main"))
    with pytest.raises(TargetUnavailable, match="not a file"):
        adb_profile_lm(bundle, SERIAL)
    assert all(c["argv"] == ["devices"] for c in _calls(state))  # nothing pushed or run


def test_a_failing_runner_is_exit_4_with_its_last_line(build, tmp_path, monkeypatch):
    from edgekd.targets.mobile.lm_adb import adb_profile_lm

    _fake_adb(tmp_path, monkeypatch)
    _runner(tmp_path, monkeypatch)
    monkeypatch.setenv("FAKE_LLAMA_FAIL", "1")
    with pytest.raises(StageError) as e:
        adb_profile_lm(build / "convert" / "mobile", SERIAL)
    assert e.value.exit_code == 4 and "Failed to create llama runner" in str(e.value)
    assert "prompt 0 run 0" in str(e.value) and "benchmark_android.sh" in e.value.hint


def test_an_altered_bundle_is_refused_before_anything_runs(build, tmp_path, monkeypatch):
    from edgekd.targets.mobile.lm_adb import adb_profile_lm

    bundle = build / "convert" / "mobile"
    state = _fake_adb(tmp_path, monkeypatch)
    _runner(tmp_path, monkeypatch)
    script = bundle / "benchmark_android.sh"
    original = script.read_text()
    script.write_text(original.replace("--temperature 0", "--temperature 0.8"))
    with pytest.raises(StageError, match="benchmark_android.sh does not match its manifest"):
        adb_profile_lm(bundle, SERIAL)
    script.write_text(original)
    (bundle / "model.pte").write_bytes(b"another program")
    with pytest.raises(StageError, match="model.pte does not match"):
        adb_profile_lm(bundle, SERIAL)
    assert all(c["argv"] == ["devices"] for c in _calls(state))  # refused before the script ran


def test_edgekd_profile_adb_on_a_language_model_build(build, tmp_path, monkeypatch):
    """The CLI dispatches on the bundle's manifest kind: JSON to stdout, exit 0; exit 3 without a runner."""
    _fake_adb(tmp_path, monkeypatch)
    runner = _runner(tmp_path, monkeypatch)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}

    def cli(env):
        return subprocess.run([sys.executable, "-m", "edgekd", "profile", str(build), "--adb", SERIAL],
                              capture_output=True, text=True, env=env, timeout=300)

    r = cli(env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["measured_on"] == "device" and out["runtime"].startswith("executorch llama_main")
    assert out["tokens_per_s"] > 0 and len(out["per_prompt"]) == len(RUN_FILES)
    env.pop("LLM_RUNNER")
    r = cli(env)
    assert r.returncode == 3 and "LLM_RUNNER" in r.stderr and runner.exists()
