"""Training and rendering speed of the demo head model on a GPU: one script, a few minutes.

    python benchmarks/gpu.py                 # on a CUDA machine: 512 px, every variant (about 5 minutes)
    python benchmarks/gpu.py --variants torch_bf16 --set data.rays_per_step=16384   # larger batches
    python benchmarks/gpu.py --tiny          # anywhere (CPU too): 32 px, a few steps, eager fp32 and bf16 (a smoke test)

Variants, each a real Lightning training run of ``--steps`` steps on the synthetic subject (timed after the
occupancy grid's first update) followed by whole validation frames rendered with the EMA weights:

- ``torch``: the pure-torch tri-plane hash encoding, eager, MLPs in float32 (``model.net.mlp_precision=fp32``);
- ``torch_bf16``: the same with the MLPs in bfloat16 (``model.net.mlp_precision=bf16``, what ``auto`` picks on
  Ampere and later GPUs);
- ``torch_compiled``: bf16 MLPs, the field (encoding + MLPs) under ``torch.compile`` (Triton kernels on GPUs);
- ``torch_autocast``: float32 MLPs under Lightning's bf16 autocast (``precision=bf16-mixed``), for comparison;
- ``tcnn``: tiny-cuda-nn's hash grid (bf16 MLPs), when ``tinycudann`` imports.

Each gives training steps/s, rays/s, rendering fps at the chosen size and the peak GPU memory. A variant that
fails (no compiler, no bf16, no tcnn) is recorded with its error instead of stopping the script.
Writes benchmarks/results/gpu.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from speed import measure  # noqa: E402

from synctalk.models.head_nerf import native_bf16  # noqa: E402


def compile_field(system) -> None:
    """Put the head's field (encoding and MLPs, called per batch of samples) and density under torch.compile."""
    for net in {id(n): n for n in (system.net, system.inference_net)}.values():
        net.field = torch.compile(net.field, dynamic=True)
        net.density = torch.compile(net.density, dynamic=True)


FP32, BF16 = "model.net.mlp_precision=fp32", "model.net.mlp_precision=bf16"
VARIANTS = {
    "torch": {"extra": (FP32,)},
    "torch_bf16": {"extra": (BF16,)},
    "torch_compiled": {"extra": (BF16,), "prepare": compile_field},
    "torch_autocast": {"extra": (FP32,), "precision": "bf16-mixed"},
    "tcnn": {"extra": ("encoding=tcnn", BF16)},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides of the demo model for every variant, e.g. data.rays_per_step=16384")
    parser.add_argument("--tiny", action="store_true", help="32 px, 30 steps, eager float32 and bf16 MLPs only (runs on a CPU)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the synthetic subject, kept between calls (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu.json")
    args = parser.parse_args()
    if args.tiny:
        args.size, args.steps, args.variants = 32, 30, ["torch", "torch_bf16"]
    cuda = torch.cuda.is_available()
    report = {"benchmark": "gpu", "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.machine()})",
              "torch": torch.__version__, "cuda": torch.version.cuda, "size": args.size, "steps": args.steps,
              "tcnn_installed": importlib.util.find_spec("tinycudann") is not None, "overrides": args.set,
              "results": {}}
    gpu_chunk = ("data.chunk=65536",) if cuda else ()  # the CPU default (2048 rays) starves a GPU
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for name in args.variants:
            if name == "tcnn" and not report["tcnn_installed"]:
                report["results"][name] = {"skipped": "tinycudann does not import"}
                continue
            if name != "torch" and not native_bf16("cuda" if cuda else "cpu"):
                report["results"][name] = {"skipped": "the device has no native bf16"}
                continue
            opts = VARIANTS[name]
            t0 = time.perf_counter()
            try:
                result = measure("synthetic", args.size, args.steps, work, None,  # one subject for all
                                 extra=(*opts.get("extra", ()), *gpu_chunk, *args.set), precision=opts.get("precision", "32-true"),
                                 prepare=opts.get("prepare"), render_frames=2 if args.tiny else 5)
                result["rays_per_s"] = result["train_steps_per_s"] * result["rays_per_step"]
            except Exception as err:  # a variant this machine cannot run is reported, not fatal
                result = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc(limit=3)}
            result["seconds"] = round(time.perf_counter() - t0, 1)
            report["results"][name] = result
            print(name, json.dumps(result), flush=True)
    report["seconds"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
