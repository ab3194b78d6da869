"""Training and rendering speed of the head model on a GPU, and what SyncTalk's ray budget buys: one script.

    python benchmarks/gpu.py                 # on a CUDA machine: every variant at 512 px (about 5 minutes)
    python benchmarks/gpu.py --experiment synctalk --variants torch_bf16 tensor_ops_bf16   # SyncTalk's budget
    python benchmarks/gpu.py --quality <dataset> --seconds 90   # 65,536 vs 1,024 rays per step, same wall time
    python benchmarks/gpu.py --variants --render <run>/checkpoints/last.ckpt   # fps of a trained run
    python benchmarks/gpu.py --tiny          # anywhere (CPU too): 32 px, a few steps (a smoke test)

Variants, each a real Lightning training run of ``--steps`` steps on the synthetic subject (timed after the
occupancy grid's first update) followed by whole validation frames rendered with the EMA weights:

- ``torch``: the pure-torch tri-plane hash encoding (its lookup in the Triton kernels on a GPU), MLPs in float32;
- ``torch_bf16``: the same with the MLPs in bfloat16 (what ``model.net.mlp_precision=auto`` picks on Ampere and
  later GPUs);
- ``tensor_ops_bf16``: bf16 MLPs, the lookup in tensor ops (``encoding.gpu_kernel=false``), to compare;
- ``torch_compiled``: bf16 MLPs, the field (encoding + MLPs) under ``torch.compile``;
- ``torch_autocast``: float32 MLPs under Lightning's bf16 autocast (``precision=bf16-mixed``), for comparison;
- ``tcnn``: tiny-cuda-nn's hash grid (bf16 MLPs), when ``tinycudann`` imports.

Each gives training steps/s, rays/s, rendering fps and the peak GPU memory. A variant that fails (no compiler, no
bf16, no tcnn) is recorded with its error instead of stopping the script. ``--rays`` repeats each variant at
several rays per step. ``--profile`` adds the GPU kernels that take the most time in a few training steps and in
one rendered frame (torch.profiler). ``--quality`` trains the ``synctalk`` recipe on a dataset with 65,536 and
with 1,024 rays per step for the same wall time each, measures the held-out PSNR along the way (against steps and
seconds) and saves each run's final weights (``<out folder>/quality_<rays>.ckpt``: ``synctalk evaluate
ckpt=<it> data_root=<dataset>`` gives the whole metric suite on any machine).
Writes benchmarks/results/gpu.json (``--out``).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).parent))
from speed import measure  # noqa: E402

from synctalk.config import config_dir  # noqa: E402
from synctalk.geometry import pixel_rays  # noqa: E402
from synctalk.models.head_nerf import native_bf16  # noqa: E402
from synctalk.runs import build_datamodule, build_system  # noqa: E402


def compile_field(system) -> None:
    """Put the head's field (encoding and MLPs, called per batch of samples) and density under torch.compile."""
    for net in {id(n): n for n in (system.net, system.inference_net)}.values():
        net.field = torch.compile(net.field, dynamic=True)
        net.density = torch.compile(net.density, dynamic=True)


FP32, BF16 = "model.net.mlp_precision=fp32", "model.net.mlp_precision=bf16"
VARIANTS = {
    "torch": {"extra": (FP32,)},
    "torch_bf16": {"extra": (BF16,)},
    "tensor_ops_bf16": {"extra": (BF16, "encoding.gpu_kernel=false")},
    "torch_compiled": {"extra": (BF16,), "prepare": compile_field},
    "torch_autocast": {"extra": (FP32,), "precision": "bf16-mixed"},
    "tcnn": {"extra": ("encoding=tcnn", BF16)},
}


