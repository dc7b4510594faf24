"""Rich tables of a report for the terminal."""
from __future__ import annotations

from typing import Any

from edgekd.report.markdown import (CANDIDATE_HEADER, candidate_rows, control_of, control_sentence,
                                    distill_vs_quantize_sentences, selection_sentence, summary_rows)


def render(report: dict, console: Any) -> None:
    """Print teacher vs selected student (speedup, size ratio, accuracy retention, energy with its
    method) and the candidates table to a rich Console."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"{report.get('recipe')} on {report.get('target')}: teacher vs {report.get('selected')}",
              title_justify="left")
    for col, justify in (("metric", "left"), ("teacher", "right"), ("student", "right"), ("teacher / student", "right")):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in summary_rows(report):
        t.add_row(*(Text(x) for x in row))  # Text: cells like '[estimate (...)]' are not markup
    console.print(t)
    console.print(Text(control_sentence(report), style="" if control_of(report) else "dim"))
    for line in distill_vs_quantize_sentences(report):
        console.print(Text(line))
    rows = candidate_rows(report)
    if rows:
        c = Table(title="Candidates", title_justify="left", caption=selection_sentence(report) or None,
                  caption_justify="left")
        for col in CANDIDATE_HEADER:
            c.add_column(col)
        for row, cand in zip(rows, report.get("candidates") or []):
            status = str(cand.get("status", ""))
            style = ("bold green" if status == "selected" else "red" if status.startswith("failed")
                     else "dim" if status == "unsupported-on-target" else None)
            c.add_row(*(Text(x) for x in row), style=style)
        console.print(c)
    for note in report.get("notes") or []:
        console.print(f"[dim]note:[/dim] {escape(str(note))}", highlight=False)
