"""Distillation losses: a registry of loss kinds and `LossSet`, the weighted sum the trainer calls.

A recipe lists loss terms (`{kind: soft_label, weight: 0.9, temperature: 4}`); `build_losses`
validates each term's options with the kind's own pydantic model (edgekd/distill/options.py, torch-free: the
recipe's terms are checked there before any stage; extra keys are an error listing the valid options), probes the student and teacher once on an example batch with forward hooks to
learn feature shapes (to size projectors and reject mismatches before training starts), and returns
a `LossSet` (an nn.Module: its learned projectors must go into the optimizer).

Per-sample weights (`LossContext.sample_weight`, mean 1 from edgekd.distill.weighting) scale the
teacher terms that decompose per sample: soft_label, decoupled, feature, attention, hidden_state. `relation`
losses compare samples with each other, so they do not use them; `hard_label` uses no teacher.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgekd.distill.hooks import FeatureCapture, select
from edgekd.distill.options import (LOSS_OPTIONS, AttentionOptions, DecoupledOptions, FeatureOptions, HardOptions,
                                    HiddenOptions, LossOptions, RelationOptions, SoftOptions, parse_loss,
                                    schedule)
from edgekd.errors import ConfigError, StageError


@dataclass
class LossContext:
    student_logits: Tensor  # [B, C]; for a language model B is the answer tokens of the batch
    teacher_logits: Tensor | None  # [B, C], detached; None when no teacher (or given as teacher_topk)
    labels: Tensor  # [B] long; -1 = no label for this sample
    student_features: dict[str, Any]  # module path -> captured output
    teacher_features: dict[str, Any]
    sample_weight: Tensor | None = None  # [B]; scales KD (teacher) terms only
    progress: float = 0.0  # training progress in [0, 1] for schedules
    # The teacher as its top-k only: (values [B, k], class/token ids [B, k]), e.g. a language
    # model's cached top-k per answer token, where the full [B, vocab] would not fit in memory.
    teacher_topk: tuple[Tensor, Tensor] | None = None


# --------------------------------------------------------------------------- registry and base


class Loss(nn.Module):
    """One loss term. Subclasses set `Options` and implement `forward(ctx) -> scalar`."""

    Options: type[LossOptions] = LossOptions
    kind: str = ""

    def __init__(self, opts: LossOptions, s_feats: dict[str, Any], t_feats: dict[str, Any],
                 device: torch.device) -> None:
        super().__init__()
        self.opts = opts

    @classmethod
    def paths(cls, opts: LossOptions) -> tuple[set[str], set[str]]:
        """(student paths, teacher paths) whose outputs this loss reads."""
        return set(), set()

    @classmethod
    def needs_teacher_logits(cls) -> bool:
        return False

    def adopt_unit_map(self, unit_map: dict[str, dict[str, Any]]) -> None:
        """A student cut out of the teacher (structured pruning) says, per module path, which of
        the teacher's units its outputs are: {"channels": idx} of the hidden dim, {"heads": idx,
        "source": teacher path}. Terms that can use it (aligned projectors, matched heads) do."""


LOSSES: dict[str, type[Loss]] = {}


def register(name: str) -> Callable[[type[Loss]], type[Loss]]:
    def deco(cls: type[Loss]) -> type[Loss]:
        if LOSS_OPTIONS.get(name) is not cls.Options:
            raise TypeError(f"loss {name}: its Options must be LOSS_OPTIONS[{name!r}] (edgekd/distill/options.py)")
        cls.kind = name
        LOSSES[name] = cls
        return cls

    return deco


def _zero(like: Tensor) -> Tensor:
    # A zero that keeps the graph, so backward() and DDP's reducer see every parameter used.
    return like.sum() * 0.0


def weighted_mean(per_sample: Tensor, w: Tensor | None) -> Tensor:
    """sum_i w_i * l_i / B: batch mean with per-sample weights (weights average 1 by construction)."""
    if w is None:
        return per_sample.mean()
    w = w.to(per_sample.device, per_sample.dtype).detach()
    if w.shape != per_sample.shape:
        raise StageError(f"sample weights have shape {tuple(w.shape)}, the batch {tuple(per_sample.shape)}",
                         hint="the weighting scheme must return one weight per sample")
    return (w * per_sample).sum() / per_sample.shape[0]


def _feature(feats: dict[str, Any], path: str, index: int, side: str) -> Tensor:
    if path not in feats:
        raise StageError(f"{side} feature '{path}' was not captured in this step",
                         hint="the module did not run in forward (a branch not taken?); pick another path")
    return select(feats[path], index).float()


def _channel_dim(shape: tuple[int, ...]) -> int:
    """Feature (channel/hidden) dimension: dim 1 of an NCHW map, the last dim otherwise."""
    return 1 if len(shape) == 4 else len(shape) - 1


def _pool_to(x: Tensor, size: tuple[int, ...]) -> Tensor:
    """Adaptive-average-pool the non-batch, non-channel dims of x down to `size`."""
    if x.dim() == 4:
        return x if tuple(x.shape[2:]) == size else F.adaptive_avg_pool2d(x, size)
    if x.dim() == 3:  # [B, L, D]: pool over tokens
        if x.shape[1] == size[0]:
            return x
        return F.adaptive_avg_pool1d(x.transpose(1, 2), size[0]).transpose(1, 2)
    return x


def _spatial(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 4:
        return tuple(shape[2:])
    if len(shape) == 3:
        return (shape[1],)
    return ()


def _align(s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Pool the larger spatial/token extent to the smaller, per dimension."""
    ss, ts = _spatial(tuple(s.shape)), _spatial(tuple(t.shape))
    if ss == ts:
        return s, t
    size = tuple(min(a, b) for a, b in zip(ss, ts))
    return _pool_to(s, size), _pool_to(t, size)


