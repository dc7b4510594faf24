"""The typed options of the distillation losses and value schedules, without torch.

A recipe's loss terms (`{kind: soft_label, weight: 0.9, temperature: 4}`) are validated here before any
stage runs (`parse_loss`: an unknown kind or option is a one-line ConfigError naming the valid ones), so a
typo is exit 2 in a fraction of a second; edgekd/distill/losses.py holds the loss modules themselves (torch),
each registered under the same kind with these options.
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgekd.errors import ConfigError

# --------------------------------------------------------------------------- schedules


class Schedule(BaseModel):
    """A value that moves from `start` (progress 0) to `end` (progress 1) along `shape`."""

    model_config = ConfigDict(extra="forbid")
    start: float
    end: float
    shape: Literal["linear", "cosine", "constant"] = "linear"


ScheduleValue = float | Schedule


def parse_schedule(value: Any, what: str = "schedule") -> float | Schedule:
    """Validate a number or a {start, end, shape} mapping; a bad one is a ConfigError."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a number or {{start, end, shape}}, got {value!r}",
                          hint="e.g. 4.0 or {start: 8.0, end: 2.0, shape: cosine}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Mapping):
        try:
            return Schedule.model_validate(dict(value))
        except ValidationError as e:
            err = e.errors()[0]
            raise ConfigError(f"{what}: {'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}",
                              hint="a schedule is {start: X, end: Y, shape: linear|cosine|constant}") from None
    raise ConfigError(f"{what}: expected a number or {{start, end, shape}}, got {type(value).__name__}",
                      hint="e.g. 4.0 or {start: 8.0, end: 2.0, shape: cosine}")


def schedule(value: float | Schedule | Mapping[str, Any], progress: float) -> float:
    """The value at training `progress` in [0, 1] (clamped).

    A plain number is constant. `{start, end}` interpolates linearly; `shape: cosine` follows a half
    cosine (slow at both ends: start + (end - start) * (1 - cos(pi * p)) / 2); `constant` stays at
    `start`. Used for the KD temperature (e.g. anneal 8 → 2) and for an alpha curriculum (a loss's
    `weight_schedule`, e.g. hard_label weight 1 → 0 while soft_label goes 0 → 1).
    """
    v = parse_schedule(value)
    if isinstance(v, float):
        return v
    p = min(1.0, max(0.0, float(progress)))
    if v.shape == "constant":
        return v.start
    frac = p if v.shape == "linear" else (1.0 - math.cos(math.pi * p)) / 2.0
    return v.start + (v.end - v.start) * frac


def options_error(what: str, model: type[BaseModel], e: ValidationError) -> ConfigError:
    """One-line ConfigError from a pydantic error on an options model, listing the valid options."""
    err = e.errors()[0]
    valid = list(model.model_fields)
    loc = ".".join(str(x) for x in err["loc"])
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(err["loc"][-1]), valid, n=1)
        hint = (f"did you mean '{close[0]}'? " if close else "") + f"valid options: {', '.join(valid) or '(none)'}"
        return ConfigError(f"{what}: unknown option '{loc}'", hint=hint)
    return ConfigError(f"{what}: {loc or 'options'}: {err['msg']}", hint=f"valid options: {', '.join(valid) or '(none)'}")


# --------------------------------------------------------------------------- loss options


class LossOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight_schedule: float | Schedule | None = Field(
        None, description="multiplies `weight` by schedule(weight_schedule, progress): an alpha curriculum")

    @field_validator("weight_schedule", mode="before")
    @classmethod
    def _sched(cls, v: Any) -> Any:
        return None if v is None else parse_schedule(v, "weight_schedule")


class SoftOptions(LossOptions):
    temperature: float | Schedule = Field(4.0, description="softmax temperature, or {start, end, shape}")
    standardize: bool = Field(False, description="z-score each sample's logits (student and teacher) before the "
                                                 "temperature: the student matches the shape of the teacher's "
                                                 "logits, not their scale (Sun et al., CVPR 2024)")

    @field_validator("temperature", mode="before")
    @classmethod
    def _temp(cls, v: Any) -> Any:
        v = parse_schedule(v, "temperature")
        lo = v if isinstance(v, float) else min(v.start, v.end)
        if lo <= 0:
            raise ValueError("temperature must be > 0")
        return v


