"""Report writers: report.json (the contract), report.md, a self-contained report.html and PNG plots.

Writers take the report dict (built from the stages' result.json files, never from in-memory
state) and write atomically. Shared view helpers live here; the writer modules are imported
inside `write_all` so importing this package stays light (no matplotlib).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekd.errors import StageError

__all__ = ["write_all", "teacher_of", "selected_of", "model_key", "students", "fmt_bytes", "fmt_ms",
           "fmt_pct", "fmt_ratio", "fmt_energy", "energy_label"]


def model_key(m: dict) -> str:
    return f"{m.get('role')}/{m.get('variant')}"


def teacher_of(report: dict) -> dict | None:
    return next((m for m in report.get("models", []) if m.get("role") == "teacher"), None)


def selected_of(report: dict) -> dict | None:
    sel = report.get("selected")
    return next((m for m in report.get("models", []) if model_key(m) == sel), None)


def students(report: dict) -> list[dict]:
    return [m for m in report.get("models", []) if m.get("role") == "student"]


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def fmt_bytes(n: Any) -> str:
    if not _is_num(n):
        return "—"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def fmt_ms(x: Any) -> str:
    if not _is_num(x):
        return "—"
    if 0 < x < 0.01:  # roofline estimates of tiny models on an NPU: show the figure, not 0.000 ms
        return f"{x * 1e3:.3g} µs"
    return f"{x:.3f} ms" if x < 10 else f"{x:.1f} ms"


def fmt_pct(frac: Any, digits: int = 2) -> str:
    return f"{100 * frac:.{digits}f}%" if _is_num(frac) else "—"


def fmt_ratio(x: Any) -> str:
    return f"{x:.2f}×" if _is_num(x) else "—"


def fmt_num(x: Any, digits: int = 1) -> str:
    if not _is_num(x):
        return "—"
    return f"{x:,.{digits}f}" if isinstance(x, float) else f"{x:,}"


def energy_label(energy: Any) -> str:
    """'measured (rapl)' or 'estimate (estimate-...)': a figure never reads as measured unless it is."""
    from edgekd.report.schema import MEASURED_ENERGY_METHODS

    method = energy.get("method") if isinstance(energy, dict) else None
    if method in MEASURED_ENERGY_METHODS:
        return f"measured ({method})"
    return f"estimate ({method})" if method else "not measured"


def fmt_energy(energy: Any) -> str:
    if not isinstance(energy, dict) or not _is_num(energy.get("joules_per_inference")):
        return "—"
    j = float(energy["joules_per_inference"])
    value = f"{j * 1e3:.3f} mJ" if j < 1 else f"{j:.3f} J"
    return f"{value} [{energy_label(energy)}]"


def write_all(report: dict, out_dir: Path | str) -> list[Path]:
    """Write report.json, plots/*.png, report.md and report.html into out_dir; returns the paths.

    A report that breaks the contract is a bug upstream: it raises StageError and nothing is written.
    """
    from edgekd.report.html import write_html
    from edgekd.report.markdown import write_markdown
    from edgekd.report.plots import make_plots
    from edgekd.report.schema import atomic_write_text, check_report, dumps_report

    problems = check_report(report)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise StageError(f"the report breaks its contract: {problems[0]}{more}",
                         hint="a stage result is missing a field; re-run the stage or report a bug")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [atomic_write_text(out / "report.json", dumps_report(report))]
    plots = make_plots(report, out / "plots")
    paths.append(write_markdown(report, out / "report.md", plots))
    paths.append(write_html(report, out / "report.html", plots))
    paths.extend(plots.values())
    return paths
