#!/bin/bash
# shellcheck disable=SC2016 # the single-quoted $VARs are for the maintainer scripts and dpkg-query formats
# Install, upgrade, remove and purge the packages in a throwaway Debian root,
# never on this machine's own system.
#
# usage: sudo packaging/test-install.sh [BINARY]    (default target/release/outpost)
#
# A minimal bookworm (debootstrap --variant=minbase, about a minute, from the
# mirror apt would use; OUTPOST_DEB_MIRROR overrides) is made once under
# OUTPOST_DEB_CACHE (default /var/tmp/outpost-deb-test) and copied afresh for
# each scenario; dpkg runs inside it with chroot, so the maintainer scripts,
# adduser and deb-systemd-helper run for real. systemd is not running there:
# the units are enabled (symlinks) but not started, as in an image build.
#
# Every check prints one line, "ok - ..." or "FAIL - ...", and the first
# failure stops the script with status 1.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
binary=${1:-$repo/target/release/outpost}
cache=${OUTPOST_DEB_CACHE:-/var/tmp/outpost-deb-test}
suite=bookworm

die() { echo "test-install.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (debootstrap and chroot): run it with sudo"
[ -f "$binary" ] || die "$binary: no such file; build it (cargo build --release) or pass its path"
command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install debootstrap"
command -v systemd-analyze >/dev/null || die "systemd-analyze not found: apt-get install systemd"

work=$(mktemp -d /var/tmp/outpost-deb-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
checks=0

pass() { checks=$((checks + 1)); echo "ok - $*"; }
fail() { echo "FAIL - $*" >&2; exit 1; }
check() { # check DESCRIPTION COMMAND...: the command must succeed
	local what=$1
	shift
	if "$@" >/dev/null 2>&1; then pass "$what"; else fail "$what (\`$*\` failed)"; fi
}
check_not() { # check_not DESCRIPTION COMMAND...: the command must fail
	local what=$1
	shift
	if "$@" >/dev/null 2>&1; then fail "$what (\`$*\` succeeded)"; else pass "$what"; fi
}
equal() { # equal DESCRIPTION GOT WANT
	if [ "$2" = "$3" ]; then pass "$1"; else fail "$1 (got '$2', want '$3')"; fi
}

# --- the packages: 0.1.0, and 0.1.1 whose unit (not a conffile) differs ----
echo "# building 0.1.0 and 0.1.1"
"$here/build-deb.sh" "$binary" --version 0.1.0 --out "$work/v0.1.0" --compress gzip \
	--memory-max 900M --hub-memory-max 1200M >/dev/null
"$here/build-deb.sh" "$binary" --version 0.1.1 --out "$work/v0.1.1" --compress gzip \
	--memory-max 1000M --hub-memory-max 1300M >/dev/null
arch=$(dpkg-deb -f "$work"/v0.1.0/outpost_0.1.0_*.deb Architecture)

# --- the units, offline: systemd-analyze verify against a staged root --------
stage=$work/stage
mkdir -p "$stage"
for deb in "$work"/v0.1.0/*.deb; do dpkg-deb -x "$deb" "$stage"; done
# The targets the units name (multi-user, network-online) come from this
# machine's systemd; the units and /usr/bin/outpost from the packages.
cp -an /lib/systemd/system/. "$stage/lib/systemd/system/"
for unit in outpost-device.service outpost-hub.service; do
	# verify exits 0 even on unknown keys and bad values: any output is a finding.
	out=$(cd "$stage" && systemd-analyze verify --root="$stage" "lib/systemd/system/$unit" 2>&1) ||
		fail "systemd-analyze verify $unit: $out"
	[ -z "$out" ] || fail "systemd-analyze verify $unit is not clean: $out"
	pass "systemd-analyze verify $unit: clean"
	score=$(systemd-analyze security --offline=yes --root="$stage" "$stage/lib/systemd/system/$unit" 2>&1 |
		sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
	[ -n "$score" ] || fail "systemd-analyze security gave no exposure score for $unit"
	awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "$unit exposure $score is above 2.0"
	pass "systemd-analyze security $unit: exposure $score (at most 2.0)"
done

# --- the base root ---------------------------------------------------------
if [ ! -x "$cache/root/usr/bin/dpkg" ]; then
	echo "# debootstrap $suite into $cache/root (once)"
	rm -rf "$cache/root.new"
	mkdir -p "$cache"
	# libgomp1 is the one library the binary needs beyond minbase; without it
	# dpkg would (rightly) refuse to configure outpost.
	debootstrap --variant=minbase --include=init-system-helpers,adduser,libgomp1 \
		"$suite" "$cache/root.new" ${OUTPOST_DEB_MIRROR:+"$OUTPOST_DEB_MIRROR"} >"$cache/debootstrap.log" 2>&1 ||
		die "debootstrap failed; see $cache/debootstrap.log"
	mv "$cache/root.new" "$cache/root"
fi

root=""
fresh_root() {
	root=$work/root
	rm -rf "$root"
	cp -a "$cache/root" "$root"
	cp -r "$work/v0.1.0" "$work/v0.1.1" "$root/tmp/"
}
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
as_outpost() { chroot --userspec=outpost:outpost "$root" env -i PATH=/usr/bin:/bin HOME=/var/lib/outpost "$@"; }
dpkg_in_root() { in_root dpkg "$@" </dev/null >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg $*"; }; }
status() { # ii, rc, ...; "un" for a package dpkg no longer knows
	local s
	s=$(in_root dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null | tr -d ' ') || true
	echo "${s:-un}"
}
version() { in_root dpkg-query -W -f='${Version}' "$1"; }
mode() { in_root stat -c '%a %U:%G' "$1"; }
sha() { sha256sum "$root$1" | cut -d' ' -f1; }
wants=/etc/systemd/system/multi-user.target.wants

# A hub run briefly as the service user, on free ports: it writes its real
# database and signing key into /var/lib/outpost/hub.
run_hub() {
	in_root mount -t proc proc /proc 2>/dev/null || mount -t proc proc "$root/proc"
	chroot --userspec=outpost:outpost "$root" env -i PATH=/usr/bin:/bin HOME=/var/lib/outpost \
		OUTPOST_HUB_DEVICE_HTTP=127.0.0.1:0 OUTPOST_HUB_OPERATOR_HTTP=127.0.0.1:0 OUTPOST_HUB_MQTT=127.0.0.1:0 \
		timeout -s INT 8 /usr/bin/outpost --config /etc/outpost/hub.toml hub >"$work/hub.log" 2>&1 || true
	umount "$root/proc"
	[ -s "$root/var/lib/outpost/hub/signing.key" ] || { cat "$work/hub.log" >&2; fail "the hub did not write its signing key"; }
}

# ===========================================================================
echo "# scenario 1: outpost-device install, upgrade, remove, purge"
fresh_root
dpkg_in_root -i /tmp/v0.1.0/outpost_0.1.0_"$arch".deb /tmp/v0.1.0/outpost-device_0.1.0_all.deb
equal "outpost 0.1.0 installed" "$(status outpost) $(version outpost)" "ii 0.1.0"
equal "outpost-device 0.1.0 installed" "$(status outpost-device) $(version outpost-device)" "ii 0.1.0"
equal "the binary runs in the root" "$(in_root outpost --version)" "outpost 0.1.0"
check "a system user 'outpost' exists" in_root getent passwd outpost
uid=$(in_root id -u outpost)
check "its uid $uid is a system uid (< 1000)" test "$uid" -lt 1000
equal "it has no login shell" "$(in_root getent passwd outpost | cut -d: -f7)" "/usr/sbin/nologin"
equal "/var/lib/outpost is the service user's, 0750" "$(mode /var/lib/outpost)" "750 outpost:outpost"
equal "/var/lib/outpost/models is there, 0750" "$(mode /var/lib/outpost/models)" "750 outpost:outpost"
equal "device.toml is readable by the service group only" "$(mode /etc/outpost/device.toml)" "640 root:outpost"
check "device.toml is a conffile" grep -qx /etc/outpost/device.toml "$root/var/lib/dpkg/info/outpost-device.conffiles"
check "device.toml points models_dir at /var/lib/outpost/models" \
	grep -qx 'models_dir = "/var/lib/outpost/models"' "$root/etc/outpost/device.toml"
check "the service user can read device.toml and the binary accepts it (outpost config check)" \
	as_outpost /usr/bin/outpost --config /etc/outpost/device.toml config check
check "the unit is installed" test -f "$root/lib/systemd/system/outpost-device.service"
check "the unit is enabled (deb-systemd-helper)" test -L "$root$wants/outpost-device.service"
check "MemoryMax is 0.1.0's (900M)" grep -qx 'MemoryMax=900M' "$root/lib/systemd/system/outpost-device.service"
check "dpkg --verify: every installed file matches the package's md5sums" \
	sh -c "[ -s '$root/var/lib/dpkg/info/outpost.md5sums' ] && [ -z \"\$(chroot '$root' dpkg --verify outpost outpost-device)\" ]"
check_not "nothing was started: no systemd here" test -d "$root/run/systemd/system"

# The service's data, written as the service user, and a local edit.
as_outpost mkdir -p /var/lib/outpost/agent/artifacts
as_outpost sh -c 'echo outbox > /var/lib/outpost/agent/outbox.sqlite; echo gguf > /var/lib/outpost/models/m.gguf; echo fb > /var/lib/outpost/feedback.sqlite'
sed -i 's/^port = 8080$/port = 8181/' "$root/etc/outpost/device.toml"
echo '# edited on this kiosk' >>"$root/etc/outpost/device.toml"
edited=$(sha /etc/outpost/device.toml)
check "the edited config is still valid" as_outpost /usr/bin/outpost --config /etc/outpost/device.toml config check

dpkg_in_root -i /tmp/v0.1.1/outpost_0.1.1_"$arch".deb /tmp/v0.1.1/outpost-device_0.1.1_all.deb
equal "upgraded to 0.1.1" "$(status outpost-device) $(version outpost-device) $(version outpost)" "ii 0.1.1 0.1.1"
equal "the locally edited conffile survived the upgrade" "$(sha /etc/outpost/device.toml)" "$edited"
check_not "no .dpkg-dist / .dpkg-new left beside it (no conffile prompt)" \
	sh -c "ls '$root'/etc/outpost/*.dpkg-* 2>/dev/null | grep -q ."
check "the unit (not a conffile) was replaced: MemoryMax=1000M" \
	grep -qx 'MemoryMax=1000M' "$root/lib/systemd/system/outpost-device.service"
check "the changelog is 0.1.1's" sh -c "zcat '$root/usr/share/doc/outpost-device/changelog.gz' | grep -q '(0.1.1)'"
equal "the conffile's group and mode survived" "$(mode /etc/outpost/device.toml)" "640 root:outpost"
check "the service's data survived the upgrade" test -s "$root/var/lib/outpost/agent/outbox.sqlite"
check "still enabled after the upgrade" test -L "$root$wants/outpost-device.service"

in_root systemctl disable outpost-device.service >/dev/null 2>&1 || rm -f "$root$wants/outpost-device.service"
dpkg_in_root -i /tmp/v0.1.1/outpost-device_0.1.1_all.deb
check_not "an admin's disable survives a reinstall" test -L "$root$wants/outpost-device.service"

dpkg_in_root -r outpost-device
equal "removed, configuration kept (rc)" "$(status outpost-device)" "rc"
check "remove keeps the edited conffile" test "$(sha /etc/outpost/device.toml)" = "$edited"
check_not "remove takes the unit away" test -e "$root/lib/systemd/system/outpost-device.service"
check "remove keeps /var/lib/outpost" test -s "$root/var/lib/outpost/models/m.gguf"
check "remove keeps the user" in_root getent passwd outpost

dpkg_in_root --purge outpost-device
equal "purged" "$(status outpost-device)" "un"
check_not "purge removes /etc/outpost" test -e "$root/etc/outpost"
check_not "purge removes /var/lib/outpost" test -e "$root/var/lib/outpost"
check_not "purge leaves no unit symlinks in /etc/systemd" \
	sh -c "find '$root/etc/systemd' -name 'outpost-device*' | grep -q ."
check_not "purge leaves no deb-systemd-helper state" \
	sh -c "find '$root/var/lib/systemd/deb-systemd-helper-enabled' '$root/var/lib/systemd/deb-systemd-helper-masked' -name '*outpost-device*' 2>/dev/null | grep -q ."
dpkg_in_root --purge outpost
check_not "purging outpost removes /usr/bin/outpost" test -e "$root/usr/bin/outpost"

# ===========================================================================
echo "# scenario 2: device and hub on one box; purging one keeps the other's data"
fresh_root
dpkg_in_root -i /tmp/v0.1.0/outpost_0.1.0_"$arch".deb /tmp/v0.1.0/outpost-device_0.1.0_all.deb \
	/tmp/v0.1.0/outpost-hub_0.1.0_all.deb
equal "outpost, outpost-device and outpost-hub installed together" \
	"$(status outpost) $(status outpost-device) $(status outpost-hub)" "ii ii ii"
equal "hub.toml is readable by the service group only" "$(mode /etc/outpost/hub.toml)" "640 root:outpost"
check "hub.toml points data_dir at /var/lib/outpost/hub" \
	grep -qx 'data_dir = "/var/lib/outpost/hub"' "$root/etc/outpost/hub.toml"
equal "/var/lib/outpost/hub is the service user's, 0750" "$(mode /var/lib/outpost/hub)" "750 outpost:outpost"
check "the hub unit is enabled" test -L "$root$wants/outpost-hub.service"
run_hub
pass "the hub ran as the service user from /etc/outpost/hub.toml and wrote its signing key"
equal "the signing key is private to the service user" "$(mode /var/lib/outpost/hub/signing.key)" "600 outpost:outpost"
key=$(sha /var/lib/outpost/hub/signing.key)
as_outpost sh -c 'mkdir -p /var/lib/outpost/agent; echo x > /var/lib/outpost/agent/outbox.sqlite; echo gguf > /var/lib/outpost/models/m.gguf'

dpkg_in_root -i /tmp/v0.1.1/outpost_0.1.1_"$arch".deb /tmp/v0.1.1/outpost-hub_0.1.1_all.deb \
	/tmp/v0.1.1/outpost-device_0.1.1_all.deb
equal "both upgraded to 0.1.1" "$(version outpost-device) $(version outpost-hub)" "0.1.1 0.1.1"
equal "the hub's signing key survived the upgrade" "$(sha /var/lib/outpost/hub/signing.key)" "$key"

dpkg_in_root --purge outpost-device
equal "the hub's signing key survives purging outpost-device" "$(sha /var/lib/outpost/hub/signing.key)" "$key"
check "the models stay while the hub is installed" test -s "$root/var/lib/outpost/models/m.gguf"
check_not "the device's own data is gone" test -e "$root/var/lib/outpost/agent"
check_not "device.toml is gone" test -e "$root/etc/outpost/device.toml"
check "hub.toml stays" test -f "$root/etc/outpost/hub.toml"
run_hub
equal "the hub still starts with the same key" "$(sha /var/lib/outpost/hub/signing.key)" "$key"

dpkg_in_root --purge outpost-hub
check_not "purging the last service removes /var/lib/outpost" test -e "$root/var/lib/outpost"
check_not "and /etc/outpost" test -e "$root/etc/outpost"

echo "# all $checks checks passed"
