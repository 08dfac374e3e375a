# faults.S - real-mode guest that provokes a hostile policy
# (tests/fixtures/hostile) into each fault class and reports what it read
# back, so tests can tell fail-open, fail-closed and quarantine apart from
# the guest's side. Under fail-open every faulted IN reads all-ones.
#
# Ports of the hostile fixture used here:
#   0x12 panic (trap), 0x13 spin (deadline), 0x14 hog (memory cap),
#   0x1e write 0xeeeeeeee to 0x9000 and answer a byte read with a value
#        too wide: a rejected answer whose write must not land.
# It installs a #GP handler in the IVT (vector 13) that prints "#GP" and
# returns to the next instruction: under @on-fault=gp the host raises #GP
# after the faulted IN retires.

    .intel_syntax noprefix
    .code16

    .equ COM1_THR, 0x3f8
    .equ COM1_LSR, 0x3fd
    .equ LSR_THRE, 0x20
    .equ SPINS, 20                  # extra deadline faults in the loop test

    .section .text.entry, "ax"
    .globl _start
_start:
    # IVT entry 13 at 0x34: offset, then segment 0.
    mov word ptr [0x34], offset gp_handler
    mov word ptr [0x36], 0
    # A known pattern where the rejected answer tries to write.
    mov word ptr [0x9000], 0x1234
    mov word ptr [0x9002], 0x5678

    mov bx, offset s_start
    call puts

    mov bx, offset s_panic
    mov dx, 0x12
    call probe
    mov bx, offset s_spin
    mov dx, 0x13
    call probe
    mov bx, offset s_hog
    mov dx, 0x14
    call probe
    mov bx, offset s_bad
    mov dx, 0x1e
    call probe

    # The rejected answer's write must not have landed.
    mov bx, offset s_ram
    call puts
    mov ax, word ptr [0x9002]
    call print_hex
    mov ax, word ptr [0x9000]
    call print_hex
    mov al, 0x0a
    call putc

    # A policy that loops on every exit it gets: the guest must still
    # get through SPINS more of them.
    mov bx, offset s_loop
    call puts
    mov cx, SPINS
1:  mov dx, 0x13
    in al, dx
    mov al, 0x2e                    # '.'
    call putc
    sub cx, 1
    jnz 1b
    mov al, 0x0a
    call putc

    mov bx, offset s_done
    call puts
halt:
    hlt
    jmp halt

# probe: print the label at BX, read a byte from port DX, print it as two
# hex digits and a newline.
probe:
    call puts
    in al, dx
    mov ah, 0
    call print_hex
    mov al, 0x0a
    call putc
    ret

gp_handler:
    push bx
    mov bx, offset s_gp
    call puts
    pop bx
    iret                            # real-mode IRET: the emulator handles it

    .include "console16.inc"

    .section .rodata
s_start:    .asciz "faults: start\n"
s_panic:    .asciz "panic: "
s_spin:     .asciz "spin: "
s_hog:      .asciz "hog: "
s_bad:      .asciz "bad: "
s_ram:      .asciz "ram: "
s_loop:     .asciz "loop: "
s_gp:       .asciz "#GP\n"
s_done:     .asciz "faults: done\n"
