# pci.S - single-vCPU, 32-bit protected-mode guest that enumerates PCI
# bus 0 through config mechanism #1 and drives wasmvisor's test device
# (vendor 0x5741, device 0x0002; run with --device test):
#
#   - prints every function present: "pci: 00:DD.0 VVVV:DDDD class CCCCCCCC";
#   - sizes the test device's BAR 0 (write all-ones, read back, restore);
#   - enables memory decoding and bus mastering, reads the ID register;
#   - finds the MSI capability, points it at LAPIC 0 with vector 0x40,
#     enables the LAPIC, rings the doorbell and waits in HLT for the MSI;
#   - turns MSI off, finds the MSI-X capability, aims table entry 1 at
#     vector 0x41, enables MSI-X, rings doorbell 1 and waits for it;
#   - turns MSI-X off, aims the IOAPIC pin named by the interrupt line
#     register at vector 0x42 (level-triggered) and takes INTx twice,
#     acknowledging the device in the handler before the EOI;
#   - has the device FILL a buffer by DMA and checks every byte, then SUM
#     it by DMA and prints the device's sum;
#   - writes the command register a second time with a value a policy may
#     veto, and prints what the register holds afterwards;
#   - if the device has a BAR 2 (the vfio-user test server's shared
#     memory), fills its 64 KiB, reads it back and prints the sum;
#
# then resets the machine through the i8042, which ends the run cleanly
# (with the irqchip --device brings, HLT waits in the kernel for ever).
#
# Entry (flat image at 0x8000): flat CS=0x08, DS=ES=SS=0x10, paging off,
# ESP = 0x8000, IF=0. Only plain integer instructions; no protected-mode
# IRET, which this backend's emulator lacks (see fault32.inc).

    .intel_syntax noprefix
    .code32

    .equ COM1_THR, 0x3f8
    .equ COM1_LSR, 0x3fd
    .equ LSR_THRE, 0x20

    .equ PCI_ADDR, 0xcf8
    .equ PCI_DATA, 0xcfc
    .equ TEST_ID, 0x00025741        # device << 16 | vendor
    .equ REG_ID, 0x00
    .equ BAR2_DWORDS, 0x4000        # 64 KiB
    .equ REG_SCRATCH, 0x04
    .equ REG_DOORBELL, 0x08
    .equ REG_IRQ_STATUS, 0x0c
    .equ REG_DMA_ADDR_LO, 0x10
    .equ REG_DMA_ADDR_HI, 0x14
    .equ REG_DMA_LEN, 0x18
    .equ REG_DMA_CMD, 0x1c
    .equ REG_DMA_STATUS, 0x20
    .equ REG_DMA_RESULT, 0x24
    .equ DMA_FILL, 1
    .equ DMA_SUM, 2
    .equ DMA_LEN, 64
    .equ DMA_BUF, 0x60000           # in guest RAM, away from the image

    .equ LAPIC_EOI, 0xfee000b0
    .equ LAPIC_SVR, 0xfee000f0
    .equ MSI_VECTOR, 0x40
    .equ MSIX_VECTOR, 0x41
    .equ INTX_VECTOR, 0x42
    .equ INTX_ROUNDS, 2
    .equ IOAPIC_SEL, 0xfec00000
    .equ IOAPIC_WIN, 0xfec00010
    .equ IOAPIC_LEVEL, 0x8000       # redirection entry: level-triggered

    .equ SEL_CODE32, 0x08
    .equ GATE_INT32, 0x8e00
    .equ IDT_ENTRIES, INTX_VECTOR + 1

    .section .text.entry, "ax"
    .globl _start
_start:
    mov eax, offset msi_handler
    mov ecx, MSI_VECTOR
    call set_gate
    mov eax, offset msix_handler
    mov ecx, MSIX_VECTOR
    call set_gate
    mov eax, offset intx_handler
    mov ecx, INTX_VECTOR
    call set_gate
    lidt [idtr]

    mov esi, offset s_scan
    call puts

    # --- Enumerate bus 0, function 0 of every device ---------------------
    xor ebx, ebx                    # EBX = device number
scan:
    mov eax, ebx
    shl eax, 11
    or eax, 0x80000000              # enable | bus 0 | dev | fn 0 | reg 0
    mov dx, PCI_ADDR
    out dx, eax
    mov dx, PCI_DATA
    in eax, dx
    cmp ax, 0xffff
    je next
    mov ecx, eax                    # ECX = device:vendor
    cmp eax, TEST_ID
    jne 1f
    mov dword ptr [test_dev], ebx
