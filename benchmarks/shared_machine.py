"""Speed on a machine that is doing something else: training, rendering and the ``poses`` stage, each alone and
beside another job, with this tree's thread choice and with an earlier revision's, in one run.

    python benchmarks/shared_machine.py --baseline 9eb1604            # the whole table (about 45 min on 2 cores)
    python benchmarks/shared_machine.py --baseline 9eb1604 --workloads train --neighbours alone copy

Every workload is the command a user runs, timed from start to exit:

- ``train``: ``synctalk train experiment=demo trainer.max_steps=--train-steps`` (evaluation included);
- ``render``: ``synctalk render`` of a demo run with 4 s of ``eng_speech.wav``;
- ``poses``: ``synctalk preprocess preprocess.force=[poses]`` on a real clip's dataset (``--poses-set`` shortens
  the stage's optimisations; the same for every cell).

Neighbours, started before the workload and stopped after it:

- ``alone``;
- ``preprocess``: ``synctalk preprocess`` of the real clip redone from its landmarks, in a loop, in another
  terminal session at nice 19 (``setsid``: Linux shares the CPU fairly between sessions, whatever ``nice`` says);
- ``busy_same_session`` / ``busy_other_session``: a Python busy loop at nice 19 in this session / another one;
- ``copy``: a second copy of the workload started at the same moment; the time is the pair's (fair sharing
  of the cores would give about twice the time alone).

Settings: ``baseline`` runs the ``--baseline`` revision's code (exported with ``git archive``); ``auto`` this
tree with ``threads=null`` (chosen and re-decided, :mod:`synctalk.threads`); ``threads=N`` this tree with N fixed.
A neighbour runs the same setting's code. A cell that takes over ``--give-up`` times its workload's time
alone is stopped and recorded as such. Nothing else may run while this does. Writes
``benchmarks/results/shared_machine.json`` and prints a table of times relative to the same setting alone.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("SYNCTALK_REAL_DATA", ROOT.parent / "shared" / "data" / "real"))
sys.path.insert(0, str(Path(__file__).parent))
from speedup import export_revision  # noqa: E402

NEIGHBOURS = ("alone", "preprocess", "busy_same_session", "busy_other_session", "copy")
WORKLOADS = ("train", "render", "poses")
POSES_SET = ["tracker.steps=600", "tracker.refine_points=3", "preprocess.bundle_adjustment.points_steps=200",
             "preprocess.bundle_adjustment.joint_steps=600"]


class Setting:
    """How a ``synctalk`` command of one setting is started: which code, which ``threads``."""

    def __init__(self, name: str, tree: Path, work: Path):
        self.name, self.tree = name, tree
        # each tree builds its own copy of the fused CPU kernel, once: revisions before the kernel's build was
        # named by its source rebuild it whenever the tree changes, which would happen inside the timed commands
        self.extensions = work / f"torch_extensions_{'baseline' if name == 'baseline' else 'tree'}"

    def command(self, job: str, *overrides: str) -> list[str]:
        extra = [] if self.name == "baseline" else [f"threads={'null' if self.name == 'auto' else self.name.split('=')[1]}"]
        return [sys.executable, "-m", "synctalk", job, *overrides, *extra]

    def env(self) -> dict:
        return dict(os.environ, PYTHONPATH=str(self.tree), WANDB_MODE="offline", TORCH_EXTENSIONS_DIR=str(self.extensions))


def start(command: list[str], env: dict, cwd: Path, log: Path, other_session: bool, nice: int = 0,
          loop: bool = False) -> subprocess.Popen:
    """Start ``command`` (in a loop when ``loop``) at ``nice``, in its own session when ``other_session``."""
    if loop:
        command = ["bash", "-c", 'while true; do "$@"; done', "loop", *command]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=other_session, preexec_fn=(lambda: os.nice(nice)) if nice else None)


def stop(proc: subprocess.Popen) -> None:
    """Stop a process and everything it started."""
    try:
        pgid = os.getpgid(proc.pid)
        if pgid == proc.pid:  # its own session or group: stop the whole group
            os.killpg(pgid, signal.SIGKILL)
        else:
            proc.kill()
    except ProcessLookupError:
        pass
    proc.wait()


def threads_used(log: Path) -> str:
    """The thread counts a run's log reports (``synctalk.threads``), e.g. ``2`` or ``2->1``."""
    counts = []
    for line in log.read_text(errors="replace").splitlines():
        if "synctalk.threads" in line and "threads: " in line:
            part = line.split("threads: ", 1)[1]
            counts.append(part.split(" -> ")[1].split()[0] if " -> " in part else part.split()[0])
    return "->".join(dict.fromkeys(counts)) if counts else "default"


