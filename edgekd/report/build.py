"""The pieces of report.json every task's report shares: teacher-over-student ratios, candidate rows, the
comparison between figures measured in the same place, the environment. The assembly from the stage result
files is tasks/stages/report.py's (one for every task)."""
from __future__ import annotations

import platform
from typing import Any


def ratio(a, b):
    """a / b, or None where either is missing or zero."""
    return (a / b) if a and b else None


def comparison_ratios(teacher: dict, student: dict) -> dict[str, Any]:
    """Teacher-over-student ratios of two report model entries (None where either side lacks the figure);
    shared by the classification and text-generation reports."""
    te, se = teacher.get("energy") or {}, student.get("energy") or {}
    return {
        "teacher": f"teacher/{teacher['variant']}", "student": f"student/{student['variant']}",
        "speedup_p50": ratio(teacher["latency_ms"]["p50"], student["latency_ms"]["p50"]),
        "size_ratio": ratio(teacher["size_bytes"], student["size_bytes"]),
        # Whole-process peak (interpreter + runtime + model), each model in its own process.
        "peak_rss_ratio": ratio(teacher.get("peak_rss_bytes"), student.get("peak_rss_bytes")),
        # Growth from after the runtime import to the peak: model load + inference only.
        "peak_rss_delta_ratio": ratio(teacher.get("peak_rss_delta_bytes"), student.get("peak_rss_delta_bytes")),
        "energy_ratio": ratio(te.get("joules_per_inference"), se.get("joules_per_inference")),
        "accuracy_retention": ratio(student["accuracy"], teacher["accuracy"]),
        "params_ratio": ratio(teacher["params"], student["params"]),
    }


