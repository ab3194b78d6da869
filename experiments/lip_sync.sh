#!/usr/bin/env bash
# Does the mouth follow the audio on a real face, and which lever makes it? One dataset, a head trained with
# and without the auxiliary mouth target (model.loss.audio_mouth_weight: the audio embedding must predict the
# frame's mouth blendshapes), with and without per-frame latent codes (model.net.latent_dim: a code per
# training frame can absorb the mouth instead of the audio), and with the expression values acting on the whole
# face or above the nose base only (model.net.expression_region: upper-face values that move with speech, such
# as the brows, can otherwise carry the mouth). Every run reports the lip-sync numbers
# (parsed/mouth_corr, parsed/jaw_corr, sync_gap) on the held-out frames.
# The Face Landmarker (face_landmarker.task in $SYNCTALK_WEIGHTS, <root>/weights or ~/.cache/synctalk) gives the
# real blendshapes (preprocessing and metrics); without it FaceMesh geometry stands in and the report says so.
# usage: experiments/lip_sync.sh CLIP.mp4 DATASET_DIR [--quick] [overrides]   (--quick: 1500 steps at 128 px)
set -euo pipefail
video=${1:?usage: $0 CLIP.mp4 DATASET_DIR [--quick] [overrides]}
root=${2:?usage: $0 CLIP.mp4 DATASET_DIR [--quick] [overrides]}
shift 2
out=${SWEEP_DIR:-outputs/sweeps/lip_sync}
size=(data.downscale=2 trainer.max_steps=3000)
if [[ "${1:-}" == "--quick" ]]; then size=(data.downscale=4 trainer.max_steps=1500); shift; fi
synctalk preprocess data.video="$video" data.root="$root"
synctalk train -m experiment=demo data=subject data.root="$root" logger=csv trainer.enable_progress_bar=false \
    "${size[@]}" model.loss.audio_mouth_weight=0,0.1 model.net.latent_dim=4,0 \
    model.net.expression_region=face,upper_face "$@" hydra.sweep.dir="$out"
synctalk report "$out"
