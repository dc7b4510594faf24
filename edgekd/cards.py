"""Find and load recipe cards (models/*.yaml) and target cards (targets/*.toml) by name or path.

Shipped cards live in the top-level `models/` and `targets/` folders of the source tree; the wheel
carries them as the data packages `edgekd._cards.models` / `edgekd._cards.targets` (see
pyproject.toml), so `edgekd build --target cpu` works from any directory after `pip install .`.
"""
from __future__ import annotations

import difflib
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from edgekd.config import RecipeConfig, TargetConfig, apply_overrides, validate
from edgekd.errors import ConfigError

_SRC_ROOT = Path(__file__).resolve().parent.parent
# Settings every --quick build gets before the recipe's own quick block and the user's --set.
# The quantized teacher (evaluate.quantized_teacher) exports and times the teacher again: off unless asked for.
QUICK_DEFAULTS: dict[str, Any] = {"distill.control": False, "evaluate.quantized_teacher": []}


def shipped_dir(kind: str) -> Path:
    src = _SRC_ROOT / kind
    if src.is_dir() and (_SRC_ROOT / "pyproject.toml").is_file():
        return src
    return Path(str(resources.files("edgekd._cards") / kind))


def shipped(kind: str) -> dict[str, Path]:
    """Shipped cards of a kind ('models' or 'targets'), by name."""
    ext = ".yaml" if kind == "models" else ".toml"
    d = shipped_dir(kind)
    return {p.stem: p for p in sorted(d.glob(f"*{ext}"))} if d.is_dir() else {}


def _resolve(ref: str, kind: str) -> Path:
    p = Path(ref).expanduser()
    if p.suffix in (".yaml", ".yml", ".toml") or "/" in ref:
        if not p.is_file():
            raise ConfigError(f"card file not found: {ref}", hint="give a shipped card name or an existing file path")
        return p
    cards = shipped(kind)
    if ref not in cards:
        what = "recipe" if kind == "models" else "target"
        close = difflib.get_close_matches(ref, list(cards), n=2)
        hint = (f"did you mean {' or '.join(close)}? " if close else "") + f"shipped {what}s: {', '.join(cards) or 'none'}"
        raise ConfigError(f"unknown {what} '{ref}'", hint=hint)
    return cards[ref]


def card_file(ref: str) -> Path:
    """The file of a recipe card given by name or path (the build copies it as its record)."""
    return _resolve(ref, "models")


def read_raw(path: Path) -> dict[str, Any]:
    """Parse a card file (YAML safe_load or TOML): data only, never code."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start} is 0x{e.object[e.start]:02x})",
                          hint="save the card as UTF-8; cards are YAML or TOML text") from None
    except OSError as e:
        raise ConfigError(f"cannot read card {path}: {e.strerror or e}", hint="check the path and its permissions") from None
    if path.suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}", hint="check the card's syntax") from None
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}", hint="check indentation and quoting in the recipe") from None
    return data if data is not None else {}


def load_recipe(ref: str, overrides: dict[str, Any] | None = None, quick: bool = False) -> RecipeConfig:
    """Load a recipe by name or path; apply its `quick` block (with --quick) then the user's overrides."""
    path = _resolve(ref, "models")
    raw = read_raw(path)
    if quick:
        q = raw.get("quick") or {}
        if not isinstance(q, dict):
            raise ConfigError(f"{path}: 'quick' must be a mapping of dotted keys to values", hint="see models/fashion-cnn.yaml")
        # --quick is for smoke tests: the labels-only control would double the distill time, so it is
        # off unless the recipe's quick block or --set asks for it (both are applied after this default).
        raw = apply_overrides(raw, {**QUICK_DEFAULTS, **q}, RecipeConfig)
        q = {**QUICK_DEFAULTS, **q}
    else:
        q = {}
    split_over = {k: v for k, v in (overrides or {}).items() if not k.startswith("target.")}
    raw = apply_overrides(raw, split_over, RecipeConfig)
    recipe = validate(RecipeConfig, raw, str(path))
    if recipe.teacher.uses_shipped:
        # The shipped weights are what the card's teacher settings made: an override of those
        # settings asks for another teacher, which the weights are not. Say so rather than
        # silently measure the shipped one.
        def teacher_keys(over: dict[str, Any]) -> list[str]:
            return [k for k in over if k.startswith("teacher.") and not k.startswith("teacher.shipped")
                    and k != "teacher.retrain"]

        shipped_as = f"the teacher whose weights ship with {path.name} ({recipe.teacher.shipped.path})"
        if teacher_keys(split_over):
            raise ConfigError(f"--set {teacher_keys(split_over)[0]} changes {shipped_as}, which would be used unchanged",
                              hint="add --set teacher.retrain=true to train the teacher with your settings, "
                                   "or drop the override to use the shipped weights")
        if teacher_keys(q):
            raise ConfigError(f"{path.name}: its quick block sets {teacher_keys(q)[0]}, a setting of {shipped_as}",
                              hint="add `teacher.retrain: true` to the quick block (a quick build then trains its "
                                   "own teacher), or drop the setting")
    # shipped teacher weights lie beside the card (models/weights/ in the source tree and the wheel)
    for t in (recipe.teacher, *recipe.distill.extra_teachers, *(task.teacher for task in recipe.distill.tasks)):
        t._card_dir = path.resolve().parent
    return recipe


def load_target(ref: str, overrides: dict[str, Any] | None = None, quick: bool = False) -> TargetConfig:
    """Load a target by name or path; --set target.a.b=v overrides its keys; --quick shortens profiling
    (its [profile.quick] table, then the user's overrides again: they win, as for recipes)."""
    path = _resolve(ref, "targets")
    raw = read_raw(path)
    t_over = {k[len("target."):]: v for k, v in (overrides or {}).items() if k.startswith("target.")}
    raw = apply_overrides(raw, t_over, TargetConfig)
    target = validate(TargetConfig, raw, str(path))
    if quick:
        prof = {**target.profile.model_dump(), **target.profile.quick}
        raw.setdefault("profile", {}).update(prof)
        raw["profile"].pop("quick", None)
        # then the user's --set again, as for recipes: `--quick --set target.profile.min_runs=10` means 10
        again = {k: v for k, v in t_over.items() if not k.startswith("profile.quick")}
        target = validate(TargetConfig, apply_overrides(raw, again, TargetConfig), str(path))
    return target
