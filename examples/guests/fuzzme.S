# fuzzme.S - a fuzz target for doorbell listeners (docs/doorbell.md).
#
# A few dozen CPL0 instructions load a GDT, a TSS, an IDT and static page
# tables, print a banner and IRETQ into CPL3. At CPL3 a small parser with a
# planted bug runs natively (the software KVM backend emulates only CPL0),
# in this loop:
#
#     HELLO(1); SNAPSHOT
#     loop: len = GET_INPUT(input_buf, 256); DONE(parse(input_buf, len))
#
# A fuzzer takes its baseline at SNAPSHOT and resets the VM at DONE, so the
# guest resumes right after SNAPSHOT's OUT each time. A crashing input
# faults in the parser; the exception handler (CPL0) reports it with CRASH
# and halts. With no listener (RAX still the call number after GET_INPUT)
# the guest parses a built-in sample (seed-01.bin) once, prints the result
# on COM1 and writes 0 to the debug-exit port 0xf4.
#
# The CPL3 code reaches its ports (the doorbell, COM1, 0xf4) through the
# TSS I/O permission bitmap: the software backend ignores IOPL at CPL3
# (RFLAGS reads 0x202 there whatever IRETQ loaded) but does check the
# bitmap. HLT at CPL3 (#GP) is this guest's "power off": the handler halts.
#
# Layout (identity map, GVA = GPA; fuzzme.ld places and checks it):
#
#   0x100000  .text    kernel text; exception stubs at 0x100800    S, RO
#   0x101000  .kdata   GDT, TSS + I/O bitmap (0x101080), IDT        S, RW
#                      (0x101400), kernel strings
#   0x102000  .pgtables PML4, PDPT, PD, PT (static)                S, RW
#   0x106000  .kstack  kernel stack, top 0x107000 (TSS.RSP0)        S, RW
#   0x107000  .utext   user code, strings, the built-in sample      U, RO
#   0x108000  .ustack  user stack, top 0x109000                     U, RW
#   0x109000  .udata   parser data; name_field 0x109ff0-0x109fff    U, RW
#   0x10a000  -        guard page: unmapped
#   0x10b000  .input   input_buf 0x10bf00-0x10bfff (256 bytes)      U, RW
#   0x10c000  -        guard page: unmapped
#
# Nothing else is mapped (not the host's tables or boot stack either).
#
# Entry: the host starts vCPU 0 at _start in long mode on its identity map,
# RSP = 0x8000, EDI = vCPU index; other vCPUs halt. CPL0 code uses only
# plain integer and system instructions (every one of them is emulated on
# the software backend); CPL3 code runs on the hardware.

    .intel_syntax noprefix
    .code64

    .include "doorbell.inc"

    .equ COM1_THR, 0x3f8            # transmit holding register
    .equ COM1_LSR, 0x3fd            # line status register
    .equ LSR_THRE, 0x20             # THR empty
    .equ DEBUG_EXIT_PORT, 0xf4      # --device debug-exit

# Fixed addresses (fuzzme.ld asserts them).
    .equ KTEXT, 0x100000
    .equ EXC_STUBS, KTEXT + 0x800   # stub for vector v at EXC_STUBS + 16*v
    .equ KDATA, 0x101000
    .equ TSS_ADDR, KDATA + 0x80
    .equ KSTACK_TOP, 0x107000
    .equ UTEXT, 0x107000
    .equ USTACK_TOP, 0x109000
    .equ UDATA, 0x109000
    .equ GUARD1, 0x10a000
    .equ INPUT_PAGE, 0x10b000
    .equ INPUT_BUF, 0x10bf00
    .equ INPUT_CAP, 256
    .equ GUARD2, 0x10c000

# GDT selectors.
    .equ SEL_KCODE, 0x08
    .equ SEL_KDATA, 0x10
    .equ SEL_UDATA, 0x20 | 3
    .equ SEL_UCODE, 0x28 | 3
    .equ SEL_TSS, 0x30
    .equ RFLAGS_USER, 0x002         # IF = 0, IOPL = 0: ports via the bitmap

# Page-table entry bits; Accessed and Dirty preset so the MMU never writes.
    .equ PTE_TABLE, 0x27            # P RW U A: user bit decided at the leaf
    .equ PTE_K_RO, 0x61             # P A D
    .equ PTE_K_RW, 0x63             # P RW A D
    .equ PTE_U_RO, 0x65             # P U A D
    .equ PTE_U_RW, 0x67             # P RW U A D

