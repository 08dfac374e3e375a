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
    # Fill in the #GP gate at run time (offset split around selector and
    # attributes) rather than with link-time arithmetic on a relocation.
    mov eax, offset gp_handler
    mov word ptr [idt + VEC_GP*8], ax
    mov word ptr [idt + VEC_GP*8 + 2], SEL_CODE32
    mov word ptr [idt + VEC_GP*8 + 4], GATE_INT32
    shr eax, 16
    mov word ptr [idt + VEC_GP*8 + 6], ax
    lidt [idtr]

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
# Returns with RET instead of IRET: KVM's instruction emulator implements
# IRET in real mode only (protected-mode IRET is "unhandleable" and would
# end the run with an emulation failure). For a same-privilege return to
# the same CS with IF already 0, RET to EIP+2 with the frame dropped is
# equivalent; only the arithmetic flags are not restored, and no code
# after an MSR access depends on them.
gp_handler:
    push esi
    mov esi, offset s_gp
    call puts
    pop esi
    add esp, 4                      # pop the error code
    add dword ptr [esp], 2          # saved EIP: skip the 2-byte RDMSR/WRMSR
    # Frame is now [esp]=EIP, [esp+4]=CS, [esp+8]=EFLAGS. Move EIP into
    # the EFLAGS slot and drop the two lower slots so RET leaves ESP where
    # it was before the fault.
    push eax
    mov eax, dword ptr [esp + 4]
    mov dword ptr [esp + 12], eax
    pop eax
    add esp, 8
    ret

# putc: write AL to COM1 once the UART can take it. Preserves all registers.
putc:
    push edx
    push eax
    mov dx, COM1_LSR
1:  in al, dx
    test al, LSR_THRE
    jz 1b
    pop eax
    mov dx, COM1_THR
    out dx, al
    pop edx
    ret

# puts: write the NUL-terminated string at ESI. Preserves all registers.
puts:
    push esi
    push eax
1:  mov al, byte ptr [esi]
    test al, al
    jz 2f
    call putc
    add esi, 1
    jmp 1b
2:  pop eax
    pop esi
    ret

# newline: write "\n". Preserves all registers.
newline:
    push eax
    mov al, 0x0a
    call putc
    pop eax
    ret

# print_hex32: write EAX as 8 lowercase hex digits. Preserves all registers.
print_hex32:
    push eax
    push ecx
    push edx
    mov edx, eax
    mov ecx, 28                     # shift for the top nibble
1:  mov eax, edx
    shr eax, cl
    and eax, 0xf
    cmp al, 10
    jb 2f
    add al, 0x61 - 0x30 - 10        # 10..15 -> 'a'..'f' after the add below
2:  add al, 0x30                    # '0'
    call putc
    sub ecx, 4
    jns 1b                          # until the shift goes below 0
    pop edx
    pop ecx
    pop eax
    ret

# print_chars4: write the 4 bytes of EAX, lowest first, as ASCII; bytes
# outside 0x20..0x7e print as '.'. Preserves all registers.
print_chars4:
    push eax
    push ecx
    push edx
    mov edx, eax
    mov ecx, 4
1:  mov eax, edx
    and eax, 0xff
    cmp al, 0x20
    jb 2f
    cmp al, 0x7e
    jbe 3f
2:  mov al, 0x2e                    # '.'
3:  call putc
    shr edx, 8
    sub ecx, 1
    jnz 1b
    pop edx
    pop ecx
    pop eax
    ret

# print_line32: write the label at ESI, EAX as 8 hex digits, "\n".
print_line32:
    call puts
    call print_hex32
    jmp newline                     # tail call

# print_line64: write the label at ESI, EDX:EAX as 16 hex digits, "\n".
print_line64:
    call puts
    push eax
    mov eax, edx
    call print_hex32
    pop eax
    call print_hex32
    jmp newline                     # tail call

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
