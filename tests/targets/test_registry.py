"""Target cards, per-host availability probes, and torch device profiling (cpu here; cuda/npu skip)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch

from edgekd.config import TargetConfig
from edgekd.errors import StageError, TargetUnavailable, UserError
from edgekd.targets.ascend.bundle import KNOWN_SOC_VERSIONS, check_target
from edgekd.runtimes import torch_device
from edgekd.targets import availability as target_availability, build_ready

ROOT = Path(__file__).resolve().parents[2]
MY_CARDS = ("ascend-310p", "ascend-910b", "mobile", "cuda")
HAS_TORCH_NPU = importlib.util.find_spec("torch_npu") is not None


def card(name: str) -> TargetConfig:
    return TargetConfig.model_validate(tomllib.loads((ROOT / "targets" / f"{name}.toml").read_text()))


@pytest.fixture(autouse=True)
def _fresh_npu_probe():
    torch_device.torch_npu_status.cache_clear()
    yield
    torch_device.torch_npu_status.cache_clear()


# --------------------------------------------------------------------------- cards


@pytest.mark.parametrize("name", MY_CARDS)
def test_card_validates_and_labels_its_device_figures(name):
    t = card(name)
    assert t.name == name
    assert "spec" in t.description.lower() and "spec" in t.device.name.lower()


@pytest.mark.parametrize("name, soc", [("ascend-310p", "Ascend310P3"), ("ascend-910b", "Ascend910B3")])
def test_ascend_cards_fit_atc(name, soc):
    t = card(name)
    assert t.runtime == "ascend" and check_target(t).soc_version == soc and soc in KNOWN_SOC_VERSIONS
    assert (t.onnx.opset, t.onnx.opset_min, t.onnx.opset_max) == (13, 11, 15)
    assert t.onnx.dynamic_batch is False and t.onnx.static_batch == 1
    assert 1e-4 < t.parity.atol <= 1e-2


def test_mobile_and_cuda_cards():
    m, c = card("mobile"), card("cuda")
    assert m.runtime == "executorch" and m.formats == ["pte", "ort"]
    assert c.runtime == "onnxruntime" and c.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]


# --------------------------------------------------------------------------- availability


def _rows(name: str) -> dict[str, tuple[bool, str]]:
    return {cap: (ok, reason) for cap, ok, reason in target_availability(card(name))}


@pytest.mark.skipif(HAS_TORCH_NPU, reason="torch_npu is installed on this host")
def test_ascend_without_torch_npu_reports_instead_of_crashing():
    rows = _rows("ascend-310p")
    assert rows["bundle (no CANN needed)"][0] is True
    ok, reason = rows["teacher on the NPU (torch_npu)"]
    assert ok is False and "install the 'ascend' extra" in reason
    assert build_ready(card("ascend-310p")) == (True, rows["bundle (no CANN needed)"][1])
    assert "torch_npu" not in sys.modules  # the probe never imported it here


def _pretend_torch_npu_is_installed(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "torch_npu" else real_find_spec(name, *a))


@pytest.mark.skipif(HAS_TORCH_NPU, reason="torch_npu is installed on this host")
def test_torch_npu_installed_but_broken_is_reported(monkeypatch):
    """A torch_npu that is found but cannot import (here: the probe process cannot find it, as
    when CANN is missing) must come back as unavailable with the import error, not crash."""
    _pretend_torch_npu_is_installed(monkeypatch)
    ok, reason = torch_device.torch_npu_status()
    assert ok is False and "does not import" in reason and "torch_npu" in reason


@pytest.mark.skipif(HAS_TORCH_NPU, reason="torch_npu is installed on this host")
def test_torch_npu_probe_timeout_is_reported(monkeypatch):
    _pretend_torch_npu_is_installed(monkeypatch)

    def hang(*a, **k):
        raise subprocess.TimeoutExpired(cmd="python", timeout=k.get("timeout", 1))

    monkeypatch.setattr(torch_device.subprocess, "run", hang)
    ok, reason = torch_device.torch_npu_status()
    assert ok is False and "timed out" in reason


def test_atc_on_path_is_detected(tmp_path, monkeypatch):
    fake = tmp_path / "atc"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    ok, reason = _rows("ascend-910b")["atc conversion"]
    assert ok is True and reason == str(fake)


def test_cuda_target_availability_matches_onnxruntime():
    import onnxruntime as ort

    rows = _rows("cuda")
    has_cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
    assert rows["onnxruntime CUDAExecutionProvider"][0] is has_cuda_ep
    assert rows["torch CUDA (teacher on GPU)"][0] is torch.cuda.is_available()
    assert "NVML energy counters" in rows
    ready, reason = build_ready(card("cuda"))
    assert ready is has_cuda_ep
    if not has_cuda_ep:
        assert "CUDAExecutionProvider" in reason


def test_cpu_and_mobile_availability():
    cpu = TargetConfig.model_validate(tomllib.loads((ROOT / "targets" / "cpu.toml").read_text()))
    assert build_ready(cpu)[0] is True
    rows = _rows("mobile")
    assert rows["executorch .pte"][0] is (importlib.util.find_spec("executorch") is not None)
    assert rows["ORT format conversion"][0] is True  # onnxruntime.tools ships with onnxruntime
    assert build_ready(card("mobile"))[0] is True


def test_probes_do_not_import_heavy_sdks():
    code = ("import sys, tomllib; from edgekd.config import TargetConfig; from edgekd.targets import availability as target_availability;"
            "import edgekd.targets.ascend.bundle, edgekd.runtimes.torch_device, edgekd.targets.ascend.device, edgekd.runtimes.openvino_rt;"
            "[target_availability(TargetConfig.model_validate(tomllib.load(open(f'targets/{n}.toml','rb')))) "
            "for n in ('mobile', 'ascend-310p')];"
            "bad = [m for m in ('onnxruntime', 'openvino', 'executorch', 'torch_npu', 'torch') if m in sys.modules];"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# --------------------------------------------------------------------------- torch device profiling


class _Sleepy(torch.nn.Module):
    """A linear layer that also sleeps, so latency has a known floor."""

    def __init__(self, ms: float) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)
        self.ms = ms

    def forward(self, x):
        time.sleep(self.ms / 1e3)
        return self.fc(x)


class _ConstantPower:
    method = "test-constant-10W"

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def stop(self):
        return [(0.0, 10.0), (time.perf_counter() - self.t0, 10.0)]


def test_profile_cpu_measures_latency_memory_and_energy():
    model = _Sleepy(2.0).train()
    res = torch_device.profile_torch_device(model, torch.randn(2, 8), "cpu", runs=12, warmup=2, sampler=_ConstantPower())
    lat = res["latency_ms"]
    assert lat["n"] == 12 and 2.0 <= lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]
    assert lat["p50"] < 200  # a 2 ms sleep is not measured as seconds
    assert res["peak_memory_bytes"] > 10 * 2**20 and "RSS" in res["peak_memory_method"]
    assert res["throughput_per_s"] == pytest.approx(2 * 1e3 / lat["mean"], rel=0.3)
    e = res["energy"]
    # 10 W over the timed window; the sampler's own window is a hair longer than the loop's
    assert e["method"] == "test-constant-10W"
    assert e["joules_total"] == pytest.approx(10 * e["window_s"], rel=0.05)
    assert e["joules_per_inference"] == pytest.approx(e["joules_total"] / 12)
    assert model.training is True and next(model.parameters()).device.type == "cpu"  # state restored


def test_profile_mixed_precision_runs_the_model_in_half_precision():
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    res = torch_device.profile_torch_device(model, torch.randn(4, 16), "cpu", runs=3, warmup=1, precision="bf16")
    assert res["precision"] == "bf16" and set(seen) == {torch.bfloat16}
    seen.clear()
    torch_device.profile_torch_device(model, torch.randn(4, 16), "cpu", runs=2, warmup=0)
    assert set(seen) == {torch.float32}
    with pytest.raises(UserError, match="unknown precision"):
        torch_device.profile_torch_device(model, torch.randn(4, 16), "cpu", runs=1, warmup=0, precision="int3")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this host")
def test_profile_cuda_fp16_and_bf16():
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10))
    for precision in ("fp16", "bf16"):
        res = torch_device.profile_torch_device(model, torch.randn(64, 256), "cuda", runs=20, warmup=5, precision=precision)
        assert res["precision"] == precision and res["latency_ms"]["p50"] > 0


def test_profile_sampler_formats_and_errors():
    class Joules:
        def start(self): ...

        def stop(self): return 3.0

    class Junk:
        def start(self): ...

        def stop(self): return "n/a"

    res = torch_device.profile_torch_device(torch.nn.Linear(4, 2), torch.randn(1, 4), "cpu", runs=3, warmup=0, sampler=Joules())
    assert res["energy"]["joules_per_inference"] == pytest.approx(1.0)
    with pytest.raises(StageError, match="power sampler"):
        torch_device.profile_torch_device(torch.nn.Linear(4, 2), torch.randn(1, 4), "cpu", runs=2, warmup=0, sampler=Junk())


def test_profile_rejects_bad_device_and_missing_npu():
    with pytest.raises(UserError, match="unknown torch device"):
        torch_device.profile_torch_device(torch.nn.Linear(4, 2), torch.randn(1, 4), "tpu", runs=1, warmup=0)
    with pytest.raises(UserError):
        torch_device.profile_torch_device(torch.nn.Linear(4, 2), torch.randn(1, 4), "cpu", runs=0, warmup=0)
    if not HAS_TORCH_NPU:
        with pytest.raises(TargetUnavailable) as e:
            torch_device.profile_torch_device(torch.nn.Linear(4, 2), torch.randn(1, 4), "npu", runs=1, warmup=0)
        assert e.value.exit_code == 3 and "torch_npu" in e.value.message
    if not torch.cuda.is_available():
        with pytest.raises(TargetUnavailable):
            torch_device.profile_torch_device(torch.nn.Linear(4, 2), torch.randn(1, 4), "cuda", runs=1, warmup=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this host")
def test_profile_cuda():
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10))
    res = torch_device.profile_torch_device(model, torch.randn(64, 256), "cuda", runs=20, warmup=5)
    assert res["latency_ms"]["n"] == 20 and res["latency_ms"]["p50"] > 0
    # weights (~1.1 MB) and activations live on the GPU
    assert res["peak_memory_bytes"] > 1_000_000 and res["peak_memory_method"] == "torch.cuda.max_memory_allocated"
    assert next(model.parameters()).device.type == "cpu"


def test_profile_with_the_npu_smi_sampler_interface():
    """edgekd.profile.measure.energy's npu-smi sampler plugs in (fed canned npu-smi text: 15 W)."""
    energy = pytest.importorskip("edgekd.profile.measure.energy")
    sampler = energy.NpuSmiSampler(reader=lambda: "NPU ID : 0\nPower Dissipation(W) : 15.0\n", interval_s=0.005)
    res = torch_device.profile_torch_device(_Sleepy(3.0), torch.randn(1, 8), "cpu", runs=10, warmup=1, sampler=sampler)
    e = res["energy"]
    assert e["method"] == "npu-smi"
    assert e["joules_total"] == pytest.approx(15.0 * e["window_s"], rel=0.1)


