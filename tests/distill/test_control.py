"""The labels-only control: same student and run as the KD one, only the loss differs."""
import pytest
import torch

from edgekd import zoo
from edgekd.config import DataConfig, DistillConfig, LossConfig
from edgekd.data import load
from edgekd.distill import trainer as T
from edgekd.distill.control import control_config, control_losses, train_control
from edgekd.distill.losses import build_losses


@pytest.fixture(scope="module")
def digits():
    return load(DataConfig(kind="digits"))


def _dc(**kw):
    return DistillConfig(**{"epochs": 3, "batch_size": 64, "lr": 1e-2, "seed": 5, **kw})


def test_control_losses_keep_hard_label_options_at_weight_one():
    kd = [LossConfig(kind="soft_label", weight=0.9, temperature=4.0),
          LossConfig(kind="hard_label", weight=0.1, label_smoothing=0.1, weight_schedule={"start": 0, "end": 1})]
    assert control_losses(kd) == [{"kind": "hard_label", "weight": 1.0, "label_smoothing": 0.1}]
    assert control_losses([LossConfig(kind="soft_label", weight=1.0)]) == [{"kind": "hard_label", "weight": 1.0}]
    dc = _dc(losses=kd, born_again_generations=2, weighting={"kind": "teacher_confidence"},
             teacher_cache={"enabled": True})
    cc = control_config(dc)
    assert [lc.kind for lc in cc.losses] == ["hard_label"] and not cc.teacher_cache.enabled
    assert cc.born_again_generations == 0 and cc.weighting is None
    same = ("epochs", "batch_size", "lr", "weight_decay", "augment", "seed", "grad_clip", "label_smoothing", "amp")
    assert {k: getattr(cc, k) for k in same} == {k: getattr(dc, k) for k in same}


def test_control_equals_the_kd_run_with_a_labels_only_loss(digits):
    """The control is exactly the bench's labels-only arm (a KD run whose loss set is hard_label alone,
    teacher present): same initial weights, batches and seed give bit-identical weights, so the control
    differs from the KD student by the loss and nothing else; and the teacher is never called."""
    s = digits
    dc = _dc(losses=[LossConfig(kind="soft_label", weight=0.5, temperature=2.0),
                     LossConfig(kind="hard_label", weight=0.5)])

    class Tripwire(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("the control consulted the teacher")

    T.seed_everything(dc.seed)
    a = zoo.build("mlp", hidden=[16])
    res_a = train_control(a, s.x_train, s.y_train, s.x_val, s.y_val, dc)
    T.seed_everything(dc.seed)
    b = zoo.build("mlp", hidden=[16])
    lo = dc.model_copy(update={"losses": [LossConfig(kind="hard_label", weight=1.0)]})
    loss_set = build_losses(lo.losses, b, Tripwire(), torch.as_tensor(s.x_val[:8]))
    res_b = T.train(b, s.x_train, s.y_train, s.x_val, s.y_val, lo, teacher=Tripwire(), loss_set=loss_set)
    assert all(torch.equal(res_a.best_state[k], res_b.best_state[k]) for k in res_a.best_state)
    assert [h["loss_hard_label"] for h in res_a.history] == [h["loss_hard_label"] for h in res_b.history]
    assert len(res_a.history) == dc.epochs and res_a.best_val_accuracy > 0.8


def test_control_uses_only_the_visible_labels(digits):
    """With data.label_fraction < 1 the control sees the same labelled subset as the KD run's hard-label term."""
    import numpy as np

    s = digits
    dc = _dc(epochs=2)
    few = np.zeros(len(s.y_train), dtype=bool)
    few[:20] = True
    T.seed_everything(dc.seed)
    m_few = zoo.build("mlp", hidden=[16])
    r_few = train_control(m_few, s.x_train, s.y_train, s.x_val, s.y_val, dc, labeled=few)
    T.seed_everything(dc.seed)
    m_all = zoo.build("mlp", hidden=[16])
    r_all = train_control(m_all, s.x_train, s.y_train, s.x_val, s.y_val, dc)
    assert r_all.best_val_accuracy > r_few.best_val_accuracy + 0.1


def test_epoch_views_feed_the_trainer_row_for_row():
    """AugmentedViews as epoch_inputs: training on view e mod K equals training on that view's
    pixels directly (same rows, same order, no second augmentation); the control gets the same
    views without logits, the KD run gets the cached logits of exactly those pixels."""
    from edgekd.distill.cache import AugmentedViews, augmented_view

    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 1, 8, 8, generator=g).numpy()
    y = torch.randint(0, 10, (300,), generator=g).numpy()
    cfg = _dc(epochs=1, augment=True, batch_size=32)
    views = AugmentedViews(x, T.augment_images, views=2)
    v0 = augmented_view(x, T.augment_images, 0)
    assert not torch.equal(v0, torch.as_tensor(x)) and torch.equal(views(2)[0], v0) and views(0)[1] is None
    assert not torch.equal(views(1)[0], v0)

    def run(**kw):
        T.seed_everything(1)
        m = zoo.build("small_cnn", widths=[4, 8])
        return T.train(m, kw.pop("x"), y, x[:50], y[:50], kw.pop("cfg"), **kw).best_state

    a = run(x=x, cfg=cfg, epoch_inputs=views)
    b = run(x=v0.numpy(), cfg=cfg.model_copy(update={"augment": False}))
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = run(x=x, cfg=cfg)  # the trainer's own random augmentation: different pixels, different weights
    assert not all(torch.equal(a[k], c[k]) for k in a)
