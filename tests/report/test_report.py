"""Report contract, loader and writers (json, md, self-contained html, plots, terminal)."""
from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path

import pytest

from edgekd.errors import StageError, UserError
from edgekd.report import write_all
from edgekd.report.plots import make_plots, pareto_front
from edgekd.report.schema import REPORT_SCHEMA_VERSION, check_report, load_report

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "report_fixture.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def report() -> dict:
    return json.loads(FIXTURE.read_text())


def test_fixture_meets_contract(report):
    assert report["schema_version"] == REPORT_SCHEMA_VERSION
    assert check_report(report) == []


@pytest.mark.parametrize("breakage, expect", [
    (lambda r: r["models"][1]["latency_ms"].pop("p99"), "latency_ms: missing 'p99'"),
    (lambda r: r["models"][0]["energy"].update(method="measured"), "energy.method"),
    (lambda r: r["models"][2].update(accuracy=89.79), "fraction in [0, 1]"),
    (lambda r: r.update(selected="student/int4"), "selected: 'student/int4' is not among models"),
    (lambda r: r.update(models=[m for m in r["models"] if m["role"] != "teacher"]), "no teacher entry"),
    (lambda r: r["candidates"][0].update(status="great"), "candidates[0].status"),
    (lambda r: r["comparison"].pop("energy_ratio"), "comparison: missing 'energy_ratio'"),
    (lambda r: r["environment"].pop("runtimes"), "environment: missing 'runtimes'"),
    (lambda r: r.pop("edgekd_version"), "report: missing 'edgekd_version'"),
])
def test_check_report_finds_breakage(report, breakage, expect):
    breakage(report)
    problems = check_report(report)
    assert any(expect in p for p in problems), problems


