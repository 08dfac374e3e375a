# minios.S - a tiny 64-bit "OS" kernel for introspection policies.
#
# It has the structures an introspection tool looks for in a real kernel:
#   - its own 4-level page tables, with the kernel linked in the higher half
#     (GVA 0xffffffff80000000 + GPA), so reading its data needs a page walk;
#   - a kernel text page at a fixed address, and page tables at fixed GPAs;
#   - a per-cpu area whose GVA is written to IA32_GS_BASE (like Linux), and
#     whose first field is the GVA of the global task-list head;
#   - a task list (pid, state, name, next) reached from that head;
#   - a system-call entry point whose GVA is written to IA32_LSTAR, entered
#     with the SYSCALL instruction (EFER.SCE set, STAR programmed);
#   - its own GDT (Linux selector layout) and an IDT whose handlers report
#     any exception and halt.
# After a fixed sequence of system calls it writes once into its own kernel
# text and once into its page tables, and prints what it reads back, so a
# policy that write-protects those pages can be seen to deny or allow them.
#
# The layout (all fixed; see minios.ld and README.md):
#
#   GPA 0x100000  GVA 0x100000 (identity)    .boot      boot stub, _start
#   GPA 0x101000  GVA 0xffffffff80101000     .text      kernel text
#   GPA 0x102000  GVA 0xffffffff80102000     .rodata
#   GPA 0x103000  GVA 0xffffffff80103000     .data      percpu, tasks, GDT, IDT
#   GPA 0x104000  GVA 0xffffffff80104000     .pgtables  PML4, PDPTs, PDs, PTs
#   GPA 0x10b000  GVA 0xffffffff8010b000     .stack     8 KiB kernel stack
#
# Entry: the host starts vCPU 0 at _start in long mode on its identity map
# of the first 4 GiB, RSP = 0x8000, EDI = vCPU index. Other vCPUs halt at once.
#
# Assembled with `as --64` directly (not preprocessed); see build.sh.
# Only plain integer instructions (plus the system instructions a kernel
# needs: mov to CR3, lgdt, lidt, far return, rdmsr/wrmsr, syscall): on the
# software KVM backend every instruction goes through KVM's instruction
# emulator. No iret, no sysret, no string instructions, no SSE.

    .intel_syntax noprefix
    .code64

    .equ KERNEL_VBASE, 0xffffffff80000000

    .equ COM1_THR, 0x3f8            # transmit holding register
    .equ COM1_LSR, 0x3fd            # line status register
    .equ LSR_THRE, 0x20             # THR empty: ready for the next byte

    .equ MSR_EFER, 0xc0000080
    .equ MSR_STAR, 0xc0000081
    .equ MSR_LSTAR, 0xc0000082
    .equ MSR_FMASK, 0xc0000084
    .equ MSR_GS_BASE, 0xc0000101
    .equ MSR_KERNEL_GS_BASE, 0xc0000102
    .equ EFER_SCE, 1

    # GDT selectors (the Linux x86-64 layout).
    .equ SEL_KCODE, 0x10            # 64-bit kernel code
    .equ SEL_KDATA, 0x18            # kernel data (SYSCALL loads SS = CS + 8)
    .equ SEL_USER32, 0x23           # STAR[63:48]: SYSRET base (unused)

    # Page-table entry bits. Accessed and Dirty are set up front so the MMU
    # never has to write to the tables itself (a policy may write-protect
    # them). Every mapping is writable and CR0.WP is 0: the kernel does
    # nothing to protect itself; that is left to the hypervisor.
    .equ PTE_P, 0x01
    .equ PTE_RW, 0x02
    .equ PTE_A, 0x20
    .equ PTE_D, 0x40
    .equ PTE_TABLE, PTE_P | PTE_RW | PTE_A            # 0x23: points to a table
    .equ PTE_PAGE, PTE_P | PTE_RW | PTE_A | PTE_D     # 0x63: maps a 4 KiB page
    .equ PTE_TAMPER_BIT, 0x200      # bit 9: ignored by the MMU, free for the OS

    # struct percpu (at IA32_GS_BASE)
    .equ PCPU_TASK_LIST, 0x00       # GVA of task_list_head
    .equ PCPU_CURRENT, 0x08         # GVA of the running task
    .equ PCPU_SELF, 0x10            # GVA of this struct
    .equ PCPU_CPU, 0x18             # cpu number
    .equ PCPU_NSYSCALLS, 0x20       # system calls taken so far
    .equ PCPU_KSTACK, 0x28          # top of the kernel stack
    .equ PCPU_SIZE, 0x40

    # struct task
    .equ T_PID, 0x00
    .equ T_STATE, 0x08
    .equ T_NAME, 0x10               # char[16], NUL-padded
    .equ T_NEXT, 0x20               # GVA of the next task, 0 ends the list
    .equ TASK_SIZE, 0x28
    .equ TASK_READY, 0
    .equ TASK_RUNNING, 1

    # System calls: number in RAX, arguments in RDI, RSI; result in RAX.
    .equ SYS_WRITE, 1
    .equ SYS_GETPID, 2
    .equ SYS_YIELD, 3
    .equ ENOSYS, 38

    .equ ROUNDS, 2                  # passes over the task list

