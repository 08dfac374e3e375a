# devices.S - single-vCPU, 32-bit protected-mode guest that exercises every
# exit kind a policy can handle (port I/O, MMIO, RDMSR/WRMSR, CPUID) and
# prints what it saw, one line per access, on COM1.
#
# Entry (flat image at 0x8000, first byte): flat CS=0x08, DS=ES=SS=0x10,
# paging off, ESP = 0x8000, IF=0, no IDT. With paging off and flat 4 GiB
# segments, the MMIO windows above RAM are reached by plain loads/stores.
#
# Every access is made BEFORE its line is printed and the console routines
# preserve all registers, so a faulting MSR access prints "#GP" on a line of
# its own, ahead of the line that reports the (zeroed) result.
#
# Assembled with `as --32` directly (not preprocessed); see build.sh.
# Only plain integer instructions: on the software KVM backend every
# instruction goes through KVM's instruction emulator.

    .intel_syntax noprefix
    .code32
    .include "fault32.inc"

    .equ COM1_THR, 0x3f8            # transmit holding register
    .equ COM1_LSR, 0x3fd            # line status register
    .equ COM1_SCR, 0x3ff            # scratch register
    .equ LSR_THRE, 0x20             # THR empty: ready for the next byte

    .equ SEL_CODE32, 0x08           # host GDT: flat 32-bit code
    .equ GATE_INT32, 0x8e00         # P=1, DPL=0, type 0xe: 32-bit interrupt gate
    .equ VEC_GP, 13
    .equ IDT_ENTRIES, VEC_GP + 1    # vectors 0..13; only #GP is present

    .section .text.entry, "ax"      # flat.ld places this first: entry = byte 0
    .globl _start
_start:
    install_gp_gate

    mov esi, offset s_start
    call puts

    # --- Port I/O ---------------------------------------------------------
    # UART scratch register: a plain byte that should read back 0xa5.
    mov dx, COM1_SCR
    mov al, 0xa5
    out dx, al
    xor eax, eax                    # zero-extend the byte read
    in al, dx
    mov esi, offset s_scratch
    call print_line32

    # Register bank: ID register.
    mov dx, 0x510
    in eax, dx
    mov esi, offset s_port510
    call print_line32

    # Register bank: a read/write register.
    mov dx, 0x514
    mov eax, 0xdeadbeef
    out dx, eax
    in eax, dx
    mov esi, offset s_port514
    call print_line32

    # A port no policy claims: shows the host's default for unclaimed reads.
    mov dx, 0x600
    in eax, dx
    mov esi, offset s_port600
    call print_line32

    # --- MMIO -------------------------------------------------------------
    mov eax, dword ptr [0xd0000000]
    mov esi, offset s_mmio0
    call print_line32

    mov dword ptr [0xd0000010], 0x12345678
    mov eax, dword ptr [0xd0000010]
    mov esi, offset s_mmio10
    call print_line32

    mov eax, dword ptr [0xe0000000] # nobody claims it
    mov esi, offset s_mmio_e
    call print_line32

    # --- MSRs -------------------------------------------------------------
    # EDX:EAX are zeroed before every RDMSR so a faulted (skipped) read
    # reports zeros.
    mov ecx, 0x50000000
    xor eax, eax
    xor edx, edx
    rdmsr
    mov esi, offset s_msr0
    call print_line64

    mov ecx, 0x50000001
    mov edx, 0x0000cafe
    mov eax, 0xf00dbabe
    wrmsr
    xor eax, eax
    xor edx, edx
    rdmsr
    mov esi, offset s_msr1
    call print_line64

    mov ecx, 0x174                  # IA32_SYSENTER_CS
    xor edx, edx
    mov eax, 0x10
    wrmsr
    xor eax, eax
    xor edx, edx
    rdmsr
    mov esi, offset s_msr174
    call print_line64

    mov ecx, 0x175                  # IA32_SYSENTER_ESP: expected to fault
    xor eax, eax
    xor edx, edx
    rdmsr                           # #GP here -> handler prints "#GP", skips it
    mov esi, offset s_msr175
    call print_line64

    # --- CPUID ------------------------------------------------------------
    xor eax, eax                    # leaf 0: vendor in EBX, EDX, ECX
    xor ecx, ecx
    cpuid
    mov esi, offset s_cpuid0
    call puts
    mov eax, ebx
    call print_chars4
    mov eax, edx
    call print_chars4
    mov eax, ecx
    call print_chars4
    call newline

    mov eax, 0x40000000             # hypervisor leaf: signature in EBX, ECX, EDX
    xor ecx, ecx
    cpuid
    mov esi, offset s_cpuid4
    call puts
    mov eax, ebx
    call print_chars4
    mov eax, ecx
    call print_chars4
    mov eax, edx
    call print_chars4
    call newline

    mov eax, 1                      # feature flags
    xor ecx, ecx
    cpuid
    mov esi, offset s_cpuid1
    call puts
    mov eax, ecx
    call print_hex32
    mov esi, offset s_edx
    call puts
    mov eax, edx
    call print_hex32
    call newline

    mov esi, offset s_done
    call puts
halt:
    hlt
    jmp halt                        # in case the vCPU is ever resumed

    .text

# gp_handler: #GP (vector 13) through a 32-bit interrupt gate. Same
# privilege, so no stack switch; the CPU pushed EFLAGS, CS, EIP and an
# error code. Only RDMSR/WRMSR are expected to fault, and both are 2 bytes
# (0f 32 / 0f 30) with no prefix here, so resume at EIP+2.
#
# Returns past the 2-byte RDMSR/WRMSR without IRET (fault32.inc); no code
# after an MSR access depends on the arithmetic flags.
gp_handler:
    push esi
    mov esi, offset s_gp
    call puts
    pop esi
    return_past_fault 2

    .include "console32.inc"

    .section .rodata
s_start:    .asciz "devices: start\n"
s_scratch:  .asciz "scratch: "
s_port510:  .asciz "port 0x510: "
s_port514:  .asciz "port 0x514: "
s_port600:  .asciz "port 0x600: "
s_mmio0:    .asciz "mmio 0xd0000000: "
s_mmio10:   .asciz "mmio 0xd0000010: "
s_mmio_e:   .asciz "mmio 0xe0000000: "
s_msr0:     .asciz "msr 0x50000000: "
s_msr1:     .asciz "msr 0x50000001: "
s_msr174:   .asciz "msr 0x174: "
s_msr175:   .asciz "msr 0x175: "
s_gp:       .asciz "#GP\n"
s_cpuid0:   .asciz "cpuid 0x0: "
s_cpuid4:   .asciz "cpuid 0x40000000: "
s_cpuid1:   .asciz "cpuid 0x1: ecx="
s_edx:      .asciz " edx="
s_done:     .asciz "devices: done\n"

    .data
    .balign 8
idt:                                # gates 0..13, all absent except #GP
    .fill IDT_ENTRIES * 8, 1, 0
idtr:
    .word IDT_ENTRIES * 8 - 1       # limit
    .long idt                       # base

    .section .note.GNU-stack, "", @progbits   # no executable stack (silences ld)
