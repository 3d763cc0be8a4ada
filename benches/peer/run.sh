#!/usr/bin/env bash
# Side-by-side peer benchmark: Outpost against llama.cpp's own tools
# (llama-bench, llama-server) on the same GGUF, threads, context and batch
# settings, with llama.cpp built at the same instruction-set level as Outpost
# (build-llama-cpp.sh). Prints one Markdown table of ratios measured in this
# run and writes it to benches/peer/results.md. See benches/peer/README.md.
#
# Usage: bash benches/peer/run.sh [--peer-only | --cache-matched | --grammar]
#   --peer-only   measure only the llama.cpp side (to check the harness)
#   --cache-matched  only the servers, twice, with matched prompt caches:
#                 both on at PEER_CACHE_MB each (llama-server --cache-ram,
#                 Outpost engine.prefix_cache_mb), then both off (llama-server
#                 --cache-ram 0 and cache_prompt false, Outpost
#                 engine.prefix_reuse = false); writes results-cache.md
#   --grammar     only the servers, unconstrained and then with the same
#                 JSON schema in every request (response_format json_schema,
#                 converted by llama.cpp's json-schema-to-grammar on both
#                 sides), with matched prompt caches (both on at
#                 PEER_CACHE_MB); writes results-grammar.md
# Environment:
#   OUTPOST_MODEL  GGUF to load (default: $MODEL_DEFAULT below)
#   OUTPOST_BIN    outpost binary to use instead of `cargo build --release`
#   PEER_THREADS   threads for every run (default 2)
#   PEER_ROUNDS    concurrent-chat rounds (default 10)
#   PEER_PORT      local port the servers listen on, one at a time (default 18091)
#   PEER_ALLOW_BUSY=1  measure even if other work keeps the CPUs busy
#   PEER_IDLE_TIMEOUT  seconds to wait for quiet CPUs before each step (default 600)
#   PEER_ATTEMPTS  runs of a step that other processes disturbed (default 3)
#   PEER_CACHE_MB  prompt-cache RAM of each server with --cache-matched (default 256)
set -euo pipefail

MODEL_DEFAULT="$HOME/.cache/outpost/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf"

# llama-bench's (and llama-server's) defaults, passed explicitly to both sides
# for the benches and the servers alike. llama-bench sizes its context to
# n_prompt + n_gen; outpost bench is given the same.
readonly N_PROMPT=512 N_GEN=128 REPS=5 BATCH=2048 UBATCH=512 FLASH_ATTN=auto
# Server settings: 4 slots sharing one total context; both servers split it
# evenly, 1024 tokens a slot, enough for the ~800-token shared system prompt,
# the question, the chat template and 64 generated tokens.
readonly PARALLEL=4 CTX_TOTAL=4096 MAX_TOKENS=64

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$here/../.." && pwd)
build_dir="$here/build"
results_dir="$build_dir/results"
model=${OUTPOST_MODEL:-$MODEL_DEFAULT}
threads=${PEER_THREADS:-2}
rounds=${PEER_ROUNDS:-10}
port=${PEER_PORT:-18091}
peer_only=false
cache_matched=false
grammar=false
cache_mb=${PEER_CACHE_MB:-256}

die() {
    echo "run.sh: error: $*" >&2
    exit 1
}

note() {
    echo "run.sh: $*" >&2
}

for arg in "$@"; do
    case "$arg" in
        --peer-only) peer_only=true ;;
        --cache-matched) cache_matched=true ;;
        --grammar) grammar=true ;;
        -h | --help)
            awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *) die "unknown argument '$arg' (try --help)" ;;
    esac
done