# --------------------------------------------------------------------------- registry and pre-flight


def test_every_shipped_card_has_a_family_and_passes_its_checks():
    from edgekd.targets import check, family, family_name

    names = sorted(p.stem for p in (ROOT / "targets").glob("*.toml"))
    fams = {n: family_name(card(n)) for n in names}
    assert fams == {"ascend-310p": "ascend", "ascend-910b": "ascend", "cpu": "cpu", "cuda": "cuda", "mobile": "mobile"}
    for n in names:
        check(card(n))  # shipped cards are valid
        assert family(card(n)).name == fams[n]


@pytest.mark.parametrize("change, message", [
    ({"ascend": {"soc_version": "Bogus"}}, "unknown Ascend soc_version 'Bogus'"),
    ({"ascend": {"precision_mode": "fp8_please"}}, "unknown ATC precision_mode"),
    ({"formats": ["onnx", "pte"]}, "cannot produce format(s) pte"),
    ({"candidates": ["fp32", "int3-magic"]}, "int3-magic"),
])
def test_preflight_refuses_bad_ascend_cards(change, message):
    from edgekd.errors import EdgekdError
    from edgekd.targets import check

    raw = tomllib.loads((ROOT / "targets" / "ascend-310p.toml").read_text())
    for k, v in change.items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) else v
    with pytest.raises(EdgekdError) as e:
        check(TargetConfig.model_validate(raw))
    assert e.value.exit_code == 2 and message in e.value.message


