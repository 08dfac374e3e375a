# pvh-exit.elf: the smallest kernel a PVH loader boots. It checks the
# start-info magic, writes "ok\n" to COM1 and ends the VM through QEMU's
# isa-debug-exit port (0xf4) with value 0, exit code 1. About 20
# instructions: the benchmark measures a VM's whole life with it, exec to
# exit, against QEMU microvm booting the same file (`-kernel`).
    .code32
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4, 2f - 1f, 18            # XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
1:  .long pvh_start
2:
    .text
    .globl pvh_start
pvh_start:
    cmpl $0x336ec578, (%ebx)        # hvm_start_info.magic
    jne bad
    mov $msg, %esi
    mov $0x3f8, %dx
1:  movb (%esi), %al
    test %al, %al
    jz 2f
    outb %al, %dx
    inc %esi
    jmp 1b
2:  mov $0xf4, %dx
    xor %eax, %eax
    outl %eax, %dx
3:  hlt
    jmp 3b
bad:
    mov $0xf4, %dx
    mov $0x7f, %eax
    outl %eax, %dx
    jmp 3b
    .section .rodata
msg: .asciz "ok\n"
