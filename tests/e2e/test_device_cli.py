"""Device truth end to end: `edgekd build --target ascend --quick` without and with (fake) Ascend
tools, and a mobile quick build whose report rows are the shipped .pte/.ort artifacts."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.cards import load_target
from tests import ascend_fakes
from tests.conftest import needs_fmnist
from tests.e2e.conftest import FAST_PROFILE, copy_build, without_npu_smi

pytestmark = pytest.mark.e2e
QUICK = ("--quick", "--set", "distill.epochs=1", *FAST_PROFILE, "--json")  # the settings of ascend_quick_build
ROOT = Path(__file__).resolve().parents[2]


def edgekd(*args, env=None, timeout=1500):
    return subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def assert_labelled_and_never_host_time_x_device_power(report, card):
    """Every row says where it was measured and on what; a host row's energy never uses the
    target card's power (that product describes no machine)."""
    for m in report["models"]:
        assert m["measured_on"] in ("device", "host", "estimate") and m["device"], m["variant"]
        e = m["energy"] or {}
        j, p50 = e.get("joules_per_inference"), (m["latency_ms"] or {}).get("p50")
        if m["measured_on"] == "host" and j and p50:
            assert j != pytest.approx(p50 / 1e3 * card.device.active_power_watts, rel=0.05), m["variant"]
            assert card.device.name not in str(e.get("assumptions", "")), m["variant"]
        if m["measured_on"] == "estimate":
            assert e["method"].startswith("estimate-") and m["device"] == card.device.name


@pytest.fixture(scope="module")
def cache(fashion_cache):
    # The session's fashion-cnn teacher cache: the quick teacher is trained once and shared with
    # test_cli; every build here has its own folder.
    return fashion_cache


@pytest.fixture(scope="module")
def ascend_build(ascend_quick_build):
    # `--target ascend --quick --set distill.epochs=1` without npu-smi on PATH, built once per
    # session (test_cli checks its bundle): read it, or change a copy_build of it.
    return ascend_quick_build


@needs_fmnist
def test_ascend_family_build_reports_the_bundle_row(ascend_build):
    out, report, err = ascend_build
    assert "--target ascend: no Ascend NPU here" in err and report["target"] == "ascend-310p"
    card = load_target("ascend-310p")
    row = next(m for m in report["models"] if m["variant"] == "ascend-om")
    assert row["measured_on"] == "estimate" and row["energy"]["method"] == "estimate-roofline"
    assert 0.5 < row["accuracy"] <= 1 and row["accuracy_measured_on"] == "host"
    assert row["accuracy_fp16_simulated"] is not None and abs(row["accuracy_fp16_simulated"] - row["accuracy"]) < 0.02
    assert report["selected"] == "student/ascend-om" and report["comparison"]["basis"] == "host"
    assert any("model.om on the NPU" in x for x in report["measurements"]["not_run"])
    assert_labelled_and_never_host_time_x_device_power(report, card)
    md = (out / "report" / "report.md").read_text()
    assert "Where each figure was measured" in md and "**not run**" in md
    man = json.loads((out / "convert" / "ascend" / "manifest.json").read_text())
    assert man["precision_preflight"]["mode"] == "allow_fp32_to_fp16" and man["amct"]["samples"] > 0


@needs_fmnist
def test_profile_of_a_build_keeps_its_target(ascend_build, cache, tmp_path):
    out = copy_build(ascend_build[0], tmp_path / "b")
    export = (out / "export" / "result.json").stat().st_mtime_ns
    r = edgekd("profile", str(out), env=cache)  # no --target: the build's own (ascend), not cpu
    assert r.returncode == 0, r.stderr[-3000:]
    # with the cpu card the export (opset 17, dynamic batch) would have been redone
    assert (out / "export" / "result.json").stat().st_mtime_ns == export
    prof = json.loads((out / "profile" / "result.json").read_text())["metrics"]["models"]
    assert {m["measured_on"] for m in prof.values()} == {"host"}


