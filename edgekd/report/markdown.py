"""report.md: the same facts as report.json, for a pull request or a README."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgekd.report import (energy_label, fmt_bytes, fmt_energy, fmt_ms, fmt_num, fmt_pct, fmt_ratio, model_key,
                           selected_of, teacher_of)
from edgekd.report.schema import atomic_write_text


def _cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def summary_rows(report: dict) -> list[list[str]]:
    """Teacher vs selected student rows: metric, teacher, student, ratio (shared with HTML)."""
    c = report.get("comparison", {})
    # The rows the ratios were formed from (same measured_on), which may differ from the selected artifact.
    by_key = {model_key(m): m for m in report.get("models", [])}
    t = by_key.get(c.get("teacher")) or teacher_of(report) or {}
    s = by_key.get(c.get("student")) or selected_of(report) or {}
    tl, sl = t.get("latency_ms") or {}, s.get("latency_ms") or {}
    ratio_p90 = (tl["p90"] / sl["p90"]) if tl.get("p90") and sl.get("p90") else None
    same = by_key.get(c.get("teacher_same_runtime")) if c.get("teacher_onnx_speedup_p50") is not None else None
    # like with like: the teacher on the runtime the student ships on, beside the headline's teacher row
    same_row = [[f"latency p50, teacher on {same.get('runtime')}", fmt_ms((same.get("latency_ms") or {}).get("p50")),
                 fmt_ms(sl.get("p50")), f"{fmt_ratio(c.get('teacher_onnx_speedup_p50'))} faster"]] if same else []
    return [
        ["latency p50", fmt_ms(tl.get("p50")), fmt_ms(sl.get("p50")), f"{fmt_ratio(c.get('speedup_p50'))} faster"],
        *same_row,
        ["latency p90", fmt_ms(tl.get("p90")), fmt_ms(sl.get("p90")), f"{fmt_ratio(ratio_p90)} faster"],
        ["latency p99", fmt_ms(tl.get("p99")), fmt_ms(sl.get("p99")), ""],
        [f"throughput (batch {s.get('throughput_batch', '?')})", f"{fmt_num(t.get('throughput_per_s'))}/s",
         f"{fmt_num(s.get('throughput_per_s'))}/s", ""],
        ["size", fmt_bytes(t.get("size_bytes")), fmt_bytes(s.get("size_bytes")), f"{fmt_ratio(c.get('size_ratio'))} smaller"],
        ["params", fmt_num(t.get("params")), fmt_num(s.get("params")), ""],
        ["peak RSS", fmt_bytes(t.get("peak_rss_bytes")), fmt_bytes(s.get("peak_rss_bytes")),
         f"{fmt_ratio(c.get('peak_rss_ratio'))} less"],
        ["accuracy", fmt_pct(t.get("accuracy")), fmt_pct(s.get("accuracy")),
         f"{fmt_pct(c.get('accuracy_retention'))} retained"],
        *([control_summary_row(report)] if control_of(report) else []),
        ["energy / inference", fmt_energy(t.get("energy")), fmt_energy(s.get("energy")),
         f"{fmt_ratio(c.get('energy_ratio'))} less"],
    ]


def control_of(report: dict) -> dict | None:
    """training.control: the same student trained on labels only (None when the build had none)."""
    ctrl = (report.get("training") or {}).get("control")
    return ctrl if isinstance(ctrl, dict) else None


def fmt_points(x: Any) -> str:
    return f"{x:+.2f} pt" if isinstance(x, (int, float)) and not isinstance(x, bool) else "—"


def control_summary_row(report: dict) -> list[str]:
    """The row under accuracy/retention: what the labels-only control reached, and KD's gain over it."""
    c = report.get("comparison", {})
    ctrl = control_of(report) or {}
    return ["accuracy, labels-only control", "", fmt_pct(ctrl.get("accuracy")),
            f"KD gain {fmt_points(c.get('kd_gain_points'))}"]


CONTROL_HEADER = ["student", "losses", "test accuracy", "val accuracy", "epochs", "train time"]


