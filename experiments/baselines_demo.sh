#!/bin/bash
# Every baseline at the demo's settings (DigitScenes 64x64, 4000 scenes, search 10 epochs, retrain 12 epochs, seed 0),
# one run after another, with the plain CLI (no NNI experiment): the table in the README's "Every baseline at the
# demo's settings" came from these commands (SparseMask, the dense FDN and FCN from `make demo`, same settings).
#   bash experiments/baselines_demo.sh [OUT]     # default runs/baselines-demo; then: sparsemask report OUT --out ...
# About 40 minutes on a 2-core CPU. A finished run is kept (--resume), so the script can be started again.
set -euo pipefail
OUT=${1:-runs/baselines-demo}
SM=${SPARSEMASK:-sparsemask}
R=(--epochs 12 --train-scenes 4000 --fps-size 256 --no-progress --resume)
S=(--epochs 10 --train-scenes 4000 --arc-lr 0.02 --no-progress --resume)
for d in unet sparseacn; do "$SM" retrain --decoder "$d" --out "$OUT/$d" "${R[@]}"; done
search_and_retrain() {  # NAME SEARCH-ARGS...
    local name=$1; shift
    "$SM" search "$@" --out "$OUT/$name-search"
    "$SM" retrain --connectivity "$OUT/$name-search/connectivity.json" --out "$OUT/$name" "${R[@]}"
}
search_and_retrain random --strategy random --samples 1 --no-progress --resume
search_and_retrain rand_rule --strategy rand_rule --samples 1 --no-progress --resume
for k in 2 3 4 5; do search_and_retrain "maskconnect-k$k" --strategy maskconnect --k "$k" "${S[@]}"; done
for l in 1e-3 5e-3 1e-2; do search_and_retrain "l1-$l" --strategy l1 --lambda "$l" "${S[@]}"; done
