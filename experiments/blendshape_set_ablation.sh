#!/usr/bin/env bash
# Which upper-face condition helps: 7 blendshapes (SyncTalk), 2 blinks, 4 single values, or OpenFace AU45?
# Demo subject; au45 needs an au.csv in the dataset and is left out here.
# usage: experiments/blendshape_set_ablation.sh [--quick]   (--quick: 600 steps each, ~3 min on 2 CPU cores)
set -euo pipefail
out=${SWEEP_DIR:-outputs/sweeps/blendshapes}
steps=2000
if [[ "${1:-}" == "--quick" ]]; then steps=600; fi
synctalk train -m experiment=demo logger=csv trainer.enable_progress_bar=false trainer.max_steps=$steps \
    trainer.val_check_interval=200 blendshapes=upper7,eye2,single4 hydra.sweep.dir="$out"
synctalk report "$out"
