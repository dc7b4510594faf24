"""torchvision and timm models by name (`torchvision: resnet18` or `timm: resnet18` in a card, with
`kwargs` such as num_classes), from the optional `vision` extra (`pip install edgekd[vision]`).

The torchvision wheel that pairs with torch 2.13.0 on PyPI (0.28.0) is built for CUDA torch: its
C++ ops library links libtorch_cuda, so beside the CPU torch wheel it cannot load, and torchvision
0.28's own import then fails in `_meta_registrations` (it registers fake kernels for `nms`/`qnms`
without checking that the library loaded: "operator torchvision::nms does not exist"). The
model definitions are plain PyTorch and need none of those ops, so when (and only when) the ops
library does not load, `import_torchvision` declares the two schemas first; calling
torchvision.ops.nms then fails as it would have anyway, and every model builds and runs. With a
matching torchvision (PyTorch's CPU wheel index, or CUDA torch) nothing is patched.

That wheel has a second effect this cannot undo: transformers imports torchvision whenever it is
installed, so in a process that imports a transformers model class before this runs, that import
fails. Hence the dev/CI environment does not install it (pyproject.toml, extra `vision`).
"""
from __future__ import annotations

import difflib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from edgekd.errors import ConfigError, first_line

# Kept for the life of the process: a torch.library.Library drops its definitions when collected.
_shim_lib: Any = None
INSTALL_HINT = "pip install 'edgekd[vision]' (torchvision 0.28, the release built for torch 2.13)"


def _ops_library_loads(package_dir: Path) -> bool:
    import torch

    so = next(iter(sorted(package_dir.glob("_C*.so")) + sorted(package_dir.glob("_C*.pyd"))), None)
    if so is None:
        return False
    try:
        torch.ops.load_library(str(so))
        return True
    except (OSError, RuntimeError):
        return False


def _declare_missing_ops() -> None:
    """Declare the op schemas torchvision's import registers fake kernels for without checking."""
    global _shim_lib
    import torch

    if _shim_lib is not None:
        return
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        try:
            getattr(torch.ops.torchvision, op)
        except (AttributeError, RuntimeError):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _shim_lib = lib


def import_torchvision() -> ModuleType:
    """torchvision, imported so that its models work beside the CPU torch wheel; ConfigError with
    the install hint when it is absent or its import fails."""
    if "torchvision.models" in sys.modules:
        return sys.modules["torchvision"]
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.origin:
        raise ConfigError("torchvision models need the 'torchvision' package, which is not installed", hint=INSTALL_HINT)
    if not _ops_library_loads(Path(spec.origin).parent):
        _declare_missing_ops()
    try:
        import torchvision
        import torchvision.models  # noqa: F401
    except Exception as e:  # a torchvision built for another torch fails in many ways: one line, with the versions
        import torch

        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]  # a half-imported package would hide this error on the next try
        first = first_line(e)
        raise ConfigError(f"importing torchvision failed beside torch {torch.__version__}: {type(e).__name__}: {first}",
                          hint=INSTALL_HINT) from e
    return torchvision


def model_names() -> list[str]:
    """torchvision's classification model names (resnet18, mobilenet_v3_small, ...)."""
    tv = import_torchvision()
    return sorted(tv.models.list_models(module=tv.models))


def torchvision_model(name: str, **kwargs: Any):
    """`torchvision.models.get_model(name, **kwargs)`, a classification model (weights random
    unless kwargs name torchvision's own pretrained `weights`, which downloads them)."""
    names = model_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = (f"did you mean {' or '.join(close)}? " if close else "") + \
            f"torchvision classification models: {', '.join(names[:12])}, ... ({len(names)} in all)"
        raise ConfigError(f"unknown torchvision model '{name}'", hint=hint)
    tv = import_torchvision()
    try:
        return tv.models.get_model(name, **kwargs)
    except (TypeError, ValueError, KeyError) as e:  # KeyError: an unknown kwargs.weights enum name
        first = first_line(e) or type(e).__name__
        raise ConfigError(f"bad arguments for torchvision model '{name}': {first}",
                          hint="check the card's kwargs (e.g. num_classes) against torchvision.models." + name) from None
    except OSError as e:  # kwargs.weights names torchvision's pretrained weights and they could not be fetched
        raise ConfigError(f"torchvision model '{name}': cannot fetch its pretrained weights: {type(e).__name__}: {e}",
                          hint="offline: build the model once where the hub is reachable, save its state_dict and give it as `weights:`") from None


def package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def torchvision_version() -> str | None:
    return package_version("torchvision")


TIMM_HINT = "pip install 'edgekd[vision]' (timm 1.0 with torchvision 0.28, the release built for torch 2.13)"


def import_timm() -> ModuleType:
    """timm, after torchvision (which it imports) is made importable beside the CPU torch wheel."""
    if importlib.util.find_spec("timm") is None:
        raise ConfigError("timm models need the 'timm' package, which is not installed", hint=TIMM_HINT)
    import_torchvision()
    try:
        import timm
    except Exception as e:
        first = first_line(e)
        raise ConfigError(f"importing timm failed: {type(e).__name__}: {first}", hint=TIMM_HINT) from e
    return timm


def timm_model(name: str, **kwargs: Any):
    """`timm.create_model(name, **kwargs)`: random weights unless kwargs ask for `pretrained`, which
    fetches them from the Hugging Face hub (offline: give a saved state dict as `weights:`)."""
    timm = import_timm()
    if not timm.is_model(name):
        names = timm.list_models()
        close = difflib.get_close_matches(name, names, n=3)
        hint = (f"did you mean {' or '.join(close)}? " if close else "") + \
            f"timm.list_models() has {len(names)} names (e.g. resnet18, mobilenetv3_small_100, efficientnet_b0)"
        raise ConfigError(f"unknown timm model '{name}'", hint=hint)
    try:
        return timm.create_model(name, **kwargs)
    except (TypeError, ValueError, KeyError) as e:
        first = first_line(e) or type(e).__name__
        raise ConfigError(f"bad arguments for timm model '{name}': {first}",
                          hint="check the card's kwargs (e.g. num_classes, in_chans) against timm.create_model") from None
    except OSError as e:  # pretrained weights that could not be fetched (huggingface_hub errors are OSErrors)
        first = first_line(e, 160)
        raise ConfigError(f"timm model '{name}': cannot fetch its pretrained weights: {type(e).__name__}: {first}",
                          hint="offline: create the model once where the hub is reachable, save its state_dict and give "
                               "it as `weights:` (with pretrained unset)") from None
