"""Training speed and the demo of the working tree against an earlier git revision, in one run.

    python benchmarks/speedup.py --baseline 7c48154             # steps/s (1000 steps) and the demo, 2 rounds
    python benchmarks/speedup.py --baseline HEAD~1 --no-demo --steps 400 --rounds 1

The baseline revision is exported with ``git archive`` into a temporary folder and run from there
(``PYTHONPATH``), beside the working tree and one after the other (never at once: two runs would share
the cores and slow each other down):

1. training speed: each tree's own ``benchmarks/speed.py --sizes 128 --subjects synthetic --steps N``
   (``--size`` changes the 128)
   (the demo model; steps/s timed after the occupancy grid's first update);
2. with the demo (default): ``python -m synctalk demo`` of each tree in a fresh folder, timed from start to
   exit, and its ``metrics.json`` (held-out PSNR, face PSNR, LMD, mouth correlation).

Rounds alternate the order (baseline first, then current first, ...) so a machine whose speed drifts favours
neither. Machines differ in speed by a factor of 3 or more, so the ratios are the result, not the seconds.
Writes benchmarks/results/speedup.json.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_METRICS = ("psnr", "parsed/face_psnr", "parsed/lmd", "parsed/mouth_corr", "sync_gap")


def export_revision(revision: str, dest: Path) -> str:
    """Write the tree of ``revision`` to ``dest``; returns the full commit hash."""
    commit = subprocess.run(["git", "rev-parse", revision], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return commit


def run_in(tree: Path, args: list[str], cwd: Path, log: Path) -> float:
    """Run ``python <args>`` with ``tree`` first on the import path; returns the wall time (s)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed in {tree} (exit {done.returncode}); see {log}")
    return seconds


def training_speed(tree: Path, steps: int, size: int, work: Path) -> dict:
    """steps/s and render fps of the demo model at ``size`` px, from the tree's own speed benchmark."""
    out = work / "speed.json"
    run_in(tree, [str(tree / "benchmarks" / "speed.py"), "--sizes", str(size), "--subjects", "synthetic",
                  "--steps", str(steps), "--out", str(out)], work, work / "speed.log")
    result = json.loads(out.read_text())["results"][0]
    return {"train_steps_per_s": result["train_steps_per_s"], "render_fps": result["render_fps"],
            "occupied_fraction": result["occupied_fraction"]}


def demo(tree: Path, work: Path) -> dict:
    """Wall time of ``synctalk demo`` (subject generation, training, rendering, evaluation) and its metrics."""
    seconds = run_in(tree, ["-m", "synctalk", "demo"], work, work / "demo.log")
    metrics = json.loads(Path(glob.glob(str(work / "outputs" / "demo" / "runs" / "*" / "metrics.json"))[0]).read_text())
    return {"demo_s": seconds, **{key: metrics.get(key) for key in DEMO_METRICS}}


def ratio(current: list[float], baseline: list[float]) -> float:
    return statistics.median(current) / statistics.median(baseline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare with (e.g. a commit hash)")
    parser.add_argument("--steps", type=int, default=1000, help="training steps of the speed measurement")
    parser.add_argument("--size", type=int, default=128, help="image size of the speed measurement (px)")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each tree (alternating order)")
    parser.add_argument("--no-demo", dest="demo", action="store_false", help="skip the timed demo runs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "speedup.json")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"baseline": [], "current": []}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"baseline": Path(tmp) / "baseline", "current": ROOT}
        commit = export_revision(args.baseline, trees["baseline"])
        for round_ in range(args.rounds):
            order = ["baseline", "current"] if round_ % 2 == 0 else ["current", "baseline"]
            for name in order:
                work = Path(tmp) / f"{name}{round_}"
                work.mkdir()
                entry = training_speed(trees[name], args.steps, args.size, work)
                if args.demo:
                    entry.update(demo(trees[name], work))
                runs[name].append(entry)
                print(name, json.dumps(entry), flush=True)
    summary = {"train_steps_per_s_ratio": ratio([r["train_steps_per_s"] for r in runs["current"]],
                                                [r["train_steps_per_s"] for r in runs["baseline"]]),
               "render_fps_ratio": ratio([r["render_fps"] for r in runs["current"]],
                                         [r["render_fps"] for r in runs["baseline"]])}
    if args.demo:
        summary["demo_time_ratio"] = ratio([r["demo_s"] for r in runs["current"]], [r["demo_s"] for r in runs["baseline"]])
        for key in DEMO_METRICS:
            values = {name: [r[key] for r in runs[name] if r[key] is not None] for name in runs}
            if all(values.values()):
                summary[f"{key}_baseline"] = statistics.median(values["baseline"])
                summary[f"{key}_current"] = statistics.median(values["current"])
    report = {"benchmark": "speedup", "baseline": commit, "steps": args.steps, "size": args.size, "rounds": args.rounds,
              "cpu": platform.processor() or platform.machine(), "summary": summary, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
