"""Quantization candidates on tiny trained models: each kind loads and runs in ORT CPU and agrees
with FP32; variants differ in the way their names say; bad input fails with exit 2; the
accuracy-aware loop recovers a model whose input quantization destroys it."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from edgekd.errors import ConfigError, DataError
from edgekd.quantize import CANDIDATES, NotApplicable, accuracy_aware, make_candidate
from edgekd.quantize import validate_candidate_names
from edgekd.quantize.sensitivity import quantized_nodes, source_node_name
from edgekd.profile.measure.flops import onnx_flops
from edgekd.runtimes.ort import accuracy as evaluate_onnx
from edgekd.runtimes.ort import run_onnx


def agree(path_a, path_b, x: np.ndarray) -> dict[str, float]:
    """How closely two ONNX models agree on `x`: logit differences and top-1 agreement."""
    a = run_onnx(path_a, x).reshape(len(x), -1).astype(np.float64)
    b = run_onnx(path_b, x).reshape(len(x), -1).astype(np.float64)
    return {"max_abs_diff": float(np.max(np.abs(a - b))), "mean_abs_diff": float(np.mean(np.abs(a - b))),
            "logit_scale": float(np.max(np.abs(a))), "top1_agreement": float(np.mean(a.argmax(1) == b.argmax(1))),
            "n": len(x)}

torch.set_num_threads(1)


def _blobs(n: int, shape: tuple[int, ...], seed: int, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """10 classes: a fixed random template per class plus noise (structured, learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = centers[y] + 0.8 * rng.standard_normal((n, *shape))
    return x.astype(np.float32), y.astype(np.int64)


def _train_export(model: nn.Module, x: np.ndarray, y: np.ndarray, path: Path, steps: int = 150,
                  before_export: Callable[[nn.Module], None] | None = None) -> Path:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for i in range(steps):
        idx = torch.randint(0, len(x), (64,))
        loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    if before_export is not None:
        with torch.no_grad():
            before_export(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (xt[:2],), str(path), opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False)
    return path


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """MLP 64→128→128→10 (Gemm weights ≥ 64×64, so INT4 with group 32 applies)."""
    torch.manual_seed(0)
    centers = np.random.default_rng(1).standard_normal((10, 64))
    x, y = _blobs(1200, (64,), 2, centers)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    path = _train_export(model, x[:1000], y[:1000], tmp_path_factory.mktemp("mlp") / "mlp.onnx")
    return {"path": path, "calib": x[:128], "x": x[1000:], "y": y[1000:]}


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    torch.manual_seed(0)
    centers = np.random.default_rng(3).standard_normal((10, 1, 12, 12))
    x, y = _blobs(900, (1, 12, 12), 4, centers)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(16 * 3 * 3, 10))
    path = _train_export(model, x[:700], y[:700], tmp_path_factory.mktemp("cnn") / "cnn.onnx", steps=150)
    return {"path": path, "calib": x[:64], "x": x[700:], "y": y[700:]}


