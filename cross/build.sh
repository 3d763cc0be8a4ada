#!/usr/bin/env bash
# Builds the `outpost` binary, llama.cpp included, for aarch64 Linux
# (aarch64-unknown-linux-gnu) on an x86-64 Debian 12 host, with Debian's
# cross gcc/g++ and Debian's rustc-web plus its aarch64 standard library
# (cross/install-deps.sh installs them; docs/cross.md explains the choices).
#
#   cross/build.sh [extra cargo args]    -> prints the binary's path last
#
# CARGO_TARGET_DIR is honoured (default: target/ of the repo); the binary is
# $CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/release/outpost.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
# Debian's rustc-web and cargo-web install as /usr/bin/rustc and
# /usr/bin/cargo; rustup's proxies usually come first on PATH, so name them
# by path. The target's std under /usr/lib/rustlib is built by that rustc
# and no other.
RUSTC_BIN="${OUTPOST_CROSS_RUSTC:-/usr/bin/rustc}"
CARGO_BIN="${OUTPOST_CROSS_CARGO:-/usr/bin/cargo}"
RUST_RELEASE="${OUTPOST_CROSS_RUST_RELEASE:-1.96.0}"

fail() {
  echo "error: $*" >&2
  exit 1
}
fix="run 'bash cross/install-deps.sh' (or 'make cross-deps') first"

[ -x "$RUSTC_BIN" ] || fail "no Debian rustc at $RUSTC_BIN; $fix"
[ -x "$CARGO_BIN" ] || fail "no Debian cargo at $CARGO_BIN; $fix"
rustc_version="$("$RUSTC_BIN" --version)"
[[ "$rustc_version" == "rustc $RUST_RELEASE "* ]] \
  || fail "$RUSTC_BIN is '$rustc_version', the cross build is pinned to $RUST_RELEASE; $fix"
sysroot="$("$RUSTC_BIN" --print sysroot)"
ls "$sysroot/lib/rustlib/$TARGET/lib/"libstd-*.rlib >/dev/null 2>&1 \
  || fail "no $TARGET standard library under $sysroot/lib/rustlib; $fix"
for tool in aarch64-linux-gnu-gcc aarch64-linux-gnu-g++ aarch64-linux-gnu-ar; do
  command -v "$tool" >/dev/null || fail "$tool is missing; $fix"
done
command -v cmake >/dev/null || fail "cmake is missing; run 'bash scripts/install-deps.sh'"
command -v clang >/dev/null || fail "clang (libclang, for bindgen) is missing; run 'bash scripts/install-deps.sh'"

# Flags meant for the host must not reach the target: RUSTFLAGS would
# override cross/config.toml, and a target-cpu in it becomes llama.cpp's
# -march; host CFLAGS/CXXFLAGS (say -march=native) would reach every C file.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CFLAGS CXXFLAGS CPPFLAGS LDFLAGS

export RUSTC="$RUSTC_BIN"
# llama.cpp's cmake build: as many jobs as cargo's (the box is shared).
jobs="${OUTPOST_CROSS_JOBS:-$(nproc)}"
export CMAKE_BUILD_PARALLEL_LEVEL="$jobs"

"$CARGO_BIN" build --locked --release -j "$jobs" \
  --config cross/config.toml --target "$TARGET" --bin outpost "$@" >&2

echo "${CARGO_TARGET_DIR:-$PWD/target}/$TARGET/release/outpost"
