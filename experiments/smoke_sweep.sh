#!/usr/bin/env bash
# Two learning rates of the MLPs on the smoke experiment; checks that sweeps and reports work.
set -euo pipefail
out=outputs/sweeps/smoke_lr
synctalk train -m experiment=smoke render_video=false model.lr_net=1e-3,3e-3 hydra.sweep.dir="$out"
synctalk report "$out"
