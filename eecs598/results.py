"""Result records: what `make reproduce` and the notebooks write to results/.

A record is a plain dict, one per headline figure, with the fields
assignment, metric, value, unit, reference, data, device, seconds, date, mode, details.
Records are merged into ``results/results.json`` keyed by (assignment, metric, mode), so a
run replaces its own rows and keeps every other row; ``results/RESULTS.md`` is rendered
from the merged file.
"""
import contextlib
import datetime as _dt
import json
import math
import os
from pathlib import Path

from .utils import quick_mode

try:  # POSIX only; elsewhere concurrent writers are simply not serialized
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

FIELDS = ("assignment", "metric", "value", "unit", "reference", "data", "device",
          "seconds", "date", "mode", "details")


MODES = ("full", "quick")  # the modes RESULTS.md shows (render_markdown)


def make_record(assignment, metric, value, unit, data, device, seconds, reference=None,
                details=None, mode=None):
    """Build one result record; `mode` defaults to the current mode ("quick"/"full")."""
    if not metric.replace("_", "").isalnum() or metric.lower() != metric:
        raise ValueError(f"metric must be snake_case, got {metric!r}")
    if mode not in (None, *MODES):
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return {
        "assignment": assignment, "metric": metric,
        "value": value if isinstance(value, (bool, int, str)) or value is None else float(value),
        "unit": unit, "reference": reference, "data": data, "device": device,
        "seconds": round(float(seconds), 3), "date": _dt.date.today().isoformat(),
        "mode": mode or ("quick" if quick_mode() else "full"), "details": details or {},
    }


def _json_default(value):
    """JSON for the numbers a record's details may hold besides Python's own: a 0-d tensor or
    numpy scalar becomes its Python number, a tensor or array its nested list."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable: {value!r}")


def _standard_json(value):
    """`value` as data that standard JSON can hold: tensors and numpy values through
    `_json_default`, and NaN or infinite numbers (a diverged run's last loss) as None (null):
    JSON has no NaN, and other readers (JavaScript's JSON.parse, for one) reject it."""
    if isinstance(value, dict):
        return {k: _standard_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_standard_json(v) for v in value]
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, (str, bool, int)):
        return value
    return _standard_json(_json_default(value))


def _write_atomically(path, text):
    """Write `text` to `path` through a temporary file in the same folder and a rename, so that
    a run killed mid-write leaves the old file, not a truncated one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _key(record):
    return (record["assignment"], record["metric"], record["mode"])


def load_records(path):
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else []


@contextlib.contextmanager
def _locked(path):
    """Hold an exclusive lock on ``<path>.lock`` (two runs may write results at once)."""
    lock_path = Path(str(path) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


def merge_records(path, records):
    """Merge `records` into the JSON list at `path` (replacing rows with the same key); return all.
    Non-finite numbers are written as null (`_standard_json`)."""
    with _locked(path):
        merged = {_key(r): r for r in load_records(path)}
        merged.update({_key(r): r for r in records})
        rows = _standard_json(sorted(merged.values(), key=lambda r: (r["assignment"], r["mode"], r["metric"])))
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, json.dumps(rows, indent=2, allow_nan=False) + "\n")
    return rows


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return "" if value is None else str(value)


def render_markdown(records):
    """A Markdown report: one table per assignment, full-mode rows first, quick rows apart."""
    lines = ["# Results", "",
             "Written by `make reproduce` from `results/results.json`; do not edit by hand.",
             "Each row is one measured figure: the value, the reference solutions' value (if any), "
             "the data copy, the device, the wall time of the measurement and the date.", ""]
    for mode, title in (("full", "Full mode"), ("quick", "Quick mode (smoke runs on tiny subsets: not results)")):
        rows = [r for r in records if r["mode"] == mode]
        if not rows:
            continue
        lines += [f"## {title}", ""]
        for assignment in sorted({r["assignment"] for r in rows}):
            lines += [f"### {assignment}", "",
                      "| metric | value | unit | reference | data | device | seconds | date |",
                      "|---|---|---|---|---|---|---|---|"]
            for r in (r for r in rows if r["assignment"] == assignment):
                lines.append("| " + " | ".join(_fmt(r[k]) for k in (
                    "metric", "value", "unit", "reference", "data", "device", "seconds", "date")) + " |")
            lines.append("")
    return "\n".join(lines)


def write_results(results_dir, records):
    """Merge `records` into results_dir/results.json and re-render results_dir/RESULTS.md."""
    results_dir = Path(results_dir)
    with _locked(results_dir / "RESULTS.md"):
        rows = merge_records(results_dir / "results.json", records)
        _write_atomically(results_dir / "RESULTS.md", render_markdown(rows))
    return rows
