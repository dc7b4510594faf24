"""The CI gate: compare a report with a baseline report of the same recipe and target.

Gated: test accuracy (drop in points) and artifact size (relative growth) of the selected student
and of every student variant the baseline has; a variant present in the baseline and missing (or
failed) now is a breach. Latency is opt-in and gated as the student's speedup over the teacher
measured in the same run, because absolute times differ from one machine to the next.

A text-generation report is gated on what its rows mean: next-token agreement with the teacher (in
points, like accuracy) and generated tokens per second relative to the teacher's in the same run
(opt-in like latency), beside the artifact sizes.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekd.errors import GateFailed, StageError, UserError
from edgekd.report import fmt_bytes, fmt_pct, selected_of, teacher_of
from edgekd.report.schema import atomic_write_text, check_report, dumps_report

EPS = 1e-9  # float noise must not turn "exactly at the limit" into a breach

OK, BREACH, INFO = "ok", "breach", "info"


@dataclass
class GateRow:
    """One checked metric. `delta` is points for accuracy, a relative change for size/latency."""

    metric: str
    baseline: Any
    now: Any
    delta: float | None
    limit: float | None
    verdict: str  # ok | breach | info
    unit: str = ""  # accuracy | bytes | speedup | text
    note: str = ""


@dataclass
class GateResult:
    rows: list[GateRow]
    limits: dict[str, float | None] = field(default_factory=dict)
    recipe: str = ""
    target: str = ""

    @property
    def passed(self) -> bool:
        return not self.breaches

    @property
    def breaches(self) -> list[GateRow]:
        return [r for r in self.rows if r.verdict == BREACH]

    def raise_if_failed(self) -> None:
        """GateFailed (exit 1) naming the first breach, for the CLI."""
        if self.breaches:
            first = self.breaches[0]
            more = f" (+{len(self.breaches) - 1} more)" if len(self.breaches) > 1 else ""
            raise GateFailed(f"regression gate failed: {first.metric} {first.note or _fmt(first.now, first.unit)}{more}",
                             hint="fix the regression, or accept it by refreshing the baseline")


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _student_variants(report: dict) -> dict[str, dict]:
    """Student variants by name: the profiled `models` entries first, then the `candidates`.

    Each value: {accuracy, size_bytes, p50, failed (reason or None)}. A variant name shared by two
    formats is disambiguated as `variant@format`.
    """
    out: dict[str, dict] = {}
    formats: dict[str, str] = {}

    def add(v: str, fmt: str, entry: dict) -> None:
        key = v if v not in out or formats.get(v) == fmt else f"{v}@{fmt}"
        if key in out:
            return
        formats.setdefault(v, fmt)
        out[key] = entry

    for m in report.get("models", []):
        if m.get("role") == "student":
            add(str(m.get("variant")), str(m.get("format")), {
                "accuracy": m.get("accuracy"), "size_bytes": m.get("size_bytes"),
                "p50": (m.get("latency_ms") or {}).get("p50"), "tokens_per_s": m.get("tokens_per_s"),
                "failed": None})
    for c in report.get("candidates") or []:
        status = str(c.get("status", ""))
        add(str(c.get("variant")), str(c.get("format")), {
            "accuracy": c.get("accuracy"), "size_bytes": c.get("size_bytes"),
            "p50": (c.get("latency_ms") or {}).get("p50"), "tokens_per_s": c.get("tokens_per_s"),
            "failed": status if status.startswith("failed") else None})
    return out


def _is_lm(report: dict) -> bool:
    """A language model's report: its rows are per generated token (they carry tokens/s and agreement)."""
    sel = selected_of(report) or {}
    return "tokens_per_s" in sel and "agreement" in sel


