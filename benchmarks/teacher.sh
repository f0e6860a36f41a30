#!/usr/bin/env bash
# The reference teacher: SegFormer-B0 on Kvasir-SEG (train split, validated on val), fine-tuned
# from the project's warm start, then scored on the held-out TEST split.
#   bash benchmarks/teacher.sh            # train (resumes if interrupted) + evaluate
#   SKIP_TRAIN=1 bash benchmarks/teacher.sh   # evaluate only
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data/kvasir-seg
OUT=benchmarks/teachers/kvasir-b0
if [ -z "${SKIP_TRAIN:-}" ]; then
  edgeseg train "$DATA" --init ../shared/models/kvasir-b0-warmstart -o "$OUT" --size 256 \
      --epochs 22 --batch-size 8 --lr 2e-4 --warmup-steps 50 --threads 2 --time-budget 68
fi
edgeseg evaluate "$OUT" "$DATA" --split test --threads 2 -q \
    --json benchmarks/results/teacher_kvasir_test.json --csv benchmarks/results/teacher_kvasir_test_per_image.csv
python - <<'PY'
import json
from edgeseg.measure.bench import machine_info
p = "benchmarks/results/teacher_kvasir_test.json"
d = json.load(open(p))
d["machine"] = machine_info()
d["command"] = "bash benchmarks/teacher.sh (edgeseg evaluate benchmarks/teachers/kvasir-b0 ../shared/data/kvasir-seg --split test)"
json.dump(d, open(p, "w"), indent=2)
PY
