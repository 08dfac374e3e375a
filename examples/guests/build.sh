#!/usr/bin/env bash
# Assembles the example guests with binutils alone (as, ld, objcopy).
#
#   examples/guests/build.sh OUT_DIR
#
# produces in OUT_DIR:
#   hello.elf    ELF64, 64-bit long mode, loaded at 1 MiB, entry _start
#   minios.elf   ELF64, 64-bit long mode, loaded at 1 MiB, entry _start;
#                a small higher-half kernel with its own page tables
#   fuzzme.elf   ELF64, 64-bit long mode, loaded at 1 MiB, entry _start;
#                a CPL3 parser fed through the doorbell (docs/doorbell.md)
#   devices.bin  flat, 32-bit protected mode, load at 0x8000, entry = byte 0
#   conformance.bin  flat, 32-bit protected mode, load at 0x8000, entry = byte 0
#   irq.bin      flat, 16-bit real mode, load at 0x8000, entry = byte 0
#   pci.bin      flat, 32-bit protected mode, load at 0x8000, entry = byte 0
#   smp.bin      flat, 16-bit real mode, load at 0x8000, entry = byte 0
#   faults.bin   flat, 16-bit real mode, load at 0x8000, entry = byte 0
#   ticker.bin   flat, 16-bit real mode, load at 0x8000, entry = byte 0
#   reset.bin    flat, 16-bit real mode, load at 0x8000, entry = byte 0
#   bench.bin    flat, load at 0x8000; the benchmark guest, several entry
#                points (real mode at byte 0, protected mode at 0x8008..)
#   pvh-exit.elf ELF32 PVH kernel (boot with --kernel), writes "ok" and
#                ends through the debug-exit port
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi

src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$1"

for tool in as ld objcopy; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "$0: '$tool' not found; install binutils" >&2
        exit 1
    fi
done

mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

ldflags=(-nostdlib -static --build-id=none)

# hello.elf: 64-bit code, hello.ld puts the single PT_LOAD at 0x100000.
as --64 -o "$work/hello.o" "$src/hello.S"
ld -m elf_x86_64 "${ldflags[@]}" -T "$src/hello.ld" \
    -o "$work/hello.elf" "$work/hello.o"

# minios.elf: 64-bit code; minios.ld puts a boot stub at 0x100000 and links
# the kernel in the higher half (load addresses 0x101000 and up).
as --64 -o "$work/minios.o" "$src/minios.S"
ld -m elf_x86_64 "${ldflags[@]}" -T "$src/minios.ld" \
    -o "$work/minios.elf" "$work/minios.o"

# fuzzme.elf: 64-bit code; fuzzme.ld places every page at a fixed address.
# -I: it includes doorbell.inc and embeds fuzzme-seeds/seed-01.bin.
as --64 -I "$src" -o "$work/fuzzme.o" "$src/fuzzme.S"
ld -m elf_x86_64 "${ldflags[@]}" -T "$src/fuzzme.ld" \
    -o "$work/fuzzme.elf" "$work/fuzzme.o"

# pvh-exit.elf: a 32-bit PVH kernel; pvh.ld keeps its Xen note.
as --32 -o "$work/pvh-exit.o" "$src/pvh-exit.S"
ld -m elf_i386 "${ldflags[@]}" -T "$src/pvh.ld" \
    -o "$work/pvh-exit.elf" "$work/pvh-exit.o"

# Flat images: assembled as 32-bit ELF objects (smp.S switches to .code16
# itself), linked at 0x8000 by flat.ld, then stripped to raw bytes.
for guest in devices conformance irq pci smp faults ticker reset bench; do
    as --32 -I "$src" -o "$work/$guest.o" "$src/$guest.S"
    ld -m elf_i386 "${ldflags[@]}" -T "$src/flat.ld" \
        -o "$work/$guest.elf" "$work/$guest.o"
    objcopy -O binary "$work/$guest.elf" "$work/$guest.bin"
    chmod 644 "$work/$guest.bin"    # raw images, not host executables
done

# Publish only once everything built, so OUT_DIR never holds a mix of old
# and new guests after a failed build.
cp "$work/hello.elf" "$work/minios.elf" "$work/fuzzme.elf" "$work/pvh-exit.elf" "$work/devices.bin" "$work/conformance.bin" "$work/irq.bin" "$work/pci.bin" "$work/smp.bin" "$work/faults.bin" \
    "$work/ticker.bin" "$work/reset.bin" "$work/bench.bin" "$out/"
