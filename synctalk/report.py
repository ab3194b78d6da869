"""Gathering the runs of a multirun folder into one comparison table."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from synctalk.errors import UserError
from synctalk.io import atomic_path, read_json


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are kept as values)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        flat.update(flatten(value, name) if isinstance(value, dict) else {name: value})
    return flat


def collect_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One entry per job folder: its overrides, its metrics (None when the run did not finish)."""
    if not sweep_dir.is_dir():
        raise UserError(f"sweep folder {sweep_dir} does not exist")
    runs = []
    for job in sorted((p for p in sweep_dir.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()),
                      key=lambda p: (len(p.name), p.name)):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        params = dict(o.split("=", 1) for o in overrides if "=" in o)
        metrics_path = job / "metrics.json"
        metrics = read_json(metrics_path) if metrics_path.is_file() else None
        runs.append({"job": job.name, "path": job, "params": params, "metrics": metrics})
    if not runs:
        raise UserError(f"{sweep_dir} holds no run folders (expected <job>/.hydra/overrides.yaml from a -m run)")
    return runs


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def comparison_table(runs: list[dict[str, Any]]) -> str:
    """Markdown table: the overrides that differ between runs, then every numeric metric."""
    keys = sorted({k for r in runs for k in r["params"]})
    varying = [k for k in keys if len({r["params"].get(k) for r in runs}) > 1] or keys
    metric_names = sorted({k for r in runs if r["metrics"] for k, v in r["metrics"].items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)})
    header = ["job", *varying, "status", *metric_names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in runs:
        m = r["metrics"] or {}
        status = "done" if r["metrics"] is not None else "failed or unfinished (no metrics.json)"
        cells = [r["job"], *(r["params"].get(k, "") for k in varying), status,
                 *(_fmt(m.get(name, "missing" if m else "")) for name in metric_names)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(sweep_dir: Path) -> Path:
    """Write ``<sweep_dir>/report.md`` and return its path."""
    runs = collect_runs(sweep_dir)
    done = sum(r["metrics"] is not None for r in runs)
    text = (f"# Sweep report: {sweep_dir}\n\n{done} of {len(runs)} runs finished.\n\n"
            f"{comparison_table(runs)}\n")
    path = sweep_dir / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path
