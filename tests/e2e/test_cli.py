"""Drive the real CLI end to end on tiny data: `edgekd build --target cpu --quick` and bad input."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import needs_fmnist
from tests.e2e.conftest import FAST_PROFILE
from tests.e2e.conftest import edgekd as run_edgekd

pytestmark = pytest.mark.e2e
CONTRACT_MODEL_KEYS = {"role", "variant", "format", "runtime", "path", "params", "size_bytes", "accuracy",
                       "latency_ms", "throughput_per_s", "peak_rss_bytes", "energy"}


def edgekd(*args, env=None, cwd=None, timeout=900):
    return run_edgekd(*args, env=env, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def quick_build(tmp_path_factory, fashion_cache):
    root = tmp_path_factory.mktemp("e2e")
    env = dict(fashion_cache)  # the session's fashion-cnn teacher cache (the device tests share it)
    out = root / "build"
    r = edgekd("build", "--target", "cpu", "--quick", "--out", str(out), "--json", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, json.loads(r.stdout), env, r


@needs_fmnist
def test_quick_build_report_contract(quick_build):
    out, report, _, _ = quick_build
    for k in ("schema_version", "recipe", "target", "created", "edgekd_version", "environment", "models", "selected",
              "comparison", "candidates", "profile_settings"):
        assert k in report, k
    assert report["recipe"] == "fashion-cnn" and report["target"] == "cpu"
    env = report["environment"]
    assert env["threads"] == 1 and "onnxruntime" in env["runtimes"] and env["cpu"]
    roles = {(m["role"], m["variant"]) for m in report["models"]}
    assert ("teacher", "fp32-torch") in roles and ("teacher", "fp32") in roles and ("student", "fp32") in roles
    for m in report["models"]:
        assert CONTRACT_MODEL_KEYS <= set(m), set(CONTRACT_MODEL_KEYS) - set(m)
        lat = m["latency_ms"]
        assert {"p50", "p90", "p99", "mean", "n"} <= set(lat) and lat["p50"] <= lat["p90"] <= lat["p99"]
        assert m["energy"]["method"].startswith("estimate-")  # no counters on this host: never shown as measured
        assert 0 < m["accuracy"] <= 1 and m["size_bytes"] > 0 and m["peak_rss_bytes"] > 0
    c = report["comparison"]
    for k in ("speedup_p50", "size_ratio", "peak_rss_ratio", "energy_ratio", "accuracy_retention"):
        assert c[k] is not None and c[k] > 0, k
    sel = report["selected"]
    assert sel.startswith("student/")
    statuses = {x["variant"]: x["status"] for x in report["candidates"]}
    assert statuses[sel.split("/", 1)[1]] == "selected"
    assert set(statuses) >= {"fp32", "int8-dynamic", "int8-qdq"}
    # the card's rule, stated in the report and kept: the smallest within budget, at most 25% slower than fp32
    rule = report["selection"]
    assert rule["objective"] == "size" and rule["max_latency_growth"] == 0.25 and rule["budget_points"] == 0.5
    p50 = {x["variant"]: (x.get("latency_ms") or {}).get("p50") for x in report["candidates"]}
    assert p50[sel.split("/", 1)[1]] <= 1.25 * p50["fp32"] + 1e-12
    assert all(p50[v] > 1.25 * p50["fp32"] for v, st in statuses.items() if st == "slower-than-fp32")
    # the student learned something real in 2 epochs on 10k samples
    student_fp32 = next(m for m in report["models"] if m["role"] == "student" and m["variant"] == "fp32")
    assert student_fp32["accuracy"] > 0.6
    for f in ("report.json", "report.md", "report.html"):
        assert (out / "report" / f).is_file()
    assert json.loads((out / "report" / "report.json").read_text())["selected"] == sel


@needs_fmnist
def test_fp32_and_int8_artifacts_agree_in_onnxruntime(quick_build):
    import onnxruntime as ort

    out, report, _, _ = quick_build
    x = np.load(out / "profile" / "inputs.npy")[:64]
    outs = {}
    for c in report["candidates"]:
        if c["variant"] in ("fp32", "int8-dynamic", "int8-qdq") and c["error"] is None:
            s = ort.InferenceSession(str(out / c["path"]), providers=["CPUExecutionProvider"])
            outs[c["variant"]] = s.run(None, {s.get_inputs()[0].name: x})[0]
    assert "fp32" in outs and ({"int8-dynamic", "int8-qdq"} & set(outs))
    for v, o in outs.items():
        agree = (o.argmax(1) == outs["fp32"].argmax(1)).mean()
        assert agree >= 0.9, f"{v} agrees with fp32 on only {agree:.2%} of samples"


@needs_fmnist
def test_rerun_reuses_every_stage_and_quantize_change_does_not_retrain(quick_build, tmp_path):
    from tests.e2e.conftest import copy_build

    src, _, env, _ = quick_build
    out = copy_build(src, tmp_path / "b")  # the shared build stays as built: other tests read (and copy) it
    r = edgekd("build", "--target", "cpu", "--quick", "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    run = json.loads((out / "run.json").read_text())
    reused = {s["stage"]: s["reused"] for s in run["stages"]}
    assert all(reused[s] for s in ("teacher", "distill", "export", "quantize", "profile", "select"))
    r = edgekd("build", "--target", "cpu", "--quick", "--out", str(out), "--set", "quantize.candidates=[fp32, int8-dynamic]",
               "--quiet", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    reused = {s["stage"]: s["reused"] for s in json.loads((out / "run.json").read_text())["stages"]}
    assert reused["teacher"] and reused["distill"] and reused["export"] and not reused["quantize"]


@needs_fmnist
def test_the_quantized_teacher_sits_beside_the_student(quick_build, tmp_path):
    """evaluate.quantized_teacher (off in --quick): the teacher's FP32 ONNX made int8-dynamic and int8-qdq by the
    student's candidate makers, scored on the test split and timed by the profile benchmark; only that stage and the
    report run again; the teacher rows are never candidates; the verdict is one computed line."""
    from tests.e2e.conftest import copy_build

    src, before, env, _ = quick_build
    out = copy_build(src, tmp_path / "b")
    r = edgekd("build", "--target", "cpu", "--quick", "--out", str(out), "--json",
               "--set", "evaluate.quantized_teacher=[int8-dynamic, int8-qdq]", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    stages = {s["stage"]: s for s in json.loads((out / "run.json").read_text())["stages"]}
    assert not stages["quantized_teacher"]["reused"]
    rerun = [s for s in ("teacher", "distill", "export", "quantize", "profile", "select") if not stages[s]["reused"]]
    assert not rerun, rerun
    rep = json.loads(r.stdout)
    rows = {f"{m['role']}/{m['variant']}": m for m in rep["models"]}
    onnx_teacher = rows["teacher/fp32"]
    for kind in ("int8-dynamic", "int8-qdq"):
        m = rows[f"teacher/{kind}"]
        assert CONTRACT_MODEL_KEYS <= set(m) and m["quantization"] == kind and m["runtime"] == "onnxruntime"
        # INT8 keeps a CNN's top-1 within a few points of its FP32 ONNX, in about a quarter of its bytes
        assert abs(m["accuracy"] - onnx_teacher["accuracy"]) < 0.05
        assert m["size_bytes"] < onnx_teacher["size_bytes"] / 2 and (out / m["path"]).is_file()
        assert m["latency_ms"]["p50"] > 0 and m["measured_on"] == rows[rep["selected_onnx_candidate"]]["measured_on"]
    # never candidates: the selection is the quick build's
    assert rep["selected"] == before["selected"]
    assert [c["variant"] for c in rep["candidates"]] == [c["variant"] for c in before["candidates"]]
    dq = rep["comparison"]["distill_vs_quantize"]
    assert dq["student"]["model"] == rep["selected_onnx_candidate"] and dq["speed_metric"] == "latency_ms_p50"
    assert {x["model"] for x in dq["quantized_teacher"]} == {"teacher/int8-dynamic", "teacher/int8-qdq"}
    assert dq["sentence"] in (out / "report" / "report.md").read_text()
    assert rep["comparison"]["teacher"] == before["comparison"]["teacher"]  # the headline ratio's teacher is kept
    # off again (the --quick default): the stage leaves this build, and its earlier folder is not read as this build's
    r2 = edgekd("build", "--target", "cpu", "--quick", "--out", str(out), "--json", env=env)
    assert r2.returncode == 0, r2.stderr[-3000:]
    rep2 = json.loads(r2.stdout)
    assert not [m for m in rep2["models"] if m.get("quantization")] and "distill_vs_quantize" not in rep2["comparison"]


def test_a_quantized_teacher_kind_the_task_cannot_make_is_exit_2_before_any_stage(tmp_path):
    r = edgekd("build", "--target", "cpu", "--quick", "--out", str(tmp_path / "b"),
               "--set", "evaluate.quantized_teacher=[int8-qat]", env={"EDGEKD_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 2 and "evaluate.quantized_teacher" in r.stderr and "int8-dynamic" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "b" / "teacher").exists()


@needs_fmnist
def test_quick_builds_measure_the_shipped_teacher_whatever_the_target(quick_build, ascend_quick_build):
    # The quick card keeps fashion-cnn's shipped teacher (verified, not trained): this file's cpu build and
    # the Ascend build measure the same weights on the same quick test subset (the target is not part of it).
    # Reusing a trained teacher across folders is tests/tasks/test_shipped_teacher.py's retrain case.
    teachers = [json.loads((out / "teacher" / "result.json").read_text())["metrics"]
                for out in (quick_build[0], ascend_quick_build[0])]
    for t in teachers:
        assert t["origin"] == "shipped" and t["train_seconds"] == 0.0 and t["history"] == []
    assert teachers[0]["shipped"] == teachers[1]["shipped"]
    assert teachers[0]["test_accuracy"] == teachers[1]["test_accuracy"] > 0.9  # the full teacher, not a 2-epoch one


@needs_fmnist
def test_report_command_reproduces_report(quick_build):
    out, _, env, _ = quick_build
    before = json.loads((out / "report" / "report.json").read_text())
    r = edgekd("report", str(out), "--json", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    after = json.loads(r.stdout)
    for k in ("models", "selected", "comparison", "candidates"):
        assert after[k] == before[k], k


# ---------------------------------------------------------------- bad input: message, hint, exit code, nothing half-made

@pytest.mark.parametrize("args,code,needle", [
    (["build", "--recipe", "no-such"], 2, "unknown recipe"),
    (["build", "--target", "no-such"], 2, "unknown target"),
    (["build", "--set", "distill.epochz=3"], 2, "unknown setting 'distill.epochz'"),
    (["build", "--set", "quantize.candidates=[fp32, int3-magic]"], 2, "int3-magic"),
    (["build", "--set", "distill.epochs=lots"], 2, "distill.epochs"),
    (["build", "--set", "noequals"], 2, "key=value"),
])
def test_bad_input_exit_codes(args, code, needle, tmp_path):
    r = edgekd(*args, "--out", str(tmp_path / "b"))
    assert r.returncode == code, r.stderr
    assert needle in r.stderr and "hint:" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b" / "teacher").exists()


def test_invalid_yaml_recipe(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: x\n  bad: [")
    r = edgekd("build", "--recipe", str(p), "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "not valid YAML" in r.stderr and "Traceback" not in r.stderr


def test_missing_dataset(tmp_path):
    r = edgekd("build", "--quick", "--set", f"data.path={tmp_path / 'nothing'}", "--out", str(tmp_path / "b"),
               env={"EDGEKD_CACHE": str(tmp_path / "c")})
    assert r.returncode == 2 and "apt-get install -y dataset-fashion-mnist" in r.stderr
    assert not (tmp_path / "b" / "teacher").exists() and not list((tmp_path / "b").glob(".teacher.tmp-*"))


def test_unwritable_out(tmp_path):
    f = tmp_path / "f"
    f.write_text("")
    r = edgekd("build", "--recipe", "digits-mlp", "--out", str(f / "b"))
    assert r.returncode == 2 and "cannot write" in r.stderr


def test_debug_shows_traceback(tmp_path):
    r = edgekd("--debug", "build", "--recipe", "no-such", "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_recipes_and_targets_listing():
    r = edgekd("recipes")
    assert r.returncode == 0 and "fashion-cnn" in r.stdout and "digits-mlp" in r.stdout
    r = edgekd("targets")
    assert r.returncode == 0 and "cpu" in r.stdout


@pytest.fixture(scope="module")
def digits_quick(tmp_path_factory):
    """`edgekd build --recipe digits-mlp --quick`: (folder, its piped stdout, env). Read it; change a copy_build of it."""
    root = tmp_path_factory.mktemp("digits")
    env = {"EDGEKD_CACHE": str(root / "cache")}
    out = root / "d"
    r = edgekd("build", "--recipe", "digits-mlp", "--quick", *FAST_PROFILE, "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r.stdout, env


def test_digits_quick_build_and_stage_command(digits_quick, tmp_path):
    from tests.e2e.conftest import copy_build

    src, stdout, env = digits_quick
    out = copy_build(src, tmp_path / "d")  # `edgekd quantize` below reruns a stage: on a copy
    # stdout is a pipe here, as in CI or `make demo > log`: a plain line per stage and per epoch
    assert "→ teacher started" in stdout and "→ distill started" in stdout and "✓ report" in stdout
    assert "teacher epoch 1/" in stdout and "distill epoch 1/" in stdout, stdout[-2000:]
    rep = json.loads((out / "report" / "report.json").read_text())
    assert rep["comparison"]["accuracy_retention"] > 0.85
    # The host's measured peak and ISA flags are in the report; host rooflines use that peak.
    env_ = rep["environment"]
    assert env_["host_peak"]["method"] == "sgemm-calibration" and env_["host_peak"]["peak_gflops"] > 0
    assert env_["host_peak"]["threads"] == rep["profile_settings"]["threads"]
    assert set(env_["cpu_flags"]) >= {"avx2", "avx512f", "avx512_vnni", "amx"}
    for m in rep["models"]:
        assert m["flops"]["complete"] and m["flops"]["macs"] > 0, m["variant"]
        assert m["roofline"]["peak_gflops"] == env_["host_peak"]["peak_gflops"]
        assert 0 < m["roofline"]["efficiency"] < 1.5, (m["variant"], m["roofline"])
    assert not list(out.glob(".*.tmp-*")) and not list(out.glob(".*.old-*"))
    # --quick leaves the labels-only control out unless asked for (test_control_arm_in_quick_build)
    assert rep["training"]["control"] is None and "kd_gain_points" not in rep["comparison"]
    r = edgekd("quantize", str(out), "--quiet", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    stages = {s["stage"]: s["reused"] for s in json.loads((out / "run.json").read_text())["stages"]}
    assert {k: stages[k] for k in ("teacher", "distill", "export", "quantize")} == {
        "teacher": True, "distill": True, "export": True, "quantize": False}
    assert "report" in stages  # the lineage of stages not rerun is kept


def test_control_arm_in_quick_build(digits_quick, tmp_path):
    """distill.control=true: the labels-only control is trained in the distill stage, measured like the
    student/fp32 row (fp32 ONNX in onnxruntime on the test split), reported, and gated by regress."""
    import torch

    from tests.e2e.conftest import copy_build

    src, _, env = digits_quick
    out = copy_build(src, tmp_path / "c")  # the teacher is reused; distill trains the student and the control
    r = edgekd("build", "--recipe", "digits-mlp", "--quick", "--set", "distill.control=true", *FAST_PROFILE,
               "--out", str(out), "--quiet", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    reused = {e["stage"]: e["reused"] for e in json.loads((out / "run.json").read_text())["stages"]}
    assert reused["teacher"] and not reused["distill"]
    rep = json.loads((out / "report" / "report.json").read_text())
    ctrl, comp = rep["training"]["control"], rep["comparison"]
    fp32 = next(m for m in rep["models"] if m["role"] == "student" and m["variant"] == "fp32")
    assert ctrl["losses"] == [{"kind": "hard_label", "weight": 1.0}]
    assert ctrl["epochs"] == len(ctrl["history"]) == 10  # the quick block's distill.epochs
    assert 0.8 < ctrl["accuracy"] <= 1 and "onnxruntime" in ctrl["measured_with"]
    assert ctrl["kd_accuracy"] == fp32["accuracy"]
    assert comp["kd_gain_points"] == pytest.approx(100 * (fp32["accuracy"] - ctrl["accuracy"]))
    # the ONNX figure is the saved control's own: recompute it from control.pt in PyTorch (same argmax)
    from edgekd import zoo
    from edgekd.cards import load_recipe
    from edgekd.data import load

    rc = load_recipe("digits-mlp", quick=True)
    model = zoo.build(rc.student.arch, **rc.student.kwargs)
    model.load_state_dict(torch.load(out / "distill" / "control.pt", weights_only=True))
    s = load(rc.data)
    with torch.no_grad():
        acc = float((model.eval()(torch.as_tensor(s.x_test)).argmax(1).numpy() == s.y_test).mean())
    assert acc == pytest.approx(ctrl["accuracy"], abs=1 / len(s.y_test) + 1e-9) and acc == ctrl["accuracy_torch"]
    md = (out / "report" / "report.md").read_text()
    assert "## What distillation bought" in md and f"KD gain {comp['kd_gain_points']:+.2f} pt" in md
    report_json = out / "report" / "report.json"
    g = comp["kd_gain_points"]
    r = edgekd("regress", str(report_json), "--min-kd-gain", f"{g - 0.01:.4f}")
    assert r.returncode == 0, r.stdout + r.stderr
    r = edgekd("regress", str(report_json), "--baseline", str(report_json), f"--min-kd-gain={g + 0.01:.4f}")
    assert r.returncode == 1 and "KD gain over labels-only control" in r.stdout


# ---------------------------------------------------------------- the CI gate through the CLI

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "report_fixture.json"


def _write(p, d):
    p.write_text(json.dumps(d))
    return p


def test_regress_gate_exit_codes(tmp_path):
    base = json.loads(FIXTURE.read_text())
    b = _write(tmp_path / "base.json", base)
    r = edgekd("regress", str(_write(tmp_path / "same.json", base)), "--baseline", str(b))
    assert r.returncode == 0, r.stderr + r.stdout
    sel = base["selected"].split("/", 1)[1]

    worse = json.loads(FIXTURE.read_text())
    for m in worse["models"]:
        if m["role"] == "student" and m["variant"] == sel:
            m["accuracy"] -= 0.02
    r = edgekd("regress", str(_write(tmp_path / "worse.json", worse)), "--baseline", str(b), "--json")
    assert r.returncode == 1
    verdicts = json.loads(r.stdout)
    assert not verdicts["passed"]

    bigger = json.loads(FIXTURE.read_text())
    for m in bigger["models"]:
        if m["role"] == "student" and m["variant"] == sel:
            m["size_bytes"] = int(m["size_bytes"] * 1.2)
    r = edgekd("regress", str(_write(tmp_path / "big.json", bigger)), "--baseline", str(b))
    assert r.returncode == 1 and "size" in r.stdout
    r = edgekd("regress", str(_write(tmp_path / "big.json", bigger)), "--baseline", str(b), "--max-size-growth", "25%")
    assert r.returncode == 0
    r = edgekd("regress", str(tmp_path / "big.json"), "--baseline", str(b), "--max-size-growth", "0.25")
    assert r.returncode == 0, r.stderr
    r = edgekd("regress", str(tmp_path / "big.json"), "--baseline", str(b), "--max-size-growth", "0.1")
    assert r.returncode == 1  # 20% growth is past a 10% limit
    for bad in ("5", "25", "-5%", "lots"):  # '5' once read as 500%
        r = edgekd("regress", str(tmp_path / "big.json"), "--baseline", str(b), "--max-size-growth", bad)
        assert r.returncode == 2 and "hint:" in r.stderr and "Traceback" not in r.stderr, (bad, r.stderr)

    other = json.loads(FIXTURE.read_text())
    other["recipe"] = "digits-mlp"
    r = edgekd("regress", str(_write(tmp_path / "other.json", other)), "--baseline", str(b))
    assert r.returncode == 2 and "hint:" in r.stderr

    trunc = tmp_path / "trunc.json"
    trunc.write_text(FIXTURE.read_text()[:200])
    r = edgekd("regress", str(trunc), "--baseline", str(b))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = edgekd("regress", str(tmp_path / "missing.json"), "--baseline", str(b))
    assert r.returncode == 2

    newer = json.loads(FIXTURE.read_text())
    newer["schema_version"] = 99
    r = edgekd("regress", str(_write(tmp_path / "newer.json", newer)), "--baseline", str(b))
    assert r.returncode == 2 and "schema" in r.stderr


def test_recipe_that_is_not_utf8_exits_2(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    r = edgekd("build", "--recipe", str(p), "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "not UTF-8" in r.stderr and "hint:" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("content", [b"{truncated", b"[1, 2]", b'{"recipe": 3, "target": "cpu"}', b"\xff\xfe"])
@pytest.mark.parametrize("command", ["quantize", "report"])
def test_malformed_run_json_exits_2(tmp_path, content, command):
    (tmp_path / "run.json").write_bytes(content)
    r = edgekd(command, str(tmp_path))
    assert r.returncode == 2 and "run.json" in r.stderr and "hint:" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (tmp_path / "run.json").read_bytes() == content


def _hold_build_lock(out: Path) -> subprocess.Popen:
    """Another process holding `out`'s build lock (a build running there), for 60 s or until killed."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from edgekd.fsio import BuildLock; lock = BuildLock(Path(sys.argv[1])); lock.acquire(); "
                               "print('held', flush=True); time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_report_on_a_folder_a_build_holds_exits_2_naming_the_holder(tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"recipe": "digits-mlp", "target": "cpu"}))
    holder = _hold_build_lock(out)
    try:
        r = edgekd("report", str(out))
        assert r.returncode == 2 and f"in use by process {holder.pid}" in r.stderr and "hint:" in r.stderr, r.stderr
        assert not (out / "report").exists()  # refused before reading or writing anything
    finally:
        holder.kill()
        holder.wait()
    # once the build is gone the lock is free: report goes on and fails on what it reads instead
    r = edgekd("report", str(out))
    assert r.returncode == 2 and "in use by" not in r.stderr, r.stderr  # (no stage results here)


