"""OpenVINO CPU as an independent check of an ONNX export (compared with onnxruntime and torch)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason="openvino not installed")

from edgekd.export.onnx import export_onnx  # noqa: E402
from edgekd.runtimes.ort import run_onnx  # noqa: E402
from edgekd.runtimes.openvino_rt import openvino_parity, run_openvino  # noqa: E402


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    from edgekd.zoo import build

    torch.manual_seed(0)
    model = build("small_cnn").eval()
    d = tmp_path_factory.mktemp("ov")
    dyn, static = d / "dyn.onnx", d / "static.onnx"
    export_onnx(model, torch.randn(1, 1, 28, 28), dyn, opset=17, dynamic_batch=True)
    export_onnx(model, torch.randn(1, 1, 28, 28), static, opset=13, dynamic_batch=False)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        ref = model(x).numpy()
    return dyn, static, x.numpy(), ref


def test_openvino_matches_onnxruntime_and_torch(cnn):
    dyn, _, x, ref = cnn
    ov_out = run_openvino(dyn, x)
    ort_out = run_onnx(dyn, x)
    assert ov_out.shape == (5, 10) and ov_out.std() > 1e-3  # a real, non-constant output
    np.testing.assert_allclose(ov_out, ort_out, atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(ov_out, ref, atol=1e-4, rtol=1e-3)


def test_openvino_static_batch_model_runs_sample_by_sample(cnn):
    _, static, x, ref = cnn
    out = run_openvino(static, x[:3])
    assert out.shape == (3, 10)
    np.testing.assert_allclose(out, ref[:3], atol=1e-4, rtol=1e-3)


def test_openvino_parity_reports_agreement_and_mismatch(cnn):
    dyn, _, x, ref = cnn
    ok = openvino_parity(dyn, x, ref, atol=1e-4, rtol=1e-3)
    assert ok["ok"] is True and ok["max_abs_diff"] < 1e-4 and ok["version"]
    shifted = ref.copy()
    shifted[2, 4] += 0.01  # one logit off by 1e-2: must be caught at atol 1e-4
    bad = openvino_parity(dyn, x, shifted, atol=1e-4, rtol=1e-3)
    assert bad["ok"] is False and bad["max_abs_diff"] == pytest.approx(0.01, rel=0.05)
    wrong_shape = openvino_parity(dyn, x, ref[:, :5], atol=1e-4, rtol=1e-3)
    assert wrong_shape["ok"] is False and "shape" in wrong_shape["reason"]


def test_openvino_parity_on_top1_for_quantized_graphs(cnn):
    dyn, _, x, ref = cnn
    offset = ref + 0.5  # every logit off, no class changes: fails element-wise, passes on top-1
    assert openvino_parity(dyn, x, offset, atol=1e-4, rtol=1e-3)["ok"] is False
    top1 = openvino_parity(dyn, x, offset, atol=1e-4, rtol=1e-3, min_top1=0.98)
    assert top1["ok"] is True and top1["top1_agreement"] == 1.0
    loser = min(set(range(ref.shape[1])) - set(ref.argmax(1).tolist()))  # a class OpenVINO never picks
    swapped = ref.copy()
    swapped[:, loser] = ref.max(axis=1) + 100.0  # ...made the reference's winner everywhere
    assert openvino_parity(dyn, x, swapped, atol=1e-4, rtol=1e-3, min_top1=0.98)["ok"] is False