# PHYS r64, r32, sym: r64 = guest-physical address of kernel symbol `sym`.
# Kernel GVAs are GPA + 0xffffffff80000000 and every GPA is below 2 GiB, so
# the GPA is the low 31 bits (the 32-bit AND also clears bits 63:32).
    .macro PHYS r64, r32, sym
    mov \r64, offset \sym
    and \r32, 0x7fffffff
    .endm

# ---------------------------------------------------------------------------
# Boot stub: runs at its physical address on the host's identity map, builds
# the kernel's page tables, switches CR3 and jumps to the higher half.
# ---------------------------------------------------------------------------
    .section .boot, "ax"
    .globl _start
_start:
    test edi, edi                   # only vCPU 0 runs the kernel
    jnz ap_halt

    # Zero the seven page-table pages (the loader already did; be sure).
    PHYS rdi, edi, pml4
    mov ecx, 7 * 512
1:  mov qword ptr [rdi], 0
    add rdi, 8
    sub ecx, 1
    jnz 1b

    # Top level: PML4[0] -> PDPT_lo (identity), PML4[511] -> PDPT_hi.
    PHYS rdi, edi, pml4
    PHYS rax, eax, pdpt_lo
    or eax, PTE_TABLE
    mov qword ptr [rdi], rax
    PHYS rax, eax, pdpt_hi
    or eax, PTE_TABLE
    mov qword ptr [rdi + 511*8], rax

    # Identity: PDPT_lo[0] -> PD_lo, PD_lo[0] -> PT_lo, PT_lo[0x100] maps
    # the boot stub's page (GPA 0x100000), which runs across the CR3 switch.
    PHYS rdi, edi, pdpt_lo
    PHYS rax, eax, pd_lo
    or eax, PTE_TABLE
    mov qword ptr [rdi], rax
    PHYS rdi, edi, pd_lo
    PHYS rax, eax, pt_lo
    or eax, PTE_TABLE
    mov qword ptr [rdi], rax
    PHYS rdi, edi, pt_lo
    mov eax, 0x100000 | PTE_PAGE
    mov qword ptr [rdi + 0x100*8], rax

    # Higher half: PDPT_hi[510] -> PD_hi, PD_hi[0] -> PT_hi, and PT_hi maps
    # the whole image with 4 KiB pages, GVA 0xffffffff80100000 + n*4K ->
    # GPA 0x100000 + n*4K, up to kernel_phys_end.
    PHYS rdi, edi, pdpt_hi
    PHYS rax, eax, pd_hi
    or eax, PTE_TABLE
    mov qword ptr [rdi + 510*8], rax
    PHYS rdi, edi, pd_hi
    PHYS rax, eax, pt_hi
    or eax, PTE_TABLE
    mov qword ptr [rdi], rax
    PHYS rdi, edi, pt_hi
    add rdi, 0x100*8
    mov edx, 0x100000
    mov ecx, offset kernel_phys_end
2:  mov rax, rdx
    or eax, PTE_PAGE
    mov qword ptr [rdi], rax
    add rdi, 8
    add edx, 0x1000
    cmp edx, ecx
    jb 2b

    # Switch to the kernel's own tables. This page stays mapped at the same
    # address; the host's boot stack does not, so RSP moves first thing.
    PHYS rax, eax, pml4
    mov cr3, rax
    mov rsp, offset kstack_top
    mov rax, offset kmain
    jmp rax

ap_halt:
    hlt
    jmp ap_halt

