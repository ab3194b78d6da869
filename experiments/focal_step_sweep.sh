#!/usr/bin/env bash
# Does a finer focal grid change the stabilizer's result? Focal step 100 / 50 / 25 on one video: the focal
# found, the landmark and reprojection errors, the pose jitter, and the error-vs-focal curves side by side.
# With --synthetic the video is the 512 px synthetic subject, whose true focal and poses are known: the report
# then also has the focal error (%) and the rotation / translation errors of the landmark fit and of BA.
# usage: experiments/focal_step_sweep.sh CLIP.mp4 [--quick]
#        experiments/focal_step_sweep.sh --synthetic [--quick]
#   --quick: fewer optimisation steps, no refinement (about 1 min per run on 2 CPU cores for 100-200 frames)
set -euo pipefail
source=${1:?usage: $0 CLIP.mp4|--synthetic [--quick]}
out=${SWEEP_DIR:-outputs/sweeps/focal_step}
extra=()
if [[ "${2:-}" == "--quick" ]]; then
    extra=(tracker.steps=600 tracker.refine_points=0 preprocess.bundle_adjustment.joint_steps=600)
fi
if [[ "$source" == "--synthetic" ]]; then
    subject=${DATA_ROOT:-data}/synthetic_512
    synctalk preprocess data=synthetic data.root="$subject" data.synthetic.size=512 data.synthetic.num_frames=100
    video="$subject/video.mp4"
    extra+=(preprocess.ground_truth="$subject/ground_truth.npz")
    root=${DATA_ROOT:-data}/focal_sweep_synthetic
else
    video=$source
    root=${DATA_ROOT:-data}/focal_sweep
fi
synctalk preprocess -m data.video="$video" data.root="$root" tracker.focal.step=100,50,25 "${extra[@]}" \
    hydra.sweep.dir="$out"
synctalk report "$out"
