"""The target registry: one package per family (cpu, cuda, mobile, ascend), listed in one table.

Each family says which cards are its own (`TargetFamily.matches`); the registry asks them all and
exactly one must answer. Task code reaches a family only through its hooks (check, convert,
where_profiled, profile_teacher_on_device, resolve), never by comparing family names. `check` runs
every up-front check of the card's family before any stage (the pipeline's pre-flight), so a bad
soc_version, precision mode, opset, format or provider exits 2 within seconds, not after training.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from edgekd.targets.base import Capability, ClassifierPayload, ConvertJob, LanguageModelPayload, TargetFamily

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgekd.config import TargetConfig

__all__ = ["Capability", "ClassifierPayload", "ConvertJob", "LanguageModelPayload", "TargetFamily", "FAMILY_MODULES", "families", "family",
           "family_name", "check", "availability", "build_ready", "split_candidates", "dropped_line", "resolve"]

# The one explicit table: family name -> module defining FAMILY (modules import nothing heavy).
FAMILY_MODULES = {"cpu": "edgekd.targets.cpu", "cuda": "edgekd.targets.cuda", "mobile": "edgekd.targets.mobile",
                  "ascend": "edgekd.targets.ascend"}


def families() -> dict[str, TargetFamily]:
    """Every family, by name, in the table's order (their modules import nothing heavy)."""
    import importlib

    return {name: importlib.import_module(mod).FAMILY for name, mod in FAMILY_MODULES.items()}


def family(target: "TargetConfig") -> TargetFamily:
    """The one family whose `matches` recognises `target`; ConfigError (exit 2) when none or
    several do (a card's runtime/providers combination no family claims, or an overlap)."""
    from edgekd.errors import ConfigError

    fams = families()
    hits = [f for f in fams.values() if f.matches(target)]
    if len(hits) == 1:
        return hits[0]
    claims = "; ".join(f"{f.name}: {f.claims}" for f in fams.values())
    what = f"runtime '{target.runtime}' with providers {', '.join(target.providers) or 'none'}"
    if not hits:
        raise ConfigError(f"target '{target.name}': no target family takes {what}", hint=f"the families take {claims}")
    raise ConfigError(f"target '{target.name}': {what} is claimed by several families ({', '.join(f.name for f in hits)})",
                      hint=f"a family's `matches` must not overlap another's: {claims}")


def family_name(target: "TargetConfig") -> str:
    return family(target).name


def check(target: "TargetConfig") -> None:
    """Every up-front check of the card's family; raises UserError/ConfigError (exit 2)."""
    family(target).check(target)


def check_task(target: "TargetConfig", task: str) -> None:
    """ConfigError (exit 2) when the card's family cannot ship a student of `task` (an edgekd.tasks name)."""
    from edgekd.errors import ConfigError

    fam = family(target)
    if task in fam.tasks:
        return
    why = fam.tasks_hint or f"its converter takes {', '.join(sorted(fam.tasks))}"
    others = [n for n in FAMILY_MODULES if task in _family_of(n).tasks]
    raise ConfigError(f"target '{target.name}' ({fam.name}) does not build {task} recipes: {why}",
                      hint=f"{task} recipes build for the {', '.join(others)} targets (onnxruntime targets; e.g. "
                           f"--target {others[0]})" if others else f"no target family ships {task} students yet")


def _family_of(name: str) -> TargetFamily:
    import importlib

    return importlib.import_module(FAMILY_MODULES[name]).FAMILY


def availability(target: "TargetConfig") -> list[Capability]:
    """(capability, available, reason) rows for `target` on this host; never raises for a missing SDK."""
    return family(target).availability(target)


def build_ready(target: "TargetConfig", rows: list[Capability] | None = None) -> tuple[bool, str]:
    return family(target).ready(target, rows)


def split_candidates(target: "TargetConfig", names: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    """(the candidates in `names` a build for `target` makes, [{variant, kind, reason}] for those
    its family cannot ship), order kept. ConfigError for an unknown name."""
    from edgekd.targets.base import unshippable

    dropped = unshippable(family(target), names)
    out = {d["variant"] for d in dropped}
    return [n for n in names if n not in out], dropped


def dropped_line(target: "TargetConfig", dropped: list[dict[str, str]], kept: list[str]) -> str:
    """One line: which candidates are not built for `target` and why (grouped by reason), what is."""
    by_reason: dict[str, list[str]] = {}
    for d in dropped:
        by_reason.setdefault(d["reason"], []).append(d["variant"])
    why = "; ".join(f"{', '.join(v)}: {r}" for r, v in by_reason.items())
    return f"target {target.name}: not building {', '.join(d['variant'] for d in dropped)} ({why}); building {', '.join(kept)}"


# --------------------------------------------------------------------------- family names as targets


def resolve(ref: str) -> tuple[str, dict[str, object], str | None]:
    """A family name given as --target (ascend, cuda, mobile) -> (card, overrides, one line to print),
    as that family's `resolve` hook decides from this host (the NPU's SoC, the visible GPU, an
    attached phone). Any other name is a card name or path, returned unchanged."""
    fam = families().get(ref)
    if fam is None or fam.resolve is None:
        return ref, {}, None
    return fam.resolve()