1:  mov esi, offset s_dev
    call puts
    mov eax, ebx
    call print_hex8
    mov esi, offset s_fn
    call puts
    mov eax, ecx
    and eax, 0xffff
    call print_hex16
    mov al, 0x3a                    # ':'
    call putc
    mov eax, ecx
    shr eax, 16
    call print_hex16
    mov esi, offset s_class
    call puts
    mov eax, 0x08                   # class code, revision
    call cfg_read
    call print_hex32
    call newline
next:
    add ebx, 1
    cmp ebx, 32
    jb scan

    cmp dword ptr [test_dev], 0xffffffff
    jne found
    mov esi, offset s_missing
    call puts
    jmp reset

found:
    # --- BAR 0: its address, then its size --------------------------------
    mov eax, 0x10
    call cfg_read
    and eax, 0xfffffff0
    mov dword ptr [bar0], eax
    mov eax, 0x10
    mov ecx, 0xffffffff
    call cfg_write
    mov eax, 0x10
    call cfg_read
    and eax, 0xfffffff0
    not eax
    add eax, 1                      # size = ~(mask & ~0xf) + 1
    mov ecx, eax
    mov eax, 0x10
    push ecx
    mov ecx, dword ptr [bar0]
    call cfg_write                  # restore the address
    pop ecx
    mov esi, offset s_bar
    call puts
    mov eax, dword ptr [bar0]
    call print_hex32
    mov esi, offset s_size
    call puts
    mov eax, ecx
    call print_hex32
    call newline

    # --- Memory decoding and bus mastering on -----------------------------
    mov eax, 0x04
    call cfg_read
    or eax, 0x0006
    mov ecx, eax
    and ecx, 0xffff                 # the status half is write-1-to-clear
    mov eax, 0x04
    call cfg_write

    mov edi, dword ptr [bar0]
    mov esi, offset s_id
    call puts
    mov eax, dword ptr [edi + REG_ID]
    call print_chars4
    call newline
    mov dword ptr [LAPIC_SVR], 0x1ff   # LAPIC software enable, spurious 0xff

    # --- MSI: find the capability, aim it at LAPIC 0, vector 0x40 --------
    mov cl, 0x05                    # MSI
    call find_cap
    test edx, edx
    jnz msi_found
    mov esi, offset s_no_msi
    call puts
    jmp intx

msi_found:
    mov ebx, eax                    # EBX = id/next/message control
    lea eax, [edx + 4]
    mov ecx, 0xfee00000             # LAPIC ID 0, fixed, physical
    call cfg_write
    lea eax, [edx + 8]
    xor ecx, ecx                    # address high (64-bit capable)
    call cfg_write
    lea eax, [edx + 12]
    mov ecx, MSI_VECTOR             # data: vector, fixed, edge
    call cfg_write
    mov eax, edx
    mov ecx, ebx
    or ecx, 0x00010000              # message control bit 0: enable
    call cfg_write

    mov dword ptr [edi + REG_DOORBELL], 0   # raise MSI vector 0
    # The MSI waits in the LAPIC while IF=0. STI's one-instruction shadow
    # makes STI;HLT atomic: it is delivered in the HLT, and the handler
    # returns after it (with IF=0 again).
    sti
    hlt
    cli
    mov esi, offset s_msi
    call puts
    mov eax, dword ptr [msi_count]
    call print_hex8
    call newline

    # --- MSI-X: MSI off, table entry 1 aimed at vector 0x41 ---------------
    mov eax, edx
    mov ecx, 0x00010000             # message control bit 0: disable
    call cfg_clear
    mov cl, 0x11                    # MSI-X
    call find_cap
    test edx, edx
    jz intx                         # no MSI-X capability
    mov ebx, eax                    # EBX = id/next/message control
    lea eax, [edx + 4]
    call cfg_read                   # table offset | BIR (the test device: BAR 0)
    and eax, 0xfffffff8
    add eax, edi
    mov dword ptr [eax + 16], 0xfee00000    # entry 1: LAPIC 0, physical
    mov dword ptr [eax + 20], 0
    mov dword ptr [eax + 24], MSIX_VECTOR   # data: vector, fixed, edge
    mov dword ptr [eax + 28], 0             # vector control: unmasked
    mov eax, edx
    mov ecx, ebx
    or ecx, 0x80000000              # message control bit 15: enable
    call cfg_write
    mov dword ptr [edi + REG_DOORBELL], 1   # raise MSI-X vector 1
    sti
    hlt
    cli
    mov esi, offset s_msix
    call puts
    mov eax, dword ptr [msix_count]
    call print_hex8
    call newline
    mov eax, edx
    mov ecx, 0x80000000             # message control bit 15: disable
    call cfg_clear

    # --- INTx: MSI and MSI-X off, the device's line through the IOAPIC ---
    # The line is level-triggered: the handler clears IRQ_STATUS (the
    # device lowers INTx) before its EOI. Two rounds, because VFIO masks a
    # passed-through device's INTx each time it fires and only the EOI's
    # resample unmasks it: the second round arrives only if that works.