def _accuracy_row(name: str, base: Any, now: Any, max_drop: float, what: str = "accuracy") -> GateRow:
    metric = f"{name} {what}"
    if not _num(base):
        return GateRow(metric, base, now, None, None, INFO, "accuracy", "no baseline figure")
    if not _num(now):
        return GateRow(metric, base, now, None, -max_drop, BREACH, "accuracy", "not measured now")
    delta = (float(now) - float(base)) * 100.0
    verdict = BREACH if delta < -max_drop - EPS else OK
    return GateRow(metric, base, now, delta, -max_drop, verdict, "accuracy",
                   f"dropped {-delta:.2f} points" if verdict == BREACH else "")


def _size_row(name: str, base: Any, now: Any, max_growth: float) -> GateRow:
    metric = f"{name} size"
    if not _num(base) or base <= 0:
        return GateRow(metric, base, now, None, None, INFO, "bytes", "no baseline figure")
    if not _num(now):
        return GateRow(metric, base, now, None, max_growth, BREACH, "bytes", "not measured now")
    growth = float(now) / float(base) - 1.0
    verdict = BREACH if growth > max_growth + EPS else OK
    return GateRow(metric, base, now, growth, max_growth, verdict, "bytes",
                   f"grew {100 * growth:.1f}%" if verdict == BREACH else "")


def _speedup(teacher_p50: Any, p50: Any) -> float | None:
    return float(teacher_p50) / float(p50) if _num(teacher_p50) and _num(p50) and p50 > 0 else None


def _tokens_ratio(teacher_tps: Any, tps: Any) -> float | None:
    return float(tps) / float(teacher_tps) if _num(teacher_tps) and _num(tps) and teacher_tps > 0 else None


def _latency_row(name: str, base_speedup: float | None, now_speedup: float | None, max_growth: float,
                 what: str = "speedup vs teacher") -> GateRow:
    """Latency growth relative to the teacher: base speedup / now speedup - 1 (for a language model the
    speed-up is its generated tokens/s over the teacher's)."""
    metric = f"{name} {what}"
    if base_speedup is None:
        return GateRow(metric, base_speedup, now_speedup, None, None, INFO, "speedup", "no baseline figure")
    if now_speedup is None:
        return GateRow(metric, base_speedup, now_speedup, None, max_growth, BREACH, "speedup", "not measured now")
    growth = base_speedup / now_speedup - 1.0
    verdict = BREACH if growth > max_growth + EPS else OK
    return GateRow(metric, base_speedup, now_speedup, growth, max_growth, verdict, "speedup",
                   f"{100 * growth:.1f}% slower relative to the teacher" if verdict == BREACH else "")


def kd_gain_of(report: dict) -> float | None:
    """comparison.kd_gain_points: the KD student's test accuracy minus the labels-only control's, in points."""
    g = (report.get("comparison") or {}).get("kd_gain_points")
    return float(g) if _num(g) else None


def _kd_gain_row(base_gain: float | None, now_gain: float | None, min_gain: float) -> GateRow:
    """An absolute floor, not a change from the baseline: distillation must still beat its control."""
    metric = "KD gain over labels-only control"
    if now_gain is None:
        return GateRow(metric, base_gain, now_gain, None, min_gain, BREACH, "points",
                       "not measured now (no labels-only control: build with --set distill.control=true)")
    delta = now_gain - base_gain if base_gain is not None else None
    verdict = BREACH if now_gain < min_gain - EPS else OK
    return GateRow(metric, base_gain, now_gain, delta, min_gain, verdict, "points",
                   f"{now_gain:+.2f} points, below {min_gain:+.2f}" if verdict == BREACH else "")


def kd_gain_gate(report: dict, min_kd_gain: float) -> GateResult:
    """The KD-gain floor alone, for a report without a baseline."""
    return GateResult([_kd_gain_row(None, kd_gain_of(report), min_kd_gain)], {"min_kd_gain": min_kd_gain},
                      str(report.get("recipe")), str(report.get("target")))