@needs_fmnist
def test_ascend_build_with_the_tools_measures_on_the_device(ascend_build, cache, tmp_path):
    out = copy_build(ascend_build[0], tmp_path / "b")
    bin_dir = ascend_fakes.install(tmp_path / "bin")
    env = {**cache, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    sets = ["--set", "target.ascend.loop=100", "--set", "target.ascend.warmup=10",
            "--set", "target.ascend.idle_seconds=0.3", "--set", "target.ascend.power_interval_s=0.05"]
    # Same folder (a copy of the session's build): only convert (its key holds the ascend settings)
    # and report run again.
    r = edgekd("build", "--target", "ascend", *QUICK, *sets, "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "npu-smi info reports chip 310P3" in r.stderr
    report = json.loads(r.stdout)
    row = next(m for m in report["models"] if m["variant"] == "ascend-om")
    assert row["measured_on"] == "device" and row["device"] == "Ascend310P3" and row["format"] == "om"
    assert row["energy"]["method"] == "npu-smi" and row["energy"]["joules_per_inference"] > 0
    assert row["latency_ms"]["p50"] == pytest.approx(0.2280000001192093)
    assert row["roofline"]["peak_gflops"] == load_target("ascend-310p").device.peak_gflops
    # no teacher ran on the NPU here: the ratios are host-vs-host and say so
    assert report["comparison"]["basis"] == "host" and "no teacher figure device" in report["comparison"]["note"]
    assert any("msit benchmark, npu-smi" in x for x in report["measurements"]["ran"])


def test_ascend_builds_only_what_it_ships_from_a_recipe_listing_int8(cache, tmp_path):
    """A recipe's own quantize.candidates (INT8 kinds, as minilm-sentiment lists) on --target ascend:
    the INT8 candidates are not built (one line says so), the report lists them unsupported-on-target
    and the bundle ships fp32. Given explicitly with --set, the same list exits 2 before training."""
    recipe = tmp_path / "digits-int8.yaml"
    text = (ROOT / "models" / "digits-mlp.yaml").read_text()
    recipe.write_text(text.replace("quantize:\n", "quantize:\n  candidates: [fp32, int8-dynamic, int8-qdq, int4-weight]\n", 1))
    env = {**cache, "PATH": without_npu_smi()}
    out = tmp_path / "b"
    r = edgekd("build", "--recipe", str(recipe), "--target", "ascend", "--quick", "--json", "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    said = [ln for ln in r.stderr.splitlines() if "not building" in ln]
    assert len(said) == 1 and said[0].startswith("target ascend-310p: not building int8-dynamic, int8-qdq, int4-weight ("), said
    assert said[0].endswith("; building fp32")
    report = json.loads(r.stdout)
    status = {c["variant"]: c["status"] for c in report["candidates"]}
    assert status == {"fp32": "selected", "int8-dynamic": "unsupported-on-target", "int8-qdq": "unsupported-on-target",
                      "int4-weight": "unsupported-on-target"}
    assert all(c["reason"] for c in report["candidates"] if c["status"] == "unsupported-on-target")
    assert sorted(p.name for p in (out / "quantize" / "candidates").iterdir()) == ["fp32.onnx"]
    row = next(m for m in report["models"] if m["variant"] == "ascend-om")
    assert report["selected"] == "student/ascend-om" and row["measured_on"] == "estimate" and 0.5 < row["accuracy"] <= 1
    assert any(n.startswith("Not built for ascend-310p (unsupported-on-target)") for n in report["notes"])

    out2 = tmp_path / "b2"
    r = edgekd("build", "--recipe", "digits-mlp", "--target", "ascend", "--quick", "--out", str(out2),
               "--set", "quantize.candidates=[int8-dynamic]", env=env)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "error: --set quantize.candidates: int8-dynamic cannot ship on target 'ascend-310p' (ascend): ATC has no " \
           "parser for DynamicQuantizeLinear/MatMulInteger" in r.stderr
    assert "hint: leave int8-dynamic out of quantize.candidates" in r.stderr
    assert not out2.exists()  # refused at pre-flight: nothing trained, no build folder


@needs_fmnist
def test_mobile_report_rows_are_the_shipped_artifacts(cache, ascend_build, tmp_path):
    pytest.importorskip("executorch")
    # the same card and settings as the Ascend build: a copy of it rebuilt for mobile reuses its teacher and student
    out = copy_build(ascend_build[0], tmp_path / "mob")
    r = edgekd("build", "--target", "mobile", *QUICK, "--out", str(out), env=cache)
    assert r.returncode == 0, r.stderr[-3000:]
    reused = {e["stage"]: e["reused"] for e in json.loads((out / "run.json").read_text())["stages"]}
    assert reused["teacher"] and reused["distill"] and not reused["convert"]
    report = json.loads(r.stdout)
    rows = {m["variant"]: m for m in report["models"]}
    for v, runtime in (("pte-fp32", "executorch"), ("pte-int8", "executorch"), ("ort-fp32", "onnxruntime-mobile")):
        host, est = rows[v], rows[f"{v}-estimate"]
        assert host["measured_on"] == "host" and host["runtime"] == runtime and 0.5 < host["accuracy"] <= 1
        assert est["measured_on"] == "estimate" and est["accuracy"] == host["accuracy"]
        assert host["path"].startswith("convert/mobile/")
    # the FP32 artifacts compute what the FP32 student computes
    assert abs(rows["pte-fp32"]["accuracy"] - rows["fp32"]["accuracy"]) < 0.005
    assert report["selected"] in {"student/pte-fp32", "student/pte-int8", "student/ort-fp32"}
    assert report["artifact_selection"]["status"][report["selected"].split("/")[1]] == "selected"
    assert report["comparison"]["basis"] == "host"
    assert_labelled_and_never_host_time_x_device_power(report, load_target("mobile"))