def _ops(path: str | Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


# Expected op in each candidate's graph: proves the maker did what its name says.
EXPECTED_OP = {"fp16": "Cast", "int8-dynamic": "MatMulInteger", "int8-qdq": "QuantizeLinear",
               "int8-qdq-u8u8": "QuantizeLinear", "int8-qdq-s8s8": "QuantizeLinear",
               "int8-qdq-reduce-range": "QuantizeLinear", "int8-nncf": "QuantizeLinear",
               "int8-weight": "MatMulNBits", "int4-weight": "MatMulNBits"}


def test_registry_has_required_kinds():
    required = {"fp32", "fp16", "int8-dynamic", "int8-qdq", "int8-qdq-u8u8", "int8-qdq-s8s8",
                "int8-qdq-reduce-range", "int8-nncf", "int8-weight", "int4-weight"}
    assert required <= set(CANDIDATES)


def test_fp32_model_is_accurate(mlp, cnn):
    # Agreement below is only meaningful if the reference has learnt something.
    assert evaluate_onnx(mlp["path"], mlp["x"], mlp["y"]) > 0.9
    assert evaluate_onnx(cnn["path"], cnn["x"], cnn["y"]) > 0.8


@pytest.mark.parametrize("name", sorted(EXPECTED_OP) + ["fp32"])
def test_mlp_candidate_runs_and_agrees(mlp, tmp_path, name):
    out = tmp_path / f"{name}.onnx"
    info = make_candidate(name, mlp["path"], out, mlp["calib"],
                          {"calibration_samples": 128, "per_channel": True, "group_size": 32})
    assert Path(info["path"]) == out and out.is_file()
    assert info["size_bytes"] == out.stat().st_size
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name], "temp file left behind"
    a = agree(mlp["path"], out, mlp["x"])
    fp32_size = mlp["path"].stat().st_size
    # A valid ONNX model (every node domain declared) whose compute the FLOP counter can read:
    # NNCF's MatMulNBits without a com.microsoft import once failed the profile stage.
    onnx.checker.check_model(onnx.load(str(out)))
    fl = onnx_flops(out)
    assert fl["unresolved"] == 0 and fl["macs"] == onnx_flops(mlp["path"])["macs"], fl
    if name == "fp32":
        assert a["max_abs_diff"] == 0.0 and info["quantized_nodes"] == 0
        return
    assert EXPECTED_OP[name] in _ops(out)
    assert a["top1_agreement"] >= 0.95, a
    if name == "fp16":
        assert a["max_abs_diff"] < 5e-3 * a["logit_scale"], a
        assert info["size_bytes"] < 0.6 * fp32_size
    else:
        assert info["quantized_nodes"] >= 3  # all three Gemms
        assert a["mean_abs_diff"] < 0.05 * a["logit_scale"], a
        assert info["size_bytes"] < 0.4 * fp32_size  # 8-bit weights: well under half of FP32
    if name == "int8-weight":  # NNCF's per-channel INT8 Gemms, on onnxruntime's 8-bit kernel (quantize/nbits.py)
        assert info["settings"]["lowered"]["matmul_8bit"] == 3 and "DequantizeLinear" not in _ops(out)
    if name == "int4-weight":
        assert info["settings"]["group_size"] == 32 and info["settings"]["int4_layers"] >= 2
        assert info["size_bytes"] < 0.25 * fp32_size  # mostly 4-bit weights


def _weight_dq_inputs(path: Path) -> list[np.ndarray]:
    m = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    # 2-D only: biases are quantized to int32 whatever the weight type.
    return [inits[n.input[0]] for n in m.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 2]


def _activation_zero_points(path: Path) -> list[np.ndarray]:
    m = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    return [inits[n.input[2]] for n in m.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]


def test_static_variants_use_their_types(mlp, tmp_path):
    paths = {}
    for name in ("int8-qdq", "int8-qdq-u8u8", "int8-qdq-s8s8", "int8-qdq-reduce-range"):
        paths[name] = tmp_path / f"{name}.onnx"
        # reduce_range stated: left unset it follows this host's CPU (test_u8s8_reduce_range_follows_the_host_cpu)
        make_candidate(name, mlp["path"], paths[name], mlp["calib"], {"reduce_range": False} if name == "int8-qdq" else {})
    dtypes = {k: {w.dtype for w in _weight_dq_inputs(p)} for k, p in paths.items()}
    act = {k: {z.dtype for z in _activation_zero_points(p)} for k, p in paths.items()}
    assert dtypes["int8-qdq"] == {np.dtype(np.int8)} and act["int8-qdq"] == {np.dtype(np.uint8)}
    assert dtypes["int8-qdq-u8u8"] == {np.dtype(np.uint8)} and act["int8-qdq-u8u8"] == {np.dtype(np.uint8)}
    assert dtypes["int8-qdq-s8s8"] == {np.dtype(np.int8)} and act["int8-qdq-s8s8"] == {np.dtype(np.int8)}
    # reduce_range: 7-bit weights, so no weight uses the full int8 range.
    rr = np.concatenate([w.ravel() for w in _weight_dq_inputs(paths["int8-qdq-reduce-range"]) if w.dtype == np.int8])
    full = np.concatenate([w.ravel() for w in _weight_dq_inputs(paths["int8-qdq"]) if w.dtype == np.int8])
    assert np.abs(rr.astype(np.int32)).max() <= 64  # ORT's symmetric 7-bit range is [-64, 64]
    assert full.max() > 100 or full.min() < -100


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_calibration_methods(mlp, tmp_path, method):
    info = make_candidate("int8-qdq", mlp["path"], tmp_path / "q.onnx", mlp["calib"][:32],
                          {"calibration_method": method})
    assert info["settings"]["calibration_method"].lower() == method
    assert agree(mlp["path"], info["path"], mlp["x"])["top1_agreement"] >= 0.95


