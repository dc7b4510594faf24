"""Every figure says where it was measured: the profile stage's machine per target family, the
shipped-artifact rows of mobile and Ascend, and a check over all shipped targets that no row's
energy is host time x the target device's power."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from edgekd.cards import load_target, shipped
from edgekd.report.build import compare_same_kind
from edgekd.targets import family_name, resolve
from edgekd.targets.cpu import host_device
from edgekd.targets.mobile import artifact_rows, select_artifact
from edgekd.tasks.classification import where_profiled

HOST_ONLY = [n for n in shipped("targets") if family_name(load_target(n)) in ("mobile", "ascend")]


@pytest.mark.parametrize("name", shipped("targets"))
def test_profile_rows_use_the_power_and_peak_of_the_machine_that_ran_them(name):
    tc = load_target(name)
    if family_name(tc) == "cuda":
        pytest.skip("cuda profiles on the GPU (onnxruntime CUDA provider): its own card figures apply")
    measured_on, ran_on, dev = where_profiled(SimpleNamespace(target=tc))
    host = host_device()
    assert ran_on == host.name and dev.name == host.name
    assert dev.active_power_watts == load_target("cpu").device.active_power_watts
    assert dev.peak_gflops == load_target("cpu").device.peak_gflops
    if name in HOST_ONLY:
        assert measured_on == "host"
        # a host figure must never be multiplied by the target's power, nor judged against its peak
        assert dev.active_power_watts != tc.device.active_power_watts and dev.peak_gflops != tc.device.peak_gflops
    else:
        assert measured_on == "device"


@pytest.mark.parametrize("name", shipped("targets"))
def test_text_generation_rows_use_the_power_of_the_machine_that_ran_them(name, tmp_path, monkeypatch):
    """The language-model benchmark runs on this host's CPU for every target but cuda (torch and
    onnxruntime's CPU provider): the worker's energy estimate takes this host's power, the rows say
    `host` (`device` on the cpu target, where the host is the device), never host time x the
    target card's power. On cuda it runs on the GPU, with the GPU's figures. Drives stage_profile with the benchmark replaced by the worker's own
    energy arithmetic on a fixed CPU time."""
    from edgekd.config import GenerateConfig
    from edgekd.pipeline import StageResult
    from edgekd.profile.measure.energy import measured_or_estimate
    from edgekd.tasks.text_generation import hooks as tg

    tc = load_target(name)
    host = host_device()
    cpu_s = 0.004  # CPU seconds per generated token
    seen = []

    def fake_bench(spec, logs, tag):
        seen.append(spec)
        e = measured_or_estimate(cpu_s, spec.settings.profile_device)  # what edgekd.llm.bench computes
        e["joules_per_token"] = e.pop("joules_per_inference")
        lat = {"p50": 5.0, "mean": 5.0}
        return {"decode_ms_per_token": lat, "ttft_ms": lat, "tokens_per_s": 200.0, "energy": e,
                "cpu_seconds_per_token": cpu_s}

    monkeypatch.setattr("edgekd.profile.runner.run_bench", fake_bench)
    monkeypatch.setattr(tg, "_examples", lambda ctx, inputs, split: (None, None))
    monkeypatch.setattr(tg, "read_answers", lambda res: {"test": [{"prompt": "hi"}] * 4})
    monkeypatch.setattr(tg, "_teacher_info", lambda res: {"folder": str(tmp_path)})
    monkeypatch.setattr("edgekd.llm.generate.chat_ids", lambda tok, prompt: [1, 2, 3])
    quant = StageResult("quantize", "k", tmp_path, {}, {"candidates": [
        {"variant": "fp32", "path": "fp32/model.onnx", "error": None},
        {"variant": "int8-dynamic", "path": "int8/model.onnx", "error": None}]})
    ctx = SimpleNamespace(target=tc, recipe=SimpleNamespace(generate=GenerateConfig()), progress=None)
    wd = tmp_path / "wd"
    (wd / "logs").mkdir(parents=True)  # the shared profile stage makes it for the workers
    rows, _, _ = tg.profile_models({"quantize": quant, "teacher": None, "generate": None}, ctx, wd, lambda d, n: None)
    assert set(rows) == {"teacher/fp32-torch", "student/fp32", "student/int8-dynamic"}
    on_cpu = family_name(tc) == "cpu"
    if family_name(tc) == "cuda":
        # the cuda card runs its language models where the target runs them: onnxruntime's CUDA provider (a
        # named provider is required: no silent CPU run) and the teacher on the GPU, labelled device, the GPU's
        # figures (a cuda build on a host without a GPU stops at pre-flight, exit 3)
        assert all("CUDAExecutionProvider" in s.settings.providers and s.settings.torch_device == "cuda" for s in seen)
        assert all(r["measured_on"] == "device" and s.settings.profile_device == tc.device
                   for r, s in zip(rows.values(), seen))
        return
    assert all(s.settings.providers == ["CPUExecutionProvider"] and s.settings.torch_device == "cpu" for s in seen)
    for key, r in rows.items():
        j = r["energy"]["joules_per_inference"]
        assert r["measured_on"] == ("device" if on_cpu else "host") and r["device"] == host.name, key
        assert r["energy"]["method"] == "estimate-cpu-time-x-power"
        assert j == pytest.approx(cpu_s * host.active_power_watts), key  # host CPU time x host power
        if not on_cpu:
            assert j != pytest.approx(cpu_s * tc.device.active_power_watts), key
            assert tc.device.name not in r["energy"]["assumptions"], key
    assert seen and all(s.settings.profile_device.name == host.name for s in seen)


def _meta() -> dict:
    def art(fmt, prec, rt, p50, est_ms, acc):
        return {"format": fmt, "precision": prec, "runtime": rt, "size_bytes": 1000,
                "latency_ms": {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.2, "mean": p50, "n": 50, "host": True,
                               "cpu_seconds_per_inference": p50 / 1e3 * 0.9},
                "accuracy": {"value": acc, "runtime": rt}, "val_accuracy": {"value": acc, "runtime": rt},
                "estimate": {"method": "estimate-roofline", "device": "Cortex-A78", "latency_ms": est_ms,
                             "energy": {"joules_per_inference": est_ms / 1e3 * 1.8, "method": "estimate-roofline"}}}
    return {"artifacts": {"model_fp32.pte": art("pte", "fp32", "executorch", 0.30, 0.05, 0.90),
                          "model_int8.pte": art("pte", "int8", "executorch", 0.20, 0.04, 0.897),
                          "model.ort": art("ort", "fp32", "onnxruntime-mobile", 0.25, 0.05, 0.90)}}


def test_mobile_rows_label_host_and_estimate_and_never_mix_them():
    host = host_device()
    card = load_target("mobile").device
    rows = artifact_rows(_meta(), 1234, host)
    assert {r["variant"] for r in rows} == {"pte-fp32", "pte-int8", "ort-fp32", "pte-fp32-estimate",
                                            "pte-int8-estimate", "ort-fp32-estimate"}
    for r in rows:
        p50_s = r["latency_ms"]["p50"] / 1e3
        j = r["energy"]["joules_per_inference"]
        assert j != pytest.approx(p50_s * card.active_power_watts) or r["measured_on"] == "estimate"
        if r["measured_on"] == "host":
            # process CPU seconds x this host's power per core: the profile stage's host estimate
            assert r["device"] == host.name and j == pytest.approx(0.9 * p50_s * host.active_power_watts)
            assert r["energy"]["method"] == "estimate-cpu-time-x-power"
        else:
            assert r["measured_on"] == "estimate" and r["energy"]["method"] == "estimate-roofline"
            assert j == pytest.approx(p50_s * card.active_power_watts)  # card time x card power
    choice = select_artifact(rows, 0.90, budget_points=0.5)
    assert choice["selected"] == "student/pte-int8"  # fastest on the host, 0.3 points below FP32 on validation
    assert select_artifact(rows, 0.90, budget_points=0.1)["selected"] == "student/ort-fp32"
    # the choice reads validation accuracy only: test accuracies that would flip it change nothing
    poisoned = [{**r, "accuracy": 0.0 if r["variant"] == "pte-int8" else r["accuracy"]} for r in rows]
    assert select_artifact(poisoned, 0.90, budget_points=0.5)["selected"] == "student/pte-int8"


def test_comparison_pairs_rows_measured_in_the_same_place():
    def row(role, variant, on, p50, j, method):
        return {"role": role, "variant": variant, "measured_on": on, "device": on, "latency_ms": {"p50": p50},
                "size_bytes": 10, "accuracy": 0.9, "params": 5, "energy": {"joules_per_inference": j, "method": method}}
    models = [row("teacher", "fp32-torch", "host", 2.0, 0.02, "estimate-cpu-time-x-power"),
              row("student", "fp32", "host", 0.5, 0.004, "estimate-cpu-time-x-power"),
              row("student", "ascend-om", "device", 0.1, 0.001, "npu-smi")]
    c = compare_same_kind(models, "student/ascend-om", "student/fp32")
    assert c["basis"] == "host" and c["student"] == "student/fp32" and c["speedup_p50"] == pytest.approx(4.0)
    assert "no teacher figure device" in c["note"]
    models.append(row("teacher", "fp32-torch-npu", "device", 0.4, 0.003, "npu-smi"))
    c = compare_same_kind(models, "student/ascend-om", "student/fp32")
    assert c["basis"] == "device" and c["teacher"] == "teacher/fp32-torch-npu" and c["speedup_p50"] == pytest.approx(4.0)
    assert c["energy_ratio"] == pytest.approx(3.0)
    models[-1]["energy"]["method"] = "estimate-x"  # measured vs estimate: no energy ratio
    assert compare_same_kind(models, "student/ascend-om", "student/fp32")["energy_ratio"] is None
    models[2]["energy"]["method"] = "estimate-y"  # two estimates of different kinds: no ratio either
    assert compare_same_kind(models, "student/ascend-om", "student/fp32")["energy_ratio"] is None


def test_family_names_resolve_without_devices(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    card, over, line = resolve("ascend")
    assert card == "ascend-310p" and over == {} and "no Ascend NPU" in line
    assert resolve("cuda")[0] == "cuda" and "no NVIDIA GPU" in resolve("cuda")[2]
    assert resolve("mobile")[0] == "mobile" and "no phone" in resolve("mobile")[2]
    assert resolve("ascend-910b") == ("ascend-910b", {}, None)


def test_ascend_family_resolves_to_the_chip_npu_smi_reports(tmp_path, monkeypatch):
    from tests import ascend_fakes

    ascend_fakes.install(tmp_path / "bin", monkeypatch)
    card, over, line = resolve("ascend")
    assert card == "ascend-310p" and over == {"target.ascend.soc_version": "Ascend310P3"} and "310P3" in line
    tc = load_target(card, over)
    assert tc.ascend.soc_version == "Ascend310P3"