def test_preflight_refuses_unknown_provider():
    from edgekd.errors import EdgekdError
    from edgekd.targets import check

    raw = tomllib.loads((ROOT / "targets" / "cpu.toml").read_text())
    raw["providers"] = ["CPUExecutonProvider"]
    with pytest.raises(EdgekdError, match="unknown onnxruntime provider") as e:
        check(TargetConfig.model_validate(raw))
    assert "CPUExecutionProvider" in e.value.hint


def test_a_family_refuses_a_task_it_does_not_ship(monkeypatch):
    """Every shipped family builds both tasks now; a family that does not ship a task (its `tasks`) is refused
    at pre-flight, exit 2, naming the families that do."""
    import dataclasses

    import edgekd.targets as targets
    from edgekd.cards import load_target
    from edgekd.errors import ConfigError

    mobile = load_target("mobile")
    for name in targets.FAMILY_MODULES:
        assert {"classification", "text-generation"} <= targets._family_of(name).tasks, name
    real = targets.family(mobile)
    narrow = dataclasses.replace(real, tasks=frozenset({"classification"}), tasks_hint="its converter takes classifiers")
    monkeypatch.setattr(targets, "family", lambda target: narrow)
    targets.check_task(mobile, "classification")
    with pytest.raises(ConfigError, match="does not build text-generation recipes: its converter takes classifiers") as e:
        targets.check_task(mobile, "text-generation")
    assert e.value.exit_code == 2 and "--target cpu" in e.value.hint
