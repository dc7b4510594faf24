import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgekd.cards import load_recipe, load_target
from edgekd.errors import UserError
from edgekd.pipeline import BuildContext, Stage, StageOutput, prepare_out, run


def _ctx(tmp_path, **over):
    return BuildContext(out=tmp_path / "b", recipe=load_recipe("digits-mlp"), target=load_target("cpu"),
                        recipe_ref="digits-mlp", target_ref="cpu", options=over)


def _graph(calls, cfg_a=lambda ctx: {"a": 1}, cfg_b=lambda ctx: {"b": ctx.options.get("b", 1)}):
    def a(inputs, ctx, wd):
        calls.append("a")
        (wd / "a.txt").write_text("A")
        return StageOutput({"out": "a.txt"}, {"n": 1})

    def b(inputs, ctx, wd):
        calls.append("b")
        (wd / "b.txt").write_text(inputs["a"].path("out").read_text() + "B")
        return StageOutput({"out": "b.txt"}, {})

    return [Stage("a", a, [], cfg_a), Stage("b", b, ["a"], cfg_b)]


def test_rerun_reuses_finished_stages(tmp_path):
    calls = []
    run(_graph(calls), _ctx(tmp_path))
    assert calls == ["a", "b"]
    res = run(_graph(calls), _ctx(tmp_path))
    assert calls == ["a", "b"] and res["a"].reused and res["b"].reused
    lineage = json.loads((tmp_path / "b" / "run.json").read_text())
    assert [s["stage"] for s in lineage["stages"]] == ["a", "b"] and all(s["reused"] for s in lineage["stages"])


def test_a_stage_this_build_leaves_out_leaves_the_lineage(tmp_path):
    # an earlier build in the folder ran `b`; this one's settings leave it out (its `when`): run.json must not keep
    # the old entry, which a report would read as this build's (the quantized_teacher stage's rows)
    calls = []
    run(_graph(calls), _ctx(tmp_path))
    a, b = _graph(calls)
    b.when = lambda ctx: not ctx.options.get("skip_b")
    run([a, b], _ctx(tmp_path, skip_b=True))
    assert calls == ["a", "b"]
    assert [s["stage"] for s in json.loads((tmp_path / "b" / "run.json").read_text())["stages"]] == ["a"]
    run([a, b], _ctx(tmp_path))  # on again: its finished folder is reused, and back in the lineage
    assert calls == ["a", "b"]
    assert [s["stage"] for s in json.loads((tmp_path / "b" / "run.json").read_text())["stages"]] == ["a", "b"]


def test_changing_downstream_config_reruns_only_downstream(tmp_path):
    calls = []
    run(_graph(calls), _ctx(tmp_path))
    run(_graph(calls), _ctx(tmp_path, b=2))
    assert calls == ["a", "b", "b"]


def test_tampered_output_is_not_reused(tmp_path):
    calls = []
    run(_graph(calls), _ctx(tmp_path))
    (tmp_path / "b" / "a" / "a.txt").write_text("tampered")
    run(_graph(calls), _ctx(tmp_path))
    # a is redone (its file no longer matches its sha256); b is reused: a's new output is identical
    assert calls == ["a", "b", "a"]
    assert (tmp_path / "b" / "a" / "a.txt").read_text() == "A"


def test_changed_upstream_output_reruns_downstream(tmp_path):
    calls, n = [], iter(range(100))

    def a(inputs, ctx, wd):
        calls.append("a")
        (wd / "a.txt").write_text(f"A{next(n)}")  # nondeterministic producer
        return StageOutput({"out": "a.txt"}, {})

    g = _graph(calls)
    g[0] = Stage("a", a, [], lambda ctx: {})
    run(g, _ctx(tmp_path))
    (tmp_path / "b" / "a" / "a.txt").write_text("tampered")
    run(g, _ctx(tmp_path))
    assert calls == ["a", "b", "a", "b"]


