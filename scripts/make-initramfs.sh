#!/usr/bin/env bash
# Builds the busybox initramfs of the hardware acceptance run
# (scripts/hw-acceptance.sh, docs/hardware.md):
#
#   scripts/make-initramfs.sh OUT.cpio.gz
#
# Debian's busybox-static package is fetched with `apt-get download` (no
# installation) into ${WASMVISOR_INITRAMFS_CACHE:-~/.cache/wasmvisor/initramfs},
# so later runs work offline, and unpacked with dpkg-deb. The root holds
# bin/busybox, its applet links and an /init (#!/bin/sh) that mounts proc,
# sys, devtmpfs and a tmpfs on /tmp, prints "wasmvisor-acceptance: start",
# makes the system calls the acceptance run checks for (execve, openat,
# write), leaves a `sleep 30` running, prints "wasmvisor-acceptance: ready"
# (the policies' trigger), waits 2 s, prints "wasmvisor-acceptance: done"
# and resets the machine with `reboot -f` (give the kernel reboot=k).
#
# The archive is `find . | cpio -o -H newc | gzip -9 -n` over a sorted list,
# with every mtime set to ${SOURCE_DATE_EPOCH:-0} and every file owned by
# root, so the same package gives the same bytes. cpio is installed with apt
# if missing (as root, or with sudo). Prints one line: the path and size.
# Exit codes: 0 built, 1 failed, 2 usage.
set -euo pipefail

if [ "$#" -ne 1 ] || [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
    echo "usage: $0 OUT.cpio.gz" >&2
    exit 2
fi
out="$1"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
epoch="${SOURCE_DATE_EPOCH:-0}"
cache="${WASMVISOR_INITRAMFS_CACHE:-${HOME:-/tmp}/.cache/wasmvisor/initramfs}"
mkdir -p "$cache" "$(dirname "$out")"

if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo); fi

# apt-get install PKG..., with one `apt-get update` if the lists lack them.
apt_install() {
    command -v apt-get >/dev/null 2>&1 || {
        echo "$0: $* missing and no apt-get to install it with" >&2
        exit 1
    }
    echo "make-initramfs: installing $*" >&2
    if ! "${SUDO[@]}" apt-get install -y -qq "$@" >&2; then
        "${SUDO[@]}" apt-get update -qq >&2
        "${SUDO[@]}" apt-get install -y -qq "$@" >&2
    fi
}
command -v cpio >/dev/null 2>&1 || apt_install cpio
command -v gzip >/dev/null 2>&1 || apt_install gzip
command -v dpkg-deb >/dev/null 2>&1 || {
    echo "$0: dpkg-deb is missing: this script needs a Debian-based host" >&2
    exit 1
}

cached_deb() {
    find "$cache" -maxdepth 1 -name 'busybox-static_*.deb' | sort -V | tail -n 1
}
deb="$(cached_deb)"
if [ -z "$deb" ]; then
    log="$(mktemp)"
    # `apt-get download` as root warns that _apt cannot write the cache:
    # keep its messages, and show them only if it fails twice.
    if ! (cd "$cache" && apt-get download -qq busybox-static) >"$log" 2>&1; then
        echo "make-initramfs: apt knows no busybox-static yet: running apt-get update" >&2
        "${SUDO[@]}" apt-get update -qq >&2
        if ! (cd "$cache" && apt-get download -qq busybox-static) >"$log" 2>&1; then
            cat "$log" >&2
            rm -f "$log"
            echo "$0: could not download busybox-static" >&2
            exit 1
        fi
    fi
    rm -f "$log"
    deb="$(cached_deb)"
    [ -n "$deb" ] || { echo "$0: apt-get download left no busybox-static_*.deb in $cache" >&2; exit 1; }
fi

work="$(mktemp -d)"
trap 'rm -rf "$work" "$out.tmp.$$"' EXIT
umask 022
dpkg-deb -x "$deb" "$work/deb"
busybox=""
for p in bin/busybox usr/bin/busybox; do
    [ -f "$work/deb/$p" ] && { busybox="$work/deb/$p"; break; }
done
[ -n "$busybox" ] || { echo "$0: no busybox binary in $deb" >&2; exit 1; }

root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,root}
install -m 0755 "$busybox" "$root/bin/busybox"
for applet in sh mount ls cat echo sleep ps reboot poweroff uname; do
    ln -s busybox "$root/bin/$applet"
done
# The console /init writes to: Debian's kernels carry one in their built-in
# initramfs, but an archive of its own does not depend on that. Creating
# the node needs root; without root the built-in one serves.
if [ "$(id -u)" = 0 ]; then
    mknod -m 0600 "$root/dev/console" c 5 1
fi

cat > "$root/init" <<'EOF'
#!/bin/sh
# wasmvisor hardware acceptance guest (scripts/make-initramfs.sh).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
echo "wasmvisor-acceptance: start"
# execve (every command), openat and write, for syscall-tracer.
cat /proc/version
ls /
uname -a
echo hello > /tmp/x
cat /tmp/x
# A distinctive process for linux-tasks to find.
sleep 30 &
echo "wasmvisor-acceptance: ready"
# The policies walk the task list and the syscall table now.
sleep 2
echo "wasmvisor-acceptance: done"
reboot -f
EOF
chmod 0755 "$root/init"
chmod 0700 "$root/root"
chmod 1777 "$root/tmp"

find "$root" -exec touch -h -d "@$epoch" {} +
# GNU cpio's --reproducible numbers the inodes from 1 and zeroes the
# device numbers. (Read its help whole: grep -q would cut the pipe.)
repro=()
case "$(cpio --help 2>&1)" in *--reproducible*) repro=(--reproducible) ;; esac
(cd "$root" && find . | LC_ALL=C sort |
    cpio -o -H newc -R 0:0 "${repro[@]}" --quiet) | gzip -9 -n > "$out.tmp.$$"
mv "$out.tmp.$$" "$out"
version="$(dpkg-deb -f "$deb" Version)"
echo "make-initramfs: $out: $(stat -c %s "$out") bytes (busybox-static $version)"