class DecoupledOptions(SoftOptions):
    alpha: float = Field(1.0, ge=0.0, description="weight of TCKD: the binary target vs rest distribution")
    beta: float = Field(8.0, ge=0.0, description="weight of NCKD: the distribution over the non-target classes")


class HardOptions(LossOptions):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


class FeatureOptions(LossOptions):
    student: str = Field(description="student module path")
    teacher: str = Field(description="teacher module path")
    projector: Literal["none", "conv1x1", "linear"] = "none"
    distance: Literal["mse", "cosine"] = "mse"
    index: int = Field(0, description="element of a tuple output (HF layers return tuples)")


class AttentionOptions(LossOptions):
    student: str
    teacher: str
    mode: Literal["at", "attention_kl"] = "at"
    p: float = Field(2.0, gt=0, description="power of |activation| in attention transfer")
    index: int = 0


class HiddenOptions(LossOptions):
    layers: list[tuple[str, str]] = Field(min_length=1, description="[[student_path, teacher_path], ...]")
    distance: Literal["mse", "cosine"] = "mse"
    index: int = 0


class RelationOptions(LossOptions):
    student: str
    teacher: str
    mode: Literal["rkd_distance", "rkd_angle", "similarity"] = "rkd_distance"
    index: int = 0


# kind -> its options model (edgekd/distill/losses.py registers a loss module under each kind)
LOSS_OPTIONS: dict[str, type[LossOptions]] = {
    "soft_label": SoftOptions,
    "decoupled": DecoupledOptions,
    "hard_label": HardOptions,
    "feature": FeatureOptions,
    "attention": AttentionOptions,
    "hidden_state": HiddenOptions,
    "relation": RelationOptions,
}

def parse_loss(cfg: Any) -> tuple[str, float, LossOptions]:
    """(kind, weight, typed options) of one recipe loss term; unknown kinds and options are ConfigErrors."""
    raw = cfg.model_dump() if isinstance(cfg, BaseModel) else dict(cfg)
    kind = raw.pop("kind", None)
    weight = float(raw.pop("weight", 1.0))
    if kind not in LOSS_OPTIONS:
        valid = sorted(LOSS_OPTIONS)
        close = difflib.get_close_matches(str(kind), valid, n=1)
        hint = (f"did you mean '{close[0]}'? " if close else "") + f"valid kinds: {', '.join(valid)}"
        raise ConfigError(f"unknown loss kind {kind!r}", hint=hint)
    if not math.isfinite(weight):
        raise ConfigError(f"loss '{kind}': weight {weight} is not finite", hint="use a finite number, e.g. 0.5")
    options = LOSS_OPTIONS[kind]
    try:
        opts = options.model_validate(raw)
    except ValidationError as e:
        raise options_error(f"loss '{kind}'", options, e) from None
    return kind, weight, opts

# The kinds that read logits only (no activations): what an ONNX teacher, the teacher-logit cache and QAT can drive.
LOGIT_LOSSES = ("soft_label", "hard_label", "decoupled")


# --------------------------------------------------------------------------- per-sample weighting options


class WeightingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TemperatureOptions(WeightingOptions):
    temperature: float = Field(1.0, gt=0, description="teacher softmax temperature used to judge confidence")


# kind -> its options model (edgekd/distill/weighting.py registers the scheme under each kind)
WEIGHTING_OPTIONS: dict[str, type[WeightingOptions]] = {
    "none": WeightingOptions,
    "teacher_confidence": TemperatureOptions,
    "teacher_entropy": TemperatureOptions,
    "ground_truth_margin": TemperatureOptions,
}


def parse_weighting(cfg: Any) -> tuple[str, WeightingOptions]:
    """(kind, typed options) of `distill.weighting` ({kind, ...options}); unknown kinds and options are ConfigErrors."""
    raw = cfg.model_dump() if isinstance(cfg, BaseModel) else dict(cfg)
    kind = raw.pop("kind", None)
    if kind not in WEIGHTING_OPTIONS:
        valid = sorted(WEIGHTING_OPTIONS)
        close = difflib.get_close_matches(str(kind), valid, n=1)
        hint = (f"did you mean '{close[0]}'? " if close else "") + f"valid kinds: {', '.join(valid)}"
        raise ConfigError(f"unknown weighting kind {kind!r}", hint=hint)
    options = WEIGHTING_OPTIONS[kind]
    try:
        return kind, options.model_validate(raw)
    except ValidationError as e:
        raise options_error(f"weighting '{kind}'", options, e) from None