intx:
    mov eax, 0x3c
    call cfg_read
    and eax, 0xff                   # interrupt line = IOAPIC pin
    mov ebx, eax
    lea eax, [ebx * 2 + 0x10]       # the pin's redirection entry, low half
    mov dword ptr [IOAPIC_SEL], eax
    mov dword ptr [IOAPIC_WIN], INTX_VECTOR | IOAPIC_LEVEL  # fixed, physical, high
    add eax, 1
    mov dword ptr [IOAPIC_SEL], eax
    mov dword ptr [IOAPIC_WIN], 0   # destination: LAPIC 0
    mov ecx, INTX_ROUNDS
1:  mov dword ptr [edi + REG_DOORBELL], 0   # MSI and MSI-X off: INTx
    sti
    hlt
    cli
    sub ecx, 1
    jnz 1b
    mov esi, offset s_intx
    call puts
    mov eax, ebx
    call print_hex8
    mov esi, offset s_intx_vec
    call puts
    mov eax, dword ptr [intx_count]
    call print_hex8
    call newline

    # --- DMA: FILL a buffer, check it, SUM it -----------------------------
dma:
    mov dword ptr [edi + REG_DMA_ADDR_LO], DMA_BUF
    mov dword ptr [edi + REG_DMA_ADDR_HI], 0
    mov dword ptr [edi + REG_DMA_LEN], DMA_LEN
    mov dword ptr [edi + REG_DMA_CMD], DMA_FILL
    mov esi, offset s_fill
    call puts
    mov eax, dword ptr [edi + REG_DMA_STATUS]
    call print_hex8
    xor ecx, ecx                    # check byte i == 0xa5 ^ i
1:  mov al, cl
    xor al, 0xa5
    cmp byte ptr [DMA_BUF + ecx], al
    jne 2f
    add ecx, 1
    cmp ecx, DMA_LEN
    jb 1b
    mov esi, offset s_fill_ok
    call puts
    jmp 3f
2:  mov esi, offset s_fill_bad
    call puts
    mov eax, ecx
    call print_hex8
    call newline
3:  mov dword ptr [edi + REG_DMA_CMD], DMA_SUM
    mov esi, offset s_sum
    call puts
    mov eax, dword ptr [edi + REG_DMA_RESULT]
    call print_hex32
    call newline

    # --- A second command write: memory on, bus master off ---------------
    mov eax, 0x04
    mov ecx, 0x0002
    call cfg_write
    mov eax, 0x04
    call cfg_read
    and eax, 0xffff
    mov esi, offset s_cmd
    call puts
    call print_hex16
    call newline

    # --- BAR 2, if the device has one: memory shared with the device ------
    # Fill its 64 KiB with dword i = i * 0x9e3779b1, then read it all back
    # and print the sum. Mapped as a memslot these are plain memory
    # accesses; trapped, each one is an exit.
    mov eax, 0x18
    call cfg_read
    and eax, 0xfffffff0
    jz reset
    mov esi, offset s_bar2
    call puts
    call print_hex32
    call newline
    mov edi, eax
    xor ecx, ecx
1:  mov eax, ecx
    imul eax, eax, 0x9e3779b1
    mov dword ptr [edi + ecx * 4], eax
    inc ecx
    cmp ecx, BAR2_DWORDS
    jb 1b
    xor ecx, ecx
    xor edx, edx
2:  add edx, dword ptr [edi + ecx * 4]
    inc ecx
    cmp ecx, BAR2_DWORDS
    jb 2b
    mov esi, offset s_bar2_sum
    call puts
    mov eax, edx
    call print_hex32
    call newline

reset:
    mov esi, offset s_done
    call puts
    mov al, 0xfe                    # i8042: pulse the reset line
    out 0x64, al
1:  hlt
    jmp 1b

    .text

# cfg_read: EAX = register of the test device; returns its dword in EAX.
# Preserves the other registers.
cfg_read:
    push edx
    call cfg_select
    mov dx, PCI_DATA
    in eax, dx
    pop edx
    ret

# cfg_write: EAX = register of the test device, ECX = the dword to write.
# Preserves all registers.
cfg_write:
    push edx
    push eax
    call cfg_select
    mov eax, ecx
    mov dx, PCI_DATA
    out dx, eax
    pop eax
    pop edx
    ret

# cfg_clear: EAX = register of the test device, ECX = the bits to clear
# in its dword. Preserves all registers.
cfg_clear:
    push ecx
    push eax
    call cfg_read
    not ecx
    and ecx, eax
    pop eax
    call cfg_write
    pop ecx
    ret