def test_load_report_errors_are_user_errors(tmp_path, report):
    with pytest.raises(UserError, match="report not found") as ei:
        load_report(tmp_path / "nope.json")
    assert ei.value.exit_code == 2 and ei.value.hint
    text = FIXTURE.read_text()
    (tmp_path / "cut.json").write_text(text[: len(text) // 2])
    with pytest.raises(UserError, match="truncated"):
        load_report(tmp_path / "cut.json")
    report["schema_version"] = 2
    (tmp_path / "v2.json").write_text(json.dumps(report))
    with pytest.raises(UserError, match="schema_version 2 is not supported") as ei:
        load_report(tmp_path / "v2.json")
    assert "regenerate" in ei.value.hint
    report["schema_version"] = 1
    del report["models"][0]["energy"]
    (tmp_path / "bad.json").write_text(json.dumps(report))
    with pytest.raises(UserError, match="not a valid report"):
        load_report(tmp_path / "bad.json")
    assert load_report(tmp_path / "bad.json", strict=False)["recipe"] == "fashion-cnn"
    assert load_report(FIXTURE) == json.loads(FIXTURE.read_text())


def test_write_all_round_trip_and_self_contained_html(tmp_path, report):
    report["notes"].append("<script>alert(1)</script> | pipe")
    paths = write_all(report, tmp_path / "out")
    out = tmp_path / "out"
    names = {p.relative_to(out).as_posix() for p in paths}
    assert {"report.json", "report.md", "report.html", "plots/latency.png", "plots/accuracy_size.png",
            "plots/throughput.png"} == names
    assert all(p.is_file() for p in paths)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # atomic writes leave no temp files
    assert json.loads((out / "report.json").read_text()) == report

    html = (out / "report.html").read_text()
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) == 3 and all(base64.b64decode(b).startswith(PNG_MAGIC) for b in imgs)
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:|//|[^"\'#d])', html), "external asset in html"
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert "14.09×" in html  # teacher p50 2.41 ms / student 0.171 ms

    md = (out / "report.md").read_text()
    assert "| latency p50 | 2.410 ms | 0.171 ms | 14.09× faster |" in md
    assert "97.47% retained" in md and "![latency](plots/latency.png)" in md
    assert "- <script>alert(1)</script> | pipe" in md.splitlines()  # notes are list items, not table cells
    assert "estimate (estimate-cpu-time-x-power)" in md and "measured (" not in md
    assert "failed: CPUExecutionProvider has no fp16 Conv kernel" in md


def test_write_all_refuses_broken_report(tmp_path, report):
    del report["comparison"]
    with pytest.raises(StageError, match="contract"):
        write_all(report, tmp_path / "out")
    assert not (tmp_path / "out" / "report.json").exists()


def test_plots_are_pngs_and_skip_missing_data(tmp_path, report):
    import matplotlib.image

    plots = make_plots(report, tmp_path)
    for p in plots.values():
        assert p.read_bytes().startswith(PNG_MAGIC)
        img = matplotlib.image.imread(str(p))
        assert img.shape[0] > 100 and img.shape[1] > 100
    bare = copy.deepcopy(report)
    for m in bare["models"]:
        m.pop("throughput_sweep")
    assert set(make_plots(bare, tmp_path / "bare")) == {"latency", "accuracy_size"}


def test_pareto_front():
    pts = [(100, 0.90), (50, 0.85), (60, 0.80), (200, 0.95), (50, 0.86), (200, 0.90)]
    # (50,.85) loses to (50,.86); (60,.80) to (50,.86); (200,.90) to (100,.90).
    assert pareto_front(pts) == [4, 0, 3]


def test_terminal_render(report):
    from rich.console import Console

    from edgekd.report.terminal import render

    con = Console(record=True, width=220, color_system=None)
    render(report, con)
    text = con.export_text()
    assert "14.09× faster" in text and "97.47% retained" in text
    assert "[estimate (estimate-cpu-time-x-power)]" in text  # rendered literally, not eaten as markup
    assert "slower-than-fp32" in text and "Candidates" in text
    assert "energy is an estimate" in text  # the notes are shown


def _with_control(report: dict) -> dict:
    r = copy.deepcopy(report)
    r.setdefault("training", {})["student"] = {"val_accuracy": 0.9, "train_seconds": 12.5,
                                               "losses": [{"kind": "soft_label", "weight": 0.5, "temperature": 2.0},
                                                          {"kind": "hard_label", "weight": 0.5}]}
    r["training"]["control"] = {"accuracy": 0.8917, "kd_accuracy": 0.8979, "val_accuracy": 0.889, "epochs": 24,
                                "train_seconds": 10.0, "losses": [{"kind": "hard_label", "weight": 1.0}],
                                "measured_with": "fp32 ONNX in onnxruntime on the test split"}
    r["comparison"]["kd_gain_points"] = 0.62
    return r


def test_control_shown_beside_retention(tmp_path, report):
    from rich.console import Console

    from edgekd.report.html import render_html
    from edgekd.report.markdown import render_markdown
    from edgekd.report.terminal import render

    r = _with_control(report)
    assert check_report(r) == []
    md = render_markdown(r)
    lines = md.splitlines()
    acc = next(i for i, ln in enumerate(lines) if ln.startswith("| accuracy |"))
    assert lines[acc + 1] == "| accuracy, labels-only control |  | 89.17% | KD gain +0.62 pt |"
    assert "| distilled (KD) | 0.5×soft_label + 0.5×hard_label | 89.79% |" in md
    assert "| labels-only control | 1.0×hard_label | 89.17% | 88.90% | 24 | 10.0 s |" in md
    # a control read back from the cache (a language model's, llm-control/): its row says its time is another build's
    reused = {**r, "training": {**r["training"], "control": {**r["training"]["control"], "reused": {"cache": "x"}}}}
    assert "| labels-only control (an earlier build's, cached) | 1.0×hard_label |" in render_markdown(reused)
    assert "distillation helped" in md and "onnxruntime on the test split" in md
    html = render_html(r)
    assert "KD gain +0.62 pt" in html and "labels-only control" in html
    con = Console(record=True, width=220, color_system=None)
    render(r, con)
    assert "KD gain +0.62 pt" in con.export_text()
    # a loss is reported as one, not dressed up
    r["comparison"]["kd_gain_points"] = -0.3
    assert "did not beat training on labels alone" in render_markdown(r)
    # no control: the report says it cannot tell, and how to get one
    md = render_markdown(report)
    assert "accuracy, labels-only control" not in md and "--set distill.control=true" in md
    bad = _with_control(report)
    bad["comparison"]["kd_gain_points"] = "a lot"
    bad["training"]["control"]["accuracy"] = 89.2
    assert len(check_report(bad)) == 2


def test_text_generation_control_named_like_the_classifiers():
    from edgekd.report.build import control_entry, text_generation_control

    ctrl = {"val": {"agreement": 0.05}, "test": {"agreement": 0.0449, "perplexity": 2956.2}, "best_epoch": 3,
            "train_seconds": 100.0}
    out = text_generation_control(ctrl, {"agreement": 0.1760, "perplexity": 243.4}, epochs=4)
    assert out["accuracy"] == 0.0449 and out["kd_accuracy"] == 0.1760 and out["epochs"] == 4
    assert out["kd_gain_points"] == pytest.approx(13.11) and "PyTorch" in out["measured_with"]
    assert text_generation_control(None, {"agreement": 0.2}) is None
    # the answers-only control, in-template beside held-out-template, and the untrained cut student
    ctrl["held_out"] = {"test_in_template": {"agreement": 0.30}}
    out = text_generation_control(ctrl, {"agreement": 0.1760}, 4, {"test_in_template": {"agreement": 0.45}},
                                  {"test": {"agreement": 0.02}})
    assert out["kind"] == "answers-hard-label" and "hard labels only" in out["what"]
    assert out["in_template"]["kd_gain_points"] == pytest.approx(15.0)
    assert out["untrained"]["accuracy"] == 0.02 and out["untrained"]["kd_gain_points"] == pytest.approx(15.6)
    # classifier: the KD side is the reported student/fp32 accuracy, not the distill stage's copy
    c = control_entry({"accuracy": 0.90, "kd_accuracy": 0.905, "kd_gain_points": 0.5}, 0.9075)
    assert c["kd_accuracy"] == 0.9075 and c["kd_gain_points"] == pytest.approx(0.75)
    assert control_entry({"accuracy": 0.9, "kd_accuracy": 0.91}, None)["kd_gain_points"] == pytest.approx(1.0)
    assert control_entry(None, 0.9) is None


def test_the_selection_rule_is_stated_where_the_candidates_are(report):
    """A report that ships a variant slower than fp32 (objective size) says why, in md, html and terminal."""
    import html

    from rich.console import Console

    from edgekd.report.build import selection_rule
    from edgekd.report.html import render_html
    from edgekd.report.markdown import render_markdown
    from edgekd.report.terminal import render

    rule = selection_rule({"selected": "int8-qdq", "objective": "size", "budget_points": 0.5,
                           "reference_val_accuracy": 0.9278, "candidates": [], "warnings": []})
    assert rule == {"objective": "size", "budget_points": 0.5, "max_latency_growth": None, "reference_val_accuracy": 0.9278}
    r = copy.deepcopy(report)
    r["selection"] = rule
    assert check_report(r) == []
    want = "Selected: the smallest candidate on disk within 0.5 points of fp32's validation accuracy"
    md = render_markdown(r)
    cand = md.index("## Candidates")
    assert cand < md.index(want) < md.index("| variant |", cand)
    assert html.escape(want) in render_html(r)
    con = Console(record=True, width=220, color_system=None)
    render(r, con)
    assert "smallest candidate on disk" in con.export_text()
    r["selection"]["max_latency_growth"] = 0.25
    assert ("within 0.5 points of fp32's validation accuracy and at most 25% slower than fp32 (p50) "
            "(quantize.objective: size, max_latency_growth: 0.25)") in render_markdown(r)
    r["selection"]["objective"] = "latency"
    assert "the fastest candidate (p50) within 0.5 points" in render_markdown(r)
    assert "Selected:" not in render_markdown(report)  # an older report without the rule: nothing invented


def test_headline_shows_the_teacher_on_the_students_runtime_beside_pytorch(report):
    from edgekd.report.markdown import summary_rows

    assert not any(r[0].startswith("latency p50, teacher on") for r in summary_rows(report))  # no such ratio: no row
    onnx_teacher = next(m for m in report["models"] if m["role"] == "teacher" and m["runtime"] == "onnxruntime")
    student = next(m for m in report["models"] if f"{m['role']}/{m['variant']}" == report["selected"])
    speedup = onnx_teacher["latency_ms"]["p50"] / student["latency_ms"]["p50"]
    report["comparison"] |= {"teacher_onnx_speedup_p50": speedup,
                             "teacher_same_runtime": f"teacher/{onnx_teacher['variant']}"}
    row = next(r for r in summary_rows(report) if r[0] == "latency p50, teacher on onnxruntime")
    assert row[3] == f"{speedup:.2f}× faster" and row[1].startswith(f"{onnx_teacher['latency_ms']['p50']:.3f}")


def test_a_teacher_weaker_than_its_labels_gets_a_note():
    """The labels-only control at least as accurate as the teacher: the report says distillation has little to add
    and why (a weak teacher, not a capacity gap); a control below the teacher, or no control, says nothing."""
    from edgekd.report.build import weak_teacher_note

    teacher = {"accuracy": 0.853}
    note = weak_teacher_note({"accuracy": 0.875, "kd_gain_points": -0.13}, teacher)
    assert note and "87.5%" in note and "85.3%" in note and "cost 0.13 points" in note and "stronger teacher" in note
    assert "added 0.40 points" in weak_teacher_note({"accuracy": 0.875, "kd_gain_points": 0.4}, teacher)
    for zero in (0.0, -0.001):  # no gain is not a cost (nor a "cost 0.00 points")
        assert "changed nothing here" in weak_teacher_note({"accuracy": 0.875, "kd_gain_points": zero}, teacher)
    assert weak_teacher_note({"accuracy": 0.853, "kd_gain_points": None}, teacher)  # equal counts
    assert weak_teacher_note({"accuracy": 0.85, "kd_gain_points": 0.6}, teacher) is None
    assert weak_teacher_note(None, teacher) is None and weak_teacher_note({"accuracy": 0.9}, {"accuracy": None}) is None


def test_the_noise_note_names_each_noisy_row_by_role_and_variant():
    from edgekd.tasks.stages.report import noise_note

    rows = [{"role": "teacher", "variant": "fp32", "noisy": True}, {"role": "student", "variant": "fp32", "noisy": True},
            {"role": "student", "variant": "int8-weight", "noisy": False}, {"role": "student", "variant": "int4-weight"}]
    assert noise_note(rows) == "Latency spread across repeats exceeded 5% for: teacher/fp32, student/fp32."
    assert noise_note(rows[2:]) is None
