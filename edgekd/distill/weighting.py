"""Per-sample weights for the knowledge-distillation (teacher) terms (value schedules: edgekd/distill/options.py).

A weighting scheme turns the teacher's logits (and labels, where known) into one weight per sample;
`soft_label`, `feature`, `attention` and `hidden_state` losses average their per-sample values with
these weights. Every scheme normalizes its weights to mean 1 over the batch, so it changes which
samples the KD term listens to, not the KD term's overall scale (the balance against `hard_label`
set by the recipe's weights stays as written). A language model's samples are its answer tokens
(`topk_weights`: the teacher given as its cached top-k).

Schemes are registered by `kind` in `WEIGHTINGS`; `build_weighting({"kind": ..., **options})`
validates the options (unknown keys are a ConfigError listing the valid ones; the options models are in
edgekd/distill/options.py, read before any stage without torch).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from pydantic import BaseModel

from edgekd.distill.options import WEIGHTING_OPTIONS, TemperatureOptions, WeightingOptions, parse_weighting

WeightFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- weighting schemes


class _Scheme:
    """A weighting scheme: `Options` (pydantic) and `__call__(teacher_logits, labels) -> [B]`."""

    Options: type[WeightingOptions] = WeightingOptions
    kind: str = ""

    def __init__(self, opts: WeightingOptions) -> None:
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
        if WEIGHTING_OPTIONS.get(name) is not cls.Options:
            raise TypeError(f"weighting {name}: its Options must be WEIGHTING_OPTIONS[{name!r}] (edgekd/distill/options.py)")
        cls.kind = name
        WEIGHTINGS[name] = cls
        return cls

    return deco


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

    Options = TemperatureOptions

    def raw(self, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(teacher_logits / self.opts.temperature, dim=1).amax(dim=1)


@register_weighting("teacher_entropy")
class TeacherEntropy(_Scheme):
    """Weight = 1 - H(p_t) / log C (p_t = softmax(t / temperature)), then mean 1.

    Why: the same idea as `teacher_confidence` but judged on the whole distribution: a flat teacher
    output (entropy near log C, weight near 0) says little; a peaked one (entropy near 0, weight near
    1) is trusted. Unlike max-prob it also separates "two plausible classes" from "ten".
    """

    Options = TemperatureOptions

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

    Options = TemperatureOptions

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
        return NoWeighting(WeightingOptions())
    kind, opts = parse_weighting(cfg)
    return WEIGHTINGS[kind](opts)


def topk_weights(fn: WeightFn, values: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Weights [R] for rows whose teacher is given as its top-k (a language model's cached top-k per answer token:
    values [R, k], ids [R, k]): the k candidates are the classes a scheme judges, the label (the answer token) is
    its position among them, -1 where the teacher's top-k does not hold it. So teacher_confidence is the teacher's
    probability of its top token renormalized over its top k, teacher_entropy is normalized by log k, and
    ground_truth_margin compares the answer token with the teacher's best other candidate."""
    with torch.no_grad():
        v = values.detach().float()
        v = torch.where(torch.isfinite(v), v, torch.full_like(v, -1e9))  # a -inf tail (short rows): probability 0
        hit = ids.to(labels.device) == labels[:, None]
        pos = torch.where(hit.any(dim=1), hit.to(torch.int64).argmax(dim=1), torch.full_like(labels, -1))
        return fn(v, pos.to(v.device))

