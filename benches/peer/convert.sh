#!/usr/bin/env bash
# Conversion time against llama.cpp's convert_hf_to_gguf.py on the same
# input, as a ratio (issue 10's benchmark).
#
# The input is a randomly initialised Llama of SmolLM2-135M's shape (30
# layers, 576 wide, 9 heads / 3 KV heads, 49152 tokens: 135 M parameters,
# 270 MB of bf16 safetensors, as SmolLM2 ships) with SmolLM2's real
# tokenizer, written by `cargo run -p outpost-quant --example random_llama`
# from the catalog's SmolLM2 GGUF. Each side converts it to each output type
# CONVERT_RUNS times (default 3), one program at a time, wall-clock time
# of the whole process measured (start-up, reading, tokenizer, conversion,
# writing); the table gives the median of each and the ratio
# outpost / llama.cpp (below 1: outpost is faster), and both files' sizes
# (that their tensors are the same bytes is what quant/tests/llama.rs checks).
#
# Usage: benches/peer/convert.sh             builds what it needs, then measures
#        OUTPOST_BIN=target/release/outpost benches/peer/convert.sh
#        CONVERT_TYPES="f16" CONVERT_RUNS=5 benches/peer/convert.sh
# Writes benches/peer/convert-results.md (and prints it).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
work="$here/build/convert"
types=${CONVERT_TYPES:-"f32 f16 bf16"}
runs=${CONVERT_RUNS:-3}
reference="$repo/quant/tests/reference/convert_reference.sh"
results="$here/convert-results.md"

die() {
    echo "convert.sh: error: $*" >&2
    exit 1
}

mkdir -p "$work"
cd "$repo"

if [[ -z ${OUTPOST_BIN:-} ]]; then
    echo "convert.sh: building outpost (release)" >&2
    cargo build --release --bin outpost >&2
    target=${CARGO_TARGET_DIR:-$repo/target}
    OUTPOST_BIN="$target/release/outpost"
fi
[[ -x $OUTPOST_BIN ]] || die "no outpost binary at $OUTPOST_BIN"

bash "$reference" setup || die "the reference converter cannot be made here (see above)"

models=${OUTPOST_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/outpost/models}
smollm="$models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ ! -f $smollm ]]; then
    "$OUTPOST_BIN" models fetch smollm2-135m-instruct-q4_1 >&2
fi
[[ -f $smollm ]] || die "no SmolLM2 GGUF at $smollm (outpost models fetch smollm2-135m-instruct-q4_1)"

model="$work/smollm2-135m-random"
if [[ ! -f $model/model.safetensors ]]; then
    echo "convert.sh: writing the random SmolLM2-135M-shaped model" >&2
    cargo run --release -q -p outpost-quant --example random_llama -- "$smollm" "$model" smollm2-135m >&2
fi

# Seconds, wall clock, of one run of "$@" (its output to a log).
timed() {
    local log=$1
    shift
    local start end
    start=$(date +%s.%N)
    "$@" >"$log" 2>&1 || { cat "$log" >&2; die "$* failed"; }
    end=$(date +%s.%N)
    echo "$end - $start" | bc -l
}

median() {
    sort -g | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2] + a[NR/2+1]) / 2}'
}

peer_version=$(bash "$reference" version)
outpost_version=$("$OUTPOST_BIN" --version 2>/dev/null || echo outpost)
{
    echo "# Conversion time: outpost quant convert vs convert_hf_to_gguf.py"
    echo
    echo "Input: random Llama of SmolLM2-135M's shape, bf16 safetensors ($(du -m "$model/model.safetensors" | cut -f1) MB), SmolLM2's tokenizer."
    echo "Outpost: $outpost_version. Peer: $peer_version (torch CPU, lazy tensors, default settings)."
    echo "Machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo). Median of $runs runs each, wall clock, one program at a time."
    echo
    echo "| output | outpost s | convert_hf_to_gguf.py s | ratio (outpost / llama.cpp) | outpost MB | llama.cpp MB |"
    echo "|---|---|---|---|---|---|"
} >"$results.partial"

for type in $types; do
    ours_times=()
    peer_times=()
    for ((i = 0; i < runs; i++)); do
        ours_times+=("$(timed "$work/ours-$type.log" "$OUTPOST_BIN" quant convert "$model" --output "$work/ours-$type.gguf" --type "$type")")
        peer_times+=("$(timed "$work/peer-$type.log" bash "$reference" convert "$model" "$work/peer-$type.gguf" "$type")")
    done
    ours_s=$(printf '%s\n' "${ours_times[@]}" | median)
    peer_s=$(printf '%s\n' "${peer_times[@]}" | median)
    ratio=$(echo "$ours_s / $peer_s" | bc -l)
    ours_mb=$(du -m "$work/ours-$type.gguf" | cut -f1)
    peer_mb=$(du -m "$work/peer-$type.gguf" | cut -f1)
    printf '| %s | %.2f | %.2f | %.2f | %s | %s |\n' "$type" "$ours_s" "$peer_s" "$ratio" "$ours_mb" "$peer_mb" >>"$results.partial"
    echo "convert.sh: $type: outpost ${ours_times[*]} s, convert_hf_to_gguf.py ${peer_times[*]} s" >&2
done

mv "$results.partial" "$results"
cat "$results"
