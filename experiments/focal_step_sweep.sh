#!/usr/bin/env bash
# Does a finer focal grid change the stabilizer's result? Focal step 100 / 50 / 25 on one video: the focal
# found, the landmark and reprojection errors, the pose jitter, and the error-vs-focal curves side by side.
# With --synthetic the video is the 512 px synthetic subject, whose true focal and poses are known: the report
# then also has the focal error (%) and the rotation / translation errors of the landmark fit and of BA.
# With --train each step's dataset gets its own folder and a short head is trained on each: the report then
# answers in image quality (held-out PSNR, face PSNR, LMD beside the stabilizer numbers, and
# quality_vs_focal.png: quality against the focal each step found).
# usage: experiments/focal_step_sweep.sh CLIP.mp4 [--quick] [--train]
#        experiments/focal_step_sweep.sh --synthetic [--quick]
#   --quick: fewer optimisation steps, no refinement (about 1 min per run on 2 CPU cores for 100-200 frames)
#   --train: + a 128 px head per step (1500 steps, about 3 min each on 2 CPU cores)
set -euo pipefail
source=${1:?usage: $0 CLIP.mp4|--synthetic [--quick] [--train]}
shift
quick=false
train=false
for flag in "$@"; do
    case "$flag" in
        --quick) quick=true ;;
        --train) train=true ;;
        *) echo "unknown option $flag (use --quick, --train)" >&2; exit 2 ;;
    esac
done
out=${SWEEP_DIR:-outputs/sweeps/focal_step}
steps=(100 50 25)
extra=()
if $quick; then
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
if ! $train; then
    synctalk preprocess -m data.video="$video" data.root="$root" tracker.focal.step="$(IFS=,; echo "${steps[*]}")" \
        "${extra[@]}" hydra.sweep.dir="$out"
    synctalk report "$out"
    exit 0
fi
# one dataset folder per step (a shared folder would hold only the last run's poses), then one head each
roots=()
for step in "${steps[@]}"; do
    synctalk preprocess data.video="$video" data.root="$root/step$step" tracker.focal.step="$step" "${extra[@]}" \
        hydra.run.dir="$out/preprocess/step$step"
    roots+=("$root/step$step")
done
synctalk train -m experiment=demo data=subject data.root="$(IFS=,; echo "${roots[*]}")" data.downscale=4 \
    trainer.max_steps=1500 trainer.val_check_interval=500 data.val_frames=8 logger=csv \
    trainer.enable_progress_bar=false hydra.sweep.dir="$out/train"
synctalk report "$out/train"
