#!/usr/bin/env bash
# AVE, HuBERT or log-mel features? One dataset, one training run per encoder, one report.
# The pretrained encoders need their weights: AVE_CKPT=/path/audio_visual_encoder.pth and
# HUBERT_DIR=/path/hubert-large-ls960-ft; without them only the weight-free mel encoder runs.
# usage: experiments/audio_encoder_ablation.sh CLIP.mp4 DATASET_DIR [overrides, e.g. data.downscale=2 trainer.max_steps=8000]
set -euo pipefail
video=${1:?usage: $0 CLIP.mp4 DATASET_DIR [overrides]}
root=${2:?usage: $0 CLIP.mp4 DATASET_DIR [overrides]}
shift 2
out=${SWEEP_DIR:-outputs/sweeps/audio_encoder}
encoders=(mel)
[[ -n "${AVE_CKPT:-}" ]] && encoders+=(ave)
[[ -n "${HUBERT_DIR:-}" ]] && encoders+=(hubert)
for enc in "${encoders[@]}"; do  # features are a preprocessing stage (cached): only the new encoder's file is made
    weights=()
    [[ $enc == ave ]] && weights=(audio_encoder.checkpoint="$AVE_CKPT")
    [[ $enc == hubert ]] && weights=(audio_encoder.checkpoint="$HUBERT_DIR")
    synctalk preprocess data.video="$video" data.root="$root" audio_encoder=$enc "${weights[@]}"
done
synctalk train -m data=subject data.root="$root" logger=csv audio_encoder="$(IFS=,; echo "${encoders[*]}")" "$@" \
    hydra.sweep.dir="$out"
synctalk report "$out"
