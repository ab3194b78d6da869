"""Training and rendering speed of the head model, on the synthetic subject and a real clip.

    python benchmarks/speed.py                                  # 128, 256, 512 px; synthetic + real clip
    python benchmarks/speed.py --sizes 128 --subjects synthetic --steps 100

For each subject and image size a real Lightning training run of ``--steps`` steps is
timed (all losses, EMA and occupancy-grid updates included), then whole validation
frames are rendered with the trained EMA weights and occupancy grid. The real clip is
preprocessed once (``synctalk preprocess`` code path, landmark poses to save time) into a
cache folder. Writes benchmarks/results/speed.json and prints it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from synctalk.config import config_dir
from synctalk.runs import build_datamodule, build_system
from synctalk.stabilizer.options import StabilizerOptions, TrackerConfig
from synctalk.stages import IngestOptions, run_ingest

REAL = Path(os.environ.get("SYNCTALK_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "real"))


class StepTimer(pl.Callback):
    """Wall time of the training steps after ``warmup`` steps."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.steps = warmup, None, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.start is not None:
            self.steps += 1
            self.seconds = time.perf_counter() - self.start


def real_dataset(clip: Path, cache: Path) -> Path:
    """The clip preprocessed at 512 px (cached; landmark poses, no bundle adjustment)."""
    root = cache / clip.stem
    quick_poses = TrackerConfig(steps=300, refine_points=0, pose_source="landmarks", focal_source="landmarks")
    opts = IngestOptions(stabilizer=StabilizerOptions(tracker=quick_poses))
    run_ingest(clip, root, opts)
    return root


def measure(subject: str, size: int, steps: int, work: Path, real_root: Path | None, extra: tuple = (),
            precision: str = "32-true", prepare=None, render_frames: int = 3, experiment: str = "demo") -> dict:
    """Train ``steps`` steps of the ``experiment`` model (the demo's by default) and render ``render_frames``
    validation frames.

    ``extra``: more config overrides; ``precision``: the Trainer's; ``prepare(system)``: called on the built
    system before training (e.g. to compile it). On CUDA the peak GPU memory is reported too."""
    overrides = [f"experiment={experiment}", f"paths.root_dir={work}", f"paths.output_dir={work}/out", "logger=none",
                 *extra]
    if subject == "synthetic":
        overrides += [f"data.synthetic.size={size}", "data.synthetic.num_frames=40"]
    else:
        overrides += ["data=subject", f"data.root={real_root}", f"data.downscale={512 // size}"]
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    torch.manual_seed(0)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup()
    system = build_system(cfg, len(dm.train_frames))
    system.hparams.max_steps = steps
    if prepare is not None:
        prepare(system)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    warmup = min(cfg.model.occupancy.start_step + 1, steps // 2)
    timer = StepTimer(warmup)
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[timer], accelerator="auto",
                         precision=precision)
    trainer.fit(system, datamodule=dm)
    system.to(trainer.strategy.root_device).eval()  # Lightning hands the module back on the CPU
    system.render_frame(dm.val, 0)
    frames = render_frames
    start = time.perf_counter()
    for k in range(frames):
        system.render_frame(dm.val, k % len(dm.val))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    render_s = (time.perf_counter() - start) / frames
    occupied = system.occupancy.occupied_fraction if system.occupancy is not None else 1.0
    return {"subject": subject, "size": size, "rays_per_step": cfg.data.rays_per_step,
            "samples_per_ray": cfg.model.net.num_samples, "levels": cfg.encoding.num_levels, "experiment": experiment,
            "timed_steps": timer.steps, "train_steps_per_s": timer.steps / timer.seconds,
            "render_fps": 1 / render_s, "render_rays_per_s": size * size / render_s,
            "occupied_fraction": occupied, "precision": precision,
            "encoding_lookup": system.net.encoding.grid.lookup(system.device),
            "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--subjects", nargs="+", default=["synthetic", "real"], choices=["synthetic", "real"])
    parser.add_argument("--clip", type=Path, default=REAL / "WDA_KatieHill_000.mp4")
    parser.add_argument("--steps", type=int, default=400, help="training steps per measurement (timed after the "
                        "occupancy grid's first update)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "synctalk_bench")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides of the demo model, e.g. encoding.cpu_kernel=false")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "speed.json")
    args = parser.parse_args()
    real_root = real_dataset(args.clip, args.cache) if "real" in args.subjects else None
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for subject in args.subjects:
            for size in args.sizes:
                results.append(measure(subject, size, args.steps, Path(tmp) / f"{subject}{size}", real_root,
                                       tuple(args.set)))
                print(json.dumps(results[-1]))
    report = {"benchmark": "speed", "experiment": "demo", "overrides": args.set, "device": "cuda" if torch.cuda.is_available() else "cpu",
              "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "clip": args.clip.name if real_root else None, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
