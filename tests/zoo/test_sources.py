"""Models the user brings: factories, weight files, Hugging Face folders, ONNX files, and their errors."""
import itertools
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.config import ModelRef, TeacherConfig
from edgekd.errors import ConfigError, DataError
from edgekd.zoo.files import fingerprint
from edgekd.zoo.sources import build_model, check_model_on_data, wanted_input

FACTORY_SRC = textwrap.dedent('''
    import torch
    from torch import nn

    def build(num_classes=3, width=8):
        return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(width, num_classes))

    def broken(**kw):
        raise RuntimeError("out of coffee")

    def not_a_model():
        return 42
''')


_count = itertools.count()


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    name = f"usermodels_{next(_count)}"  # a fresh module name per test: imports are cached per name
    (tmp_path / f"{name}.py").write_text(FACTORY_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_factory_builds_and_logs_what_it_imports(factory_module):
    logs = []
    m = build_model(ModelRef(factory=f"{factory_module}:build", kwargs={"num_classes": 4}), log=logs.append)
    assert m(torch.zeros(2, 1, 8, 8)).shape == (2, 4)
    assert len(logs) == 1 and f"{factory_module}:build" in logs[0] and f"{factory_module}.py" in logs[0]


@pytest.mark.parametrize("spec,match", [
    ("no_such_pkg_xyz:build", "cannot import module 'no_such_pkg_xyz'"),
    ("{mod}:nothing", "has no 'nothing'"),
    ("{mod}:broken", "raised RuntimeError: out of coffee"),
    ("{mod}:not_a_model", "returned int, not a torch.nn.Module"),
    ("{mod}", "not of the form package.module:function"),
])
def test_factory_errors(factory_module, spec, match):
    with pytest.raises(ConfigError, match=match) as e:
        build_model(ModelRef(factory=spec.format(mod=factory_module)))
    assert e.value.exit_code == 2 and e.value.hint


def test_factory_bad_kwargs(factory_module):
    with pytest.raises(ConfigError, match="raised TypeError"):
        build_model(ModelRef(factory=f"{factory_module}:build", kwargs={"depth": 3}))


def test_weights_pt_and_safetensors_roundtrip(factory_module, tmp_path):
    from safetensors.torch import save_file

    ref = ModelRef(factory=f"{factory_module}:build")
    src = build_model(ref)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "ck.pt")
    x = torch.randn(3, 1, 8, 8)
    for f in ("w.pt", "w.safetensors", "ck.pt"):
        m = build_model(ModelRef(factory=f"{factory_module}:build", weights=str(tmp_path / f))).eval()
        torch.testing.assert_close(m(x), src.eval()(x))


def test_weights_that_do_not_match(factory_module, tmp_path):
    other = nn.Sequential(nn.Linear(4, 4))
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ConfigError, match=r"do not match the model: missing 4\.weight, 4\.bias$") as e:
        build_model(ModelRef(factory=f"{factory_module}:build", weights=str(tmp_path / "other.pt")))
    assert "unexpected" not in e.value.message  # 0.weight/0.bias exist in both, with other shapes
    wide = build_model(ModelRef(factory=f"{factory_module}:build", kwargs={"width": 16}))
    torch.save(wide.state_dict(), tmp_path / "wide.pt")
    with pytest.raises(ConfigError, match=r"'0\.weight' is \[16, 1, 3, 3\] in the file, \[8, 1, 3, 3\] in the model"):
        build_model(ModelRef(factory=f"{factory_module}:build", weights=str(tmp_path / "wide.pt")))
    sd = dict(build_model(ModelRef(factory=f"{factory_module}:build")).state_dict())
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "extra.pt")
    with pytest.raises(ConfigError, match=r"unexpected extra\.weight"):
        build_model(ModelRef(factory=f"{factory_module}:build", weights=str(tmp_path / "extra.pt")))


def test_pickled_weights_are_refused(factory_module, tmp_path):
    torch.save(build_model(ModelRef(factory=f"{factory_module}:build")), tmp_path / "whole.pt")  # the module object
    with pytest.raises(ConfigError, match="holds pickled objects"):
        build_model(ModelRef(factory=f"{factory_module}:build", weights=str(tmp_path / "whole.pt")))


