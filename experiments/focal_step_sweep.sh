#!/usr/bin/env bash
# Does a finer focal grid change the stabilizer's result? Focal step 100 / 50 / 25 on one video.
# usage: experiments/focal_step_sweep.sh path/to/clip.mp4 [dataset folder]
set -euo pipefail
video=${1:?usage: $0 clip.mp4 [dataset folder]}
root=${2:-data/focal_sweep}
out=outputs/sweeps/focal_step
synctalk preprocess -m data.video="$video" data.root="$root" tracker.focal.step=100,50,25 hydra.sweep.dir="$out"
synctalk report "$out"
