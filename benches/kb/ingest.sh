#!/usr/bin/env bash
# Ingestion throughput: `outpost kb ingest` of the sample knowledge base
# against llama.cpp's own `llama-embedding` embedding the very same chunk
# texts, with the same GGUF (the default embedder, converted by Outpost),
# threads, context and batch sizes, and llama.cpp built at the same
# instruction-set level (benches/peer/build-llama-cpp.sh). Prints one
# Markdown table of ratios measured in this run and writes it to
# benches/kb/results.md.
#
# Two figures per side:
#   embedding  chunks per second of model time: Outpost's time inside the
#              embedder (`embed_seconds` of the ingest report); llama.cpp's
#              from the timestamps of its batch_decode log lines (first to
#              last batch start, plus one average batch).
#   end to end chunks per second of wall time: Outpost parses, chunks,
#              embeds and writes SQLite/FTS5/vec0; llama-embedding loads the
#              model and embeds a prepared file.
#
# Usage: bash benches/kb/ingest.sh
# Environment: OUTPOST_BIN (default target/release/outpost, built if missing),
#   KB_THREADS (default 2), KB_ROUNDS (default 3: the best of N runs per side).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$here/../.." && pwd)
threads=${KB_THREADS:-2}
rounds=${KB_ROUNDS:-3}
bin=${OUTPOST_BIN:-$repo_root/target/release/outpost}
peer="$repo_root/benches/peer/build/bin/llama-embedding"
models=${OUTPOST_MODELS_DIR:-$HOME/.cache/outpost/models}
gguf="$models/all-minilm-l6-v2.f16.gguf"
work=$(mktemp -d "${TMPDIR:-/tmp}/outpost-kb-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

if [[ ! -x $bin ]]; then
    (cd "$repo_root" && cargo build --release --bin outpost)
fi
[[ -x $peer ]] || bash "$repo_root/benches/peer/build-llama-cpp.sh"
"$bin" models fetch all-minilm-l6-v2 >/dev/null

best_ours_embed=0 best_ours_wall=0 chunks=0
for round in $(seq 1 "$rounds"); do
    rm -f "$work/kb.sqlite"*
    start=$(date +%s.%N)
    "$bin" kb ingest "$repo_root/configs/kb/brewstation" --kb "$work/kb.sqlite" \
        --threads "$threads" --json >"$work/ours.json"
    end=$(date +%s.%N)
    read -r chunks embed_rate wall_rate < <(python3 - "$work/ours.json" "$start" "$end" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
n = r["chunks_embedded"]
print(n, n / r["embed_seconds"], n / (float(sys.argv[3]) - float(sys.argv[2])))
EOF
)
    echo "outpost round $round: $chunks chunks, $embed_rate chunks/s embedding, $wall_rate chunks/s end to end" >&2
    best_ours_embed=$(python3 -c "print(max($best_ours_embed, $embed_rate))")
    best_ours_wall=$(python3 -c "print(max($best_ours_wall, $wall_rate))")
done

# The exact texts Outpost embedded (heading path, newline, chunk text), one
# prompt each.
python3 - "$work/kb.sqlite" "$work/texts.txt" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute("SELECT section, text FROM chunks ORDER BY id").fetchall()
texts = [(s + "\n" + t) if s else t for s, t in rows]
open(sys.argv[2], "w").write("<#sep#>".join(texts))
EOF

best_peer_embed=0 best_peer_wall=0
for round in $(seq 1 "$rounds"); do
    start=$(date +%s.%N)
    "$peer" -m "$gguf" -f "$work/texts.txt" --embd-separator '<#sep#>' \
        -t "$threads" -c 512 -b 512 -ub 512 --pooling mean --embd-normalize 2 \
        --embd-output-format array >"$work/peer.out" 2>"$work/peer.err"
    end=$(date +%s.%N)
    read -r peer_chunks embed_rate wall_rate < <(python3 - "$work/peer.err" "$work/peer.out" "$start" "$end" <<'EOF'
import json, re, sys
# llama-embedding logs "M.SS.mmm.uuu I batch_decode: ..." as each batch
# starts (time since the process started); the model time is from the first
# to the last start, plus one average batch for the last.
starts = []
for line in open(sys.argv[1]):
    m = re.match(r"(\d+)\.(\d+)\.(\d+)\.(\d+) I batch_decode", line)
    if m:
        mi, se, ms, us = map(int, m.groups())
        starts.append(mi * 60 + se + ms / 1e3 + us / 1e6)
vectors = json.loads(open(sys.argv[2]).read())
n = len(vectors)
model_seconds = (starts[-1] - starts[0]) * len(starts) / (len(starts) - 1)
print(n, n / model_seconds, n / (float(sys.argv[4]) - float(sys.argv[3])))
EOF
)
    echo "llama-embedding round $round: $peer_chunks chunks, $embed_rate chunks/s embedding, $wall_rate chunks/s end to end" >&2
    [[ $peer_chunks == "$chunks" ]] || { echo "llama-embedding embedded $peer_chunks texts, Outpost $chunks" >&2; exit 1; }
    best_peer_embed=$(python3 -c "print(max($best_peer_embed, $embed_rate))")
    best_peer_wall=$(python3 -c "print(max($best_peer_wall, $wall_rate))")
done

peer_version=$(cat "$repo_root/benches/peer/build/peer-version.txt" 2>/dev/null || echo "llama.cpp (unknown build)")
python3 - "$best_ours_embed" "$best_peer_embed" "$best_ours_wall" "$best_peer_wall" "$chunks" "$threads" "$rounds" "$peer_version" >"$here/results.md" <<'EOF'
import sys
oe, pe, ow, pw = map(float, sys.argv[1:5])
chunks, threads, rounds, peer = sys.argv[5], sys.argv[6], sys.argv[7], sys.argv[8]
print("| %s chunks of the sample KB, %s threads, best of %s | outpost | llama-embedding | ratio |" % (chunks, threads, rounds))
print("|---|---:|---:|---:|")
print("| embedding, chunks/s | %.1f | %.1f | %.2fx |" % (oe, pe, oe / pe))
print("| end to end, chunks/s | %.1f | %.1f | %.2fx |" % (ow, pw, ow / pw))
print()
print("Same GGUF (all-MiniLM-L6-v2 f16 from `outpost quant convert`), context and batch 512, mean pooling, L2 norm. Peer: %s." % peer)
EOF
cat "$here/results.md"
