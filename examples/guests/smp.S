# smp.S - real-mode guest for N vCPUs: each vCPU reports in under a
# spinlock and bumps a shared counter; vCPU 0 waits for all N, then prints
# the total.
#
# Entry (flat image at 0x8000, first byte, same entry on every vCPU):
# CS=DS=ES=SS=0, SP = 0x8000 - index*0x100 (a private stack per vCPU),
# EDI = vCPU index, ESI = vCPU count, IF=0. Index and count are at most 16,
# so DI and SI hold them whole. The image is linked at 0x8000 and stays
# below 64 KiB, so with DS=0 its data is reached by 16-bit absolute
# addresses.
#
# Assembled with `as --32` + `.code16` directly (not preprocessed); see
# build.sh. Only plain integer instructions: on the software KVM backend
# every instruction goes through KVM's instruction emulator.

    .intel_syntax noprefix
    .code16

    .equ COM1_THR, 0x3f8            # transmit holding register
    .equ COM1_LSR, 0x3fd            # line status register
    .equ LSR_THRE, 0x20             # THR empty: ready for the next byte

    .section .text.entry, "ax"      # flat.ld places this first: entry = byte 0
    .globl _start
_start:
    # Take the console lock. XCHG with a memory operand is atomic without a
    # LOCK prefix. AL stays 1 while the lock is held by someone else.
    mov al, 1
1:  xchg al, byte ptr [console_lock]
    test al, al
    jnz 1b

    mov bx, offset s_cpu
    call puts
    mov ax, di
    call print_dec
    mov bx, offset s_up
    call puts

    # Count this vCPU in only after its line is out: when vCPU 0 sees the
    # counter reach N, every "cpu i up" line has been written. The LOCK is
    # for vCPU 0, which reads the counter without taking the lock.
    mov ax, 1
    lock xadd word ptr [cpus_up], ax

    # Release: a plain store suffices, x86 does not reorder it before the
    # earlier stores.
    mov byte ptr [console_lock], 0

    test di, di
    jnz halt                        # only vCPU 0 goes on

    # vCPU 0: wait until all N vCPUs have counted in.
2:  mov ax, word ptr [cpus_up]
    cmp ax, si
    jb 2b

    mov bx, offset s_smp
    call puts
    mov ax, si
    call print_dec
    mov bx, offset s_cpus_up
    call puts
halt:
    hlt
    jmp halt                        # in case the vCPU is ever resumed

    .text

    .include "console16.inc"

    .section .rodata
s_cpu:      .asciz "cpu "
s_up:       .asciz " up\n"
s_smp:      .asciz "smp: "
s_cpus_up:  .asciz " cpus up\n"

    .data
    .balign 2
cpus_up:                            # vCPUs that have printed their line
    .word 0
console_lock:                       # 0 = free, 1 = held
    .byte 0

    .section .note.GNU-stack, "", @progbits   # no executable stack (silences ld)
