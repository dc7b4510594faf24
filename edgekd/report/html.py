"""report.html: one self-contained file (inline CSS, PNGs embedded as base64, no external assets)."""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from edgekd.report.markdown import (CANDIDATE_HEADER, CONTROL_HEADER, MODEL_HEADER, SEARCH_HEADER, candidate_rows,
                                    control_rows, control_sentence, energy_notes, model_rows, search_rows,
                                    HELD_OUT_NOTE, distill_vs_quantize_sentences, held_out_header, held_out_table_rows,
                                    natural_text_sentence,
                                    search_sentences, selection_sentence, summary_rows)
from edgekd.report.schema import atomic_write_text

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
table{border-collapse:collapse;margin:0.5rem 0 1.5rem;font-size:0.9rem}
th,td{border:1px solid #ccc;padding:0.3rem 0.6rem;text-align:left}
th{background:#f2f4f7} tr:nth-child(even) td{background:#fafafa}
img{max-width:100%;border:1px solid #eee;margin:0.5rem 0}
.meta{color:#555} code{background:#f2f4f7;padding:0 0.2rem}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _measurements(report: dict) -> list[str]:
    m = report.get("measurements") or {}
    if not m:
        return []
    items = list(m.get("rows_by_place", [])) + [f"ran: {x}" for x in m.get("ran", [])] + \
        [f"NOT RUN: {x}" for x in m.get("not_run", [])]
    return ["<h2>Where each figure was measured</h2>", "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in items) + "</ul>",
            '<p class="meta">device = on the target device; host = on this build host as a proxy; estimate = the '
            "target card's roofline model (card time x card power), never a measurement.</p>"]


def _basis(report: dict) -> str:
    c = report.get("comparison") or {}
    if not c.get("basis"):
        return ""
    return (f"Ratios between {c.get('teacher')} and {c.get('student')}, both measured on {c['basis']} "
            f"({c.get('basis_device')}). " + (c.get("note") or ""))


def render_html(report: dict, plots: dict[str, Path] | None = None) -> str:
    env = report.get("environment", {})
    runtimes = ", ".join(f"{k} {v}" for k, v in (env.get("runtimes") or {}).items())
    title = f"edgekd report: {report.get('recipe')} on {report.get('target')}"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">Created {_e(report.get("created"))} by edgekd {_e(report.get("edgekd_version"))}. '
        f"CPU: {_e(env.get('cpu'))}; threads: {_e(env.get('threads'))}; runtimes: {_e(runtimes)}.</p>",
        *_measurements(report),
        f"<h2>Teacher vs selected student (<code>{_e(report.get('selected'))}</code>)</h2>",
        f'<p class="meta">{_e(_basis(report))}</p>',
        _table(["metric", "teacher", "student", "teacher / student"], summary_rows(report)),
        "<h2>What distillation bought</h2>", f"<p>{_e(control_sentence(report))}</p>",
    ]
    if control_rows(report):
        parts.append(_table(CONTROL_HEADER, control_rows(report)))
    dq = distill_vs_quantize_sentences(report)
    if dq:
        parts += ["<h2>Distilling vs quantizing the teacher</h2>", *(f"<p>{_e(x)}</p>" for x in dq)]
    if held_out_table_rows(report):
        parts += ["<h2>Held-out evaluation</h2>", f"<p>{_e(HELD_OUT_NOTE)}</p>",
                  _table(held_out_header(report), held_out_table_rows(report))]
        if natural_text_sentence(report):
            parts.append(f"<p>{_e(natural_text_sentence(report))}</p>")
    parts += ["<h2>Models</h2>", _table(MODEL_HEADER, model_rows(report))]
    if report.get("candidates"):
        rule = selection_sentence(report)
        parts += ["<h2>Candidates</h2>"] + ([f"<p>{_e(rule)}</p>"] if rule else []) + [_table(CANDIDATE_HEADER, candidate_rows(report))]
    if report.get("search"):
        parts += ["<h2>Student search</h2>", *(f"<p>{_e(x)}</p>" for x in search_sentences(report["search"])),
                  _table(SEARCH_HEADER, search_rows(report["search"]))]
    if plots:
        parts.append("<h2>Plots</h2>")
        for name, p in plots.items():
            data = base64.b64encode(Path(p).read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{_e(name)}" src="data:image/png;base64,{data}"></figure>')
    if report.get("profile_settings"):
        parts += ["<h2>Profile settings</h2>",
                  _table(["setting", "value"], [[k, v] for k, v in report["profile_settings"].items()])]
    notes = energy_notes(report) + list(report.get("notes") or [])
    if notes:
        parts += ["<h2>Notes</h2>", "<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(report: dict, path: Path | str, plots: dict[str, Path] | None = None) -> Path:
    """Write a self-contained report.html with the given PNG plots embedded."""
    return atomic_write_text(Path(path), render_html(report, plots))
