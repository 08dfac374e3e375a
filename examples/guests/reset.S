# reset.S - real-mode guest that resets the machine through the i8042
# keyboard controller, as Linux does with reboot=k: it writes 0xfe ("pulse
# the reset line") to the command port 0x64. If the reset does not take,
# it halts.
#
# Entry: flat image at 0x8000, first byte; any register state.

    .intel_syntax noprefix
    .code16

    .section .text.entry, "ax"
    .globl _start
_start:
    in al, 0x64                     # status: a controller that is idle
    mov al, 0xfe
    out 0x64, al
1:  cli
    hlt
    jmp 1b