# The input format (see README.md): "WV", version 1, then records
# (type, len, payload[len]).
    .equ FMT_VERSION, 1
    .equ REC_NAME, 0x01             # name bytes + NUL; len counts the NUL
    .equ REC_VALUE, 0x02            # 4-byte value
    .equ NAME_MAX, 16               # the size of name_field
# parse() result: status | (records parsed << 8).
    .equ ST_OK, 0
    .equ ST_SHORT, 1                # under 3 bytes
    .equ ST_MAGIC, 2                # not "WV"
    .equ ST_VERSION, 3              # version byte not 1
    .equ ST_TRUNCATED, 4            # a record runs past the end
    .equ ST_LENGTH, 5               # a record's length is wrong for its type
    .equ RESULT_NO_INPUT, 0x80000000 # DONE's arg0 when GET_INPUT failed: | status

# CONSOLE p: the COM1 routines, once per privilege level (kernel: p = k,
# user: p = u). All preserve every register.
#   \p\()putc: write AL       \p\()puts: write the NUL-terminated string at RSI
#   \p\()print_hex8 / _hex32 / _hex64: write AL / EAX / RAX as 2 / 8 / 16
#   lowercase hex digits
    .macro CONSOLE p
\p\()putc:
    push rdx
    push rax
    mov edx, COM1_LSR
1:  in al, dx
    test al, LSR_THRE
    jz 1b
    pop rax
    mov edx, COM1_THR
    out dx, al
    pop rdx
    ret
\p\()puts:
    push rsi
    push rax
1:  mov al, byte ptr [rsi]
    test al, al
    jz 2f
    call \p\()putc
    add rsi, 1
    jmp 1b
2:  pop rax
    pop rsi
    ret
\p\()print_hex8:
    push rcx
    mov ecx, 4
    jmp 1f
\p\()print_hex32:
    push rcx
    mov ecx, 28
    jmp 1f
\p\()print_hex64:
    push rcx
    mov ecx, 60
1:  push rax
    push rdx
    mov rdx, rax
2:  mov rax, rdx
    shr rax, cl
    and eax, 0xf
    cmp al, 10
    jb 3f
    add al, 0x61 - 0x30 - 10
3:  add al, 0x30
    call \p\()putc
    sub ecx, 4
    jns 2b
    pop rdx
    pop rax
    pop rcx
    ret
    .endm

# ===========================================================================
# CPL0: boot and exception handling (GVA 0x100000, supervisor only)
# ===========================================================================
    .text
    .globl _start
_start:
    test edi, edi                   # only vCPU 0 runs the guest
    jnz halt_forever
    mov esp, KSTACK_TOP             # the host's boot stack is not mapped below
    mov eax, offset pml4
    mov cr3, rax
    lgdt [gdtr]
    push SEL_KCODE
    push offset 1f
    retfq
1:  mov eax, SEL_KDATA
    mov ds, eax
    mov es, eax
    mov ss, eax
    xor eax, eax
    mov fs, eax
    mov gs, eax
    mov eax, SEL_TSS
    ltr ax
    lidt [idtr]

    mov rsi, offset s_banner        # fuzzme: parser at CPL3, input buffer at GVA 0x...
    call kputs
    mov eax, INPUT_BUF
    call kprint_hex32
    mov rsi, offset s_banner_end
    call kputs

    push SEL_UDATA                  # IRETQ frame: SS, RSP, RFLAGS, CS, RIP
    push USTACK_TOP
    push RFLAGS_USER
    push SEL_UCODE
    push offset user_main
    iretq

# Every exception lands here from its stub. Stack: [rsp] vector, [rsp+8]
# error code (0 if none), [rsp+16] RIP, CS, RFLAGS, RSP, SS.
exc_common:
    cmp qword ptr [rsp], 13         # HLT at CPL3 (#GP): power off, quietly
    jne 1f
    test byte ptr [rsp + 24], 3
    jz 1f
    mov rax, qword ptr [rsp + 16]
    cmp byte ptr [rax], 0xf4
    je halt_forever