# ---------------------------------------------------------------------------
# System-call entry (IA32_LSTAR). First byte of kernel text.
#
# Entered by SYSCALL from CPL 0: RCX = return RIP, R11 = caller's RFLAGS,
# CS = 0x10, SS = 0x18 (from STAR), RFLAGS &= ~FMASK. The kernel never leaves
# CPL 0, so there is no stack switch and no SWAPGS, and it returns with a
# jump to RCX (SYSRET would always land in CPL 3). Preserves every register
# except RAX (the result), RCX and R11 (clobbered by SYSCALL).
# ---------------------------------------------------------------------------
    .section .text.syscall, "ax"
    .globl syscall_entry
syscall_entry:
    add qword ptr gs:[PCPU_NSYSCALLS], 1
    cmp rax, SYS_WRITE
    je sys_write
    cmp rax, SYS_GETPID
    je sys_getpid
    cmp rax, SYS_YIELD
    je sys_yield
    mov rax, -ENOSYS
syscall_return:
    jmp rcx

# write(buf = RDI (GVA), len = RSI) -> len. Each byte goes to COM1 with
# RDI and RSI still holding the arguments.
sys_write:
    push rbx
    xor ebx, ebx
1:  cmp rbx, rsi
    jae 2f
    mov al, byte ptr [rdi + rbx]
    call putc
    add rbx, 1
    jmp 1b
2:  mov rax, rsi
    pop rbx
    jmp syscall_return

# getpid() -> current->pid
sys_getpid:
    mov rax, qword ptr gs:[PCPU_CURRENT]
    mov rax, qword ptr [rax + T_PID]
    jmp syscall_return

# yield() -> 0: the current task becomes READY, the next one on the list
# (wrapping to the head) becomes RUNNING and current.
sys_yield:
    mov rax, qword ptr gs:[PCPU_CURRENT]
    mov qword ptr [rax + T_STATE], TASK_READY
    mov rax, qword ptr [rax + T_NEXT]
    test rax, rax
    jnz 1f
    mov rax, qword ptr gs:[PCPU_TASK_LIST]
    mov rax, qword ptr [rax]
1:  mov qword ptr [rax + T_STATE], TASK_RUNNING
    mov qword ptr gs:[PCPU_CURRENT], rax
    xor eax, eax
    jmp syscall_return

# ---------------------------------------------------------------------------
# Kernel main, in the higher half on the kernel's own page tables.
# ---------------------------------------------------------------------------
    .text
kmain:
    # Own GDT; reload CS with a far return, then the data segments.
    lgdt [gdtr]
    push SEL_KCODE
    mov rax, offset 1f
    push rax
    retfq
1:  mov eax, SEL_KDATA
    mov ds, eax
    mov es, eax
    mov ss, eax
    xor eax, eax
    mov fs, eax
    mov gs, eax                     # before the GS base write below

    call idt_init
    lidt [idtr]

    # Per-cpu area: IA32_GS_BASE = &percpu (the kernel's GS, as in Linux);
    # IA32_KERNEL_GS_BASE holds the (unused) user GS, 0.
    mov ecx, MSR_GS_BASE
    mov rax, offset percpu
    mov rdx, rax
    shr rdx, 32
    wrmsr
    mov ecx, MSR_KERNEL_GS_BASE
    xor eax, eax
    xor edx, edx
    wrmsr

    # SYSCALL: EFER.SCE, STAR selectors, LSTAR entry, FMASK (TF, IF, DF).
    mov ecx, MSR_EFER
    rdmsr
    or eax, EFER_SCE
    wrmsr
    mov ecx, MSR_STAR
    xor eax, eax
    mov edx, (SEL_USER32 << 16) | SEL_KCODE
    wrmsr
    mov ecx, MSR_LSTAR
    mov rax, offset syscall_entry
    mov rdx, rax
    shr rdx, 32
    wrmsr
    mov ecx, MSR_FMASK
    mov eax, 0x700
    xor edx, edx
    wrmsr

    mov rsi, offset s_boot
    call puts

    # minios: cr3 <CR3> lstar <LSTAR> gs <GS_BASE>, the last two read back.
    mov rsi, offset s_cr3
    call puts
    mov rax, cr3
    call print_hex64
    mov rsi, offset s_lstar
    call puts
    mov ecx, MSR_LSTAR
    call rdmsr64
    call print_hex64
    mov rsi, offset s_gs
    call puts
    mov ecx, MSR_GS_BASE
    call rdmsr64
    call print_hex64
    call newline

    # minios: tasks <name> ... : walk the list from the head.
    mov rsi, offset s_tasks
    call puts
    xor r14d, r14d                  # task count
    mov rbx, qword ptr gs:[PCPU_TASK_LIST]
    mov rbx, qword ptr [rbx]
