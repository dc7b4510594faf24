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