def test_model_ref_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one of arch, factory, hf, onnx"):
        ModelRef(arch="mlp", factory="a:b")
    with pytest.raises(ValueError, match="exactly one"):
        ModelRef()
    assert TeacherConfig(arch="mlp").train is None  # absent train: the teacher is used as given
    assert ModelRef(arch="mlp", kwargs={"hidden": [8]}).key_dict() == {"arch": "mlp", "kwargs": {"hidden": [8]}}


def _export(model, path, shape):
    model.eval()
    torch.onnx.export(model, torch.zeros(*shape), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "b"}}, opset_version=17, dynamo=False)


def test_onnx_model_matches_torch_and_reports_its_input(factory_module, tmp_path):
    src = build_model(ModelRef(factory=f"{factory_module}:build")).eval()
    _export(src, tmp_path / "t.onnx", (1, 1, 8, 8))
    m = build_model(ModelRef(onnx=str(tmp_path / "t.onnx")))
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(m(x), src(x), atol=1e-5, rtol=1e-4)
    assert list(m.parameters()) == []
    with pytest.raises(DataError, match=r"rejects input of shape \[2, 3, 8, 8\].*it wants \[N, 1, 8, 8\]"):
        check_model_on_data(m, np.zeros((4, 3, 8, 8), np.float32), 3, "teacher", "onnx:t.onnx")
    assert fingerprint(ModelRef(onnx=str(tmp_path / "t.onnx")))["onnx"]


def test_an_unreadable_onnx_teacher_is_a_config_error(tmp_path):
    from edgekd.errors import ConfigError

    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="onnxruntime cannot load bad.onnx") as e:
        build_model(ModelRef(onnx=str(tmp_path / "bad.onnx")))
    assert e.value.exit_code == 2 and "onnx.checker" in e.value.hint


def test_check_model_on_data(factory_module):
    m = build_model(ModelRef(factory=f"{factory_module}:build", kwargs={"num_classes": 3}))
    assert wanted_input(m) == "[N, 1, H, W]"
    assert check_model_on_data(m, np.zeros((4, 1, 8, 8), np.float32), 3, "teacher", "x") == 3
    with pytest.raises(DataError, match=r"rejects input of shape \[2, 3, 8, 8\].*it wants \[N, 1, H, W\]") as e:
        check_model_on_data(m, np.zeros((4, 3, 8, 8), np.float32), 3, "teacher", "x")
    assert e.value.exit_code == 2
    with pytest.raises(DataError, match=r"data has 5 classes but the student \(x\) outputs 3: labels 3\.\.4 are outside"):
        check_model_on_data(m, np.zeros((4, 1, 8, 8), np.float32), 5, "student", "x")


def test_hf_image_and_text_classification_folders(tmp_path):
    transformers = pytest.importorskip("transformers")
    vit = transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=3))
    vit.save_pretrained(tmp_path / "vit")
    m = build_model(ModelRef(hf=str(tmp_path / "vit"))).eval()
    assert m(torch.randn(2, 3, 8, 8)).shape == (2, 3)
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=2))
    bert.save_pretrained(tmp_path / "bert")
    t = build_model(ModelRef(hf=str(tmp_path / "bert"))).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 0, 0, 0]])
    assert t(ids).shape == (2, 2)
    # padding is masked: trailing pads do not change the logits
    torch.testing.assert_close(t(ids[:, :3]), t(ids), atol=1e-5, rtol=1e-4)
    base = transformers.BertModel(bert.config)
    base.save_pretrained(tmp_path / "enc")
    with pytest.raises(ConfigError, match="not an image- or text-classification model"):
        build_model(ModelRef(hf=str(tmp_path / "enc")))


def test_set_replaces_a_models_source_with_its_kwargs():
    from edgekd.config import RecipeConfig, apply_overrides

    raw = {"student": {"arch": "small_cnn", "kwargs": {"in_channels": 1}, "weights": "a.pt"}}
    out = apply_overrides(raw, {"student.kwargs.width": 4, "student.factory": "m:f"}, RecipeConfig)
    assert out["student"] == {"factory": "m:f", "kwargs": {"width": 4}}
    same = apply_overrides(raw, {"student.arch": "mlp"}, RecipeConfig)  # same source kind: kwargs stay
    assert same["student"]["kwargs"] == {"in_channels": 1}
