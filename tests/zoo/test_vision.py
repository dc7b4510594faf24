"""torchvision models by name (`torchvision: resnet18`) and as a factory (`torchvision.models:resnet18`):
the optional `vision` extra. Skips when torchvision is not installed; its absence is tested by hiding it."""
import importlib.util
import sys

import pytest
import torch

from edgekd.config import ModelRef
from edgekd.errors import ConfigError
from edgekd.zoo.files import fingerprint
from edgekd.zoo.sources import build_model, wanted_input

needs_torchvision = pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                                       reason="torchvision not installed (pip install 'edgekd[vision]')")


@needs_torchvision
def test_torchvision_name_builds_with_kwargs_and_runs_on_small_images():
    m = build_model(ModelRef(torchvision="resnet18", kwargs={"num_classes": 4})).eval()
    assert sum(p.numel() for p in m.parameters()) == 11_178_564  # ResNet-18 with a 4-way head
    with torch.no_grad():
        assert m(torch.rand(2, 3, 28, 28)).shape == (2, 4)
    assert wanted_input(m) == "[N, 3, H, W]"  # `edgekd init` reads the channels from here
    import torchvision

    assert isinstance(m, torchvision.models.ResNet)


@needs_torchvision
def test_torchvision_factory_is_the_same_model_and_weights_roundtrip(tmp_path):
    torch.manual_seed(0)
    a = build_model(ModelRef(torchvision="mobilenet_v3_small", kwargs={"num_classes": 3})).eval()
    torch.save(a.state_dict(), tmp_path / "w.pt")
    b = build_model(ModelRef(factory="torchvision.models:mobilenet_v3_small", kwargs={"num_classes": 3},
                             weights=str(tmp_path / "w.pt"))).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))  # same architecture, the file's weights
    with pytest.raises(ConfigError, match=r"do not match the model: 'classifier.3.weight' is \[3, 1024\] in the file, "
                                          r"\[5, 1024\] in the model"):
        build_model(ModelRef(torchvision="mobilenet_v3_small", kwargs={"num_classes": 5}, weights=str(tmp_path / "w.pt")))


@needs_torchvision
def test_torchvision_errors_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="unknown torchvision model 'resnet81'") as e:
        build_model(ModelRef(torchvision="resnet81"))
    assert "did you mean resnet18" in e.value.hint
    with pytest.raises(ConfigError, match="bad arguments for torchvision model 'resnet18'.*'width'"):
        build_model(ModelRef(torchvision="resnet18", kwargs={"width": 3}))
    with pytest.raises(ConfigError, match="bad arguments for torchvision model 'resnet18'"):
        build_model(ModelRef(torchvision="resnet18", kwargs={"weights": "NO_SUCH_WEIGHTS"}))
    # detection models are not classifiers: not in the list
    with pytest.raises(ConfigError, match="unknown torchvision model 'fasterrcnn_resnet50_fpn'"):
        build_model(ModelRef(torchvision="fasterrcnn_resnet50_fpn"))


@needs_torchvision
def test_torchvision_version_keys_the_stage():
    from importlib.metadata import version

    assert fingerprint(ModelRef(torchvision="resnet18")) == {"torchvision": version("torchvision")}
    # unset, the new source stays out of earlier cards' cache keys
    assert "torchvision" not in ModelRef(arch="mlp").key_dict()


@pytest.mark.parametrize("package, ref", [("torchvision", ModelRef(torchvision="resnet18")),
                                          ("timm", ModelRef(timm="resnet18"))])
def test_absent_package_is_a_config_error_with_the_extra(monkeypatch, package, ref):
    import edgekd.zoo.vision as vision

    real = importlib.util.find_spec
    monkeypatch.setattr(vision.importlib.util, "find_spec", lambda n, *a: None if n == package else real(n, *a))
    monkeypatch.delitem(sys.modules, "torchvision.models", raising=False)
    with pytest.raises(ConfigError, match=f"need the '{package}' package, which is not installed") as e:
        build_model(ref)
    assert "edgekd[vision]" in e.value.hint and e.value.exit_code == 2


def test_init_model_spec_reads_torchvision_names():
    from edgekd.init import model_spec

    assert model_spec("torchvision:resnet18", "t.pt") == {"torchvision": "resnet18", "weights": "t.pt"}
    assert model_spec("torchvision.models:resnet18") == {"factory": "torchvision.models:resnet18"}


needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None or importlib.util.find_spec("torchvision") is None,
                                reason="timm not installed (pip install 'edgekd[vision]')")


@needs_timm
def test_timm_name_builds_with_kwargs_and_keys_the_stage_by_version(tmp_path):
    from importlib.metadata import version

    m = build_model(ModelRef(timm="resnet18", kwargs={"num_classes": 4, "in_chans": 1})).eval()
    assert sum(p.numel() for p in m.parameters()) == 11_172_292  # ResNet-18, 1-channel stem, 4-way head
    with torch.no_grad():
        assert m(torch.rand(2, 1, 28, 28)).shape == (2, 4)
    assert wanted_input(m) == "[N, 1, H, W]"
    torch.save(m.state_dict(), tmp_path / "w.pt")
    b = build_model(ModelRef(factory="timm:create_model", kwargs={"model_name": "resnet18", "num_classes": 4, "in_chans": 1},
                             weights=str(tmp_path / "w.pt"))).eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(m(x), b(x))  # the factory form is the same model; the file's weights
    assert fingerprint(ModelRef(timm="resnet18")) == {"timm": version("timm")}
    assert "timm" not in ModelRef(arch="mlp").key_dict()


@needs_timm
def test_timm_errors_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="unknown timm model 'resnet81'") as e:
        build_model(ModelRef(timm="resnet81"))
    assert "did you mean resnet18" in e.value.hint
    with pytest.raises(ConfigError, match="bad arguments for timm model 'resnet18'.*'width'"):
        build_model(ModelRef(timm="resnet18", kwargs={"width": 3}))


def test_init_model_spec_reads_timm_names():
    from edgekd.init import model_spec

    assert model_spec("timm:resnet18", "t.pt") == {"timm": "resnet18", "weights": "t.pt"}
    assert ModelRef(timm="resnet18").describe() == "timm:resnet18"