def test_second_build_into_same_out_exits_2_naming_the_holder(tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    holder = _hold_build_lock(out)
    try:
        r = edgekd("build", "--recipe", "digits-mlp", "--quick", "--out", str(out),
                   env={"EDGEKD_CACHE": str(tmp_path / "c")})
        assert r.returncode == 2 and f"in use by process {holder.pid}" in r.stderr and "hint:" in r.stderr, r.stderr
        assert not (out / "teacher").exists() and not (out / "run.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_regress_min_kd_gain(tmp_path):
    base = json.loads(FIXTURE.read_text())
    base["comparison"]["kd_gain_points"] = 0.62
    b = _write(tmp_path / "base.json", base)
    r = edgekd("regress", str(b), "--baseline", str(b), "--min-kd-gain", "0.5")
    assert r.returncode == 0, r.stderr + r.stdout
    r = edgekd("regress", str(b), "--min-kd-gain", "0.7", "--json")  # no baseline: the floor alone
    assert r.returncode == 1 and json.loads(r.stdout)["rows"][0]["metric"] == "KD gain over labels-only control"
    r = edgekd("regress", str(b), "--min-kd-gain", "-0.5")
    assert r.returncode == 0, r.stderr + r.stdout
    del base["comparison"]["kd_gain_points"]
    r = edgekd("regress", str(_write(tmp_path / "noctl.json", base)), "--min-kd-gain", "0")
    assert r.returncode == 1 and "distill.control=true" in r.stdout.replace("\n", "")
    r = edgekd("regress", str(b))
    assert r.returncode == 2 and "--min-kd-gain" in r.stderr


def test_report_on_folder_without_results(tmp_path):
    r = edgekd("report", str(tmp_path))
    assert r.returncode == 2 and "run.json" in r.stderr


def test_unavailable_targets_exit_3(tmp_path):
    r = edgekd("build", "--target", "cuda", "--recipe", "digits-mlp", "--out", str(tmp_path / "b"))
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this host has CUDA")
    assert r.returncode == 3 and "CUDAExecutionProvider" in r.stderr
    (tmp_path / "b2" / "convert" / "mobile").mkdir(parents=True)
    r = edgekd("profile", str(tmp_path / "b2"), "--target", "mobile", "--adb", "no-such-phone",
               env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 3 and "no-such-phone" in r.stderr


@needs_fmnist
def test_ascend_bundle_for_fashion_cnn(ascend_quick_build):
    import onnx

    from edgekd.targets.ascend.bundle import lint

    out, report, _ = ascend_quick_build  # the session's Ascend quick build (test_device_cli reads it too)
    assert report["target"] == "ascend-310p"
    b = out / "convert" / "ascend"
    m = onnx.load(str(b / "model.onnx"))
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    assert opset <= 15
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, 28, 28] and all(d > 0 for d in dims)
    assert lint(b / "model.onnx") == []
    convert = (b / "convert.sh").read_text()
    assert "--framework=5" in convert and "--soc_version=Ascend310P3" in convert and '--input_shape="input:1,1,28,28"' in convert
    assert "msit benchmark" in (b / "benchmark.sh").read_text()
    manifest = json.loads((b / "manifest.json").read_text())
    import hashlib

    files = manifest["files"]
    assert "model.onnx" in files and "convert.sh" in files
    for name, digest in files.items():
        assert hashlib.sha256((b / name).read_bytes()).hexdigest() == digest, name
