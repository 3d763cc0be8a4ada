#!/usr/bin/env bash
# Checks an aarch64 `outpost` built by cross/build.sh, then runs it under
# qemu-user as a Cortex-A53 (armv8.0-a: no dotprod, no fp16 arithmetic, no
# LSE atomics) and asks it the France question with the default model.
#
#   cross/test.sh path/to/aarch64/outpost
#
# Checks: an aarch64 ELF with glibc's aarch64 loader as interpreter, every
# shared library it needs present in the cross sysroot, llama.cpp configured
# with GGML_NATIVE=OFF and -march=armv8-a, no instruction beyond armv8.0-a
# in the disassembly, and "Paris" in the answer.
set -euo pipefail

bin="${1:?usage: cross/test.sh path/to/aarch64/outpost}"
[ -f "$bin" ] || { echo "error: no binary at $bin; build it with cross/build.sh" >&2; exit 1; }
SYSROOT=/usr/aarch64-linux-gnu
CPU="${OUTPOST_CROSS_QEMU_CPU:-cortex-a53}"
failures=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; failures=$((failures + 1)); }

echo "== $bin ($(du -h "$bin" | cut -f1), $(stat -c %s "$bin") bytes)"
kind="$(file -b "$bin")"
if [[ "$kind" == *"ELF 64-bit LSB"*"ARM aarch64"* ]]; then ok "file: $kind"; else bad "file: $kind"; fi

machine="$(readelf -h "$bin" | awk -F: '/Machine:/ { gsub(/^ +/, "", $2); print $2 }')"
[ "$machine" = "AArch64" ] && ok "ELF machine: $machine" || bad "ELF machine: $machine (want AArch64)"

interp="$(readelf -l "$bin" | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')"
[ "$interp" = "/lib/ld-linux-aarch64.so.1" ] && ok "interpreter: $interp" \
  || bad "interpreter: '$interp' (want /lib/ld-linux-aarch64.so.1)"

needed="$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
missing=""
for lib in $needed; do
  [ -e "$SYSROOT/lib/$lib" ] || missing+=" $lib"
done
[ -z "$missing" ] && ok "shared libraries (all in $SYSROOT/lib): $needed" \
  || bad "shared libraries not in $SYSROOT/lib:$missing"

# llama.cpp's own configuration, from the cmake build beside the binary.
build_root="$(dirname "$bin")/build"
cache="$(ls -t "$build_root"/llama-cpp-sys-2-*/out/build/CMakeCache.txt 2>/dev/null | head -1 || true)"
if [ -z "$cache" ]; then
  bad "no llama.cpp CMakeCache.txt under $build_root (was the binary built elsewhere?)"
else
  grep -q '^GGML_NATIVE:BOOL=OFF$' "$cache" && ok "GGML_NATIVE=OFF" || bad "GGML_NATIVE is not OFF in $cache"
  arch="$(sed -n 's/^GGML_CPU_ARM_ARCH:[A-Z]*=//p' "$cache")"
  [ "$arch" = "armv8-a" ] && ok "GGML_CPU_ARM_ARCH=$arch" || bad "GGML_CPU_ARM_ARCH='$arch' (want armv8-a)"
  flags="$(find "$(dirname "$cache")/ggml/src" -path '*ggml-cpu*' -name flags.make -exec cat {} + 2>/dev/null)"
  if grep -q -- '-march=armv8-a' <<<"$flags" && ! grep -qE -- '-m(arch|cpu|tune)=native' <<<"$flags"; then
    ok "ggml-cpu compiled with -march=armv8-a, no native flags"
  else
    bad "ggml-cpu compile flags lack -march=armv8-a or carry a native flag: $(grep -hoE -- '-m(arch|cpu|tune)=[^ ]+' <<<"$flags" | sort -u | tr '\n' ' ')"
  fi
fi

