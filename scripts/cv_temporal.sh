#!/usr/bin/env bash
# Cross-validated training of the learned temporal modules (issue 4, BENCHMARKS.md section 7):
# for each of the 4 Cityscapes snippets, train every module on the other 3 (+ 60 Udacity frames)
# into runs/cv/<module>/<held-out snippet>/, so that `vidseg bench-temporal --seqs seq0000 seq0001
# seq0002 seq0003 --variants LABEL=MODE:runs/cv/<module>/{seq}/<mode>.pt` evaluates every frame with
# weights that never saw it. Identical commands for every fold; resumable (checkpoints per fold).
#   usage: scripts/cv_temporal.sh [MODULE ...]   (default: refiner grfp-s0.5 davss-s0.5; also grfp-s2.0,
#          grfp-s0.5-long)   HELD="seq0000 seq0001" restricts the folds (e.g. to run folds in parallel)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh >/dev/null
ALL=(seq0000 seq0001 seq0002 seq0003)
read -r -a FOLDS <<< "${HELD:-${ALL[*]}}"
MODULES=("$@")
[ ${#MODULES[@]} -eq 0 ] && MODULES=(refiner grfp-s0.5 davss-s0.5)
for m in "${MODULES[@]}"; do
  case "$m" in
    refiner)    args=(--mode refiner --iters 400 --lr 2e-3) ;;
    grfp-s0.5)  args=(--mode grfp --iters 400 --lr 1e-3 --grfp-steps 3 --cheap espnetv2_s0.5_512x256@256x128) ;;
    grfp-s2.0)  args=(--mode grfp --iters 400 --lr 1e-3 --grfp-steps 3 --cheap espnetv2_s2.0_512x256@256x128) ;;
    grfp-s0.5-long) args=(--mode grfp --iters 800 --lr 5e-4 --grfp-steps 4 --udacity-frames 200
                          --cheap espnetv2_s0.5_512x256@256x128) ;;
    davss-s0.5) args=(--mode davss --iters 150 --lr 2e-3 --cheap espnetv2_s0.5_512x256@256x128) ;;
    *) echo "cv_temporal.sh: unknown module $m (refiner grfp-s0.5 grfp-s0.5-long grfp-s2.0 davss-s0.5)" >&2
       exit 2 ;;
  esac
  mode=${args[1]}
  for held in "${FOLDS[@]}"; do
    out=runs/cv/$m/$held
    if [ -f "$out/$mode.pt" ]; then echo "[cv] $out/$mode.pt exists, skipping"; continue; fi
    train=(); for s in "${ALL[@]}"; do [ "$s" != "$held" ] && train+=("$s"); done
    echo "[cv] $m: held out $held, training on ${train[*]}"
    vidseg train temporal "${args[@]}" --seqs "${train[@]}" --ckpt-dir "runs/cv/ck/$m/$held" --out "$out"
  done
done
