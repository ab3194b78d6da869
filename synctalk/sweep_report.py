"""``synctalk report``: gather the runs of a multirun folder into one comparison, as markdown and HTML.

For every job folder (``<sweep>/<n>/`` with ``.hydra/``) the report reads the config, ``metrics.json``
(absent: the run failed or did not finish), ``learning_curve.csv``, ``stabilizer/focal_search.json`` and
the latest validation image, and writes into ``<sweep>/report/``:

* ``report.md`` and ``report.html`` (one self-contained file, images embedded): the config keys that
  differ between runs, the headline metrics, the GT-mode comparison (parsed vs with hair, whole frame vs
  face only), for a sweep over ``data.fold`` the lip sync of the folds' held-out blocks read together (the whole
  clip held out, :func:`synctalk.metrics.lip_sync.pooled_lip_sync`), every metric per run, what each run is
  missing, and the runs' notes;
* plots: ``metrics_per_value.png`` (each headline metric against the swept value), ``quality_vs_focal.png``
  (held-out PSNR, face PSNR and LMD of trained runs against their dataset's focal), ``learning_curves.png``,
  ``focal_curves.png`` (landmark error against focal length), ``samples.png`` (validation frames side by side).
"""
from __future__ import annotations

import base64
import csv
import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from synctalk.errors import UserError
from synctalk.io import atomic_path, read_json, save_figure, subplots

#: metrics shown in the headline table and plots, in this order, when runs have them
HEADLINE = ("psnr", "parsed/psnr", "with_hair/psnr", "parsed/face_psnr", "parsed/ssim", "parsed/ms_ssim",
            "parsed/lpips", "parsed/fid", "parsed/niqe", "parsed/brisque", "parsed/lmd", "parsed/aue_upper",
            "parsed/aue_lower", "parsed/face_found", "parsed/mouth_corr", "parsed/jaw_corr", "sync_gap",
            "sync_gap_low", "mouth_corr_still_audio", "mouth_audio_response", "dataset.audio_mouth_readout",
            "dataset.audio_jaw_readout",
            "parsed/lse_c", "parsed/lse_d",
            "focal", "truth.focal_error_pct", "truth.landmarks.rotation_median_deg",
            "truth.bundle_adjustment.rotation_median_deg", "truth.bundle_adjustment.translation_median_pct",
            "landmark_rms_px", "ba_reprojection_px.joint", "jitter_landmarks.rotation_deg",
            "jitter_bundle_adjustment.rotation_deg", "jitter_written.rotation_deg", "dataset.focal_at_512",
            "dataset.jitter_written.rotation_deg", "elapsed_s")
#: image-quality metrics plotted against the dataset's focal length (``quality_vs_focal.png``)
QUALITY = ("parsed/psnr", "parsed/face_psnr", "parsed/lmd", "with_hair/psnr")
#: config keys that differ between runs without being an experimental choice
IGNORED_KEYS = ("paths.", "hydra.", "task_name")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are kept as values)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        flat.update(flatten(value, name) if isinstance(value, dict) else {name: value})
    return flat


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def write_job(folder: Path, settings: dict[str, Any], metrics: dict[str, Any]) -> Path:
    """A job folder :func:`collect_runs` reads, for results measured outside a Hydra run (a benchmark's entries):
    ``settings`` ({key: value}, what tells the entries apart) become the overrides and the config, ``metrics``
    (nested or flat) ``metrics.json``."""
    from synctalk.io import write_json

    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / ".hydra" / "overrides.yaml") as tmp:
        tmp.write_text(yaml.safe_dump([f"{k}={v}" for k, v in settings.items()]))
    with atomic_path(folder / ".hydra" / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(dict(settings)))
    write_json(folder / "metrics.json", metrics)
    return folder


def _job_folders(sweep_dir: Path) -> list[Path]:
    if (sweep_dir / ".hydra" / "overrides.yaml").is_file():
        return [sweep_dir]
    jobs = [p for p in sweep_dir.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()]
    return sorted(jobs, key=lambda p: (len(p.name), p.name))


