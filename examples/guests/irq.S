# irq.S - real-mode guest that waits for the UART's interrupt: COM1's
# "THR empty" interrupt on IRQ 4, through KVM's in-kernel PIC (run with
# --irqchip). It works with the native UART and with the Wasm serial
# policy granted the line (@irq=4).
#
# It points IVT vector 0x0c (IRQ 4 with the PC's vector base 8) at a
# handler, programs the master PIC, turns on the UART's OUT2 and enables
# the THR-empty interrupt, which is pending at once because THR is empty.
# Then it waits in HLT. The handler reads IIR (which acknowledges the
# interrupt), disables it and sends EOI. The PIT ticks on IRQ 0 too, so a
# missing IRQ 4 ends the wait after about a second instead of hanging.
#
# Output: "irq: IRQ 4 delivered, IIR 0002" (or "irq: no IRQ 4"), then the
# guest resets the machine through the i8042, which ends the run cleanly:
# with an irqchip, HLT waits in the kernel and never ends a run.
#
# Entry: flat image at 0x8000, first byte, vCPU 0 only.

    .intel_syntax noprefix
    .code16

    .equ COM1_THR, 0x3f8
    .equ COM1_IER, 0x3f9
    .equ COM1_IIR, 0x3fa
    .equ COM1_MCR, 0x3fc
    .equ COM1_LSR, 0x3fd
    .equ LSR_THRE, 0x20
    .equ IER_THRI, 0x02
    .equ MCR_OUT2, 0x08

    .equ PIC_CMD, 0x20
    .equ PIC_DATA, 0x21
    .equ PIC_EOI, 0x20
    .equ VEC_BASE, 0x08             # IRQ n -> vector 8 + n, as a PC BIOS sets
    .equ VEC_TIMER, VEC_BASE + 0
    .equ VEC_COM1, VEC_BASE + 4
    .equ PIT_CMD, 0x43
    .equ PIT_CH0, 0x40
    .equ MAX_TICKS, 20              # about 1.1 s at 18.2 Hz

    .section .text.entry, "ax"
    .globl _start
_start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    mov bx, offset s_start
    call puts

    mov word ptr [VEC_COM1 * 4], offset com1_isr
    mov word ptr [VEC_COM1 * 4 + 2], 0
    mov word ptr [VEC_TIMER * 4], offset timer_isr
    mov word ptr [VEC_TIMER * 4 + 2], 0

    mov al, 0x11                    # ICW1: edge triggered, cascade, ICW4
    out PIC_CMD, al
    mov al, VEC_BASE                # ICW2: vector base
    out PIC_DATA, al
    mov al, 0x04                    # ICW3: the slave PIC on IRQ 2
    out PIC_DATA, al
    mov al, 0x01                    # ICW4: 8086 mode
    out PIC_DATA, al
    mov al, 0xee                    # OCW1: mask all but IRQ 0 and IRQ 4
    out PIC_DATA, al

    mov al, 0x34                    # PIT channel 0, mode 2, divisor 65536
    out PIT_CMD, al
    xor al, al
    out PIT_CH0, al
    out PIT_CH0, al

    mov dx, COM1_MCR
    mov al, MCR_OUT2
    out dx, al
    mov dx, COM1_IER
    mov al, IER_THRI                # THR is empty: pending at once
    out dx, al

wait:
    sti
    hlt                             # an interrupt ends the HLT
    cli
    cmp byte ptr [irqs], 0
    jne delivered
    cmp byte ptr [ticks], MAX_TICKS
    jb wait
    mov bx, offset s_none
    call puts
    jmp reset

delivered:
    mov bx, offset s_delivered
    call puts
    xor ax, ax
    mov al, byte ptr [iir]
    call print_hex
    mov al, 0x0a
    call putc

reset:
    mov al, 0xfe                    # i8042: pulse the reset line
    out 0x64, al
1:  hlt
    jmp 1b

com1_isr:
    push ax
    push dx
    mov dx, COM1_IIR                # reading IIR acknowledges THR empty
    in al, dx
    mov byte ptr [iir], al
    mov dx, COM1_IER                # no more UART interrupts
    xor al, al
    out dx, al
    add byte ptr [irqs], 1
    mov al, PIC_EOI
    out PIC_CMD, al
    pop dx
    pop ax
    iret

timer_isr:
    push ax
    add byte ptr [ticks], 1
    mov al, PIC_EOI
    out PIC_CMD, al
    pop ax
    iret

    .include "console16.inc"

s_start:     .asciz "irq: waiting for IRQ 4\n"
s_delivered: .asciz "irq: IRQ 4 delivered, IIR "
s_none:      .asciz "irq: no IRQ 4\n"
irqs:        .byte 0
ticks:       .byte 0
iir:         .byte 0

    .section .note.GNU-stack, "", @progbits
