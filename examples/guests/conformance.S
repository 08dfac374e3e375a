# conformance.S - single-vCPU, 32-bit protected-mode guest that checks the
# conformance policy (docs/conformance.md) from inside the VM.
#
# It makes the spec's accesses in order, compares each result with the
# value the spec implies for the default key (0x5a5a5a5a), and prints one
# line per check on COM1 (the native UART: the policy never sees it):
#
#   conformance: ok N name
#   conformance: FAIL N name got X want Y
#
# then "conformance: P/N checks passed" and halts. The expected values are
# the spec's, written out here; the policy computes them.
#
# Entry (flat image at 0x8000, first byte): flat CS=0x08, DS=ES=SS=0x10,
# paging off, ESP = 0x8000, IF=0. Assembled with `as --32` (build.sh).
# Only plain integer instructions: on the software KVM backend every
# instruction goes through KVM's instruction emulator.

    .intel_syntax noprefix
    .code32
    .include "fault32.inc"

    .equ COM1_THR, 0x3f8
    .equ COM1_LSR, 0x3fd
    .equ LSR_THRE, 0x20

    .equ PORT_COUNT, 0x520
    .equ PORT_LAST, 0x521
    .equ PORT_EMIT, 0x522
    .equ PORT_PEEK, 0x523
    .equ MSR_VALUE, 0x51000000
    .equ MSR_NEXT, 0x51000001
    .equ MMIO, 0xd1000000
    .equ GUARDED, 0x70000           # write-protected by the policy
    .equ OUTSIDE_RAM, 0xfff00000    # the test runs with 64 MiB of RAM

    .equ SEL_CODE32, 0x08
    .equ GATE_INT32, 0x8e00
    .equ VEC_GP, 13
    .equ IDT_ENTRIES, VEC_GP + 1

    .section .text.entry, "ax"
    .globl _start
_start:
    install_gp_gate

    # 1: the first exit the policy sees reads count 1.
    mov dx, PORT_COUNT
    in eax, dx
    mov ebx, 1
    mov esi, offset n_count1
    call check

    # 2: a stored value comes back XORed with the key.
    mov dx, PORT_LAST
    mov eax, 0x11223344
    out dx, eax
    in eax, dx
    mov ebx, 0x11223344 ^ 0x5a5a5a5a
    mov esi, offset n_xor
    call check

    # 3: a 1-byte read is cut to the access size.
    xor eax, eax
    in al, dx
    mov ebx, 0x1e
    mov esi, offset n_cut
    call check

    # 4: every exit counts: out, in, in, and this in.
    mov dx, PORT_COUNT
    in eax, dx
    mov ebx, 5
    mov esi, offset n_count5
    call check

    # 5: the emit port takes the write (the test finds the event).
    mov dx, PORT_EMIT
    mov eax, 0xabcd
    out dx, eax
    xor eax, eax
    xor ebx, ebx
    mov esi, offset n_emit
    call check

    # 6 and 7: writes to the guarded page arrive as memory violations.
    mov dword ptr [GUARDED], 0x600df00d     # allowed
    mov eax, dword ptr [GUARDED]
    mov ebx, 0x600df00d
    mov esi, offset n_allow
    call check
    mov dword ptr [GUARDED], 0xbad          # denied
    mov eax, dword ptr [GUARDED]
    mov ebx, 0x600df00d
    mov esi, offset n_deny
    call check

    # 8: the policy reads guest memory with read-phys.
    mov dx, PORT_PEEK
    mov eax, GUARDED
    out dx, eax
    in eax, dx
    mov ebx, 0x600df00d
    mov esi, offset n_peek
    call check

    # 9: ... and gets an error for an address outside RAM.
    mov eax, OUTSIDE_RAM
    out dx, eax
    in eax, dx
    mov ebx, 0xffffffff
    mov esi, offset n_peek_out
    call check

    # 10: the virtual MSR starts at its initial value.
    mov ecx, MSR_VALUE
    xor eax, eax
    xor edx, edx
    rdmsr
    mov edi, 0x12345678
    mov ebx, 0x9abcdef0
    mov esi, offset n_msr
    call check64

    # 11: a write to it shows through the next MSR, plus one.
    mov ecx, MSR_VALUE
    mov edx, 1
    mov eax, 2
    wrmsr
    mov ecx, MSR_NEXT
    xor eax, eax
    xor edx, edx
    rdmsr
    mov edi, 1
    mov ebx, 3
    mov esi, offset n_msr_next
    call check64

    # 12: writing the next MSR raises #GP (the handler counts it).
    mov eax, dword ptr [gp_count]
    push eax
    mov ecx, MSR_NEXT
    xor eax, eax
    xor edx, edx
    wrmsr
    mov eax, dword ptr [gp_count]
    pop ebx
    add ebx, 1
    mov esi, offset n_gp
    call check

    # 13-15: MMIO reads return offset * 3, writes are dropped.
    mov eax, dword ptr [MMIO + 0x10]
    mov ebx, 0x30
    mov esi, offset n_mmio
    call check
    movzx eax, byte ptr [MMIO + 0x101]
    mov ebx, 0x03
    mov esi, offset n_mmio_cut
    call check
    mov dword ptr [MMIO + 0x10], 0x99
    mov eax, dword ptr [MMIO + 0x10]
    mov ebx, 0x30
    mov esi, offset n_mmio_drop
    call check

    # 16: 21 exits in all, counting this one.
    mov dx, PORT_COUNT
    in eax, dx
    mov ebx, 21
    mov esi, offset n_total
    call check

    mov esi, offset s_prefix
    call puts
    mov eax, dword ptr [passed]
    call print_dec
    mov al, 0x2f                    # '/'
    call putc
    mov eax, dword ptr [checks]
    call print_dec
    mov esi, offset s_summary
    call puts
