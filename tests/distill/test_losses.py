"""Each distillation loss against a value computed independently with numpy, plus LossSet/build_losses
behaviour and the per-sample weighting schemes and schedules (edgekd.distill.weighting)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.config import LossConfig
from edgekd.distill.hooks import FeatureCapture
from edgekd.distill.losses import LOSSES, LossContext, build_losses
from edgekd.distill.options import schedule
from edgekd.distill.weighting import WEIGHTINGS, build_weighting
from edgekd.errors import ConfigError, StageError
from edgekd.zoo import build

RTOL = 1e-5


# --------------------------------------------------------------------------- helpers


class _Emit(nn.Module):
    """Emits zeros of a fixed per-sample shape: a tap whose shape build_losses probes."""

    def __init__(self, *shape: int, as_tuple: bool = False) -> None:
        super().__init__()
        self.shape, self.as_tuple = shape, as_tuple

    def forward(self, x: torch.Tensor):
        out = torch.zeros(x.shape[0], *self.shape)
        return (out, torch.ones(1)) if self.as_tuple else out


class Taps(nn.Module):
    """A model whose submodules `taps.NAME` output tensors of the given shapes."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], as_tuple: bool = False, classes: int = 3) -> None:
        super().__init__()
        self.taps = nn.ModuleDict({k: _Emit(*v, as_tuple=as_tuple) for k, v in shapes.items()})
        self.fc = nn.Linear(2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.taps.values():
            m(x)
        return self.fc(x)


X = torch.zeros(4, 2)


def one(cfg: dict, s_shapes: dict | None = None, t_shapes: dict | None = None, as_tuple: bool = False):
    """Build a LossSet of one term over Taps models; return (loss_set, the term)."""
    s = Taps(s_shapes or {}, as_tuple)
    t = Taps(t_shapes or {}, as_tuple)
    ls = build_losses([LossConfig(**cfg)], s, t, X)
    return ls, next(iter(ls.terms.values()))


def ctx(s_logits=None, t_logits=None, labels=None, sf=None, tf=None, w=None, progress=0.0) -> LossContext:
    b = 4
    return LossContext(
        student_logits=s_logits if s_logits is not None else torch.zeros(b, 3),
        teacher_logits=t_logits,
        labels=labels if labels is not None else torch.zeros(b, dtype=torch.long),
        student_features={f"taps.{k}": v for k, v in (sf or {}).items()},
        teacher_features={f"taps.{k}": v for k, v in (tf or {}).items()},
        sample_weight=w, progress=progress)


def val(t: torch.Tensor) -> float:
    return float(t.detach())


def np_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_smooth_l1(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(a - b)
    return float(np.where(d < 1, 0.5 * d**2, d - 0.5).mean())


def np_normalize(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 1e-12 else v * 0


rng = np.random.default_rng(0)


def randn(*shape: int) -> torch.Tensor:
    return torch.tensor(rng.standard_normal(shape), dtype=torch.float32)


# --------------------------------------------------------------------------- soft / hard label


def test_soft_label_matches_hand_kl_with_weights_and_t2():
    s, t = randn(4, 5), randn(4, 5) * 3
    w = torch.tensor([0.5, 1.5, 1.0, 1.0])
    T = 2.0
    ls, term = one({"kind": "soft_label", "temperature": T})
    got = val(term(ctx(s, t, w=w)))
    ps, pt = np_softmax(s.numpy() / T), np_softmax(t.numpy() / T)
    kl = (pt * (np.log(pt) - np.log(ps))).sum(1)
    want = T * T * float((w.numpy() * kl).sum() / 4)
    assert got == pytest.approx(want, rel=RTOL)
    # Unweighted: plain batch mean.
    assert val(term(ctx(s, t))) == pytest.approx(T * T * kl.mean(), rel=RTOL)
    # Identical distributions: zero.
    assert val(term(ctx(t, t))) == pytest.approx(0.0, abs=1e-6)


def test_soft_label_temperature_schedule_and_zero_teacher_probs():
    s, t = randn(4, 5), randn(4, 5)
    _, term = one({"kind": "soft_label", "temperature": {"start": 4.0, "end": 2.0}})
    T = 3.0  # halfway, linear
    ps, pt = np_softmax(s.numpy() / T), np_softmax(t.numpy() / T)
    want = T * T * (pt * (np.log(pt) - np.log(ps))).sum(1).mean()
    assert val(term(ctx(s, t, progress=0.5))) == pytest.approx(want, rel=RTOL)
    # A top-k cache read with a -inf tail: those classes have p_t = 0 and must add 0, not NaN.
    t_inf = t.clone()
    t_inf[:, 3:] = float("-inf")
    got = val(term(ctx(s, t_inf, progress=0.0)))
    pt = np_softmax(t.numpy()[:, :3] / 4.0)
    ps = np_softmax(s.numpy() / 4.0)[:, :3]
    want = 16.0 * (pt * (np.log(pt) - np.log(ps))).sum(1).mean()
    assert got == pytest.approx(want, rel=RTOL)


def test_token_kd_on_a_top_k_teacher_matches_hand_computation():
    # A language model's KD term: rows are answer tokens, the teacher is only its top-k per token.
    student = torch.tensor([[1.0, 0.0, -1.0, 0.5], [0.2, -0.3, 0.9, 0.0]])
    tv, ti = torch.tensor([[2.0, 1.0], [0.5, 3.0]]), torch.tensor([[0, 3], [2, 1]])
    T = 2.0
    want = []
    for z_s, v, k in ((student[0].numpy(), [2.0, 1.0], [0, 3]), (student[1].numpy(), [0.5, 3.0], [2, 1])):
        pt = np.exp(np.array(v) / T)
        pt /= pt.sum()  # the teacher's top-k, renormalized
        log_ps = z_s / T - np.log(np.exp(z_s / T).sum())  # the student over its whole vocabulary
        want.append(float((pt * (np.log(pt) - log_ps[k])).sum() * T * T))
    _, term = one({"kind": "soft_label", "temperature": T})
    c = LossContext(student_logits=student, teacher_logits=None, labels=torch.zeros(2, dtype=torch.long),
                    student_features={}, teacher_features={}, teacher_topk=(tv, ti))
    assert val(term(c)) == pytest.approx(np.mean(want), rel=RTOL)
    c.sample_weight = torch.tensor([0.5, 1.5])  # per-token weights: a weighted mean like per-sample ones
    assert val(term(c)) == pytest.approx(0.5 * want[0] * 0.5 + 1.5 * want[1] * 0.5, rel=RTOL)
    # the same as soft_label over full logits whose non-top-k entries are -inf
    full = torch.full((2, 4), float("-inf"))
    full.scatter_(1, ti, tv)
    c_full = LossContext(student_logits=student, teacher_logits=full, labels=torch.zeros(2, dtype=torch.long),
                         student_features={}, teacher_features={})
    assert val(term(c_full)) == pytest.approx(np.mean(want), rel=RTOL)
    # a student that already puts the teacher's proportions on the top-k and ~0 elsewhere: ~0
    good = torch.tensor([[2.0, -40.0, -40.0, 1.0]])
    c = LossContext(student_logits=good, teacher_logits=None, labels=torch.zeros(1, dtype=torch.long),
                    student_features={}, teacher_features={}, teacher_topk=(tv[:1], ti[:1]))
    _, t1 = one({"kind": "soft_label", "temperature": 1.0})
    assert val(t1(c)) < 1e-6


def test_one_temperature_default_and_typos_are_config_errors():
    from edgekd.distill.options import parse_loss

    _, _, opts = parse_loss(LossConfig(kind="soft_label", weight=0.5))
    assert opts.temperature == 4.0  # classifier and text-generation recipes read the same default
    with pytest.raises(ConfigError, match="temprature"):
        parse_loss(LossConfig(kind="soft_label", weight=0.5, temprature=1.0))


def test_hard_label_smoothing_ignores_unlabeled():
    s = randn(4, 3)
    labels = torch.tensor([0, -1, 2, 1])
    eps = 0.1
    _, term = one({"kind": "hard_label", "label_smoothing": eps})
    logp = np.log(np_softmax(s.numpy()))
    per = [-(1 - eps) * logp[i, y] - eps / 3 * logp[i].sum() for i, y in enumerate(labels.tolist()) if y >= 0]
    assert val(term(ctx(s, labels=labels))) == pytest.approx(float(np.mean(per)), rel=RTOL)


def test_hard_label_without_labels_is_zero_and_differentiable():
    s = randn(4, 3).requires_grad_(True)
    _, term = one({"kind": "hard_label"})
    loss = term(ctx(s, labels=torch.full((4,), -1)))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert s.grad is not None and float(s.grad.abs().sum()) == 0.0


# --------------------------------------------------------------------------- feature


def test_feature_mse_same_shape_weighted():
    fs, ft = randn(4, 6), randn(4, 6)
    w = torch.tensor([2.0, 0.0, 1.0, 1.0])
    _, term = one({"kind": "feature", "student": "taps.a", "teacher": "taps.b"}, {"a": (6,)}, {"b": (6,)})
    assert term.projector is None
    per = ((fs.numpy() - ft.numpy()) ** 2).mean(1)
    assert val(term(ctx(sf={"a": fs}, tf={"b": ft}))) == pytest.approx(per.mean(), rel=RTOL)
    assert val(term(ctx(sf={"a": fs}, tf={"b": ft}, w=w))) == pytest.approx((w.numpy() * per).sum() / 4, rel=RTOL)


def test_feature_conv1x1_projector_and_spatial_pooling():
    # Student 2 channels at 4x4, teacher 3 channels at 2x2: pool student 2x2 blocks, then 1x1 conv.
    fs, ft = randn(4, 2, 4, 4), randn(4, 3, 2, 2)
    _, term = one({"kind": "feature", "student": "taps.a", "teacher": "taps.b", "projector": "conv1x1"},
                  {"a": (2, 4, 4)}, {"b": (3, 2, 2)})
    conv = term.projector.proj
    W, b = conv.weight.detach().numpy()[:, :, 0, 0], conv.bias.detach().numpy()
    pooled = fs.numpy().reshape(4, 2, 2, 2, 2, 2).mean(axis=(3, 5))  # [B, C, 2, 2]
    proj = np.einsum("oc,bchw->bohw", W, pooled) + b[None, :, None, None]
    want = ((proj - ft.numpy()) ** 2).reshape(4, -1).mean(1).mean()
    assert val(term(ctx(sf={"a": fs}, tf={"b": ft}))) == pytest.approx(want, rel=1e-4)


def test_feature_cosine_with_linear_projector_on_tokens():
    fs, ft = randn(4, 3, 2), randn(4, 3, 5)
    _, term = one({"kind": "feature", "student": "taps.a", "teacher": "taps.b", "projector": "linear",
                   "distance": "cosine"}, {"a": (3, 2)}, {"b": (3, 5)})
    lin = term.projector.proj
    proj = fs.numpy() @ lin.weight.detach().numpy().T + lin.bias.detach().numpy()
    want = np.mean([1 - np.dot(p.ravel(), q.ravel()) / (np.linalg.norm(p) * np.linalg.norm(q))
                    for p, q in zip(proj, ft.numpy())])
    assert val(term(ctx(sf={"a": fs}, tf={"b": ft}))) == pytest.approx(want, rel=1e-4)


def test_feature_mismatch_without_projector_names_both_shapes():
    with pytest.raises(ConfigError) as e:
        one({"kind": "feature", "student": "taps.a", "teacher": "taps.b"}, {"a": (8, 7, 7)}, {"b": (16, 7, 7)})
    assert "[B, 8, 7, 7]" in e.value.message and "[B, 16, 7, 7]" in e.value.message
    assert "projector: conv1x1" in e.value.hint


def test_feature_conv1x1_on_vectors_is_config_error():
    with pytest.raises(ConfigError, match="conv1x1"):
        one({"kind": "feature", "student": "taps.a", "teacher": "taps.b", "projector": "conv1x1"}, {"a": (4,)}, {"b": (6,)})


# --------------------------------------------------------------------------- attention


def test_attention_transfer_matches_zagoruyko():
    # Channels differ (2 vs 5) and spatial sizes differ (4x4 vs 2x2): maps pooled to 2x2.
    fs, ft = randn(4, 2, 4, 4), randn(4, 5, 2, 2)
    w = torch.tensor([1.0, 2.0, 0.5, 0.5])
    _, term = one({"kind": "attention", "student": "taps.a", "teacher": "taps.b"}, {"a": (2, 4, 4)}, {"b": (5, 2, 2)})
    a_s = (fs.numpy() ** 2).mean(1).reshape(4, 2, 2, 2, 2).mean(axis=(2, 4))
    a_t = (ft.numpy() ** 2).mean(1)
    per = np.array([((np_normalize(a.ravel()) - np_normalize(b.ravel())) ** 2).mean() for a, b in zip(a_s, a_t)])
    assert val(term(ctx(sf={"a": fs}, tf={"b": ft}, w=w))) == pytest.approx((w.numpy() * per).sum() / 4, rel=1e-4)


def test_attention_kl_over_heads_and_head_mismatch():
    ls_, lt_ = randn(4, 2, 3, 3), randn(4, 2, 3, 3)
    ps, pt = torch.softmax(ls_, -1), torch.softmax(lt_, -1)
    _, term = one({"kind": "attention", "student": "taps.a", "teacher": "taps.b", "mode": "attention_kl"},
                  {"a": (2, 3, 3)}, {"b": (2, 3, 3)})
    a, b = ps.numpy(), pt.numpy()
    want = (b * (np.log(b) - np.log(a))).sum(-1).mean()  # mean over B, H, L
    assert val(term(ctx(sf={"a": ps}, tf={"b": pt}))) == pytest.approx(want, rel=1e-4)
    # Teacher with 4 heads vs student 2: each averaged over its heads first.
    pt4 = torch.softmax(randn(4, 4, 3, 3), -1)
    _, term = one({"kind": "attention", "student": "taps.a", "teacher": "taps.b", "mode": "attention_kl"},
                  {"a": (2, 3, 3)}, {"b": (4, 3, 3)})
    a, b = ps.numpy().mean(1), pt4.numpy().mean(1)
    want = (b * (np.log(b) - np.log(a))).sum(-1).mean()
    assert val(term(ctx(sf={"a": ps}, tf={"b": pt4}))) == pytest.approx(want, rel=1e-4)


def test_attention_kl_rejects_non_square():
    with pytest.raises(ConfigError, match=r"\[B, H, L, L\]"):
        one({"kind": "attention", "student": "taps.a", "teacher": "taps.b", "mode": "attention_kl"},
            {"a": (2, 3, 4)}, {"b": (2, 3, 3)})


# --------------------------------------------------------------------------- hidden_state


def test_hidden_state_pairs_tuples_and_projector():
    # HF-style layers returning tuples; pair 1 has hidden 3 vs 5 (linear projector), pair 2 equal sizes.
    s1, t1, s2, t2 = randn(4, 2, 3), randn(4, 2, 5), randn(4, 2, 4), randn(4, 2, 4)
    _, term = one({"kind": "hidden_state", "layers": [["taps.a", "taps.b"], ["taps.c", "taps.d"]]},
                  {"a": (2, 3), "c": (2, 4)}, {"b": (2, 5), "d": (2, 4)}, as_tuple=True)
    assert isinstance(term.projectors[1], nn.Identity)
    lin = term.projectors[0].proj
    proj = s1.numpy() @ lin.weight.detach().numpy().T + lin.bias.detach().numpy()
    want = (((proj - t1.numpy()) ** 2).mean() + ((s2.numpy() - t2.numpy()) ** 2).mean()) / 2
    extra = torch.ones(1)
    got = term(ctx(sf={"a": (s1, extra), "c": (s2, extra)}, tf={"b": (t1, extra), "d": (t2, extra)}))
    assert val(got) == pytest.approx(want, rel=1e-4)


def test_a_pruned_students_unit_map_aligns_projectors_and_heads():
    """A student cut out of the teacher: its hidden channels are teacher channels [4, 1, 3] and its
    2 heads are teacher heads [3, 0] of the layer the attention term reads."""
    s = Taps({"a": (2, 3), "h": (2, 3, 3)})
    t = Taps({"b": (2, 5), "g": (4, 3, 3)})
    s.unit_map = {"taps.a": {"channels": [4, 1, 3]},
                  "taps.h": {"heads": [3, 0], "source": "taps.g"}}
    ls = build_losses([LossConfig(kind="hidden_state", layers=[["taps.a", "taps.b"]]),
                       LossConfig(kind="attention", student="taps.h", teacher="taps.g", mode="attention_kl")], s, t, X)
    hidden, attn = ls.terms["hidden_state"], ls.terms["attention"]
    # the projector starts as the embedding of the kept channels: a student equal to the teacher's
    # kept channels (the dropped ones zero) has zero loss before any training
    tb = torch.zeros(4, 2, 5)
    tb[..., [4, 1, 3]] = randn(4, 2, 3)
    assert val(hidden(ctx(sf={"a": tb[..., [4, 1, 3]]}, tf={"b": tb}))) == pytest.approx(0.0, abs=1e-12)
    # heads are matched one to one, not averaged: the student that has the teacher's heads 3 and 0 scores 0,
    # the same heads in the other order do not
    pt = torch.softmax(randn(4, 4, 3, 3), -1)
    assert val(attn(ctx(sf={"h": pt[:, [3, 0]]}, tf={"g": pt}))) == pytest.approx(0.0, abs=1e-6)
    assert val(attn(ctx(sf={"h": pt[:, [0, 3]]}, tf={"g": pt}))) > 1e-3
    # a map whose source is another teacher layer is not applied (head-averaged as before)
    s.unit_map["taps.h"]["source"] = "taps.other"
    ls = build_losses([LossConfig(kind="attention", student="taps.h", teacher="taps.g", mode="attention_kl")], s, t, X)
    a, b = pt[:, [3, 0]].numpy().mean(1), pt.numpy().mean(1)
    want = (b * (np.log(b) - np.log(a))).sum(-1).mean()
    assert val(ls.terms["attention"](ctx(sf={"h": pt[:, [3, 0]]}, tf={"g": pt}))) == pytest.approx(want, rel=1e-4)


# --------------------------------------------------------------------------- relation


def test_rkd_distance():
    fs, ft = randn(4, 2, 3), randn(4, 5)  # student flattened to 6 dims, teacher 5
    _, term = one({"kind": "relation", "student": "taps.a", "teacher": "taps.b", "mode": "rkd_distance"},
                  {"a": (2, 3)}, {"b": (5,)})

    def dists(f):
        f = f.reshape(len(f), -1)
        d = np.array([np.linalg.norm(f[i] - f[j]) for i in range(4) for j in range(4) if i != j])
        return d / d.mean()

    want = np_smooth_l1(dists(fs.numpy()), dists(ft.numpy()))
    assert val(term(ctx(sf={"a": fs}, tf={"b": ft}))) == pytest.approx(want, rel=1e-4)


def test_rkd_angle():
    fs, ft = randn(4, 3), randn(4, 6)
    _, term = one({"kind": "relation", "student": "taps.a", "teacher": "taps.b", "mode": "rkd_angle"},
                  {"a": (3,)}, {"b": (6,)})

    def angles(f):
        out = np.zeros((4, 4, 4))
        for a in range(4):
            for b in range(4):
                for c in range(4):
                    out[a, b, c] = np.dot(np_normalize(f[b] - f[a]), np_normalize(f[c] - f[a]))
        return out.ravel()

    want = np_smooth_l1(angles(fs.numpy()), angles(ft.numpy()))
    assert want > 0.01  # the check below is not trivially 0 == 0
    assert val(term(ctx(sf={"a": fs}, tf={"b": ft}))) == pytest.approx(want, rel=1e-4)


def test_similarity_preserving():
    fs, ft = randn(4, 3), randn(4, 2, 2)
    _, term = one({"kind": "relation", "student": "taps.a", "teacher": "taps.b", "mode": "similarity"},
                  {"a": (3,)}, {"b": (2, 2)})

    def gram(f):
        f = f.reshape(4, -1)
        g = f @ f.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    want = ((gram(fs.numpy()) - gram(ft.numpy())) ** 2).sum() / 16
    assert val(term(ctx(sf={"a": fs}, tf={"b": ft}))) == pytest.approx(want, rel=1e-4)


def test_relation_single_sample_is_zero():
    _, term = one({"kind": "relation", "student": "taps.a", "teacher": "taps.b"}, {"a": (3,)}, {"b": (3,)})
    c = ctx(sf={"a": randn(1, 3)}, tf={"b": randn(1, 3)})
    assert val(term(c)) == 0.0


# --------------------------------------------------------------------------- LossSet / build_losses


def test_lossset_weights_parts_and_schedule():
    s, t = randn(4, 3), randn(4, 3)
    labels = torch.tensor([0, 1, 2, 0])
    student, teacher = Taps({}), Taps({})
    ls = build_losses([LossConfig(kind="soft_label", weight=0.9, temperature=1.0),
                       LossConfig(kind="hard_label", weight=0.1, weight_schedule={"start": 1.0, "end": 0.0}),
                       LossConfig(kind="hard_label", weight=2.0)], student, teacher, X)
    assert list(ls.terms) == ["soft_label", "hard_label", "hard_label_2"]
    assert not ls.needs_online_teacher and ls.teacher_paths == set() and ls.student_paths == set()
    pt, ps = np_softmax(t.numpy()), np_softmax(s.numpy())
    kl = (pt * (np.log(pt) - np.log(ps))).sum(1).mean()
    ce = -np.log(ps[np.arange(4), labels.numpy()]).mean()
    total, parts = ls(ctx(s, t, labels, progress=0.25))
    assert parts["soft_label"] == pytest.approx(0.9 * kl, rel=RTOL)
    assert parts["hard_label"] == pytest.approx(0.1 * 0.75 * ce, rel=RTOL)  # weight_schedule at 0.25
    assert parts["hard_label_2"] == pytest.approx(2.0 * ce, rel=RTOL)
    assert float(total) == pytest.approx(sum(parts.values()), rel=RTOL)


def test_unknown_kind_and_option_typos_are_config_errors():
    with pytest.raises(ConfigError) as e:
        build_losses([LossConfig(kind="softlabel")], Taps({}), Taps({}), X)
    assert "soft_label" in e.value.hint and all(k in e.value.hint for k in LOSSES)
    with pytest.raises(ConfigError) as e:
        build_losses([LossConfig(kind="soft_label", temprature=4)], Taps({}), Taps({}), X)
    assert "temprature" in e.value.message and "'temperature'" in e.value.hint
    with pytest.raises(ConfigError, match="temperature"):
        build_losses([LossConfig(kind="soft_label", temperature=-1.0)], Taps({}), Taps({}), X)
    with pytest.raises(ConfigError, match="no teacher"):
        build_losses([LossConfig(kind="feature", student="taps.a", teacher="taps.a")], Taps({"a": (2,)}), None, X)
    with pytest.raises(ConfigError) as e:  # unknown module path, with near matches
        build_losses([LossConfig(kind="feature", student="taps.aa", teacher="taps.a")],
                     Taps({"a": (2,)}), Taps({"a": (2,)}), X)
    assert "taps.a" in e.value.hint


def test_zoo_models_probe_leaves_model_unchanged_and_grads_reach_projector():
    torch.manual_seed(0)
    student, teacher = build("small_cnn", widths=[4, 8]), build("resnet_cnn", stem_width=4, widths=[8, 16])
    student.train()
    teacher.eval()
    bn = student.layer1[1]
    before = (bn.running_mean.clone(), int(bn.num_batches_tracked))
    x = torch.randn(4, 1, 28, 28)
    ls = build_losses([LossConfig(kind="soft_label"), LossConfig(kind="feature", student="layer2", teacher="layer2",
                                                                   projector="conv1x1"),
                       LossConfig(kind="attention", student="layer1", teacher="layer1"),
                       LossConfig(kind="relation", student="pool", teacher="pool", mode="similarity")],
                      student, teacher, x)
    assert torch.equal(bn.running_mean, before[0]) and int(bn.num_batches_tracked) == before[1]
    assert student.training and not teacher.training
    assert ls.needs_online_teacher and ls.student_paths == {"layer1", "layer2", "pool"}
    projector_params = list(ls.terms["feature"].parameters())
    assert projector_params and {id(p) for p in projector_params} <= {id(p) for p in ls.parameters()}
    with torch.no_grad(), FeatureCapture(teacher, ls.teacher_paths, detach=True) as tc:
        tl = teacher(x)
    with FeatureCapture(student, ls.student_paths) as sc:
        sl = student(x)
    total, parts = ls(LossContext(sl, tl, torch.tensor([0, 1, -1, 2]), sc.features, tc.features))
    assert torch.isfinite(total) and set(parts) == {"soft_label", "feature", "attention", "relation"}
    total.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in projector_params)
    assert float(student.layer1[0].weight.grad.abs().sum()) > 0


# --------------------------------------------------------------------------- weighting and schedules


def test_weighting_schemes_match_formulas():
    t = randn(5, 4) * 2
    t[4] = 0.0  # a uniform teacher row
    labels = torch.tensor([0, 1, -1, 3, 2])
    p = np_softmax(t.numpy())

    conf = p.max(1)
    np.testing.assert_allclose(build_weighting({"kind": "teacher_confidence"})(t, labels).numpy(),
                               conf / conf.mean(), rtol=1e-5)
    ent = 1 - (-(p * np.log(p)).sum(1)) / math.log(4)
    got = build_weighting({"kind": "teacher_entropy"})(t, labels).numpy()
    np.testing.assert_allclose(got, ent / ent.mean(), rtol=1e-4, atol=1e-6)
    assert got[4] == pytest.approx(0.0, abs=1e-5)  # a flat teacher says nothing

    margin = []
    for i, y in enumerate(labels.tolist()):
        if y >= 0:
            margin.append((1 + p[i, y] - np.delete(p[i], y).max()) / 2)
        else:
            margin.append(np.nan)
    margin = np.array(margin)
    margin[2] = np.nanmean(margin)  # unlabeled: the labeled samples' mean
    np.testing.assert_allclose(build_weighting({"kind": "ground_truth_margin"})(t, labels).numpy(),
                               margin / margin.mean(), rtol=1e-5)

    np.testing.assert_array_equal(build_weighting(None)(t, labels).numpy(), np.ones(5))
    np.testing.assert_array_equal(build_weighting({"kind": "none"})(t, labels).numpy(), np.ones(5))
    # A batch the scheme gives all-zero weight falls back to uniform, never NaN.
    flat = build_weighting({"kind": "teacher_entropy"})(torch.zeros(3, 4), labels[:3])
    np.testing.assert_array_equal(flat.numpy(), np.ones(3))


def test_weighting_config_errors():
    with pytest.raises(ConfigError) as e:
        build_weighting({"kind": "teacher_confidance"})
    assert "teacher_confidence" in e.value.hint and all(k in e.value.hint for k in WEIGHTINGS)
    with pytest.raises(ConfigError) as e:
        build_weighting({"kind": "teacher_entropy", "temprature": 2})
    assert "'temperature'" in e.value.hint


def test_schedule_shapes():
    assert schedule(4.0, 0.7) == 4.0
    assert schedule({"start": 8.0, "end": 2.0}, 0.25) == pytest.approx(6.5)
    assert schedule({"start": 8.0, "end": 2.0, "shape": "cosine"}, 0.25) == pytest.approx(
        8.0 - 6.0 * (1 - math.cos(math.pi / 4)) / 2)
    assert schedule({"start": 0.0, "end": 1.0, "shape": "cosine"}, 0.5) == pytest.approx(0.5)
    assert schedule({"start": 0.0, "end": 1.0}, 1.7) == 1.0  # progress clamped
    assert schedule({"start": 3.0, "end": 1.0, "shape": "constant"}, 0.9) == 3.0
    with pytest.raises(ConfigError):
        schedule({"start": 1.0, "stop": 2.0}, 0.5)


# --------------------------------------------------------------------------- decoupled KD, standardized logits


def np_dkd_parts(s: np.ndarray, t: np.ndarray, target: np.ndarray, T: float) -> tuple[np.ndarray, np.ndarray]:
    """(TCKD, NCKD) per row, straight from the DKD paper's definitions, in probability space."""
    ps, pt = np_softmax(s / T), np_softmax(t / T)
    rows = np.arange(len(s))
    bs = np.stack([ps[rows, target], 1 - ps[rows, target]], 1)
    bt = np.stack([pt[rows, target], 1 - pt[rows, target]], 1)
    tckd = (bt * np.log(bt / bs)).sum(1)
    keep = np.ones_like(ps, dtype=bool)
    keep[rows, target] = False
    qs = np.where(keep, ps, 0) / np.where(keep, ps, 0).sum(1, keepdims=True)
    qt = np.where(keep, pt, 0) / np.where(keep, pt, 0).sum(1, keepdims=True)
    nckd = np.where(keep, qt * np.log(np.where(keep, qt, 1) / np.where(keep, qs, 1)), 0).sum(1)
    return tckd, nckd


def test_decoupled_matches_hand_tckd_and_nckd_with_weights():
    s, t = randn(4, 5), randn(4, 5) * 3
    labels = torch.tensor([0, 3, 4, 1])
    w = torch.tensor([0.5, 1.5, 1.0, 1.0])
    T, alpha, beta = 2.0, 1.0, 4.0
    _, term = one({"kind": "decoupled", "temperature": T, "alpha": alpha, "beta": beta})
    tckd, nckd = np_dkd_parts(s.numpy(), t.numpy(), labels.numpy(), T)
    want = T * T * float((w.numpy() * (alpha * tckd + beta * nckd)).sum() / 4)
    assert val(term(ctx(s, t, labels=labels, w=w))) == pytest.approx(want, rel=RTOL)
    # Hinton's KL is TCKD + (1 - p_t(target)) * NCKD: DKD is that split, re-weighted
    ps, pt = np_softmax(s.numpy() / T), np_softmax(t.numpy() / T)
    kl = (pt * np.log(pt / ps)).sum(1)
    assert kl == pytest.approx(tckd + (1 - pt[np.arange(4), labels.numpy()]) * nckd, rel=1e-4)
    # unlabeled samples (-1) take the teacher's argmax as their target
    unl = torch.full((4,), -1)
    tckd_a, nckd_a = np_dkd_parts(s.numpy(), t.numpy(), t.numpy().argmax(1), T)
    want = T * T * float((alpha * tckd_a + beta * nckd_a).mean())
    assert val(term(ctx(s, t, labels=unl))) == pytest.approx(want, rel=RTOL)
    # identical logits: zero
    assert val(term(ctx(t, t, labels=labels))) == pytest.approx(0.0, abs=1e-6)


def test_decoupled_is_finite_for_confident_models_and_a_top_k_tail():
    s = torch.tensor([[60.0, -40.0, 0.0], [0.0, 1.0, 2.0]])
    t = torch.tensor([[80.0, -50.0, 1.0], [5.0, float("-inf"), 0.0]])
    _, term = one({"kind": "decoupled", "temperature": 1.0, "beta": 8.0})
    s.requires_grad_(True)
    loss = term(LossContext(s, t, torch.tensor([0, 0]), {}, {}))
    loss.backward()
    assert math.isfinite(val(loss)) and bool(torch.isfinite(s.grad).all())
    assert val(loss) > 0


def test_standardized_soft_label_ignores_the_scale_of_the_logits():
    s, t = randn(4, 5), randn(4, 5)
    T = 2.0
    _, term = one({"kind": "soft_label", "temperature": T, "standardize": True})

    def z(a: np.ndarray) -> np.ndarray:
        a = a - a.mean(1, keepdims=True)
        return a / a.std(1, ddof=1, keepdims=True)

    ps, pt = np_softmax(z(s.numpy()) / T), np_softmax(z(t.numpy()) / T)
    want = T * T * (pt * np.log(pt / ps)).sum(1).mean()
    assert val(term(ctx(s, t))) == pytest.approx(want, rel=1e-4)
    # a student whose logits are the teacher's times 7 plus 3 matches it exactly once standardized
    assert val(term(ctx(7 * t + 3, t))) == pytest.approx(0.0, abs=1e-5)
    _, plain = one({"kind": "soft_label", "temperature": T})
    assert val(plain(ctx(7 * t + 3, t))) > 0.1
    # a top-k teacher (-inf tail) cannot be standardized: a clear error, not NaN
    t_inf = t.clone()
    t_inf[:, 3:] = float("-inf")
    with pytest.raises(StageError, match="top-k"):
        term(ctx(s, t_inf))


def test_logit_loss_kinds_are_registered_and_need_no_activations():
    from edgekd.distill.options import LOGIT_LOSSES

    for kind in LOGIT_LOSSES:
        assert kind in LOSSES and LOSSES[kind].paths(LOSSES[kind].Options.model_construct()) == (set(), set())
    ls = build_losses([LossConfig(kind="decoupled", weight=1.0), LossConfig(kind="hard_label", weight=1.0)],
                      Taps({}), Taps({}), X)
    assert ls.needs_teacher and not ls.needs_online_teacher  # the teacher-logit cache can drive it