1:  mov rbx, qword ptr [rsp]        # arg0: vector
    mov rcx, qword ptr [rsp + 16]   # arg1: faulting RIP
    mov rdi, qword ptr [rsp + 8]    # arg3: error code
    mov rsi, rdi                    # arg2: CR2 for #PF, else the error code
    cmp ebx, 14
    jne 2f
    mov rsi, cr2
2:  DOORBELL WB_CRASH               # a fuzzer resets the VM here
    cmp eax, WB_CRASH
    jne halt_forever                # answered but not reset: stop
    mov rdx, rsi                    # nobody listening: say it on COM1
    mov rsi, offset s_crash         # fuzzme: crash: vector VV rip R extra X error E
    call kputs
    mov eax, ebx
    call kprint_hex8
    mov rsi, offset s_rip
    call kputs
    mov rax, rcx
    call kprint_hex64
    mov rsi, offset s_extra
    call kputs
    mov rax, rdx
    call kprint_hex64
    mov rsi, offset s_error
    call kputs
    mov rax, rdi
    call kprint_hex64
    mov al, 0x0a
    call kputc
halt_forever:
    cli
    hlt
    jmp halt_forever

    CONSOLE k

# Exception stubs, 16 bytes apart from EXC_STUBS (the IDT is static).
    .macro EXC vec, has_err
    .org EXC_STUBS - KTEXT + 16 * \vec, 0xcc
    .if \has_err == 0
    push 0
    .endif
    push \vec
    jmp exc_common
    .endm
    .org EXC_STUBS - KTEXT, 0xcc
    .globl exc_stubs
exc_stubs:
    EXC 0, 0
    EXC 1, 0
    EXC 2, 0
    EXC 3, 0
    EXC 4, 0
    EXC 5, 0
    EXC 6, 0
    EXC 7, 0
    EXC 8, 1
    EXC 9, 0
    EXC 10, 1
    EXC 11, 1
    EXC 12, 1
    EXC 13, 1
    EXC 14, 1
    EXC 15, 0
    EXC 16, 0
    EXC 17, 1
    EXC 18, 0
    EXC 19, 0
    EXC 20, 0
    EXC 21, 1
    EXC 22, 0
    EXC 23, 0
    EXC 24, 0
    EXC 25, 0
    EXC 26, 0
    EXC 27, 0
    EXC 28, 0
    EXC 29, 1
    EXC 30, 1
    EXC 31, 0
    .org EXC_STUBS - KTEXT + 16 * 32, 0xcc

# ===========================================================================
# Kernel data (GVA 0x101000): GDT, TSS, IDT, strings
# ===========================================================================
    .section .kdata, "aw"
gdt:
    .quad 0                         # 0x00 null
    .quad 0x00af9b000000ffff        # 0x08 64-bit kernel code
    .quad 0x00cf93000000ffff        # 0x10 kernel data
    .quad 0                         # 0x18 unused
    .quad 0x00cff3000000ffff        # 0x20 user data, DPL 3
    .quad 0x00affb000000ffff        # 0x28 64-bit user code, DPL 3
    .equ TSS_LIMIT, 104 + DOORBELL_PORT / 8 + 2 - 1
    .word TSS_LIMIT & 0xffff        # 0x30 64-bit TSS, available (16 bytes)
    .word TSS_ADDR & 0xffff
    .byte (TSS_ADDR >> 16) & 0xff
    .byte 0x89
    .byte (TSS_LIMIT >> 16) & 0x0f
    .byte (TSS_ADDR >> 24) & 0xff
    .long 0, 0
gdt_end:
gdtr:
    .word gdt_end - gdt - 1
    .quad gdt
idtr:
    .word 32 * 16 - 1
    .quad idt

# The TSS: RSP0 for exceptions taken at CPL3, and the I/O permission
# bitmap (a clear bit lets CPL3 use that port). Ports past the TSS limit
# are denied, so the bitmap ends at the doorbell.
    .org TSS_ADDR - KDATA
    .globl tss
tss:
    .long 0
    .quad KSTACK_TOP                # RSP0
    .fill 102 - 12, 1, 0            # RSP1, RSP2, IST1-7: unused
    .word iobitmap - tss            # I/O map base