halt:
    hlt
    jmp halt

    .text

# check: one check. EAX = got, EBX = want, ESI = its name. Prints the
# line and counts it. Preserves all registers.
check:
    push edi
    xor edi, edi                    # the high halves are equal
    push edx
    xor edx, edx
    call check_common
    pop edx
    pop edi
    ret

# check64: a 64-bit check. EDX:EAX = got, EDI:EBX = want, ESI = its name.
# Preserves all registers.
check64:
check_common:
    push eax
    add dword ptr [checks], 1
    cmp eax, ebx
    jne 1f
    cmp edx, edi
    jne 1f
    add dword ptr [passed], 1
    push edi
    mov edi, offset s_ok
    call print_head
    pop edi
    call newline
    pop eax
    ret
1:  push edi
    mov edi, offset s_fail
    call print_head
    pop edi
    push esi
    mov esi, offset s_got
    call puts
    mov eax, edx
    call print_hex32
    mov eax, dword ptr [esp + 4]    # the saved EAX: got, low half
    call print_hex32
    mov esi, offset s_want
    call puts
    mov eax, edi
    call print_hex32
    mov eax, ebx
    call print_hex32
    call newline
    pop esi
    pop eax
    ret

# print_head: write EDI (the verdict), the check number and the name at
# ESI. Preserves all registers.
print_head:
    push eax
    push esi
    mov esi, edi
    call puts
    mov eax, dword ptr [checks]
    call print_dec
    mov al, 0x20
    call putc
    pop esi
    call puts
    pop eax
    ret

# print_dec: write EAX (below 100) in decimal. Preserves all registers.
print_dec:
    push eax
    push ecx
    push edx
    xor edx, edx
    mov ecx, 10
    div ecx                         # EAX = tens, EDX = units
    test eax, eax
    jz 1f
    add al, 0x30
    call putc
1:  mov eax, edx
    add al, 0x30
    call putc
    pop edx
    pop ecx
    pop eax
    ret

# gp_handler: #GP through a 32-bit interrupt gate; only the 2-byte WRMSR
# of check 12 is expected to fault. Counts the fault and resumes after
# it (fault32.inc).
gp_handler:
    add dword ptr [gp_count], 1
    return_past_fault 2

    .include "console32.inc"

    .section .rodata
s_ok:       .asciz "conformance: ok "
s_fail:     .asciz "conformance: FAIL "
s_got:      .asciz " got "
s_want:     .asciz " want "
s_prefix:   .asciz "conformance: "
s_summary:  .asciz " checks passed\n"
n_count1:   .asciz "first-exit-count"
n_xor:      .asciz "port-xor-key"
n_cut:      .asciz "port-read-cut"
n_count5:   .asciz "exit-count"
n_emit:     .asciz "emit"
n_allow:    .asciz "protected-write-allowed"
n_deny:     .asciz "protected-write-denied"
n_peek:     .asciz "read-phys"
n_peek_out: .asciz "read-phys-out-of-range"
n_msr:      .asciz "msr-initial"
n_msr_next: .asciz "msr-write-then-next"
n_gp:       .asciz "msr-gp"
n_mmio:     .asciz "mmio-read"
n_mmio_cut: .asciz "mmio-read-cut"
n_mmio_drop: .asciz "mmio-write-dropped"
n_total:    .asciz "total-exits"

    .data
    .balign 4
checks:     .long 0
passed:     .long 0
gp_count:   .long 0
    .balign 8
idt:
    .fill IDT_ENTRIES * 8, 1, 0
idtr:
    .word IDT_ENTRIES * 8 - 1
    .long idt

    .section .note.GNU-stack, "", @progbits