def compare(report: dict, baseline: dict, max_accuracy_drop: float = 0.5, max_size_growth: float = 0.05,
            max_latency_growth: float | None = None, min_kd_gain: float | None = None) -> GateResult:
    """Gate `report` against `baseline` (both report dicts).

    max_accuracy_drop: points (0.5 = half a percentage point); max_size_growth: fraction (0.05 =
    5%); max_latency_growth: fraction of the student-vs-teacher speedup lost, or None to skip;
    min_kd_gain: points the KD student must beat the labels-only control by (negative allows a
    loss), or None to skip.
    """
    for key in ("recipe", "target"):
        if report.get(key) != baseline.get(key):
            raise UserError(f"the baseline is for {key} '{baseline.get(key)}', this report is for '{report.get(key)}'",
                            hint="pass the baseline of the same recipe and target, or write one with update_baseline")
    if max_accuracy_drop < 0 or max_size_growth < 0 or (max_latency_growth is not None and max_latency_growth < 0):
        raise UserError("gate limits must be non-negative", hint="e.g. --max-accuracy-drop 0.5 --max-size-growth 0.05")
    rows: list[GateRow] = []
    sel_b, sel_n = selected_of(baseline), selected_of(report)
    if sel_b is None or sel_n is None:
        which = "baseline" if sel_b is None else "report"
        raise UserError(f"the {which} names a selected model that it does not contain",
                        hint="regenerate it with `edgekd report`")
    changed = baseline.get("selected") != report.get("selected")
    rows.append(GateRow("selected variant", baseline.get("selected"), report.get("selected"), None, None, INFO, "text",
                        "changed" if changed else ""))
    lm = _is_lm(report)
    what = "next-token agreement" if lm else "accuracy"
    rows.append(_accuracy_row("selected", sel_b.get("accuracy"), sel_n.get("accuracy"), max_accuracy_drop, what))
    rows.append(_size_row("selected", sel_b.get("size_bytes"), sel_n.get("size_bytes"), max_size_growth))

    t_b, t_n = teacher_of(baseline) or {}, teacher_of(report) or {}
    if lm:  # generated tokens/s over the teacher's in the same run: the machine's speed cancels out
        speed = "tokens/s vs teacher"

        def ratio(teacher: dict, entry: dict) -> float | None:
            return _tokens_ratio(teacher.get("tokens_per_s"), entry.get("tokens_per_s"))
    else:
        speed = "speedup vs teacher"

        def ratio(teacher: dict, entry: dict) -> float | None:
            return _speedup((teacher.get("latency_ms") or {}).get("p50"),
                            entry.get("p50", (entry.get("latency_ms") or {}).get("p50")))
    if max_latency_growth is not None:
        rows.append(_latency_row("selected", ratio(t_b, sel_b), ratio(t_n, sel_n), max_latency_growth, speed))

    now_vars = _student_variants(report)
    for name, b in _student_variants(baseline).items():
        if b["failed"]:
            continue  # nothing to regress from
        n = now_vars.get(name)
        if n is None or n["failed"]:
            rows.append(GateRow(f"{name} present", "yes", n["failed"] if n else "missing", None, None, BREACH, "text",
                                "variant in the baseline is " + ("failed now" if n else "missing now")))
            continue
        rows.append(_accuracy_row(name, b["accuracy"], n["accuracy"], max_accuracy_drop, what))
        rows.append(_size_row(name, b["size_bytes"], n["size_bytes"], max_size_growth))
        if max_latency_growth is not None:
            rows.append(_latency_row(name, ratio(t_b, b), ratio(t_n, n), max_latency_growth, speed))
    if min_kd_gain is not None:
        rows.append(_kd_gain_row(kd_gain_of(baseline), kd_gain_of(report), min_kd_gain))
    limits = {"max_accuracy_drop": max_accuracy_drop, "max_size_growth": max_size_growth,
              "max_latency_growth": max_latency_growth, "min_kd_gain": min_kd_gain}
    return GateResult(rows, limits, str(report.get("recipe")), str(report.get("target")))


def _fmt(x: Any, unit: str) -> str:
    if x is None:
        return "—"
    if unit == "accuracy":
        return fmt_pct(x)
    if unit == "bytes":
        return fmt_bytes(x)
    if unit == "speedup" and _num(x):
        return f"{x:.2f}×"
    if unit == "points" and _num(x):
        return f"{x:+.2f} pt"
    return str(x)


