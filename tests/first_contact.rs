//! What a newcomer types first, without reading the docs: a plain `run`
//! shows the guest's console (the built-in UART is the default console),
//! `--serial none` turns it off, PVH images of either ELF class boot with
//! `--kernel` like QEMU boots them, and a guest written for QEMU's
//! isa-debug-exit ends the run with the exit code it chose.

use std::path::{Path, PathBuf};
use std::process::Command;

use wasmvisor_tests::*;

#[test]
fn a_plain_run_of_hello_prints_its_line() {
    require_kvm!();
    let r = Cmd::guest("hello.elf").expect_exit(0);
    assert_eq!(r.stdout, "Hello from a wasmvisor guest!\n");
}

#[test]
fn serial_none_prints_nothing() {
    require_kvm!();
    let r = Cmd::guest("hello.elf").serial("none").expect_exit(0);
    assert_eq!(r.stdout, "", "no console: {r:?}");
    // The guest's writes went to the default handler instead.
    assert_contains(&r.stderr, &["built-in devices: 0,"]);
}

#[test]
fn a_policy_on_the_uart_ports_still_answers_first() {
    require_kvm!();
    let r = Cmd::guest("hello.elf").policy("serial").expect_exit(0);
    assert_eq!(r.stdout, "Hello from a wasmvisor guest!\n", "printed once");
    assert_contains(
        &r.stderr,
        &["built-in devices: 0,", "policy serial: handled "],
    );
}

/// A PVH guest in ELF class `class`: checks the start_info magic in EBX,
/// prints `msg` on COM1 without polling, then writes `code` to the
/// debug-exit port 0xf4 (or 0x7f there if the magic is wrong).
const PVH_GUEST: &str = r#"
    .code32
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4, 2f - 1f, 18            # XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
1:  ENTRY_FIELD pvh_start
2:
    .text
    .globl pvh_start
pvh_start:
    cmpl $0x336ec578, (%ebx)        # hvm_start_info.magic
    jne bad
    mov $msg, %esi
1:  movb (%esi), %al
    test %al, %al
    jz 2f
    mov $0x3f8, %dx
    outb %al, %dx
    inc %esi
    jmp 1b
2:  mov $0xf4, %dx
    mov $CODE, %eax
    outl %eax, %dx
3:  hlt
    jmp 3b
bad:
    mov $0xf4, %dx
    mov $0x7f, %eax
    outl %eax, %dx
    jmp 3b
    .section .rodata
msg: .asciz MSG
"#;

const PVH_LD: &str = "ENTRY(pvh_start)
SECTIONS {
  . = 0x100000;
  .text : { *(.text*) }
  .rodata : { *(.rodata*) }
  .note.Xen : { *(.note.Xen) }
  /DISCARD/ : { *(.note.gnu*) *(.comment) }
}
";

/// Assembles and links the PVH guest with binutils.
fn pvh_image(dir: &Path, class: u32, code: u32, msg: &str) -> PathBuf {
    let (width, field, emulation) = match class {
        32 => ("--32", ".long", "elf_i386"),
        _ => ("--64", ".quad", "elf_x86_64"),
    };
    let src = format!(
        ".macro ENTRY_FIELD s\n    {field} \\s\n.endm\n.set CODE, {code:#x}\n{}",
        PVH_GUEST.replace("MSG", &format!("{msg:?}"))
    );
    let s = dir.join(format!("pvh{class}.S"));
    let o = dir.join(format!("pvh{class}.o"));
    let ld = dir.join("pvh.ld");
    let elf = dir.join(format!("pvh{class}.elf"));
    std::fs::write(&s, src).unwrap();
    std::fs::write(&ld, PVH_LD).unwrap();
    let run = |cmd: &mut Command| {
        let out = cmd
            .output()
            .expect("binutils (scripts/setup.sh installs them)");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("as").args([width, "-o"]).arg(&o).arg(&s));
    run(Command::new("ld")
        .args(["-m", emulation, "-T"])
        .arg(&ld)
        .arg("-o")
        .arg(&elf)
        .arg(&o));
    elf
}

