# Run by the image builder inside a throwaway Debian trixie build chroot (image-builder/src/debian.rs,
# `build_in_chroot`): iptables' legacy backend from the source Debian ships, linked static into one
# program, left in /out. dockerd runs about 140 iptables commands as it starts, and under emulation the
# start of a dynamically linked program costs more than the rule it adds (docs/decisions.md,
# "A static iptables").
set -eu
mkdir -p /build /out
cd /build
# Only the upstream tarball is fetched, checked against the hash in Debian's signed source index (some
# mirrors and proxies serve no .dsc); Debian's own patches are not applied.
die() { echo "iptables-static.sh: $*" >&2; exit 1; }
version=$(apt-cache showsrc --only-source iptables | sed -n 's/^Version: //p' | head -1)
[ -n "$version" ] || die "the mirror's source index has no iptables: is a deb-src line for trixie main reachable?"
line=$(apt-get source --print-uris --only-source "iptables=$version" | grep "\.orig\.tar\.[a-z0-9]*' ") ||
    die "Debian's source index names no upstream tarball for iptables $version"
url=$(echo "$line" | cut -d"'" -f2)
file=$(echo "$line" | cut -d' ' -f2)
hash=$(echo "$line" | cut -d' ' -f4)
/usr/lib/apt/apt-helper download-file "$url" "$file" "$hash" >/dev/null
tar -xf "$file"
cd iptables-*/
# Same bytes wherever it is built: no build path or date in the program.
CFLAGS="-O2 -g0 -ffile-prefix-map=$PWD=." ./configure --quiet --prefix=/usr --sbindir=/usr/sbin \
    --disable-nftables --disable-connlabel --enable-static --disable-shared
# (glibc's warnings about NSS in a static program are expected: the image has the same glibc's modules.)
make -j"$(nproc)" LDFLAGS=-all-static >/tmp/make.log 2>&1 || { tail -40 /tmp/make.log >&2; exit 1; }
strip --strip-all -o /out/xtables-legacy-multi iptables/xtables-legacy-multi
echo "$version" >/out/version
echo "$file $hash" >/out/source
# It must start without a loader and know both address families.
/out/xtables-legacy-multi iptables -V
/out/xtables-legacy-multi ip6tables -V