def _fmt_delta(r: GateRow) -> str:
    if r.delta is None:
        return ""
    return f"{r.delta:+.2f} pt" if r.unit in ("accuracy", "points") else f"{100 * r.delta:+.1f}%"


def _fmt_limit(r: GateRow) -> str:
    if r.limit is None:
        return ""
    if r.unit in ("accuracy", "points"):
        return f"≥ {r.limit:+.2f} pt"
    return f"≤ +{100 * r.limit:.1f}%" + (" slower" if r.unit == "speedup" else "")


def render_gate(result: GateResult, console: Any) -> None:
    """Print the gate as a rich table, breaches in red, and a verdict line."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"regression gate: {result.recipe} on {result.target}", title_justify="left")
    for col in ("metric", "baseline", "now", "delta", "limit", "verdict"):
        t.add_column(col, justify="left" if col in ("metric", "verdict") else "right")
    for r in result.rows:
        style = {"breach": "bold red", "ok": "green", "info": "dim"}.get(r.verdict)
        verdict = r.verdict + (f" ({r.note})" if r.note else "")
        t.add_row(*(Text(x) for x in (r.metric, _fmt(r.baseline, r.unit), _fmt(r.now, r.unit), _fmt_delta(r),
                                       _fmt_limit(r))), Text(verdict, style=style or ""))
    console.print(t)
    if result.passed:
        console.print(Text("gate passed", style="bold green"))
    else:
        console.print(Text(f"gate FAILED: {len(result.breaches)} breach(es)", style="bold red"))


def gate_json(result: GateResult) -> dict:
    """The gate as JSON-able data (for CI artifacts)."""
    return {"passed": result.passed, "recipe": result.recipe, "target": result.target, "limits": result.limits,
            "breaches": len(result.breaches), "rows": [asdict(r) for r in result.rows]}


def update_baseline(report: dict, path: Path | str) -> Path:
    """Write `report` as the new baseline (atomically); it must meet the report contract."""
    problems = check_report(report)
    if problems:
        raise StageError(f"refusing to write a baseline from an invalid report: {problems[0]}",
                         hint="regenerate the report with `edgekd report`")
    return atomic_write_text(Path(path), dumps_report(report))


def history(folder: Path | str, out: Path | str | None = None) -> Path:
    """Plot accuracy vs size of the selected student of every report.json under `folder`, one line per
    recipe/target in order of creation; returns the PNG path (default: folder/history.png)."""
    import warnings

    from edgekd.report.plots import new_figure, save_figure
    from edgekd.report.schema import load_report

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"not a folder: {folder}", hint="pass the folder that holds your build directories")
    series: dict[str, list[tuple[str, float, float]]] = {}
    for p in sorted(folder.rglob("report.json")):
        try:
            rep = load_report(p)
        except UserError as e:  # one broken report must not hide the rest; say which was skipped
            warnings.warn(f"history: skipping {p}: {e.message}", stacklevel=2)
            continue
        sel = selected_of(rep) or {}
        if _num(sel.get("accuracy")) and _num(sel.get("size_bytes")):
            series.setdefault(f"{rep['recipe']} on {rep['target']}", []).append(
                (str(rep.get("created")), float(sel["size_bytes"]), float(sel["accuracy"])))
    if not series:
        raise UserError(f"no usable report.json under {folder}", hint="run `edgekd build` to produce reports")
    fig = new_figure()
    ax = fig.add_subplot(111)
    for label, pts in series.items():
        pts.sort()
        ax.plot([s / 1024 for _, s, _ in pts], [100 * a for _, _, a in pts], "o-", label=f"{label} ({len(pts)})")
        ax.annotate(pts[-1][0][:10] + " (latest)", (pts[-1][1] / 1024, 100 * pts[-1][2]),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("selected student size (KiB)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("History: selected student, accuracy vs size")
    ax.legend(fontsize=8)
    return save_figure(fig, Path(out) if out is not None else folder / "history.png")
