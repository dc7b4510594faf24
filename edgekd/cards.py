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
        raw = apply_overrides(raw, q, RecipeConfig)
    split_over = {k: v for k, v in (overrides or {}).items() if not k.startswith("target.")}
    raw = apply_overrides(raw, split_over, RecipeConfig)
    return validate(RecipeConfig, raw, str(path))


def load_target(ref: str, overrides: dict[str, Any] | None = None, quick: bool = False) -> TargetConfig:
    """Load a target by name or path; --set target.a.b=v overrides its keys; --quick shortens profiling."""
    path = _resolve(ref, "targets")
    raw = read_raw(path)
    t_over = {k[len("target."):]: v for k, v in (overrides or {}).items() if k.startswith("target.")}
    raw = apply_overrides(raw, t_over, TargetConfig)
    target = validate(TargetConfig, raw, str(path))
    if quick:
        prof = {**target.profile.model_dump(), **target.profile.quick}
        raw.setdefault("profile", {}).update(prof)
        raw["profile"].pop("quick", None)
        target = validate(TargetConfig, raw, str(path))
    return target
