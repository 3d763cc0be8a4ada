#!/bin/bash
# shellcheck disable=SC2016 # the single-quoted $VARs are for the maintainer scripts and dpkg-query formats
# Build the Debian packages with plain dpkg-deb:
#   outpost          the binary (/usr/bin/outpost), for one architecture
#   outpost-device   the device service: unit, /etc/outpost/device.toml
#   outpost-hub      the hub service: unit, /etc/outpost/hub.toml
# The two service packages are Architecture: all and depend on `outpost` of
# the same version; they can be installed together on one box.
#
# usage: packaging/build-deb.sh [options] BINARY
#   BINARY                 the outpost executable to ship (any architecture)
#   --arch ARCH            its Debian architecture (default: dpkg --print-architecture)
#   --version VERSION      package version (default: the workspace's Cargo.toml version)
#   --out DIR              where the .deb files go (default: target/deb)
#   --model GGUF           the generator the device runs, for MemoryMax (default:
#                          the catalog's default generator in OUTPOST_MODELS_DIR
#                          or ~/.cache/outpost/models)
#   --embedder GGUF        the device's embedder, added to MemoryMax (default: the
#                          catalog's all-minilm-l6-v2 there, if fetched)
#   --memory-max SIZE      the device's MemoryMax= instead of the computed one
#                          (e.g. from `outpost models recommend --json`): bytes or 512M / 2G
#   --hub-memory-max SIZE  the hub's MemoryMax= instead of the computed one
#   --compress TYPE        xz (default, smallest), gzip or none (the tests' quick builds)
# The MemoryMax formula is in packaging/memory-max.py and docs/packaging.md.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

die() { echo "build-deb.sh: $*" >&2; exit 1; }

arch="" version="" out="$repo/target/deb" model="" embedder="" memory_max="" hub_memory_max="" binary="" compress=xz
while [ $# -gt 0 ]; do
	case "$1" in
	--arch) arch=${2:?--arch needs a value}; shift 2 ;;
	--version) version=${2:?--version needs a value}; shift 2 ;;
	--out) out=${2:?--out needs a folder}; shift 2 ;;
	--model) model=${2:?--model needs a GGUF file}; shift 2 ;;
	--embedder) embedder=${2:?--embedder needs a GGUF file}; shift 2 ;;
	--memory-max) memory_max=${2:?--memory-max needs a size}; shift 2 ;;
	--hub-memory-max) hub_memory_max=${2:?--hub-memory-max needs a size}; shift 2 ;;
	--compress) compress=${2:?--compress needs xz, gzip or none}; shift 2 ;;
	-h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	-*) die "unknown option $1 (see --help)" ;;
	*) [ -z "$binary" ] || die "one BINARY only (got $binary and $1)"; binary=$1; shift ;;
	esac
done
[ -n "$binary" ] || die "no BINARY given: pass the outpost executable, e.g. target/release/outpost"
[ -f "$binary" ] || die "$binary: no such file (build it first: cargo build --release)"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found: install dpkg"
command -v readelf >/dev/null || die "readelf not found: install binutils"
case "$compress" in xz | gzip | none) ;; *) die "--compress $compress: use xz, gzip or none" ;; esac
arch=${arch:-$(dpkg --print-architecture)}
version=${version:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n1)}
[[ $version =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || die "version '$version' is not a Debian version (e.g. 0.1.0)"

# The ELF machine must be the one the architecture name says.
machine=$(readelf -h "$binary" | sed -n 's/^ *Machine: *//p')
case "$arch" in
amd64) want="Advanced Micro Devices X86-64" triplet=x86_64-linux-gnu ;;
arm64) want="AArch64" triplet=aarch64-linux-gnu ;;
armhf) want="ARM" triplet=arm-linux-gnueabihf ;;
riscv64) want="RISC-V" triplet=riscv64-linux-gnu ;;
*) die "architecture '$arch' is not one this script knows (amd64, arm64, armhf, riscv64)" ;;
esac
[ "$machine" = "$want" ] || die "$binary is a '$machine' binary, not $arch ('$want'); pass the matching --arch"

