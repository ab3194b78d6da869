"""Training and rendering speed of the head NeRF on the synthetic subject.

    python benchmarks/speed.py --sizes 64 128 --steps 30 --experiment demo

Writes benchmarks/results/speed.json (steps per second, rendered frames per second and
rays per second for each image size) and prints it.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from synctalk.config import config_dir
from synctalk.runs import build_datamodule, build_system


def measure(size: int, steps: int, experiment: str, work: Path) -> dict:
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", f"data.synthetic.size={size}",
                                          "data.synthetic.num_frames=30", f"paths.root_dir={work}",
                                          f"paths.output_dir={work}/out", "logger=none"])
    torch.manual_seed(0)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup()
    system = build_system(cfg, len(dm.train_frames))
    optimizer = system.configure_optimizers()["optimizer"]
    rays = dm.train_dataloader().dataset
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        b = rays[i % len(rays)]
        out = system.net.render(b["origins"], b["dirs"], b["background"], b["audio"], b["eye"], perturb=True)
        loss = torch.nn.functional.mse_loss(out["rgb"], b["rgb"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    train_s = (time.perf_counter() - start) / steps
    system.eval()
    system.render_frame(dm.val, 0)
    start = time.perf_counter()
    frames = 2
    for k in range(frames):
        system.render_frame(dm.val, k % len(dm.val))
    render_s = (time.perf_counter() - start) / frames
    return {"size": size, "rays_per_step": cfg.data.rays_per_step, "samples_per_ray": cfg.model.net.num_samples,
            "levels": cfg.encoding.num_levels, "train_steps_per_s": 1 / train_s, "render_fps": 1 / render_s,
            "render_rays_per_s": size * size / render_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "speed.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(s, args.steps, args.experiment, Path(tmp)) for s in args.sizes]
    report = {"benchmark": "speed", "experiment": args.experiment, "device": "cuda" if torch.cuda.is_available() else "cpu",
              "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
