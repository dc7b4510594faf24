"""PNG plots of a report, drawn with matplotlib's Agg canvas (no display, no pyplot global state)."""
from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgekd.report import model_key
from edgekd.report.schema import atomic_write_bytes


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (size, accuracy) points no other point beats: not larger AND not less accurate,
    and strictly better in one. Returned in order of increasing size."""
    front = []
    for i, (si, ai) in enumerate(points):
        dominated = any((sj <= si and aj >= ai) and (sj < si or aj > ai) for j, (sj, aj) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def new_figure(w: float = 7.0, h: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def _plain_log_ticks(axis: Any) -> None:
    """Log axis with plain numbers (0.2, 1, 2) and no crowded minor-tick labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _latency_entries(report: dict) -> list[tuple[str, float, float, bool]]:
    """(label, p50, p90, selected) for the teacher and every student variant with a latency."""
    out: list[tuple[str, float, float, bool]] = []
    seen = set()
    for m in report.get("models", []):
        lat = m.get("latency_ms") or {}
        if isinstance(lat.get("p50"), (int, float)):
            p90 = lat.get("p90") if isinstance(lat.get("p90"), (int, float)) else lat["p50"]  # msit/estimates: no p90
            # the label says where the figure comes from: device, host proxy or card estimate
            label = model_key(m) + (f" [{m['measured_on']}]" if m.get("measured_on") else "")
            out.append((label, float(lat["p50"]), float(p90), model_key(m) == report.get("selected")))
            seen.add(model_key(m))
    for c in report.get("candidates") or []:
        key = f"student/{c.get('variant')}"
        lat = c.get("latency_ms") or {}
        if key not in seen and isinstance(lat.get("p50"), (int, float)):
            out.append((key, float(lat["p50"]), float(lat.get("p90", lat["p50"])), key == report.get("selected")))
            seen.add(key)
    return out


def plot_latency(report: dict, path: Path) -> Path | None:
    entries = _latency_entries(report)
    if not entries:
        return None
    fig = new_figure(7.0, 0.9 + 0.45 * len(entries))
    ax = fig.add_subplot(111)
    ys = list(range(len(entries)))
    labels = [e[0] + (" ★" if e[3] else "") for e in entries]
    ax.barh([y - 0.2 for y in ys], [e[1] for e in entries], height=0.4, label="p50", color="#3b75af")
    ax.barh([y + 0.2 for y in ys], [e[2] for e in entries], height=0.4, label="p90", color="#a6c8e8")
    ax.set_yticks(ys, labels)
    ax.invert_yaxis()
    ax.set_xscale("log")  # the teacher is often 10x slower: a linear axis flattens the students
    _plain_log_ticks(ax.xaxis)
    for y, e in zip(ys, entries):
        ax.annotate(f"{e[1]:.3g}", (e[1], y - 0.2), textcoords="offset points", xytext=(3, -3), fontsize=7)
    ax.set_xlabel("latency per batch-1 inference (ms, log scale)")
    ax.set_title(f"Latency: {report.get('recipe')} on {report.get('target')}")
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def _accuracy_points(report: dict) -> list[tuple[str, float, float]]:
    """(label, size_bytes, accuracy) for the teacher and each student variant that has both."""
    pts: dict[str, tuple[float, float]] = {}
    for m in report.get("models", []):
        if isinstance(m.get("size_bytes"), (int, float)) and isinstance(m.get("accuracy"), (int, float)):
            pts[model_key(m)] = (float(m["size_bytes"]), float(m["accuracy"]))
    for c in report.get("candidates") or []:
        key = f"student/{c.get('variant')}"
        if key not in pts and isinstance(c.get("size_bytes"), (int, float)) and isinstance(c.get("accuracy"), (int, float)):
            pts[key] = (float(c["size_bytes"]), float(c["accuracy"]))
    return [(k, s, a) for k, (s, a) in pts.items()]