3:  test rbx, rbx
    jz 4f
    mov al, 0x20
    call putc
    mov rsi, rbx
    add rsi, T_NAME
    call put_name
    add r14d, 1
    mov rbx, qword ptr [rbx + T_NEXT]
    jmp 3b
4:  call newline

    # The main loop: for each task in turn, getpid, write a line, yield.
    mov r12d, ROUNDS
round:
    mov r13d, r14d
task_step:
    mov eax, SYS_GETPID
    syscall
    mov rbx, rax                    # pid

    mov rdi, offset linebuf         # "task <name> pid <pid>\n"
    mov rsi, offset s_task
    call strcpy
    mov rsi, qword ptr gs:[PCPU_CURRENT]
    add rsi, T_NAME
    call namecpy
    mov rsi, offset s_pid
    call strcpy
    mov rax, rbx
    call fmt_dec
    mov byte ptr [rdi], 0x0a
    add rdi, 1
    mov rsi, rdi
    mov rdi, offset linebuf
    sub rsi, rdi                    # length
    mov eax, SYS_WRITE
    syscall

    mov eax, SYS_YIELD
    syscall
    sub r13d, 1
    jnz task_step
    sub r12d, 1
    jnz round

    # minios: <n> syscalls, current <name>
    mov rsi, offset s_minios
    call puts
    mov rax, qword ptr gs:[PCPU_NSYSCALLS]
    call print_dec
    mov rsi, offset s_syscalls
    call puts
    mov rsi, qword ptr gs:[PCPU_CURRENT]
    add rsi, T_NAME
    call put_name
    call newline

    # Tampering: one byte store into kernel text, one bit flip in an unused
    # PTE, each read back and printed whether or not it took effect.
    mov rbx, offset text_tamper_target
    mov byte ptr [rbx], 0x90
    mov rsi, offset s_tamper_text
    call puts
    xor eax, eax
    mov al, byte ptr [rbx]
    call print_hex8
    call newline

    mov rbx, offset pt_hi + 511*8   # PTE for GVA 0xffffffff801ff000, unused
    xor qword ptr [rbx], PTE_TAMPER_BIT
    mov rsi, offset s_tamper_pt
    call puts
    mov rax, qword ptr [rbx]
    call print_hex64
    call newline

    mov rsi, offset s_done
    call puts
halt:
    hlt
    jmp halt                        # in case the vCPU is ever resumed

# rdmsr64: RAX = MSR[ECX] (EDX:EAX combined). Clobbers RDX.
rdmsr64:
    xor eax, eax
    xor edx, edx
    rdmsr
    shl rdx, 32
    or rax, rdx
    ret

# idt_init: fill the 32 exception gates (64-bit interrupt gates, selector
# SEL_KCODE, DPL 0) from exc_stubs. Clobbers RAX, RCX, RDX, RSI, RDI.
idt_init:
    mov rsi, offset exc_stubs
    mov rdi, offset idt
    mov ecx, 32
1:  mov rax, qword ptr [rsi]
    mov word ptr [rdi], ax                  # offset 15:0
    mov word ptr [rdi + 2], SEL_KCODE
    mov word ptr [rdi + 4], 0x8e00          # P, DPL 0, 64-bit interrupt gate
    mov rdx, rax
    shr rdx, 16
    mov word ptr [rdi + 6], dx              # offset 31:16
    shr rax, 32
    mov dword ptr [rdi + 8], eax            # offset 63:32
    mov dword ptr [rdi + 12], 0
    add rsi, 8
    add rdi, 16
    sub ecx, 1
    jnz 1b
    ret

# Exception stubs: push a 0 error code where the CPU pushes none, then the
# vector; exc_common prints both with RIP and CR2 and halts for good (there
# is no IRET on this backend to return with).
    .macro EXC vec, has_err
exc_\vec:
    .if \has_err == 0
    push 0
    .endif
    push \vec
    jmp exc_common
    .endm

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

# Stack: [rsp] vector, [rsp+8] error code, [rsp+16] RIP, CS, RFLAGS, RSP, SS.
exc_common:
    mov rsi, offset s_panic
    call puts
    mov rax, qword ptr [rsp]
    call print_hex8
    mov rsi, offset s_err
    call puts
    mov rax, qword ptr [rsp + 8]
    call print_hex64
    mov rsi, offset s_rip
    call puts
    mov rax, qword ptr [rsp + 16]
    call print_hex64
    mov rsi, offset s_cr2
    call puts
    mov rax, cr2
    call print_hex64
    call newline
