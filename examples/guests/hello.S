# hello.S - the smallest guest: 64-bit long mode, prints one line, halts.
#
# The host enters _start in long mode (CS=0x18, data segments 0x10) on an
# identity map of the first 4 GiB, with RSP = 0x8000 - index*0x100.
# hello.ld links the image at 1 MiB, so every address fits in 32 bits and
# `mov r32, offset sym` (zero-extended into the 64-bit register) is enough;
# that avoids LEA and RIP-relative forms.
#
# Assembled with `as --64` directly (not preprocessed); see build.sh.
# Only plain integer instructions: every instruction goes through KVM's
# instruction emulator on the software KVM backend.

    .intel_syntax noprefix
    .code64

    .equ COM1_THR, 0x3f8            # transmit holding register
    .equ COM1_LSR, 0x3fd            # line status register
    .equ LSR_THRE, 0x20             # THR empty: ready for the next byte

    .section .text.entry, "ax"      # hello.ld places this first
    .globl _start
_start:
    mov esi, offset msg_hello
    call puts
halt:
    hlt
    jmp halt                        # in case the vCPU is ever resumed

    .text

# putc: write AL to COM1 once the UART can take it. Preserves all registers.
putc:
    push rdx
    push rax
    mov dx, COM1_LSR
1:  in al, dx
    test al, LSR_THRE
    jz 1b
    pop rax
    mov dx, COM1_THR
    out dx, al
    pop rdx
    ret

# puts: write the NUL-terminated string at RSI. Preserves all registers.
puts:
    push rsi
    push rax
1:  mov al, byte ptr [rsi]
    test al, al
    jz 2f
    call putc
    add rsi, 1
    jmp 1b
2:  pop rax
    pop rsi
    ret

# print_hex: write RAX as 16 lowercase hex digits. Preserves all registers.
# Unused by this guest; kept so every guest has the same console kit.
print_hex:
    push rax
    push rcx
    push rdx
    mov rdx, rax
    mov ecx, 60                     # shift for the top nibble
1:  mov rax, rdx
    shr rax, cl
    and eax, 0xf
    cmp al, 10
    jb 2f
    add al, 0x61 - 0x30 - 10        # 10..15 -> 'a'..'f' after the add below
2:  add al, 0x30                    # '0'
    call putc
    sub ecx, 4
    jns 1b                          # until the shift goes below 0
    pop rdx
    pop rcx
    pop rax
    ret

    .section .rodata
msg_hello:
    .asciz "Hello from a wasmvisor guest!\n"

    .section .note.GNU-stack, "", @progbits   # no executable stack (silences ld)
