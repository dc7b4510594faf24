"""The wheel carries what a non-editable `pip install .` needs: every subpackage, the shipped recipe
and target cards, the prompt set and the CANN op table; and edgekd runs from it in another folder."""
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_explicit_package_list_matches_the_tree():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "edgekd").rglob("__init__.py")
               if "__pycache__" not in p.parts}
    listed = set(cfg["packages"])
    assert on_disk - listed == set(), "subpackages missing from pyproject's packages list"
    assert {"edgekd._cards.models", "edgekd._cards.targets"} <= listed


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    import shutil

    out = tmp_path_factory.mktemp("wheel")
    # build from a copy: setuptools leaves build/ behind, and a stale build/ can leak deleted modules
    src = tmp_path_factory.mktemp("src") / "edgekd-src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "builds", "build", "*.egg-info",
                                                              "__pycache__", ".cache", "benchmarks", "tests"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out)], capture_output=True, text=True)
    if r.returncode != 0 and "No module named" in r.stderr and "setuptools" in r.stderr:
        pytest.skip("setuptools not installed in this environment")
    assert r.returncode == 0, r.stderr[-2000:]
    return next(out.glob("edgekd-*.whl"))


def test_wheel_contains_cards_prompts_and_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for card in (ROOT / "models").glob("*.yaml"):
        assert f"edgekd/_cards/models/{card.name}" in names
    for card in (ROOT / "targets").glob("*.toml"):
        assert f"edgekd/_cards/targets/{card.name}" in names
    assert "edgekd/_cards/models/prompts/smollm2-prompts.jsonl" in names
    assert "edgekd/_cards/models/prompts/smollm2-prompts-900.jsonl" in names
    assert "edgekd/_cards/models/prompts/smollm2-prompts-grown-x3.jsonl" in names  # the card's default set
    # shipped teacher weights travel beside their cards (shipped.path is relative to the card's folder)
    from edgekd.cards import load_recipe

    assert "edgekd/_cards/models/weights/README.md" in names
    for card in (ROOT / "models").glob("*.yaml"):
        t = load_recipe(str(card)).teacher
        if t.shipped is not None:
            assert f"edgekd/_cards/models/{t.shipped.path}" in names
            assert f"edgekd/_cards/models/{Path(t.shipped.path).with_suffix('.json').as_posix()}" in names
    assert "edgekd/targets/ascend/cann_ops.json" in names
    assert "edgekd/report/report.schema.json" in names  # the published report.json schema
    assert "edgekd/llm/sequences.py" in names and "edgekd/tasks/text_generation/__init__.py" in names


def test_installed_wheel_finds_its_cards_from_any_folder(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    code = ("import edgekd, edgekd.cards as c; from edgekd.llm.generate import load_prompts;"
            "print(edgekd.__file__); print(sorted(c.shipped('models'))); print(sorted(c.shipped('targets')));"
            "print(len(load_prompts(None)))")
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[0].startswith(str(site))  # the wheel's copy, not the source tree
    assert "fashion-cnn" in lines[1] and "smollm2-seqkd" in lines[1] and "cpu" in lines[2]
    assert int(lines[3]) >= 200
