import numpy as np
import pytest
import torch

from edgekd import zoo
from edgekd.errors import StageError
from edgekd.export.onnx import check_parity, export_onnx
from edgekd.runtimes.ort import run_onnx


def test_export_matches_torch_with_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    m = zoo.build("small_cnn", widths=[4, 8]).eval()
    x = torch.randn(5, 1, 28, 28)
    p = export_onnx(m, x[:1], tmp_path / "m.onnx", opset=17)
    ref = m(x).detach().numpy()
    got = run_onnx(p, x.numpy())
    assert got.shape == (5, 10)
    res = check_parity(ref, got, atol=1e-4, rtol=1e-3, what="t")
    assert res["ok"] and res["max_abs_diff"] < 1e-4 and res["top1_agreement"] == 1.0
    assert not m.training  # the TorchScript exporter leaves train mode on; export must restore eval


def test_broken_export_fails_parity(tmp_path):
    """Export, then corrupt a weight in the ONNX file: the parity check must refuse it."""
    import onnx
    from onnx import numpy_helper

    torch.manual_seed(0)
    m = zoo.build("mlp", hidden=[16]).eval()
    x = torch.randn(8, 64)
    p = export_onnx(m, x[:1], tmp_path / "m.onnx", opset=17)
    model = onnx.load(str(p))
    init = model.graph.initializer[0]
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] += 0.5
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(p))
    with pytest.raises(StageError) as e:
        check_parity(m(x).detach().numpy(), run_onnx(p, x.numpy()), atol=1e-4, rtol=1e-3, what="student ONNX export")
    assert e.value.exit_code == 4 and "logits" in e.value.message and "differs" in e.value.message


def test_static_batch_export(tmp_path):
    m = zoo.build("mlp", hidden=[8]).eval()
    p = export_onnx(m, torch.randn(1, 64), tmp_path / "s.onnx", opset=13, dynamic_batch=False)
    import onnx

    shape = [d.dim_value for d in onnx.load(str(p)).graph.input[0].type.tensor_type.shape.dim]
    assert shape == [1, 64]
    assert run_onnx(p, np.random.randn(3, 64).astype(np.float32)).shape == (3, 10)
