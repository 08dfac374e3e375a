//! Linux-aware introspection on the stock Debian kernel (`make kernel`),
//! booted through PVH on KVM: the host builds the kernel profile from the
//! image (kallsyms and BTF), and the Linux policies read the running
//! guest through it. On this machine's KVM the kernel reaches `Memory:`
//! and then stops in the instruction emulator (docs/linux.md), so the
//! policies run at that line (their default trigger).
//!
//! One boot serves every check on the real image (one test, since the
//! test runner gives each test its own process); a second boots a copy
//! whose `sys_call_table[0]` points at `__x64_sys_write`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use wasmvisor_profile::{vaddr_to_file_offset, Profile};
use wasmvisor_tests::*;

fn linux(name: &str) -> PathBuf {
    let p = assets().join("linux").join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `make kernel` (scripts/fetch-kernel.sh) first",
        p.display()
    );
    p
}

/// What one boot showed: console, stderr, exit code and events, and the
/// dumps taken of the stalled kernel.
struct Boot {
    code: i32,
    stdout: String,
    stderr: String,
    events: Vec<Value>,
    /// `vm dump` of the held VM, and `vm dump --from` of its snapshot.
    cores: Vec<PathBuf>,
}

impl Boot {
    fn of(&self, kind: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e["kind"] == kind)
            .map(|e| &e["data"])
            .collect()
    }
}

/// Boots `kernel` through PVH under the three Linux policies and the
/// syscall tracer, until the emulator stops it after `Memory:`; the VM is
/// held there (`--hold-on-fault`) and, with `dump`, written as an ELF core
/// directly and through a snapshot, before it is stopped.
fn boot(kernel: &Path, tag: &str, dump: bool) -> Boot {
    let dir = scratch(&format!("linux-vmi-{tag}"));
    let events = dir.join("events.jsonl");
    let ctl = dir.join("ctl");
    let info = policy("linux-info");
    let tasks = policy("linux-tasks");
    let guard = format!("{}:@grant=protect-memory", policy("syscall-guard"));
    let tracer = format!("{}:names=linux,@grant=debug", policy("syscall-tracer"));
    let mut vm = Background::start(
        &dir,
        "boot",
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--mem",
            "256M",
            "--policy",
            &info,
            "--policy",
            &tasks,
            "--policy",
            &guard,
            "--policy",
            &tracer,
            "--events",
            events.to_str().unwrap(),
            "--hold-on-fault",
            "--control",
            ctl.to_str().unwrap(),
        ],
    );
    vm.wait_for_stderr("holding the VM for inspection", RUN_LIMIT);
    let mut cores = Vec::new();
    if dump {
        let core = dir.join("core.elf");
        let snap = dir.join("snap");
        let from_snap = dir.join("core-from-snapshot.elf");
        for args in [
            vec![
                "vm",
                "dump",
                "--control",
                ctl.to_str().unwrap(),
                core.to_str().unwrap(),
            ],
            vec![
                "vm",
                "snapshot",
                "--control",
                ctl.to_str().unwrap(),
                snap.to_str().unwrap(),
            ],
            vec![
                "vm",
                "dump",
                "--from",
                snap.to_str().unwrap(),
                from_snap.to_str().unwrap(),
            ],
        ] {
            let r = wasmvisor(&args);
            assert_eq!(r.code, 0, "{args:?}: {r:?}");
        }
        cores = vec![core, from_snap];
    }
    vm.signal("TERM");
    let code = vm.wait(Duration::from_secs(30));
    let events = if events.is_file() {
        json_lines(&events)
    } else {
        Vec::new()
    };
    Boot {
        code,
        stdout: vm.stdout(),
        stderr: vm.stderr(),
        events,
        cores,
    }
}

/// The Python of the drgn virtualenv `make drgn` sets up.
fn drgn_python() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME");
    let p = Path::new(&home).join(".cache/wasmvisor/drgn-venv/bin/python");
    assert!(
        p.is_file(),
        "{} is missing: run `make drgn` (scripts/setup-drgn.sh) first",
        p.display()
    );
    p
}

