"""The verdict on distilling vs quantizing the teacher (issue 28 item 6), from tiny hand-built report rows."""
import pytest

from edgekd.report.build import axis_verdict, distill_vs_quantize
from edgekd.report.markdown import distill_vs_quantize_sentences


def lm_row(role, variant, agreement, tps, size, quantization=None, runtime="onnxruntime", measured_on="host"):
    row = {"role": role, "variant": variant, "runtime": runtime, "measured_on": measured_on, "accuracy": agreement,
           "tokens_per_s": tps, "size_bytes": size, "latency_ms": {"p50": 1000 / tps}}
    if quantization:
        row["quantization"] = quantization
    return row


def clf_row(role, variant, acc, p50, size, quantization=None):
    row = {"role": role, "variant": variant, "runtime": "onnxruntime", "measured_on": "host", "accuracy": acc,
           "latency_ms": {"p50": p50}, "size_bytes": size}
    if quantization:
        row["quantization"] = quantization
    return row


@pytest.mark.parametrize("student, teachers, verdict, by", [
    ((0.5, 10.0), {"a": (0.4, 5.0), "b": (0.5, 9.0)}, "beats", []),          # better or equal on both vs each
    ((0.5, 10.0), {"a": (0.6, 10.0), "b": (0.4, 5.0)}, "dominated", ["a"]),   # a: as fast and better
    ((0.5, 10.0), {"a": (0.7, 5.0), "b": (0.4, 5.0)}, "pareto", []),          # a: better but slower
    ((0.5, 10.0), {"a": (0.5, 10.0)}, "pareto", []),                          # a tie dominates neither way
])
def test_axis_verdict(student, teachers, verdict, by):
    v = axis_verdict(student, teachers)
    assert v["verdict"] == verdict and v["dominated_by"] == by


def test_language_model_student_faster_and_smaller_but_less_agreeing_is_on_the_front():
    models = [lm_row("teacher", "fp32-torch", 0.99, 20, 500, runtime="torch-eager"),
              lm_row("teacher", "int8-dynamic", 0.63, 64, 160, "int8-dynamic"),
              lm_row("teacher", "int4-weight", 0.68, 10, 120, "int4-weight"),
              lm_row("student", "int8-dynamic", 0.36, 103, 100)]
    dq = distill_vs_quantize(models, "student/int8-dynamic")
    # the PyTorch teacher runs elsewhere: only the quantized rows on the student's runtime are compared
    assert [r["model"] for r in dq["quantized_teacher"]] == ["teacher/int8-dynamic", "teacher/int4-weight"]
    assert dq["student"] == {"model": "student/int8-dynamic", "agreement": 0.36, "tokens_per_s": 103, "size_bytes": 100}
    assert dq["on_speed"]["verdict"] == "pareto" and dq["on_size"]["verdict"] == "pareto"
    assert dq["student_on_pareto_front_speed"] and dq["student_on_pareto_front_size"]
    assert dq["fastest_teacher"] == "teacher/int8-dynamic"
    assert dq["student_speedup_vs_fastest_teacher"] == pytest.approx(103 / 64)
    assert dq["student_size_fraction_of_smallest_teacher"] == pytest.approx(100 / 120)
    assert "neither wins" in dq["sentence"] and "teacher/int4-weight" in dq["sentence"]


def test_language_model_student_dominated_on_speed_beats_on_size():
    models = [lm_row("teacher", "int8-dynamic", 0.70, 120, 300, "int8-dynamic"),
              lm_row("student", "fp32", 0.50, 100, 200)]
    dq = distill_vs_quantize(models, "student/fp32")
    assert dq["on_speed"] == {"verdict": "dominated", "dominated_by": ["teacher/int8-dynamic"], "beats": []}
    assert dq["on_size"]["verdict"] == "pareto"  # smaller, but less agreeing
    assert not dq["student_on_pareto_front_speed"] and dq["dominated_on_speed_by"] == ["teacher/int8-dynamic"]
    assert "at equal speed quantizing beat distilling (teacher/int8-dynamic" in dq["sentence"]


def test_classifier_student_faster_smaller_and_better_beats_quantizing():
    # a classifier's speed is latency (lower is better)
    models = [clf_row("teacher", "fp32", 0.90, 4.0, 4000),
              clf_row("teacher", "int8-dynamic", 0.85, 3.0, 1000, "int8-dynamic"),
              clf_row("teacher", "int8-qdq", 0.86, 2.0, 1000, "int8-qdq"),
              clf_row("student", "int8-qdq", 0.87, 0.5, 200)]
    dq = distill_vs_quantize(models, "student/int8-qdq")
    assert dq["quality_metric"] == "accuracy" and dq["speed_metric"] == "latency_ms_p50"
    assert dq["on_speed"]["verdict"] == "beats" and dq["on_size"]["verdict"] == "beats"
    assert dq["student_speedup_vs_fastest_teacher"] == pytest.approx(2.0 / 0.5)
    assert dq["sentence"].count("distilling beat quantizing") == 2
    assert distill_vs_quantize_sentences({"comparison": {"distill_vs_quantize": dq}}) == [dq["sentence"]]


