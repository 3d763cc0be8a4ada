#!/usr/bin/env bash
# Installs what the aarch64 cross build and its qemu test need, at pinned
# versions, when missing: Debian's aarch64 cross gcc/g++ (with the target's
# glibc and libstdc++ under /usr/aarch64-linux-gnu), Debian's rustc-web and
# cargo-web with the aarch64 Rust standard library (arm64 multiarch), and
# qemu-user. The host parts llama.cpp needs (cmake, clang/libclang for
# bindgen) come from scripts/install-deps.sh as for the host build.
#
# The Rust pins move together: libstd-rust-web-dev:arm64 must be the exact
# build of the rustc that compiles against it. Debian bookworm only.
set -euo pipefail

# Bookworm (security) versions this was built and tested with. A point
# release that drops one of these makes apt fail: bump it here after a
# successful `make cross-test`, or override it from the environment.
RUST_WEB_VERSION="${OUTPOST_CROSS_RUST_VERSION:-1.96.0+dfsg1-1~deb12u2}"
GCC_CROSS_VERSION="${OUTPOST_CROSS_GCC_VERSION:-4:12.2.0-3}"
QEMU_VERSION="${OUTPOST_CROSS_QEMU_VERSION:-1:7.2+dfsg-7+deb12u18+b3}"

pinned=(
  "rustc-web=$RUST_WEB_VERSION"
  "cargo-web=$RUST_WEB_VERSION"
  "libstd-rust-web-dev:$(dpkg --print-architecture)=$RUST_WEB_VERSION"
  "libstd-rust-web-dev:arm64=$RUST_WEB_VERSION"
  "gcc-aarch64-linux-gnu=$GCC_CROSS_VERSION"
  "g++-aarch64-linux-gnu=$GCC_CROSS_VERSION"
  "binutils-aarch64-linux-gnu"
  "qemu-user=$QEMU_VERSION"
  "file"
)

installed_version() {
  dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null \
    | awk '$1 == "ii" { print $2; exit }'
}

need=()
for spec in "${pinned[@]}"; do
  pkg="${spec%%=*}"
  want=""
  [[ "$spec" == *=* ]] && want="${spec#*=}"
  have="$(installed_version "$pkg")"
  if [ -z "$have" ] || { [ -n "$want" ] && [ "$have" != "$want" ]; }; then
    need+=("$spec")
  fi
done

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

if ! grep -qs 'VERSION_CODENAME=bookworm' /etc/os-release; then
  echo "error: the cross toolchain pins are Debian 12 (bookworm) packages;" \
    "this system is not bookworm. Install the equivalents of: ${need[*]}" >&2
  exit 1
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "adding the arm64 package architecture (for the aarch64 Rust standard library)"
  $sudo dpkg --add-architecture arm64
fi
echo "installing cross packages: ${need[*]}"
$sudo apt-get update -qq
if ! $sudo apt-get install -y -qq --no-install-recommends --allow-downgrades "${need[@]}" >/dev/null; then
  echo "error: apt could not install the pinned cross packages (${need[*]})." \
    "If bookworm has moved on, see the versions with" \
    "'apt-cache policy rustc-web qemu-user' and set OUTPOST_CROSS_RUST_VERSION /" \
    "OUTPOST_CROSS_QEMU_VERSION (or bump the pins in cross/install-deps.sh)." >&2
  exit 1
fi
