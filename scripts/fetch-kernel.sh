#!/usr/bin/env bash
# Fetches a stock Debian cloud kernel for the Linux boot tests:
#
#   scripts/fetch-kernel.sh OUT_DIR
#
# writes OUT_DIR/vmlinuz (a bzImage), OUT_DIR/vmlinux (the ELF kernel inside
# it, for the PVH boot) and OUT_DIR/version. The newest
# linux-image-*-cloud-amd64-unsigned package apt knows is downloaded with
# `apt-get download` (no installation) and unpacked with dpkg-deb. The
# .deb is cached in ${WASMVISOR_KERNEL_CACHE:-~/.cache/wasmvisor/kernels},
# so later runs work offline; an existing OUT_DIR/vmlinuz is kept.
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
out="$1"

# The bzImage's payload is the compressed ELF vmlinux: find a compressed
# stream's magic, decompress from there, and keep the first that is an ELF
# (as the kernel's scripts/extract-vmlinux does). Decompressors complain
# about the bytes after the stream, so their status is not the test.
extract_vmlinux() {
    local img="$1" dst="$2" magic tool off
    for spec in '\x02\x21\x4c\x18:lz4 -dc' '\x1f\x8b\x08:gzip -dc' \
                '\xfd\x37\x7a\x58\x5a\x00:xz -dc' '\x28\xb5\x2f\xfd:zstd -dc'; do
        magic="${spec%%:*}"
        tool="${spec#*:}"
        command -v "${tool%% *}" >/dev/null 2>&1 || continue
        for off in $(LC_ALL=C grep -aobUP "$magic" "$img" | cut -d: -f1); do
            tail -c "+$((off + 1))" "$img" | $tool > "$dst.tmp" 2>/dev/null || true
            if [ "$(head -c 4 "$dst.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
                mv "$dst.tmp" "$dst"
                return 0
            fi
        done
    done
    rm -f "$dst.tmp"
    echo "$0: found no ELF vmlinux inside $img (need lz4, gzip, xz or zstd)" >&2
    return 1
}

if [ -s "$out/vmlinuz" ]; then
    [ -s "$out/vmlinux" ] || extract_vmlinux "$out/vmlinuz" "$out/vmlinux"
    exit 0
fi
cache="${WASMVISOR_KERNEL_CACHE:-${HOME:-/tmp}/.cache/wasmvisor/kernels}"
mkdir -p "$out" "$cache"

newest() {
    apt-cache search --names-only '^linux-image-[0-9.]+-[0-9]+-cloud-amd64-unsigned$' 2>/dev/null |
        awk '{print $1}' | sort -V | tail -n 1
}

deb="$(ls -1 "$cache"/linux-image-*-cloud-amd64-unsigned_*.deb 2>/dev/null | sort -V | tail -n 1 || true)"
if [ -z "$deb" ]; then
    pkg="$(newest)"
    if [ -z "$pkg" ]; then
        if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
        $SUDO apt-get update -qq
        pkg="$(newest)"
    fi
    if [ -z "$pkg" ]; then
        echo "$0: no linux-image-*-cloud-amd64-unsigned package in the apt sources" >&2
        exit 1
    fi
    echo "fetch-kernel: downloading $pkg" >&2
    (cd "$cache" && apt-get download -qq "$pkg" 2>/dev/null)
    deb="$(ls -1 "$cache"/"$pkg"_*.deb | sort -V | tail -n 1)"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work"
kernel="$(ls -1 "$work"/boot/vmlinuz-* | head -n 1)"
cp "$kernel" "$out/vmlinuz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
basename "$kernel" | sed 's/^vmlinuz-//' > "$out/version"
extract_vmlinux "$out/vmlinuz" "$out/vmlinux"
echo "fetch-kernel: $(cat "$out/version") -> $out/vmlinuz, $out/vmlinux" >&2
