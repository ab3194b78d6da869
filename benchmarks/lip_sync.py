"""Lip sync on real clips: audio features, seeds, and new audio, as a user runs them.

    python benchmarks/lip_sync.py --clips WDA_KatieHill_000 May_13s --encoders mel phones --seeds 42 43 44
    python benchmarks/lip_sync.py --clips WDA_KatieHill_000 desk:WDA_KatieHill_000 --encoders mel --mouth data full

For every clip (a video in ``--real-data``): ``synctalk preprocess`` with each audio encoder (cached stages: only
the features are computed again), then for every encoder and seed ``synctalk train experiment=lip_sync
data.downscale=2`` (512 px clips trained at 256 px; extra ``--set`` overrides are added), which evaluates the
held-out frames with the Face Landmarker as the judge when ``$SYNCTALK_WEIGHTS`` holds ``face_landmarker.task``.
Then ``synctalk render`` drives each trained head with the first ``--novel-seconds`` of ``--novel-audio`` and
reads the mouth against that audio (``<run>/novel.json``: its opening against the opening the audio's phones imply
and against its loudness, how far it moves, what the head's audio branch reads of the phones, how far it follows the
footage's own mouth at the replayed poses; the training footage's own as the scale). Every step is a child
process, one at a time; a run whose ``metrics.json`` (or ``novel.json``) exists is read, not redone, so an
interrupted benchmark resumes (a ``novel.json`` written before these measures existed gets them from its
``novel.mp4``); ``--only-existing`` trains nothing and reports the runs there are.

``--mouth full`` trains with the mouth-box rays at the dataset's resolution (``data.mouth_downscale=1``) beside
``data`` (at the training's 256 px). A clip named ``desk:<clip>`` is that clip's speaker placed smaller
(``--desk-speaker-px``) in a plain 1280x720 room at 30 fps, as a desk camera films it: the crop stage finds the head
and scales its box up to 512 px, so the face there holds less detail than a 512 px clip's. ``--eval-downscale 1``
also scores every run at the dataset's resolution (``synctalk evaluate downscale=1``, columns ``at1/...``);
``--only-existing --eval-downscale 2`` scores runs trained before with today's evaluation (for example the 90%
intervals of ``mouth_corr`` and ``sync_gap``, columns ``at2/...``).

``--folds K`` cross-validates each clip instead (no new audio): K runs of every setting, run ``k`` trained with
``data.folds=K data.fold=k`` (block k of the clip held out), their held-out mouth readings read together as the
whole clip (columns ``cv/...``: ``mouth_corr``, ``jaw_corr``, ``sync_gap``, their 90% intervals and frames, and the
folds' PSNR, face PSNR and LMD weighted by their frames).

Writes ``--out`` (default benchmarks/results/lip_sync.json) with one row per run and the min / median / max per
clip and encoder over the seeds, and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from synctalk.audio.features import SAMPLE_RATE, load_audio, write_wav  # noqa: E402
from synctalk.io import write_json  # noqa: E402

COLUMNS = ("parsed/psnr", "parsed/face_psnr", "parsed/lmd", "parsed/mouth_corr", "parsed/jaw_corr", "sync_gap",
           "sync_gap_gt", "mouth_corr_still_audio", "mouth_phone_corr", "dataset_mouth_phone_corr", "mouth_motion",
           "mouth_phone_corr_in_speech", "dataset_mouth_phone_corr_in_speech", "mouth_pause_opening",
           "dataset_mouth_pause_opening",
           "audio_branch_phone_corr", "audio_branch_phone_corr_in_speech", "mouth_replayed_corr",
           "mouth_loudness_corr", "dataset_mouth_loudness_corr",
           "mouth_corr_low", "mouth_corr_high", "sync_gap_low", "sync_gap_high", "effective_frames")


def synctalk(*args: str, log: Path) -> None:
    """Run ``synctalk ARGS`` in a child process, its output to ``log``; stop the benchmark if it fails."""
    with open(log, "w") as out:
        code = subprocess.call([sys.executable, "-m", "synctalk", *args], stdout=out, stderr=subprocess.STDOUT,
                               cwd=REPO)
    if code != 0:
        raise SystemExit(f"synctalk {' '.join(args)} failed (exit {code}); see {log}")


def prepare(clip: str, video: Path, data_dir: Path, encoders: list[str], logs: Path) -> Path:
    root = data_dir / clip
    for encoder in encoders:
        synctalk("preprocess", f"data.video={video}", f"data.root={root}", f"audio_encoder={encoder}",
                 log=logs / f"preprocess_{clip}_{encoder}.log")
    return root


MOUTH_OVERRIDES = {"data": [], "full": ["data.mouth_downscale=1"]}  # the mouth-box rays at 256 px / 512 px


def source_video(clip: str, real_data: Path, made: Path, speaker_px: int) -> Path:
    """The video of ``clip``: a real clip, or for ``desk:<clip>`` that clip filmed smaller by a desk camera."""
    source = real_data / f"{clip.removeprefix('desk:')}.mp4"
    if not source.is_file():
        raise SystemExit(f"{source} not found (set --real-data)")
    if not clip.startswith("desk:"):
        return source
    from benchmarks.preprocess import desk_recording

    video = made / f"desk_{source.stem}_{speaker_px}px.mp4"
    if not video.is_file():
        made.mkdir(parents=True, exist_ok=True)
        partial = video.with_suffix(".part.mp4")
        desk_recording(source, partial, speaker_px=speaker_px)
        partial.replace(video)
        print(f"made {video} from {source.name} (speaker {speaker_px} px in 1280x720)", flush=True)
    return video


def train(root: Path, run: Path, encoder: str, seed: int, extra: list[str], logs: Path) -> dict:
    if not (run / "metrics.json").is_file():
        synctalk("train", "experiment=lip_sync", "data=subject", f"data.root={root}", "data.downscale=2",
                 f"audio_encoder={encoder}", f"seed={seed}", "logger=csv", f"hydra.run.dir={run}", *extra,
                 log=logs / f"train_{run.name}.log")
    return json.loads((run / "metrics.json").read_text())


CV_POOLED = ("mouth_corr", "mouth_corr_low", "mouth_corr_high", "jaw_corr", "sync_gap", "sync_gap_low",
             "sync_gap_high", "sync_gap_gt", "effective_frames", "frames")
CV_MEAN = ("parsed/psnr", "parsed/face_psnr", "parsed/lmd")


def fold_runs(run: Path, folds: int) -> list[Path]:
    """The run folders of a setting cross-validated in ``folds`` blocks, fold 0 first."""
    return [run.with_name(f"{run.name}_fold{k}of{folds}") for k in range(folds)]


def cross_validated(root: Path, run: Path, encoder: str, seed: int, extra: list[str], folds: int, logs: Path) -> dict:
    """``folds`` runs of one setting, each holding out one block of the clip; the ``cv/`` columns of their
    held-out frames read together (:func:`synctalk.metrics.lip_sync.pooled_lip_sync`)."""
    from synctalk.metrics.lip_sync import pooled_lip_sync

    runs = fold_runs(run, folds)
    scored = [train(root, r, encoder, seed, [*extra, f"data.folds={folds}", f"data.fold={k}"], logs)
              for k, r in enumerate(runs)]
    missing = [r for r in runs if not (r / "mouth_signals.npz").is_file()]
    if missing:
        raise SystemExit(f"{missing[0]} has no mouth_signals.npz: its lip-sync test did not run (see its "
                         f"metrics.json notes)")
    pooled = pooled_lip_sync([r / "mouth_signals.npz" for r in runs])
    row = {f"cv/{k}": pooled[k] for k in CV_POOLED if k in pooled}
    frames = np.array([m["frames"] for m in scored], dtype=float)
    for key in CV_MEAN:
        values = np.array([m.get(key, np.nan) for m in scored], dtype=float)
        if np.isfinite(values).all():
            row[f"cv/{key}"] = float(np.average(values, weights=frames))
    row["cv/lip_sync_verdict"] = pooled.get("lip_sync_verdict")
    return row


def evaluate_at(run: Path, downscale: int, logs: Path) -> dict:
    """The run's held-out metrics at 1/downscale of the dataset resolution (``synctalk evaluate downscale=N``)."""
    out = run / f"eval_downscale{downscale}"
    if not (out / "metrics.json").is_file():
        synctalk("evaluate", f"ckpt={run / 'checkpoints' / 'last.ckpt'}", f"downscale={downscale}",
                 f"hydra.run.dir={out}", log=logs / f"evaluate_{run.name}_downscale{downscale}.log")
    return json.loads((out / "metrics.json").read_text())