def plot_accuracy_size(report: dict, path: Path) -> Path | None:
    pts = _accuracy_points(report)
    if not pts:
        return None
    fig = new_figure()
    ax = fig.add_subplot(111)
    front = pareto_front([(s, a) for _, s, a in pts])
    for i, (label, s, a) in enumerate(pts):
        teacher = label.startswith("teacher/")
        ax.scatter([s / 1024], [100 * a], marker="s" if teacher else "o", s=50,
                   color="#c44e52" if teacher else ("#2a9d4b" if i in front else "#7f7f7f"), zorder=3)
        if label == report.get("selected"):
            ax.scatter([s / 1024], [100 * a], marker="o", s=180, facecolors="none", edgecolors="black", zorder=4)
        ax.annotate(label + (" (selected)" if label == report.get("selected") else ""), (s / 1024, 100 * a),
                    textcoords="offset points", xytext=(7, 4 if i % 2 == 0 else -10), fontsize=8)
    ax.plot([pts[i][1] / 1024 for i in front], [100 * pts[i][2] for i in front], "--", color="#2a9d4b",
            label="Pareto front", zorder=2)
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel("size (KiB, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs size")
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def plot_throughput(report: dict, path: Path) -> Path | None:
    series = [(model_key(m), m["throughput_sweep"]) for m in report.get("models", [])
              if isinstance(m.get("throughput_sweep"), dict) and m["throughput_sweep"]]
    if not series:
        return None
    from matplotlib.ticker import FuncFormatter

    fig = new_figure()
    ax = fig.add_subplot(111)
    for label, sweep in series:
        pts = sorted((int(b), float(v)) for b, v in sweep.items())
        ax.plot([b for b, _ in pts], [v for _, v in pts], "o-", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted({int(b) for _, sw in series for b in sw}))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("batch size")
    ax.set_ylabel("items / s (log scale)")
    ax.set_title("Throughput vs batch size")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_search(report: dict, path: Path) -> Path | None:
    """The student search: measured latency vs proxy validation accuracy of the ranked architectures, the Pareto
    front, the winner and the latency budget line; every other architecture tried as a tick on the latency axis."""
    search = report.get("search")
    if not search or not search.get("candidates"):
        return None
    rows = search["candidates"]
    ranked = [r for r in rows if r.get("proxy_val_accuracy") is not None and r.get("latency_ms") is not None]
    fig = new_figure()
    ax = fig.add_subplot(111)
    if ranked:
        pts = [(r["latency_ms"], r["proxy_val_accuracy"]) for r in ranked]
        front = pareto_front(pts)
        ax.plot([pts[i][0] for i in front], [100 * pts[i][1] for i in front], "--", color="#2a9d4b",
                label="Pareto front", zorder=2)
        for r in ranked:
            win = r.get("status") == "winner"
            ax.scatter([r["latency_ms"]], [100 * r["proxy_val_accuracy"]], s=60 if win else 30, zorder=3,
                       color="#d1495b" if win else "#00798c", marker="*" if win else "o")
            ax.annotate(f"{r['params']:,} p" + (" (winner)" if win else ""), (r["latency_ms"], 100 * r["proxy_val_accuracy"]),
                        fontsize=7, xytext=(4, 4), textcoords="offset points")
    others = [r["latency_ms"] for r in rows if r.get("proxy_val_accuracy") is None and r.get("latency_ms") is not None]
    if others:
        ax.plot(others, [0] * len(others), "|", color="#888888", markersize=12, transform=ax.get_xaxis_transform(),
                label="measured, not trained")
    budget = (search.get("budget") or {}).get("latency_ms")
    if budget is not None:
        ax.axvline(budget, color="#d1495b", linestyle=":", label=f"latency budget {budget:g} ms")
    ax.set_xlabel(f"p50 latency, batch 1 (ms; {search.get('measured_on')}: {search.get('device')})"[:90])
    ax.set_ylabel("proxy validation accuracy (%)")
    ax.set_title("Student search: latency vs accuracy")
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def make_plots(report: dict, out_dir: Path | str) -> dict[str, Path]:
    """Draw the plots the report has data for; returns {name: png path}."""
    out = Path(out_dir)
    made: dict[str, Path] = {}
    for name, fn in (("latency", plot_latency), ("accuracy_size", plot_accuracy_size), ("throughput", plot_throughput),
                     ("search", plot_search)):
        p = fn(report, out / f"{name}.png")
        if p is not None:
            made[name] = p
    return made
