import json
import os
import signal
import subprocess
import sys
import textwrap

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