def test_failed_stage_leaves_no_folder(tmp_path):
    def boom(inputs, ctx, wd):
        (wd / "half.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run([Stage("a", boom, [], lambda ctx: {})], _ctx(tmp_path))
    out = tmp_path / "b"
    assert not (out / "a").exists() and not list(out.glob(".a.tmp-*"))
    assert json.loads((out / "run.json").read_text())["status"].startswith("failed")


def test_killed_stage_is_not_taken_as_done(tmp_path):
    """SIGKILL a build inside a stage: the next build must redo that stage."""
    out = tmp_path / "b"
    script = textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        from edgekd.cards import load_recipe, load_target
        from edgekd.pipeline import BuildContext, Stage, StageOutput, run
        def slow(inputs, ctx, wd):
            (wd / "x.txt").write_text("partial")
            Path({str(tmp_path / "started")!r}).write_text("1")
            time.sleep(60)
            return StageOutput({{"x": "x.txt"}}, {{}})
        ctx = BuildContext(out=Path({str(out)!r}), recipe=load_recipe("digits-mlp"), target=load_target("cpu"),
                           recipe_ref="digits-mlp", target_ref="cpu")
        run([Stage("a", slow, [], lambda ctx: {{}})], ctx)
    """)
    p = subprocess.Popen([sys.executable, "-c", script])
    import time
    for _ in range(300):
        if (tmp_path / "started").exists():
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert list(out.glob(".a.tmp-*")) and not (out / "a").exists()
    calls = []

    def fast(inputs, ctx, wd):
        calls.append(1)
        (wd / "x.txt").write_text("done")
        return StageOutput({"x": "x.txt"}, {})

    res = run([Stage("a", fast, [], lambda ctx: {})], _ctx(tmp_path))
    assert calls == [1] and not res["a"].reused
    assert (out / "a" / "x.txt").read_text() == "done" and not list(out.glob(".a.tmp-*"))


def test_unwritable_out(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(UserError) as e:
        prepare_out(f / "sub")
    assert e.value.exit_code == 2


def _holder_script(out, started, sleep=60, extra=""):
    return textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        from edgekd.cards import load_recipe, load_target
        from edgekd.pipeline import BuildContext, Stage, StageOutput, run
        {extra}
        def slow(inputs, ctx, wd):
            Path({str(started)!r}).write_text("1")
            time.sleep({sleep})
            (wd / "x.txt").write_text("slow")
            return StageOutput({{"x": "x.txt"}}, {{}})
        ctx = BuildContext(out=Path({str(out)!r}), recipe=load_recipe("digits-mlp"), target=load_target("cpu"),
                           recipe_ref="digits-mlp", target_ref="cpu")
        run([Stage("a", slow, [], lambda ctx: {{}})], ctx)
    """)


def _wait_for(path, seconds=30.0):
    import time

    for _ in range(int(seconds / 0.05)):
        if path.exists():
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def test_second_build_into_the_same_folder_exits_2_naming_the_holder(tmp_path):
    out = tmp_path / "b"
    p = subprocess.Popen([sys.executable, "-c", _holder_script(out, tmp_path / "started")])
    try:
        _wait_for(tmp_path / "started")
        calls = []
        with pytest.raises(UserError) as e:
            run(_graph(calls), _ctx(tmp_path))
        assert e.value.exit_code == 2 and f"in use by process {p.pid}" in e.value.message and calls == []
        assert list(out.glob(".a.tmp-*")), "the refused build must not touch the holder's temp folder"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    # The kernel released the dead holder's lock: the next build runs, and cleans its leftovers.
    calls = []
    run(_graph(calls), _ctx(tmp_path))
    assert calls == ["a", "b"] and not list(out.glob(".a.tmp-*"))