# find_cap: CL = capability ID. Walks the test device's capability list;
# returns the capability's offset in EDX (0 if it has none) and, when
# found, its first dword (ID, next, message control) in EAX.
find_cap:
    mov eax, 0x34
    call cfg_read
    and eax, 0xfc                   # the capability pointer
1:  mov edx, eax
    test eax, eax
    jz 2f
    call cfg_read
    cmp al, cl
    je 2f
    shr eax, 8
    and eax, 0xfc                   # next
    jmp 1b
2:  ret

# cfg_select: point 0xCF8 at register EAX of the test device (or of the
# device in EBX while scanning, when none is found yet). Clobbers EDX.
cfg_select:
    push eax
    and eax, 0xfc
    mov edx, dword ptr [test_dev]
    cmp edx, 0xffffffff
    jne 1f
    mov edx, ebx
1:  shl edx, 11
    or eax, edx
    or eax, 0x80000000
    mov dx, PCI_ADDR
    out dx, eax
    pop eax
    ret

# msi_handler: the MSI on vector 0x40. Counts it, sends EOI, returns with
# IF still 0 (the RET of fault32.inc, without an error code to drop).
msi_handler:
    add dword ptr [msi_count], 1
irq_return:
    mov dword ptr [LAPIC_EOI], 0
    push eax
    mov eax, dword ptr [esp + 4]    # EIP into the EFLAGS slot
    mov dword ptr [esp + 12], eax
    pop eax
    add esp, 8
    ret

# msix_handler: the MSI-X on vector 0x41; as msi_handler.
msix_handler:
    add dword ptr [msix_count], 1
    jmp irq_return

# intx_handler: INTx on vector 0x42. Counts it and clears the device's
# IRQ_STATUS, which lowers the line, before the EOI.
intx_handler:
    add dword ptr [intx_count], 1
    push eax
    mov eax, dword ptr [bar0]
    mov dword ptr [eax + REG_IRQ_STATUS], 1
    pop eax
    jmp irq_return

# set_gate: makes IDT entry ECX a 32-bit interrupt gate to EAX.
# Clobbers EAX.
set_gate:
    mov word ptr [idt + ecx*8], ax
    mov word ptr [idt + ecx*8 + 2], SEL_CODE32
    mov word ptr [idt + ecx*8 + 4], GATE_INT32
    shr eax, 16
    mov word ptr [idt + ecx*8 + 6], ax
    ret

# print_hex8 / print_hex16: the low 2 or 4 hex digits of EAX.
print_hex8:
    push eax
    shl eax, 24
    call hex_digits2
    pop eax
    ret
print_hex16:
    push eax
    shl eax, 16
    call hex_digits2
    shl eax, 8
    call hex_digits2
    pop eax
    ret
# hex_digits2: the top byte of EAX as 2 hex digits. Preserves EAX.
hex_digits2:
    push eax
    push ecx
    mov ecx, eax
    shr ecx, 28
    call 1f
    mov ecx, eax
    shr ecx, 24
    and ecx, 0xf
    call 1f
    pop ecx
    pop eax
    ret
1:  push eax
    mov al, cl
    add al, 0x30
    cmp al, 0x39
    jbe 2f
    add al, 0x27                    # 'a' - '0' - 10
2:  call putc
    pop eax
    ret

    .include "console32.inc"

    .section .rodata
s_scan:     .asciz "pci: scanning bus 0\n"
s_dev:      .asciz "pci: 00:"
s_fn:       .asciz ".0 "
s_class:    .asciz " class "
s_missing:  .asciz "pci: no test device\n"
s_bar:      .asciz "pci: bar0 "
s_size:     .asciz " size "
s_id:       .asciz "pci: id "
s_no_msi:   .asciz "pci: no MSI capability\n"
s_msi:      .asciz "pci: msi vector 0x40 delivered "
s_msix:     .asciz "pci: msix vector 0x41 delivered "
s_intx:     .asciz "pci: intx line "
s_intx_vec: .asciz " vector 0x42 delivered "
s_fill:     .asciz "pci: dma fill status "
s_fill_ok:  .asciz ", every byte ok\n"
s_fill_bad: .asciz ", wrong byte at "
s_sum:      .asciz "pci: dma sum "
s_cmd:      .asciz "pci: command after the second write "
s_done:     .asciz "pci: done\n"
s_bar2:     .asciz "pci: bar2 "
s_bar2_sum: .asciz "pci: bar2 sum "

    .data
    .balign 4
test_dev:   .long 0xffffffff
bar0:       .long 0
msi_count:  .long 0
msix_count: .long 0
intx_count: .long 0
    .balign 8
idt:
    .fill IDT_ENTRIES * 8, 1, 0
idtr:
    .word IDT_ENTRIES * 8 - 1
    .long idt

    .section .note.GNU-stack, "", @progbits
