#!/usr/bin/env bash
# Learned torso or the dataset's torso images? From one head run, the same number of extra steps spent
# either on the head (stage=head, torso from the dataset's images) or on the torso field (stage=torso, head frozen).
# usage: experiments/torso_ablation.sh HEAD_CKPT [overrides of the head run, e.g. data=subject data.root=...]
set -euo pipefail
ckpt=${1:?usage: $0 HEAD_CKPT [overrides]}; shift
out=${SWEEP_DIR:-outputs/sweeps/torso}
synctalk train -m stage=head,torso stage.init_from="$ckpt" gt_mode=with_hair logger=csv \
    trainer.enable_progress_bar=false "$@" hydra.sweep.dir="$out"
synctalk report "$out"