models_dir=${OUTPOST_MODELS_DIR:-$HOME/.cache/outpost/models}
catalog_file() { # the GGUF of a fetched catalog model, or nothing
	find "$models_dir/$1" -maxdepth 1 -name '*.gguf' 2>/dev/null | sort | head -n1
}

to_bytes() { # 512M, 2G, 1073741824 -> bytes
	case "$1" in
	*[Kk]) echo $((${1%?} * 1024)) ;;
	*[Mm]) echo $((${1%?} * 1024 * 1024)) ;;
	*[Gg]) echo $((${1%?} * 1024 * 1024 * 1024)) ;;
	*[!0-9]* | "") die "size '$1' is not bytes or a number with K, M or G" ;;
	*) echo "$1" ;;
	esac
}

# MemoryMax: computed from the model unless given.
device_formula="MemoryMax given to build-deb.sh (--memory-max)"
hub_formula="MemoryMax given to build-deb.sh (--hub-memory-max)"
if [ -z "$memory_max" ] || [ -z "$hub_memory_max" ]; then
	if [ -z "$model" ]; then
		default=$(sed -n 's/^default_generator *= *"\(.*\)"/\1/p' "$repo/models/catalog.toml")
		model=$(catalog_file "$default")
		[ -n "$model" ] || die "no model to size MemoryMax from: '$default' is not in $models_dir; run \`outpost models fetch $default\`, or pass --model FILE.gguf, or --memory-max SIZE and --hub-memory-max SIZE"
	fi
	[ -f "$model" ] || die "--model $model: no such file"
	if [ -z "$embedder" ]; then
		embedder=$(catalog_file all-minilm-l6-v2)
		[ -n "$embedder" ] || embedder=$(find "$models_dir" -maxdepth 1 -name 'all-minilm-l6-v2*.gguf' | head -n1)
	fi
	emb_args=()
	[ -n "$embedder" ] && emb_args=(--embedder "$embedder")
	if [ -z "$memory_max" ]; then
		memory_max=$(python3 "$here/memory-max.py" --model "$model" "${emb_args[@]}" --config "$repo/configs/device.toml" --explain)
		device_formula="MemoryMax = model + KV(ctx_per_slot*parallel) + prefix cache + embedder + 256 MiB + 25%: $(basename "$model")"
	fi
	if [ -z "$hub_memory_max" ]; then
		# The hub itself (512 MiB: SQLite, broker, uploads) plus one evaluation
		# child: `outpost eval run --parallel 1` at the hub's evaluation ctx_size.
		hub_memory_max=$(python3 "$here/memory-max.py" --model "$model" "${emb_args[@]}" --ctx-total 2048 --extra-mib 512 --explain)
		hub_formula="MemoryMax = 512 MiB + one eval child (model + KV(2048) + prefix cache + embedder + 256 MiB + 25%): $(basename "$model")"
	fi
fi
memory_max=$(to_bytes "$memory_max")
hub_memory_max=$(to_bytes "$hub_memory_max")
mib() { echo "$(($1 / 1024 / 1024))M"; }

# Shared library dependencies, from the ELF's version needs (readelf reads any
# architecture, unlike dpkg-shlibdeps, which needs the target's libraries).
needed=$(readelf -d "$binary" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')
glibc=$(readelf -V -W "$binary" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)
deps="libc6 (>= ${glibc:-2.31})"
for lib in $needed; do
	case "$lib" in
	libc.so.* | libm.so.* | ld-linux* | libpthread.so.* | libdl.so.*) ;;
	libstdc++.so.6)
		cxx=$(readelf -V -W "$binary" | grep -o 'GLIBCXX_3\.4\.[0-9]*' | sed 's/GLIBCXX_3\.4\.//' | sort -n | tail -n1)
		# GLIBCXX_3.4.N first shipped with GCC: 26->9, 28->10, 29->11, 30->12, 31->13, 32->13.2, 33->14
		case "${cxx:-0}" in 33) g=14 ;; 31 | 32) g=13 ;; 30) g=12 ;; 29) g=11 ;; 28) g=10 ;; *) g=9 ;; esac
		deps="$deps, libstdc++6 (>= $g)" ;;
	libgcc_s.so.1) deps="$deps, libgcc-s1" ;;
	libgomp.so.1) deps="$deps, libgomp1" ;;
	*) die "$binary needs $lib, which this script cannot map to a package; add it to build-deb.sh" ;;
	esac
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

