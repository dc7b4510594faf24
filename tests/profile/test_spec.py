"""The typed profile specs: defaults, refusal of unknown or mistyped fields (in process and in the
worker subprocess), and the settings a target card gives."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgekd.cards import load_target
from edgekd.config import ProfileConfig
from edgekd.errors import StageError, UserError
from edgekd.profile.runner import run_worker
from edgekd.profile.spec import GenerationSettings, GenerationSpec, ProfileSettings, ProfileSpec, load_spec


def test_defaults_are_the_target_cards_defaults():
    s, card = ProfileSettings(), ProfileConfig()
    for k in ("threads", "warmup_runs", "warmup_seconds", "min_runs", "min_seconds", "max_seconds",
              "batch_sweep", "throughput_batch"):
        assert getattr(s, k) == getattr(card, k), k
    assert s.providers == ["CPUExecutionProvider"] and s.energy == "auto" and s.seed == 0
    assert s.per_batch_seconds() == pytest.approx(0.6) and ProfileSettings(min_seconds=0.5).per_batch_seconds() == 0.2
    assert ProfileSettings(min_seconds=20).per_batch_seconds() == 2.0
    assert ProfileSettings(throughput_seconds=0.05).per_batch_seconds() == 0.05
    assert ProfileSettings(batch_sweep=[8, 1, 8], throughput_batch=4).sweep() == [1, 4, 8]


def test_unknown_or_mistyped_fields_are_refused_naming_the_field():
    with pytest.raises(UserError, match="min_run") as ei:
        load_spec(ProfileSpec, {"kind": "onnx", "path": "m.onnx", "min_run": 5})  # typo of min_runs
    assert "min_runs" in (ei.value.hint or "")
    with pytest.raises(UserError, match="threads"):
        load_spec(ProfileSpec, {"kind": "onnx", "path": "m.onnx", "threads": 0})
    with pytest.raises(UserError, match="kind"):
        load_spec(ProfileSpec, {"kind": "tflite", "path": "m.tflite"})
    with pytest.raises(UserError, match="energy"):
        load_spec(ProfileSpec, {"kind": "onnx", "path": "m.onnx", "energy": "watts"})
    with pytest.raises(UserError, match="prompt_ids"):
        dev = load_target("cpu").device.model_dump()
        load_spec(GenerationSpec, {"kind": "onnx", "path": "m.onnx", "prompt_ids": [], "settings": {
            "device": dev, "profiled_on": "device", "profile_device": dev}})


def test_spec_round_trips_through_json():
    t = load_target("cpu")
    spec = ProfileSpec(**ProfileSettings.from_card(t, t.device, seed=7).model_dump(), kind="torch", path="s.pt",
                       input_shape=[1, 64], model_ref={"arch": "mlp", "kwargs": {"hidden": [8]}})
    back = load_spec(ProfileSpec, spec.model_dump_json())
    assert back == spec and back.model_ref.arch == "mlp" and back.device == t.device and back.seed == 7
    assert spec.with_model(path="other.pt").path == "other.pt"
    with pytest.raises(Exception):
        spec.with_model(warmup_runs=-1)


def test_from_card_copies_the_cards_profile_table():
    t = load_target("cpu", {"target.profile.min_runs": 7, "target.profile.batch_sweep": [1, 2]})
    s = ProfileSettings.from_card(t, t.device, seed=3)
    assert (s.min_runs, s.batch_sweep, s.threads, s.seed) == (7, [1, 2], t.profile.threads, 3)
    assert s.providers == t.providers and s.device == t.device
    host = t.device.model_copy(update={"name": "this host"})
    g = GenerationSettings.from_card(t, type("G", (), {"profile_prompts": 2, "profile_new_tokens": 8,
                                                        "profile_repeats": 1})(), "host", host)
    assert g.model_dump() == {"threads": t.profile.threads, "prompts": 2, "new_tokens": 8, "repeats": 1,
                              "device": t.device.model_dump(), "profiled_on": "host",
                              "profile_device": host.model_dump(), "providers": ["CPUExecutionProvider"],
                              "torch_device": "cpu"}


def test_worker_subprocess_refuses_a_bad_spec_with_exit_2(tmp_path):
    (tmp_path / "spec.json").write_text(json.dumps({"kind": "onnx", "path": "m.onnx", "warmup": 3}))
    r = subprocess.run([sys.executable, "-m", "edgekd.profile.worker", str(tmp_path / "spec.json"),
                        str(tmp_path / "out.json")], capture_output=True, text=True)
    assert r.returncode == 2 and "warmup" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out.json").exists()
    (tmp_path / "g.json").write_text(json.dumps({"kind": "onnx", "path": "m.onnx", "prompts": [[1, 2]]}))
    r = subprocess.run([sys.executable, "-m", "edgekd.llm.bench", str(tmp_path / "g.json"),
                        str(tmp_path / "out.json")], capture_output=True, text=True)
    assert r.returncode == 2 and "GenerationSpec" in r.stderr.strip().splitlines()[-1]


def test_runner_refuses_a_bad_spec_before_starting_a_process(tmp_path):
    with pytest.raises(UserError, match="min_run"):
        run_worker({"kind": "onnx", "path": str(tmp_path / "m.onnx"), "min_run": 5}, tmp_path, "t")
    assert not list(tmp_path.iterdir())
    with pytest.raises(StageError, match="ONNX model not found"):  # a valid spec reaches the worker
        run_worker({"kind": "onnx", "path": str(tmp_path / "m.onnx"), "input_shape": [1, 4]}, tmp_path, "t")


def test_language_model_benchmarks_run_where_the_target_runs():
    """On the cuda target's device the generation benchmark uses the card's onnxruntime providers and the
    teacher on the GPU; as a host proxy (or on cpu) everything runs on this CPU. A named GPU provider that
    onnxruntime lacks is exit 3, never a silent CPU run under a GPU label."""
    import pytest

    from edgekd.cards import load_recipe, load_target
    from edgekd.errors import TargetUnavailable
    from edgekd.llm.onnx_gen import OrtLM
    from edgekd.profile.spec import GenerationSettings
    from edgekd.targets.base import host_device

    gen = load_recipe("smollm2-seqkd").generate
    cuda = load_target("cuda")
    on_gpu = GenerationSettings.from_card(cuda, gen, profiled_on="device", profile_device=cuda.device)
    assert "CUDAExecutionProvider" in on_gpu.providers and on_gpu.torch_device == "cuda"
    proxy = GenerationSettings.from_card(cuda, gen, profiled_on="host", profile_device=host_device())
    assert proxy.providers == ["CPUExecutionProvider"] and proxy.torch_device == "cpu"
    cpu = load_target("cpu")
    here = GenerationSettings.from_card(cpu, gen, profiled_on="device", profile_device=cpu.device)
    assert here.providers == ["CPUExecutionProvider"] and here.torch_device == "cpu"
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(TargetUnavailable, match="CUDAExecutionProvider"):
            OrtLM("model.onnx", 1, ["CUDAExecutionProvider", "CPUExecutionProvider"])