def test_no_verdict_without_a_quantized_teacher_on_the_students_runtime():
    models = [clf_row("teacher", "fp32", 0.9, 4.0, 4000), clf_row("student", "fp32", 0.8, 1.0, 100),
              {**clf_row("teacher", "int8-dynamic", 0.85, 3.0, 1000, "int8-dynamic"), "measured_on": "device"}]
    assert distill_vs_quantize(models, "student/fp32") is None
    assert distill_vs_quantize_sentences({"comparison": {}}) == []


def test_the_readme_paragraph_reads_the_reports_verdict(readme_numbers):
    # bench_llm.py --extras copies comparison.distill_vs_quantize into llm.json; readme_numbers.py renders it
    models = [lm_row("teacher", "int8-dynamic", 0.63, 64, 160 * 2**20, "int8-dynamic"),
              lm_row("teacher", "int4-weight", 0.68, 10, 120 * 2**20, "int4-weight"),
              lm_row("student", "int8-dynamic", 0.36, 103, 100 * 2**20)]
    text = readme_numbers._distill_vs_quantize(distill_vs_quantize(models, "student/int8-dynamic"))
    assert "student/int8-dynamic (36.0%, 103 tokens/s, 100 MiB)" in text
    assert "on the Pareto front of agreement vs tokens/s" in text and "teacher/int4-weight: " in text


def test_readme_decode_compute_sentence_reads_the_ratio_and_what_the_goal_needs(readme_numbers, monkeypatch):
    """The README's compute line (llm.json decode_compute, written by the build's report): the report's own sentence
    (ratio of the two models' multiply-accumulates, the head's share), then where the measured int8 ratio stands and
    what 3x would take."""
    from pathlib import Path

    import edgekd.llm.models as models
    from edgekd.tasks.text_generation.hooks import decode_compute

    macs = {"t": {"total": 134_500_000, "head": 28_300_000}, "s": {"total": 54_900_000, "head": 28_300_000}}
    monkeypatch.setattr(models, "decode_macs", lambda folder: macs[Path(folder).name])  # two stand-in folders
    dc = decode_compute(Path("t"), Path("s"))
    assert dc["ratio"] == 134.5 / 54.9 and dc["student_head_share"] == 28.3 / 54.9
    goal = {"tokens_per_s_ratio_vs_teacher_int8-dynamic-onnx": {"value": 2.46, "goal": 3.0, "met": False}}
    text = readme_numbers._decode_compute(dc, goal)
    assert text.startswith(dc["sentence"])  # the report's line, then the goal's
    assert "54.9M multiply-accumulates against the teacher's 134.5M (2.45x fewer" in text and "28.3M" in text
    assert "2.46×, is close to that compute ratio" in text
    # 134.5 / 3 = 44.8M in all, 16.5M beside the 28.3M head (the layers do 26.6M now)
    assert "about 44.8M multiply-accumulates per token, 16.5M of them beside the head" in text and "26.6M now" in text
    goal["tokens_per_s_ratio_vs_teacher_int8-dynamic-onnx"]["value"] = 1.5
    assert "1.50×, is below that compute ratio" in readme_numbers._decode_compute(dc, goal)
    assert "would take" not in readme_numbers._decode_compute(dc, {})
    # a shipped -vocab candidate (its head over fewer tokens) is compared at its own compute: under the 3x need
    sel = [{"model": "student/int8-dynamic", "selected": False, "macs_per_token": 54_900_000},
           {"model": "student/int8-dynamic-vocab", "selected": True, "macs_per_token": 31_700_000}]
    text = readme_numbers._decode_compute(dc, goal, sel)
    assert "`int8-dynamic-vocab` keeps its head over the tokens seen in training only: 31.7M" in text
    assert f"{134.5 / 31.7:.2f}x fewer than the teacher's" in text and "1.50×, is below that compute ratio" in text
    assert "by the compute alone it would reach 3×" in text and "would take" not in text
    assert "the teacher's int8-dynamic (its fastest INT8), 1.50×" in text
    # with the teacher's int8-weight timed too, the ratio read is against the faster of its INT8 rows
    goal["tokens_per_s_ratio_vs_teacher_int8-weight-onnx"] = {"value": 1.2, "goal": 3.0, "met": False}
    goal["tokens_per_s_ratio_vs_teacher_int4-weight-onnx"] = {"value": 1.1, "goal": 3.0, "met": False}
    text = readme_numbers._decode_compute(dc, goal, sel)
    assert "the teacher's int8-weight (its fastest INT8), 1.20×, is below that compute ratio" in text