def test_leftovers_of_dead_processes_are_cleaned_live_ones_kept(tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for name in (f".a.tmp-{dead.pid}", f".a.old-{dead.pid}", f".a.tmp-{live.pid}", f".b.old-{live.pid}"):
            (out / name).mkdir()
            (out / name / "f").write_text("x")
        run(_graph([]), _ctx(tmp_path))
        left = sorted(p.name for p in out.glob(".*-*") if p.is_dir())
        assert left == sorted([f".a.tmp-{live.pid}", f".b.old-{live.pid}"])
    finally:
        live.kill()
        live.wait()


def test_cache_entry_makes_a_shared_entry_once(tmp_path):
    """Two processes that want the same cache entry: one makes it, the other waits and reuses it."""
    entry = tmp_path / "cache" / "teachers" / "k1"
    log = tmp_path / "log"
    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from edgekd.fsio import cache_entry
        entry, log = Path({str(entry)!r}), Path({str(log)!r})
        with cache_entry(entry, done=lambda p: (p / "teacher.pt").is_file(),
                         on_wait=lambda: open(log, "a").write(f"wait {{os.getpid()}}\\n")) as tmp:
            Path(sys.argv[1]).write_text("1")  # p2 starts only once p1 holds the lock
            if tmp is None:
                open(log, "a").write(f"reused {{os.getpid()}}\\n")
            else:
                time.sleep(1.0)  # training
                (tmp / "teacher.pt").write_text(str(os.getpid()))
                open(log, "a").write(f"built {{os.getpid()}}\\n")
    """)
    p1 = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "s1")])
    _wait_for(tmp_path / "s1")
    p2 = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "s2")])
    assert p1.wait() == 0 and p2.wait() == 0
    events = [ln.split() for ln in log.read_text().splitlines()]
    assert sorted(e[0] for e in events) == ["built", "reused", "wait"], events
    builder = next(int(e[1]) for e in events if e[0] == "built")
    assert (entry / "teacher.pt").read_text() == str(builder)
    assert sorted(p.name for p in entry.parent.iterdir()) == [".k1.lock", "k1"]


def test_cache_entry_publishes_nothing_for_a_failed_or_unfinished_writer(tmp_path):
    from edgekd.errors import StageError
    from edgekd.fsio import cache_entry

    entry = tmp_path / "k"
    with pytest.raises(ZeroDivisionError):
        with cache_entry(entry) as tmp:
            (tmp / "half").write_text("x")
            1 / 0
    with pytest.raises(StageError, match="not completed"):  # its completion marker never written
        with cache_entry(entry, done=lambda p: (p / "done").is_file()) as tmp:
            (tmp / "half").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".k.lock"]
    with cache_entry(entry, done=lambda p: (p / "done").is_file()) as tmp:
        (tmp / "done").write_text("1")
    with cache_entry(entry, done=lambda p: (p / "done").is_file()) as tmp:
        assert tmp is None  # complete: nothing to make
    assert sorted(p.name for p in entry.iterdir()) == ["done"]


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"recipe": "digits-mlp"}', '\udcff'])
def test_corrupt_run_json_is_refused_not_overwritten(tmp_path, text):
    out = tmp_path / "b"
    out.mkdir()
    raw = text.encode("utf-8", "surrogateescape")
    (out / "run.json").write_bytes(raw)
    calls = []
    with pytest.raises(UserError) as e:
        run(_graph(calls), _ctx(tmp_path))
    assert e.value.exit_code == 2 and "run.json" in e.value.message and calls == []
    assert (out / "run.json").read_bytes() == raw  # the lineage is not silently dropped


def test_run_json_writes_are_durable(tmp_path, monkeypatch):
    """write_json_atomic fsyncs the file and its folder before a reader can rely on it."""
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd))[1])
    run(_graph([]), _ctx(tmp_path))
    out = tmp_path / "b"
    assert str(out / "run.json") in synced or any(s.startswith(str(out / ".run.json.tmp-")) for s in synced)
    assert str(out) in synced  # the rename itself is made durable
    assert any(s.startswith(str(out / ".a.tmp-")) for s in synced)  # stage files before the folder is published


# --------------------------------------------------------------------------- a stage sees only what keys it


def _one_stage(fn, reads):
    return [Stage("s", fn, [], lambda ctx: {}, reads=reads)]


def test_a_stage_reading_outside_its_reads_fails_naming_the_field(tmp_path):
    from edgekd.errors import StageError

    def reads_quantize(inputs, ctx, wd):
        ctx.recipe.distill.epochs  # declared
        ctx.recipe.name  # identity: always readable
        ctx.recipe.quantize.accuracy_budget  # not declared
        return StageOutput({}, {})

    with pytest.raises(StageError, match=r"stage 's': recipe read 'quantize'"):
        run(_one_stage(reads_quantize, ("recipe.distill",)), _ctx(tmp_path))

    def reads_nested(inputs, ctx, wd):
        ctx.recipe.distill.tasks  # declared, nested
        ctx.recipe.distill.epochs  # its sibling is not
        return StageOutput({}, {})

    with pytest.raises(StageError, match=r"recipe.distill read 'epochs'"):
        run(_one_stage(reads_nested, ("recipe.distill.tasks",)), _ctx(tmp_path / "2"))


def test_only_a_whole_cards_view_exposes_its_identity(tmp_path):
    """name/task are readable on the recipe and target views, whatever the stage is called, but a
    section's view keeps its own `name` (the device's) behind its reads."""
    from edgekd.errors import StageError

    seen = []

    def reads_identity(inputs, ctx, wd):
        seen.append((ctx.recipe.name, ctx.target.name))
        ctx.target.device.peak_gflops  # declared
        ctx.target.device.name  # a section field, not the card's identity: not declared
        return StageOutput({}, {})

    graph = [Stage("v1.2", reads_identity, [], lambda ctx: {}, reads=("target.device.peak_gflops",))]
    with pytest.raises(StageError, match=r"target.device read 'name'"):
        run(graph, _ctx(tmp_path))
    ctx = _ctx(tmp_path / "2")
    assert seen == [(ctx.recipe.name, ctx.target.name)]


def test_the_key_follows_the_declared_sections_only(tmp_path):
    from edgekd.pipeline import stage_key

    stage = _one_stage(lambda i, c, w: StageOutput(), ("recipe.distill", "target.onnx"))[0]
    base = _ctx(tmp_path)
    key = stage_key(stage, base, {})
    epochs = base.recipe.model_copy(update={"distill": base.recipe.distill.model_copy(update={"epochs": 99})})
    budget = base.recipe.model_copy(update={"quantize": base.recipe.quantize.model_copy(update={"accuracy_budget": 9.0})})
    assert stage_key(stage, _ctx(tmp_path), {}) == key  # stable
    assert stage_key(stage, BuildContext(**{**base.__dict__, "recipe": epochs}), {}) != key  # declared: re-keys
    assert stage_key(stage, BuildContext(**{**base.__dict__, "recipe": budget}), {}) == key  # not read: same key


def test_reads_tree_merges_paths():
    from edgekd.pipeline import reads_tree

    assert reads_tree(("recipe.distill.tasks", "recipe.distill.extra_teachers", "target")) == {
        "recipe": {"distill": {"tasks": True, "extra_teachers": True}}, "target": True}
    assert reads_tree(("recipe.distill", "recipe.distill.tasks")) == {"recipe": {"distill": True}}


def test_preflight_checks_run_first_and_refuse_before_anything_is_written(tmp_path):
    calls, seen = [], []

    def refuse(ctx):
        seen.append(ctx.target.name)
        raise UserError("target says no", hint="fix the card")

    with pytest.raises(UserError, match="target says no"):
        run(_graph(calls), _ctx(tmp_path), preflight=[refuse])
    assert seen == ["cpu"] and calls == [] and not (tmp_path / "b").exists()
    run(_graph(calls), _ctx(tmp_path), preflight=[lambda ctx: seen.append("ok")])
    assert seen[-1] == "ok" and calls == ["a", "b"]


RANKS_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from edgekd import dist
    from edgekd.cards import load_recipe, load_target
    from edgekd.errors import StageError
    from edgekd.pipeline import BuildContext, Stage, StageOutput, run

    out, fail_rank = Path(sys.argv[1]), int(sys.argv[2])
    rank, world = dist.init("cpu")
    log = out.parent / f"calls-{rank}.txt"

    def stage(name, fails=False):
        def fn(inputs, ctx, wd):
            with open(log, "a") as f:
                f.write(name + "\\n")
            if fails and ctx.rank == fail_rank:
                raise StageError(f"{name} broke here", hint="a test failure")
            (wd / "x.txt").write_text(f"{name} by rank {ctx.rank} of {ctx.world}; read " +
                                      ",".join(v.path("x").read_text() for v in inputs.values()))
            return StageOutput({"x": "x.txt"}, {"rank": ctx.rank})
        return fn

    stages = [Stage("alone", stage("alone"), [], lambda c: {}),
              Stage("shared", stage("shared"), ["alone"], lambda c: {}, parallel=True),
              Stage("last", stage("last", fails=True), ["shared"], lambda c: {}, parallel=fail_rank >= 0)]
    ctx = BuildContext(out=out, recipe=load_recipe("digits-mlp"), target=load_target("cpu"), recipe_ref="digits-mlp",
                       target_ref="cpu", rank=rank, world=world, comm=dist)
    try:
        res = run(stages, ctx)
        json.dump({k: v.metrics for k, v in res.items()}, open(out.parent / f"res-{rank}.json", "w"))
    except Exception as e:
        json.dump({"error": str(e), "quiet": dist.quiet_error(e), "code": e.exit_code},
                  open(out.parent / f"err-{rank}.json", "w"))
        sys.exit(e.exit_code)
""")


