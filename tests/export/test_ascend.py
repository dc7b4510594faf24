"""Ascend bundle: ATC op lint, static-shape preparation, bundle contents (no CANN needed)."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgekd.config import TargetConfig
from edgekd.errors import StageError, UserError
from edgekd.targets.ascend import bundle as ascend
from edgekd.export.onnx import export_onnx
from edgekd.runtimes.ort import run_onnx

ROOT = Path(__file__).resolve().parents[2]


def _card(name: str = "ascend-310p", **changes) -> TargetConfig:
    raw = tomllib.loads((ROOT / "targets" / f"{name}.toml").read_text())
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return TargetConfig.model_validate(raw)


def _cnn_graph(opset: int, batch: int | str = "N", extra_nodes=(), extra_opsets=()) -> onnx.ModelProto:
    """Conv -> Relu -> Flatten -> Gemm on a 1x4x4 input, built by hand."""
    rng = np.random.default_rng(0)
    inits = [
        onnx.numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "w"),
        onnx.numpy_helper.from_array(rng.standard_normal((3, 8)).astype(np.float32), "fw"),
        onnx.numpy_helper.from_array(rng.standard_normal((3,)).astype(np.float32), "fb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[0, 0, 0, 0]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
        *extra_nodes,
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])], inits)
    opsets = [helper.make_opsetid("", opset), *extra_opsets]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


# --------------------------------------------------------------------------- op table + lint


def test_op_table_is_packaged_with_its_provenance():
    table = ascend.load_op_table()
    assert table["source"] and table["cann_version"]
    assert 13 in table["ops"]["Conv"]["opsets"] and 19 not in table["ops"]["Conv"]["opsets"]
    assert table["ops"]["Constant"]["opsets"] == "any"


def test_lint_passes_small_cnn_at_opset_13():
    model = _cnn_graph(13)
    onnx.checker.check_model(model)
    assert ascend.lint(model) == []


def test_lint_flags_standard_ops_at_opset_19_but_not_constant():
    const = helper.make_node("Constant", [], ["k"], name="k", value=helper.make_tensor("kv", TensorProto.FLOAT, [1], [1.0]))
    model = _cnn_graph(19, extra_nodes=[const])
    findings = ascend.lint(model)
    assert sorted(f.node for f in findings) == ["conv", "fc", "flatten", "relu"]
    assert all(f.model_opset == 19 and "19" in f.reason and f.domain == "ai.onnx" for f in findings)


def test_lint_flags_custom_domain_and_unparsed_ops(tmp_path):
    fused = helper.make_node("FusedGemm", ["f", "fw", "fb"], ["z"], name="fused", domain="com.microsoft")
    orphan = helper.make_node("Thing", ["y"], ["t"], name="orphan", domain="acme.ops")  # no opset_import for acme.ops
    dq = helper.make_node("DequantizeLinear", ["y", "s"], ["d"], name="dq")
    model = _cnn_graph(13, extra_nodes=[fused, orphan, dq], extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))  # lint reads files too
    by_node = {f.node: f for f in ascend.lint(path)}
    assert set(by_node) == {"fused", "orphan", "dq"}
    assert by_node["fused"].domain == "com.microsoft" and by_node["fused"].op_type == "FusedGemm"
    assert "E19999" in by_node["orphan"].reason and by_node["orphan"].model_opset is None
    assert "any opset" in by_node["dq"].reason


def test_lint_uses_the_model_opset_not_the_op_since_version():
    # NPUAddRmsNorm is registered in ai.onnx for model opsets 11-18 only, whatever its schema says.
    node = helper.make_node("NPUAddRmsNorm", ["y"], ["n"], name="rms")
    assert [f.node for f in ascend.lint(_cnn_graph(10, extra_nodes=[node]))] == ["rms"]
    assert ascend.lint(_cnn_graph(13, extra_nodes=[node])) == []


# --------------------------------------------------------------------------- prepare_static


def _foldable(opset: int = 13, batch: int | str = "N") -> onnx.ModelProto:
    """y = x * (a + b): the Add of two constants is what folding must remove."""
    a = helper.make_node("Constant", [], ["a"], value=helper.make_tensor("av", TensorProto.FLOAT, [4], [1, 2, 3, 4]))
    b = helper.make_node("Constant", [], ["b"], value=helper.make_tensor("bv", TensorProto.FLOAT, [4], [0.5] * 4))
    add = helper.make_node("Add", ["a", "b"], ["s"], name="add")
    mul = helper.make_node("Mul", ["x", "s"], ["y"], name="mul")
    graph = helper.make_graph([a, b, add, mul], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def test_prepare_static_fixes_dims_folds_and_keeps_standard_onnx(tmp_path):
    src, dst = tmp_path / "dyn.onnx", tmp_path / "static.onnx"
    onnx.save(_foldable(), str(src))
    info = ascend.prepare_static(src, dst, {"x": [2, 4]})
    out = onnx.load(str(dst))
    assert [d.dim_value for d in out.graph.input[0].type.tensor_type.shape.dim] == [2, 4]
    assert [d.dim_value for d in out.graph.output[0].type.tensor_type.shape.dim] == [2, 4]
    assert info["outputs"] == {"y": [2, 4]} and info["opset"] == 13
    assert "Add" not in [n.op_type for n in out.graph.node]  # folded into a constant
    assert all(n.domain in ("", "ai.onnx") for n in out.graph.node)
    assert [(i.domain, i.version) for i in out.opset_import] == [("", 13)]  # ORT's extra imports stripped
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(run_onnx(dst, x), x * np.array([1.5, 2.5, 3.5, 4.5], dtype=np.float32), rtol=1e-6)


@pytest.mark.parametrize("shapes, needle", [
    ({}, "--dynamic_batch_size"),
    ({"x": [-1, 4]}, "--dynamic_dims"),
    ({"x": [None, 4]}, "--dynamic_batch_size"),
])
def test_prepare_static_refuses_dynamic_shapes(tmp_path, shapes, needle):
    src = tmp_path / "dyn.onnx"
    onnx.save(_foldable(), str(src))
    with pytest.raises(UserError) as e:
        ascend.prepare_static(src, tmp_path / "o.onnx", shapes)
    assert needle in e.value.hint and e.value.exit_code == 2
    assert not (tmp_path / "o.onnx").exists()


def test_prepare_static_refuses_bad_opset_zero_dims_and_unknown_inputs(tmp_path):
    src = tmp_path / "m17.onnx"
    onnx.save(_foldable(opset=17), str(src))
    with pytest.raises(UserError, match="opset 17 is outside the target's range 11-15"):
        ascend.prepare_static(src, tmp_path / "o.onnx", {"x": [1, 4]}, opset_range=(11, 15))
    src13 = tmp_path / "m13.onnx"
    onnx.save(_foldable(), str(src13))
    with pytest.raises(UserError, match="zero-sized dim"):
        ascend.prepare_static(src13, tmp_path / "o.onnx", {"x": [0, 4]})
    with pytest.raises(UserError, match="unknown input"):
        ascend.prepare_static(src13, tmp_path / "o.onnx", {"x": [1, 4], "nope": [1]})
    with pytest.raises(UserError, match="rank"):
        ascend.prepare_static(src13, tmp_path / "o.onnx", {"x": [1, 4, 1]})


def test_prepare_static_rejects_zero_sized_intermediate(tmp_path):
    # Slice to an empty range: inputs are fine, an intermediate tensor has a zero dim.
    starts = helper.make_node("Constant", [], ["st"], value=helper.make_tensor("s", TensorProto.INT64, [1], [2]))
    ends = helper.make_node("Constant", [], ["en"], value=helper.make_tensor("e", TensorProto.INT64, [1], [2]))
    axes = helper.make_node("Constant", [], ["ax"], value=helper.make_tensor("a", TensorProto.INT64, [1], [1]))
    sl = helper.make_node("Slice", ["x", "st", "en", "ax"], ["y"], name="slice")
    graph = helper.make_graph([starts, ends, axes, sl], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    src = tmp_path / "z.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(src))
    with pytest.raises(UserError, match="zero"):
        ascend.prepare_static(src, tmp_path / "o.onnx", {"x": [1, 4]})


# --------------------------------------------------------------------------- bundle


@pytest.fixture(scope="module")
def tiny_cnn(tmp_path_factory):
    """small_cnn exported at opset 13 with a dynamic batch, plus reference outputs from torch."""
    from edgekd.zoo import build

    torch.manual_seed(0)
    model = build("small_cnn").eval()
    path = tmp_path_factory.mktemp("cnn") / "student.onnx"
    export_onnx(model, torch.randn(1, 1, 28, 28), path, opset=13, dynamic_batch=True)
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        y = model(x).numpy()
    return path, x.numpy(), y


def _no_atc_path(monkeypatch, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", f"{empty}:/usr/bin:/bin")


def test_bundle_from_tiny_cnn(tmp_path, monkeypatch, tiny_cnn):
    _no_atc_path(monkeypatch, tmp_path)
    path, x, y = tiny_cnn
    man = ascend.write_bundle(path, tmp_path / "out", _card(), "input", [1, 1, 28, 28], x, y)
    b = tmp_path / "out" / "ascend"

    model = onnx.load(str(b / "model.onnx"))
    assert model.opset_import[0].version <= 15 and man["opset"] == 13
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        assert all(d.HasField("dim_value") and d.dim_value > 0 for d in dims), vi.name
    assert ascend.lint(b / "model.onnx") == [] and man["lint"]["ok"] is True

    convert = (b / "convert.sh").read_text()
    assert '--input_shape="input:1,1,28,28"' in convert and "--soc_version=Ascend310P3" in convert
    assert "--framework=5" in convert and '--precision_mode="${PRECISION_MODE:-allow_fp32_to_fp16}"' in convert
    assert "set -euo pipefail" in convert and (b / "convert.sh").stat().st_mode & stat.S_IXUSR
    bench = (b / "benchmark.sh").read_text()
    assert "msit benchmark --om-model model.om --loop 1000 --warmup-count 50" in bench

    on_disk = json.loads((b / "manifest.json").read_text())
    assert on_disk["soc_version"] == "Ascend310P3" and on_disk["atc"]["status"] == "not run"
    assert "atc not found" in on_disk["atc"]["reason"]
    files = {str(p.relative_to(b)) for p in b.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(on_disk["files"]) == files
    for name, digest in on_disk["files"].items():
        assert hashlib.sha256((b / name).read_bytes()).hexdigest() == digest, name
    # samples: the bin files and the expected outputs are the inputs/outputs given, in order
    assert len(on_disk["samples"]) == 4
    np.testing.assert_array_equal(np.fromfile(b / "inputs" / "sample_1.bin", dtype=np.float32).reshape(1, 1, 28, 28), x[1:2])
    np.testing.assert_allclose(np.asarray(on_disk["samples"][1]["expected"]), y[1:2], rtol=1e-6)
    assert on_disk["host_parity"]["ok"] and on_disk["host_parity"]["max_abs_diff"] < 1e-4


def test_bundle_check_outputs_script_detects_mismatch(tmp_path, monkeypatch, tiny_cnn):
    _no_atc_path(monkeypatch, tmp_path)
    path, x, y = tiny_cnn
    ascend.write_bundle(path, tmp_path, _card(), "input", [1, 1, 28, 28], x, y)
    b = tmp_path / "ascend"
    good, bad = tmp_path / "good" / "20260101_000000", tmp_path / "bad"
    good.mkdir(parents=True)
    bad.mkdir()
    for i in range(4):  # check_outputs.py compares every sample in the manifest
        np.save(good / f"sample_{i}_0.npy", y[i:i + 1].astype(np.float16))  # the NPU answers in fp16: within 1e-3
        np.save(bad / f"sample_{i}_0.npy", y[i:i + 1] + (0.05 if i == 0 else 0.0))
    run = [sys.executable, str(b / "check_outputs.py")]
    assert subprocess.run(run + [str(tmp_path / "good")], capture_output=True).returncode == 0
    assert subprocess.run(run + [str(bad)], capture_output=True).returncode == 1


def _fake_atc(tmp_path: Path, rc: int) -> Path:
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    atc = bindir / "atc"
    atc.write_text("#!/usr/bin/env bash\n"
                   'printf "%s\\n" "$@" > atc_args.txt\n'
                   + ("echo ATC run failed, E16002 >&2\nexit 1\n" if rc else "echo OM > model.om\n"))
    atc.chmod(0o755)
    return bindir


def test_bundle_runs_atc_when_present(tmp_path, monkeypatch, tiny_cnn):
    monkeypatch.setenv("PATH", f"{_fake_atc(tmp_path, 0)}:/usr/bin:/bin")
    path, x, y = tiny_cnn
    man = ascend.write_bundle(path, tmp_path / "out", _card("ascend-910b"), "input", [1, 1, 28, 28], x, y)
    b = tmp_path / "out" / "ascend"
    args = (b / "atc_args.txt").read_text().splitlines()
    assert "--soc_version=Ascend910B3" in args and "--input_shape=input:1,1,28,28" in args  # quotes removed by bash
    assert man["atc"]["status"] == "ok" and (b / "model.om").is_file()
    assert man["files"]["model.om"] == hashlib.sha256((b / "model.om").read_bytes()).hexdigest()


def test_bundle_atc_failure_is_a_stage_error(tmp_path, monkeypatch, tiny_cnn):
    monkeypatch.setenv("PATH", f"{_fake_atc(tmp_path, 1)}:/usr/bin:/bin")
    path, x, y = tiny_cnn
    with pytest.raises(StageError, match="atc failed") as e:
        ascend.write_bundle(path, tmp_path / "out", _card(), "input", [1, 1, 28, 28], x, y)
    assert e.value.exit_code == 4
    man = json.loads((tmp_path / "out" / "ascend" / "manifest.json").read_text())  # kept for inspection
    assert man["atc"]["status"] == "failed" and any("E16002" in line for line in man["atc"]["log_tail"])


def test_bundle_rejects_unknown_soc_and_dynamic_card(tmp_path, tiny_cnn):
    path, x, y = tiny_cnn
    with pytest.raises(UserError, match="Ascend310Q3") as e:
        ascend.write_bundle(path, tmp_path, _card(ascend__soc_version="Ascend310Q3"), "input", [1, 1, 28, 28], x, y)
    assert "Ascend310P3" in e.value.hint and e.value.exit_code == 2
    with pytest.raises(UserError) as e:
        ascend.write_bundle(path, tmp_path, _card(onnx__dynamic_batch=True), "input", [1, 1, 28, 28], x, y)
    assert "--dynamic_batch_size" in e.value.hint and "--dynamic_dims" in e.value.hint
    assert not (tmp_path / "ascend").exists()


def test_bundle_with_unsupported_ops_fails_unless_allowed(tmp_path, monkeypatch):
    _no_atc_path(monkeypatch, tmp_path)
    # Q/DQ pair in front of Relu: onnxruntime runs it, ATC has no parser for either op.
    q = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="quant")
    dq = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], name="dequant")
    relu = helper.make_node("Relu", ["d"], ["y"], name="relu")
    inits = [onnx.numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             onnx.numpy_helper.from_array(np.array(128, np.uint8), "z")]
    graph = helper.make_graph([q, dq, relu], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits)
    src = tmp_path / "qdq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(src))
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    y = run_onnx(src, x)
    card = _card()
    with pytest.raises(UserError) as e:
        ascend.write_bundle(src, tmp_path / "out", card, "x", [1, 8], x, y)
    assert "quant (ai.onnx::QuantizeLinear)" in e.value.message and "dequant" in e.value.message
    assert not (tmp_path / "out" / "ascend").exists()
    man = ascend.write_bundle(src, tmp_path / "out", card, "x", [1, 8], x, y, allow_unsupported=True)
    assert man["lint"]["ok"] is False and man["lint"]["allowed_unsupported"] is True
    assert {f["op_type"] for f in man["lint"]["findings"]} == {"QuantizeLinear", "DequantizeLinear"}


def test_bundle_checks_the_static_model_against_the_reference(tmp_path, monkeypatch, tiny_cnn):
    _no_atc_path(monkeypatch, tmp_path)
    path, x, y = tiny_cnn
    with pytest.raises(StageError, match="differs from the reference"):
        ascend.write_bundle(path, tmp_path, _card(), "input", [1, 1, 28, 28], x, y + 0.1)
    assert not (tmp_path / "ascend").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ascend-")]  # temp dir cleaned up


def test_prepare_static_allows_empty_constants(tmp_path):
    """An empty constant (like Resize's unused roi) is exempt from the zero-dim rule, as in ATC."""
    empty = helper.make_node("Constant", [], ["roi"], value=helper.make_tensor("r", TensorProto.FLOAT, [0], []))
    scales = helper.make_node("Constant", [], ["sc"], value=helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 2, 2]))
    resize = helper.make_node("Resize", ["x", "roi", "sc"], ["y"], name="up", mode="nearest")
    graph = helper.make_graph([empty, scales, resize], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    src = tmp_path / "r.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(src))
    info = ascend.prepare_static(src, tmp_path / "o.onnx", {"x": [1, 1, 2, 2]})
    assert info["outputs"] == {"y": [1, 1, 4, 4]}
    assert ascend.lint(tmp_path / "o.onnx") == []
