"""Two builds sharing one EDGEKD_CACHE (two processes, not threads) ask for the same teacher-logit
entries, top-k sequence entry and generations file at the same moment: both succeed, the teacher
work is done once, the cache ends up exactly as after a one-process run, and nothing half-made or
temporary is left (tests/shared_cache_worker.py is one build)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import ROOT

WORKER = ROOT / "tests" / "shared_cache_worker.py"


def _start(folder: Path, tag: str, peers: int) -> tuple[subprocess.Popen, Path]:
    out = folder / f"{tag}.json"
    env = {**os.environ, "EDGEKD_CACHE": str(folder / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(WORKER), tag, str(peers), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), out


def _finish(proc: subprocess.Popen, out: Path) -> dict:
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, log[-3000:]
    return json.loads(out.read_text())


def _tree(cache: Path) -> dict[str, bytes | None]:
    """Every path under the cache, with the content of its data files (lock files carry none)."""
    return {p.relative_to(cache).as_posix(): (None if p.is_dir() or p.name.endswith(".lock") else p.read_bytes())
            for p in sorted(cache.rglob("*"))}


def _logits(cache: Path) -> list[np.ndarray]:
    from edgekd.distill.cache import TeacherLogitCache, TopKSequenceCache

    out = []
    for th in ("t", "t2"):
        c = TeacherLogitCache(cache / "logits", teacher_hash=th, data_hash="d", top_k=7).open()
        out.append(c.get(np.arange(len(c))).numpy())
    s = TopKSequenceCache(cache / "llm-logits" / "k").open()
    out += [t.numpy() for t in s.get(list(range(len(s))))]
    return out


def test_two_builds_sharing_a_cache_make_each_entry_once(tmp_path, monkeypatch):
    from tests import shared_cache_worker

    one, two = tmp_path / "one", tmp_path / "two"
    procs = [_start(two, "a", 2), _start(two, "b", 2)]
    # the one-process reference runs here meanwhile (in this process: one torch import fewer)
    monkeypatch.setenv("EDGEKD_CACHE", str(one / "cache"))
    shared_cache_worker.main("solo", 1, tmp_path / "solo.json")
    solo = json.loads((tmp_path / "solo.json").read_text())
    a, b = (_finish(p, o) for p, o in procs)

    # both builds succeed and get the one-process answers
    assert a["answers"] == b["answers"] == solo["answers"]
    # each entry's teacher work was done by one build only: the other waited on the lock, then reused it
    for entry in ("logits", "topk", "generations"):
        assert solo["calls"][entry] > 0
        assert sorted([a["calls"][entry], b["calls"][entry]]) == [0, solo["calls"][entry]], entry

    # the shared cache holds exactly what a one-process run leaves: the same files, byte for byte
    # (metadata with a creation time aside), no temp file, shard or second copy left over
    t1, t2 = _tree(one / "cache"), _tree(two / "cache")
    assert t1.keys() == t2.keys()
    assert not [k for k in t2 if ".tmp-" in k or ".old-" in k or ".shards" in k or "shard-" in k]
    for k, v in t1.items():
        if not k.endswith("meta.json"):
            assert t2[k] == v, k
    for x, y in zip(_logits(one / "cache"), _logits(two / "cache"), strict=True):
        assert np.array_equal(x, y)
    # no prompt answered twice, no line torn or interleaved in the shared generations file
    lines = (two / "cache" / "generations" / "g.jsonl").read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines[1:]]
    assert len(ids) == len(set(ids)) == len(a["answers"])
