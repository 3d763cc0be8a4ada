#!/usr/bin/env bash
# Lift of a LoRA adapter on the sample deployment: the dataset is the
# reference answers of the sample evaluation set's `train` half (rendered
# through the device's own answer pipeline: the sample prompt set and the
# sample knowledge base), the adapter is trained on it, and both the base
# and base + adapter answer the set's held-out `test` half with the same
# settings (`outpost eval run --half test`). Fact recall and escalation
# precision/recall of both runs go to benches/results-lift.md.
#
# Usage: bash benches/lift.sh   (make bench-lift)
# Environment:
#   OUTPOST_BIN      outpost binary (default target/debug/outpost)
#   LIFT_OUT         work folder (default target/lift)
#   LIFT_EPOCHS      passes over the train half (default 1)
#   LIFT_MAX_STEPS   stop after this many steps (default 0: the epochs decide)
#   LIFT_LR          peak learning rate (default 1e-3)
#   LIFT_RANK        LoRA rank (default 8)
#   THREADS          threads (default 2)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${OUTPOST_BIN:-$root/target/debug/outpost}
out=${LIFT_OUT:-$root/target/lift}
threads=${THREADS:-2}
set_file=$root/configs/eval/brewstation.jsonl
prompts=$root/configs/prompts/brewstation
mkdir -p "$out"

[[ -f "$out/kb.sqlite" ]] || "$bin" kb ingest --kb "$out/kb.sqlite" "$root/configs/kb/brewstation"
common=(--threads "$threads" --kb "$out/kb.sqlite" --prompts "$prompts")

start=$(date +%s)
"$bin" tune dataset build --no-feedback --eval-set "$set_file" "${common[@]}" \
    --out "$out/dataset.jsonl" --json > "$out/dataset.manifest.out.json"
"$bin" tune train --dataset "$out/dataset.jsonl" --out "$out/run" --threads "$threads" \
    --max-seq-len 2048 --train-batch-size 1 --warmup-steps 5 \
    --epochs "${LIFT_EPOCHS:-1}" --max-steps "${LIFT_MAX_STEPS:-0}" \
    --learning-rate "${LIFT_LR:-1e-3}" --rank "${LIFT_RANK:-8}"
trained=$(date +%s)

for side in base adapter; do
    lora=()
    [[ $side == adapter ]] && lora=(--lora "$out/run/adapter.gguf")
    # Exit 2 is a failed threshold; none is set, so any exit but 0 is a failure.
    "$bin" eval run --set "$set_file" --half test --label "$side" --out "$out/$side" \
        --parallel 1 "${common[@]}" "${lora[@]}"
done
done_at=$(date +%s)

python3 - "$out" "$root/benches/results-lift.md" "$((trained - start))" "$((done_at - trained))" <<'PY'
import json, sys
out, dest, train_s, eval_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
run = json.load(open(f"{out}/run/run.json"))
m = {s: json.load(open(f"{out}/{s}/report.json"))["metrics"] for s in ("base", "adapter")}
keys = ["answer.fact_recall", "escalation.precision", "escalation.recall", "deflection",
        "answer.faithfulness", "answer.extractive_rate"]
state = run["state"]
lines = ["# Adapter lift on the sample set's held-out half (benches/lift.sh)", "",
         f"Dataset: the train half's references, {run['train_examples']} train / "
         f"{run['validation_examples']} validation examples ({run['skipped_too_long']} too long); "
         f"{state['step']} steps, rank {state['config']['lora']['rank']}, "
         f"lr {state['config']['learning_rate']}, {state['tokens_per_s']:.1f} tokens/s; "
         f"training {train_s} s, both evaluations {eval_s} s.", "",
         "| metric (test half) | base | base + adapter | Δ |", "|---|---|---|---|"]
for k in keys:
    b, a = m["base"].get(k), m["adapter"].get(k)
    if b is None or a is None:
        continue
    lines.append(f"| {k} | {b:.3f} | {a:.3f} | {a - b:+.3f} |")
open(dest, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
