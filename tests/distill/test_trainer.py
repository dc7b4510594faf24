import numpy as np
import pytest
import torch

from edgekd import zoo
from edgekd.config import DistillConfig, LossConfig, TrainConfig
from edgekd.config import DataConfig
from edgekd.data import load
from edgekd.distill import trainer as T
from edgekd.errors import StageError


@pytest.fixture(scope="module")
def digits():
    return load(DataConfig(kind="digits"))


def _cfg(**kw):
    return TrainConfig(**{"epochs": 4, "batch_size": 64, "lr": 3e-3, "seed": 3, **kw})


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_deterministic_with_seed(digits):
    s = digits
    T.seed_everything(3)
    r1 = T.train(zoo.build("mlp", hidden=[16]), s.x_train, s.y_train, s.x_val, s.y_val, _cfg())
    T.seed_everything(3)
    r2 = T.train(zoo.build("mlp", hidden=[16]), s.x_train, s.y_train, s.x_val, s.y_val, _cfg())
    assert _same(r1.best_state, r2.best_state) and r1.history[-1]["loss_ce"] == r2.history[-1]["loss_ce"]
    assert r1.best_val_accuracy > 0.8


def test_resume_after_kill_matches_uninterrupted(digits, tmp_path, kill_after_checkpoint):
    s = digits
    torch.manual_seed(0)
    m_full = zoo.build("mlp", hidden=[16])
    init = {k: v.clone() for k, v in m_full.state_dict().items()}
    full = T.train(m_full, s.x_train, s.y_train, s.x_val, s.y_val, _cfg())

    ck = tmp_path / "ck.pt"
    killed = kill_after_checkpoint(2)  # killed right after epoch 2's checkpoint
    m = zoo.build("mlp", hidden=[16])
    m.load_state_dict(init)
    with pytest.raises(KeyboardInterrupt):
        T.train(m, s.x_train, s.y_train, s.x_val, s.y_val, _cfg(), checkpoint=ck)
    killed.restore()
    m2 = zoo.build("mlp", hidden=[16])  # a fresh process would start from fresh weights
    resumed = T.train(m2, s.x_train, s.y_train, s.x_val, s.y_val, _cfg(), checkpoint=ck)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert _same(m2.state_dict(), m_full.state_dict()), "resumed weights differ from the uninterrupted run"
    assert _same(resumed.best_state, full.best_state)


def test_early_stopping(digits):
    s = digits
    cfg = DistillConfig(epochs=50, batch_size=64, lr=1e-6, patience=2, seed=0,
                        losses=[LossConfig(kind="hard_label", weight=1.0)])
    r = T.train(zoo.build("mlp", hidden=[8]), s.x_train, s.y_train, s.x_val, s.y_val, cfg)
    assert r.stopped_early and len(r.history) < 50


def test_diverging_loss_stops_with_clear_error(digits):
    s = digits
    x = s.x_train.copy()
    x[0, 0] = np.nan
    with pytest.raises(StageError, match="loss became nan"):
        T.train(zoo.build("mlp", hidden=[8]), x, s.y_train, s.x_val, s.y_val, _cfg(epochs=1, batch_size=len(x)))


def test_empty_training_set(digits):
    s = digits
    with pytest.raises(StageError, match="empty"):
        T.train(zoo.build("mlp"), s.x_train[:0], s.y_train[:0], s.x_val, s.y_val, _cfg())


def test_augment_shifts_and_flips_only():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 4, 4] = 1.0
    y = T.augment_images(x, g, pad=2)
    assert y.shape == x.shape and torch.all(y.sum((1, 2, 3)) == 1)  # the pixel moved, never vanished
    assert (y != x).any()


def test_labels_only_distillation_never_calls_the_teacher(digits):
    from edgekd.distill.losses import build_losses

    s = digits

    class Boom(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("the teacher was run although no loss needs it")

    st, t = zoo.build("mlp", hidden=[8]), zoo.build("mlp", hidden=[8])
    losses = [LossConfig(kind="hard_label", weight=1.0)]
    ls = build_losses(losses, st, t, torch.as_tensor(s.x_val[:2]))
    r = T.train(st, s.x_train, s.y_train, s.x_val, s.y_val, DistillConfig(epochs=5, lr=0.01, losses=losses), teacher=Boom(),
                loss_set=ls)
    assert r.best_val_accuracy > 0.3


def test_teacher_gets_no_gradient_during_distillation(digits):
    from edgekd.distill.losses import build_losses

    s = digits
    T.seed_everything(0)
    teacher = zoo.build("mlp", hidden=[16])
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    st = zoo.build("mlp", hidden=[8])
    losses = [LossConfig(kind="soft_label", weight=1.0, temperature=2.0),
              LossConfig(kind="feature", weight=1.0, student="layer1", teacher="layer1", projector="linear")]
    ls = build_losses(losses, st, teacher, torch.as_tensor(s.x_val[:4]))
    T.train(st, s.x_train, s.y_train, s.x_val, s.y_val, DistillConfig(epochs=1, losses=losses), teacher=teacher,
            loss_set=ls)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


class _Payload:
    """Unpickling this would run code: the classic pickle exploit shape."""

    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_with_pickled_object_is_refused(digits, tmp_path):
    from edgekd.errors import UserError

    s = digits
    ck = tmp_path / "ck.pt"
    T.train(zoo.build("mlp", hidden=[8]), s.x_train, s.y_train, s.x_val, s.y_val, _cfg(epochs=1), checkpoint=ck)
    good = T.load_checkpoint(ck)  # what edgekd writes loads under weights_only=True
    assert good["epoch"] == 0 and "model" in good
    good["history"] = [_Payload()]
    torch.save(good, ck)  # torch.save pickles arbitrary objects; the loader must not run them
    with pytest.raises(UserError, match="refusing to load checkpoint") as ei:
        T.train(zoo.build("mlp", hidden=[8]), s.x_train, s.y_train, s.x_val, s.y_val, _cfg(epochs=2), checkpoint=ck)
    assert ei.value.exit_code == 2 and "\n" not in ei.value.message


def test_non_terminal_progress_prints_a_line_per_epoch(digits):
    import io

    from rich.console import Console
    from rich.progress import Progress

    s = digits
    buf = io.StringIO()
    con = Console(file=buf, force_terminal=False, width=200)
    with Progress(console=con, transient=True) as prog:
        T.train(zoo.build("mlp", hidden=[8]), s.x_train, s.y_train, s.x_val, s.y_val, _cfg(epochs=3), progress=prog,
                description="teacher")
    lines = [ln for ln in buf.getvalue().splitlines() if "teacher epoch" in ln]
    assert [ln.split("epoch ")[1].split(":")[0] for ln in lines] == ["1/3", "2/3", "3/3"]
    assert all("val_accuracy=" in ln for ln in lines)
