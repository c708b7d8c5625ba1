#!/usr/bin/env bash
# The report's key finding, on the built-in synthetic poses: is level 3 (82 poses) better fine-tuned from a
# level-1 (6 body positions) model than trained from scratch? Same level-3 budget, and same total budget.
#   bash benchmarks/hierarchy_finetune.sh [EPOCHS=30] [OUT=runs/hierarchy]
set -euo pipefail
epochs=${1:-30}
out=${2:-runs/hierarchy}
run() { python train.py --seed 42 "$@"; }
run --label_level 1 --num_train_epochs "$epochs" --output_dir "$out/level1"
run --label_level 3 --num_train_epochs "$epochs" --output_dir "$out/level3_from_level1" --init_from "$out/level1"
run --label_level 3 --num_train_epochs "$epochs" --output_dir "$out/level3_scratch"
run --label_level 3 --num_train_epochs $((2 * epochs)) --output_dir "$out/level3_scratch_2x"
python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"{'run':<22} {'test top-1':>10} {'top-5':>7} {'implied label_6':>16}")
for name in ("level3_from_level1", "level3_scratch", "level3_scratch_2x"):
    r = json.loads((out / name / "test_results.json").read_text())
    print(f"{name:<22} {r['test_accuracy']:>10.3f} {r['test_top5_accuracy']:>7.3f} "
          f"{r['test_implied_label_6_accuracy']:>16.3f}")
PY
