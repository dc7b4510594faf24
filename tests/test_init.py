"""`edgekd init`: the card it writes from the user's teacher and data (inspection, normalization choice)."""
import csv
import textwrap

import numpy as np
import pytest
import torch
import yaml

from edgekd.init import data_spec, init_card, model_spec
from edgekd.config import RecipeConfig
from edgekd.errors import ConfigError, DataError

MODELS = textwrap.dedent('''
    import torch
    from torch import nn

    class MeanSign(nn.Module):
        """Class 1 when the mean input is positive: right only under one normalization convention."""
        def forward(self, x):
            m = x.flatten(1).mean(1)
            return torch.stack([torch.zeros_like(m), m], 1)

    def build():
        return MeanSign()

    def tabular(in_features=3, num_classes=2):
        return nn.Linear(in_features, num_classes)
''')


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    (tmp_path / "initmodels.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    torch.save({}, tmp_path / "empty.pt")  # MeanSign has no parameters: its state dict is empty
    return tmp_path


def _photos(root, levels=(0.30, 0.49), n=12):
    from PIL import Image

    for k, level in enumerate(levels):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((6, 6), round(level * 255), np.uint8), "L").save(root / f"c{k}" / f"{i}.png")


def test_init_picks_the_normalization_under_which_the_teacher_is_right(user_dir):
    # pixels 0.30 vs 0.49: only ImageNet's mean/std puts them on both sides of 0
    _photos(user_dir / "photos")
    text = init_card("initmodels:build", "photos", weights="empty.pt")
    card = RecipeConfig.model_validate(yaml.safe_load(text))
    assert card.data.kind == "image-folder" and card.data.channels == 1 and card.data.classes == ["c0", "c1"]
    assert card.data.mean == [0.485] and card.data.std == [0.229]
    assert "ImageNet mean/std: the teacher scored" in text and "100.0% with ImageNet mean/std" in text
    assert card.teacher.train is None and card.teacher.factory == "initmodels:build"
    assert card.student.arch == "small_cnn" and card.student.kwargs == {"in_channels": 1, "num_classes": 2}
    assert "name your own with --student" in text