def novel(run: Path, audio: Path, root: Path, logs: Path) -> dict:
    out = run / "novel.mp4"
    if not out.with_suffix(".json").is_file():
        synctalk("render", f"ckpt={run / 'checkpoints' / 'last.ckpt'}", f"audio={audio}", f"output={out}",
                 f"hydra.run.dir={run / 'novel_render'}", log=logs / f"render_{run.name}.log")
    measured = json.loads(out.with_suffix(".json").read_text())
    if "mouth_pause_opening" not in measured or ("audio_branch_phone_corr" in measured
                                                 and "audio_branch_phone_corr_in_speech" not in measured):
        # rendered before these measures: read the video again
        measured.update(measure_rendered(out, audio, root, run / "checkpoints" / "last.ckpt"))
        write_json(out.with_suffix(".json"), measured)
    return measured


def measure_rendered(video: Path, audio: Path, root: Path, ckpt: Path) -> dict:
    """The render's own mouth measure (``synctalk render``'s :func:`measure_mouth`) on a video it wrote before:
    its frames as decoded, at most 256 px; ``audio`` the speech that drove the head of ``ckpt``."""
    import av
    import torch
    from omegaconf import OmegaConf

    from synctalk.apps.render import MEASURE_SIZE, at_most, audio_branch_opening, measure_mouth, pose_schedule
    from synctalk.audio.encoders import compute_features
    from synctalk.data.layout import DatasetLayout, Transforms
    from synctalk.runs import load_run

    with av.open(str(video)) as container:
        fps = float(container.streams.video[0].average_rate)
        clip = np.stack([at_most(f.to_ndarray(format="rgb24") / 255.0, MEASURE_SIZE)
                         for f in container.decode(video=0)])
    samples = load_audio(audio)
    run_cfg, system = load_run(ckpt)
    features = torch.from_numpy(compute_features(run_cfg.audio_encoder, samples, len(clip), fps))
    cfg = OmegaConf.create({"face_landmarker": "auto", "paths": {"root_dir": str(REPO)}})
    train_ids = Transforms.read(DatasetLayout(root).transforms("train")).img_ids
    pose_frames = train_ids[pose_schedule("replay", len(clip), len(train_ids))]  # as the benchmark renders
    return measure_mouth(clip, samples, fps, root, cfg, audio_branch_opening(system, features), pose_frames)


