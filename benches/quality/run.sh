#!/usr/bin/env bash
# Answer quality on both evaluation sets, every mode, one table
# (`make bench-quality`; README, "Answer quality").
#
#   benches/quality/run.sh [--half test|train|all] [--generators "name ..."] [--table-only]
#
# For each set (configs/eval/brewstation.jsonl over configs/kb/brewstation,
# configs/eval/systemd.jsonl over configs/kb/systemd) it runs `outpost eval
# run` in each mode below on the chosen half (default: test, the half
# nothing was tuned on), then writes benches/quality/results.md: recall@5,
# MRR, fact recall, faithfulness, unsupported answers, escalation
# precision/recall, deflection and latency p50/p95 per row.
#
# Modes, answered by the default generator: hybrid retrieval in the fused
# order (the default) and with the reranker; with the reranker and the
# faithfulness check off (`--unfaithful keep`, to compare with
# hybrid-rerank: what the check changes); the extractive style (quotes, no
# model) in both orders; each generator named in --generators (catalog
# names, fetched first; default: the catalog's larger Qwen2.5-Coder-0.5B)
# with the reranker.
# Vector and BM25 alone, with and without the reranker, are retrieval-only
# rows (`--retrieval-only`: no answers, so no answer columns).
set -euo pipefail
cd "$(dirname "$0")/../.."

HALF=test
GENERATORS="qwen2.5-coder-0.5b-instruct-q4_k_m"
TABLE_ONLY=
while [ $# -gt 0 ]; do
  case "$1" in
    --table-only) TABLE_ONLY=1; shift ;;
    --half) HALF="$2"; shift 2 ;;
    --generators) GENERATORS="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 64 ;;
  esac
done

BIN=./target/release/outpost
OUT=eval-out/quality
if [ -z "$TABLE_ONLY" ]; then
cargo build --release --bin outpost
"$BIN" models fetch smollm2-135m-instruct-q4_1 all-minilm-l6-v2
for g in $GENERATORS; do "$BIN" models fetch "$g"; done

mkdir -p "$OUT"
half_args=()
[ "$HALF" != all ] && half_args=(--half "$HALF")

run() { # set label extra-args...
  local set=$1 label=$2; shift 2
  local kb="$OUT/$set.kb"
  [ -f "$kb" ] || "$BIN" kb ingest "configs/kb/$set" --kb "$kb" >/dev/null
  local prompts="configs/prompts/$set"
  echo "== $set: $label" >&2
  "$BIN" eval run --kb "$kb" --prompts "$prompts" --set "configs/eval/$set.jsonl" \
    "${half_args[@]}" --label "$label" --out "$OUT/$set/$label" "$@" >/dev/null
}

for set in brewstation systemd; do
  run "$set" hybrid-rerank --rerank true
  run "$set" hybrid
  run "$set" no-faithfulness-check-rerank --rerank true --unfaithful keep
  run "$set" extract --style extract
  run "$set" extract-rerank --style extract --rerank true
  for mode in vector bm25; do
    run "$set" "$mode-rerank-retrieval" --retrieval "$mode" --rerank true --retrieval-only
    run "$set" "$mode-retrieval" --retrieval "$mode" --retrieval-only
  done
  run "$set" hybrid-rerank-retrieval --rerank true --retrieval-only
  run "$set" hybrid-retrieval --retrieval-only
  for g in $GENERATORS; do run "$set" "$g-rerank" --model "$g" --rerank true; done
done
fi

python3 - "$OUT" "$HALF" <<'PY' > benches/quality/results.md
import json, os, sys
out, half = sys.argv[1], sys.argv[2]
cols = [("retrieval.recall@5", "recall@5"), ("retrieval.mrr", "MRR"),
        ("answer.fact_recall", "fact recall"), ("answer.faithfulness", "faithful"),
        ("answer.unsupported", "unsupported"), ("answer.extractive_rate", "quoted"),
        ("escalation.precision", "esc. P"), ("escalation.recall", "esc. R"),
        ("deflection", "deflection"), ("latency.p50_ms", "p50 ms"), ("latency.p95_ms", "p95 ms")]
print(f"# Answer quality, {half} half\n")
print("Produced by `benches/quality/run.sh` (`make bench-quality`). Rows ending in")
print("`-retrieval` are `--retrieval-only` runs: no answers, latency is retrieval's.\n")
for s in ("brewstation", "systemd"):
    base = os.path.join(out, s)
    if not os.path.isdir(base):
        continue
    print(f"## {s}\n")
    print("| mode | " + " | ".join(c[1] for c in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    order = ["hybrid", "hybrid-rerank", "no-faithfulness-check-rerank", "extract", "extract-rerank"]
    labels = sorted(os.listdir(base), key=lambda l: (l.endswith("-retrieval"),
                    order.index(l) if l in order else len(order), l))
    for label in labels:
        with open(os.path.join(base, label, "report.json")) as f:
            r = json.load(f)
        m = r["metrics"]
        retrieval_only = label.endswith("-retrieval")
        def cell(k):
            v = m.get(k)
            if retrieval_only and not (k.startswith("retrieval") or k.startswith("escalation") or k.startswith("latency")):
                return "–"
            if v is None: return "–"
            if k.startswith("latency"): return f"{v:,.0f}"
            if k == "answer.unsupported": return f"{v:.0f}"
            return f"{v:.3f}"
        print(f"| {label} | " + " | ".join(cell(k) for k, _ in cols) + " |")
    print(f"\n{r['counts']['items']} items ({r['counts']['must_escalate']} to hand over).\n")
PY
cat benches/quality/results.md