# Instructions beyond armv8.0-a that a compiler emits on its own for a later
# -march: dot products and int8/bf16 matrix multiplies (v8.2+/v8.6), fp16
# arithmetic (v8.2 +fp16) and SVE. LSE atomics are not listed: Rust's std and
# libgcc carry them behind a run-time check (outline atomics), which the
# Cortex-A53 run below exercises.
beyond='\s(sdot|udot|usdot|sudot|smmla|ummla|usmmla|bfdot|bfmmla|bfmlal[bt]|bfcvtn2?|fmlal2?|fmlsl2?)\s'
fp16='\s(fadd|fsub|fmul|fmla|fmls|fdiv|fmax|fmin|fmaxnm|fminnm|fabd|fneg|fabs|fsqrt|faddp|fcmeq|fcmgt|fcmge)\s+(v[0-9]+\.(4h|8h)|h[0-9]+),'
sve='\sz[0-9]+\.[bhsdq]\b'
# Functions allowed to hold such instructions, because nothing reaches them
# on a CPU without the feature:
# - half's *_fp16 arithmetic: half calls it only after
#   is_aarch64_feature_detected!("fp16").
# - candle-core's SDOT helpers (quantized::neon::vdotq_s32*): called only by
#   candle's quantized vec_dot (a quantized matmul, no run-time check there),
#   which Outpost never runs: `outpost quant` uses candle to quantize and write
#   GGUF, and llama.cpp does all inference.
allowed='half[0-9]+binary16[0-9]+arch[0-9]+aarch64[0-9]+[a-z0-9_]+_fp16|candle_core[0-9]+quantized[0-9]+neon[0-9]+vdotq_s32'
dis="$(mktemp)"
trap 'rm -f "$dis"' EXIT
aarch64-linux-gnu-objdump -d --no-show-raw-insn "$bin" >"$dis"
# "function<TAB>instruction" for every hit.
hits="$(awk '/^[0-9a-f]+ <.*>:$/ { fn = $2; next } { print fn "\t" $0 }' "$dis" \
  | grep -E "$beyond|$fp16|$sve" || true)"
stray="$(grep -vE "^<_ZN[0-9]+($allowed)" <<<"$hits" | grep . || true)"
known="$(grep -cE "^<_ZN[0-9]+($allowed)" <<<"$hits" || true)"
if [ -z "$stray" ]; then
  ok "no dotprod/i8mm/bf16/fp16-arithmetic/SVE instruction in $(wc -l <"$dis") disassembled lines outside the $known allowed ones (half's run-time-detected fp16, candle's unreached SDOT helpers)"
else
  bad "$(wc -l <<<"$stray") instructions beyond armv8.0-a, e.g.: $(head -3 <<<"$stray" | tr -s ' \t' ' ')"
fi

# The binary itself, on an emulated armv8.0-a core: a CPU without the
# features above raises SIGILL on any of them, so this proves the baseline
# for the code paths a question takes.
# LD_LIBRARY_PATH keeps the guest on the cross sysroot's glibc, the build of
# its loader: with the arm64 multiarch libc6 installed (a dependency of the
# aarch64 Rust std), the host's ld.so.cache sends the loader to
# /lib/aarch64-linux-gnu/libc.so.6, another glibc build, and the mixed pair
# spins forever in pthread_create.
qemu=(qemu-aarch64 -cpu "$CPU" -L "$SYSROOT" -E "LD_LIBRARY_PATH=$SYSROOT/lib")
"${qemu[@]}" "$bin" --version >/dev/null && ok "runs under qemu-aarch64 -cpu $CPU" || bad "does not start under qemu-aarch64 -cpu $CPU"
# The default generator, verified by the aarch64 binary (fetched if missing).
model="$("${qemu[@]}" "$bin" models fetch | tail -1 | cut -f2)"
echo "     default model: $model"
start=$(date +%s.%N)
answer="$("${qemu[@]}" "$bin" ask --temperature 0 --max-tokens 64 "What is the capital of France?")" || true
secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
if [[ "$answer" == *Paris* ]]; then
  ok "answered in ${secs}s under qemu -cpu $CPU: $answer"
else
  bad "answer in ${secs}s does not mention Paris: $answer"
fi

if [ "$failures" -gt 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all cross checks passed"