maintainer="Outpost maintainers <outpost@example.invalid>"
date_r=$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}")

doc() { # doc ROOT PACKAGE: copyright and changelog, as policy asks
	local d="$1/usr/share/doc/$2"
	install -d -m 0755 "$d"
	cat >"$d/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: outpost

Files: *
Copyright: 2026 Outpost contributors
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 can be found in
 /usr/share/common-licenses/Apache-2.0.
EOF
	printf '%s (%s) stable; urgency=medium\n\n  * Outpost %s.\n\n -- %s  %s\n' \
		"$2" "$version" "$version" "$maintainer" "$date_r" | gzip -9n >"$d/changelog.gz"
	chmod 0644 "$d/copyright" "$d/changelog.gz"
}

control() { # control ROOT PACKAGE ARCH DEPENDS DESCRIPTION...
	local root=$1 pkg=$2 a=$3 dep=$4
	shift 4
	install -d -m 0755 "$root/DEBIAN"
	local size
	size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
	{
		echo "Package: $pkg"
		echo "Version: $version"
		echo "Architecture: $a"
		echo "Maintainer: $maintainer"
		echo "Installed-Size: $size"
		echo "Depends: $dep"
		echo "Section: misc"
		echo "Priority: optional"
		echo "Homepage: https://example.invalid/outpost"
		echo "Description: $1"
		shift
		for line in "$@"; do echo " $line"; done
	} >"$root/DEBIAN/control"
}

# Fill a template: @NAME@ -> value, values given as NAME=value arguments;
# @SANDBOX@ is the shared sandbox block. Fails on a placeholder left over.
fill() {
	local src=$1 dst=$2
	shift 2
	python3 - "$src" "$dst" "$here/systemd/sandbox.inc" "$@" <<'EOF'
import re, sys
src, dst, sandbox, *pairs = sys.argv[1:]
text = open(src).read()
values = dict(p.split("=", 1) for p in pairs)
values.setdefault("SANDBOX", open(sandbox).read().rstrip("\n"))
for k, v in values.items():
    text = text.replace(f"@{k}@", v)
left = re.findall(r"@[A-Z_]+@", text)
if left:
    sys.exit(f"build-deb.sh: {src}: no value for {', '.join(sorted(set(left)))}")
open(dst, "w").write(text)
EOF
}

# A config from configs/ with one key's value replaced; the key must be there.
conffile() { # conffile SRC DST KEY-LINE-REGEX NEW-LINE
	local src=$1 dst=$2 pattern=$3 line=$4
	grep -qE "$pattern" "$src" || die "$src has no line matching '$pattern': update build-deb.sh"
	install -d -m 0755 "$(dirname "$dst")"
	sed -E "s|$pattern|$line|" "$src" >"$dst"
	chmod 0640 "$dst"
}

strip_binary() { # strip like dh_strip, with the target's strip when cross-building
	local tool=""
	if [ "$arch" = "$(dpkg --print-architecture)" ] && command -v strip >/dev/null; then
		tool="strip"
	elif command -v "$triplet-strip" >/dev/null; then
		tool=$triplet-strip
	fi
	if [ -n "$tool" ]; then
		"$tool" --remove-section=.comment --remove-section=.note --strip-unneeded "$1"
	else
		echo "build-deb.sh: no strip for $arch ($triplet-strip): shipping the binary unstripped" >&2
	fi
}

# --- outpost: the binary ----------------------------------------------------
root=$work/outpost
install -d -m 0755 "$root/usr/bin"
install -m 0755 "$binary" "$root/usr/bin/outpost"
strip_binary "$root/usr/bin/outpost"
doc "$root" outpost
install -m 0644 "$repo/docs/packaging.md" "$root/usr/share/doc/outpost/packaging.md"
control "$root" outpost "$arch" "$deps" \
	"offline LLM runtime for kiosks and on-prem appliances" \
	"Outpost runs a quantized GGUF model through llama.cpp behind an" \
	"OpenAI-compatible API, answers from a local knowledge base, and syncs" \
	"models, adapters and knowledge bases with a fleet hub over MQTT." \
	"." \
	"This package holds the outpost command. The services are in" \
	"outpost-device and outpost-hub."