1:  hlt
    jmp 1b

# strcpy: copy the NUL-terminated string at RSI to RDI, without the NUL;
# RDI ends just past the copy. Preserves the other registers.
strcpy:
    push rsi
    push rax
1:  mov al, byte ptr [rsi]
    test al, al
    jz 2f
    mov byte ptr [rdi], al
    add rsi, 1
    add rdi, 1
    jmp 1b
2:  pop rax
    pop rsi
    ret

# namecpy: like strcpy for a task name at RSI (at most 16 bytes).
namecpy:
    push rsi
    push rcx
    push rax
    mov ecx, 16
1:  mov al, byte ptr [rsi]
    test al, al
    jz 2f
    mov byte ptr [rdi], al
    add rsi, 1
    add rdi, 1
    sub ecx, 1
    jnz 1b
2:  pop rax
    pop rcx
    pop rsi
    ret

# put_name: write the task name at RSI (at most 16 bytes). Preserves all
# registers.
put_name:
    push rsi
    push rcx
    push rax
    mov ecx, 16
1:  mov al, byte ptr [rsi]
    test al, al
    jz 2f
    call putc
    add rsi, 1
    sub ecx, 1
    jnz 1b
2:  pop rax
    pop rcx
    pop rsi
    ret

# fmt_dec: write RAX (below 100000) in decimal at RDI, no leading zeros;
# RDI ends just past the digits. Uses repeated subtraction (no DIV).
# Preserves the other registers.
fmt_dec:
    push rax
    push rbx
    push rcx
    push rdx
    push r8
    push r9
    mov r8, offset pow10
    xor r9d, r9d                    # a digit has been written
    mov ecx, 5
1:  mov rbx, qword ptr [r8]
    xor edx, edx
2:  cmp rax, rbx
    jb 3f
    sub rax, rbx
    add edx, 1
    jmp 2b
3:  test edx, edx
    jnz 4f
    test r9d, r9d
    jnz 4f
    cmp ecx, 1                      # the units digit is always written
    jne 5f
4:  add dl, 0x30
    mov byte ptr [rdi], dl
    add rdi, 1
    mov r9d, 1
5:  add r8, 8
    sub ecx, 1
    jnz 1b
    pop r9
    pop r8
    pop rdx
    pop rcx
    pop rbx
    pop rax
    ret

# print_dec: write RAX (below 100000) in decimal. Preserves all registers.
print_dec:
    push rdi
    push rsi
    mov rdi, offset numbuf
    call fmt_dec
    mov byte ptr [rdi], 0
    mov rsi, offset numbuf
    call puts
    pop rsi
    pop rdi
    ret

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

# newline: write "\n". Preserves all registers.
newline:
    push rax
    mov al, 0x0a
    call putc
    pop rax
    ret

# print_hex64 / print_hex8: write RAX as 16 / the low byte of RAX as 2
# lowercase hex digits. Preserve all registers.
print_hex64:
    push rcx
    mov ecx, 60                     # shift for the top nibble
    jmp print_hex
print_hex8:
    push rcx
    mov ecx, 4
print_hex:
    push rax
    push rdx
    mov rdx, rax
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
    pop rax
    pop rcx
    ret

# The byte the tampering demo overwrites: kernel text + 0xff0 (minios.ld),
# GVA 0xffffffff80101ff0, GPA 0x101ff0. Never executed; int3 filler.
    .section .ktext.tamper, "ax"
    .globl text_tamper_target
text_tamper_target:
    .fill 16, 1, 0xcc

    .section .rodata
    .balign 8
pow10:
    .quad 10000, 1000, 100, 10, 1
exc_stubs:
    .quad exc_0, exc_1, exc_2, exc_3, exc_4, exc_5, exc_6, exc_7
    .quad exc_8, exc_9, exc_10, exc_11, exc_12, exc_13, exc_14, exc_15
    .quad exc_16, exc_17, exc_18, exc_19, exc_20, exc_21, exc_22, exc_23
    .quad exc_24, exc_25, exc_26, exc_27, exc_28, exc_29, exc_30, exc_31