def revision() -> str | None:
    """The git commit of the code measured (with ``+`` when the tree has changes), or None outside a clone."""
    try:
        root = Path(__file__).resolve().parents[1]
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("+" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def compose_train(overrides: list[str]):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", overrides=overrides)


def top_kernels(prof, count: int = 12) -> list[dict]:
    """The ``count`` operations with the most device time (CPU time without a GPU) in a torch.profiler run."""
    device_time = "self_device_time_total"
    events = prof.key_averages()
    if not any(getattr(e, device_time, 0) for e in events):
        device_time = "self_cpu_time_total"
    total = sum(getattr(e, device_time, 0) for e in events) or 1
    rows = sorted(events, key=lambda e: getattr(e, device_time, 0), reverse=True)[:count]
    return [{"name": e.key[:80], "ms": round(getattr(e, device_time) / 1e3, 2), "calls": e.count,
             "share": round(getattr(e, device_time) / total, 3)} for e in rows]


def profile(size: int, work: Path, experiment: str, extra: list[str], steps: int = 12) -> dict:
    """torch.profiler over ``steps`` training steps (after a warm-up and the occupancy grid's first update) and over
    one rendered validation frame: the operations with the most device time in each."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cfg = compose_train([f"experiment={experiment}", f"paths.root_dir={work}", f"paths.output_dir={work}/out",
                         "logger=none", f"data.synthetic.size={size}", "data.synthetic.num_frames=40", *extra])
    torch.manual_seed(0)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup()
    system = build_system(cfg, len(dm.train_frames))
    warm = cfg.model.occupancy.start_step + 2
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])

    class Window(pl.Callback):
        prof = None

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == warm:
                self.prof = torch_profile(activities=activities)
                self.prof.__enter__()

        def on_train_end(self, trainer, module):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.prof.__exit__(None, None, None)

    window = Window()
    trainer = pl.Trainer(max_steps=warm + steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[window], accelerator="auto")
    trainer.fit(system, datamodule=dm)
    system.to(trainer.strategy.root_device).eval()
    system.render_frame(dm.val, 0)
    with torch_profile(activities=activities) as prof:
        system.render_frame(dm.val, 0)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return {"steps": steps, "training": top_kernels(window.prof), "render_frame": top_kernels(prof)}


class TimeMarks(pl.Callback):
    """Held-out PSNR of the EMA weights at ``marks`` seconds of training (the time spent measuring not counted);
    training stops at the last mark."""

    def __init__(self, marks: list[float], val, frames: int):
        self.marks, self.val, self.frames = sorted(marks), val, frames
        self.trained, self.since, self.curve = 0.0, None, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.since is None:
            self.since = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.trained += now - self.since
        if self.marks and self.trained >= self.marks[0]:
            self.marks.pop(0)
            module.eval()
            psnrs = []
            for k in range(min(self.frames, len(self.val))):
                error = (module.render_frame(self.val, k) - self.val.gt(k)).pow(2).mean()
                psnrs.append(float(-10 * torch.log10(error)))
            module.train()
            self.curve.append({"seconds": round(self.trained, 1), "step": trainer.global_step,
                               "val_psnr": round(sum(psnrs) / len(psnrs), 3)})
            print("quality", json.dumps(self.curve[-1]), flush=True)
            if not self.marks:
                trainer.should_stop = True
        self.since = time.perf_counter()


def quality(dataset: Path, seconds: float, rays: list[int], out_dir: Path, work: Path, extra: list[str]) -> dict:
    """The ``synctalk`` recipe trained on ``dataset`` for ``seconds`` of training at each rays-per-step count."""
    results = {}
    for count in rays:
        cfg = compose_train(["experiment=synctalk", "data=subject", f"data.root={dataset}", "logger=none",
                             f"paths.root_dir={work}", f"paths.output_dir={work}/quality{count}",
                             f"data.rays_per_step={count}", "trainer.accelerator=auto", *extra])
        torch.manual_seed(0)
        dm = build_datamodule(cfg)
        dm.prepare_data()
        dm.setup()
        system = build_system(cfg, len(dm.train_frames))
        marks = TimeMarks([seconds * f for f in (0.125, 0.25, 0.5, 1.0)], dm.val, frames=3)
        trainer = pl.Trainer(max_steps=cfg.trainer.max_steps, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                             callbacks=[marks], accelerator="auto", precision=cfg.trainer.precision)
        trainer.fit(system, datamodule=dm)
        ckpt = out_dir / f"quality_{count}.ckpt"
        trainer.save_checkpoint(ckpt, weights_only=True)
        results[str(count)] = {"curve": marks.curve, "checkpoint": ckpt.name, "val_frames": len(dm.val),
                               "size": [dm.val.width, dm.val.height]}
    return results


def render_speed(ckpt: Path, data_root: Path | None, frames: int, chunk: int) -> dict:
    """Frames per second of a trained run's validation frames, as ``synctalk render`` draws them (EMA weights,
    its occupancy grid, ``chunk`` rays at once): the whole frame (background image read, rays, network, copy back)
    and the network alone (backgrounds read beforehand), the latter also without the march's early ray
    termination (every sample in one pass: ``march_speedup`` is its time over the march's, also as quartiles of
    the frames' ratios); and how far the image path (colour only where samples show) is from the full per-sample
    rendering of the same weights and from the one-pass image (PSNR between the two, dB)."""
    from synctalk.models.rendering import MARCH_SAMPLES
    from synctalk.runs import load_run

    cfg, system = load_run(ckpt)
    if data_root is not None:
        cfg.data.root = str(data_root)
    system.hparams.chunk = chunk
    dm = build_datamodule(cfg)
    dm.setup()
    val = dm.val
    count = min(frames, len(val))
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    system.render_frame(val, 0)  # warm-up (kernels compiled, caches filled)
    sync()
    start = time.perf_counter()
    for k in range(count):
        system.render_frame(val, k)
    sync()
    whole = (time.perf_counter() - start) / count
    net, device = system.inference_net, system.device
    inputs = [(val.c2w[k], val.audio_context(k, net.smooth_frames), val.eye[k], system.background(val, k))
              for k in range(count)]
    spent = {"march": [], "one_pass": []}  # alternating frame by frame, so that a machine's drift hits both
    for k, (c2w, audio, eye, background) in enumerate(inputs):
        for name, march_samples in (("march", MARCH_SAMPLES), ("one_pass", 0))[::1 if k % 2 else -1]:
            sync()
            start = time.perf_counter()
            system.render_view(val, c2w, audio, eye, background, march_samples=march_samples)
            sync()
            spent[name].append(time.perf_counter() - start)
    network, one_pass = sum(spent["march"]) / count, sum(spent["one_pass"]) / count
    speedups = [b / a for a, b in zip(spent["march"], spent["one_pass"])]
    one_pass_image = system.render_view(val, *inputs[0], march_samples=0)
    # the same weights through the training renderer (every sample coloured, read-outs too)
    fast = system.render_view(val, *inputs[0])
    pixels = val.all_pixels().to(device)
    bg = inputs[0][3].reshape(-1, 3).to(device)
    parts = []
    with torch.no_grad():
        for i in range(0, len(pixels), chunk):
            o, d = pixel_rays(inputs[0][0].to(device), pixels[i:i + chunk], val.focal, val.cx, val.cy, val.scale)
            parts.append(net.render(o, d, bg[i:i + chunk], inputs[0][1].to(device), inputs[0][2].to(device),
                                    occupancy=system.occupancy)["rgb"])
    full = torch.cat(parts).view(val.height, val.width, 3).clamp(0, 1).cpu()
    error = float((fast - full).pow(2).mean())
    march_error = float((fast - one_pass_image).pow(2).mean())
    return {"checkpoint": str(ckpt), "size": [val.width, val.height], "frames": count, "chunk": chunk,
            "fps": 1 / whole, "network_fps": 1 / network, "network_fps_one_pass": 1 / one_pass,
            "march_speedup": one_pass / network, "march_speedup_per_frame_quartiles": statistics.quantiles(speedups, n=4)
            if count > 1 else speedups,
            "psnr_march_vs_one_pass_db": float("inf") if march_error == 0 else -10 * math.log10(march_error),
            "occupied_fraction": system.occupancy.occupied_fraction if system.occupancy is not None else 1.0,
            "psnr_image_path_vs_full_db": float("inf") if error == 0 else -10 * math.log10(error),
            "max_abs_difference": float((fast - full).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--experiment", default="demo", help="the model and budget timed: demo (1024 rays per "
                        "step, a small model) or synctalk (65,536 rays, the released model's sizes)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--rays", type=int, nargs="+", default=None, help="rays per step to time each variant at "
                        "(default: the experiment's)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides for every variant, e.g. model.occupancy.start_step=50")
    parser.add_argument("--profile", action="store_true", help="the top GPU kernels of training and rendering")
    parser.add_argument("--quality", type=Path, default=None, metavar="DATASET",
                        help="a dataset folder: train the synctalk recipe at --quality-rays for --seconds each")
    parser.add_argument("--quality-rays", type=int, nargs="+", default=[65536, 1024])
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--render", type=Path, default=None, metavar="CKPT",
                        help="a trained run's checkpoint: rendering fps of its validation frames (--data-root: its "
                        "dataset elsewhere), and the image path against the full renderer")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--render-frames", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="32 px, 30 steps, eager float32 and bf16 MLPs only (runs on a CPU)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the synthetic subject, kept between calls (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu.json")
    args = parser.parse_args()
    if args.tiny:
        args.size, args.steps, args.variants = 32, 30, [v for v in args.variants if v in ("torch", "torch_bf16")]
    cuda = torch.cuda.is_available()
    report = {"benchmark": "gpu", "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.machine()})",
              "revision": revision(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "triton": importlib.metadata.version("triton") if importlib.util.find_spec("triton") else None,
              "experiment": args.experiment, "size": args.size, "steps": args.steps,
              "tcnn_installed": importlib.util.find_spec("tinycudann") is not None, "overrides": args.set,
              "results": {}}
    gpu_chunk = ("data.chunk=262144",) if cuda else ()  # a whole 512 px frame at once (the CPU default: 2048 rays)
    start = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for name in args.variants:
            for rays in args.rays or [None]:
                key = name if rays is None else f"{name}@{rays}"
                if name == "tcnn" and not report["tcnn_installed"]:
                    report["results"][key] = {"skipped": "tinycudann does not import"}
                    continue
                if name != "torch" and not native_bf16("cuda" if cuda else "cpu"):
                    report["results"][key] = {"skipped": "the device has no native bf16"}
                    continue
                opts = VARIANTS[name]
                t0 = time.perf_counter()
                try:
                    extra = (*opts.get("extra", ()), *gpu_chunk, *args.set,
                             *(() if rays is None else (f"data.rays_per_step={rays}",)))
                    if cuda:
                        torch.cuda.reset_peak_memory_stats()
                    result = measure("synthetic", args.size, args.steps, work, None,  # one subject for all
                                     extra=extra, precision=opts.get("precision", "32-true"),
                                     prepare=opts.get("prepare"), render_frames=2 if args.tiny else 5,
                                     experiment=args.experiment)
                    result["rays_per_s"] = result["train_steps_per_s"] * result["rays_per_step"]
                except Exception as err:  # a variant this machine cannot run is reported, not fatal
                    result = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc(limit=3)}
                result["seconds"] = round(time.perf_counter() - t0, 1)
                report["results"][key] = result
                print(key, json.dumps(result), flush=True)
                args.out.write_text(json.dumps(report, indent=2))  # what is measured so far survives a timeout
        if args.profile:
            try:
                report["profile"] = profile(args.size, work, args.experiment, [*gpu_chunk, *args.set])
            except Exception as err:
                report["profile"] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc(limit=3)}
            print("profile", json.dumps(report["profile"], indent=1), flush=True)
            args.out.write_text(json.dumps(report, indent=2))
        if args.render is not None:
            report["render"] = render_speed(args.render, args.data_root, args.render_frames,
                                            262144 if cuda else 4096)
            print("render", json.dumps(report["render"]), flush=True)
        if args.quality is not None:
            report["quality"] = quality(args.quality, args.seconds, args.quality_rays, args.out.parent, work,
                                        [*gpu_chunk, *args.set])
    report["seconds"] = round(time.perf_counter() - start, 1)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
