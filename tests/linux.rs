//! Booting a stock Debian cloud kernel (`make kernel` fetches it with
//! `apt-get download`) under `wasmvisor run --kernel`, on real KVM: its
//! bzImage through the 64-bit boot protocol, and the ELF vmlinux inside it
//! through PVH.
//!
//! This machine's software KVM gets a kernel through its first lines of
//! boot log before the instruction emulator gives up (`docs/linux.md`), so
//! these tests stop the VM once the lines they check are out: the banner,
//! the e820 map exactly as the VMM built it, the command line passed, and
//! the ACPI tables with both vCPUs.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use wasmvisor_tests::{assets, bin, policy, require_kvm, scratch};

/// `vmlinuz` (the bzImage) or `vmlinux` (the ELF inside it).
fn kernel(name: &str) -> PathBuf {
    let k = assets().join("linux").join(name);
    assert!(
        k.is_file(),
        "{} is missing: run `make kernel` (scripts/fetch-kernel.sh) first",
        k.display()
    );
    k
}

/// The e820 map the VMM builds for 256 MiB, as the kernel prints it.
const E820: [&str; 4] = [
    "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
    "BIOS-e820: [mem 0x000000000009fc00-0x000000000009ffff] reserved",
    "BIOS-e820: [mem 0x00000000000e0000-0x00000000000fffff] reserved",
    "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable",
];

/// Kills the VM when the test ends, however it ends.
struct Vm(Child);

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the ACPI tables tell a kernel booted with two vCPUs.
const ACPI: [&str; 4] = [
    "ACPI: RSDP 0x00000000000E0000",
    "ACPI: APIC 0x",
    "ACPI: Using ACPI (MADT) for SMP configuration information",
    "smpboot: Allowing 2 CPUs",
];

/// Boots `kernel` on two vCPUs with `extra` flags and collects console
/// lines until every one of `wanted` has appeared (or 180 s pass);
/// returns them.
fn boot_until(
    kernel: &str,
    extra: &[&str],
    cmdline: &str,
    wanted: &[String],
    stderr: &PathBuf,
) -> Vec<String> {
    let child = Command::new(bin())
        .arg("run")
        .arg("--kernel")
        .arg(self::kernel(kernel))
        .args(["--mem", "256M", "--vcpus", "2", "--cmdline", cmdline])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .expect("wasmvisor starts");
    let mut vm = Vm(child);
    let out = vm.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut lines = Vec::new();
    while !wanted
        .iter()
        .all(|w| lines.iter().any(|l: &String| l.contains(w.as_str())))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => panic!(
                "the kernel did not print all of {wanted:?} within 180 s; console:\n{}\nstderr:\n{}",
                lines.join("\n"),
                std::fs::read_to_string(stderr).unwrap_or_default()
            ),
        }
    }
    lines
}

#[test]
fn a_debian_bzimage_prints_its_banner_our_e820_map_cmdline_and_acpi_cpus() {
    require_kvm!();
    let dir = scratch("linux-native");
    let cmdline = "console=ttyS0 earlyprintk=serial,ttyS0,115200 wasmvisor.test=native";
    let mut wanted: Vec<String> = vec![
        "Linux version".into(),
        format!("Command line: {cmdline}"),
        "Hypervisor detected: KVM".into(),
        "kvm-clock: Using msrs".into(),
    ];
    wanted.extend(E820.iter().chain(&ACPI).map(|s| s.to_string()));
    let lines = boot_until(
        "vmlinuz",
        &["--serial", "native"],
        cmdline,
        &wanted,
        &dir.join("stderr.txt"),
    );
    let banner = lines.iter().find(|l| l.contains("Linux version")).unwrap();
    let version = std::fs::read_to_string(assets().join("linux/version")).unwrap();
    assert!(
        banner.contains(version.trim()),
        "banner of the fetched kernel: {banner}"
    );
}

/// PVH: the vmlinux starts in 32-bit protected mode with the start_info
/// in EBX, and skips the bzImage's decompressor (most of the other boot's
/// time on this machine).
#[test]
fn a_pvh_vmlinux_boots_with_the_wasm_serial_policy_as_console_and_msr_writes_traced() {
    require_kvm!();
    let dir = scratch("linux-policy");
    let stderr = dir.join("stderr.txt");
    let cmdline = "console=ttyS0 earlyprintk=serial,ttyS0,115200 wasmvisor.test=policy";
    // msr-guard watches the kvm-clock MSRs, lets the writes through to KVM
    // and logs each one.
    let guard = format!(
        "{}:watch=0x4b564d00-0x4b564d01,allow=0x4b564d00-0x4b564d01,log=all",
        policy("msr-guard")
    );
    // The serial policy may drive COM1's IRQ 4, as the 8250 driver expects
    // once it registers (later than this machine's emulator gets).
    let serial = format!("{}:@irq=4", policy("serial"));
    // Linux's PVH entry adds the legacy ISA hole to the e820 map it was
    // given, which merges the reserved entries; RAM is as built.
    let mut wanted = vec![
        "Linux version".to_string(),
        format!("Command line: {cmdline}"),
        E820[0].to_string(),
        E820[3].to_string(),
        // After kvm-clock is registered, its MSRs have been written.
        "clocksource: kvm-clock".to_string(),
    ];
    wanted.extend(ACPI.iter().map(|s| s.to_string()));
    boot_until(
        "vmlinux",
        &["--policy", &serial, "--policy", &guard],
        cmdline,
        &wanted,
        &stderr,
    );
    let log = std::fs::read_to_string(&stderr).unwrap();
    assert!(
        log.contains("wrmsr 0x4b564d01"),
        "the kernel's kvm-clock MSR write was traced: {log}"
    );
}
