"""Built-in architectures, one family per file, registered by name.

`build(arch, **kwargs)` returns a fresh `torch.nn.Module`; an unknown name lists the valid ones.
The family modules are imported through the explicit table below, never by side effect.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any

from edgekd.errors import ConfigError

# name -> "module:factory"; one explicit table, so nothing depends on import order.
ARCHS: dict[str, str] = {
    "resnet_cnn": "edgekd.zoo.cnn:ResNetCNN",
    "small_cnn": "edgekd.zoo.cnn:SmallCNN",
    "mlp": "edgekd.zoo.mlp:MLP",
    "mlp_ensemble": "edgekd.zoo.mlp:MLPEnsemble",
    "hf_text_classifier": "edgekd.zoo.text:HFTextClassifier",
    "bert_student": "edgekd.zoo.text:BertStudent",
}


def build(arch: str, **kwargs: Any):
    """Instantiate a zoo architecture by name."""
    if arch not in ARCHS:
        close = difflib.get_close_matches(arch, list(ARCHS), n=2)
        hint = (f"did you mean {' or '.join(close)}? " if close else "") + f"valid: {', '.join(sorted(ARCHS))}"
        raise ConfigError(f"unknown architecture '{arch}'", hint=hint)
    module, _, factory = ARCHS[arch].partition(":")
    cls = getattr(importlib.import_module(module), factory)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"bad arguments for architecture '{arch}': {e}",
                          hint="check the card's kwargs against the architecture's config") from None


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