def prepare(work: Path, clip: Path, settings: dict) -> dict:
    """The data every cell uses: the clip's dataset, a trained demo run per setting, 4 s of speech."""
    env = settings["auto"].env() if "auto" in settings else next(iter(settings.values())).env()
    dataset = work / "dataset"
    subprocess.run([sys.executable, "-m", "synctalk", "preprocess", f"data.video={clip}", f"data.root={dataset}"],
                   cwd=work, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = {}
    for name, setting in settings.items():
        run_dir = work / f"demo_{name.replace('=', '')}"
        subprocess.run(setting.command("train", "experiment=demo", "trainer.max_steps=300", "render_video=false",
                                       "logger=none", f"hydra.run.dir={run_dir}"),
                       cwd=work, env=setting.env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ckpts[name] = run_dir / "checkpoints" / "last.ckpt"
    speech = work / "speech_4s.wav"
    with wave.open(str(REAL / "eng_speech.wav")) as src, wave.open(str(speech), "wb") as dst:
        dst.setparams(src.getparams())
        dst.writeframes(src.readframes(4 * src.getframerate()))
    return {"dataset": dataset, "ckpts": ckpts, "speech": speech, "clip": clip}


def workload(kind: str, setting: Setting, data: dict, cell: Path, copy: int, args) -> list[str]:
    if kind == "train":
        return setting.command("train", "experiment=demo", f"trainer.max_steps={args.train_steps}", "logger=none",
                               "render_video=false", f"hydra.run.dir={cell}/train{copy}")
    if kind == "render":
        return setting.command("render", f"ckpt={data['ckpts'][setting.name]}", f"audio={data['speech']}",
                               f"output={cell}/render{copy}.mp4", f"hydra.run.dir={cell}/render{copy}")
    root = cell / f"dataset{copy}"  # a copy of the dataset whose poses stage is redone
    subprocess.run(["cp", "-r", str(data["dataset"]), str(root)], check=True)
    return setting.command("preprocess", f"data.video={data['clip']}", f"data.root={root}", "preprocess.force=[poses]",
                           f"hydra.run.dir={cell}/poses{copy}", *args.poses_set)


def run_cell(kind: str, neighbour: str, setting: Setting, data: dict, work: Path, alone_s: float | None,
             args) -> dict:
    cell = work / f"{kind}_{neighbour}_{setting.name.replace('=', '')}"
    shutil.rmtree(cell, ignore_errors=True)  # a reused --work folder
    cell.mkdir()
    env = setting.env()
    commands = [workload(kind, setting, data, cell, 0, args)]
    if neighbour == "copy":
        commands.append(workload(kind, setting, data, cell, 1, args))
    side = None
    if neighbour == "preprocess":
        subprocess.run(["cp", "-r", str(data["dataset"]), str(cell / "neighbour")], check=True)
        side = start(setting.command("preprocess", f"data.video={data['clip']}", f"data.root={cell}/neighbour",
                                     "preprocess.force=[landmarks]", f"hydra.run.dir={cell}/neighbour_run"),
                     env, work, cell / "neighbour.log", other_session=True, nice=19, loop=True)
    elif neighbour.startswith("busy"):
        side = start([sys.executable, "-c", "while True: pass"], env, work, cell / "neighbour.log",
                     other_session=neighbour == "busy_other_session", nice=19)
    if side is not None:
        time.sleep(args.neighbour_warmup)
    limit = args.give_up * alone_s * (2 if neighbour == "copy" else 1) if alone_s else None
    begin = time.perf_counter()
    procs = [start(c, env, work, cell / f"workload{i}.log", other_session=False) for i, c in enumerate(commands)]
    stopped = False
    for p in procs:
        remaining = None if limit is None else max(1.0, limit - (time.perf_counter() - begin))
        try:
            p.wait(remaining)
        except subprocess.TimeoutExpired:
            stopped = True
            break
    seconds = time.perf_counter() - begin
    for p in procs:
        if p.poll() is None:
            stop(p)
    failed = [i for i, p in enumerate(procs) if not stopped and p.returncode != 0]
    if side is not None:
        stop(side)
    if failed:
        raise RuntimeError(f"{kind} beside {neighbour} ({setting.name}) failed: see {cell}/workload{failed[0]}.log")
    return {"workload": kind, "neighbour": neighbour, "setting": setting.name, "seconds": round(seconds, 1),
            "stopped": stopped, "threads": [threads_used(cell / f"workload{i}.log") for i in range(len(procs))]}


def table(cells: list[dict]) -> str:
    """Times relative to the same workload and setting alone, one row per workload and neighbour."""
    settings = list(dict.fromkeys(c["setting"] for c in cells))
    lines = ["| workload | beside | " + " | ".join(f"{s}: s (x alone), threads" for s in settings) + " |",
             "|---|---|" + "---|" * len(settings)]
    alone = {(c["workload"], c["setting"]): c["seconds"] for c in cells if c["neighbour"] == "alone"}
    for kind in dict.fromkeys(c["workload"] for c in cells):
        for neighbour in dict.fromkeys(c["neighbour"] for c in cells):
            row = []
            for s in settings:
                c = next((c for c in cells if (c["workload"], c["neighbour"], c["setting"]) == (kind, neighbour, s)), None)
                if c is None:
                    row.append("")
                    continue
                ratio = c["seconds"] / alone[(kind, s)] if (kind, s) in alone else float("nan")
                row.append(f"{'>' if c['stopped'] else ''}{c['seconds']:.0f} ({'>' if c['stopped'] else ''}"
                           f"{ratio:.2f}x), {', '.join(c['threads'])}")
            lines.append(f"| {kind} | {neighbour} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="git revision whose code is the 'baseline' setting")
    parser.add_argument("--settings", nargs="+", default=None,
                        help="baseline, auto, threads=N (default: baseline and auto with --baseline, else auto "
                             "and threads=<cores>)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--neighbours", nargs="+", default=list(NEIGHBOURS), choices=NEIGHBOURS)
    parser.add_argument("--clip", type=Path, default=REAL / "WDA_KatieHill_000.mp4")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--poses-set", nargs="*", default=POSES_SET, metavar="KEY=VALUE")
    parser.add_argument("--neighbour-warmup", type=float, default=8.0, help="seconds a neighbour runs first")
    parser.add_argument("--give-up", type=float, default=4.0, help="stop a cell after this many times alone")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "shared_machine.json")
    args = parser.parse_args()
    names = args.settings or (["baseline", "auto"] if args.baseline else ["auto", f"threads={os.cpu_count()}"])
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        settings = {}
        commit = None
        for name in names:
            if name == "baseline":
                if not args.baseline:
                    parser.error("the baseline setting needs --baseline REV")
                shutil.rmtree(work / "baseline_tree", ignore_errors=True)
                commit = export_revision(args.baseline, work / "baseline_tree")
                settings[name] = Setting(name, work / "baseline_tree", work)
            else:
                settings[name] = Setting(name, ROOT, work)
        data = prepare(work, args.clip, settings)
        cells = []
        for kind in args.workloads:
            alone_s = {}
            for neighbour in ["alone", *[n for n in args.neighbours if n != "alone"]]:
                for name, setting in settings.items():
                    cell = run_cell(kind, neighbour, setting, data, work, alone_s.get(name), args)
                    if neighbour == "alone":
                        alone_s[name] = cell["seconds"]
                    if neighbour in args.neighbours:
                        cells.append(cell)
                    print(json.dumps(cell), flush=True)
                    write_report(args, commit, cells)  # after every cell: an interrupted run keeps what it measured
    print(write_report(args, commit, cells)["table"])


def write_report(args, commit: str | None, cells: list[dict]) -> dict:
    report = {"benchmark": "shared_machine", "baseline": commit, "revision": git_revision(),
              "cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "clip": args.clip.name,
              "train_steps": args.train_steps, "poses_set": args.poses_set, "give_up": args.give_up, "cells": cells,
              "table": table(cells)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.partial")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(args.out)
    return report


def git_revision() -> str:
    """This tree's commit ('+dirty' when it has uncommitted changes)."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return head + ("+dirty" if dirty else "")


if __name__ == "__main__":
    main()