@pytest.mark.parametrize("name", ["fp16", "int8-dynamic", "int8-qdq", "int8-weight"])
def test_cnn_candidates(cnn, tmp_path, name):
    out = tmp_path / f"{name}.onnx"
    info = make_candidate(name, cnn["path"], out, cnn["calib"], {})
    a = agree(cnn["path"], out, cnn["x"])
    assert a["top1_agreement"] >= 0.95, a
    assert a["mean_abs_diff"] < 0.05 * a["logit_scale"], a
    if name != "fp16":
        assert info["quantized_nodes"] >= 1


def test_int4_not_applicable_on_cnn(cnn, tmp_path):
    out = tmp_path / "int4.onnx"
    with pytest.raises(NotApplicable) as e:
        make_candidate("int4-weight", cnn["path"], out, None, {"group_size": 32})
    assert str(e.value).startswith("not applicable:") and e.value.exit_code == 4
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_int4_needs_a_matmul(tmp_path):
    # A conv-only graph has no MatMul/Gemm at all: refused before NNCF runs.
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()).eval()
    p = tmp_path / "conv.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 1, 8, 8),), str(p), opset_version=17, input_names=["input"],
                          dynamo=False)
    for name in ("int4-weight", "int8-weight"):
        with pytest.raises(NotApplicable, match="not applicable: .*MatMul/Gemm"):
            make_candidate(name, p, tmp_path / f"{name}.onnx", None, {})


# --------------------------------------------------------------------------- bad input


def test_unknown_candidate_suggests(mlp, tmp_path):
    with pytest.raises(ConfigError) as e:
        make_candidate("int8_qdq", mlp["path"], tmp_path / "x.onnx", mlp["calib"], {})
    assert e.value.exit_code == 2 and "int8_qdq" in str(e.value)
    assert "did you mean 'int8-qdq'" in e.value.hint and "int4-weight" in e.value.hint
    with pytest.raises(ConfigError):
        validate_candidate_names(["fp32", "int3-weight"])
    validate_candidate_names(list(CANDIDATES))  # all valid: no error


def test_empty_calibration(mlp, tmp_path):
    for empty in (np.zeros((0, 64), np.float32), None):
        with pytest.raises(DataError) as e:
            make_candidate("int8-qdq", mlp["path"], tmp_path / "x.onnx", empty, {})
        assert e.value.exit_code == 2 and "[batch, 64]" in str(e.value)
    assert not (tmp_path / "x.onnx").exists()


def test_wrong_calibration_shape(mlp, tmp_path):
    for bad in (np.zeros((8, 63), np.float32), np.zeros((8, 8, 8), np.float32)):
        with pytest.raises(DataError) as e:
            make_candidate("int8-nncf", mlp["path"], tmp_path / "x.onnx", bad, {})
        assert e.value.exit_code == 2 and "expects [batch, 64]" in str(e.value)


def test_unknown_option_key(mlp, tmp_path):
    with pytest.raises(ConfigError, match="group_sise") as e:
        make_candidate("int4-weight", mlp["path"], tmp_path / "x.onnx", None, {"group_sise": 32})
    assert "group_size" in e.value.hint


