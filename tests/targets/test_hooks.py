"""The target registry asks each family whether a card is its own (exactly one must say yes), and
task code reaches a family only through its hooks: no family-name comparisons outside targets/."""
from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest

from edgekd.cards import load_target, shipped
from edgekd.errors import ConfigError
from edgekd.targets import FAMILY_MODULES, families, family, resolve
from edgekd.targets.base import host_device

ROOT = Path(__file__).resolve().parents[2]


def test_each_shipped_card_is_claimed_by_exactly_one_family():
    for name in shipped("targets"):
        tc = load_target(name)
        assert [f.name for f in families().values() if f.matches(tc)] == [family(tc).name]


@pytest.mark.parametrize("runtime, providers, expected", [
    ("onnxruntime", ["CPUExecutionProvider"], "cpu"),
    ("onnxruntime", ["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda"),
    ("torch", ["CPUExecutionProvider"], "cuda"),
    ("executorch", ["CPUExecutionProvider"], "mobile"),
    ("ascend", ["CPUExecutionProvider"], "ascend"),
])
def test_family_follows_runtime_and_providers(runtime, providers, expected):
    tc = load_target("cpu").model_copy(update={"runtime": runtime, "providers": providers})
    assert family(tc).name == expected


def test_no_family_or_two_families_is_a_user_error(monkeypatch):
    import edgekd.targets as reg

    tc = load_target("cpu").model_copy(update={"runtime": "tpu"})  # past the card's Literal: a registry gap
    with pytest.raises(ConfigError) as e:
        family(tc)
    assert e.value.exit_code == 2 and "no target family takes runtime 'tpu'" in e.value.message
    assert all(f"{n}:" in e.value.hint for n in FAMILY_MODULES)
    fams = families()
    greedy = {**fams, "cuda": replace(fams["cuda"], matches=lambda t: True)}  # overlaps cpu's cards
    monkeypatch.setattr(reg, "families", lambda: greedy)
    with pytest.raises(ConfigError, match="claimed by several families \\(cpu, cuda\\)"):
        family(load_target("cpu"))


def test_where_profiled_hooks():
    host = host_device()
    cpu, mobile, ascend = load_target("cpu"), load_target("mobile"), load_target("ascend-310p")
    on, name, dev = family(cpu).where_profiled(cpu)
    assert (on, name) == ("device", host.name) and dev.active_power_watts == cpu.device.active_power_watts
    for tc in (mobile, ascend):
        on, name, dev = family(tc).where_profiled(tc)
        assert (on, name, dev.name) == ("host", host.name, host.name)
        assert dev.active_power_watts != tc.device.active_power_watts  # never host time x device power
        assert family(tc).host_cpu_profiled(tc)[0] == "host"
    cuda = load_target("cuda")
    assert family(cuda).where_profiled(cuda)[0] == "device" and family(cuda).host_cpu_profiled(cuda)[0] == "host"
    no_cuda_provider = cuda.model_copy(update={"runtime": "torch", "providers": ["CPUExecutionProvider"]})
    assert family(no_cuda_provider).where_profiled(no_cuda_provider)[0] == "host"


def test_teacher_on_device_hook_loads_nothing_without_the_device(monkeypatch):
    """cpu and mobile have no accelerator hook; ascend without torch_npu returns None before
    loading the teacher (the loader is lazy)."""
    from edgekd.runtimes import torch_device

    monkeypatch.setattr(torch_device, "torch_npu_status", lambda: (False, "no NPU"))

    def loader():
        raise AssertionError("the teacher must not be loaded when the device is absent")

    for name in ("cpu", "mobile", "ascend-310p"):
        tc = load_target(name)
        assert family(tc).profile_teacher_on_device(loader, None, tc) is None


def test_teacher_on_device_hook_times_the_teacher_with_the_family_sampler(monkeypatch):
    """The ascend hook with torch_npu present: the shared row builder runs the teacher with an
    npu-smi sampler and subtracts the board's idle power (run here on torch's cpu device)."""
    import torch

    from edgekd.runtimes import torch_device
    from edgekd.targets.ascend import device as ascend_device

    class Sampler:
        method = "npu-smi"

        def __init__(self, device_id):
            self.device_id = device_id

        def available(self):
            return True

        def idle_watts(self, seconds):
            return 10.0

        def start(self):
            pass

        def stop(self):
            return 50.0  # joules over the window

    real = torch_device.profile_torch_device
    monkeypatch.setattr(torch_device, "torch_npu_status", lambda: (True, "fake NPU"))
    monkeypatch.setattr("edgekd.profile.measure.energy.NpuSmiSampler", Sampler)
    monkeypatch.setattr(torch_device, "profile_torch_device",
                        lambda model, x, device, **kw: real(model, x, "cpu", **kw) | {"device_name": "fake 310P3"})
    tc = load_target("ascend-310p")
    key, row = ascend_device.teacher_on_npu(lambda: torch.nn.Linear(4, 2), torch.randn(2, 4).numpy(), tc)
    e = row["energy"]
    assert key == "teacher/fp32-torch-npu" and row["measured_on"] == "device" and row["device"] == "fake 310P3"
    assert e["idle_watts"] == 10.0 and e["joules_above_idle"] == pytest.approx(50.0 - 10.0 * e["window_s"])
    assert e["joules_per_inference"] == pytest.approx(e["joules_above_idle"] / max(tc.profile.min_runs, 100))


def test_family_names_as_targets_go_through_the_families_resolve_hook(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert resolve("cpu") == ("cpu", {}, None)  # cpu has no resolve hook: the card of that name
    assert resolve("cuda")[0] == "cuda" and resolve("mobile")[0] == "mobile" and resolve("ascend")[0] == "ascend-310p"


def _family_name_comparisons(source: str, where: str) -> list[str]:
    names = set(FAMILY_MODULES)
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        consts = {e.value for c in operands for e in ([c] if isinstance(c, ast.Constant) else getattr(c, "elts", []))
                  if isinstance(e, ast.Constant)}
        text = ast.unparse(node)
        if consts & names and "family" in text:
            found.append(f"{where}:{node.lineno}: {text}")
    return found


def test_no_family_name_comparison_outside_targets():
    bad = [hit for p in sorted((ROOT / "edgekd").rglob("*.py")) if "targets" not in p.relative_to(ROOT).parts[:2]
           for hit in _family_name_comparisons(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert bad == []


def test_the_comparison_finder_sees_them():
    src = ("def f(t):\n    return family_name(t) == 'cuda' or family(t).name in ('mobile', 'x') or t.kind == 'cpu'\n")
    hits = _family_name_comparisons(src, "probe.py")
    assert len(hits) == 2 and "family_name(t) == 'cuda'" in hits[0] and "family(t).name in" in hits[1]