def model_row(role: str, variant: str, fmt: str, runtime: str, pr: dict, *, path: str, params: int | None,
              size_bytes: int | None, accuracy: float | None, throughput_batch: int | None,
              extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """A report `models` row every task shares: what the model is and its profile stage figures `pr` (where it
    was measured, latency, throughput, memory, energy), plus the profile keys `extra` the task reports too."""
    from edgekd.hostinfo import cpu_name

    return {"role": role, "variant": variant, "format": fmt, "runtime": runtime,
            # builds made before measured_on existed ran everything on the host
            "measured_on": pr.get("measured_on", "host"), "device": pr.get("device", cpu_name()),
            "throughput_batch": throughput_batch, "path": path, "params": params, "size_bytes": size_bytes,
            "accuracy": accuracy, "latency_ms": pr.get("latency_ms"), "throughput_per_s": pr.get("throughput_per_s"),
            "peak_rss_bytes": pr.get("peak_rss_bytes"), "peak_rss_delta_bytes": pr.get("peak_rss_delta_bytes"),
            "energy": pr.get("energy"), **{k: pr.get(k) for k in extra}}


def candidate_row(c: dict, keys: tuple[str, ...], status: dict[str, str], prof: dict) -> dict[str, Any]:
    """A report `candidates` row: the quantize stage's fields `keys`, its path in the build, the
    profiled latency and the selection's status (a candidate without one failed)."""
    row = {k: c.get(k) for k in keys}
    row["path"] = f"quantize/{c['path']}"
    row["latency_ms"] = (prof.get(f"student/{c['variant']}") or {}).get("latency_ms")
    row["status"] = status.get(c["variant"], "failed: " + str(c.get("error")))
    return row


def selection_rule(sel_metrics: dict) -> dict[str, Any]:
    """How the shipped candidate was chosen (the select stage's rule), so a report that ships a variant slower
    (or larger) than fp32 says why: the objective and the accuracy budget against fp32's validation accuracy."""
    return {k: sel_metrics.get(k) for k in ("objective", "budget_points", "max_latency_growth", "reference_val_accuracy")}


def not_built_rows(not_built: list[dict]) -> list[dict[str, Any]]:
    """`candidates` rows for the recipe's candidates the target cannot ship (quantize stage
    metrics `not_built`): status unsupported-on-target, the reason, no file and no figures."""
    return [{"variant": n["variant"], "format": "onnx", "path": None, "accuracy": None, "val_accuracy": None,
             "latency_ms": None, "size_bytes": None, "error": None, "status": "unsupported-on-target",
             "kind": n.get("kind"), "reason": n["reason"]} for n in not_built]


def not_built_note(target: str | None, not_built: list[dict]) -> str:
    by_reason: dict[str, list[str]] = {}
    for n in not_built:
        by_reason.setdefault(n["reason"], []).append(n["variant"])
    return (f"Not built for {target} (unsupported-on-target): "
            + "; ".join(f"{', '.join(v)}: {r}" for r, v in by_reason.items()) + ".")


def control_entry(control: dict | None, kd_accuracy: float | None) -> dict | None:
    """report training.control from the distill stage's control metrics. The KD side of the gain is the
    reported student/fp32 accuracy (fp32 ONNX, onnxruntime, test split), measured like the control's;
    without that row, the distill stage's own ONNX figure of the KD student."""
    if not control:
        return None
    out = {k: v for k, v in control.items() if k != "kd_gain_points"}
    if kd_accuracy is not None:
        out["kd_accuracy"] = kd_accuracy
    kd, acc = out.get("kd_accuracy"), out.get("accuracy")
    out["kd_gain_points"] = 100.0 * (kd - acc) if kd is not None and acc is not None else None
    return out


def weak_teacher_note(control: dict | None, teacher: dict) -> str | None:
    """A note when the labels-only control is at least as accurate as the teacher on the test split: the teacher's
    soft labels then carry more of its errors than the labels do, and distillation has little to add (a weak teacher,
    not a capacity gap: a smaller temperature or an intermediate teacher does not fix it)."""
    acc, t = (control or {}).get("accuracy"), teacher.get("accuracy")
    if acc is None or t is None or acc < t:
        return None
    gain = (control or {}).get("kd_gain_points")
    return (f"The labels-only control ({100 * acc:.1f}%) is at least as accurate as the teacher ({100 * t:.1f}%) on the "
            "test split: the teacher's soft labels carry its errors, and distilling from it "
            + ("is not expected to help" if gain is None else "changed nothing here (under 0.01 points)" if abs(gain) < 0.005
               else f"{'added' if gain > 0 else 'cost'} {abs(gain):.2f} points here")
            + "; a stronger teacher is the remedy (or the labels alone), not a smaller temperature or an intermediate "
              "teacher, which address a teacher too strong for its student.")


def text_generation_control(control: dict | None, student_test: dict | None, epochs: int | None = None,
                            student_held_out: dict | None = None, untrained: dict | None = None) -> dict | None:
    """report training.control of a text-generation build, in the classifier's terms: the control is the same
    student trained on the teacher's answers with hard labels only (sequence-level KD without the teacher's
    token-level logits), so `kd_gain_points` is what the logits add. `accuracy` is the control's next-token
    agreement with the teacher's answers on the test prompts (held-out templates under data.split: template),
    `kd_accuracy` the distilled student's, both from the same PyTorch evaluation (teacher forcing);
    `in_template` gives the same on the in-template test, and `untrained` the cut student before training."""
    if not control:
        return None
    acc = ((control.get("test") or {}).get("agreement"))
    kd = (student_test or {}).get("agreement")

    def gain(a: float | None, b: float | None) -> float | None:
        return 100.0 * (a - b) if a is not None and b is not None else None

    out = {**control, "accuracy": acc, "kd_accuracy": kd, "epochs": epochs,
           "kind": control.get("kind", "answers-hard-label"),
           "what": "the same student trained on the teacher's answers with hard labels only (no token-level logits)",
           "measured_with": "next-token agreement with the teacher's answers on the test prompts, fp32 PyTorch",
           "kd_gain_points": gain(kd, acc)}
    c_in = ((control.get("held_out") or {}).get("test_in_template") or {}).get("agreement")
    kd_in = ((student_held_out or {}).get("test_in_template") or {}).get("agreement")
    if c_in is not None or kd_in is not None:
        out["in_template"] = {"accuracy": c_in, "kd_accuracy": kd_in, "kd_gain_points": gain(kd_in, c_in)}
    if untrained:
        u = (untrained.get("test") or {}).get("agreement")
        out["untrained"] = {"accuracy": u, "kd_gain_points": gain(kd, u),
                            "what": "the cut student before any training (what pruning alone leaves)"}
    return out


def energy_note(teacher: dict) -> str:
    """Whether the comparison's energy figures come from counters or are estimates (by the teacher row's method)."""
    method = str((teacher.get("energy") or {}).get("method", ""))
    return ("Energy measured by counters." if method.startswith(("rapl", "nvml", "npu"))
            else "Energy figures are estimates (method estimate-*): this host exposes no RAPL/NVML counters.")


def teacher_origin_note(tm: dict) -> str:
    """Where the teacher's weights came from: shipped (which file, which sha256), trained by this
    build or taken from the teacher cache, or given by the user."""
    origin = tm.get("origin") or ("given" if tm.get("given") else "trained")
    if origin == "shipped":
        sh = tm.get("shipped") or {}
        return (f"Teacher: shipped weights {sh.get('path')} (sha256 {sh.get('sha256')}), verified before use and not "
                "trained in this build; its accuracy was measured here. --set teacher.retrain=true trains it instead.")
    if origin == "given":
        return f"Teacher: used as given ({tm.get('source')}), not trained; its accuracy was measured here."
    epochs = len(tm.get("history") or [])
    secs = f"{tm.get('train_seconds') or 0:.0f} s"
    how = f"{epochs} epoch{'s' if epochs != 1 else ''}, {secs}" if epochs else secs
    return (f"Teacher: trained by the recipe's teacher.train ({how})"
            + ("; taken from the teacher cache, trained by an earlier build." if tm.get("cached") else " in this build."))


def _kind(energy: dict | None) -> str | None:
    from edgekd.report.schema import MEASURED_ENERGY_METHODS

    if not energy or energy.get("joules_per_inference") is None:
        return None
    return "measured" if energy.get("method") in MEASURED_ENERGY_METHODS else "estimate"


def compare_same_kind(models: list[dict], selected_key: str, fallback_key: str) -> dict[str, Any]:
    """comparison{} between a teacher row and the selected student row measured in the same place
    (device with device, host with host, estimate with estimate). When no teacher figure exists
    where the selected artifact was measured (e.g. model.om on the NPU, teacher only on the host),
    the ratios are formed between host figures (`fallback_key`, the ONNX candidate it came from)
    and `basis` says so. Energy ratios need both figures measured, or both estimated."""
    key = lambda m: f"{m['role']}/{m['variant']}"  # noqa: E731
    student = next(m for m in models if key(m) == selected_key)
    teachers = [m for m in models if m["role"] == "teacher"]
    same = [t for t in teachers if t.get("measured_on") == student.get("measured_on")]
    note = None
    if not same:
        host_student = next((m for m in models if m["role"] == "student" and m.get("measured_on") == "host"
                             and key(m) in (fallback_key, selected_key.removesuffix("-estimate"))), None)
        host_student = host_student or next(m for m in models if key(m) == fallback_key)
        note = (f"no teacher figure {student.get('measured_on')} ({student.get('device')}): ratios are between "
                f"{host_student.get('measured_on')} figures, {key(host_student)} for the student")
        student = host_student
        same = [t for t in teachers if t.get("measured_on") == student.get("measured_on")] or teachers
    teacher = same[0]
    out = comparison_ratios(teacher, student)
    te, se = teacher.get("energy") or {}, student.get("energy") or {}
    if _kind(te) != _kind(se) or (_kind(te) == "estimate" and te.get("method") != se.get("method")):
        out["energy_ratio"] = None
        note = (note + "; " if note else "") + (f"no energy ratio: {te.get('method')} and {se.get('method')} are "
                                                "figures of different kinds")
    out["basis"] = student.get("measured_on")
    out["basis_device"] = student.get("device")
    out["selected"] = selected_key
    if note:
        out["note"] = note
    return out


def measurements(models: list[dict], where: dict | None) -> dict[str, Any]:
    """The report header's account of what ran where, and what did not run and why."""
    ran: dict[str, list[str]] = {}
    for m in models:
        ran.setdefault(f"{m.get('measured_on')}: {m.get('device')}", []).append(f"{m['role']}/{m['variant']}")
    lines = [f"{k} — {', '.join(v)}" for k, v in ran.items()]
    return {"rows_by_place": lines, "ran": list((where or {}).get("ran", [])),
            "not_run": list((where or {}).get("not_run", []))}


def environment(settings: dict, profile_metrics: dict) -> dict[str, Any]:
    """report.environment: the CPU and its ISA flags (INT8 speed depends on VNNI/AMX), the threads
    profiled, the host's FP32 peak measured at profile time, and the runtime versions."""
    from importlib.metadata import PackageNotFoundError, version

    from edgekd.hostinfo import cpu_info

    info = cpu_info()
    runtimes = {}
    for name in ("onnxruntime", "torch"):
        try:
            runtimes[name] = version(name)
        except PackageNotFoundError:
            runtimes[name] = None
    return {"cpu": info["model"], "cpu_flags": info["flags"], "logical_cpus": info["logical_cpus"],
            "threads": settings.get("threads"), "host_peak": profile_metrics.get("host"),
            "python": platform.python_version(), "platform": platform.platform(), "runtimes": runtimes}


def search_section(search: dict[str, Any], student: dict[str, Any]) -> dict[str, Any]:
    """report.json's `search`: every architecture the search stage measured, the winner and why, and the budget
    checked again on the shipped student (`student`: the selected models row, measured by the profile/convert
    stages with their full settings). A miss is `final.met: false` and a note, never silent."""
    budget = search["budget"]
    lat = (student.get("latency_ms") or {}).get("p50")
    size = student.get("size_bytes")
    checks = {}
    if budget.get("latency_ms") is not None:
        checks["latency_ms"] = {"budget": budget["latency_ms"], "measured": lat,
                                "met": lat is not None and lat <= budget["latency_ms"]}
    if budget.get("size_kib") is not None:
        checks["size_kib"] = {"budget": budget["size_kib"], "measured": None if size is None else size / 1024,
                              "met": size is not None and size <= budget["size_kib"] * 1024}
    final = {"artifact": f"{student['role']}/{student['variant']}", "measured_on": student.get("measured_on"),
             "device": student.get("device"), "checks": checks, "met": all(c["met"] for c in checks.values())}
    rows = [{k: c.get(k) for k in ("kwargs", "params", "macs", "variant", "runtime", "latency_ms", "size_bytes",
                                   "measured_on", "fits", "proxy_val_accuracy", "status", "skipped")}
            for c in search["candidates"]]
    return {"budget": budget, "space_from": search["space_from"], "measured_on": search["measured_on"],
            "device": search["device"], "latency": search["latency"], "candidates": rows, "winner": search["winner"],
            "why": search["why"], "final": final}


def search_note(section: dict[str, Any]) -> str | None:
    """The loud line when the shipped student misses the budget the search sized it to."""
    final = section["final"]
    if final["met"]:
        return None
    missed = "; ".join(f"{k.split('_')[0]} {c['measured']:.4g} > budget {c['budget']:.4g} {'ms' if k == 'latency_ms' else 'KiB'}"
                       if c["measured"] is not None else f"{k}: not measured"
                       for k, c in final["checks"].items() if not c["met"])
    return (f"BUDGET MISSED: the shipped student {final['artifact']} ({final['measured_on']}) misses the budget the "
            f"search sized it to: {missed} (edgekd build --strict exits 1 on this)")


# --------------------------------------------------------------------------- distilling vs quantizing the teacher


def _speed_of(row: dict, speed: str) -> float | None:
    if speed == "tokens_per_s":
        return row.get("tokens_per_s")
    return (row.get("latency_ms") or {}).get("p50")


def _dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """a is at least as good as b on both axes (each a higher-is-better number) and better on one."""
    return a[0] >= b[0] and a[1] >= b[1] and (a[0] > b[0] or a[1] > b[1])


def axis_verdict(student: tuple[float, float], teachers: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """The student against each quantized teacher on one (quality, cost) plane, both higher-is-better:
    `beats` when it dominates every teacher (as good on both axes, better on one), `dominated` when some teacher
    dominates it (that teacher is the better choice), else `pareto` (a trade-off: on the front)."""
    dominated_by = [k for k, t in teachers.items() if _dominates(t, student)]
    beaten = [k for k, t in teachers.items() if _dominates(student, t)]
    verdict = "dominated" if dominated_by else "beats" if teachers and len(beaten) == len(teachers) else "pareto"
    return {"verdict": verdict, "dominated_by": dominated_by, "beats": beaten}


def distill_vs_quantize(models: list[dict], student_key: str) -> dict[str, Any] | None:
    """Issue 28 item 6: the alternative a user would pick — the teacher quantized (the rows marked with a
    `quantization`) — against the student row `student_key`, on the same runtime and in the same place. Quality
    is next-token agreement (a language model) or top-1 accuracy; speed is tokens/s or latency p50; size is bytes.
    None where no quantized-teacher row shares the student's runtime. The keys of the `student`/`quantized_teacher`
    entries are named after the metrics (agreement/accuracy, tokens_per_s/latency_ms_p50, size_bytes)."""
    key = lambda m: f"{m['role']}/{m['variant']}"  # noqa: E731
    student = next((m for m in models if key(m) == student_key), None)
    if student is None:
        return None
    peers = [m for m in models if m["role"] == "teacher" and m.get("quantization") is not None
             and m.get("runtime") == student.get("runtime") and m.get("measured_on") == student.get("measured_on")]
    lm = student.get("tokens_per_s") is not None
    quality, speed = ("agreement", "tokens_per_s") if lm else ("accuracy", "latency_ms_p50")

    def fig(m: dict) -> dict[str, Any]:
        return {"model": key(m), quality: m.get("accuracy"), speed: _speed_of(m, speed), "size_bytes": m.get("size_bytes")}

    s = fig(student)
    rows = [fig(m) for m in peers]
    # only rows with every figure take part in the verdict (a teacher whose benchmark failed has none)
    scored = [r for r in rows if all(isinstance(r[f], (int, float)) for f in (quality, speed, "size_bytes"))]
    if not scored or not all(isinstance(s[f], (int, float)) for f in (quality, speed, "size_bytes")):
        return None
    fast = (lambda v: v) if lm else (lambda v: -v)  # higher-is-better speed
    on_speed = axis_verdict((s[quality], fast(s[speed])), {r["model"]: (r[quality], fast(r[speed])) for r in scored})
    on_size = axis_verdict((s[quality], -s["size_bytes"]), {r["model"]: (r[quality], -r["size_bytes"]) for r in scored})
    fastest = max(scored, key=lambda r: fast(r[speed]))
    smallest = min(scored, key=lambda r: r["size_bytes"])
    out = {"student": s, "quantized_teacher": rows, "quality_metric": quality, "speed_metric": speed,
           "runtime": student.get("runtime"), "measured_on": student.get("measured_on"),
           "on_speed": on_speed, "on_size": on_size,
           "student_on_pareto_front_speed": on_speed["verdict"] != "dominated",
           "dominated_on_speed_by": on_speed["dominated_by"],
           "student_on_pareto_front_size": on_size["verdict"] != "dominated",
           "dominated_on_size_by": on_size["dominated_by"],
           "student_speedup_vs_fastest_teacher": (s[speed] / fastest[speed] if lm else ratio(fastest[speed], s[speed])),
           "fastest_teacher": fastest["model"],
           "student_size_fraction_of_smallest_teacher": ratio(s["size_bytes"], smallest["size_bytes"]),
           "smallest_teacher": smallest["model"]}
    out["sentence"] = distill_vs_quantize_sentence(out)
    return out


def distill_vs_quantize_sentence(dq: dict[str, Any]) -> str:
    """One line from distill_vs_quantize's verdicts (computed, never written by hand)."""
    s, q, sp = dq["student"], dq["quality_metric"], dq["speed_metric"]

    def figs(r: dict) -> str:
        v = r[sp]
        speed = f"{v:.3g} tokens/s" if sp == "tokens_per_s" else f"{v:.3g} ms"
        return f"{100 * r[q]:.1f}% {q}, {speed}, {r['size_bytes'] / 2**20:.3g} MiB"

    def said(axis: str, v: dict) -> str:
        faster = "faster" if axis == "speed" else "smaller"
        if v["verdict"] == "beats":
            return f"at equal {axis} distilling beat quantizing (the student is {faster} and at least as good as every one)"
        if v["verdict"] == "dominated":
            return (f"at equal {axis} quantizing beat distilling ({', '.join(v['dominated_by'])}: as {faster.removesuffix('er')} "
                    f"or {faster}, and as good or better)")
        return f"on {axis} neither wins (the student is on the Pareto front of {q} vs {axis}: a trade-off)"

    teachers = "; ".join(f"{r['model']} {figs(r)}" for r in dq["quantized_teacher"]
                         if all(isinstance(r.get(f), (int, float)) for f in (q, sp, "size_bytes")))
    where = dq["runtime"] + (f", measured on {dq['measured_on']}" if dq.get("measured_on") else "")
    return (f"Distilling vs quantizing the teacher ({where}): {s['model']} ({figs(s)}) "
            f"against {teachers} — {said('speed', dq['on_speed'])}; {said('size', dq['on_size'])}.")
