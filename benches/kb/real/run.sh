#!/usr/bin/env bash
# Retrieval over a real corpus: Debian's manual pages and package
# documentation installed on this machine (build-corpus.py), ingested with
# `outpost kb ingest` (real chunking, real embeddings), then
#   cold  one `outpost kb search` in a fresh process with the page cache
#         dropped (root) or, if it cannot be dropped, only a fresh process;
#         wall time from spawn to exit (embedder load included) and the
#         search time the command reports;
#   warm  `benches/retrieval.rs` over the same file (RETRIEVAL_KB): embed and
#         search p50/p95, binary-vs-exact recall@10, and how often the
#         document that answers a hand-written question is in the top 10.
# Prints Markdown and writes it to benches/kb/real/results.md.
#
# Usage: bash benches/kb/real/run.sh
# Environment:
#   REAL_CHUNKS   corpus size in (estimated) chunks (default 100000)
#   REAL_WORK     where the corpus and KB file are kept between runs
#                 (default target/retrieval-real); ingestion is incremental,
#                 so an interrupted build resumes
#   OUTPOST_BIN   outpost binary (default target/release/outpost, built if missing)
#   REAL_THREADS  embedder threads (default 2)
#   REAL_COLD_RUNS  cold queries, each after dropping the cache (default 3)
#   REAL_CARGO_BENCH  how to run the warm bench
#                 (default: cargo bench --bench retrieval)
#   REAL_SKIP_INGEST=1  measure the KB file as it is (e.g. a partial build)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$here/../../.." && pwd)
chunks=${REAL_CHUNKS:-100000}
work=${REAL_WORK:-$repo_root/target/retrieval-real}
threads=${REAL_THREADS:-2}
cold_runs=${REAL_COLD_RUNS:-3}
bin=${OUTPOST_BIN:-$repo_root/target/release/outpost}
questions="$here/questions.jsonl"
corpus="$work/corpus-$chunks"
kb="$work/real-$chunks.sqlite"
results="$here/results.md"

if [[ ! -x $bin ]]; then
    (cd "$repo_root" && cargo build --release --bin outpost)
fi
"$bin" models fetch all-minilm-l6-v2 >/dev/null
mkdir -p "$work"

if [[ ! -f "$corpus/MANIFEST.tsv" ]]; then
    echo "building the corpus (~$chunks chunks) in $corpus" >&2
    python3 "$here/build-corpus.py" --out "$corpus" --chunks "$chunks" \
        --questions "$questions" --jobs "$threads" >"$work/corpus-$chunks.sha256"
fi
corpus_sha=$(cat "$work/corpus-$chunks.sha256" 2>/dev/null || echo unknown)

if [[ "${REAL_SKIP_INGEST:-0}" != 1 ]]; then
    echo "ingesting $corpus into $kb (incremental; hours for 100k chunks on 2 cores)" >&2
    start=$(date +%s)
    "$bin" kb ingest "$corpus" --kb "$kb" --threads "$threads" --json >"$work/ingest-$chunks.json"
    echo "ingested in $(($(date +%s) - start)) s" >&2
fi
read -r stored stored_docs < <("$bin" kb info --kb "$kb" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["chunks"], d["documents"])')

# --- cold: a fresh process, the KB file (and the embedder) not in the page cache.
first_question=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["question"])' "$questions")
cold_kind="fresh process, page cache dropped (echo 3 > /proc/sys/vm/drop_caches)"
cold_rows=()
for run in $(seq 1 "$cold_runs"); do
    sync
    if ! { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
        cold_kind="fresh process only (the page cache could not be dropped: not root); the KB file may be cached"
    fi
    start=$(date +%s.%N)
    "$bin" kb search --kb "$kb" --threads "$threads" -k 10 "$first_question" \
        >/dev/null 2>"$work/cold.err"
    end=$(date +%s.%N)
    search_ms=$(sed -n 's/.* hits in \([0-9.]*\) ms.*/\1/p' "$work/cold.err" | tail -n 1)
    wall_ms=$(python3 -c "print(f'{($end - $start) * 1000:.0f}')")
    echo "cold run $run: process $wall_ms ms, search $search_ms ms" >&2
    cold_rows+=("| $run | $wall_ms ms | ${search_ms:-?} ms |")
done

# --- warm: many queries in one process.
echo "warm queries over $kb" >&2
read -r -a bench_cmd <<<"${REAL_CARGO_BENCH:-cargo bench --bench retrieval}"
warm=$(cd "$repo_root" && RETRIEVAL_KB="$kb" RETRIEVAL_QUESTIONS="$questions" \
    RETRIEVAL_THREADS="$threads" "${bench_cmd[@]}")

docs=$(($(wc -l <"$corpus/MANIFEST.tsv") - 1))
packages=$(($(wc -l <"$corpus/PACKAGES.tsv") - 1))
{
    echo "Real corpus: $docs documents from $packages Debian packages (manual pages and /usr/share/doc; list in $corpus/PACKAGES.tsv), of which $stored_docs documents ($stored chunks) are in the knowledge base; corpus sha256 $corpus_sha. $(date -u +%Y-%m-%d), $(nproc) cores, $threads threads; load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "Cold first query ($cold_kind): \`outpost kb search -k 10\`, spawn to exit, embedder load included, and the search time it reports."
    echo
    echo "| run | process wall | search |"
    echo "|---:|---:|---:|"
    printf '%s\n' "${cold_rows[@]}"
    echo
    echo "Warm (one process, \`benches/retrieval.rs\` with RETRIEVAL_KB):"
    echo
    echo "$warm"
} | tee "$results"