def _ranks(tmp_path, fail_rank):
    import socket

    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT)
    with socket.socket() as s_:
        s_.bind(("127.0.0.1", 0))
        port = s_.getsockname()[1]
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                           f"--master_port={port}", str(script), str(tmp_path / "b"), str(fail_rank)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_under_torchrun_rank_0_publishes_and_a_failure_on_any_rank_is_one_error(tmp_path):
    """2 gloo processes run a 3-stage graph: `alone` runs on rank 0 only, the `parallel` stages on both;
    only rank 0's folders are published and both ranks read them. Then the last stage fails on rank 1
    only: rank 0 raises that error (named by rank), rank 1 stays quiet, and the stage is not published."""
    r = _ranks(tmp_path, fail_rank=-1)
    assert r.returncode == 0, r.stderr[-3000:]
    calls = {k: (tmp_path / f"calls-{k}.txt").read_text().split() for k in (0, 1)}
    assert calls == {0: ["alone", "shared", "last"], 1: ["shared"]}
    b = tmp_path / "b"
    assert (b / "shared" / "x.txt").read_text() == "shared by rank 0 of 2; read alone by rank 0 of 2; read "
    assert sorted(p.name for p in b.iterdir() if p.name.startswith(".") and "tmp" in p.name) == []
    res = [json.loads((tmp_path / f"res-{k}.json").read_text()) for k in (0, 1)]
    assert res[0] == res[1] == {"alone": {"rank": 0}, "shared": {"rank": 0}, "last": {"rank": 0}}
    assert json.loads((b / "run.json").read_text())["status"] == "ok"

    import shutil

    shutil.rmtree(b)
    for k in (0, 1):
        (tmp_path / f"calls-{k}.txt").unlink()
    r = _ranks(tmp_path, fail_rank=1)
    assert r.returncode != 0
    e0, e1 = (json.loads((tmp_path / f"err-{k}.json").read_text()) for k in (0, 1))
    assert e0 == {"error": "rank 1: last broke here", "quiet": False, "code": 4}
    assert e1["quiet"] and e1["code"] == 4  # rank 1's own error, reported by rank 0
    assert (b / "shared").is_dir() and not (b / "last").exists()  # no half-published stage
    assert json.loads((b / "run.json").read_text())["status"] == "failed: rank 1: last broke here"


def test_the_cli_runs_the_target_preflight(tmp_path):
    """`edgekd build` hands the target family's checks to the engine: a bad Ascend soc_version exits 2
    before any stage, and no build folder is made (without the hand-over the build starts)."""
    out = tmp_path / "b"
    r = subprocess.run([sys.executable, "-m", "edgekd", "build", "--recipe", "digits-mlp", "--target", "ascend-310p",
                        "--quick", "--out", str(out), "--set", "target.ascend.soc_version=Bogus"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
                            "EDGEKD_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "unknown Ascend soc_version 'Bogus'" in r.stderr and not out.exists()
