# bench.S - the benchmark guest (`make bench`, bench/): tight loops of port,
# MSR and MMIO writes, a start-up probe that prints one line, and a guest
# that spins for memory measurements. One flat image, several entry points.
#
# Entry points (flat image at 0x8000; pick one with --entry and --mode):
#
#   0x8000  real mode       start-up probe: prints "bench: up\n" on COM1,
#                           then halts. The default entry of a flat image,
#                           and the one QEMU runs (docs/performance.md).
#   0x8008  protected mode  dispatch: marker 1, N OUTs to port 0x3ff,
#                           marker 2, N WRMSRs to MSR 0x50000000, marker 3,
#                           N 32-bit stores to 0xd0000010, marker 4, halt.
#   0x8010  protected mode  filtering: marker 5, N WRMSRs to IA32_SYSENTER_CS
#                           (0x174, an MSR KVM implements), marker 6, N OUTs
#                           to port 0x80, marker 7, halt.
#   0x8018  protected mode  spin: OUT to port 0x3ff forever, on every vCPU.
#   0x8020  protected mode  dirty: one dword store into each of N pages from
#                           1 MiB (0x100000, 0x101000, ...), over and over;
#                           a snapshot reset finds exactly N pages written.
#                           One vCPU.
#   0x8028  protected mode  chatter: writes "\n" to COM1 forever, so a VM
#                           resumed from a snapshot at any point prints a
#                           line (a whole one: the console flushes at each
#                           newline) at once. One vCPU.
#
# N is the 32-bit little-endian count at 0x8038 (image offset 0x38), right
# after the magic "WVBENCH\0" at 0x8030, so a harness can patch it into a
# copy of the image. Markers are byte OUTs to port 0x81 with the phase
# number in AL; a harness that answers port 0x81 natively timestamps them.
#
# No stack and no memory writes on the measured paths (but for dirty's own
# stores), so any number of vCPUs can run the same code. Only plain integer
# instructions: on the software KVM backend every instruction goes through
# KVM's emulator.
#
# Assembled with `as --32` directly (not preprocessed); see build.sh.

    .intel_syntax noprefix

    .equ COM1_THR, 0x3f8            # transmit holding register
    .equ COM1_LSR, 0x3fd            # line status register
    .equ COM1_SCR, 0x3ff            # scratch register: the port-write target
    .equ LSR_THRE, 0x20             # THR empty: ready for the next byte
    .equ MARKER, 0x81               # phase markers
    .equ FILTER_PORT, 0x80          # port of the filtering phase
    .equ VIRT_MSR, 0x50000000       # an MSR KVM does not know
    .equ KVM_MSR, 0x174             # IA32_SYSENTER_CS: KVM handles it
    .equ MMIO_TARGET, 0xd0000010    # above RAM: every store exits
    .equ DIRTY_BASE, 0x100000       # dirty's first page (1 MiB)
    .equ PAGE_SIZE, 0x1000

    .section .text.entry, "ax"      # flat.ld places this first: entry = byte 0
    .globl _start

# --- entry table: one 8-byte slot per entry point ----------------------------
    .code16
_start:                             # 0x8000
    jmp startup16
    .balign 8
    .code32
entry_dispatch:                     # 0x8008
    jmp dispatch32
    .balign 8
entry_filter:                       # 0x8010
    jmp filter32
    .balign 8
entry_spin:                         # 0x8018
    jmp spin32
    .balign 8
entry_dirty:                        # 0x8020
    jmp dirty32
    .balign 8
entry_chatter:                      # 0x8028
    jmp chatter32
    .org 0x30, 0xcc                 # pad to 0x8030
params:                             # 0x8030
    .ascii "WVBENCH\0"
count:                              # 0x8038
    .long 100000
    .long 0

# --- start-up probe (real mode) ---------------------------------------------
    .code16
startup16:
    mov bx, offset s_up
1:  mov al, byte ptr [bx]
    test al, al
    jz 3f
    mov ah, al
    mov dx, COM1_LSR
2:  in al, dx
    test al, LSR_THRE
    jz 2b
    mov al, ah
    mov dx, COM1_THR
    out dx, al
    add bx, 1
    jmp 1b
3:  hlt
    jmp 3b

# --- dispatch (protected mode) ----------------------------------------------
    .code32
dispatch32:
    mov al, 1
    out MARKER, al
    mov ebx, dword ptr [count]
    mov dx, COM1_SCR
    mov al, 0x5a
1:  out dx, al
    sub ebx, 1
    jnz 1b

    mov al, 2
    out MARKER, al
    mov ebx, dword ptr [count]
    mov ecx, VIRT_MSR
    xor edx, edx
    mov eax, 0x5a5a
2:  wrmsr
    sub ebx, 1
    jnz 2b

    mov al, 3
    out MARKER, al
    mov ebx, dword ptr [count]
    mov eax, 0x12345678
3:  mov dword ptr [MMIO_TARGET], eax
    sub ebx, 1
    jnz 3b

    mov al, 4
    out MARKER, al
halt32:
    hlt
    jmp halt32

# --- filtering (protected mode) ---------------------------------------------
filter32:
    mov al, 5
    out MARKER, al
    mov ebx, dword ptr [count]
    mov ecx, KVM_MSR
    xor edx, edx
    mov eax, 0x10
1:  wrmsr
    sub ebx, 1
    jnz 1b

    mov al, 6
    out MARKER, al
    mov ebx, dword ptr [count]
    mov al, 0x5a
2:  out FILTER_PORT, al
    sub ebx, 1
    jnz 2b
    mov al, 7
    out MARKER, al
    jmp halt32

# --- spin (protected mode, any number of vCPUs) -----------------------------
spin32:
    mov dx, COM1_SCR
    mov al, 0x5a
1:  out dx, al
    jmp 1b

# --- dirty (protected mode, one vCPU) ---------------------------------------
# Every pass stores into the same N pages, so once a pass has run since a
# reset, the dirty log holds exactly those N pages, whatever the point in
# the loop the reset went back to.
dirty32:
1:  mov ecx, dword ptr [count]
    mov ebx, DIRTY_BASE
2:  mov dword ptr [ebx], ecx
    add ebx, PAGE_SIZE
    sub ecx, 1
    jnz 2b
    jmp 1b

# --- chatter (protected mode, one vCPU) -------------------------------------
chatter32:
1:  mov dx, COM1_LSR
2:  in al, dx
    test al, LSR_THRE
    jz 2b
    mov al, 0x0a
    mov dx, COM1_THR
    out dx, al
    jmp 1b

    .section .rodata
s_up:   .asciz "bench: up\n"