pidfile="$build_dir/server.pid"
child=""
cleanup() {
    # load.py stops its server itself; this covers the script being killed.
    if [[ -n "$child" ]] && kill -0 "$child" 2>/dev/null; then
        kill "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    if [[ -f "$pidfile" ]]; then
        local pid
        pid=$(cat "$pidfile")
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            sleep 1
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v python3 >/dev/null || die "python3 is required (standard library only)"
[[ -f "$model" ]] || die "model not found: $model (set OUTPOST_MODEL to a GGUF file)"
mkdir -p "$results_dir"
rm -f "$results_dir"/*.json
notes="$results_dir/interference.txt"
step_notes="$results_dir/interference-step.txt"
: >"$notes"
attempts=${PEER_ATTEMPTS:-3}

# --- peer tools -------------------------------------------------------------
llama_bench="$build_dir/bin/llama-bench"
llama_server="$build_dir/bin/llama-server"
if [[ ! -x "$llama_bench" || ! -x "$llama_server" ]]; then
    note "building llama-bench and llama-server (once; cached in $build_dir)"
    bash "$here/build-llama-cpp.sh"
fi
peer_version=$(cat "$build_dir/peer-version.txt" 2>/dev/null || echo "llama.cpp (unknown version)")

# --- outpost ----------------------------------------------------------------
outpost_bin=""
if [[ "$peer_only" == false ]]; then
    if [[ -n "${OUTPOST_BIN:-}" ]]; then
        outpost_bin=$OUTPOST_BIN
    else
        command -v cargo >/dev/null || die "cargo not found on PATH (or set OUTPOST_BIN)"
        note "building outpost (cargo build --release --bin outpost)"
        (cd "$repo_root" && cargo build --release --bin outpost) ||
            die "cargo build --release --bin outpost failed"
        outpost_bin="${CARGO_TARGET_DIR:-$repo_root/target}/release/outpost"
    fi
    [[ -x "$outpost_bin" ]] || die "outpost binary not found or not executable: $outpost_bin"
    # Each subcommand must exist and know the flags this script passes.
    for check in "bench --n-prompt --n-gen --repetitions --json" \
        "serve --parallel --ctx-size --port"; do
        read -r sub flags <<<"$check"
        help_out=$("$outpost_bin" "$sub" --help 2>&1) || true
        for flag in $flags --model --threads --batch-size --ubatch-size --flash-attn; do
            if [[ "$help_out" != *"$flag "* ]]; then
                die "$outpost_bin lacks '$sub' (or its $flag flag); '$sub --help' said: ${help_out:0:300}"
            fi
        done
    done
fi

# Outpost's llama.cpp: the tree vendored in the llama-cpp-sys-2 crate it locks.
sys_version=$(awk '/^name = "llama-cpp-sys-2"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' \
    "$repo_root/Cargo.lock" 2>/dev/null || true)
outpost_llama="llama-cpp-sys-2 ${sys_version:-unknown}"
for sys_tree in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"llama-cpp-sys-2-$sys_version"/llama.cpp; do
    [[ -f "$sys_tree/CMakeLists.txt" ]] || continue
    llama_v=$(sed -n 's/^set(LLAMA_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\))$/\2/p' \
        "$sys_tree/CMakeLists.txt" | paste -sd. -)
    ggml_v=$(sed -n 's/^set(GGML_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\))$/\2/p' \
        "$sys_tree/ggml/CMakeLists.txt" | paste -sd. -)
    outpost_llama="llama.cpp $llama_v (ggml $ggml_v, from $outpost_llama)"
    break
done

# Every measurement starts on quiet CPUs: on 2 cores any neighbour (a compiler,
# the previous server still exiting) distorts the numbers badly.
quiet() {
    if [[ "${PEER_ALLOW_BUSY:-0}" == 1 ]]; then
        return 0
    fi
    python3 "$here/load.py" wait-idle --timeout "${PEER_IDLE_TIMEOUT:-600}" ||
        die "the machine is busy; measurements would be meaningless"
}

# Runs one measurement step (a function and its arguments) on quiet CPUs. If
# other processes still disturbed it (load.py compares the machine's busy time
# with the measured processes' own), waits and runs it again, up to
# $attempts times; a warning that persists goes under the table.
measured() {
    local attempt
    for ((attempt = 1; ; attempt++)); do
        quiet
        : >"$step_notes"
        "$@"
        [[ -s "$step_notes" ]] || return 0
        if ((attempt >= attempts)); then
            cat "$step_notes" >>"$notes"
            return 0
        fi
        note "disturbed by other processes; running it again (attempt $((attempt + 1)) of $attempts)"
    done
}

# Runs a command in the background and waits for it, so that a signal to this
# script is handled at once (bash defers traps until a foreground child exits)
# and cleanup can stop the child.
run_child() {
    "$@" &
    child=$!
    local status=0
    wait "$child" || status=$?
    child=""
    return "$status"
}

# --- single stream: llama-bench vs outpost bench -----------------------------
# Two passes in A B B A order, so slow drift in the machine's speed (a VM's
# neighbours, thermal state) weighs on both sides alike; the table averages
# the passes.
run_llama_bench() {
    local tag=$1
    note "llama-bench ($tag): pp$N_PROMPT / tg$N_GEN, $REPS repetitions"
    run_child python3 "$here/load.py" run --name "llama-bench ($tag)" --notes "$step_notes" -- \
        "$llama_bench" -m "$model" -t "$threads" -p "$N_PROMPT" -n "$N_GEN" -r "$REPS" \
        -b "$BATCH" -ub "$UBATCH" -fa "$FLASH_ATTN" -o json \
        >"$results_dir/llama-bench-$tag.json" 2>"$results_dir/llama-bench-$tag.log" ||
        die "llama-bench failed; see $results_dir/llama-bench-$tag.log"
}

run_outpost_bench() {
    local tag=$1
    [[ -n "$outpost_bin" ]] || return 0
    note "outpost bench ($tag): pp$N_PROMPT / tg$N_GEN, $REPS repetitions"
    run_child python3 "$here/load.py" run --name "outpost bench ($tag)" --notes "$step_notes" -- \
        "$outpost_bin" bench --model "$model" --threads "$threads" \
        --parallel 1 --ctx-size "$((N_PROMPT + N_GEN))" --n-prompt "$N_PROMPT" --n-gen "$N_GEN" --repetitions "$REPS" \
        --batch-size "$BATCH" --ubatch-size "$UBATCH" --flash-attn "$FLASH_ATTN" --json \
        >"$results_dir/outpost-bench-$tag.json" 2>"$results_dir/outpost-bench-$tag.log" ||
        die "outpost bench failed; see $results_dir/outpost-bench-$tag.log"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["tests"]' \
        "$results_dir/outpost-bench-$tag.json" 2>/dev/null ||
        die "outpost bench did not print the expected JSON; see $results_dir/outpost-bench-$tag.json"
}

if [[ "$cache_matched" == false && "$grammar" == false ]]; then
    measured run_llama_bench 1
    measured run_outpost_bench 1
    measured run_outpost_bench 2
    measured run_llama_bench 2
fi

# --- servers, one at a time ---------------------------------------------------
# llama-server keeps its per-slot prompt cache (its own prefix reuse); its
# host-RAM prompt cache is disabled (--cache-ram 0) so both servers hold the
# prefix only in KV memory.
serve() {
    local name=$1
    shift
    note "$name: cold start, warm-up, then $rounds rounds of $PARALLEL concurrent chats"
    run_child python3 "$here/load.py" serve --name "$name" --port "$port" \
        --rounds "$rounds" --workers "$PARALLEL" --max-tokens "$MAX_TOKENS" \
        --out "$results_dir/$name.json" --log "$results_dir/$name.log" \
        --pidfile "$pidfile" --notes "$step_notes" ${PEER_EXTRA_BODY:+--extra-body "$PEER_EXTRA_BODY"} -- "$@" ||
        die "$name measurement failed; see $results_dir/$name.log"
}

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
today=$(date -u +%Y-%m-%d)
cores=$(nproc)

# Writes the table of a matched run (--cache-matched, --grammar) to $1 from
# the --pair arguments after it, with $header, and exits: 0, or 1 when
# other processes disturbed a step.
finish_matched() {
    local out=$1
    shift
    python3 "$here/report.py" --matched "$@" --header "$header" --notes "$notes" --out "$out"
    if [[ -s "$notes" ]]; then
        die "other processes disturbed some measurements (see the notes under the table); rerun on a quiet machine"
    fi
    exit 0
}

# The server settings of the matched runs (--cache-matched, --grammar).
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
llama_args=(-m "$model" -t "$threads" -np "$PARALLEL" -c "$CTX_TOTAL" -b "$BATCH"
    -ub "$UBATCH" -fa "$FLASH_ATTN" --host 127.0.0.1 --port "$port")
outpost_args=(serve --model "$model" --threads "$threads" --parallel "$PARALLEL"
    --ctx-size "$CTX_TOTAL" --batch-size "$BATCH" --ubatch-size "$UBATCH"
    --flash-attn "$FLASH_ATTN" --host 127.0.0.1 --port "$port")
printf '[engine]\nprefix_cache_mb = %s\nprefix_reuse = true\n' "$cache_mb" >"$results_dir/cache-on.toml"

if [[ "$cache_matched" == true ]]; then
    [[ -n "$outpost_bin" ]] || die "--cache-matched needs the outpost side"
    printf '[engine]\nprefix_reuse = false\n' >"$results_dir/cache-off.toml"
    # Back to back, in the order llama-server, Outpost (caches on), Outpost,
    # llama-server (caches off), so that drift weighs on both sides alike.
    measured serve llama-server-cache-on "$llama_server" "${llama_args[@]}" --cache-ram "$cache_mb"
    measured serve outpost-serve-cache-on "$outpost_bin" --config "$results_dir/cache-on.toml" "${outpost_args[@]}"
    extra_off='{"cache_prompt": false}'
    measured serve outpost-serve-cache-off "$outpost_bin" --config "$results_dir/cache-off.toml" "${outpost_args[@]}"
    PEER_EXTRA_BODY=$extra_off measured serve llama-server-cache-off "$llama_server" "${llama_args[@]}" --cache-ram 0
    header="Outpost vs llama-server with matched prompt caches, $today. CPU: ${cpu:-unknown} ($cores cores), $threads threads; \
load average at the start $load_at_start. \
Model: $(basename "$model"). Both: $PARALLEL slots, $CTX_TOTAL-token total context, -b $BATCH -ub $UBATCH -fa $FLASH_ATTN, \
$rounds rounds x $PARALLEL chats, ~800-token shared system prompt, max_tokens $MAX_TOKENS, temperature 0. \
Caches on: llama-server --cache-ram $cache_mb (and its per-slot prompt reuse), Outpost engine.prefix_cache_mb = $cache_mb (and its resident-slot reuse). \
Caches off: llama-server --cache-ram 0 with \"cache_prompt\": false in every request, Outpost engine.prefix_reuse = false. \
Outpost: $outpost_llama. Peer: $peer_version."
    finish_matched "$here/results-cache.md" \
        --pair "caches on" "$results_dir/outpost-serve-cache-on.json" "$results_dir/llama-server-cache-on.json" \
        --pair "caches off" "$results_dir/outpost-serve-cache-off.json" "$results_dir/llama-server-cache-off.json"
fi

if [[ "$grammar" == true ]]; then
    [[ -n "$outpost_bin" ]] || die "--grammar needs the outpost side"
    # A support reply as an object: an unbounded answer string keeps both
    # servers generating to max_tokens, like the unconstrained runs.
    schema='{"response_format": {"type": "json_schema", "json_schema": {"name": "reply", "schema": {"type": "object", "properties": {"escalate": {"type": "boolean"}, "answer": {"type": "string"}}, "required": ["escalate", "answer"], "additionalProperties": false}}}}'
    measured serve llama-server-free "$llama_server" "${llama_args[@]}" --cache-ram "$cache_mb"
    measured serve outpost-serve-free "$outpost_bin" --config "$results_dir/cache-on.toml" "${outpost_args[@]}"
    PEER_EXTRA_BODY=$schema measured serve outpost-serve-schema "$outpost_bin" --config "$results_dir/cache-on.toml" "${outpost_args[@]}"
    PEER_EXTRA_BODY=$schema measured serve llama-server-schema "$llama_server" "${llama_args[@]}" --cache-ram "$cache_mb"
    header="Outpost vs llama-server, unconstrained and grammar-constrained, $today. CPU: ${cpu:-unknown} ($cores cores), $threads threads; \
load average at the start $load_at_start. \
Model: $(basename "$model"). Both: $PARALLEL slots, $CTX_TOTAL-token total context, -b $BATCH -ub $UBATCH -fa $FLASH_ATTN, \
$rounds rounds x $PARALLEL chats, ~800-token shared system prompt, max_tokens $MAX_TOKENS, temperature 0; \
prompt caches matched: llama-server --cache-ram $cache_mb, Outpost engine.prefix_cache_mb = $cache_mb. \
Constrained: every request carries the same response_format json_schema (an object with a boolean and a string), \
turned into GBNF by llama.cpp's json-schema-to-grammar on both sides and enforced by its grammar sampler. \
Outpost: $outpost_llama. Peer: $peer_version."
    finish_matched "$here/results-grammar.md" \
        --pair "unconstrained" "$results_dir/outpost-serve-free.json" "$results_dir/llama-server-free.json" \
        --pair "json_schema" "$results_dir/outpost-serve-schema.json" "$results_dir/llama-server-schema.json"
fi

measured serve llama-server "$llama_server" -m "$model" -t "$threads" -np "$PARALLEL" \
    -c "$CTX_TOTAL" -b "$BATCH" -ub "$UBATCH" -fa "$FLASH_ATTN" --cache-ram 0 \
    --host 127.0.0.1 --port "$port"
if [[ -n "$outpost_bin" ]]; then
    measured serve outpost-serve "$outpost_bin" serve --model "$model" --threads "$threads" \
        --parallel "$PARALLEL" --ctx-size "$CTX_TOTAL" --batch-size "$BATCH" \
        --ubatch-size "$UBATCH" --flash-attn "$FLASH_ATTN" --host 127.0.0.1 --port "$port"
fi

# --- table ---------------------------------------------------------------------
peer_build=$(python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))[0]; print(t["build_commit"])' \
    "$results_dir/llama-bench-1.json" 2>/dev/null || echo unknown)
outpost_build=""
if [[ -f "$results_dir/outpost-bench-1.json" ]]; then
    outpost_build=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("build", ""))' \
        "$results_dir/outpost-bench-1.json" 2>/dev/null || true)
fi
outpost_build_note=""
if [[ -n "$outpost_build" && "$outpost_llama" != *"$outpost_build"* ]]; then
    outpost_build_note=", build $outpost_build"
fi
header="Outpost vs llama.cpp, $today. CPU: ${cpu:-unknown} ($cores cores), $threads threads. \
Model: $(basename "$model"). Both sides: -b $BATCH -ub $UBATCH -fa $FLASH_ATTN. Single stream: -p $N_PROMPT -n $N_GEN -r $REPS (2 passes). \
Servers: $PARALLEL slots, $CTX_TOTAL-token total context ($((CTX_TOTAL / PARALLEL)) a slot), \
$rounds rounds x $PARALLEL chats, ~800-token shared system prompt, max_tokens $MAX_TOKENS, temperature 0; \
llama-server --cache-ram 0. Both built for x86-64-v3 (AVX2/FMA/F16C), OpenMP. \
Outpost: $outpost_llama$outpost_build_note. \
Peer: $peer_version; llama-bench reports build_commit $peer_build."

report_args=(--llama-bench "$results_dir/llama-bench-1.json"
    --llama-bench "$results_dir/llama-bench-2.json"
    --llama-server "$results_dir/llama-server.json"
    --n-prompt "$N_PROMPT" --n-gen "$N_GEN" --header "$header" --notes "$notes")
if [[ -n "$outpost_bin" ]]; then
    report_args+=(--outpost-bench "$results_dir/outpost-bench-1.json"
        --outpost-bench "$results_dir/outpost-bench-2.json"
        --outpost-serve "$results_dir/outpost-serve.json"
        --out "$here/results.md")
else
    report_args+=(--out "$results_dir/results-peer-only.md")
fi
python3 "$here/report.py" "${report_args[@]}"
if [[ -s "$notes" ]]; then
    die "other processes disturbed some measurements (see the notes under the table); rerun on a quiet machine"
fi
