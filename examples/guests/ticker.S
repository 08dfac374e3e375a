# ticker.S - real-mode guest for hot-swap tests: every vCPU hands an
# endless stream of sequence numbers to a policy (policies/counter) and
# checks after each one that the policy's count of accepted numbers went up
# by exactly one. A swap that loses or repeats state shows up as a wrong
# count, which the guest reports and then stops on.
#
# Protocol, per vCPU, with seq counting from 0:
#   OUT dword to 0x500: (vCPU index << 24) | (seq & 0xffffff)
#   IN  dword from 0x500: the numbers the policy has accepted from this
#       vCPU so far; after seq it must be seq + 1 (mod 2^32)
#   OUT dword to 0x501: the wrong count, sent once; the vCPU then halts
#       for good with interrupts off
#
# Entry (flat image at 0x8000, first byte, same entry on every vCPU):
# CS=DS=ES=SS=0, SP = 0x8000 - index*0x100, EDI = vCPU index, ESI = vCPU
# count, IF=0. The index is at most 16, so it fits in the top byte of a
# number. The loop keeps everything in registers: no stack, no memory
# writes, so the vCPUs share nothing but the code.
#
# Nothing is printed, so the guest needs no console and no COM1 policy;
# everything it has to say goes to ports 0x500 and 0x501.
#
# Assembled with `as --32` + `.code16` directly (not preprocessed); see
# build.sh. 32-bit registers take the operand-size prefix, which `as` adds
# in .code16. Only plain integer instructions: on the software KVM backend
# every instruction goes through KVM's instruction emulator.

    .intel_syntax noprefix
    .code16

    .equ TICK_PORT, 0x500           # numbers out, count in
    .equ BAD_PORT, 0x501            # the wrong count, then halt
    .equ SEQ_MASK, 0x00ffffff       # the low 24 bits carry seq

    .section .text.entry, "ax"      # flat.ld places this first: entry = byte 0
    .globl _start
_start:
    mov ebx, edi
    shl ebx, 24                     # EBX = the vCPU tag for every number
    xor ecx, ecx                    # ECX = seq
    mov dx, TICK_PORT

tick:
    mov eax, ecx
    and eax, SEQ_MASK
    or eax, ebx
    out dx, eax
    in eax, dx
    # The count after accepting seq is seq + 1. ECX wraps at 2^32 exactly
    # like the policy's count read as a dword, so the compare stays exact.
    add ecx, 1
    cmp eax, ecx
    je tick

    mov dx, BAD_PORT
    out dx, eax
halt:
    cli                             # IF is 0 already; stay halted even if set
    hlt
    jmp halt                        # in case the vCPU is ever resumed

    .section .note.GNU-stack, "", @progbits   # no executable stack (silences ld)
