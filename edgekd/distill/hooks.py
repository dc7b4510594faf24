"""Capture intermediate outputs by module path (`layer3.conv2`, `encoder.layer.5`) with forward hooks.

Addressing features by path lets feature, attention and relation losses work on any model without
the model knowing about distillation (torchdistill's io_dict idea).
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable

import torch
from torch import nn

from edgekd.errors import ConfigError


def resolve_modules(model: nn.Module, paths: Iterable[str]) -> dict[str, nn.Module]:
    """Map each module path to its module; an unknown path raises ConfigError with near matches."""
    modules = dict(model.named_modules())
    out: dict[str, nn.Module] = {}
    for path in paths:
        if path not in modules:
            names = [n for n in modules if n]
            close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
            if close:
                hint = f"did you mean {', '.join(close)}?"
            else:
                shown = ", ".join(names[:20]) + (f", … ({len(names)} in all)" if len(names) > 20 else "")
                hint = f"module paths of {type(model).__name__}: {shown}"
            raise ConfigError(f"{type(model).__name__} has no module '{path}'", hint=hint)
        out[path] = modules[path]
    return out


def _detach(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.detach()
    if isinstance(out, list):
        return [_detach(o) for o in out]
    if isinstance(out, tuple):
        return tuple(_detach(o) for o in out)
    return out  # HF ModelOutput and other containers: left as they are (teacher runs under no_grad anyway)


def select(output: Any, index: int = 0) -> torch.Tensor:
    """The tensor a loss works on: the output itself, or element `index` of a tuple/list/HF ModelOutput.

    Hugging Face layers return tuples (hidden_state, attention_probs, …), so index 0 is the hidden
    state and index 1, where the layer returns it, the attention probabilities.
    """
    if isinstance(output, torch.Tensor):
        if index != 0:
            raise ConfigError(f"output index {index} asked of a module that returns one tensor",
                              hint="drop the loss's `index` option (or set it to 0)")
        return output
    if hasattr(output, "to_tuple"):  # transformers.ModelOutput, without importing transformers
        output = output.to_tuple()
    if isinstance(output, (tuple, list)):
        if not -len(output) <= index < len(output):
            raise ConfigError(f"output index {index} is out of range: the module returns {len(output)} values",
                              hint=f"use an index in 0..{len(output) - 1}")
        item = output[index]
        if isinstance(item, torch.Tensor):
            return item
        raise ConfigError(f"output {index} of the module is {type(item).__name__}, not a tensor",
                          hint="pick another `index`, or enable that output in the model (e.g. output_attentions)")
    raise ConfigError(f"cannot take a tensor from a module output of type {type(output).__name__}",
                      hint="capture a module that returns a tensor or a tuple of tensors")


class FeatureCapture:
    """Context manager: while active, the outputs of the modules at `paths` land in `.features`.

    `features[path]` is the module's raw output (a tensor, or a tuple for many HF layers; use
    `select`). A module called several times in one forward (a shared activation) keeps its LAST
    output. With `detach=True` (teachers) tensors are detached so no graph is kept through them.
    Paths are checked when the object is made, so a typo fails before any compute.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], detach: bool = False) -> None:
        self.model = model
        self.paths = list(dict.fromkeys(paths))  # de-duplicate, keep order
        self.detach = detach
        self._modules = resolve_modules(model, self.paths)
        self._handles: list[Any] = []
        self.features: dict[str, Any] = {}

    def _hook(self, path: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self.features[path] = _detach(output) if self.detach else output

        return hook

    def __enter__(self) -> "FeatureCapture":
        self.features = {}
        self._handles = [m.register_forward_hook(self._hook(p)) for p, m in self._modules.items()]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def missing(self) -> list[str]:
        """Paths whose module did not run during the forward (e.g. a branch not taken)."""
        return [p for p in self.paths if p not in self.features]
