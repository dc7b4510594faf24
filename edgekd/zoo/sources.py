"""Models the user brings: their own factory, a state-dict file, a local Hugging Face folder, an
ONNX file. `build_model(ref)` turns any ModelRef (zoo `arch` too) into a torch module that takes
one input tensor and returns logits [batch, classes], so every stage treats them alike.

- `factory: "package.module:function"` is imported from the user's environment (the current
  folder first, as `python -m` would) and called with `kwargs`; the build logs what it imported.
- `weights:` a state dict: `.safetensors`, or `.pt/.pth/.bin` read with torch.load(weights_only=True)
  (a checkpoint dict with a `state_dict`/`model` entry is unwrapped; a DDP `module.` prefix is
  dropped). Keys and shapes must match the model: the error lists the first missing/unexpected keys.
- `hf:` a Hugging Face folder with a classification head (…ForImageClassification or
  …ForSequenceClassification); text models derive the attention mask from the pad id, like
  edgekd's own text classifiers.
- `onnx:` an ONNX file run with onnxruntime inside a module without parameters: usable wherever
  only logits are needed (teacher accuracy, the teacher-logit cache); it cannot be trained,
  exported again or hooked for feature losses.
- `torchvision:` a torchvision classification model name, `torchvision.models.get_model(name,
  **kwargs)` (edgekd.zoo.vision; a factory under `torchvision.` is imported the same way).
- `timm:` a timm model name, `timm.create_model(name, **kwargs)` (edgekd.zoo.vision; timm imports
  torchvision, so it is imported the same way, and so is a factory under `timm.`).
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from edgekd.errors import ConfigError, DataError, first_line

Log = Callable[[str], None]
_announced: set[str] = set()


# --------------------------------------------------------------------------- building


def build_model(ref, log: Log | None = None) -> nn.Module:
    """A fresh module for a ModelRef (with its `weights` loaded when given)."""
    src = ref.source
    if src == "arch":
        from edgekd.zoo import build

        model = build(ref.arch, **ref.kwargs)
    elif src == "factory":
        model = call_factory(ref.factory, ref.kwargs, log)
    elif src == "hf":
        model = hf_classifier(ref.hf, **ref.kwargs)
    elif src == "torchvision":
        from edgekd.zoo.vision import torchvision_model

        model = torchvision_model(ref.torchvision, **ref.kwargs)
    elif src == "timm":
        from edgekd.zoo.vision import timm_model

        model = timm_model(ref.timm, **ref.kwargs)
    else:
        model = OnnxModel(ref.onnx)
    if ref.weights:
        load_weights(model, ref.weights)
    return model


def import_factory(spec: str, log: Log | None = None) -> Callable[..., Any]:
    """The callable named by "package.module:function" (dotted attribute paths allowed after the colon)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"factory '{spec}' is not of the form package.module:function",
                          hint="e.g. factory: mymodels:build_teacher (mymodels.py in the current folder or an installed package)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # `edgekd` is a console script: make the user's folder importable like `python -m`
    if module_name.split(".")[0] in ("torchvision", "timm"):  # e.g. torchvision.models:resnet18 beside the CPU torch wheel
        from edgekd.zoo.vision import import_torchvision

        import_torchvision()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or module_name
        where = "" if missing == module_name else f" (it imports '{missing}', which is missing)"
        raise ConfigError(f"cannot import module '{module_name}' for factory '{spec}'{where}",
                          hint="run edgekd from the folder that holds it, add that folder to PYTHONPATH, or pip install it") from None
    except Exception as e:  # the user's module failing at import time is their error to fix: show its first line
        raise ConfigError(f"importing '{module_name}' for factory '{spec}' raised {type(e).__name__}: {first_line(e)}",
                          hint="fix the module (rerun with --debug for the traceback)") from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n, None))]
            raise ConfigError(f"module '{module_name}' has no '{attr}' (from factory '{spec}')",
                              hint=f"callables there: {', '.join(names[:12]) or 'none'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"factory '{spec}' is not callable", hint="name a function or class that returns a torch.nn.Module")
    if log is not None and spec not in _announced:
        _announced.add(spec)
        log(f"  importing factory {spec} from {getattr(module, '__file__', None) or module_name}")
    return obj


def call_factory(spec: str, kwargs: dict[str, Any], log: Log | None = None) -> nn.Module:
    fn = import_factory(spec, log)
    try:
        model = fn(**kwargs)
    except Exception as e:
        raise ConfigError(f"factory '{spec}' raised {type(e).__name__}: {first_line(e)}",
                          hint="check its kwargs in the card (rerun with --debug for the traceback)") from e
    if not isinstance(model, nn.Module):
        raise ConfigError(f"factory '{spec}' returned {type(model).__name__}, not a torch.nn.Module",
                          hint="the factory must build and return the model")
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or torch (weights_only) file, checkpoint wrappers removed."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"weights file {p} does not exist", hint="check the card's `weights` path")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(p))
        except (SafetensorError, OSError) as e:
            raise ConfigError(f"cannot read weights {p}: {first_line(e)}", hint="a .safetensors file of the model's state dict") from None
    else:
        import pickle

        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise ConfigError(f"weights file {p} holds pickled objects, not just tensors (refused: weights_only=True)",
                              hint="save model.state_dict() with torch.save, or use .safetensors") from None
        except (RuntimeError, OSError, EOFError) as e:
            raise ConfigError(f"cannot read weights {p}: {first_line(e)}", hint="save model.state_dict() with torch.save") from None
    if isinstance(state, dict):
        for k in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(k), dict):
                state = state[k]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"weights file {p} is not a state dict (name -> tensor)", hint="save model.state_dict()")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from a DDP-wrapped model
    return state


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict; any missing/unexpected key or shape mismatch is a one-line ConfigError."""
    if isinstance(model, OnnxModel):
        raise ConfigError("an onnx model carries its own weights", hint="drop `weights` from the card")
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        raise ConfigError(f"weights {Path(path).name} do not match the model: {'; '.join(parts)}",
                          hint="the weights were saved from another architecture or kwargs; build the same model they came from")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ConfigError(f"weights {Path(path).name} do not match the model: '{k}' is {list(v.shape)} in the file, "
                              f"{list(own[k].shape)} in the model", hint="check the model's kwargs (widths, num_classes) against the weights")
    model.load_state_dict(state)


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


# --------------------------------------------------------------------------- Hugging Face folders


class HFImageClassifier(nn.Module):
    """A transformers …ForImageClassification as a pixels -> logits module."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