def control_rows(report: dict) -> list[list[str]]:
    """KD student vs labels-only control, both measured the same way (training.control.measured_with)."""
    ctrl = control_of(report)
    if not ctrl:
        return []
    kd = (report.get("training") or {}).get("student") or {}

    def losses(ls: Any) -> str:
        if not isinstance(ls, list):
            return "—"
        return " + ".join(f"{x.get('weight', 1)}×{x.get('kind')}" for x in ls if isinstance(x, dict)) or "—"

    def secs(x: Any) -> str:
        return f"{x:.1f} s" if isinstance(x, (int, float)) else "—"

    return [["distilled (KD)", losses(kd.get("losses")), fmt_pct(ctrl.get("kd_accuracy")), fmt_pct(kd.get("val_accuracy")),
             str(ctrl.get("epochs", "—")), secs(kd.get("train_seconds"))],
            ["labels-only control" + (" (an earlier build's, cached)" if ctrl.get("reused") else ""),
             losses(ctrl.get("losses")), fmt_pct(ctrl.get("accuracy")), fmt_pct(ctrl.get("val_accuracy")),
             str(ctrl.get("epochs", "—")), secs(ctrl.get("train_seconds"))]]


def control_sentence(report: dict) -> str:
    """One line saying what distillation bought, or that the build cannot say."""
    ctrl = control_of(report)
    if not ctrl:
        return ("No labels-only control was trained (distill.control is off), so this report cannot say what "
                "distillation bought; build with --set distill.control=true.")
    gain = (report.get("comparison") or {}).get("kd_gain_points")
    verdict = ("distillation helped" if isinstance(gain, (int, float)) and gain > 0 else
               "distillation did not beat training on labels alone")
    return (f"KD gain {fmt_points(gain)} over the same student trained on labels only ({verdict}); "
            f"both measured as {ctrl.get('measured_with', 'the same way')}.")


def distill_vs_quantize_sentences(report: dict) -> list[str]:
    """The one-line verdicts on distilling vs quantizing the teacher (comparison.distill_vs_quantize[_target])."""
    c = report.get("comparison") or {}
    return [c[k]["sentence"] for k in ("distill_vs_quantize", "distill_vs_quantize_target")
            if isinstance(c.get(k), dict) and c[k].get("sentence")]


def model_rows(report: dict) -> list[list[str]]:
    rows = []
    for m in report.get("models", []):
        lat = m.get("latency_ms") or {}
        mark = " ★" if model_key(m) == report.get("selected") else ""
        where = f"{m.get('measured_on', '?')}: {m.get('device', '?')}"
        rows.append([model_key(m) + mark, where, m.get("format", ""), m.get("runtime", ""), fmt_pct(m.get("accuracy")),
                     fmt_ms(lat.get("p50")), fmt_ms(lat.get("p90")), fmt_ms(lat.get("p99")), fmt_num(lat.get("n")),
                     f"{fmt_num(m.get('throughput_per_s'))}/s", fmt_bytes(m.get("size_bytes")),
                     fmt_bytes(m.get("peak_rss_bytes")), fmt_energy(m.get("energy"))])
    return rows


MODEL_HEADER = ["model", "measured on", "format", "runtime", "accuracy", "p50", "p90", "p99", "n", "throughput", "size",
                "peak RSS", "energy / inference"]
CANDIDATE_HEADER = ["variant", "format", "status", "test accuracy", "val accuracy", "p50", "size"]


def candidate_rows(report: dict) -> list[list[str]]:
    rows = []
    for c in report.get("candidates") or []:
        lat = c.get("latency_ms") or {}
        rows.append([c.get("variant", ""), c.get("format", ""), c.get("status", ""), fmt_pct(c.get("accuracy")),
                     fmt_pct(c.get("val_accuracy")), fmt_ms(lat.get("p50")), fmt_bytes(c.get("size_bytes"))])
    return rows


def selection_sentence(report: dict) -> str:
    """The select stage's rule in words ("" for reports written before it was recorded)."""
    s = report.get("selection") or {}
    if s.get("objective") not in ("latency", "size"):
        return ""
    what = "fastest candidate (p50)" if s["objective"] == "latency" else "smallest candidate on disk"
    budget = f" within {s['budget_points']:g} points of fp32's validation accuracy" if s.get("budget_points") is not None else ""
    slow = (f" and at most {100 * s['max_latency_growth']:g}% slower than fp32 (p50)"
            if s["objective"] == "size" and s.get("max_latency_growth") is not None else "")
    return (f"Selected: the {what}{budget}{slow} (quantize.objective: {s['objective']}"
            + (f", max_latency_growth: {s['max_latency_growth']:g}" if slow else "") + ").")