iobitmap:
    .fill DEBUG_EXIT_PORT / 8, 1, 0xff
    .byte 0xff & ~(1 << (DEBUG_EXIT_PORT % 8))      # 0xf4
    .fill COM1_THR / 8 - DEBUG_EXIT_PORT / 8 - 1, 1, 0xff
    .byte 0x00                                      # 0x3f8-0x3ff, COM1
    .fill DOORBELL_PORT / 8 - COM1_THR / 8 - 1, 1, 0xff
    .byte 0xf0                                      # 0xad0-0xad3, the doorbell
    .byte 0xff                                      # required terminator
iobitmap_end:
    .if (iobitmap_end - tss) != TSS_LIMIT + 1 || (DOORBELL_PORT % 8) != 0
    .error "TSS limit and I/O bitmap disagree"
    .endif

# The IDT: 32 64-bit interrupt gates, DPL 0, to the fixed stubs.
    .org 0x400
    .globl idt
idt:
    .set vec, 0
    .rept 32
    .word (EXC_STUBS + 16 * vec) & 0xffff
    .word SEL_KCODE
    .word 0x8e00
    .word (EXC_STUBS + 16 * vec) >> 16
    .long 0, 0
    .set vec, vec + 1
    .endr

s_banner:       .asciz "fuzzme: parser at CPL3, input buffer at GVA 0x"
s_banner_end:   .asciz " (256 bytes)\n"
s_crash:        .asciz "fuzzme: crash: vector "
s_rip:          .asciz " rip "
s_extra:        .asciz " extra "
s_error:        .asciz " error "

# ===========================================================================
# Page tables (GPA 0x102000-0x105fff): one PT maps everything, 4 KiB pages.
# ===========================================================================
    .section .pgtables, "aw"
    .globl pml4
pml4:
    .quad pdpt + PTE_TABLE
    .fill 511, 8, 0
pdpt:
    .quad pd + PTE_TABLE
    .fill 511, 8, 0
pd:
    .quad pt + PTE_TABLE
    .fill 511, 8, 0
pt:                                 # PT[n] maps GVA n * 4 KiB
    .fill 0x100, 8, 0
    .quad 0x100000 + PTE_K_RO       # 0x100: kernel text
    .quad 0x101000 + PTE_K_RW       # 0x101: kernel data
    .quad 0x102000 + PTE_K_RW       # 0x102-0x105: page tables
    .quad 0x103000 + PTE_K_RW
    .quad 0x104000 + PTE_K_RW
    .quad 0x105000 + PTE_K_RW
    .quad 0x106000 + PTE_K_RW       # 0x106: kernel stack
    .quad 0x107000 + PTE_U_RO       # 0x107: user text
    .quad 0x108000 + PTE_U_RW       # 0x108: user stack
    .quad 0x109000 + PTE_U_RW       # 0x109: parser data (name_field at its end)
    .quad 0                         # 0x10a: guard
    .quad 0x10b000 + PTE_U_RW       # 0x10b: input page (input_buf at its end)
    .quad 0                         # 0x10c: guard
    .fill 512 - 0x10d, 8, 0

    .section .kstack, "aw", @nobits
    .skip 4096

# ===========================================================================
# CPL3: the fuzz loop and the parser (GVA 0x107000, user, read-only)
# ===========================================================================
    .section .utext, "ax"
    .globl user_main
user_main:
    mov ebx, DOORBELL_ABI_VERSION   # HELLO(1)
    xor ecx, ecx
    xor esi, esi
    xor edi, edi
    DOORBELL WB_HELLO
    xor ebx, ebx                    # SNAPSHOT, with RBX..RDI = 0
    DOORBELL WB_SNAPSHOT
    .globl next_input
next_input:                         # every reset resumes here
    mov ebx, offset input_buf
    mov ecx, INPUT_CAP
    DOORBELL WB_GET_INPUT
    cmp eax, WB_GET_INPUT
    je no_listener
    test eax, eax
    jnz no_input
    mov rsi, rbx                    # the length, at most the capacity
    mov eax, INPUT_CAP
    cmp rsi, rax
    cmova rsi, rax
    mov edi, offset input_buf
    call parse
    mov ebx, eax
    xor ecx, ecx
    xor esi, esi
    xor edi, edi
    DOORBELL WB_DONE                # a fuzzer resets the VM here
    jmp next_input