# --- the two services -------------------------------------------------------
service() { # service PACKAGE UNIT CONFNAME OTHER STATE_DIRS PURGE_OWN MEMORY FORMULA SUMMARY DESCRIPTION...
	local pkg=$1 unit=$2 conf=$3 other=$4 state_dirs=$5 purge_own=$6 mem=$7 formula=$8
	shift 8
	local root=$work/$pkg
	install -d -m 0755 "$root/lib/systemd/system"
	fill "$here/systemd/$unit.in" "$root/lib/systemd/system/$unit" \
		"MEMORY_MAX=$(mib "$mem")" "MEMORY_FORMULA=$formula"
	chmod 0644 "$root/lib/systemd/system/$unit"
	doc "$root" "$pkg"
	install -d -m 0755 "$root/DEBIAN"
	echo "/etc/outpost/$conf" >"$root/DEBIAN/conffiles"
	for script in postinst prerm postrm; do
		fill "$here/maintainer/$script.in" "$root/DEBIAN/$script" \
			"PACKAGE=$pkg" "UNIT=$unit" "CONFFILE=/etc/outpost/$conf" "OTHER_PACKAGE=$other" \
			"STATE_DIRS=$state_dirs" "PURGE_OWN=$purge_own"
		chmod 0755 "$root/DEBIAN/$script"
	done
	control "$root" "$pkg" all "outpost (= $version), adduser" "$@"
}

root=$work/outpost-device
conffile "$repo/configs/device.toml" "$root/etc/outpost/device.toml" \
	'^models_dir = ""$' 'models_dir = "/var/lib/outpost/models"'
service outpost-device outpost-device.service device.toml outpost-hub \
	"/var/lib/outpost/models" \
	'		# Everything but the hub'"'"'s folder (its signing key) and the models.
		find "$STATE" -mindepth 1 -maxdepth 1 ! -name hub ! -name models -exec rm -rf {} +' \
	"$memory_max" "$device_formula" \
	"Outpost device service: offline LLM API and fleet agent" \
	"Runs \`outpost serve\` as a hardened systemd service with the configuration" \
	"in /etc/outpost/device.toml and its data (models, knowledge bases, the" \
	"fleet agent's store, feedback) in /var/lib/outpost."

root=$work/outpost-hub
conffile "$repo/configs/hub.toml" "$root/etc/outpost/hub.toml" \
	'^data_dir = "hub-data"$' 'data_dir = "/var/lib/outpost/hub"'
service outpost-hub outpost-hub.service hub.toml outpost-device \
	"/var/lib/outpost/hub /var/lib/outpost/models" \
	'		rm -rf "$STATE/hub"' \
	"$hub_memory_max" "$hub_formula" \
	"Outpost fleet hub: MQTT broker, signed artifacts, admin API" \
	"Runs \`outpost hub\` as a hardened systemd service with the configuration" \
	"in /etc/outpost/hub.toml and its database, signing key and artifact" \
	"store in /var/lib/outpost/hub."

for pkg in outpost outpost-device outpost-hub; do
	a=$arch
	[ "$pkg" = outpost ] || a=all
	deb="$out/${pkg}_${version}_${a}.deb"
	# md5sums of every file but the conffiles (dpkg keeps theirs itself), as dh_md5sums.
	(cd "$work/$pkg" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' | sort -z |
		xargs -0r md5sum >DEBIAN/md5sums)
	chmod 0644 "$work/$pkg/DEBIAN/md5sums"
	dpkg-deb --root-owner-group "-Z$compress" --build "$work/$pkg" "$deb" >/dev/null
	echo "$deb"
done
echo "build-deb.sh: MemoryMax device $(mib "$memory_max"), hub $(mib "$hub_memory_max")" >&2