def test_init_tabular_csv_and_a_mixed_size_image_folder(user_dir):
    with open(user_dir / "t.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "c", "name", "y"])
        for i in range(40):
            w.writerow([i, i % 7, -i, f"row{i}", "yes" if i % 2 else "no"])
    text = init_card("initmodels:tabular", "t.csv", label_column="y", student="initmodels:tabular")
    card = RecipeConfig.model_validate(yaml.safe_load(text))
    assert card.task == "tabular-classification" and card.data.feature_columns == ["a", "b", "c"]
    assert card.data.label_column == "y" and card.teacher.train is not None  # no weights: trained first
    # logit-only losses: one teacher pass into the cache instead of the teacher in every step
    assert card.distill.teacher_cache.enabled and not card.distill.augment
    assert {lc.kind for lc in card.distill.losses} == {"soft_label", "hard_label"}
    from PIL import Image

    for k, size in enumerate([(8, 8), (8, 8), (10, 12)]):
        (user_dir / "mixed" / f"k{k}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.zeros(size, np.uint8), "L").save(user_dir / "mixed" / f"k{k}" / f"{i}.png")
    text = init_card("small_cnn", "mixed")
    assert "image_size: [8, 8]" in text and "resized to the most common one" in text


def test_init_bad_sources(user_dir):
    with pytest.raises(ConfigError, match="cannot tell what model 'nonsense'"):
        model_spec("nonsense")
    with pytest.raises(ConfigError, match="does not exist"):
        data_spec("nowhere/")
    (user_dir / "emptyclass" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="has no images"):
        init_card("small_cnn", "emptyclass")


def test_init_passes_builder_kwargs_into_the_card(user_dir):
    with open(user_dir / "t.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "y"])
        for i in range(30):
            w.writerow([i, -i, i % 3])
    torch.manual_seed(0)
    torch.save(torch.nn.Linear(2, 3).state_dict(), user_dir / "lin.pt")
    # the weights are a 3-way head: without the kwargs the factory's default (2 classes) would not load them
    with pytest.raises(ConfigError, match=r"'weight' is \[3, 2\] in the file, \[2, 3\] in the model"):
        init_card("initmodels:tabular", "t.csv", weights="lin.pt", label_column="y")
    text = init_card("initmodels:tabular", "t.csv", weights="lin.pt", label_column="y",
                     teacher_kwargs={"in_features": 2, "num_classes": 3}, student_kwargs={"hidden": [8]})
    card = RecipeConfig.model_validate(yaml.safe_load(text))
    assert card.teacher.kwargs == {"in_features": 2, "num_classes": 3} and card.teacher.weights == "lin.pt"
    # the default zoo student keeps the kwargs read from the data; the user's override the rest
    assert card.student.arch == "mlp" and card.student.kwargs == {"in_features": 2, "num_classes": 3, "hidden": [8]}
    with pytest.raises(ConfigError, match="--teacher-kwargs must be a mapping"):
        init_card("initmodels:tabular", "t.csv", teacher_kwargs=[1, 2])  # type: ignore[arg-type]


def _table(path, n=30, cols=("a", "b"), label="y"):
    """A CSV of two numeric columns (and a 0/1 label column unless label is None)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*cols, *([label] if label else [])])
        for i in range(n):
            w.writerow([i, -i, *([i % 2] if label else [])])


def test_init_unlabeled_is_written_into_the_card_and_loads(user_dir):
    from edgekd.cards import load_recipe
    from edgekd.data import load

    _table(user_dir / "t.csv")
    _table(user_dir / "extra.csv", n=17, label=None)  # the transfer set: same feature columns, no labels
    text = init_card("initmodels:tabular", "t.csv", label_column="y", teacher_kwargs={"in_features": 2},
                     unlabeled="extra.csv")
    assert 'unlabeled: "extra.csv"  # 17 samples without labels' in text
    (user_dir / "card.yaml").write_text(text)
    card = load_recipe(str(user_dir / "card.yaml"))
    assert card.data.unlabeled == "extra.csv"
    splits = load(card.data)  # the build reads it: 17 samples with label -1 join the training split
    assert splits.n_unlabeled == 17 and int((splits.y_train == -1).sum()) == 17
    # without --unlabeled the card keeps the commented hint, and no data.unlabeled key
    plain = RecipeConfig.model_validate(yaml.safe_load(init_card("initmodels:tabular", "t.csv", label_column="y",
                                                                   teacher_kwargs={"in_features": 2})))
    assert plain.data.unlabeled is None


def test_init_unlabeled_must_exist_in_the_data_layout(user_dir):
    _table(user_dir / "t.csv")
    _photos(user_dir / "photos")
    kw = {"label_column": "y", "teacher_kwargs": {"in_features": 2}}
    with pytest.raises(ConfigError, match="--unlabeled nowhere.csv does not exist") as e:
        init_card("initmodels:tabular", "t.csv", unlabeled="nowhere.csv", **kw)
    assert e.value.exit_code == 2 and ".csv file with the same text/feature columns" in e.value.hint
    with pytest.raises(ConfigError, match=r"--unlabeled photos is a folder \(image-folder data\), but the labeled data is csv"):
        init_card("initmodels:tabular", "t.csv", unlabeled="photos", **kw)
    with pytest.raises(ConfigError, match="--unlabeled t.csv is a .csv file, but the labeled data is image-folder"):
        init_card("initmodels:build", "photos", weights="empty.pt", unlabeled="t.csv")
    # the right layout but other columns: the loader's own check, still a user error
    _table(user_dir / "other.csv", cols=("a", "z"), label=None)
    with pytest.raises(DataError) as e:
        init_card("initmodels:tabular", "t.csv", unlabeled="other.csv", **kw)
    assert e.value.exit_code == 2


STDOUT_SCRIPT = textwrap.dedent('''
    import ctypes, os, subprocess, sys
    from edgekd.init import stdout_to_stderr

    print("before")
    with stdout_to_stderr():
        print("Loaded pretrained weights for x (print)")
        os.write(1, b"written to fd 1\\n")
        subprocess.run([sys.executable, "-c", "print('from a child process')"], check=True)
        ctypes.CDLL(None).printf(b"from C printf\\n")  # a C extension's output, block-buffered into a pipe
    print("after")
''')


def test_stdout_to_stderr_covers_print_fd1_child_processes_and_c_stdio():
    import os
    import subprocess
    import sys
    from pathlib import Path

    import edgekd

    # C stdio buffers a pipe's output unless PYTHONUNBUFFERED is set: without it, printf's line is only
    # flushed at exit (into stdout) unless the redirect flushes it while fd 1 still points at stderr.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = str(Path(edgekd.__file__).resolve().parent.parent)
    r = subprocess.run([sys.executable, "-c", STDOUT_SCRIPT], capture_output=True, text=True, env=env, check=True)
    assert r.stdout == "before\nafter\n"
    for line in ("Loaded pretrained weights for x (print)", "written to fd 1", "from a child process", "from C printf"):
        assert line in r.stderr


def test_init_budgets_are_written_as_the_students_search(user_dir):
    """`edgekd init --latency-budget/--size-budget`: the card sizes the zoo student to them (student.search),
    the units are parsed, a bad value or a user's student without ranges is exit 2."""
    from edgekd.cards import load_recipe

    _table(user_dir / "t.csv")
    kw = {"label_column": "y", "teacher_kwargs": {"in_features": 2}}
    text = init_card("initmodels:tabular", "t.csv", latency_budget="500us", size_budget="1MiB", **kw)
    (user_dir / "card.yaml").write_text(text)
    card = load_recipe(str(user_dir / "card.yaml"))
    assert card.student.search.latency_ms == pytest.approx(0.5) and card.student.search.size_kib == 1024
    assert card.student.arch == "mlp"  # edgekd's zoo student: its widths and depths are the search space
    with pytest.raises(ConfigError, match="--latency-budget") as e:
        init_card("initmodels:tabular", "t.csv", latency_budget="fast", **kw)
    assert e.value.exit_code == 2
    with pytest.raises(ConfigError, match="no search space"):
        init_card("initmodels:tabular", "t.csv", student="initmodels:tabular", size_budget="64KiB", **kw)
    assert "search:" not in init_card("initmodels:tabular", "t.csv", **kw)  # no budget: the card as before
