"""Compare the shape of two report.json files: the set of keys (recursively, list items merged),
the model rows (role/variant) and the selection; numbers are not compared (timings differ run to run).

    python benchmarks/report_diff.py OLD/report/report.json NEW/report/report.json [--json OUT]

Exit 0 when keys, rows and selection agree, 1 otherwise. Used to check that a refactor keeps
the report contract (issue #14: every quick build gives the same report keys and selections).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def key_paths(obj: Any, prefix: str = "") -> set[str]:
    """Dotted key paths of a JSON value; list items share the path `prefix[]`. The keys of
    name-keyed maps (profile results, runtimes) are kept too: they are part of the contract."""
    out: set[str] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{prefix}.{k}" if prefix else str(k)
            out.add(p)
            out |= key_paths(v, p)
    elif isinstance(obj, list):
        for v in obj:
            out |= key_paths(v, prefix + "[]")
    return out


def rows(report: dict) -> list[str]:
    return sorted(f"{m.get('role')}/{m.get('variant')}" for m in report.get("models", []))


def diff(old: dict, new: dict) -> dict[str, Any]:
    ko, kn = key_paths(old), key_paths(new)
    return {"removed_keys": sorted(ko - kn), "added_keys": sorted(kn - ko),
            "rows_old": rows(old), "rows_new": rows(new), "same_rows": rows(old) == rows(new),
            "selected_old": old.get("selected"), "selected_new": new.get("selected"),
            "same_selection": old.get("selected") == new.get("selected")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--json", type=Path, help="also write the diff here")
    a = ap.parse_args()
    d = diff(json.loads(a.old.read_text()), json.loads(a.new.read_text()))
    if a.json:
        a.json.write_text(json.dumps(d, indent=2))
    print(f"removed keys: {len(d['removed_keys'])}  added keys: {len(d['added_keys'])}  "
          f"same rows: {d['same_rows']}  selection: {d['selected_old']} -> {d['selected_new']}")
    for k in d["removed_keys"]:
        print(f"  - {k}")
    for k in d["added_keys"]:
        print(f"  + {k}")
    return 0 if not d["removed_keys"] and d["same_rows"] and d["same_selection"] else 1


if __name__ == "__main__":
    sys.exit(main())