def energy_notes(report: dict) -> list[str]:
    """One line per distinct energy method, so an estimate is always called one."""
    seen: dict[str, str] = {}
    for m in report.get("models", []):
        e = m.get("energy") or {}
        method = e.get("method")
        if method and method not in seen:
            seen[method] = f"Energy `{method}`: {energy_label(e)}" + (f" — {e['assumptions']}" if e.get("assumptions") else "")
    return list(seen.values())


def measurement_lines(report: dict) -> list[str]:
    """What ran where, and what did not run and why (the report's header)."""
    m = report.get("measurements") or {}
    if not m:
        return []
    lines = ["## Where each figure was measured", ""]
    lines += [f"- {x}" for x in m.get("rows_by_place", [])]
    lines += [f"- ran: {x}" for x in m.get("ran", [])]
    lines += [f"- **not run**: {x}" for x in m.get("not_run", [])]
    return lines + ["", "`device` = on the target device, `host` = on this build host as a proxy, "
                        "`estimate` = the target card's roofline model (card time x card power), never a measurement.", ""]


HELD_OUT_SETS = ("held-out-template", "shuffled-test", "in-template", "natural-prompts")
HELD_OUT_NAMES = {"student": "student (distilled)", "teacher": "teacher vs its own answers (sanity)",
                  "control": "control (answers, hard labels only)", "untrained": "cut student, untrained"}


def held_out_header(report: dict) -> list[str]:
    sets = [s for s in HELD_OUT_SETS if any(s in v for v in ((report.get("training") or {}).get("held_out") or {}).values())]
    return ["model", *sets]


def held_out_table_rows(report: dict) -> list[list[str]]:
    """training.held_out of a language-model build: next-token agreement [95% interval over prompts] per model and
    held-out set (held out by template, in-template recall, and by source: the natural prompts)."""
    ho = (report.get("training") or {}).get("held_out") or {}
    sets = held_out_header(report)[1:]

    def cell(v: dict | None) -> str:
        if not v or v.get("agreement") is None:
            return "—"
        ci = v.get("agreement_ci95")
        return fmt_pct(v["agreement"]) + (f" [{fmt_pct(ci[0])}, {fmt_pct(ci[1])}]" if ci else "") + \
            f" ({v.get('prompts')} prompts)"

    return [[HELD_OUT_NAMES.get(m, m), *(cell(v.get(s)) for s in sets)] for m, v in ho.items()]


HELD_OUT_NOTE = ("Next-token agreement with the teacher's greedy answers (teacher forcing) [95% bootstrap interval over "
                 "prompts]. held-out-template: templates (and their slot words) never trained on; in-template: held-out "
                 "prompts of training templates (recall of the frames); natural-prompts: prompts written apart from the "
                 "training set, near-copies left out (held out by source). Nothing was chosen on these sets: the "
                 "epoch and the candidate were chosen on the validation split (other held-out templates).")


def natural_text_sentence(report: dict) -> str | None:
    """training.natural_text of a language-model build: the language the student kept, in one line."""
    nt = (report.get("training") or {}).get("natural_text")
    if not nt:
        return None
    if nt.get("skipped"):
        return f"Natural text: not scored ({nt['skipped']})."
    s, t = nt.get("student") or {}, nt.get("teacher") or {}
    val = nt.get("val") or {}
    on_val = (f" On the validation snippets (other movies; where a general-text choice is made): "
              f"{fmt_ratio(val['perplexity_ratio'])}." if val.get("perplexity_ratio") else "")
    return (f"Natural text ({nt.get('source')}): perplexity student {fmt_num(s.get('perplexity'))} vs teacher "
            f"{fmt_num(t.get('perplexity'))} ({fmt_ratio(nt.get('perplexity_ratio'))} the teacher's); next-token "
            f"accuracy {fmt_pct(s.get('next_token_accuracy'))} vs {fmt_pct(t.get('next_token_accuracy'))}.{on_val}")


def held_out_lines(report: dict) -> list[str]:
    rows = held_out_table_rows(report)
    if not rows:
        return []
    nt = natural_text_sentence(report)
    return (["## Held-out evaluation", "", HELD_OUT_NOTE, ""] + _table(held_out_header(report), rows)
            + ([nt, ""] if nt else []))


SEARCH_HEADER = ["architecture", "params", "MACs", "artifact", "size", "p50 (where)", "fits?", "proxy val acc", "status"]


