"""The target registry: one module per family (cpu, cuda, mobile, ascend), listed in one table.

A card's family follows from its runtime and providers. `check` runs every up-front check of the
card's family before any stage (the pipeline's pre-flight), so a bad soc_version, precision mode,
opset, format or provider exits 2 within seconds, not after training.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from edgekd.targets.base import Capability, ConvertJob, TargetFamily

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgekd.config import TargetConfig

__all__ = ["Capability", "ConvertJob", "TargetFamily", "FAMILY_MODULES", "family", "family_name", "check",
           "availability", "build_ready"]

# The one explicit table: family name -> module defining FAMILY (modules import nothing heavy).
FAMILY_MODULES = {"cpu": "edgekd.targets.cpu", "cuda": "edgekd.targets.cuda", "mobile": "edgekd.targets.mobile",
                  "ascend": "edgekd.targets.ascend"}


def family_name(target: "TargetConfig") -> str:
    if target.runtime == "ascend":
        return "ascend"
    if target.runtime == "executorch":
        return "mobile"
    if target.runtime == "torch" or "CUDAExecutionProvider" in target.providers:
        return "cuda"
    return "cpu"


def family(target: "TargetConfig") -> TargetFamily:
    import importlib

    return importlib.import_module(FAMILY_MODULES[family_name(target)]).FAMILY


def check(target: "TargetConfig") -> None:
    """Every up-front check of the card's family; raises UserError/ConfigError (exit 2)."""
    family(target).check(target)


def availability(target: "TargetConfig") -> list[Capability]:
    """(capability, available, reason) rows for `target` on this host; never raises for a missing SDK."""
    return family(target).availability(target)


def build_ready(target: "TargetConfig", rows: list[Capability] | None = None) -> tuple[bool, str]:
    return family(target).ready(target, rows)