def collect_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One entry per job folder: overrides, flat config, numeric metrics, notes, status and files."""
    if not sweep_dir.is_dir():
        raise UserError(f"sweep folder {sweep_dir} does not exist")
    runs = []
    for job in _job_folders(sweep_dir):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        config_file = job / ".hydra" / "config.yaml"
        config = flatten(yaml.safe_load(config_file.read_text()) or {}) if config_file.is_file() else {}
        metrics_path = job / "metrics.json"
        raw = read_json(metrics_path) if metrics_path.is_file() else None
        metrics = {k: float(v) for k, v in flatten(raw or {}).items() if _is_number(v) and math.isfinite(v)}
        notes = list((raw or {}).get("notes", []))
        images = ([p for p in (job / "media" / "eval_sample.png", job / "eval_sample.png") if p.is_file()]
                  or sorted((job / "media").glob("val_step*.png")) or sorted((job / "stabilizer").glob("poses.png")))
        status = "done" if raw is not None else "failed or unfinished (no metrics.json)"
        if raw is not None and (job / "checkpoints").is_dir() and not (job / "checkpoints" / "last.ckpt").is_file():
            status = "done, but checkpoints/last.ckpt is missing"
        runs.append({"job": job.name, "path": job, "params": dict(o.split("=", 1) for o in overrides if "=" in o),
                     "config": config, "metrics": metrics, "finished": raw is not None, "status": status,
                     "notes": notes, "curve": _read_curve(job / "learning_curve.csv"),
                     "focal": read_json(job / "stabilizer" / "focal_search.json")
                     if (job / "stabilizer" / "focal_search.json").is_file() else None,
                     "image": images[-1] if images else None})
    if not runs:
        raise UserError(f"{sweep_dir} holds no run folders (expected <job>/.hydra/overrides.yaml from a -m run)")
    return runs


def _read_curve(path: Path) -> dict[str, list[float]] | None:
    if not path.is_file():
        return None
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) if r.get(k) else math.nan for r in rows] for k in (rows[0].keys() if rows else [])}


def varying_keys(runs: list[dict[str, Any]]) -> list[str]:
    """Config keys whose values differ between runs (the swept ones first), else the overrides."""
    swept = sorted({k for r in runs for k in r["params"]})
    keys = swept + sorted({k for r in runs for k in r["config"]} - set(swept))
    differ = [k for k in keys if not k.startswith(IGNORED_KEYS)
              and len({repr(r["config"].get(k, r["params"].get(k))) for r in runs}) > 1]
    return differ or swept


def _value(run: dict[str, Any], key: str) -> Any:
    return run["params"][key] if key in run["params"] else run["config"].get(key, "")


def _fmt(value: Any, width: int = 48) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    text = "" if value is None else str(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _label(run: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={_value(run, k)}" for k in keys) or run["job"]


# ---------------------------------------------------------------- tables


def tables(runs: list[dict[str, Any]]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table of the report."""
    keys = varying_keys(runs)
    all_metrics = sorted({m for r in runs for m in r["metrics"]})
    headline = [m for m in HEADLINE if m in all_metrics] or all_metrics[:12]
    out = [("Runs", ["job", *keys, "status", *headline],
            [[r["job"], *(_fmt(_value(r, k)) for k in keys), r["status"],
              *(_fmt(r["metrics"][m]) if m in r["metrics"] else "-" for m in headline)] for r in runs])]
    for extra in (gt_mode_table(runs, keys), cross_validated_table(runs, keys)):
        if extra is not None:
            out.append(extra)
    out.append(("All metrics", ["metric", *(r["job"] for r in runs)],
                [[m, *(_fmt(r["metrics"][m]) if m in r["metrics"] else "-" for r in runs)] for m in all_metrics]))
    gaps = []
    finished = [r for r in runs if r["finished"]]
    common = [n for n in (finished[0]["notes"] if finished else []) if all(n in r["notes"] for r in finished)]
    gaps += [["all runs", note] for note in common]
    for r in runs:
        missing = [m for m in all_metrics if m not in r["metrics"]]
        if not r["finished"]:
            gaps.append([r["job"], f"no metrics ({r['status']}); see {r['path'].name}/*.log"])
        elif missing:
            gaps.append([r["job"], f"{len(missing)} metrics other runs have: " + ", ".join(missing[:12])
                         + (" ..." if len(missing) > 12 else "")])
        gaps += [[r["job"], note] for note in r["notes"] if note not in common]
    if gaps:
        out.append(("Missing results and notes", ["job", "what"], gaps))
    return out


def gt_mode_table(runs: list[dict[str, Any]], keys: list[str]) -> tuple[str, list[str], list[list[str]]] | None:
    """Parsed GT vs GT with hair, whole frame and inside the face mask: how much of the portrait-mode score is
    pasted ground truth (``gain`` = with_hair - parsed)."""
    rows = []
    for r in runs:
        m = r["metrics"]
        for metric in ("psnr", "ssim", "lpips"):
            if f"parsed/{metric}" not in m or f"with_hair/{metric}" not in m:
                continue
            whole = (m[f"parsed/{metric}"], m[f"with_hair/{metric}"])
            face = (m.get(f"parsed/face_{metric}", math.nan), m.get(f"with_hair/face_{metric}", math.nan))
            rows.append([_label(r, keys), metric, *(_fmt(v) for v in whole), _fmt(whole[1] - whole[0]),
                         *(_fmt(v) for v in face), _fmt(face[1] - face[0])])
    if not rows:
        return None
    return ("GT modes: parsed vs with hair (portrait), whole frame and face only",
            ["run", "metric", "parsed", "with hair", "gain", "face: parsed", "face: with hair", "face: gain"], rows)