fn profile() -> &'static Profile {
    static PROFILE: OnceLock<Profile> = OnceLock::new();
    PROFILE.get_or_init(|| Profile::from_file(&linux("vmlinux")).expect("the profile"))
}

#[test]
fn the_linux_policies_read_the_running_debian_kernel() {
    require_kvm!();
    let b = boot(&linux("vmlinux"), "real", true);
    assert!(
        b.stdout.contains("Memory:"),
        "the boot reaches the trigger line: {}\n{}",
        b.stdout,
        b.stderr
    );

    // linux-info: the release the banner prints, read through the guest's
    // page tables at init_uts_ns.
    let banner = b
        .stdout
        .lines()
        .find_map(|l| l.split("Linux version ").nth(1))
        .expect("the banner");
    let info = b.of("linux-info");
    assert_eq!(info.len(), 1, "{:?}", b.events);
    let release = info[0]["release"].as_str().unwrap();
    assert!(
        banner.starts_with(release),
        "banner {banner:?}, release {release:?}"
    );
    let version = std::fs::read_to_string(linux("version")).unwrap();
    assert_eq!(release, version.trim());
    assert_eq!(info[0]["machine"], "x86_64");
    assert_eq!(
        hex_field(&info[0]["init_uts_ns"]),
        profile().symbols.lookup("init_uts_ns").unwrap(),
        "PVH: no KASLR, so the link-time address"
    );

    // linux-tasks: only the boot task exists this early; found from
    // init_task through BTF offsets.
    let tasks = b.of("linux-task");
    let swapper = tasks
        .iter()
        .find(|t| t["pid"] == 0)
        .unwrap_or_else(|| panic!("no pid 0 in {tasks:?}"));
    assert!(
        swapper["comm"].as_str().unwrap().starts_with("swapper"),
        "{swapper}"
    );
    assert_eq!(
        hex_field(&swapper["task"]),
        profile().symbols.lookup("init_task").unwrap()
    );
    assert_eq!(b.of("linux-tasks")[0]["count"], tasks.len());

    // syscall-guard: the whole table, nothing hooked.
    let table = b.of("syscall-table");
    assert_eq!(table.len(), 1, "{:?}", b.events);
    assert_eq!(
        hex_field(&table[0]["table"]),
        profile().symbols.lookup("sys_call_table").unwrap()
    );
    assert!(table[0]["entries"].as_u64().unwrap() > 300, "{}", table[0]);
    assert_eq!(table[0]["hooked"], 0, "{}", table[0]);
    assert!(b.of("syscall-hooked").is_empty());

    // The decoder against the running kernel: the kernel writes LSTAR
    // with its syscall entry, where the tracer sets its breakpoint;
    // kallsyms names it.
    let bp = b.of("breakpoint");
    assert!(!bp.is_empty(), "the kernel set LSTAR: {:?}", b.events);
    let lstar = hex_field(&bp[0]["gva"]);
    assert_eq!(Some(lstar), profile().symbols.lookup("entry_SYSCALL_64"));
    assert_eq!(
        profile().symbols.symbolize(lstar),
        Some(("entry_SYSCALL_64", 0))
    );
    assert!(profile().symbols.len() > 50_000);

    // The kernel stalled where the emulator stopped it, held there: the
    // run ends with the guest fault's code once stopped.
    assert_eq!(b.code, 3, "{}", b.stderr);
    // drgn, with no vmlinux and no debug info, opens both cores as a
    // Linux kernel (from the VMCOREINFO wasmvisor writes), names
    // init_task through the kernel's own kallsyms tables and reads its
    // comm at the offset BTF gives.
    let comm = profile().types.offset_of("task_struct.comm").unwrap();
    let release = profile()
        .types
        .offset_of("uts_namespace.name.release")
        .unwrap();
    let script = root().join("tests/drgn/read_core.py");
    for core in &b.cores {
        let out = std::process::Command::new(drgn_python())
            .arg(&script)
            .arg(core)
            .args(["--comm-offset", &comm.to_string()])
            .args(["--release-offset", &release.to_string()])
            .output()
            .expect("python runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "drgn on {}: {text}{}",
            core.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        // Before sched_init (which follows "Memory:") the boot task is
        // still "swapper"; it becomes "swapper/0" later in start_kernel.
        assert_has_lines(
            &text,
            &[
                format!(
                    "init_task={:#x}",
                    profile().symbols.lookup("init_task").unwrap()
                ),
                "comm=swapper".into(),
                format!(
                    "release={release_text}",
                    release_text = info[0]["release"].as_str().unwrap()
                ),
            ],
        );
    }
    std::fs::remove_dir_all(b.cores[0].parent().unwrap()).ok();
}

#[test]
fn a_hooked_syscall_table_entry_is_reported_by_number_and_name() {
    require_kvm!();
    let p = profile();
    let mut image = std::fs::read(linux("vmlinux")).unwrap();
    let table = p.symbols.lookup("sys_call_table").unwrap();
    let write = p.symbols.lookup("__x64_sys_write").unwrap();
    let at = vaddr_to_file_offset(&image, table).expect("the table is in the file");
    image[at..at + 8].copy_from_slice(&write.to_le_bytes());
    let dir = scratch("linux-vmi-tampered");
    let tampered = dir.join("vmlinux");
    std::fs::write(&tampered, &image).unwrap();

    let b = boot(&tampered, "tampered", false);
    let table = b.of("syscall-table");
    assert_eq!(table.len(), 1, "{}\n{}", b.stdout, b.stderr);
    assert_eq!(table[0]["hooked"], 1, "{}", table[0]);
    let hooked = b.of("syscall-hooked");
    assert_eq!(hooked.len(), 1, "{hooked:?}");
    assert_eq!(hooked[0]["nr"], 0);
    assert_eq!(hooked[0]["name"], "read");
    assert_eq!(hex_field(&hooked[0]["target"]), write);
    assert_eq!(hooked[0]["symbol"], "__x64_sys_write+0x0");
    let _ = b.code;
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn without_a_profile_the_kernel_imports_answer_unsupported() {
    require_kvm!();
    let r = Cmd::guest("hello.elf")
        .policy_with("linux-info", "at=init")
        .events()
        .expect_exit(0);
    assert_eq!(
        r.stdout, "Hello from a wasmvisor guest!\n",
        "the policy declined the console"
    );
    let info = r.events_of("linux-info");
    assert_eq!(info.len(), 1, "{info:?}");
    assert!(
        info[0]["data"]["error"]
            .as_str()
            .unwrap()
            .contains("no kernel profile"),
        "{}",
        info[0]
    );
}

#[test]
fn a_malformed_or_truncated_profile_image_is_one_error_line() {
    require_kvm!();
    let dir = scratch("linux-vmi-bad");
    let g = guest("hello.elf");
    let garbage = dir.join("garbage");
    std::fs::write(&garbage, b"not a kernel at all").unwrap();
    let truncated = dir.join("truncated-vmlinux");
    let image = std::fs::read(linux("vmlinux")).unwrap();
    std::fs::write(&truncated, &image[..image.len() / 3]).unwrap();
    for (file, want) in [(&garbage, "not an ELF"), (&truncated, "")] {
        let line = wasmvisor(&[
            "run",
            "--guest",
            g.to_str().unwrap(),
            "--kernel-profile",
            file.to_str().unwrap(),
        ])
        .one_error_line();
        assert_contains(&line, &["--kernel-profile"]);
        assert!(line.contains(file.to_str().unwrap()), "{line}");
        assert_contains(&line, &[want]);
    }
    std::fs::remove_dir_all(&dir).ok();
}
