#!/usr/bin/env bash
# How much of the portrait-mode (GT with hair) score is pasted ground truth? Every evaluation scores both GT
# modes, whole frame and inside the face mask; this sweep trains a weak and a stronger head on the demo subject
# so the report's "GT modes" table shows the gain of portrait mode and how it hides the gap between models.
# usage: experiments/gt_mode_comparison.sh [--quick]     (--quick: 200 / 800 steps, ~2 min on 2 CPU cores)
set -euo pipefail
out=${SWEEP_DIR:-outputs/sweeps/gt_mode}
steps=300,2000
if [[ "${1:-}" == "--quick" ]]; then steps=200,800; fi
synctalk train -m experiment=demo logger=csv trainer.enable_progress_bar=false trainer.max_steps=$steps \
    trainer.val_check_interval=100 hydra.sweep.dir="$out"
synctalk report "$out"