# GET_INPUT failed with status EAX: DONE(RESULT_NO_INPUT | status); if that
# returns, say so and end the run with debug-exit code (status << 1) | 1.
no_input:
    mov r12d, eax
    mov ebx, eax
    or ebx, RESULT_NO_INPUT
    DOORBELL WB_DONE
    mov rsi, offset s_no_input
    call uputs
    mov eax, r12d
    call uprint_hex8
    mov al, 0x0a
    call uputc
    mov eax, r12d
    jmp power_off

# Nobody answered: parse the built-in sample once, print the result, end
# the run with debug-exit code 1.
no_listener:
    mov edi, offset sample
    mov esi, offset sample_end - sample
    call parse
    mov rsi, offset s_no_listener
    call uputs
    call uprint_hex32
    mov al, 0x0a
    call uputc
    xor eax, eax
power_off:
    out DEBUG_EXIT_PORT, al         # ends the run under --device debug-exit
1:  hlt                             # #GP: the kernel halts for good
    jmp 1b

# parse(RDI = buffer, RSI = length) -> EAX = status | (records << 8).
# Clobbers RCX, RDX, R8-R11.
#
#   input  := 'W' 'V' version(1) record*
#   record := type len payload[len]
#     REC_NAME  (1): name + NUL, len counts the NUL (at most 16), copied
#                    into name_field
#     REC_VALUE (2): a 4-byte value, len must be 4
#     others: skipped
#
# The planted bug: REC_NAME checks len <= 16 but not len >= 1. With len 0
# the copy count len - 1 wraps to 0xffffffff and the copy runs off the end
# of name_field into the guard page at 0x10a000 (#PF, write, CR2 0x10a000).
parse:
    xor r8d, r8d                    # records parsed
    mov eax, ST_SHORT
    cmp rsi, 3
    jb 9f
    mov eax, ST_MAGIC
    cmp word ptr [rdi], 0x5657      # "WV"
    jne 9f
    mov eax, ST_VERSION
    cmp byte ptr [rdi + 2], FMT_VERSION
    jne 9f
    mov edx, 3                      # RDX: offset of the next record
1:  xor eax, eax                    # ST_OK at the end of the input
    cmp rdx, rsi
    jae 9f
    mov eax, ST_TRUNCATED
    lea rcx, [rdx + 2]              # RCX: offset of the payload
    cmp rcx, rsi
    ja 9f
    movzx r9d, byte ptr [rdi + rdx]         # type
    movzx r10d, byte ptr [rdi + rdx + 1]    # len
    lea r11, [rcx + r10]            # R11: offset of the record after
    cmp r11, rsi
    ja 9f
    add rcx, rdi                    # RCX: the payload
    cmp r9d, REC_NAME
    je 3f
    cmp r9d, REC_VALUE
    je 5f
2:  add r8d, 1                      # next record
    mov rdx, r11
    jmp 1b

3:  mov eax, ST_LENGTH              # REC_NAME
    cmp r10d, NAME_MAX
    ja 9f
    sub r10d, 1                     # BUG: len 0 -> 0xffffffff bytes
    xor r9d, r9d
4:  cmp r9d, r10d
    je 6f
    mov al, byte ptr [rcx + r9]
    mov byte ptr [name_field + r9], al
    add r9d, 1
    jmp 4b
6:  mov byte ptr [name_field + r10], 0
    jmp 2b

5:  mov eax, ST_LENGTH              # REC_VALUE
    cmp r10d, 4
    jne 9f
    mov r9d, dword ptr [rcx]
    add dword ptr [value_sum], r9d
    jmp 2b

9:  shl r8d, 8
    or eax, r8d
    ret

    CONSOLE u

s_no_listener:  .asciz "fuzzme: no doorbell listener; built-in input parsed, result 0x"
s_no_input:     .asciz "fuzzme: GET_INPUT failed, status "
# The built-in sample: seed-01.bin.
sample:
    .incbin "fuzzme-seeds/seed-01.bin"
sample_end:

    .section .ustack, "aw", @nobits
    .skip 4096

    .section .udata, "aw", @nobits
    .globl value_sum, name_field
value_sum:
    .skip 4
    .skip 0xff0 - 4
name_field:                         # the last 16 bytes before the guard page
    .skip 16

    .section .input, "aw", @nobits
    .skip 0xf00
    .globl input_buf
input_buf:                          # the last 256 bytes before the guard page
    .skip INPUT_CAP

    .section .note.GNU-stack, "", @progbits   # no executable stack (silences ld)