class _ChannelProjector(nn.Module):
    """Learned map of the student's channel/hidden dim to the teacher's (1x1 conv == per-position linear)."""

    def __init__(self, cin: int, cout: int, rank: int) -> None:
        super().__init__()
        self.rank = rank
        self.proj = nn.Conv2d(cin, cout, 1) if rank == 4 else nn.Linear(cin, cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


def _fmt(shape: tuple[int, ...]) -> str:
    """A feature shape for messages, batch dim shown as B (the probe's batch size means nothing)."""
    return "[" + ", ".join(["B", *map(str, shape[1:])]) + "]"


def _make_projector(kind: str, s_shape: tuple[int, ...], t_shape: tuple[int, ...], what: str) -> nn.Module | None:
    """Projector for a student->teacher feature pair, or None; ConfigError on an impossible pair."""
    if len(s_shape) != len(t_shape):
        raise ConfigError(f"{what}: student feature {_fmt(s_shape)} and teacher feature {_fmt(t_shape)} differ in rank",
                          hint="pick module paths whose outputs have the same layout (both NCHW maps or both vectors)")
    if len(s_shape) < 2 or len(s_shape) > 4:
        raise ConfigError(f"{what}: features of rank {len(s_shape)} ({_fmt(s_shape)}) are not supported",
                          hint="use [B, D], [B, L, D] or [B, C, H, W] outputs")
    cs, ct = s_shape[_channel_dim(s_shape)], t_shape[_channel_dim(t_shape)]
    if kind == "none":
        if cs != ct:
            sug = "conv1x1" if len(s_shape) == 4 else "linear"
            raise ConfigError(
                f"{what}: student feature {_fmt(s_shape)} and teacher feature {_fmt(t_shape)} differ "
                f"({cs} vs {ct} channels) and projector is none",
                hint=f"set `projector: {sug}` to learn a map from the student's {cs} to the teacher's {ct}")
        return None
    if kind == "conv1x1" and len(s_shape) != 4:
        raise ConfigError(f"{what}: projector conv1x1 needs NCHW feature maps, got {_fmt(s_shape)}",
                          hint="use `projector: linear` for [B, D] or [B, L, D] features")
    return _ChannelProjector(cs, ct, len(s_shape))


def _per_sample_distance(s: Tensor, t: Tensor, distance: str) -> Tensor:
    """[B] distance between aligned features: mean squared error, or 1 - cosine of flattened vectors."""
    s2, t2 = s.flatten(1), t.flatten(1)
    if distance == "mse":
        return (s2 - t2).pow(2).mean(dim=1)
    return 1.0 - F.cosine_similarity(s2, t2, dim=1, eps=1e-8)


# --------------------------------------------------------------------------- logit losses


@register("soft_label")
class SoftLabel(Loss):
    """Hinton KD: T^2 * KL(softmax(t/T) || softmax(s/T)), per-sample weighted batch mean.

    The T^2 factor keeps gradient magnitudes comparable across temperatures. Teacher probabilities
    of exactly 0 (a top-k cache read with a -inf tail) contribute 0, not NaN.

    Token-level KD (text-generation recipes) is this same term over the answer tokens of a batch,
    with the teacher given as its top-k per token (`LossContext.teacher_topk`): the teacher's
    distribution is softmax(v/T) over its k ids (renormalized, the rest 0) and the student's
    log-probabilities over the full vocabulary are read at those ids, so the student's mass moves
    onto the teacher's candidates in the teacher's proportions.
    """

    Options = SoftOptions

    @classmethod
    def needs_teacher_logits(cls) -> bool:
        return True

    def temperature(self, progress: float) -> float:
        return schedule(self.opts.temperature, progress)

    def forward(self, ctx: LossContext) -> Tensor:
        t_ = self.temperature(ctx.progress)
        if ctx.teacher_logits is None and ctx.teacher_topk is not None:
            return token_kd(ctx.student_logits, *ctx.teacher_topk, t_, ctx.sample_weight)
        s_logits, t_logits = _class_logits(ctx, self.opts.standardize)
        log_ps = F.log_softmax(s_logits / t_, dim=1)
        pt = F.softmax(t_logits / t_, dim=1)
        kl = (torch.special.xlogy(pt, pt) - pt * log_ps).sum(dim=1)
        return weighted_mean(kl, ctx.sample_weight) * (t_ * t_)


def _standardize(z: Tensor) -> Tensor:
    """Each row's logits minus their mean, over their standard deviation (a constant row stays 0)."""
    z = z - z.mean(dim=1, keepdim=True)
    return z / z.std(dim=1, keepdim=True).clamp_min(1e-6)


def _class_logits(ctx: LossContext, standardize: bool) -> tuple[Tensor, Tensor]:
    """(student, teacher) logits [B, C] in fp32 on the student's device, z-scored per row if asked."""
    if ctx.teacher_logits is None:
        raise StageError("this loss needs the teacher's logits but none were given",
                         hint="distill with a teacher model or a teacher-logit cache")
    s = ctx.student_logits.float()
    t = ctx.teacher_logits.detach().to(s.device).float()  # cached logits arrive on the CPU
    if not standardize:
        return s, t
    if not bool(torch.isfinite(t).all()):
        raise StageError("standardize needs the teacher's logit of every class, but the teacher-logit cache holds "
                         "its top-k only", hint="set distill.teacher_cache.top_k: null, or standardize: false")
    return _standardize(s), _standardize(t)


@register("decoupled")
class Decoupled(SoftLabel):
    """Decoupled KD (DKD, Zhao et al., CVPR 2022): T^2 * (alpha * TCKD + beta * NCKD), per-sample weighted mean.

    Hinton's KL at temperature T splits exactly into TCKD, the KL of the binary (target, rest)
    probabilities, plus (1 - p_t(target)) * NCKD, the KL of the distributions renormalised over the
    non-target classes. The factor (1 - p_t(target)) mutes NCKD, the "dark knowledge", on every sample
    the teacher is sure of, which after training is most of them; DKD weights the two parts
    independently. With alpha = 1 and beta = 1 - p_t(target) per sample it is soft_label.

    The target is the sample's label; unlabeled samples (label -1) take the teacher's argmax. Computed in
    log space throughout, so a confident teacher or student does not give log(0); a teacher probability
    of 0 (a top-k cache's -inf tail) adds 0.
    """

    Options = DecoupledOptions

    def forward(self, ctx: LossContext) -> Tensor:
        t_ = self.temperature(ctx.progress)
        s_logits, t_logits = _class_logits(ctx, self.opts.standardize)
        labels = ctx.labels.to(s_logits.device).long()
        mask = F.one_hot(torch.where(labels >= 0, labels, t_logits.argmax(dim=1)), s_logits.shape[1]).bool()
        log_ps, log_pt = F.log_softmax(s_logits / t_, dim=1), F.log_softmax(t_logits / t_, dim=1)
        (s_in, s_out), (t_in, t_out) = _split_log_probs(log_ps, mask), _split_log_probs(log_pt, mask)
        tckd = _kl_terms(t_in, s_in) + _kl_terms(t_out, s_out)  # binary (target, rest)
        # over the non-target classes, renormalised: log p(j | not target); the target column adds nothing
        nckd = _kl_terms((log_pt - t_out[:, None]).masked_fill(mask, float("-inf")),
                         log_ps - s_out[:, None]).sum(dim=1)
        per = self.opts.alpha * tckd + self.opts.beta * nckd
        return weighted_mean(per, ctx.sample_weight) * (t_ * t_)


def _split_log_probs(log_p: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(log p(target), log p(not target)) per row from log-probabilities [B, C] and the target mask."""
    target = log_p.masked_fill(~mask, float("-inf")).logsumexp(dim=1)
    rest = log_p.masked_fill(mask, float("-inf")).logsumexp(dim=1)
    return target, rest


def _kl_terms(log_p: Tensor, log_q: Tensor) -> Tensor:
    """p * (log p - log q) elementwise, 0 where p = 0 (a -inf teacher logit, e.g. a top-k cache's tail)."""
    return torch.where(log_p > float("-inf"), log_p.exp() * (log_p - log_q), torch.zeros_like(log_p))


def token_kd(student_logits: Tensor, t_values: Tensor, t_indices: Tensor, temperature: float,
             sample_weight: Tensor | None = None) -> Tensor:
    """T^2 * KL(softmax(t_values/T) over the teacher's top-k || student softmax at T read at t_indices),
    weighted mean over rows. Shapes: [R, V], [R, k], [R, k] (rows = tokens)."""
    log_ps = F.log_softmax(student_logits.float() / temperature, dim=-1)
    pt = F.softmax(t_values.detach().to(log_ps.device).float() / temperature, dim=-1)
    log_ps_k = log_ps.gather(-1, t_indices.to(log_ps.device).long())
    kl = (torch.special.xlogy(pt, pt) - pt * log_ps_k).sum(dim=-1)
    return weighted_mean(kl, sample_weight) * (temperature * temperature)


@register("hard_label")
class HardLabel(Loss):
    """Cross-entropy on ground-truth labels (with label smoothing), mean over labeled samples only.

    Labels of -1 (hidden by data.label_fraction) are ignored; a batch without any label gives 0.
    """

    Options = HardOptions

    def forward(self, ctx: LossContext) -> Tensor:
        logits = ctx.student_logits.float()
        labels = ctx.labels.to(logits.device).long()
        if not bool((labels >= 0).any()):
            return _zero(logits)
        return F.cross_entropy(logits, labels, ignore_index=-1, label_smoothing=self.opts.label_smoothing)


# --------------------------------------------------------------------------- feature losses


@register("feature")
class FeatureHint(Loss):
    """FitNets hint: distance(projector(student feature), teacher feature).

    The projector (student -> teacher channels; conv1x1 on NCHW maps, linear on the last dim) is
    learned with the student. When spatial sizes (or token counts) differ, the larger is adaptive-
    average-pooled to the smaller. Channel mismatch with `projector: none` is a ConfigError.
    """

    Options = FeatureOptions

    def __init__(self, opts: FeatureOptions, s_feats: dict[str, Any], t_feats: dict[str, Any],
                 device: torch.device) -> None:
        super().__init__(opts, s_feats, t_feats, device)
        s_shape = tuple(select(s_feats[opts.student], opts.index).shape)
        t_shape = tuple(select(t_feats[opts.teacher], opts.index).shape)
        what = f"feature loss {opts.student} -> {opts.teacher}"
        self.projector = _make_projector(opts.projector, s_shape, t_shape, what)
        if self.projector is not None:
            self.projector.to(device)

    @classmethod
    def paths(cls, opts: FeatureOptions) -> tuple[set[str], set[str]]:
        return {opts.student}, {opts.teacher}

    def forward(self, ctx: LossContext) -> Tensor:
        o = self.opts
        s = _feature(ctx.student_features, o.student, o.index, "student")
        t = _feature(ctx.teacher_features, o.teacher, o.index, "teacher").detach()
        s, t = _align(s, t)
        if self.projector is not None:
            s = self.projector(s)
        return weighted_mean(_per_sample_distance(s, t, o.distance), ctx.sample_weight)


@register("attention")
class AttentionTransfer(Loss):
    """Attention transfer between feature maps, or KL between transformer attention distributions.

    mode `at` (NCHW maps or [B, L, D] tokens): per sample, mean over positions of the squared
    difference of the normalized attention maps (Zagoruyko's reference code); spatial sizes are
    aligned by adaptive average pooling of the maps (before normalization); channels may differ.
    mode `attention_kl` (attention probabilities [B, H, L, L]): KL(teacher row || student row),
    averaged over heads and query positions (MiniLM); if head counts differ, each side is averaged
    over its heads first. Sequence lengths must match.
    """

    Options = AttentionOptions

    def __init__(self, opts: AttentionOptions, s_feats: dict[str, Any], t_feats: dict[str, Any],
                 device: torch.device) -> None:
        super().__init__(opts, s_feats, t_feats, device)
        s_shape = tuple(select(s_feats[opts.student], opts.index).shape)
        t_shape = tuple(select(t_feats[opts.teacher], opts.index).shape)
        what = f"attention loss {opts.student} -> {opts.teacher}"
        self._head_counts = (s_shape[1], t_shape[1]) if len(s_shape) == 4 and len(t_shape) == 4 else None
        if opts.mode == "attention_kl":
            for side, shp in (("student", s_shape), ("teacher", t_shape)):
                if len(shp) != 4 or shp[-1] != shp[-2]:
                    raise ConfigError(f"{what}: mode attention_kl needs attention probabilities [B, H, L, L], "
                                      f"the {side} gives {_fmt(shp)}",
                                      hint="capture the module (or `index`) that outputs attention probabilities, "
                                           "or use mode: at for feature maps")
            if s_shape[-1] != t_shape[-1]:
                raise ConfigError(f"{what}: sequence lengths differ ({s_shape[-1]} vs {t_shape[-1]})",
                                  hint="feed student and teacher the same tokenized inputs")
        else:
            if len(s_shape) not in (3, 4) or len(t_shape) != len(s_shape):
                raise ConfigError(f"{what}: mode at needs NCHW maps or [B, L, D] tokens on both sides, "
                                  f"got {_fmt(s_shape)} and {_fmt(t_shape)}",
                                  hint="pick convolutional/transformer block outputs, or use the feature loss")

    @classmethod
    def paths(cls, opts: AttentionOptions) -> tuple[set[str], set[str]]:
        return {opts.student}, {opts.teacher}

    def adopt_unit_map(self, unit_map: dict[str, dict[str, Any]]) -> None:
        # A pruned student's head h is the teacher's head idx[h] of the layer it was cut from: match
        # head to head (not head-averaged maps) when this term reads exactly that teacher layer.
        # The map is checked once here against the probed head counts, not on every step.
        entry = unit_map.get(self.opts.student, {})
        heads = entry.get("heads")
        if (self.opts.mode == "attention_kl" and heads and entry.get("source") == self.opts.teacher
                and self._head_counts is not None and len(heads) == self._head_counts[0]
                and max(heads) < self._head_counts[1]):
            self.register_buffer("teacher_heads", torch.as_tensor(list(heads), dtype=torch.long), persistent=False)

    def forward(self, ctx: LossContext) -> Tensor:
        o = self.opts
        s = _feature(ctx.student_features, o.student, o.index, "student")
        t = _feature(ctx.teacher_features, o.teacher, o.index, "teacher").detach()
        if o.mode == "attention_kl":
            heads = getattr(self, "teacher_heads", None)
            if heads is not None:
                t = t.index_select(1, heads.to(t.device))
            if s.shape[1] != t.shape[1]:
                s, t = s.mean(dim=1, keepdim=True), t.mean(dim=1, keepdim=True)
            log_s = torch.log(s.clamp_min(1e-12))
            kl = (torch.special.xlogy(t, t) - t * log_s).sum(dim=-1)  # [B, H, L]
            return weighted_mean(kl.flatten(1).mean(dim=1), ctx.sample_weight)
        a_s = s.abs().pow(o.p).mean(dim=1 if s.dim() == 4 else -1)  # [B, H, W] or [B, L]
        a_t = t.abs().pow(o.p).mean(dim=1 if t.dim() == 4 else -1)
        if a_s.shape[1:] != a_t.shape[1:]:
            size = tuple(min(x, y) for x, y in zip(a_s.shape[1:], a_t.shape[1:]))
            pool = F.adaptive_avg_pool2d if a_s.dim() == 3 else F.adaptive_avg_pool1d
            a_s, a_t = pool(a_s[:, None], size)[:, 0], pool(a_t[:, None], size)[:, 0]
        q_s, q_t = F.normalize(a_s.flatten(1), dim=1), F.normalize(a_t.flatten(1), dim=1)
        return weighted_mean((q_s - q_t).pow(2).mean(dim=1), ctx.sample_weight)


@register("hidden_state")
class HiddenState(Loss):
    """TinyBERT/MiniLM-style hidden-state matching over layer pairs, averaged over pairs.

    Each pair: distance(linear(student), teacher), with a learned linear projector only where the
    hidden sizes differ; token counts (or spatial sizes) are aligned by adaptive pooling. Tuple
    outputs of HF layers are read at `index` (0: the hidden state).
    """

    Options = HiddenOptions

    def __init__(self, opts: HiddenOptions, s_feats: dict[str, Any], t_feats: dict[str, Any],
                 device: torch.device) -> None:
        super().__init__(opts, s_feats, t_feats, device)
        projs: list[nn.Module] = []
        for sp, tp in opts.layers:
            s_shape = tuple(select(s_feats[sp], opts.index).shape)
            t_shape = tuple(select(t_feats[tp], opts.index).shape)
            kind = "none" if s_shape[_channel_dim(s_shape)] == t_shape[_channel_dim(t_shape)] else "linear"
            proj = _make_projector(kind, s_shape, t_shape, f"hidden_state pair {sp} -> {tp}")
            projs.append(proj.to(device) if proj is not None else nn.Identity())
        self.projectors = nn.ModuleList(projs)

    @classmethod
    def paths(cls, opts: HiddenOptions) -> tuple[set[str], set[str]]:
        return {s for s, _ in opts.layers}, {t for _, t in opts.layers}

    @torch.no_grad()
    def adopt_unit_map(self, unit_map: dict[str, dict[str, Any]]) -> None:
        # A pruned student's channel k is the teacher's channel idx[k]: start each projector as that
        # embedding (the teacher's dropped channels predicted as 0) instead of a random map.
        for (sp, _), proj in zip(self.opts.layers, self.projectors):
            idx = unit_map.get(sp, {}).get("channels")
            if idx is None or not isinstance(proj, _ChannelProjector) or proj.rank == 4:
                continue
            lin = proj.proj
            if len(idx) != lin.in_features or max(idx) >= lin.out_features:
                continue
            lin.weight.zero_()
            lin.weight[torch.as_tensor(idx), torch.arange(len(idx))] = 1.0
            lin.bias.zero_()

    def forward(self, ctx: LossContext) -> Tensor:
        o = self.opts
        terms = []
        for (sp, tp), proj in zip(o.layers, self.projectors):
            s = _feature(ctx.student_features, sp, o.index, "student")
            t = _feature(ctx.teacher_features, tp, o.index, "teacher").detach()
            s, t = _align(s, t)
            terms.append(weighted_mean(_per_sample_distance(proj(s), t, o.distance), ctx.sample_weight))
        return torch.stack(terms).mean()  # layers has at least one pair (validated)


def _pairwise_distance(f: Tensor) -> Tensor:
    """[B, B] Euclidean distances from explicit differences (the diagonal is ~1e-6: callers drop it)."""
    return (f[:, None, :] - f[None, :, :]).pow(2).sum(-1).clamp_min(1e-12).sqrt()


def _angles(f: Tensor) -> Tensor:
    """[B, B, B] cos of angle at a between b and c: <e(a->b), e(a->c)>, e unit (0 when b == a)."""
    d = F.normalize(f[None, :, :] - f[:, None, :], p=2, dim=2)  # d[a, b] = unit(f_b - f_a)
    return torch.bmm(d, d.transpose(1, 2))


@register("relation")
class Relation(Loss):
    """Relational KD on per-sample flattened features (dims may differ between student and teacher).

    rkd_distance (Park et al.): pairwise distances over i != j, each side divided by its mean, smooth
    L1 between them. rkd_angle: cosines of all triplet angles <e(a->b), e(a->c)> (B^3 entries, zero
    vectors where b == a, as in the reference code), smooth L1. similarity (Tung & Mori): G = F F^T
    with rows L2-normalized, mean squared difference over the B x B entries. Batch-level, so per-sample
    weights do not apply; a batch of one sample gives 0.
    """

    Options = RelationOptions

    @classmethod
    def paths(cls, opts: RelationOptions) -> tuple[set[str], set[str]]:
        return {opts.student}, {opts.teacher}

    def forward(self, ctx: LossContext) -> Tensor:
        o = self.opts
        s = _feature(ctx.student_features, o.student, o.index, "student").flatten(1)
        t = _feature(ctx.teacher_features, o.teacher, o.index, "teacher").detach().flatten(1)
        b = s.shape[0]
        if b < 2:
            return _zero(s)
        if o.mode == "similarity":
            g_s = F.normalize(s @ s.T, dim=1)
            g_t = F.normalize(t @ t.T, dim=1)
            return (g_s - g_t).pow(2).mean()
        if o.mode == "rkd_angle":
            return F.smooth_l1_loss(_angles(s).flatten(), _angles(t).flatten())
        off = ~torch.eye(b, dtype=torch.bool, device=s.device)
        d_s, d_t = _pairwise_distance(s)[off], _pairwise_distance(t)[off]
        d_s = d_s / d_s.mean().clamp_min(1e-12)
        d_t = d_t / d_t.mean().clamp_min(1e-12)
        return F.smooth_l1_loss(d_s, d_t)


# --------------------------------------------------------------------------- the set


class LossSet(nn.Module):
    """The weighted sum of a recipe's loss terms; its parameters (projectors) go into the optimizer."""

    def __init__(self, terms: dict[str, Loss], weights: dict[str, float]) -> None:
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.weights = dict(weights)
        self.student_paths: set[str] = set()
        self.teacher_paths: set[str] = set()
        for t in terms.values():
            sp, tp = type(t).paths(t.opts)
            self.student_paths |= sp
            self.teacher_paths |= tp
        self.needs_online_teacher = bool(self.teacher_paths)
        self.needs_teacher = self.needs_online_teacher or any(type(t).needs_teacher_logits() for t in terms.values())

    def weight_at(self, name: str, progress: float) -> float:
        w = self.weights[name]
        ws = self.terms[name].opts.weight_schedule
        return w if ws is None else w * schedule(ws, progress)

    def forward(self, ctx: LossContext) -> tuple[Tensor, dict[str, float]]:
        values: list[Tensor] = []
        parts: dict[str, float] = {}
        for name, term in self.terms.items():
            value = term(ctx) * self.weight_at(name, ctx.progress)
            parts[name] = float(value.detach())
            values.append(value)
        if not values:
            raise StageError("the loss set has no terms", hint="build it with build_losses from a non-empty list")
        return torch.stack(values).sum(), parts


def _probe(model: nn.Module, paths: set[str], x: Tensor, side: str) -> dict[str, Any]:
    """One forward in eval mode under no_grad to read feature shapes; restores every module's mode."""
    if not paths:
        return {}
    modes = {m: m.training for m in model.modules()}
    model.eval()  # no BatchNorm running-stat updates, no dropout: the probe must not change the model
    try:
        with torch.no_grad(), FeatureCapture(model, sorted(paths), detach=True) as cap:
            model(x)
    finally:
        for m, mode in modes.items():
            m.training = mode
    missing = cap.missing()
    if missing:
        raise ConfigError(f"{side} modules {', '.join(missing)} did not run in a forward pass",
                          hint="pick module paths that the model's forward actually calls")
    return cap.features


def build_losses(cfgs: list[Any], student: nn.Module, teacher: nn.Module | None,
                 example_input: Tensor | None) -> LossSet:
    """Validate the loss terms, probe feature shapes on `example_input`, build the LossSet.

    `example_input` may be None when no term reads features (soft_label/hard_label only).

    Term names (keys of the logged parts) are the kinds, with `_2`, `_3`, … for repeats.
    """
    if not cfgs:
        raise ConfigError("no distillation losses given", hint="add e.g. {kind: soft_label, weight: 1.0}")
    parsed = [parse_loss(c) for c in cfgs]
    s_paths: set[str] = set()
    t_paths: set[str] = set()
    for kind, _, opts in parsed:
        sp, tp = LOSSES[kind].paths(opts)
        s_paths |= sp
        t_paths |= tp
    if t_paths and teacher is None:
        raise ConfigError(f"losses read teacher features ({', '.join(sorted(t_paths))}) but there is no teacher model",
                          hint="give the recipe a teacher, or use only soft_label/hard_label with cached logits")
    if (s_paths or t_paths) and example_input is None:
        raise StageError("feature losses need an example input to probe shapes", hint="this is a bug in edgekd")
    s_feats = _probe(student, s_paths, example_input, "student") if s_paths else {}
    t_feats = _probe(teacher, t_paths, example_input, "teacher") if teacher is not None and t_paths else {}
    try:
        device = next(student.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    terms: dict[str, Loss] = {}
    weights: dict[str, float] = {}
    counts: dict[str, int] = {}
    for kind, weight, opts in parsed:
        counts[kind] = counts.get(kind, 0) + 1
        name = kind if counts[kind] == 1 else f"{kind}_{counts[kind]}"
        terms[name] = LOSSES[kind](opts, s_feats, t_feats, device)
        terms[name].adopt_unit_map(getattr(student, "unit_map", None) or {})
        weights[name] = weight
    return LossSet(terms, weights)