fn pvh_boots_and_exits_with_its_code(class: u32, code: u32) {
    require_kvm!();
    let dir = scratch(&format!("pvh{class}"));
    let msg = format!("hello from an ELF{class} PVH image\n");
    let elf = pvh_image(&dir, class, code, &msg);
    let r = Cmd::kernel(&elf).device("debug-exit").run();
    assert_eq!(r.stdout, msg, "{r:?}");
    let want = ((code << 1) | 1) as i32;
    assert_eq!(r.code, want, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "the guest wrote {code:#x} to the debug-exit port 0xf4: exit code {want}"
        )),
        "{}",
        r.stderr
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_elf32_pvh_image_boots_and_exits_through_debug_exit() {
    pvh_boots_and_exits_with_its_code(32, 0x2a);
}

#[test]
fn an_elf64_pvh_image_boots_and_exits_through_debug_exit() {
    pvh_boots_and_exits_with_its_code(64, 0x15);
}

#[test]
fn debug_exit_on_another_port_and_without_the_device() {
    require_kvm!();
    let dir = scratch("pvh-port");
    let elf = pvh_image(&dir, 32, 3, "x\n");
    // On 0x501 (QEMU's default port) the write to 0xf4 is the default
    // handler's; the guest halts and, with the irqchip a --kernel boot
    // has, waits: the run is killed after a while.
    let r = Cmd::kernel(&elf)
        .device("debug-exit=0x501")
        .run_within(std::time::Duration::from_secs(5));
    let r = r.expect_err("without an exit port the run goes on");
    assert_eq!(r.stdout, "x\n");
    // A bad port is one error line.
    let line = Cmd::kernel(&elf)
        .device("debug-exit=0x10000")
        .run()
        .one_error_line();
    assert_contains(&line, &["invalid --device `debug-exit=0x10000`"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn pvh_images_the_loader_refuses_get_one_line_saying_why() {
    require_kvm!();
    let dir = scratch("pvh-bad");
    let good = pvh_image(&dir, 32, 1, "x\n");
    let bytes = std::fs::read(&good).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated.elf",
            bytes[..40].to_vec(),
            "ELF header is cut short",
        ),
        (
            "arm.elf",
            {
                let mut b = bytes.clone();
                b[18] = 40;
                b
            },
            "built for another processor (ELF machine 40)",
        ),
        (
            "bigendian.elf",
            {
                let mut b = bytes.clone();
                b[5] = 2;
                b
            },
            "big-endian",
        ),
    ];
    for (name, image, want) in cases {
        let p = dir.join(name);
        std::fs::write(&p, image).unwrap();
        let line = Cmd::kernel(&p).run().one_error_line();
        assert!(line.contains(want), "{name}: {line}");
        assert!(
            line.contains("cannot be booted through PVH"),
            "{name}: {line}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_protected_mode_flat_guest_run_without_mode_gets_a_hint() {
    require_kvm!();
    let r = Cmd::guest("devices.bin").expect_exit(3);
    assert!(
        r.stderr
            .contains("wasmvisor: hint: a flat binary starts in 16-bit real mode"),
        "{}",
        r.stderr
    );
    // With the mode the guest runs, and no hint.
    let r = Cmd::guest("devices.bin").mode("protected").expect_exit(0);
    assert!(!r.stderr.contains("hint"), "{}", r.stderr);
}

/// The command lines of the processes, other than this one, whose command
/// line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n != me && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

/// Closing a VM with an in-kernel irqchip keeps the kernel busy for about
/// 16 ms here, so `run` reports first and leaves that teardown to a helper
/// that outlives it (docs/performance.md §8). Everything is said when the
/// process exits, and the helper is gone soon after.
#[test]
fn the_vm_teardown_is_left_to_a_helper_that_ends_after_the_run() {
    require_kvm!();
    let dir = scratch("teardown");
    let elf = dir.join("pvh-exit-teardown.elf");
    std::fs::copy(guest("pvh-exit.elf"), &elf).unwrap();
    let r = Cmd::kernel(&elf).device("debug-exit").run();
    assert_eq!(r.stdout, "ok\n", "{r:?}");
    assert_eq!(r.code, 1, "{r:?}");
    assert_contains(
        &r.stderr,
        &[
            "the guest wrote 0x0 to the debug-exit port 0xf4: exit code 1",
            "exits: 4 in ",
        ],
    );
    let needle = elf.display().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = processes_mentioning(&needle);
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running 10 s after the run: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::fs::remove_dir_all(&dir).ok();
}
