"""What every task's search stage shares (issue #29): is a budget set, the candidates of a card's kwargs ranges,
does a measured artifact fit, which architectures need not be timed, the error when none fits, the rows' status.
The spaces themselves and the measuring are the task's own (classification/search.py, text_generation/search.py)."""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable

import numpy as np

from edgekd.errors import UserError
from edgekd.pipeline import BuildContext, StageResult


def searching(ctx: BuildContext) -> bool:
    sc = getattr(ctx.recipe.student, "search", None)
    return sc is not None and sc.has_budget


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def kwargs_ranges(student: Any) -> tuple[list[dict[str, Any]], str]:
    """Every combination of the card's student.search.kwargs ranges over the student's own kwargs."""
    sc = student.search
    keys = list(sc.kwargs)
    cands = [{**student.kwargs, **dict(zip(keys, combo))} for combo in itertools.product(*(sc.kwargs[k] for k in keys))]
    return cands, "card: student.search.kwargs ranges (" + "; ".join(f"{k} in {sc.kwargs[k]}" for k in keys) + ")"


def unique_within(cands: list[dict[str, Any]], most: int) -> list[dict[str, Any]]:
    """The distinct candidates, cut evenly to `most` (keeping the smallest and the largest)."""
    unique = list({repr(sorted(c.items())): c for c in cands}.values())
    if len(unique) > most:
        idx = sorted({round_half_up(i) for i in np.linspace(0, len(unique) - 1, most)})
        unique = [unique[i] for i in idx]
    return unique


def label_rows(rows: list[dict[str, Any]], winner: dict[str, Any], ranked: list[dict[str, Any]]) -> None:
    for r in rows:
        r["status"] = "winner" if r is winner else ("ranked" if r in ranked else
                                                    ("fits" if r["fits"] else "skipped" if r.get("skipped") else "over-budget"))


def fits(row: dict[str, Any], sc: Any) -> bool:
    if "p50_ms" not in row:
        return False
    return ((sc.latency_ms is None or row["p50_ms"] <= sc.latency_ms)
            and (sc.size_kib is None or row["size_bytes"] <= sc.size_kib * 1024))


def no_larger(small: dict[str, Any], big: dict[str, Any], key: str | tuple[str, ...]) -> bool:
    """`small` is `big` or narrower at the same depth (every layer no wider, every other kwarg the same): its
    latency and size are then no greater, up to timing noise. A tuple `key` names scalar sizes (a cut student's
    num_layers and hidden_size): `small` is no larger in every one."""
    if isinstance(key, tuple):
        rest_ = lambda kw: {k: v for k, v in kw.items() if k not in key}  # noqa: E731
        return rest_(small) == rest_(big) and all(small.get(k, 0) <= big.get(k, 0) for k in key)
    a, b = small.get(key), big.get(key)
    if not isinstance(a, list) or not isinstance(b, list) or len(a) != len(b):
        return False
    rest = lambda kw: {k: v for k, v in kw.items() if k != key}  # noqa: E731
    return rest(small) == rest(big) and all(x <= y for x, y in zip(a, b))


def skip_reason(kw: dict[str, Any], measured: list[dict[str, Any]], sc: Any, key: str | tuple[str, ...] | None) -> str | None:
    """Why `kw` need not be timed: an architecture no larger, of the same depth, already missed the latency
    budget by more than sc.skip_margin on its fastest artifact, or the size budget on its smallest. Zoo spaces
    only (`key`: the per-layer size kwarg); a user factory's kwargs carry no such order."""
    if key is None or sc.skip_margin is None:
        return None
    for r in measured:
        if r.get("min_latency_ms") is None or not no_larger(r["kwargs"], kw, key):
            continue
        if sc.latency_ms is not None and r["min_latency_ms"] > sc.latency_ms * sc.skip_margin:
            return (f"not timed: {_sizes(r['kwargs'], key)} (no larger{_same(key)}) already took "
                    f"{r['min_latency_ms']:.4g} ms > {sc.skip_margin:g} x the {sc.latency_ms:g} ms budget")
        if sc.size_kib is not None and r["min_size_bytes"] > sc.size_kib * 1024:
            return (f"not timed: {_sizes(r['kwargs'], key)} (no larger{_same(key)}) already measured "
                    f"{r['min_size_bytes'] / 1024:.4g} KiB > the {sc.size_kib:g} KiB budget")
    return None


def _sizes(kw: dict[str, Any], key: str | tuple[str, ...]) -> str:
    return ", ".join(f"{k}={kw.get(k)}" for k in (key if isinstance(key, tuple) else (key,)))


def _same(key: str | tuple[str, ...]) -> str:
    return "" if isinstance(key, tuple) else ", same depth"


def too_tight(sc: Any, rows: list[dict[str, Any]], where: str) -> UserError:
    timed = [r for r in rows if r.get("min_latency_ms") is not None]
    fastest = min(timed, key=lambda r: r["min_latency_ms"])
    smallest = min(timed, key=lambda r: r["min_size_bytes"])
    asked = " and ".join(x for x in (f"{sc.latency_ms:g} ms" if sc.latency_ms else "",
                                     f"{sc.size_kib:g} KiB" if sc.size_kib else "") if x)
    return UserError(f"no student of the search space fits the budget ({asked}) on {where}",
                     hint=f"the smallest measured latency was {fastest['min_latency_ms']:.4g} ms ({fastest['kwargs']}), "
                          f"the smallest artifact {smallest['min_size_bytes'] / 1024:.4g} KiB ({smallest['kwargs']}); "
                          "loosen --latency-budget/--size-budget or give smaller sizes in student.search")


