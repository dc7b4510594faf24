"""`edgekd init ... > card.yaml` through the real CLI: the card alone on stdout while the user's
factory prints (Python print at import and at build, a child process writing to fd 1), and the one
logging set-up: an edgekd logger's INFO reaches stderr, DEBUG only with --debug, neither with --quiet."""
import csv
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

pytestmark = pytest.mark.e2e

# A user's loader in the style of efficientnet_pytorch: it announces its weights on stdout.
MODELS_PY = textwrap.dedent('''
    import logging
    import subprocess
    import sys

    from torch import nn

    print("Loaded pretrained weights for tabnet-b0 (at import)")


    def build(in_features=2, num_classes=2):
        print("Loaded pretrained weights for tabnet-b0 (at build)")
        # a C extension or a helper process writes to file descriptor 1, past sys.stdout
        subprocess.run([sys.executable, "-c", "print('child process chatter')"], check=True)
        logging.getLogger("edgekd.userfactory").info("an edgekd INFO notice from inside the command")
        logging.getLogger("edgekd.userfactory").debug("an edgekd DEBUG detail from inside the command")
        return nn.Linear(in_features, num_classes)
''')


def edgekd(*args, cwd):
    env = {**os.environ, "EDGEKD_CACHE": str(cwd / "cache")}
    env.pop("EDGEKD_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


@pytest.fixture
def user(tmp_path):
    import torch

    (tmp_path / "loudmodels.py").write_text(MODELS_PY)
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "lin.pt")
    with open(tmp_path / "t.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "y"])
        for i in range(30):
            w.writerow([i, -i, i % 2])
    return tmp_path


INIT = ("init", "--teacher", "loudmodels:build", "--weights", "lin.pt", "--data", "t.csv", "--label-column", "y")


def test_init_stdout_is_only_the_card_and_info_logs_reach_stderr(user):
    from edgekd.cards import load_recipe

    r = edgekd(*INIT, cwd=user)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("# Recipe card written by `edgekd init`")
    assert "Loaded" not in r.stdout and "chatter" not in r.stdout
    (user / "card.yaml").write_text(r.stdout)  # what `edgekd init ... > card.yaml` leaves
    card = load_recipe(str(user / "card.yaml"))
    assert card.teacher.factory == "loudmodels:build" and card.data.label_column == "y"
    assert yaml.safe_load(r.stdout)["task"] == "tabular-classification"
    for line in ("Loaded pretrained weights for tabnet-b0 (at import)", "Loaded pretrained weights for tabnet-b0 (at build)",
                 "child process chatter", "an edgekd INFO notice from inside the command"):
        assert line in r.stderr, line
    assert "DEBUG detail" not in r.stderr


def test_debug_shows_debug_logs_and_quiet_hides_info(user):
    r = edgekd("--debug", *INIT, cwd=user)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "an edgekd DEBUG detail from inside the command" in r.stderr and "INFO notice" in r.stderr
    assert "DEBUG detail" not in r.stdout
    r = edgekd("--quiet", *INIT, cwd=user)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "INFO notice" not in r.stderr and "DEBUG detail" not in r.stderr
    assert r.stdout.startswith("# Recipe card")


def test_init_unlabeled_through_the_cli(user):
    with open(user / "extra.csv", "w", newline="") as f:
        csv.writer(f).writerows([["a", "b"], *([i, i + 1] for i in range(9))])
    r = edgekd(*INIT, "--unlabeled", "extra.csv", cwd=user)
    assert r.returncode == 0, r.stderr[-2000:]
    assert yaml.safe_load(r.stdout)["data"]["unlabeled"] == "extra.csv"
    r = edgekd(*INIT, "--unlabeled", "missing.csv", cwd=user)
    assert r.returncode == 2 and r.stdout == ""
    assert "error: --unlabeled missing.csv does not exist" in r.stderr and "hint:" in r.stderr