s_boot:         .asciz "minios: booting\n"
s_cr3:          .asciz "minios: cr3 "
s_lstar:        .asciz " lstar "
s_gs:           .asciz " gs "
s_tasks:        .asciz "minios: tasks"
s_task:         .asciz "task "
s_pid:          .asciz " pid "
s_minios:       .asciz "minios: "
s_syscalls:     .asciz " syscalls, current "
s_tamper_text:  .asciz "tamper text: "
s_tamper_pt:    .asciz "tamper pt: "
s_done:         .asciz "minios: done\n"
s_panic:        .asciz "minios: panic: exception "
s_err:          .asciz " error "
s_rip:          .asciz " rip "
s_cr2:          .asciz " cr2 "

# ---------------------------------------------------------------------------
# Kernel data, GVA 0xffffffff80103000 (GPA 0x103000). Offsets are fixed.
# ---------------------------------------------------------------------------
    .data

# struct task { u64 pid; u64 state; char name[16]; u64 next; } (0x28 bytes)
    .macro TASK pid, state, name, next
    .quad \pid
    .quad \state
1:  .ascii "\name"
    .fill 16 - (. - 1b), 1, 0
    .quad \next
    .endm

# +0x000: the per-cpu area of cpu 0; IA32_GS_BASE points here.
    .globl percpu
percpu:
    .quad task_list_head            # +0x00 GVA of task_list_head
    .quad task_init                 # +0x08 current task
    .quad percpu                    # +0x10 self
    .quad 0                         # +0x18 cpu number
    .quad 0                         # +0x20 system calls taken
    .quad kstack_top                # +0x28 kernel stack top
    .quad 0, 0                      # +0x30 reserved

# +0x040: the global task-list head: GVA of the first task.
    .globl task_list_head
task_list_head:
    .quad task_init

# +0x080: the task table. Array order is not list order: the list is
# init -> shell -> netd -> logger, so only following `next` gives it.
    .balign 0x80
    .globl task_table
task_table:
task_init:      TASK 1, TASK_RUNNING, "init", task_shell      # +0x080
task_logger:    TASK 108, TASK_READY, "logger", 0             # +0x0a8
task_shell:     TASK 42, TASK_READY, "shell", task_netd       # +0x0d0
task_netd:      TASK 73, TASK_READY, "netd", task_logger      # +0x0f8

# +0x140: GDT, Linux layout, Accessed bits preset (the CPU never writes it).
    .balign 0x40
gdt:
    .quad 0                         # 0x00 null
    .quad 0x00cf9b000000ffff        # 0x08 32-bit kernel code (unused)
    .quad 0x00af9b000000ffff        # 0x10 64-bit kernel code
    .quad 0x00cf93000000ffff        # 0x18 kernel data
    .quad 0x00cffb000000ffff        # 0x20 32-bit user code (unused)
    .quad 0x00cff3000000ffff        # 0x28 user data (unused)
    .quad 0x00affb000000ffff        # 0x30 64-bit user code (unused)
gdt_end:
gdtr:
    .word gdt_end - gdt - 1
    .quad gdt
idtr:
    .word 32 * 16 - 1
    .quad idt

# +0x1c0: line buffer for write(), scratch for decimal numbers.
    .balign 0x40
linebuf:
    .fill 64, 1, 0
numbuf:
    .fill 16, 1, 0

# +0x400: IDT, 32 16-byte gates, filled by idt_init.
    .balign 0x400
idt:
    .fill 32 * 16, 1, 0

# ---------------------------------------------------------------------------
# Page tables, GPA 0x104000-0x10afff (GVA + 0xffffffff80000000).
# ---------------------------------------------------------------------------
    .section .pgtables, "aw", @nobits
    .balign 4096
    .globl pml4, pdpt_hi, pd_hi, pt_hi, pdpt_lo, pd_lo, pt_lo
pml4:       .skip 4096              # GPA 0x104000 (CR3)
pdpt_hi:    .skip 4096              # GPA 0x105000 PML4[511]
pd_hi:      .skip 4096              # GPA 0x106000 PDPT_hi[510]
pt_hi:      .skip 4096              # GPA 0x107000 PD_hi[0]
pdpt_lo:    .skip 4096              # GPA 0x108000 PML4[0]
pd_lo:      .skip 4096              # GPA 0x109000 PDPT_lo[0]
pt_lo:      .skip 4096              # GPA 0x10a000 PD_lo[0]

    .section .stack, "aw", @nobits
    .balign 4096
kstack:
    .skip 8192                      # GPA 0x10b000-0x10cfff
kstack_top:

    .section .note.GNU-stack, "", @progbits   # no executable stack (silences ld)
