#!/usr/bin/env bash
# The initial density offset of the head NeRF (model.net.density_bias): with 0 the scene box starts
# opaque and, on the demo subject, training collapses to an empty field; negative offsets learn the head.
set -euo pipefail
out=outputs/sweeps/density_bias
synctalk train -m experiment=demo logger=csv render_video=false trainer.max_steps=400 trainer.val_check_interval=200 \
    trainer.enable_progress_bar=false model.net.density_bias=0,-1,-2,-3 \
    hydra.sweep.dir="$out"
synctalk report "$out"