def largest_fitting(rows: list[dict[str, Any]], sc: Any, where: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(every fitting row, the top_k largest of them by parameters, faster first on a tie): the largest fitting
    architectures are the likeliest to be the most accurate, so only they are ranked. None fits: the error."""
    fitting = [r for r in rows if r["fits"]]
    if not fitting:
        raise too_tight(sc, rows, where)
    # an inferred fit has no latency yet: it sorts after a timed one of the same size
    return fitting, sorted(fitting, key=lambda r: (r["params"], -(math.inf if r["latency_ms"] is None else r["latency_ms"])),
                           reverse=True)[: sc.top_k]


def _chain_of(kw: dict[str, Any], key: str | tuple[str, ...]) -> tuple[str, Any]:
    """The chain of a candidate: the candidates that differ from it only in its size along one axis (a zoo
    student's per-layer sizes at the same depth; a cut's last size kwarg), and its place on that axis."""
    if isinstance(key, tuple):
        axis = key[-1]
        return repr(sorted((k, v) for k, v in kw.items() if k != axis)), kw.get(axis, 0)
    sizes = kw.get(key)
    rest = repr(sorted((k, v) for k, v in kw.items() if k != key))
    return (rest + f"|depth={len(sizes)}", sum(sizes)) if isinstance(sizes, list) else (rest, 0)


def measure_space(cands: list[dict[str, Any]], sc: Any, key: str | tuple[str, ...] | None,
                  measure: Callable[[int, dict[str, Any]], dict[str, Any]],
                  not_timed: Callable[[int, dict[str, Any], str, bool], dict[str, Any]]) -> list[dict[str, Any]]:
    """A row per candidate, timing only what the budget decides. Latency and size grow along a chain (the same
    depth and other kwargs, wider): its smallest is timed first (a miss settles the chain), then a bisection finds
    its largest fitting architecture; the ones below are inferred to fit, the ones above to miss, without timing
    (`not_timed(index, kwargs, why, fits)`). The skip rule (skip_reason) still spares a candidate that an earlier
    measured miss of a no-larger architecture rules out. Without an order (`key` None: a user's kwargs ranges)
    every candidate is timed. Inferred fits among the top_k largest are timed afterwards (`ensure_measured`)."""
    rows: dict[int, dict[str, Any]] = {}

    def probe(i: int) -> bool:
        if i not in rows:
            why = skip_reason(cands[i], [r for r in rows.values() if r.get("min_latency_ms") is not None], sc, key)
            rows[i] = not_timed(i, cands[i], why, False) if why is not None else measure(i, cands[i])
        return bool(rows[i]["fits"])

    if key is None or sc.skip_margin is None:
        for i in range(len(cands)):
            probe(i)
        return [rows[i] for i in range(len(cands))]
    chains: dict[str, list[int]] = {}
    for i, kw in enumerate(cands):
        chains.setdefault(_chain_of(kw, key)[0], []).append(i)
    for members in chains.values():
        m = sorted(members, key=lambda i: _chain_of(cands[i], key)[1])
        if not probe(m[0]):
            lo = -1
        else:
            lo, hi = 0, len(m) - 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if probe(m[mid]):
                    lo = mid
                else:
                    hi = mid - 1
        for j, i in enumerate(m):
            if i in rows:
                continue
            if j < lo:
                rows[i] = not_timed(i, cands[i], f"not timed: {_sizes(cands[m[lo]], key)} (wider, same depth) fits", True)
            else:
                edge = m[lo + 1] if lo + 1 < len(m) else m[-1]
                rows[i] = not_timed(i, cands[i], f"not timed: {_sizes(cands[edge], key)} (no wider, same depth) "
                                                 "misses the budget", False)
    return [rows[i] for i in range(len(cands))]


def ensure_measured(rows: list[dict[str, Any]], cands: list[dict[str, Any]], sc: Any, where: str,
                    measure: Callable[[int, dict[str, Any]], dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """largest_fitting, after timing every ranked row whose fit was inferred (a ranked row is trained and its
    latency is reported); a row that then misses leaves the ranking, and the next largest takes its place."""
    while True:
        fitting, ranked = largest_fitting(rows, sc, where)
        todo = [r for r in ranked if r["latency_ms"] is None]
        if not todo:
            return fitting, ranked
        for r in todo:
            rows[r["index"]] = measure(r["index"], cands[r["index"]])


def proxy_rows(n: int, samples: int | None, seed: int) -> np.ndarray:
    """The training rows a proxy distillation trains on: a seeded subset of `samples` of `n` (sorted), all when None
    or not fewer than n. Both tasks' searches rank on it."""
    if samples is None or samples >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:samples])


def winner_kwargs(inputs: dict[str, StageResult]) -> dict[str, Any] | None:
    """The search winner's student kwargs when a budget sized the student (the search stage ran), else None."""
    res = inputs.get("search")
    return None if res is None or not res.metrics.get("winner") else dict(res.metrics["winner"]["kwargs"])
