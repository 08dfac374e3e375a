//! The hardware acceptance kit (docs/hardware.md): the busybox initramfs
//! that scripts/make-initramfs.sh builds, and scripts/hw-acceptance.sh's
//! refusal to start on a host without VT-x or AMD-V. The acceptance run
//! itself boots a Linux userland, which this project's software KVM
//! backend (kvm_pvm) cannot run, so it is not run here.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wasmvisor_tests::{root, scratch, Run};

/// The line the acceptance policies trigger on.
const TRIGGER: &str = "wasmvisor-acceptance: ready";

/// Runs `sh -c SCRIPT` in `dir` and returns what it showed.
fn sh(dir: &Path, script: &str) -> Run {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("sh -c {script}: {e}"))
        .into()
}

fn make_initramfs(out: &Path) -> Run {
    Command::new("bash")
        .arg(root().join("scripts/make-initramfs.sh"))
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .expect("bash runs scripts/make-initramfs.sh")
        .into()
}

#[test]
fn the_initramfs_builds() {
    let dir = scratch("initramfs");
    let out = dir.join("initramfs.cpio.gz");
    let r = make_initramfs(&out);
    assert_eq!(r.code, 0, "{r:?}");
    let size = std::fs::metadata(&out).expect("the archive exists").len();
    assert!(size > 100_000, "a busybox initramfs of {size} bytes");
    let line = format!("make-initramfs: {}: {size} bytes", out.display());
    assert!(
        r.stdout.lines().count() == 1 && r.stdout.starts_with(&line),
        "one line with the path and the size (`{line}`): {r:?}"
    );

    // A second build gives the same bytes.
    let first = std::fs::read(&out).unwrap();
    let again = make_initramfs(&out);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(
        std::fs::read(&out).unwrap() == first,
        "two builds of the initramfs differ"
    );

    let list = sh(&dir, "gzip -dc initramfs.cpio.gz | cpio -t --quiet");
    assert_eq!(list.code, 0, "{list:?}");
    let names: Vec<&str> = list
        .stdout
        .lines()
        .map(|l| l.trim_start_matches("./"))
        .collect();
    for want in ["init", "bin/busybox", "bin/sh", "bin/reboot", "proc", "tmp"] {
        assert!(names.contains(&want), "no {want} in the archive: {names:?}");
    }

    let x = sh(
        &dir,
        "rm -rf root && mkdir root && cd root && \
         gzip -dc ../initramfs.cpio.gz | cpio -idm --quiet init bin/busybox",
    );
    assert_eq!(x.code, 0, "{x:?}");
    let init = dir.join("root/init");
    let mode = std::fs::metadata(&init).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "/init is not executable: {mode:o}");
    let text = std::fs::read_to_string(&init).unwrap();
    assert!(text.starts_with("#!/bin/sh\n"), "{text}");
    for want in [
        TRIGGER,
        "wasmvisor-acceptance: done",
        "mount -t proc",
        "sleep 30 &",
        "reboot -f",
    ] {
        assert!(text.contains(want), "/init lacks `{want}`:\n{text}");
    }

    // The busybox inside is a working static x86-64 binary.
    let ok: Run = Command::new(dir.join("root/bin/busybox"))
        .args(["echo", "ok"])
        .output()
        .expect("the extracted busybox runs")
        .into();
    assert_eq!((ok.code, ok.stdout.as_str()), (0, "ok\n"), "{ok:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether this host runs guests on VT-x or AMD-V, decided as
/// scripts/hw-acceptance.sh decides it.
fn hardware_virtualization() -> bool {
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let vmx_or_svm = flags
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| f == "vmx" || f == "svm");
    let module = |m: &str| Path::new("/sys/module").join(m).is_dir();
    Path::new("/dev/kvm").exists()
        && !module("kvm_pvm")
        && vmx_or_svm
        && (module("kvm_intel") || module("kvm_amd"))
}

fn hw_acceptance(args: &[&str]) -> (Run, Duration) {
    let start = Instant::now();
    let r = Command::new("bash")
        .arg(root().join("scripts/hw-acceptance.sh"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("bash runs scripts/hw-acceptance.sh")
        .into();
    (r, start.elapsed())
}

#[test]
fn hw_acceptance_exits_at_once_on_this_backend() {
    let (help, _) = hw_acceptance(&["--help"]);
    assert_eq!(help.code, 0, "{help:?}");
    for want in [
        "Exit codes:",
        "hw-acceptance: skipped:",
        "target/hw-acceptance",
    ] {
        assert!(
            help.stdout.contains(want),
            "--help lacks `{want}`: {help:?}"
        );
    }
    let (bad, _) = hw_acceptance(&["--bogus"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.starts_with("usage: "), "{bad:?}");

    if hardware_virtualization() {
        eprintln!("this host has VT-x or AMD-V: the full run is scripts/hw-acceptance.sh's to do");
        return;
    }
    let (r, took) = hw_acceptance(&[]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(r.stdout, "", "{r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {r:?}");
    assert!(lines[0].starts_with("hw-acceptance: skipped: "), "{r:?}");
}
