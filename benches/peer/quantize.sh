#!/usr/bin/env bash
# Quantization side by side: `outpost quant quantize` against llama.cpp's own
# `llama-quantize` (built from the registry source package with the same
# instruction-set settings, build-llama-cpp.sh) on the same f16 input, the
# same type and thread count, timed in one run and compared byte for byte;
# then the quality of every type (`outpost quant report`: perplexity on a
# held-out text, KL divergence and top-1 agreement against the f16 file, file
# size, decode tok/s), with and without an importance matrix made by
# llama.cpp's `llama-imatrix` on a calibration text.
#
# The default model's only registry package is a Q4_1 GGUF (no float
# weights ship), so the f16 reference is that file dequantized
# (`--allow-requantize`): the table measures what each type loses against
# the Q4_1 weights as f16, not against the original bf16 training weights.
#
# Usage: bash benches/peer/quantize.sh
# Environment:
#   OUTPOST_BIN    outpost binary (default: cargo build --release)
#   OUTPOST_MODEL  the GGUF to start from (default: the catalog's default generator)
#   PEER_THREADS   threads on both sides (default 2)
# Output: benches/peer/results-quantize.md (and build/quantize/ scratch files)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
threads=${PEER_THREADS:-2}
work="$here/build/quantize"
bin_dir="$here/build/bin"
model=${OUTPOST_MODEL:-$HOME/.cache/outpost/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf}
# Held out: the systemd manuals are never part of the calibration text.
held_out="$root/configs/kb/systemd/journald.conf.txt"
calibration="$work/calibration.txt"
types=(q4_0 q4_1 q4_k_m q5_k_m q8_0)

if [[ -z "${OUTPOST_BIN:-}" ]]; then
    (cd "$root" && cargo build --release --bin outpost)
    OUTPOST_BIN="$root/target/release/outpost"
fi
[[ -f "$model" ]] || "$OUTPOST_BIN" models fetch smollm2-135m-instruct-q4_1
for tool in llama-quantize llama-imatrix; do
    if [[ ! -x "$bin_dir/$tool" ]]; then
        PEER_TARGETS="llama-quantize llama-imatrix llama-perplexity" bash "$here/build-llama-cpp.sh"
        break
    fi
done

mkdir -p "$work"
find "$root/configs/kb/brewstation" -type f -name '*.md' -print0 | sort -z | xargs -0 cat >"$calibration"

seconds() { # runs "$@" and prints its wall time in seconds
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null 2>&1
    end=$(date +%s.%N)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }' 
}

echo "f16 reference from $(basename "$model") ..." >&2
"$OUTPOST_BIN" quant quantize "$model" --type f16 --allow-requantize -o "$work/ref.f16.gguf" >/dev/null
echo "importance matrix from $(wc -c <"$calibration") bytes of calibration text ..." >&2
"$bin_dir/llama-imatrix" -m "$work/ref.f16.gguf" -f "$calibration" -o "$work/imatrix.gguf" \
    -c 512 -t "$threads" >"$work/imatrix.log" 2>&1

table="| type | imatrix | outpost s | llama-quantize s | ratio | identical bytes |\n|---|---|---:|---:|---:|---|\n"
scored=()
for t in "${types[@]}"; do
    for im in no yes; do
        args=()
        suffix=$t
        if [[ $im == yes ]]; then
            args=(--imatrix "$work/imatrix.gguf")
            suffix=$t.imatrix
        fi
        ours="$work/outpost.$suffix.gguf"
        theirs="$work/llama.$suffix.gguf"
        echo "quantizing $suffix ..." >&2
        t_ours=$(seconds "$OUTPOST_BIN" quant quantize "$work/ref.f16.gguf" --type "$t" --threads "$threads" "${args[@]}" -o "$ours")
        t_theirs=$(seconds "$bin_dir/llama-quantize" "${args[@]}" "$work/ref.f16.gguf" "$theirs" "${t^^}" "$threads")
        same=no
        cmp -s "$ours" "$theirs" && same=yes
        table+=$(printf '| %s | %s | %.2f | %.2f | %.2f× | %s |' "$t" "$im" "$t_ours" "$t_theirs" \
            "$(awk -v a="$t_theirs" -v b="$t_ours" 'BEGIN { print a / b }')" "$same")"\n"
        scored+=("$ours")
    done
done

echo "scoring ${#scored[@]} files against the f16 reference ..." >&2
report=$("$OUTPOST_BIN" quant report --reference "$work/ref.f16.gguf" --text "$held_out" \
    --threads "$threads" --max-windows 8 "${scored[@]}" "$work/ref.f16.gguf")

{
    echo "# Quantization: outpost quant against llama.cpp's tools"
    echo
    echo "$(date -u +%Y-%m-%d), $(nproc) cores, $threads threads, $(cat "$here/build/peer-version.txt" 2>/dev/null) vs outpost's llama-cpp-sys-2 0.1.161."
    echo "Input: $(basename "$model") dequantized to f16 (the only registry package of the default model is Q4_1)."
    echo "Ratio = llama-quantize time / outpost time (above 1: outpost is faster)."
    echo
    printf '%b' "$table"
    echo
    echo "Quality on $(basename "$held_out") (held out; the imatrix was computed on the brewstation manuals):"
    echo
    echo "$report"
} >"$here/results-quantize.md"
cat "$here/results-quantize.md"