def test_bad_group_size_is_config_error(mlp, tmp_path):
    with pytest.raises(ConfigError, match="group_size 48"):
        make_candidate("int4-weight", mlp["path"], tmp_path / "x.onnx", None,
                       {"group_size": 48, "group_size_fallback": "error"})


def test_evaluate_and_agree(mlp):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(mlp["path"]), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": mlp["x"]})[0]
    expected = float(np.mean(logits.argmax(1) == mlp["y"]))
    assert evaluate_onnx(mlp["path"], mlp["x"], mlp["y"], batch_size=7) == pytest.approx(expected)
    same = agree(mlp["path"], mlp["path"], mlp["x"][:10])
    assert same["max_abs_diff"] == 0.0 and same["top1_agreement"] == 1.0 and same["n"] == 10
    with pytest.raises(DataError):
        evaluate_onnx(mlp["path"], mlp["x"][:0], mlp["y"][:0])


# --------------------------------------------------------------------------- accuracy-aware


@pytest.fixture(scope="module")
def fragile(tmp_path_factory):
    """An MLP whose last input feature is huge noise the FP32 model ignores (zero weight column).

    Quantizing the input activation with MinMax stretches its scale over ±~1000, so the informative
    features round to zero and INT8 accuracy collapses; keeping the first Gemm in FP32 fixes it.
    """
    centers = np.random.default_rng(5).standard_normal((10, 64))
    centers[:, 63] = 0
    x, y = _blobs(1100, (64,), 6, centers)
    x[:, 63] = 0
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    path = tmp_path_factory.mktemp("fragile") / "fragile.onnx"

    def zero_noise_column(m: nn.Module) -> None:
        m[0].weight[:, 63] = 0  # FP32 ignores feature 63 exactly

    _train_export(model, x[:900], y[:900], path, before_export=zero_noise_column)
    x[:, 63] = 1000 * np.random.default_rng(7).standard_normal(len(x))
    return {"path": path, "calib": x[:100], "x": x[900:], "y": y[900:]}


@pytest.mark.parametrize("name,method", [("int8-qdq", "exclusion"), ("int8-qdq", "layer-error"),
                                         ("int8-dynamic", "exclusion"), ("int8-nncf", "exclusion")])
def test_accuracy_aware_keeps_sensitive_node_fp32(fragile, tmp_path, name, method):
    def eval_fn(p: Path) -> float:
        return evaluate_onnx(p, fragile["x"], fragile["y"])

    ref = eval_fn(fragile["path"])
    assert ref > 0.9  # the noise feature really is ignored by FP32
    out = tmp_path / "q.onnx"
    info = accuracy_aware(name, fragile["path"], out, fragile["calib"],
                          {"sensitivity_method": method}, eval_fn, max_drop_points=2.0)
    rep = info["accuracy_aware"]
    assert rep["initial_accuracy"] < ref - 0.2, rep  # the trap works: plain INT8 collapses
    assert rep["method"] == method
    # The first Gemm is the one whose input quantization hurts; it must be ranked first and kept FP32.
    gemms = [n.name for n in onnx.load(str(fragile["path"])).graph.node if n.op_type == "Gemm"]
    assert rep["ranking"][0]["node"] == gemms[0], rep["ranking"]
    assert rep["kept_fp32_nodes"] == [gemms[0]] and rep["within_budget"] is True
    assert info["val_accuracy"] >= ref - 0.02 and info["val_accuracy"] == pytest.approx(eval_fn(out))
    assert gemms[0] not in {source_node_name(n, op) for n, op in quantized_nodes(onnx.load(str(out)))}
    assert info["quantized_nodes"] >= 2  # the rest stays INT8


def test_accuracy_aware_in_budget_does_nothing(mlp, tmp_path):
    def eval_fn(p: Path) -> float:
        return evaluate_onnx(p, mlp["x"], mlp["y"])

    info = accuracy_aware("int8-qdq", mlp["path"], tmp_path / "q.onnx", mlp["calib"], {}, eval_fn, 1.0)
    rep = info["accuracy_aware"]
    assert rep["within_budget"] and rep["steps"] == [] and rep["kept_fp32_nodes"] == []
    assert rep["fp32_val_accuracy"] - info["val_accuracy"] <= 0.01


