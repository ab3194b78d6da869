#!/usr/bin/env bash
# Does bundle adjustment help the NeRF? The same clip preprocessed with raw face-model poses
# (tracker.pose_source=landmarks) and with bundle adjustment, then one head trained on each.
# usage: experiments/stabilizer_ablation.sh CLIP.mp4 [--quick]   (--quick: 128 px, 1500 steps, ~6 min on 2 CPU cores)
set -euo pipefail
video=${1:?usage: $0 CLIP.mp4 [--quick]}
data=${DATA_DIR:-data/stabilizer_ablation}
out=${SWEEP_DIR:-outputs/sweeps/stabilizer}
train=(data.downscale=2 trainer.max_steps=8000 trainer.val_check_interval=1000)
if [[ "${2:-}" == "--quick" ]]; then
    train=(experiment=demo data.downscale=4 trainer.max_steps=1500 trainer.val_check_interval=500 data.val_frames=4)
fi
for source in landmarks bundle_adjustment; do
    synctalk preprocess data.video="$video" data.root="$data/$source" tracker.pose_source=$source
done
synctalk train -m data=subject data.root="$data/landmarks,$data/bundle_adjustment" logger=csv \
    trainer.enable_progress_bar=false "${train[@]}" hydra.sweep.dir="$out"
synctalk report "$out"
