"""The whole build under torchrun, as a user launches it: `torchrun --nproc_per_node 2 -m edgekd build ...`
with 2 gloo processes on this CPU. Rank 0 owns the folder and speaks for the build; the distill stage trains
on both ranks (DDP); a bad card is one error, not one per rank."""
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.e2e.conftest import FAST_PROFILE

pytestmark = pytest.mark.e2e


def _torchrun(*args, env=None, timeout=600):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                           f"--master_port={port}", "-m", "edgekd", *args], capture_output=True, text=True, env=e,
                          timeout=timeout)


def test_a_whole_build_under_torchrun(tmp_path):
    env = {"EDGEKD_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "b"
    # a bad override: both ranks refuse it at pre-flight, and the user reads it once (rank 0), exit 2
    r = _torchrun("build", "--recipe", "digits-mlp", "--quick", "--set", "distill.epochs=0", "--out", str(out), env=env)
    assert r.returncode != 0 and "exitcode  : 2" in r.stderr, r.stderr[-2000:]
    assert r.stderr.count("error:") == 1 and "distill.epochs" in r.stderr, r.stderr[-2000:]
    assert not out.exists() or not any(p.is_dir() and not p.name.startswith(".") for p in out.iterdir())

    r = _torchrun("build", "--recipe", "digits-mlp", "--quick", *FAST_PROFILE, "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("edgekd build recipe=digits-mlp") == 1  # rank 0 speaks; rank 1 is quiet
    assert r.stdout.count("report:") == 1
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "ok"
    assert [s["stage"] for s in run["stages"]] == ["teacher", "distill", "export", "quantize", "profile", "select", "report"]
    distill = json.loads((out / "distill" / "result.json").read_text())["metrics"]
    assert distill["world_size"] == 2  # the student trained on both ranks
    rep = json.loads((out / "report" / "report.json").read_text())
    assert rep["comparison"]["accuracy_retention"] > 0.85
    assert not list(out.glob(".*.tmp-*"))  # nothing half-published; rank 1's copies never entered the folder
