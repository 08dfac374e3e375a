#!/usr/bin/env python3
"""Reads a wasmvisor guest core (an ELF vmcore) with drgn, without vmlinux.

Usage: read_core.py CORE --comm-offset N [--release-offset M]

drgn (0.2 and 0.3 at least) has no type information without the kernel's
DWARF debug info: it reads neither BTF nor CTF. What it does without debug
info is this, and this script uses nothing more:

* it opens an ELF core as a Linux kernel core when the core has a
  VMCOREINFO note with OSRELEASE, PAGESIZE and SYMBOL(swapper_pg_dir);
* drgn.helpers.linux.kallsyms.load_vmlinux_kallsyms decodes the kernel's
  own kallsyms tables, found through the SYMBOL(kallsyms_*) and
  SYMBOL(_stext) lines of VMCOREINFO, into a symbol index;
* prog.read reads raw memory at kernel virtual addresses, through the
  core's PT_LOAD headers or the kernel's page tables.

So member offsets come from the caller, who takes them from the kernel's
BTF: --comm-offset is offsetof(struct task_struct, comm); --release-offset,
if given, offsetof(struct uts_namespace, name.release), and makes the
script check the release in the core's memory against VMCOREINFO's.

Prints, one per line: init_task=0x<address> (from kallsyms), comm=<the
comm of init_task>, release=<the kernel release>. On any failure it prints
one line, "read_core: error: ...", to stderr and exits with status 1.
"""

import argparse
import sys

TASK_COMM_LEN = 16  # include/linux/sched.h
UTS_LEN = 65  # __NEW_UTS_LEN + 1


def fail(message):
    print(f"read_core: error: {message}", file=sys.stderr)
    sys.exit(1)


def c_string(data):
    return data.split(b"\0", 1)[0].decode("ascii", errors="backslashreplace")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("core", help="the ELF core file")
    parser.add_argument(
        "--comm-offset", type=int, required=True, help="offsetof(struct task_struct, comm)"
    )
    parser.add_argument(
        "--release-offset",
        type=int,
        help="offsetof(struct uts_namespace, name.release): check init_uts_ns against VMCOREINFO",
    )
    args = parser.parse_args()

    try:
        import drgn
        from drgn.helpers.linux.kallsyms import load_vmlinux_kallsyms
    except ImportError as error:
        fail(f"cannot import drgn ({error}); install it with 'pip install drgn'")

    prog = drgn.Program()
    try:
        prog.set_core_dump(args.core)
    except Exception as error:
        fail(f"drgn cannot open {args.core}: {error}")
    if not prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
        fail(f"drgn does not take {args.core} for a Linux kernel core (no VMCOREINFO note?)")

    try:
        index = load_vmlinux_kallsyms(prog)
        prog.register_symbol_finder("vmlinux_kallsyms", index, enable_index=0)
    except Exception as error:
        fail(f"drgn cannot load kallsyms through VMCOREINFO: {error}")

    try:
        init_task = prog.symbol("init_task").address
    except LookupError as error:
        fail(f"no init_task in kallsyms: {error}")
    try:
        comm = c_string(prog.read(init_task + args.comm_offset, TASK_COMM_LEN))
    except drgn.FaultError as error:
        fail(f"cannot read init_task.comm at {init_task + args.comm_offset:#x}: {error}")

    try:
        release = prog["UTS_RELEASE"].string_().decode("ascii", errors="backslashreplace")
    except Exception as error:
        fail(f"no kernel release in VMCOREINFO: {error}")
    if args.release_offset is not None:
        try:
            uts = prog.symbol("init_uts_ns").address
            in_memory = c_string(prog.read(uts + args.release_offset, UTS_LEN))
        except (LookupError, drgn.FaultError) as error:
            fail(f"cannot read init_uts_ns's release: {error}")
        if in_memory != release:
            fail(f"the core's memory says release {in_memory!r} but VMCOREINFO says {release!r}")

    print(f"init_task={init_task:#x}")
    print(f"comm={comm}")
    print(f"release={release}")


if __name__ == "__main__":
    main()
