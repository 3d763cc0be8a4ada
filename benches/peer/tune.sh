#!/usr/bin/env bash
# LoRA training throughput side by side: `outpost tune bench` (candle, on
# the dequantized GGUF) against PyTorch + PEFT (tune/reference/peer_train.py,
# transformers loading the same GGUF), with the same sequence length, rank,
# targets (q,k,v,o), batch, thread count, optimizer (AdamW, lr 1e-4), no
# dropout, no clipping, loss on every token, fp32, one untimed warm-up step.
# Both run in one invocation of this script, one after the other.
#
# Usage: bash benches/peer/tune.sh
# Environment:
#   OUTPOST_BIN   outpost binary (default: target/debug/outpost, whose candle
#                 and trainer are built at opt-level 3; or cargo build)
#   PEER_THREADS  threads on both sides (default 2)
#   PEER_STEPS    timed steps (default 4)
# Output: benches/peer/results-tune.md
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
threads=${PEER_THREADS:-2}
steps=${PEER_STEPS:-4}
seq=512
rank=16
model=$HOME/.cache/outpost/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf

if [[ -z "${OUTPOST_BIN:-}" ]]; then
    (cd "$root" && cargo build --bin outpost)
    OUTPOST_BIN="$root/target/debug/outpost"
fi
[[ -f "$model" ]] || "$OUTPOST_BIN" models fetch smollm2-135m-instruct-q4_1
python=$(bash "$root/tune/reference/venv.sh")

ours=$("$OUTPOST_BIN" tune bench --model "$model" --threads "$threads" \
    --seq-len "$seq" --rank "$rank" --targets q,k,v,o --train-batch-size 1 --steps "$steps" | tail -1)
theirs=$("$python" "$root/tune/reference/peer_train.py" --gguf "$model" --threads "$threads" \
    --seq-len "$seq" --rank "$rank" --targets q,k,v,o --batch 1 --steps "$((steps + 1))" | tail -1)

OURS="$ours" THEIRS="$theirs" "$python" - "$here/results-tune.md" <<'PY'
import json, os, sys
o, t = json.loads(os.environ["OURS"]), json.loads(os.environ["THEIRS"])
ratio = o["tokens_per_s"] / t["tokens_per_s"]
with open(sys.argv[1], "w") as f:
    f.write("# LoRA training throughput (benches/peer/tune.sh)\n\n")
    f.write(f"Sequence {o['seq_len']}, rank {o['rank']}, targets q,k,v,o, batch {o['batch_size']}, "
            f"{o['threads']} threads, fp32, AdamW, no dropout, loss on all tokens.\n\n")
    f.write("| side | tokens/s | median step (s) | peak RSS (MB) |\n|---|---|---|---|\n")
    f.write(f"| outpost tune (candle) | {o['tokens_per_s']:.1f} | {o['step_s_median']:.2f} | {o['peak_rss_mb']:.0f} |\n")
    f.write(f"| PyTorch + PEFT | {t['tokens_per_s']:.1f} | {t['step_s_median']:.2f} | {t['peak_rss_mb']:.0f} |\n\n")
    f.write(f"Ratio outpost / PyTorch: **{ratio:.2f}×**\n")
print(open(sys.argv[1]).read())
PY