class HFSequenceClassifier(nn.Module):
    """A transformers …ForSequenceClassification as a token ids -> logits module (mask from the pad id)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.pad_id = int(getattr(model.config, "pad_token_id", 0) or 0)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != self.pad_id).to(torch.long)
        return self.model(input_ids=input_ids, attention_mask=mask).logits


def hf_task(spec: str) -> str:
    """'image-classification' or 'text-classification' from a folder's config.json architectures."""
    from edgekd.zoo.text import load_config

    cfg = load_config(spec)
    archs = list(getattr(cfg, "architectures", None) or [])
    if any(a.endswith("ForImageClassification") for a in archs):
        return "image-classification"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "text-classification"
    raise ConfigError(f"Hugging Face model '{spec}' is {', '.join(archs) or 'of unknown architecture'}, "
                      "not an image- or text-classification model",
                      hint="give a folder saved from …ForImageClassification or …ForSequenceClassification "
                           "(an encoder without a head: arch hf_text_classifier, kwargs.hf)")


def hf_classifier(hf: str, attn_implementation: str = "eager", **kwargs: Any) -> nn.Module:
    """A classification model from a local Hugging Face folder (or pkg:NAME), with its trained head."""
    from edgekd.zoo.text import hub_error, quiet_transformers, resolve_hf

    if kwargs:
        raise ConfigError(f"unknown kwargs for an hf model: {', '.join(kwargs)}", hint="valid: attn_implementation")
    task = hf_task(hf)
    quiet_transformers()
    path = resolve_hf(hf)
    import transformers

    cls = (transformers.AutoModelForImageClassification if task == "image-classification"
           else transformers.AutoModelForSequenceClassification)
    try:
        model = cls.from_pretrained(path, attn_implementation=attn_implementation)
    except OSError as e:
        raise hub_error(hf, e) from None
    return (HFImageClassifier if task == "image-classification" else HFSequenceClassifier)(model).eval()


# --------------------------------------------------------------------------- ONNX