def cross_validated_table(runs: list[dict[str, Any]], keys: list[str]) -> tuple[str, list[str], list[list[str]]] | None:
    """For runs that differ in ``data.fold`` (a clip cross-validated, ``data.folds``): per setting of the other
    swept keys, the finished folds' held-out mouth readings read as one clip (``mouth_signals.npz``, each run's
    centred on its own means by :func:`~synctalk.metrics.lip_sync.pooled_lip_sync`)."""
    from synctalk.metrics.lip_sync import pooled_lip_sync

    if "data.fold" not in keys:
        return None
    others = [k for k in keys if k != "data.fold"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(_label(r, others) if others else "all runs", []).append(r)
    header = ["runs", "folds", "frames", "effective frames", "mouth_corr [90%]", "jaw_corr", "sync_gap [90%]",
              "sync_gap_gt", "mouth_corr_shifted", "verdict"]
    unread = ["-"] * (len(header) - 3)  # the columns between the folds' count and the verdict, for groups not read
    rows = []
    for label, members in groups.items():
        signals = [r["path"] / "mouth_signals.npz" for r in members if r["finished"]]
        signals = [p for p in signals if p.is_file()]
        folds = members[0]["config"].get("data.folds")
        if not signals:
            why = next((n for r in members for n in r["notes"] if n.startswith("lip sync skipped")),
                       "no finished run wrote mouth_signals.npz (metrics.lip_sync=false?)")
            rows.append([label, f"0 of {folds}", *unread, why])
            continue
        try:
            pooled = pooled_lip_sync(signals)
        except ValueError as e:
            rows.append([label, f"{len(signals)} of {folds}", *unread, str(e)])
            continue

        def interval(key: str) -> str:
            if key not in pooled:
                return "-"
            low, high = pooled.get(f"{key}_low"), pooled.get(f"{key}_high")
            return _fmt(pooled[key]) + (f" [{_fmt(low)}, {_fmt(high)}]" if low is not None else "")

        rows.append([label, f"{len(signals)} of {folds}", str(pooled["frames"]), _fmt(pooled.get("effective_frames")),
                     interval("mouth_corr"), _fmt(pooled.get("jaw_corr")), interval("sync_gap"),
                     _fmt(pooled.get("sync_gap_gt")), _fmt(pooled.get("mouth_corr_shifted")),
                     pooled.get("lip_sync_verdict", "")])
    return ("Lip sync over the held-out blocks of all folds (the whole clip held out; each fold's readings on their "
            "own means)", header, rows)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(v: str) -> str:
        return str(v).replace("|", "/")

    return "\n".join(["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(map(cell, row)) + " |" for row in rows])


# ---------------------------------------------------------------- plots


def _as_numbers(values: list[Any]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def plot_metrics_per_value(runs: list[dict[str, Any]], keys: list[str], path: Path) -> Path | None:
    """Each headline metric against the swept value (one key swept) or the run (several)."""
    done = [r for r in runs if r["metrics"]]
    names = [m for m in HEADLINE if sum(m in r["metrics"] for r in done) >= 2][:12]
    if not names:
        return None
    x_name = keys[0] if len(keys) == 1 else "run"
    x_values = [_value(r, keys[0]) for r in done] if len(keys) == 1 else [_label(r, keys) for r in done]
    numeric = _as_numbers(x_values)
    cols = min(3, len(names))
    fig, axes = subplots(math.ceil(len(names) / cols), cols, figsize=(4.2 * cols, 3.2 * math.ceil(len(names) / cols)))
    for ax, name in zip(np.ravel(axes), names):
        pts = [(i, x, r["metrics"][name]) for i, (x, r) in enumerate(zip(numeric or x_values, done)) if name in r["metrics"]]
        if numeric:
            pts.sort(key=lambda p: p[1])
            ax.plot([p[1] for p in pts], [p[2] for p in pts], "o-")
        else:
            ax.bar([p[0] for p in pts], [p[2] for p in pts])
            ax.set_xticks([p[0] for p in pts], [str(p[1]) for p in pts], rotation=30, ha="right", fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(x_name, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in np.ravel(axes)[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_quality_vs_focal(runs: list[dict[str, Any]], keys: list[str], path: Path) -> Path | None:
    """Held-out image quality of trained runs against the focal length of their datasets (at 512 px width), when
    at least two runs were trained on datasets with different focal lengths (``experiment=focal_step``)."""
    done = [r for r in runs if "dataset.focal_at_512" in r["metrics"]]
    names = [m for m in QUALITY if sum(m in r["metrics"] for r in done) >= 2]
    if len({r["metrics"]["dataset.focal_at_512"] for r in done}) < 2 or not names:
        return None
    fig, axes = subplots(1, len(names), figsize=(4.2 * len(names), 3.4))
    for ax, name in zip(np.ravel(axes), names):
        pts = sorted((r["metrics"]["dataset.focal_at_512"], r["metrics"][name], _label(r, keys)) for r in done
                     if name in r["metrics"])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-")
        for x, y, label in pts:
            ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("dataset focal length (px at 512 px width)", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_learning_curves(runs: list[dict[str, Any]], keys: list[str], path: Path) -> Path | None:
    curves = [(r, r["curve"]) for r in runs if r["curve"] and r["curve"].get("step")]
    if not curves:
        return None
    fig, axes = subplots(1, 2, figsize=(11, 3.6))
    for r, c in curves:
        for ax, key in zip(axes, ("val/psnr", "train/loss")):
            if key in c:
                ax.plot(c["step"], c[key], "o-", ms=3, label=_label(r, keys))
    for ax, key in zip(axes, ("validation PSNR (dB)", "training loss")):
        ax.set_xlabel("step")
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_focal_curves(runs: list[dict[str, Any]], keys: list[str], path: Path) -> Path | None:
    searches = [(r, r["focal"]) for r in runs if r["focal"]]
    if not searches:
        return None
    fig, ax = subplots(1, 1, figsize=(7, 4))
    for r, s in searches:
        line, = ax.plot(s["candidates"], s["rms_px"], "o-", ms=3, label=f"{_label(r, keys)}: focal {s['focal']:.0f}")
        if s.get("refined"):
            ax.plot(s["refined"], s["refined_rms_px"], "x", color=line.get_color())
        ax.axvline(s["focal"], color=line.get_color(), ls=":", lw=1)
    truths = {r["metrics"]["truth.focal"] for r, _ in searches if "truth.focal" in r["metrics"]}
    for i, focal in enumerate(sorted(truths)):
        ax.axvline(focal, color="k", ls="--", lw=1.2, label="true focal" if i == 0 else None)
    ax.set_xlabel("focal length (px of the video)")
    ax.set_ylabel("landmark RMS error (px)")
    ax.set_title("focal search: error per candidate (x: refinement, dotted: chosen)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)
    return path


def plot_samples(runs: list[dict[str, Any]], keys: list[str], path: Path) -> Path | None:
    """One image per run, one row each: the evaluation sample (render | parsed GT | render on the frame | frame),
    else the latest validation image (render | GT), else the stabilizer's pose curves."""
    import cv2

    shown = [(r, cv2.imread(str(r["image"]))) for r in runs if r["image"] is not None]
    shown = [(r, im[..., ::-1]) for r, im in shown if im is not None]
    if not shown:
        return None
    fig, axes = subplots(len(shown), 1, figsize=(12, 3.4 * len(shown)), squeeze=False)
    for ax, (r, im) in zip(axes[:, 0], shown):
        ax.imshow(im)
        ax.set_title(f"{_label(r, keys)} ({r['image'].name})", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)
    return path


# ---------------------------------------------------------------- output


def write_report(sweep_dir: Path) -> Path:
    """Write ``<sweep_dir>/report/report.md``, ``report.html`` and the plots; return the markdown path."""
    runs = collect_runs(sweep_dir)
    keys = varying_keys(runs)
    out = sweep_dir / "report"
    out.mkdir(exist_ok=True)
    plots = [p for p in (plot_metrics_per_value(runs, keys, out / "metrics_per_value.png"),
                         plot_quality_vs_focal(runs, keys, out / "quality_vs_focal.png"),
                         plot_learning_curves(runs, keys, out / "learning_curves.png"),
                         plot_focal_curves(runs, keys, out / "focal_curves.png"),
                         plot_samples(runs, keys, out / "samples.png")) if p is not None]
    done = sum(r["finished"] for r in runs)
    title = f"Sweep report: {sweep_dir}"
    summary = f"{done} of {len(runs)} runs finished. Varying: {', '.join(keys) or 'nothing'}."
    sections = tables(runs)
    md = [f"# {title}", "", summary, ""]
    for name, header, rows in sections:
        md += [f"## {name}", "", markdown_table(header, rows), ""]
    md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(md))
    page = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px;margin-bottom:1.5em}"
            "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#eee}"
            "td:first-child{text-align:left}img{max-width:100%}</style>",
            f"<h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p>"]
    for name, header, rows in sections:
        page.append(f"<h2>{html.escape(name)}</h2><table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
                    + "</tr>" + "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                                        for row in rows) + "</table>")
    page.append("<h2>Plots</h2>")
    for p in plots:
        data = base64.b64encode(p.read_bytes()).decode()
        page.append(f"<h3>{p.stem.replace('_', ' ')}</h3><img src='data:image/png;base64,{data}'>")
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text("\n".join(page))
    return out / "report.md"