def search_rows(search: dict) -> list[list[str]]:
    """Every architecture the student search tried: one row each (SEARCH_HEADER)."""
    return [[", ".join(f"{k}={v}" for k, v in r["kwargs"].items()), f"{r['params']:,}",
             "" if r.get("macs") is None else f"{r['macs']:,}", r.get("variant") or "",
             "" if r.get("size_bytes") is None else f"{r['size_bytes'] / 1024:.2f} KiB",
             r.get("skipped") or f"{r['latency_ms']:.4g} ms ({r['measured_on']})",
             "yes" if r["fits"] else "no",
             "" if r.get("proxy_val_accuracy") is None else f"{100 * r['proxy_val_accuracy']:.2f}%", r["status"]]
            for r in search["candidates"]]


def search_sentences(search: dict) -> list[str]:
    """The budget and where it was measured, where the space came from, why the winner won, and the budget
    checked on the shipped artifact."""
    b = search.get("budget") or {}
    asked = ", ".join(x for x in (f"latency ≤ {b['latency_ms']:g} ms" if b.get("latency_ms") else "",
                                  f"size ≤ {b['size_kib']:g} KiB" if b.get("size_kib") else "") if x)
    final = search.get("final") or {}
    checks = "; ".join(f"{k}: {c['measured']:.4g} vs {c['budget']:.4g} ({'met' if c['met'] else 'MISSED'})"
                       for k, c in (final.get("checks") or {}).items() if c.get("measured") is not None)
    return [f"Budget: {asked}, measured on {search.get('device')} ({search.get('measured_on')}); {search.get('latency')}. "
            f"Space: {search.get('space_from')}.",
            f"Winner: `{search['winner']['kwargs']}`: {search.get('why')}.",
            f"Final artifact `{final.get('artifact')}`: {checks} — budget {'met' if final.get('met') else '**MISSED**'}."]


def search_lines(search: dict) -> list[str]:
    """The student search section of report.md."""
    lines = ["## Student search", ""]
    for sentence in search_sentences(search):
        lines += [sentence, ""]
    return lines + _table(SEARCH_HEADER, search_rows(search))


def render_markdown(report: dict, plots: dict[str, Path] | None = None, base: Path | None = None) -> str:
    env = report.get("environment", {})
    runtimes = ", ".join(f"{k} {v}" for k, v in (env.get("runtimes") or {}).items())
    lines = [f"# edgekd report: {report.get('recipe')} on {report.get('target')}", "",
             f"Created {report.get('created')} by edgekd {report.get('edgekd_version')}. "
             f"CPU: {env.get('cpu')}; threads: {env.get('threads')}; runtimes: {runtimes}.", "",
             ]
    lines += measurement_lines(report)
    c = report.get("comparison", {})
    lines += [f"## Teacher vs selected student (`{report.get('selected')}`)", ""]
    if c.get("basis"):
        lines += [f"Ratios between `{c.get('teacher')}` and `{c.get('student')}`, both measured on {c['basis']}"
                  f" ({c.get('basis_device')})." + (f" {c['note']}." if c.get("note") else ""), ""]
    lines += _table(["metric", "teacher", "student", "teacher / student"], summary_rows(report))
    lines += ["## What distillation bought", "", control_sentence(report), ""]
    if control_of(report):
        lines += _table(CONTROL_HEADER, control_rows(report))
    dq = distill_vs_quantize_sentences(report)
    if dq:
        lines += ["## Distilling vs quantizing the teacher", ""] + [x for d in dq for x in (d, "")]
    lines += held_out_lines(report)
    lines += ["## Models", ""] + _table(MODEL_HEADER, model_rows(report))
    if report.get("candidates"):
        rule = selection_sentence(report)
        lines += ["## Candidates", ""] + ([rule, ""] if rule else []) + _table(CANDIDATE_HEADER, candidate_rows(report))
    if report.get("search"):
        lines += search_lines(report["search"])
    if plots:
        lines += ["## Plots", ""]
        for name, p in plots.items():
            rel = os.path.relpath(p, base) if base is not None else str(p)
            lines += [f"![{name}]({Path(rel).as_posix()})", ""]
    if report.get("profile_settings"):
        lines += ["## Profile settings", ""]
        lines += _table(["setting", "value"], [[k, v] for k, v in report["profile_settings"].items()])
    notes = energy_notes(report) + list(report.get("notes") or [])
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def write_markdown(report: dict, path: Path | str, plots: dict[str, Path] | None = None) -> Path:
    """Write report.md (plots, if given, are linked relative to it)."""
    path = Path(path)
    return atomic_write_text(path, render_markdown(report, plots, path.parent))