class OnnxModel(nn.Module):
    """An ONNX classifier run by onnxruntime behind a module interface (no parameters, no grads).

    One input (images, features or token ids), or a text model's input_ids + attention_mask
    (+ token_type_ids), which are derived from the ids with pad id 0."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"ONNX model {p} does not exist", hint="check the card's `onnx` path")
        self.path = p.resolve()
        self._sess: Any = None
        self.inputs: list[tuple[str, list[Any], str]] = [(i.name, list(i.shape), i.type) for i in self.session().get_inputs()]
        names = [n for n, _, _ in self.inputs]
        if len(names) > 1 and "input_ids" not in names:
            raise ConfigError(f"ONNX model {p.name} has {len(names)} inputs ({', '.join(names)})",
                              hint="edgekd feeds one input (or input_ids + attention_mask for text models)")

    def session(self):
        if self._sess is None:
            # The one session factory (a bottom-layer leaf, so the zoo may use it); threads=0 keeps
            # onnxruntime's own default (all physical cores) for a teacher run over whole datasets.
            from edgekd.runtimes.ort import session

            try:
                self._sess = session(self.path, threads=0)
            except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
                raise ConfigError(f"onnxruntime cannot load {self.path.name}: {first_line(e)}",
                                  hint="check the file is a valid ONNX model (onnx.checker.check_model)") from None
        return self._sess

    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["_sess"] = None  # sessions do not pickle/deepcopy; reopened on use
        return d

    @property
    def input_shape(self) -> list[Any]:
        main = next((s for n, s, _ in self.inputs if n == "input_ids"), self.inputs[0][1])
        return main

    def _feeds(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if len(self.inputs) == 1:
            name, _, typ = self.inputs[0]
            return {name: x.astype(np.int64 if "int64" in typ else np.float32)}
        ids = x.astype(np.int64)
        feeds = {}
        for name, _, typ in self.inputs:
            if name == "input_ids":
                feeds[name] = ids
            elif name == "attention_mask":
                feeds[name] = (ids != 0).astype(np.int64)
            elif name == "token_type_ids":
                feeds[name] = np.zeros_like(ids)
            else:
                raise ConfigError(f"ONNX model {self.path.name} has an input '{name}' edgekd cannot fill",
                                  hint="export the model with input_ids (+ attention_mask, token_type_ids) only")
        return feeds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.detach().cpu().numpy()
        sess = self.session()
        batch_dim = self.input_shape[0] if self.input_shape else None
        if isinstance(batch_dim, int) and batch_dim != len(a):
            if batch_dim != 1:
                raise DataError(f"ONNX model {self.path.name} has a fixed batch of {batch_dim}",
                                hint="export it with a dynamic batch axis (or batch 1)")
            outs = [sess.run(None, self._feeds(a[i:i + 1]))[0] for i in range(len(a))]  # static batch 1: one at a time
            out = np.concatenate(outs)
        else:
            out = sess.run(None, self._feeds(a))[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


def onnx_params(path: str | Path) -> int:
    """Number of weights in an ONNX file (elements of its float initializers)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return int(sum(int(np.prod(t.dims)) for t in m.graph.initializer if t.data_type in (1, 10, 11, 16)))


# --------------------------------------------------------------------------- checks and fingerprints


def wanted_input(model: nn.Module) -> str | None:
    """The input the model expects, when its first layer says so (e.g. "[N, 3, H, W]")."""
    if isinstance(model, OnnxModel):
        return "[" + ", ".join(str(d) if isinstance(d, int) else "N" if i == 0 else str(d) for i, d in enumerate(model.input_shape)) + "]"
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return f"[N, {m.in_channels}, H, W]"
        if isinstance(m, nn.Conv1d):
            return f"[N, {m.in_channels}, L]"
        if isinstance(m, nn.Linear):
            return f"[N, {m.in_features}]"
        if isinstance(m, nn.Embedding):
            return f"[N, seq] token ids < {m.num_embeddings}"
    return None


def check_model_on_data(model: nn.Module, x: np.ndarray, num_classes: int, role: str, describe: str) -> int:
    """Run `model` on two samples: an input it rejects, a non-logit output or fewer outputs than
    the data has classes is a one-line DataError. Returns the model's number of outputs."""
    xb = torch.as_tensor(x[:2])
    try:
        with torch.no_grad():
            out = model.eval()(xb)
    except ConfigError:
        raise
    except Exception as e:  # any failure of the user's forward on this input: report the shapes, not a traceback
        want = wanted_input(model)
        raise DataError(f"the {role} ({describe}) rejects input of shape {list(xb.shape)} ({xb.dtype}): "
                        f"{type(e).__name__}: {first_line(e)}" + (f"; it wants {want}" if want else ""),
                        hint="match the data to the model: data.image_size / data.channels, or the model's input layer") from None
    if isinstance(out, (tuple, list)):
        out = out[0]
    if hasattr(out, "logits"):
        out = out.logits
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DataError(f"the {role} ({describe}) returns {shape}, not logits [batch, classes]",
                        hint="the model's forward must return a [batch, classes] tensor")
    if out.shape[1] < num_classes:
        raise DataError(f"the data has {num_classes} classes but the {role} ({describe}) outputs {out.shape[1]}: "
                        f"labels {out.shape[1]}..{num_classes - 1} are outside its outputs",
                        hint="check data.classes / the label column, or build the model with num_classes matching the data")
    return int(out.shape[1])
