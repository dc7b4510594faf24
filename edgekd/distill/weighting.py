"""Per-sample weights for the knowledge-distillation (teacher) terms, and value schedules.

A weighting scheme turns the teacher's logits (and labels, where known) into one weight per sample;
`soft_label`, `feature`, `attention` and `hidden_state` losses average their per-sample values with
these weights. Every scheme normalizes its weights to mean 1 over the batch, so it changes which
samples the KD term listens to, not the KD term's overall scale (the balance against `hard_label`
set by the recipe's weights stays as written).

Schemes are registered by `kind` in `WEIGHTINGS`; `build_weighting({"kind": ..., **options})`
validates the options (unknown keys are a ConfigError listing the valid ones).
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Literal, Mapping

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekd.errors import ConfigError

WeightFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _Opts(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


# --------------------------------------------------------------------------- weighting schemes


class _Scheme:
    """A weighting scheme: `Options` (pydantic) and `__call__(teacher_logits, labels) -> [B]`."""

    Options: type[_Opts] = _Opts
    kind: str = ""

    def __init__(self, opts: _Opts) -> None:
        self.opts = opts

    def raw(self, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            w = self.raw(teacher_logits.detach().float(), labels).clamp_min(0.0)
            return normalize_mean_one(w)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.opts!r})"


def normalize_mean_one(w: torch.Tensor) -> torch.Tensor:
    """Scale weights to mean 1; an all-zero (or empty) batch gets uniform weights instead of NaN."""
    m = w.mean() if w.numel() else w.new_tensor(0.0)
    if not torch.isfinite(m) or float(m) <= 1e-12:
        return torch.ones_like(w)
    return w / m


WEIGHTINGS: dict[str, type[_Scheme]] = {}


def register_weighting(name: str) -> Callable[[type[_Scheme]], type[_Scheme]]:
    def deco(cls: type[_Scheme]) -> type[_Scheme]:
        cls.kind = name
        WEIGHTINGS[name] = cls
        return cls

    return deco


class _TempOpts(_Opts):
    temperature: float = Field(1.0, gt=0, description="teacher softmax temperature used to judge confidence")


@register_weighting("none")
class NoWeighting(_Scheme):
    """Every sample weighs 1: plain batch-mean KD (the default)."""

    def raw(self, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.ones(teacher_logits.shape[0], device=teacher_logits.device)


@register_weighting("teacher_confidence")
class TeacherConfidence(_Scheme):
    """Weight = the teacher's top class probability, max softmax(t / temperature), then mean 1.

    Why: where the teacher is unsure its soft labels carry more of its own error than dark
    knowledge; listening more to confident samples keeps a weak teacher's mistakes out of the student
    (confidence-aware KD). The mean-1 normalization keeps the KD term's scale unchanged.
    """

    Options = _TempOpts

    def raw(self, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(teacher_logits / self.opts.temperature, dim=1).amax(dim=1)


@register_weighting("teacher_entropy")
class TeacherEntropy(_Scheme):
    """Weight = 1 - H(p_t) / log C (p_t = softmax(t / temperature)), then mean 1.

    Why: the same idea as `teacher_confidence` but judged on the whole distribution: a flat teacher
    output (entropy near log C, weight near 0) says little; a peaked one (entropy near 0, weight near
    1) is trusted. Unlike max-prob it also separates "two plausible classes" from "ten".
    """

    Options = _TempOpts

    def raw(self, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        c = teacher_logits.shape[1]
        if c < 2:
            return torch.ones(teacher_logits.shape[0], device=teacher_logits.device)
        logp = torch.log_softmax(teacher_logits / self.opts.temperature, dim=1)
        h = -(logp.exp() * logp).sum(dim=1)
        return 1.0 - h / math.log(c)


@register_weighting("ground_truth_margin")
class GroundTruthMargin(_Scheme):
    """Weight = (1 + margin) / 2, margin = p_t[label] - max over other classes of p_t; then mean 1.

    Why: where the teacher is WRONG on a labeled sample (negative margin) its soft label teaches the
    student the mistake, so those samples are down-weighted (a confidently wrong teacher gives weight
    near 0); where it is right by a wide margin, up-weighted. Samples without a label (label -1,
    when data.label_fraction < 1) have no margin and get the mean weight of the labeled samples in the
    batch (neutral), or 1 if none is labeled.
    """

    Options = _TempOpts

    def raw(self, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(teacher_logits / self.opts.temperature, dim=1)
        labels = labels.to(p.device).long()
        known = labels >= 0
        safe = labels.clamp_min(0)
        p_true = p.gather(1, safe[:, None])[:, 0]
        others = p.scatter(1, safe[:, None], float("-inf")).amax(dim=1)
        w = (1.0 + p_true - others) / 2.0
        fill = w[known].mean() if bool(known.any()) else w.new_tensor(1.0)
        return torch.where(known, w, fill)


def build_weighting(cfg: Mapping[str, Any] | BaseModel | None) -> WeightFn:
    """A callable (teacher_logits [B, C], labels [B]) -> weights [B] with mean 1.

    `cfg` is None (no weighting) or a mapping with `kind` and the scheme's options.
    """
    if cfg is None:
        return NoWeighting(_Opts())
    raw = cfg.model_dump() if isinstance(cfg, BaseModel) else dict(cfg)
    kind = raw.pop("kind", None)
    if kind not in WEIGHTINGS:
        valid = sorted(WEIGHTINGS)
        close = difflib.get_close_matches(str(kind), valid, n=1)
        hint = (f"did you mean '{close[0]}'? " if close else "") + f"valid kinds: {', '.join(valid)}"
        raise ConfigError(f"unknown weighting kind {kind!r}", hint=hint)
    cls = WEIGHTINGS[kind]
    try:
        opts = cls.Options.model_validate(raw)
    except ValidationError as e:
        raise options_error(f"weighting '{kind}'", cls.Options, e) from None
    return cls(opts)


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