def is_metric(key: str) -> bool:
    """A column of COLUMNS, one scored at another resolution (``at<N>/<column>``) or a cross-validated one."""
    return (key in COLUMNS or (key.startswith("at") and key.partition("/")[2] in COLUMNS)
            or key.removeprefix("cv/") in CV_POOLED + CV_MEAN)


def summary(rows: list[dict]) -> list[dict]:
    """Min / median / max over seeds of every column, per clip, encoder and mouth resolution."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["clip"], row["encoder"], row["mouth"]), []).append(row)
    out = []
    for (clip, encoder, mouth), runs in groups.items():
        entry = {"clip": clip, "encoder": encoder, "mouth": mouth, "seeds": [r["seed"] for r in runs]}
        for key in [k for k in runs[0] if is_metric(k)]:
            values = np.array([r.get(key, np.nan) for r in runs], dtype=float)
            values = values[np.isfinite(values)]
            if len(values):
                entry[key] = [float(values.min()), float(np.median(values)), float(values.max())]
        out.append(entry)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", nargs="+", default=["WDA_KatieHill_000", "WDA_BobMenendez_000", "RD_Radio34_000",
                                                       "May_13s", "German_20s"])
    parser.add_argument("--encoders", nargs="+", default=["mel", "phones"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--real-data", type=Path,
                        default=Path(os.environ.get("SYNCTALK_REAL_DATA", REPO.parent / "shared" / "data" / "real")))
    parser.add_argument("--data-dir", type=Path, default=REPO / "benchmarks" / "results" / "lip_sync_data")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "benchmarks" / "results" / "lip_sync_runs")
    parser.add_argument("--novel-audio", type=Path, default=None, help="default: <real-data>/eng_speech.wav")
    parser.add_argument("--novel-seconds", type=float, default=20.0)
    parser.add_argument("--mouth", nargs="+", choices=tuple(MOUTH_OVERRIDES), default=["data"],
                        help="the mouth-box rays at the training resolution (data) and/or the dataset's (full)")
    parser.add_argument("--desk-speaker-px", type=int, default=320,
                        help="side of the speaker in the 1280x720 room of a desk:<clip> (the face about half of it)")
    parser.add_argument("--eval-downscale", type=int, default=None,
                        help="also score every run at 1/N of the dataset resolution (1: 512 px), columns 'at<N>/...'")
    parser.add_argument("--set", nargs="*", default=[], help="more training overrides")
    parser.add_argument("--folds", type=int, default=None,
                        help="cross-validate every clip in this many blocks (K runs per setting; no new audio)")
    parser.add_argument("--only-existing", action="store_true",
                        help="train nothing: report (and drive with the new audio) the runs that exist")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "lip_sync.json")
    args = parser.parse_args()

    logs = args.runs_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    novel_audio = args.runs_dir / f"novel_{args.novel_seconds:g}s.wav"
    speech = load_audio(args.novel_audio or args.real_data / "eng_speech.wav")
    write_wav(novel_audio, speech[: int(args.novel_seconds * SAMPLE_RATE)])
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True).stdout.strip()
    rows = []
    for clip in args.clips:
        name = clip.replace(":", "_")
        if args.only_existing:
            root = args.data_dir / name
        else:
            video = source_video(clip, args.real_data, args.data_dir, args.desk_speaker_px)
            root = prepare(name, video, args.data_dir, args.encoders, logs)
        for encoder, mouth, seed in ((e, m, s) for e in args.encoders for m in args.mouth for s in args.seeds):
            run = args.runs_dir / f"{name}_{encoder}{'' if mouth == 'data' else '_mouth' + mouth}_s{seed}"
            row = {"clip": clip, "encoder": encoder, "mouth": mouth, "seed": seed, "run": str(run)}
            if args.folds:
                if args.only_existing and not all((r / "metrics.json").is_file() for r in fold_runs(run, args.folds)):
                    continue
                row.update(cross_validated(root, run, encoder, seed, MOUTH_OVERRIDES[mouth] + args.set, args.folds,
                                           logs))
                rows.append(row)
                print(" | ".join([clip, encoder, mouth, str(seed)]
                                 + [f"{k}={row[k]:.2f}" for k in row if k.startswith("cv/") and is_metric(k)]),
                      flush=True)
                write_json(args.out, {"command": " ".join(sys.argv), "revision": revision, "runs": rows,
                                      "summary": summary(rows)})
                continue
            if args.only_existing and not (run / "metrics.json").is_file():
                continue
            metrics = train(root, run, encoder, seed, MOUTH_OVERRIDES[mouth] + args.set, logs)
            row.update({k: metrics[k] for k in COLUMNS if k in metrics})
            row["frames"], row["lip_sync_source"] = metrics.get("frames"), metrics.get("lip_sync_source")
            row.update({k: v for k, v in novel(run, novel_audio, root, logs).items() if k in COLUMNS})
            if args.eval_downscale:
                scored = evaluate_at(run, args.eval_downscale, logs)
                row.update({f"at{args.eval_downscale}/{k}": scored[k] for k in COLUMNS if k in scored})
            rows.append(row)
            print(" | ".join([clip, encoder, mouth, str(seed)] + [f"{row.get(k, float('nan')):.2f}" for k in COLUMNS]),
                  flush=True)
            write_json(args.out, {"command": " ".join(sys.argv), "revision": revision, "columns": COLUMNS,
                                  "runs": rows, "summary": summary(rows)})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
