//! The profile of the real Debian 6.1 kernel that `make kernel` fetches.
//!
//! This must fail, not skip, when the kernel is missing: a silently skipped
//! test would hide that the profile code is never exercised on a real image.

use std::path::PathBuf;
use std::time::Instant;

use wasmvisor_profile::kallsyms::AddressEncoding;
use wasmvisor_profile::{read_u64_at_vaddr, vaddr_to_file_offset, Profile};

fn assets() -> PathBuf {
    // host/profile -> the workspace root.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join("target/assets/linux")
}

fn image() -> Vec<u8> {
    let path = assets().join("vmlinux");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; run `make kernel` to fetch the Debian kernel",
            path.display()
        )
    })
}

fn version() -> String {
    let path = assets().join("version");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| {
            panic!(
                "cannot read {}: {e}; run `make kernel` to fetch the Debian kernel",
                path.display()
            )
        })
        .trim()
        .to_string()
}

#[test]
fn debian_kernel_profile() {
    let image = image();
    let started = Instant::now();
    let profile = Profile::from_elf(&image).expect("profile of the Debian kernel");
    eprintln!(
        "Profile::from_elf: {:?} for {} bytes",
        started.elapsed(),
        image.len()
    );

    // Symbols.
    let symbols = &profile.symbols;
    eprintln!(
        "{} symbols; tables: {:#x?}",
        symbols.len(),
        symbols.tables()
    );
    assert!(symbols.len() > 50_000, "only {} symbols", symbols.len());
    assert_eq!(
        symbols.tables().encoding,
        AddressEncoding::BaseRelativeAbsolutePercpu
    );
    let lookup = |name: &str| found(symbols.lookup(name), name);
    for name in [
        "sys_call_table",
        "init_task",
        "linux_banner",
        "entry_SYSCALL_64",
        "_stext",
        "_etext",
        "__x64_sys_read",
        "init_uts_ns",
    ] {
        eprintln!("{name:>16} = {:#x} {:?}", lookup(name), symbols.kind(name));
    }
    let entry = lookup("entry_SYSCALL_64");
    assert_eq!(symbols.symbolize(entry + 3), Some(("entry_SYSCALL_64", 3)));
    assert!(lookup("_stext") < entry && entry < lookup("_etext"));
    assert_eq!(symbols.kind("entry_SYSCALL_64"), Some('T'));
    assert_eq!(symbols.kind("init_task"), Some('D'));
    assert!(symbols.iter().any(|s| s.is_absolute()));
    assert_eq!(symbols.lookup("no_such_symbol_anywhere"), None);

    // The image holds the banner at linux_banner.
    let banner_at = vaddr_to_file_offset(&image, lookup("linux_banner")).unwrap();
    let banner = &image[banner_at..banner_at + 256];
    let banner = String::from_utf8_lossy(&banner[..banner.iter().position(|&b| b == 0).unwrap()]);
    eprintln!("banner: {banner}");
    assert!(banner.starts_with("Linux version "), "{banner}");
    assert!(banner.contains(&version()), "{banner}");

    // sys_call_table[0] is __x64_sys_read (syscall 0 is read on x86-64).
    let first = read_u64_at_vaddr(&image, lookup("sys_call_table")).unwrap();
    assert_eq!(first, lookup("__x64_sys_read"));
    assert_eq!(symbols.symbolize(first), Some(("__x64_sys_read", 0)));

    // Types.
    let types = &profile.types;
    let size = types.size_of("task_struct").expect("task_struct");
    assert!(size > 2000, "task_struct is {size} bytes");
    let offset = |path: &str| found(types.offset_of(path), path);
    for path in [
        "task_struct.pid",
        "task_struct.comm",
        "task_struct.tasks",
        "task_struct.real_parent",
        "task_struct.__state",
        "uts_namespace.name",
    ] {
        eprintln!("{path:>24} = {}", offset(path));
        assert!(offset(path) < size || !path.starts_with("task_struct"));
    }
    assert_eq!(
        offset("task_struct.tasks.next"),
        offset("task_struct.tasks")
    );
    assert_eq!(offset("list_head.next"), 0);
    // sysname[65], nodename[65], release[65]: release is the third.
    assert_eq!(offset("new_utsname.nodename"), 65);
    assert_eq!(offset("new_utsname.release"), 130);
    assert_eq!(types.size_of("list_head"), Some(16));
    assert_eq!(types.offset_of("task_struct.no_such_member"), None);
    assert_eq!(types.offset_of("no_such_struct.next"), None);

    // init_task's initial values check the offsets against the image: it
    // is "swapper", its task list is empty (points at itself), and it is
    // its own parent.
    let init_task = lookup("init_task");
    let comm_at = vaddr_to_file_offset(&image, init_task + offset("task_struct.comm")).unwrap();
    assert_eq!(&image[comm_at..comm_at + 8], b"swapper\0");
    let tasks = init_task + offset("task_struct.tasks");
    assert_eq!(
        read_u64_at_vaddr(&image, init_task + offset("task_struct.tasks.next")),
        Some(tasks)
    );
    assert_eq!(
        read_u64_at_vaddr(&image, init_task + offset("task_struct.real_parent")),
        Some(init_task)
    );

    // The release in init_uts_ns, read through both halves of the profile.
    let release_at =
        lookup("init_uts_ns") + offset("uts_namespace.name") + offset("new_utsname.release");
    let release_at = vaddr_to_file_offset(&image, release_at).unwrap();
    let release = &image[release_at..release_at + 65];
    let release =
        String::from_utf8_lossy(&release[..release.iter().position(|&b| b == 0).unwrap()]);
    assert_eq!(release, version());
}

/// `--kernel vmlinuz` gets the same profile as the vmlinux inside it: the
/// bzImage's LZ4 payload is unpacked in the host.
#[test]
fn the_bzimage_gives_the_same_profile_as_its_vmlinux() {
    let elf = Profile::from_elf(&image()).unwrap();
    let started = Instant::now();
    let bz = Profile::from_file(&assets().join("vmlinuz")).unwrap_or_else(|e| {
        panic!("{e}; run `make kernel` to fetch the Debian kernel");
    });
    eprintln!("profile from the bzImage in {:?}", started.elapsed());
    assert_eq!(bz.symbols.len(), elf.symbols.len());
    for name in ["sys_call_table", "init_task", "entry_SYSCALL_64", "_etext"] {
        assert_eq!(bz.symbols.lookup(name), elf.symbols.lookup(name), "{name}");
    }
    assert_eq!(
        bz.types.offset_of("task_struct.comm"),
        elf.types.offset_of("task_struct.comm")
    );
}

/// A value the real kernel must have, or a failure naming what is missing.
fn found(value: Option<u64>, what: &str) -> u64 {
    value.unwrap_or_else(|| panic!("{what} not found in the Debian kernel"))
}