def test_accuracy_aware_gives_up_after_k_steps(fragile, tmp_path):
    # Budget 0 with a deliberately wrong eval that never recovers: stops after max_exclusion_steps.
    calls = []

    def eval_fn(p: Path) -> float:
        calls.append(p)
        return 1.0 if Path(p) == fragile["path"] else 0.5

    info = accuracy_aware("int8-qdq", fragile["path"], tmp_path / "q.onnx", fragile["calib"],
                          {"max_exclusion_steps": 2}, eval_fn, max_drop_points=0.0)
    rep = info["accuracy_aware"]
    assert rep["within_budget"] is False and len(rep["steps"]) == 2 and len(rep["kept_fp32_nodes"]) == 2
    assert (tmp_path / "q.onnx").is_file()


def test_option_of_wrong_type_is_config_error_naming_it():
    from edgekd.quantize.candidates import check_options

    with pytest.raises(ConfigError, match=r"quantize.options.group_size: .*'abc'") as e:
        check_options({"group_size": "abc"})
    assert e.value.exit_code == 2
    with pytest.raises(ConfigError, match="preset"):
        check_options({"preset": "fastest"})
    assert check_options({"group_size": "64", "per_channel": False}) == {"group_size": 64, "per_channel": False}


def test_every_declared_candidate_option_is_typed():
    from edgekd.quantize.candidates import CANDIDATES, QuantizeOptions

    declared = {k for spec in CANDIDATES.values() for k in spec.options}
    assert declared and declared <= set(QuantizeOptions.model_fields)


@pytest.mark.e2e
def test_bad_option_type_exits_2_before_training(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "edgekd", "build", "--recipe", "digits-mlp", "--quick", "--out",
                        str(tmp_path / "b"), "--set", "quantize.options.group_size=abc"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "group_size" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b" / "teacher").exists()  # refused in the pre-flight: nothing trained


@pytest.mark.parametrize("flags, arch, expected", [
    ({"avx2": True}, "x86_64", True),                                 # AVX2 only: int16 accumulation saturates
    ({"avx2": True, "avx512f": True}, "x86_64", True),                # AVX-512 without VNNI: the same
    ({"avx2": True, "avx512_vnni": True}, "x86_64", False),           # VNNI: 8-bit weights
    ({"avx2": True, "avx_vnni": True}, "x86_64", False),
    ({}, "aarch64", False),                                           # not x86: no such kernel
])
def test_u8s8_reduce_range_follows_the_host_cpu(mlp, tmp_path, monkeypatch, flags, arch, expected):
    """Unset, reduce_range of the U8S8 kinds (int8-dynamic, int8-qdq) is this host's answer: 7-bit weights
    where x86 has no VNNI, 8-bit otherwise, said in the candidate's notes; a stated option always wins."""
    import edgekd.hostinfo as hostinfo
    from edgekd.quantize.candidates import host_u8s8_reduce_range

    monkeypatch.setattr(hostinfo, "cpu_info", lambda *a, **k: {"arch": arch, "flags": flags})
    assert host_u8s8_reduce_range()[0] is expected
    for name in ("int8-dynamic", "int8-qdq"):
        auto = make_candidate(name, mlp["path"], tmp_path / f"{name}-auto.onnx", mlp["calib"], {})
        assert auto["settings"]["reduce_range"] is expected, name
        assert any("reduce_range" in n for n in auto["notes"]) is expected, name
        stated = make_candidate(name, mlp["path"], tmp_path / f"{name}-stated.onnx", mlp["calib"],
                                {"reduce_range": not expected})
        assert stated["settings"]["reduce_range"] is (not expected), name
    # 7-bit weights really are what the auto choice made (ORT's symmetric 7-bit range is [-64, 64])
    w = np.concatenate([x.ravel() for x in _weight_dq_inputs(tmp_path / "int8-qdq-auto.onnx") if x.dtype == np.int8])
    assert bool(np.abs(w.astype(np.int32)).max() <= 64) is expected
