import os
import subprocess
import sys

HEAVY = ["onnxruntime", "nncf", "optimum", "transformers", "openvino", "executorch", "torch_npu", "torch", "torchvision", "datasets"]


def test_import_edgekd_and_cli_stays_light():
    code = ("import sys, edgekd, edgekd.cli, edgekd.config, edgekd.cards, edgekd.init, edgekd.pipeline; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"heavy modules imported: {out}"


def test_help_runs_without_heavy_imports():
    r = subprocess.run([sys.executable, "-m", "edgekd", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "build" in r.stdout


_BUILD_THEN_REPORT_TORCH = """
import sys
from edgekd.cli import app
try:
    app(sys.argv[1:])
except SystemExit as e:
    print("exit", e.code, "torch" in sys.modules)
"""


def _bad_build(tmp_path, *args: str) -> tuple[str, str]:
    r = subprocess.run([sys.executable, "-c", _BUILD_THEN_REPORT_TORCH, "build", "--quick", "--out", str(tmp_path / "b"),
                        *args], capture_output=True, text=True, env={**os.environ, "EDGEKD_CACHE": str(tmp_path / "c")})
    return r.stdout.strip().splitlines()[-1], r.stderr


def test_a_recipe_mistake_is_exit_2_before_torch_is_imported(tmp_path):
    """Pre-flight refusals read the recipe's options (loss terms: edgekd/distill/options.py) and files (the shipped
    teacher's sha256: edgekd/zoo/files.py) without importing torch, so a typo costs a fraction of a second."""
    last, err = _bad_build(tmp_path, "--recipe", "smollm2-seqkd",
                           "--set", 'distill.losses=[{"kind": "soft_label", "weight": 1.0, "temprature": 2.0}]')
    assert last == "exit 2 False" and "did you mean 'temperature'" in err
    last, err = _bad_build(tmp_path, "--recipe", "fashion-cnn", "--set", f"data.path={tmp_path / 'nothing'}")
    assert last == "exit 2 False" and "Fashion-MNIST not found" in err
    last, err = _bad_build(tmp_path, "--recipe", "digits-mlp", "--set", 'distill.losses=[{"kind": "soft_lable"}]')
    assert last == "exit 2 False" and "did you mean 'soft_label'" in err
    assert not (tmp_path / "b").exists()
    last, err = _bad_build(tmp_path, "--recipe", "digits-mlp", "--set", 'distill.weighting={"kind": "confidance"}')
    assert last == "exit 2 False" and "did you mean 'teacher_confidence'" in err
    last, err = _bad_build(tmp_path, "--recipe", "smollm2-seqkd", "--set",
                           'distill.weighting={"kind": "teacher_entropy", "temprature": 2}')
    assert last == "exit 2 False" and "did you mean 'temperature'" in err
    assert not (tmp_path / "b").exists()
