#!/usr/bin/env bash
# Which distillation settings keep a pruned student close to its teacher (issue 10, item 3).
#
#   bash benchmarks/distill_settings.sh [STUDENT] [EPOCHS]
#
# STUDENT: a pruned Kvasir student, by default the search's prune25 candidate
# (runs/kvasir_search4/candidates/prune25/prune, made by benchmarks/compress_search.py: 25% of the
# Mix-FFN channels and 50% of the decode head of the folded kvasir-b0 teacher removed). Each
# setting distils it for EPOCHS (default 2) epochs on the Kvasir train split with `edgeseg distill`
# (everything else at that command's defaults: batch 8, 100-step warm-up then poly decay,
# temperature 2, patience 3, zoom 0.2) and prints each epoch's validation agreement with the
# teacher's masks (the "val Dice" of a distillation) against the student's starting agreement.
# The log goes to runs/distill_settings.log; the figures quoted in
# benchmarks/results/distill_settings.md were read from it.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${EDGESEG_DATA:-../shared/data}/kvasir-seg
S=${1:-runs/kvasir_search4/candidates/prune25/prune}
E=${2:-2}
T=benchmarks/teachers/kvasir-b0
mkdir -p runs/distill_settings
for cfg in "1e-4 1.0" "3e-5 1.0" "1e-4 0.5" "3e-4 0.5"; do
  set -- $cfg
  echo "== lr $1 alpha $2"
  edgeseg distill $T "$S" -o runs/distill_settings/lr$1_a$2 --train "$D" --train-split train --val-split val \
    --epochs "$E" --lr "$1" --alpha "$2" --threads 2 -q --overwrite 2>&1 | grep -E "^epoch|kept"
done | tee runs/distill_settings.log
